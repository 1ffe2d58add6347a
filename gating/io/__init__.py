"""Saving and loading: atomic files, training checkpoints, and pruned / gated models without pickle.

* ``checkpoint``: :func:`atomic_write`, :func:`save_checkpoint`,
  :func:`load_checkpoint` (training state, ``torch.load(weights_only=True)``).
* ``export``: :func:`save` / :func:`load` of a model as safetensors weights
  plus a JSON recipe (constructor, pruned channels, gate configuration), and
  :func:`build` to make a model whose constructor the recipe can name;
  :func:`disk_bytes` of a saved folder.
* ``results``: :func:`publish_results`, a workflow's results JSON (with the
  run's environment) written atomically and its table printed.
"""

from .checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    CheckpointError,
    atomic_save,
    atomic_write,
    atomic_write_json,
    capture_rng_state,
    load_checkpoint,
    load_state_dict_checked,
    load_torch_file,
    restore_rng_state,
    save_checkpoint,
    validate_checkpoint,
)
from .export import ModelFileError, build, disk_bytes, load, save
from .results import publish_results

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "CheckpointError",
    "ModelFileError",
    "atomic_save",
    "atomic_write",
    "atomic_write_json",
    "build",
    "disk_bytes",
    "capture_rng_state",
    "load",
    "load_checkpoint",
    "load_state_dict_checked",
    "load_torch_file",
    "publish_results",
    "restore_rng_state",
    "save",
    "save_checkpoint",
    "validate_checkpoint",
]
