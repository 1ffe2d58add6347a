"""Saving and loading: atomic files, training checkpoints, and pruned / gated models without pickle.

* ``checkpoint``: :func:`atomic_write`, :func:`save_checkpoint`,
  :func:`load_checkpoint` (training state, ``torch.load(weights_only=True)``).
* ``export``: :func:`save` / :func:`load` of a model as safetensors weights
  plus a JSON recipe (constructor, pruned channels, gate configuration), and
  :func:`build` to make a model whose constructor the recipe can name.
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
    restore_rng_state,
    save_checkpoint,
)
from .export import ModelFileError, build, load, save, storage_table

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "CheckpointError",
    "ModelFileError",
    "atomic_save",
    "atomic_write",
    "atomic_write_json",
    "build",
    "capture_rng_state",
    "load",
    "load_checkpoint",
    "load_state_dict_checked",
    "restore_rng_state",
    "save",
    "save_checkpoint",
    "storage_table",
]
