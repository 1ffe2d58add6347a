"""CIFAR-10 read from a local folder in its python-pickle layout (never downloads)."""

from __future__ import annotations

import pickle
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms

from .errors import DatasetError

__all__ = ["CIFAR10_LAYOUT", "CIFAR10_MEAN", "CIFAR10_STD", "CIFAR10Pickles", "cifar10"]

CIFAR10_LAYOUT = "<root>/cifar-10-batches-py/{data_batch_1..data_batch_5, test_batch, batches.meta}"
"""Expected on-disk layout of :func:`cifar10` (the python version of CIFAR-10)."""

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
_CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR10_TEST_FILES = ("test_batch",)
_CIFAR10_META = "batches.meta"


def _cifar10_error(path: Path, problem: str) -> DatasetError:
    return DatasetError(f"CIFAR-10 {path}: {problem}; expected layout {CIFAR10_LAYOUT}")


def _unpickle(path: Path) -> dict[str, Any]:
    """Load one CIFAR pickle; keys are returned as ``str`` whether stored as bytes or str."""
    try:
        with path.open("rb") as f:
            entry = pickle.load(f, encoding="latin1")
    except Exception as exc:  # pickle.load raises many exception types on malformed input
        raise _cifar10_error(path, f"not a readable pickle ({exc})") from exc
    if not isinstance(entry, dict):
        raise _cifar10_error(path, "the pickle does not hold a dict")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}


def _read_batch(path: Path) -> tuple[np.ndarray, list[int]]:
    """Images uint8 ``[n, 32, 32, 3]`` (HWC) and labels of one CIFAR-10 batch file."""
    entry = _unpickle(path)
    data, labels = entry.get("data"), np.asarray(entry.get("labels"))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise _cifar10_error(path, "'data' must be a uint8 array [n, 3072]")
    valid = labels.shape == (len(data),) and np.issubdtype(labels.dtype, np.integer)
    if not valid or labels.min(initial=0) < 0 or labels.max(initial=0) > 9:
        raise _cifar10_error(path, f"'labels' must hold {len(data)} integers in 0..9")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels.tolist()


def _read_class_names(path: Path) -> list[str]:
    names = _unpickle(path).get("label_names")
    if names is None or len(names) != 10:
        raise _cifar10_error(path, "'label_names' must list 10 class names")
    return [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names]


class CIFAR10Pickles(Dataset):
    """CIFAR-10 read from its python pickles.

    Same on-disk format and item format as ``torchvision.datasets.CIFAR10``,
    without torchvision's MD5 check of the official files (so any well-formed
    folder, e.g. a subset, loads); the contents are validated instead.
    Like torchvision, it unpickles the files: only read folders you trust.

    Items are ``(transform(PIL RGB image 32x32), label int in 0..9)``.

    Attributes:
        data: uint8 ``[n, 32, 32, 3]`` images (HWC).
        targets: ``n`` labels.
        classes: the 10 class names from ``batches.meta``.
    """

    def __init__(self, folder: Path, files: Sequence[str], transform: Callable[[Image.Image], Any]) -> None:
        batches = [_read_batch(folder / name) for name in files]
        self.data = np.concatenate([images for images, _ in batches])
        self.targets = [y for _, labels in batches for y in labels]
        self.classes = _read_class_names(folder / _CIFAR10_META)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        return self.transform(Image.fromarray(self.data[index])), self.targets[index]


def _cifar10_transform(augment: bool) -> transforms.Compose:
    crop_flip = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()] if augment else []
    return transforms.Compose([*crop_flip, transforms.ToTensor(), transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD)])


def cifar10(root: str | Path, train: bool, augment: bool = False) -> CIFAR10Pickles:
    """CIFAR-10 from ``root`` laid out as :data:`CIFAR10_LAYOUT` (never downloads).

    Args:
        root: folder that contains ``cifar-10-batches-py``.
        train: the 50,000 training images (``data_batch_*``) if True, else
            the 10,000 test images (``test_batch``).
        augment: random crop (32, padding 4) and horizontal flip, drawn from
            torch's global RNG.

    Returns:
        A dataset of ``(image float32 [3, 32, 32] normalised with CIFAR-10
        mean/std, label int in 0..9)``.

    Raises:
        DatasetError: the folder or one of the seven files is missing, or a
            file is not a well-formed CIFAR-10 pickle. The message names the
            path and the expected layout.
    """
    folder = Path(root) / "cifar-10-batches-py"
    files = _CIFAR10_TRAIN_FILES if train else _CIFAR10_TEST_FILES
    if not folder.is_dir():
        raise _cifar10_error(folder, "folder does not exist")
    expected = (*_CIFAR10_TRAIN_FILES, *_CIFAR10_TEST_FILES, _CIFAR10_META)
    missing = [name for name in expected if not (folder / name).is_file()]
    if missing:
        raise _cifar10_error(folder, f"missing {', '.join(missing)}")
    return CIFAR10Pickles(folder, files, _cifar10_transform(augment))
