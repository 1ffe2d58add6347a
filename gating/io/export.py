"""A model on disk without pickle: safetensors weights plus a JSON recipe.

``save(model, path)`` writes a folder (``docs/design.md#saved-models``)::

    path/recipe.json         how to rebuild the module tree (below)
    path/weights.safetensors every tensor of the state dict

The recipe holds the constructor (``"resnet18"``, a ``gating.models`` or
torchvision name, or ``"module:callable"``) with its keyword arguments, the
channels kept by static pruning per module (``pruned_channels``, indices into
the constructor's channels), the gate configuration and gated layer names of
a ``GatedModel``, non-tensor module state (``get_extra_state``), the names of
the convolution weights stored compactly (``compact_kernels``: those whose
all-zero 2-D kernels, as multi-granularity pruning leaves, take more bytes
than a mask: stored as the non-zero kernels ``NAME::kernels`` plus a bool
mask ``NAME::alive`` ``[C_out, C_in]``), the format version, and the size
and SHA-256 of the weights file.

``load(path)`` checks the recipe and the checksum, calls the constructor,
replays the pruning, gates the same layers, checks every tensor's name and
shape, then loads: outputs are bit-identical to the saved model's. Nothing
is unpickled; the constructor is imported by name (so it must be importable
where the model is loaded). Every failure is a :class:`ModelFileError`
naming the file and what is wrong, raised before a model is returned.

``save`` writes into a temporary folder beside ``path`` and renames it into
place, so ``path`` never holds half a model.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import json
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import GateConfig
from ..model import GatedModel
from ..prune import replay_cuts, traced_network
from .checkpoint import _fsync_directory, load_state_dict_checked

RECIPE = "recipe.json"
WEIGHTS = "weights.safetensors"
MODEL_FORMAT = "gating.model"
MODEL_FORMAT_VERSION = 1
_RECIPE_KEYS = ("format", "format_version", "constructor", "pruned_channels", "gate", "extra_state", "compact_kernels",
                "weights")


class ModelFileError(RuntimeError):
    """A saved model cannot be loaded: missing, truncated, tampered, or not matching its recipe."""


# ----------------------------------------------------------------- constructors
def _resolve(constructor: str):
    if not isinstance(constructor, str) or not constructor:
        raise ValueError(f"constructor must be a non-empty str, got {constructor!r}")
    if ":" in constructor:
        module_name, _, attr = constructor.partition(":")
        try:
            target: Any = importlib.import_module(module_name)
            for part in attr.split("."):
                target = getattr(target, part)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"constructor {constructor!r} cannot be imported: {err}") from err
    else:
        from .. import models as gating_models

        if constructor in gating_models.MODEL_NAMES:
            target = getattr(gating_models, constructor)
        else:
            import torchvision

            known = torchvision.models.list_models()
            if constructor not in known:
                close = difflib.get_close_matches(constructor, [*gating_models.MODEL_NAMES, *known], n=5)
                hint = f"; close matches: {', '.join(close)}" if close else ""
                raise ValueError(
                    f"constructor {constructor!r} is neither a gating.models name {gating_models.MODEL_NAMES}, a "
                    f"torchvision model name, nor 'module:callable'{hint}"
                )
            target = torchvision.models.get_model_builder(constructor)
    if not callable(target):
        raise ValueError(f"constructor {constructor!r} is not callable")
    return target


def build(constructor: str, **kwargs: Any) -> nn.Module:
    """Call ``constructor(**kwargs)`` and remember both, so :func:`save` can write them in the recipe.

    ``constructor`` is a ``gating.models`` name (``"resnet20"``), a torchvision
    model name (``"mobilenet_v3_small"``) or ``"module:callable"``; ``kwargs``
    must be JSON values (numbers, strings, booleans, None, lists, dicts).
    """
    check_json(kwargs, "constructor kwargs")
    model = _resolve(constructor)(**kwargs)
    if not isinstance(model, nn.Module):
        raise TypeError(f"constructor {constructor!r} returned a {type(model).__name__}, not an nn.Module")
    model.constructor = {"callable": constructor, "kwargs": kwargs}
    return model


def check_json(value: Any, where: str) -> None:
    """``TypeError`` naming ``where`` unless ``value`` survives a JSON round trip unchanged."""
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{where} must be JSON values: {err}") from err
    if json.loads(text) != value:
        raise TypeError(f"{where} must be JSON values (tuples and non-str keys do not survive JSON)")


# ----------------------------------------------------------------------- saving
def _recipe(model: nn.Module, state: dict[str, Any]) -> dict[str, Any]:
    network = traced_network(model)[0]
    constructor = getattr(network, "constructor", None)
    if not isinstance(constructor, dict):
        raise ValueError(
            f"save: the recipe needs the constructor of {type(network).__name__}: make the network with "
            "gating.build(name, **kwargs) (or set network.constructor = {'callable': 'module:callable', 'kwargs': {...}})"
        )
    gate = None
    if isinstance(model, GatedModel):
        gate = {"config": model.config.to_dict(), "gated_names": list(model.gated_names)}
    extra = {key: value for key, value in state.items() if not isinstance(value, torch.Tensor)}
    recipe = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "constructor": constructor,
        "pruned_channels": getattr(network, "pruned_channels", {}) or {},
        "gate": gate,
        "extra_state": extra,
        "torch_version": str(torch.__version__),
    }
    check_json(recipe, "the recipe (constructor kwargs and extra state)")
    return recipe


def save(model: nn.Module, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write ``model`` (a network made by :func:`build`, possibly pruned, or a ``GatedModel`` around one) to folder ``path``.

    Raises ``FileExistsError`` when ``path`` exists and ``overwrite`` is false,
    ``ValueError`` when the constructor is unknown. Returns the folder.
    """
    from safetensors.torch import save_file

    if not isinstance(model, nn.Module):
        raise TypeError(f"save: model must be an nn.Module, got {type(model).__name__}")
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"save: {path} exists; pass overwrite=True to replace it")
    state = model.state_dict()
    recipe = _recipe(model, state)
    tensors = {key: value.detach().cpu().clone().contiguous() for key, value in state.items() if isinstance(value, torch.Tensor)}
    recipe["compact_kernels"] = _compact(tensors)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    tmp.mkdir()
    try:
        save_file(tensors, str(tmp / WEIGHTS))
        digest, size = _digest(tmp / WEIGHTS)
        recipe["weights"] = {"file": WEIGHTS, "bytes": size, "sha256": digest}
        with open(tmp / RECIPE, "x", encoding="utf-8") as f:
            f.write(_dumps(recipe))
            f.flush()
            os.fsync(f.fileno())
        _fsync_directory(tmp)
        _move_into_place(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


_NUMBER_LIST = re.compile(r"\[\s*(-?\d+(?:\s*,\s*-?\d+)*)\s*\]")


def _dumps(recipe: dict[str, Any]) -> str:
    """Indented JSON with every list of integers (kept channel indices) on one line."""
    text = json.dumps(recipe, indent=2)
    return _NUMBER_LIST.sub(lambda m: "[" + ", ".join(m.group(1).replace(",", " ").split()) + "]", text) + "\n"


def _compact(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Replace, in place, each 4-D weight whose all-zero kernels outweigh a mask by its kernels and mask.

    Only kernels whose every element is +0.0 (no sign bit) count as zero, so
    :func:`_expand` restores the exact bits. Returns the names compacted.
    """
    compacted = []
    for key in [k for k, v in tensors.items() if v.dim() == 4 and v.is_floating_point()]:
        weight = tensors[key]
        flat = weight.reshape(weight.shape[0] * weight.shape[1], -1)
        dead = ((flat == 0) & ~torch.signbit(flat)).all(dim=1)
        kernel_bytes = flat.shape[1] * weight.element_size()
        if int(dead.sum()) * kernel_bytes <= dead.numel():  # the bool mask costs one byte per kernel
            continue
        alive = ~dead
        tensors[key + "::kernels"] = flat[alive].reshape(-1, *weight.shape[2:]).contiguous()
        tensors[key + "::alive"] = alive.reshape(weight.shape[:2]).contiguous()
        del tensors[key]
        compacted.append(key)
    return compacted


def _expand(tensors: dict[str, torch.Tensor], compacted: list[str], file: Path) -> None:
    """Inverse of :func:`_compact`, in place; ``ModelFileError`` naming ``file`` when the parts do not fit."""
    for key in compacted:
        kernels, alive = tensors.pop(key + "::kernels", None), tensors.pop(key + "::alive", None)
        if kernels is None or alive is None or alive.dtype != torch.bool or alive.dim() != 2 or kernels.dim() != 3 \
                or int(alive.sum()) != kernels.shape[0]:
            raise ModelFileError(f"{file}: the compact kernels of {key!r} are missing or do not fit their mask")
        weight = torch.zeros(*alive.shape, *kernels.shape[1:], dtype=kernels.dtype)
        weight[alive] = kernels
        tensors[key] = weight


def _move_into_place(tmp: Path, path: Path) -> None:
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.old")
        os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        if old is not None:
            os.replace(old, path)
        raise
    _fsync_directory(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()


def _digest(file: Path) -> tuple[str, int]:
    sha = hashlib.sha256()
    size = 0
    with open(file, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha.update(chunk)
            size += len(chunk)
    return sha.hexdigest(), size


# ---------------------------------------------------------------------- loading
def _read_recipe(path: Path) -> dict[str, Any]:
    if not path.is_dir():
        raise ModelFileError(f"{path} is not a saved model folder (missing or not a directory)")
    file = path / RECIPE
    if not file.is_file():
        raise ModelFileError(f"{file} is missing: {path} is not a saved model")
    try:
        recipe = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelFileError(f"{file} is not valid JSON (truncated or edited?): {err}") from err
    if not isinstance(recipe, dict) or recipe.get("format") != MODEL_FORMAT:
        raise ModelFileError(f"{file} is not a gating model recipe (no {MODEL_FORMAT!r} format marker)")
    missing = [key for key in _RECIPE_KEYS if key not in recipe]
    if missing:
        raise ModelFileError(f"{file} lacks required keys: {', '.join(missing)}")
    if recipe["format_version"] != MODEL_FORMAT_VERSION:
        raise ModelFileError(
            f"{file} has format version {recipe['format_version']!r}; this gating reads {MODEL_FORMAT_VERSION}"
        )
    weights = recipe["weights"]
    if not (isinstance(weights, dict) and weights.get("file") == WEIGHTS and isinstance(weights.get("sha256"), str)
            and isinstance(weights.get("bytes"), int)):
        raise ModelFileError(f"{file}: malformed 'weights' entry {weights!r}")
    constructor = recipe["constructor"]
    if not (isinstance(constructor, dict) and isinstance(constructor.get("callable"), str)
            and isinstance(constructor.get("kwargs"), dict)):
        raise ModelFileError(f"{file}: malformed 'constructor' entry {constructor!r}")
    return recipe


def _check_weights(path: Path, recipe: dict[str, Any]) -> Path:
    file = path / WEIGHTS
    if not file.is_file():
        raise ModelFileError(f"{file} is missing")
    digest, size = _digest(file)
    expected = recipe["weights"]
    if size != expected["bytes"]:
        raise ModelFileError(f"{file} has {size} bytes, the recipe says {expected['bytes']} (truncated or replaced)")
    if digest != expected["sha256"]:
        raise ModelFileError(f"{file}: SHA-256 {digest} does not match the recipe's {expected['sha256']} (file or recipe changed)")
    return file


def _read_tensors(file: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelFileError(f"{file} is not a readable safetensors file: {err}") from err


def load(path: str | os.PathLike[str]) -> nn.Module:
    """Rebuild the model saved by :func:`save` in folder ``path`` (CPU, in eval mode).

    Raises :class:`ModelFileError` naming the file when the folder, recipe or
    weights are missing, truncated, tampered with, from another architecture,
    or do not match each other.
    """
    path = Path(path)
    recipe = _read_recipe(path)
    weights_file = _check_weights(path, recipe)
    recipe_file = path / RECIPE
    constructor = recipe["constructor"]
    try:
        network = build(constructor["callable"], **constructor["kwargs"])
    except (ValueError, TypeError) as err:
        raise ModelFileError(f"{recipe_file}: cannot build the network: {err}") from err
    try:
        _check_pruned_channels(recipe["pruned_channels"])
        replay_cuts(network, recipe["pruned_channels"])
    except (ValueError, TypeError, NotImplementedError) as err:
        raise ModelFileError(f"{recipe_file}: pruned_channels do not fit {constructor['callable']}: {err}") from err
    model: nn.Module = network
    gate = recipe["gate"]
    if gate is not None:
        try:
            config = GateConfig.from_dict(gate["config"])
            model = GatedModel(network, config, inplace=True)
        except (KeyError, TypeError, ValueError, NotImplementedError) as err:
            raise ModelFileError(f"{recipe_file}: the gate configuration does not fit: {err}") from err
        if list(gate.get("gated_names", [])) != list(model.gated_names):
            raise ModelFileError(
                f"{recipe_file}: the recipe gates {gate.get('gated_names')}, the rebuilt model gates {model.gated_names}"
            )
    tensors = _read_tensors(weights_file)
    compacted = recipe["compact_kernels"]
    if not (isinstance(compacted, list) and all(isinstance(key, str) for key in compacted)):
        raise ModelFileError(f"{recipe_file}: malformed 'compact_kernels' {compacted!r}")
    _expand(tensors, compacted, weights_file)
    state: dict[str, Any] = dict(tensors)
    if not isinstance(recipe["extra_state"], dict):
        raise ModelFileError(f"{recipe_file}: malformed 'extra_state' {recipe['extra_state']!r}")
    state.update(recipe["extra_state"])
    try:
        load_state_dict_checked(model, state, f"{weights_file}")
    except Exception as err:
        raise ModelFileError(f"{weights_file} does not fit the model its recipe builds: {err}") from err
    return model.eval()


def _check_pruned_channels(record: Any) -> None:
    if not isinstance(record, dict):
        raise TypeError(f"pruned_channels must be a dict, got {type(record).__name__}")
    for name, sides in record.items():
        if not isinstance(sides, dict) or not all(
            isinstance(index, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in index)
            for index in sides.values()
        ):
            raise TypeError(f"pruned_channels[{name!r}] must map 'out' / 'in' to lists of ints")


# ----------------------------------------------------------------------- table
def disk_bytes(folder: Path | str) -> int:
    """Bytes on disk of a saved model folder (``save``'s files, summed)."""
    return sum(f.stat().st_size for f in Path(folder).iterdir() if f.is_file())
