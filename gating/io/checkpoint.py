"""Safe saving and loading of training checkpoints, and atomic file writes.

Three guarantees, whatever goes wrong:

* **Atomic writes.** :func:`atomic_save` writes to a temporary file next to the
  target, flushes and fsyncs it, then renames it over the target with
  :func:`os.replace`. A crash or an exception leaves either the old file or the
  new one at ``path``, never a half-written one, and no temporary file behind.
* **Clear load errors.** :func:`load_checkpoint` turns every way a checkpoint can
  be unusable (missing, truncated, corrupt, not ours, another format version)
  into a :class:`CheckpointError` whose message names the file.
* **No half-loading.** :func:`load_state_dict_checked` compares keys and shapes
  before touching the module, so a mismatched state dict leaves it unchanged.

Checkpoints are loaded with ``torch.load(weights_only=True)``: everything saved
(configuration, metrics, RNG states, ``extra``) is kept to plain Python values
(``None``, ``bool``, ``int``, ``float``, ``str``, lists, tuples, dicts) and
tensors, which :func:`save_checkpoint` checks before writing.
"""

from __future__ import annotations

import json
import os
import random
import secrets
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn
from torch.nn.parameter import is_lazy

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "CheckpointError",
    "atomic_save",
    "atomic_write",
    "atomic_write_json",
    "capture_rng_state",
    "load_checkpoint",
    "load_state_dict_checked",
    "load_torch_file",
    "restore_rng_state",
    "save_checkpoint",
    "validate_checkpoint",
]

FORMAT = "gating.checkpoint"
"""Marker stored under the ``"format"`` key of every checkpoint."""

FORMAT_VERSION = 1
"""Version of the checkpoint layout written by :func:`save_checkpoint`."""

_REQUIRED_KEYS = ("format", "format_version", "model_state", "epoch", "step", "config")
_MAX_LISTED = 5
_PLAIN_SCALARS = (type(None), bool, int, float, str)

PathLike = str | os.PathLike[str]


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used: missing, corrupt, foreign, or mismatched."""


def atomic_write(path: PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Write a file atomically: ``write(f)`` fills a temporary file, which replaces ``path``.

    Missing parent folders are created.
    The temporary file is uniquely named in the same directory (so the final
    rename never crosses file systems), flushed and fsynced, then moved over
    ``path`` with :func:`os.replace`. If anything fails the temporary file is
    removed and the exception propagates; an existing file at ``path`` is left
    untouched. The file gets the permissions that a plain ``open(path, "wb")``
    would give it (the process umask applies).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def atomic_save(obj: Any, path: PathLike) -> None:
    """``torch.save`` ``obj`` to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_json(obj: Any, path: PathLike) -> None:
    """Write ``obj`` as indented JSON (UTF-8) to ``path`` atomically."""
    text = json.dumps(obj, indent=2, sort_keys=False) + "\n"
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def _fsync_directory(directory: Path) -> None:
    """Make a rename inside ``directory`` durable (POSIX only; a no-op elsewhere)."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def capture_rng_state() -> dict[str, Any]:
    """Return the torch (CPU, and CUDA when available) and Python ``random`` RNG states.

    The result holds only tensors and plain Python values, so it survives
    ``torch.load(weights_only=True)``; restore it with :func:`restore_rng_state`.
    """
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Restore RNG states captured by :func:`capture_rng_state`.

    CUDA states are restored only when the checkpoint has them and CUDA is
    available here.
    """
    torch.set_rng_state(state["torch"])
    python = state["python"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    path: PathLike,
    *,
    model_state: Mapping[str, Any],
    optimizer_state: Mapping[str, Any] | None = None,
    scheduler_state: Mapping[str, Any] | None = None,
    scaler_state: Mapping[str, Any] | None = None,
    epoch: int,
    step: int,
    config: Mapping[str, Any],
    metrics: Mapping[str, Any] | None = None,
    rng_state: bool = True,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write a training checkpoint to ``path`` atomically (see :func:`atomic_save`).

    Args:
        path: destination file.
        model_state: the model's ``state_dict()``.
        optimizer_state, scheduler_state, scaler_state: ``state_dict()`` of the
            optimizer, LR scheduler and ``GradScaler``, when there are any.
        epoch, step: where training stands; the meaning is the caller's (the
            trainer stores the epoch in progress and the number of its batches
            already consumed).
        config: the run's configuration as plain values (e.g. ``dataclasses.asdict``).
        metrics: latest evaluation metrics, if any.
        rng_state: store the current RNG states (:func:`capture_rng_state`);
            ``False`` stores ``None``.
        extra: further caller-defined plain values (e.g. global step, history).

    Raises:
        TypeError: ``config``, ``metrics`` or ``extra`` hold something other than
            plain Python values and tensors (it could not be loaded back safely).
    """
    for name, value in (("config", config), ("metrics", metrics), ("extra", extra)):
        _check_plain(value, name)
    checkpoint = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "torch_version": str(torch.__version__),
        "model_state": dict(model_state),
        "optimizer_state": optimizer_state,
        "scheduler_state": scheduler_state,
        "scaler_state": scaler_state,
        "epoch": epoch,
        "step": step,
        "config": dict(config),
        "metrics": None if metrics is None else dict(metrics),
        "rng_state": capture_rng_state() if rng_state else None,
        "extra": {} if extra is None else dict(extra),
    }
    atomic_save(checkpoint, path)


def _check_plain(value: Any, where: str) -> None:
    """Raise ``TypeError`` unless ``value`` is built from plain values and tensors.

    Types are matched exactly: subclasses (``defaultdict``, named tuples,
    ``str`` subclasses such as ``torch.__version__``) are refused by
    ``weights_only`` loading.
    """
    if type(value) in _PLAIN_SCALARS or isinstance(value, torch.Tensor):
        return
    if type(value) in (list, tuple):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    if type(value) in (dict, OrderedDict):
        for key, item in value.items():
            _check_plain(key, f"{where} key {key!r}")
            _check_plain(item, f"{where}[{key!r}]")
        return
    raise TypeError(
        f"{where} is a {type(value).__name__}; checkpoints hold only None, bool, int, "
        "float, str, lists, tuples, dicts and tensors"
    )


def load_torch_file(path: PathLike, map_location: Any = "cpu", what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` (no arbitrary code runs); :class:`CheckpointError` naming ``what``
    and the path when the file is missing, truncated, corrupt or not a safe torch file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist or is not a file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"{what} {path} is truncated, corrupt or not a safe torch file: {type(exc).__name__}: {_first_line(exc)}"
        ) from exc


def load_checkpoint(path: PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load and validate a checkpoint written by :func:`save_checkpoint`.

    Loads with ``weights_only=True`` (no arbitrary code runs) onto
    ``map_location``.

    Raises:
        CheckpointError: the file is missing, truncated or otherwise unreadable,
            is not a gating checkpoint, lacks required keys, or has another
            format version. The message names the path.
    """
    checkpoint = load_torch_file(path, map_location)
    validate_checkpoint(checkpoint, path)
    return checkpoint


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message (torch's can run to pages)."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else ""


def validate_checkpoint(checkpoint: Any, path: Path) -> None:
    """Raise :class:`CheckpointError` unless ``checkpoint`` has our format and version."""
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a gating checkpoint (no {FORMAT!r} format marker)")
    missing = [key for key in _REQUIRED_KEYS if key not in checkpoint]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks required keys: {', '.join(missing)}")
    version = checkpoint["format_version"]
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {version!r}; this version of gating "
            f"reads version {FORMAT_VERSION}"
        )


def load_state_dict_checked(module: nn.Module, state_dict: Mapping[str, Any], what: str) -> None:
    """Load ``state_dict`` into ``module`` only if keys and shapes match exactly.

    Missing keys, unexpected keys and shape mismatches are all collected first;
    if there are any, a :class:`CheckpointError` naming ``what`` and listing (the
    first few of) them is raised and ``module`` is not modified. Otherwise the
    state is loaded with ``strict=True``.
    """
    expected = module.state_dict()
    missing = sorted(expected.keys() - state_dict.keys())
    unexpected = sorted(state_dict.keys() - expected.keys())
    mismatched = [
        f"{key}: checkpoint {tuple(state_dict[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in expected.keys() & state_dict.keys()
        if _shapes_differ(expected[key], state_dict[key])
    ]
    problems = [
        _listing(label, items)
        for label, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", sorted(mismatched)),
        )
        if items
    ]
    if problems:
        raise CheckpointError(f"{what}: state dict does not match the module; " + "; ".join(problems))
    module.load_state_dict(state_dict, strict=True)


def _shapes_differ(current: Any, loaded: Any) -> bool:
    """True when both are materialised tensors of different shapes."""
    tensors = isinstance(current, torch.Tensor) and isinstance(loaded, torch.Tensor)
    return tensors and not is_lazy(current) and current.shape != loaded.shape


def _listing(label: str, items: list[str]) -> str:
    """``label (n): a, b, c, ...`` with at most ``_MAX_LISTED`` items shown."""
    shown = ", ".join(items[:_MAX_LISTED])
    more = f", ... (+{len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
    return f"{label} ({len(items)}): {shown}{more}"
