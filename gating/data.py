"""Datasets and data loaders.

Three sources are supported, all yielding ``(image, label)`` pairs where
``image`` is a normalised ``float32`` tensor ``[3, S, S]`` and ``label`` an
integer class index:

* ``"synthetic"``: a built-in, procedurally generated 10-class dataset of
  shapes on textured backgrounds (no download; see :func:`generate_shapes`).
  Each object covers a minority of the image, so most spatial positions are
  background: the setting in which spatial gating saves work.
* ``"cifar10"``: CIFAR-10 in its original python-pickle layout
  (see :func:`cifar10`).
* ``"imagefolder"``: any ``<root>/{train,val}/<class>/<image>`` tree,
  ImageNet style (see :func:`image_folder`).

:func:`build_loaders` turns any of them into a deterministic, resumable pair of
train/test :class:`~torch.utils.data.DataLoader`; the train loader draws its
order from an :class:`EpochSampler`.

Problems with a dataset on disk raise :class:`DatasetError`, a
:class:`ValueError` whose message names the offending path and the expected
layout.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Callable, Iterator, Sequence
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, Subset, TensorDataset
from torchvision import datasets, transforms

__all__ = [
    "CIFAR10_LAYOUT",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "DATASETS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_FOLDER_LAYOUT",
    "SHAPE_NAMES",
    "SYNTHETIC_MEAN",
    "SYNTHETIC_STD",
    "CIFAR10Pickles",
    "DatasetError",
    "EpochSampler",
    "ShapesSample",
    "build_loaders",
    "cifar10",
    "generate_shapes",
    "image_folder",
    "synthetic_dataset",
]

DATASETS = ("synthetic", "cifar10", "imagefolder")
"""Names accepted by :func:`build_loaders`."""


class DatasetError(ValueError):
    """A dataset folder is missing or malformed.

    Subclass of :class:`ValueError` (the ``root`` argument is an invalid
    value); the message names the offending path and the expected layout.
    """


# --------------------------------------------------------------------------
# Synthetic shapes
# --------------------------------------------------------------------------

SYNTHETIC_MEAN = (0.5, 0.5, 0.5)
"""Per-channel mean subtracted from synthetic images (values in [0, 1])."""

SYNTHETIC_STD = (0.23, 0.23, 0.23)
"""Per-channel std dividing synthetic images after the mean is subtracted."""

_COVERAGE_RANGE = (0.10, 0.25)  # fraction of the image covered by the object
_MAX_TILT = math.radians(12.0)  # objects are rotated by at most this angle
_TILT_MARGIN = 1.25  # >= max |cos t| + |sin t| over the tilt range, with slack
_BG_LEVEL_RANGE = (0.15, 0.85)  # background base colour, per channel
_BG_CONTRAST_RANGE = (0.05, 0.25)  # RGB distance between the two texture colours
_OBJECT_CONTRAST_RANGE = (0.5, 0.8)  # RGB distance object <-> mean background colour
_PIXEL_NOISE_STD = 0.02
_NOISE_GRID = 4  # resolution of the smooth-noise texture before upsampling
_SUPERSAMPLE = 2  # object edges are antialiased at this factor
_CHUNK = 1024  # images rendered at once (bounds memory)


# Shapes as inside-tests in a local frame: ``u`` points right, ``v`` down, and
# every shape lies within ``[-1, 1]^2``. Each maps float tensors to a bool tensor.


def _rect(u: Tensor, v: Tensor, half_width: float, half_height: float) -> Tensor:
    return (u.abs() <= half_width) & (v.abs() <= half_height)


def _disk(u: Tensor, v: Tensor) -> Tensor:
    return u * u + v * v <= 1.0


def _square(u: Tensor, v: Tensor) -> Tensor:
    return _rect(u, v, 0.85, 0.85)


def _triangle(u: Tensor, v: Tensor) -> Tensor:  # apex up
    return (v <= 0.85) & (u.abs() <= (v + 0.95) * 0.55)


def _plus(u: Tensor, v: Tensor) -> Tensor:
    return _rect(u, v, 1.0, 0.28) | _rect(u, v, 0.28, 1.0)


def _ring(u: Tensor, v: Tensor) -> Tensor:
    return _disk(u, v) & ~_disk(u / 0.55, v / 0.55)


def _horizontal_bar(u: Tensor, v: Tensor) -> Tensor:
    return _rect(u, v, 1.0, 0.38)


def _vertical_bar(u: Tensor, v: Tensor) -> Tensor:
    return _rect(u, v, 0.38, 1.0)


def _diamond(u: Tensor, v: Tensor) -> Tensor:
    return u.abs() + v.abs() <= 1.0


def _x(u: Tensor, v: Tensor) -> Tensor:  # two diagonal bars
    return _rect(u, v, 0.95, 0.95) & (((u - v).abs() <= 0.4) | ((u + v).abs() <= 0.4))


def _l_shape(u: Tensor, v: Tensor) -> Tensor:  # stroke on the left, foot at the bottom
    return (u >= -0.8) & (v <= 0.9) & (((u <= -0.25) & (v >= -0.9)) | ((v >= 0.35) & (u <= 0.8)))


_SHAPES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "disk": _disk,
    "square": _square,
    "triangle": _triangle,
    "plus": _plus,
    "ring": _ring,
    "horizontal_bar": _horizontal_bar,
    "vertical_bar": _vertical_bar,
    "diamond": _diamond,
    "x": _x,
    "l_shape": _l_shape,
}

SHAPE_NAMES = tuple(_SHAPES)
"""Class names of the synthetic dataset; label ``k`` is ``SHAPE_NAMES[k]``."""
_SHAPE_TESTS = tuple(_SHAPES.values())


@cache
def _shape_areas() -> tuple[float, ...]:
    """Area of each shape in its local frame (the ``[-1, 1]^2`` square has area 4)."""
    grid = (torch.arange(512, dtype=torch.float32) + 0.5) / 256.0 - 1.0
    v, u = torch.meshgrid(grid, grid, indexing="ij")
    return tuple(4.0 * inside(u, v).sum().item() / u.numel() for inside in _SHAPE_TESTS)  # exact counts


class ShapesSample(NamedTuple):
    """Output of :func:`generate_shapes`.

    Attributes:
        images: float32 ``[N, 3, S, S]``, normalised with :data:`SYNTHETIC_MEAN`
            and :data:`SYNTHETIC_STD` (roughly zero mean, unit std; raw pixel
            values in [0, 1] map to about [-2.2, 2.2]).
        labels: int64 ``[N]`` in ``0..9`` (index into :data:`SHAPE_NAMES`).
        masks: bool ``[N, S, S]``, True where the object covers at least half
            of the pixel.
    """

    images: Tensor
    labels: Tensor
    masks: Tensor


def _uniform(n: int, low: float, high: float, gen: torch.Generator, *shape: int) -> Tensor:
    return low + (high - low) * torch.rand(n, *shape, generator=gen)


def _pixel_grid(size: int) -> tuple[Tensor, Tensor]:
    """``(y, x)`` pixel-centre coordinates in ``[0, 1]``, each ``[size, size]``."""
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    return torch.meshgrid(coords, coords, indexing="ij")


def _local_coords(cx: Tensor, cy: Tensor, radius: Tensor, tilt: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Pixel-centre coordinates in each object's local frame, each ``[N, size, size]``."""
    y, x = _pixel_grid(size)
    dx = (x - cx[:, None, None]) / radius[:, None, None]
    dy = (y - cy[:, None, None]) / radius[:, None, None]
    cos, sin = tilt.cos()[:, None, None], tilt.sin()[:, None, None]
    return cos * dx + sin * dy, cos * dy - sin * dx


def _object_alpha(labels: Tensor, size: int, gen: torch.Generator) -> Tensor:
    """Antialiased object coverage, float32 ``[N, 1, size, size]`` in [0, 1].

    Draws, per image, a coverage fraction in :data:`_COVERAGE_RANGE`, a tilt
    and a position that keeps the object inside the image.
    """
    n = labels.numel()
    areas = torch.tensor(_shape_areas())[labels]
    coverage = _uniform(n, *_COVERAGE_RANGE, gen)
    radius = (coverage / areas).sqrt()  # half-extent of the local [-1, 1]^2 frame
    margin = (radius * _TILT_MARGIN).clamp(max=0.49)
    cy, cx = (margin[:, None] + (1 - 2 * margin[:, None]) * torch.rand(n, 2, generator=gen)).unbind(1)
    tilt = _uniform(n, -_MAX_TILT, _MAX_TILT, gen)
    fine = size * _SUPERSAMPLE
    inside = torch.empty(n, 1, fine, fine)
    for shape in labels.unique().tolist():
        rows = (labels == shape).nonzero()[:, 0]
        u, v = _local_coords(cx[rows], cy[rows], radius[rows], tilt[rows], fine)
        inside[rows, 0] = _SHAPE_TESTS[shape](u, v).float()
    return F.avg_pool2d(inside, _SUPERSAMPLE)


def _texture(n: int, size: int, gen: torch.Generator) -> Tensor:
    """Background pattern in [0, 1], float32 ``[N, 1, size, size]``.

    Each image gets one of: smooth noise, stripes at a random angle, or a
    checkerboard with random cell size and phase.
    """
    y, x = _pixel_grid(size)
    noise = torch.randn(n, 1, _NOISE_GRID, _NOISE_GRID, generator=gen)
    smooth = torch.sigmoid(2.0 * F.interpolate(noise, size=(size, size), mode="bilinear", align_corners=False))
    angle = _uniform(n, 0.0, math.pi, gen)[:, None, None]
    freq = _uniform(n, 2.0, 5.0, gen)[:, None, None]
    phase = _uniform(n, 0.0, 2 * math.pi, gen, 2)[:, :, None, None]
    along = x * angle.cos() + y * angle.sin()
    stripes = 0.5 + 0.5 * torch.sin(2 * math.pi * freq * along + phase[:, 0])
    cells = _uniform(n, 3.0, 7.0, gen)[:, None, None]
    checker = torch.sin(math.pi * cells * x + phase[:, 0]) * torch.sin(math.pi * cells * y + phase[:, 1]) > 0
    kind = torch.randint(0, 3, (n,), generator=gen)
    options = torch.stack([smooth[:, 0], stripes, checker.float()])
    return options[kind, torch.arange(n)][:, None]


def _random_offsets(n: int, low: float, high: float, gen: torch.Generator) -> Tensor:
    """``[N, 3]`` RGB offsets in uniformly random directions, lengths uniform in ``[low, high]``."""
    direction = F.normalize(torch.randn(n, 3, generator=gen), dim=1)
    return direction * _uniform(n, low, high, gen)[:, None]


def _colours(n: int, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Two background colours and one object colour per image, each ``[N, 3, 1, 1]``.

    The two background colours are :data:`_BG_CONTRAST_RANGE` apart in RGB;
    the object colour lies :data:`_OBJECT_CONTRAST_RANGE` away from their
    midpoint, on the side of the RGB cube's centre (so clamping rarely eats
    the contrast). All are independent of the label.
    """
    base = _uniform(n, *_BG_LEVEL_RANGE, gen, 3)
    second = (base + _random_offsets(n, *_BG_CONTRAST_RANGE, gen)).clamp(0, 1)
    middle = (base + second) / 2
    offset = _random_offsets(n, *_OBJECT_CONTRAST_RANGE, gen)
    towards_centre = torch.where(((0.5 - middle) * offset).sum(1, keepdim=True) >= 0, 1.0, -1.0)
    obj = (middle + towards_centre * offset).clamp(0, 1)
    return tuple(c[:, :, None, None] for c in (base, second, obj))  # type: ignore[return-value]


def _render(labels: Tensor, size: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Raw images in [0, 1] ``[N, 3, S, S]`` and masks ``[N, S, S]`` for ``labels``."""
    n = labels.numel()
    alpha = _object_alpha(labels, size, gen)
    texture = _texture(n, size, gen)
    base, second, obj = _colours(n, gen)
    background = base + (second - base) * texture
    noise = _PIXEL_NOISE_STD * torch.randn(n, 3, size, size, generator=gen)
    images = (background * (1 - alpha) + obj * alpha + noise).clamp(0, 1)
    return images, alpha[:, 0] >= 0.5


def _balanced_labels(num_samples: int, gen: torch.Generator) -> Tensor:
    """``num_samples`` labels, each class count within one of the others, shuffled."""
    labels = torch.arange(num_samples) % len(SHAPE_NAMES)
    return labels[torch.randperm(num_samples, generator=gen)]


def generate_shapes(num_samples: int, image_size: int = 32, seed: int = 0) -> ShapesSample:
    """Generate the synthetic shapes dataset with its object masks.

    Every image shows one object whose shape is the class (see
    :data:`SHAPE_NAMES`) on a low-to-moderate contrast textured background.
    Object colour, position, size (10-25% of the image area), slight tilt and
    the background (texture type, colours) are random and independent of the
    label. Classes are balanced (counts differ by at most one).

    Deterministic: the same ``(num_samples, image_size, seed)`` gives
    bit-identical tensors, whatever the global RNG state or the number of
    torch threads (all randomness comes from a ``torch.Generator`` seeded
    with ``seed``). Takes about 1.5 s for 12,000 images of 32x32 on 2 cores.

    Args:
        num_samples: number of images ``N`` (>= 1).
        image_size: side ``S`` in pixels (>= 8).
        seed: random seed.

    Returns:
        A :class:`ShapesSample` of ``images`` float32 ``[N, 3, S, S]``
        (normalised), ``labels`` int64 ``[N]`` and ``masks`` bool ``[N, S, S]``.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8, got {image_size}")
    gen = torch.Generator().manual_seed(seed)
    labels = _balanced_labels(num_samples, gen)
    parts = [_render(chunk, image_size, gen) for chunk in labels.split(_CHUNK)]
    images = torch.cat([p[0] for p in parts])
    masks = torch.cat([p[1] for p in parts])
    mean = torch.tensor(SYNTHETIC_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(SYNTHETIC_STD).view(1, 3, 1, 1)
    return ShapesSample((images - mean) / std, labels, masks)


def synthetic_dataset(num_samples: int, image_size: int = 32, seed: int = 0) -> TensorDataset:
    """The synthetic shapes dataset as a ``TensorDataset(images, labels)``.

    Items are ``(image float32 [3, S, S] normalised, label int64 scalar in
    0..9)``; see :func:`generate_shapes` for the content, determinism
    guarantee and the object masks.
    """
    sample = generate_shapes(num_samples, image_size, seed)
    return TensorDataset(sample.images, sample.labels)


# --------------------------------------------------------------------------
# CIFAR-10
# --------------------------------------------------------------------------

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


# --------------------------------------------------------------------------
# ImageFolder
# --------------------------------------------------------------------------

IMAGE_FOLDER_LAYOUT = "<root>/{train,val}/<class>/<image>"
"""Expected on-disk layout of :func:`image_folder`."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _image_folder_transform(image_size: int, augment: bool) -> transforms.Compose:
    if augment:
        geometry = [transforms.RandomResizedCrop(image_size), transforms.RandomHorizontalFlip()]
    else:
        geometry = [transforms.Resize(round(image_size * 256 / 224)), transforms.CenterCrop(image_size)]
    return transforms.Compose([*geometry, transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def image_folder(root: str | Path, train: bool, image_size: int = 224, augment: bool = False) -> datasets.ImageFolder:
    """An ImageNet-style folder laid out as :data:`IMAGE_FOLDER_LAYOUT`.

    Classes are the sub-folders of the split, sorted by name (label ``k`` is
    ``dataset.classes[k]``); images are files with a standard image extension
    (``.jpg``, ``.jpeg``, ``.png``, ...), searched recursively.

    Args:
        root: folder containing ``train`` and ``val``.
        train: read ``<root>/train`` if True, else ``<root>/val``.
        image_size: side ``S`` of the output images.
        augment: ``RandomResizedCrop(S)`` + horizontal flip (torch's global
            RNG) instead of resize to ``S * 256 / 224`` + centre crop ``S``.

    Returns:
        A ``torchvision.datasets.ImageFolder`` of ``(image float32 [3, S, S]
        normalised with ImageNet mean/std, label int)``.

    Raises:
        DatasetError: the split folder is missing, has no class sub-folders,
            or a class has no image. The message names the path and the
            expected layout.
    """
    split = Path(root) / ("train" if train else "val")
    if not split.is_dir():
        raise DatasetError(f"image folder {split} does not exist; expected layout {IMAGE_FOLDER_LAYOUT}")
    try:
        return datasets.ImageFolder(split, transform=_image_folder_transform(image_size, augment))
    except FileNotFoundError as exc:  # torchvision's "no class folder" / "no valid file"
        raise DatasetError(f"image folder {split}: {exc}; expected layout {IMAGE_FOLDER_LAYOUT}") from exc


# --------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------


def _epoch_seed(seed: int, epoch: int) -> int:
    """Mix ``(seed, epoch)`` into one 64-bit generator seed (distinct seeds do not share epochs)."""
    return (seed * 0x9E3779B97F4A7C15 + epoch) % 2**64


class EpochSampler(Sampler[int]):
    """Shuffling sampler whose order is a pure function of ``(seed, epoch)``.

    Epoch ``e`` visits ``torch.randperm(n, generator=g)`` where ``g`` is a
    fresh ``torch.Generator`` seeded from ``(seed, e)``: the order does not
    depend on how many epochs were iterated before, on the global RNG, or on
    whether the process was restarted. Call :meth:`set_epoch` before
    iterating each epoch (the epoch starts at 0).

    Resuming: with a ``DataLoader(dataset, batch_size=b, sampler=sampler)``,
    a run interrupted after ``k`` batches of epoch ``e`` resumes exactly by
    ``sampler.set_epoch(e)`` and skipping the first ``k`` batches of the
    loader's iterator (batch ``i`` holds positions ``i*b .. i*b+b-1`` of the
    epoch's permutation).
    """

    def __init__(self, num_samples: int, seed: int = 0) -> None:
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration yields."""
        self.epoch = epoch

    def order(self) -> Tensor:
        """The current epoch's order: int64 ``[n]``, a permutation of ``0..n-1``."""
        gen = torch.Generator().manual_seed(_epoch_seed(self.seed, self.epoch))
        return torch.randperm(self.num_samples, generator=gen)

    def __iter__(self) -> Iterator[int]:
        return iter(self.order().tolist())

    def __len__(self) -> int:
        return self.num_samples


def _subset(dataset: Dataset, size: int | None, seed: int) -> Dataset:
    """A seeded random subset of ``size`` items (the whole dataset if ``size`` is None or too large)."""
    total = len(dataset)  # type: ignore[arg-type]
    if size is None or size >= total:
        return dataset
    indices = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:size]
    return Subset(dataset, indices.tolist())


def _require_root(dataset: str, root: str | Path | None) -> Path:
    if root is None:
        layout = CIFAR10_LAYOUT if dataset == "cifar10" else IMAGE_FOLDER_LAYOUT
        raise ValueError(f"dataset {dataset!r} needs a root folder laid out as {layout}")
    return Path(root)


def _synthetic_splits(
    num_train: int | None, num_test: int | None, image_size: int | None, seed: int
) -> tuple[Dataset, Dataset, int]:
    """Train set (seed ``2*seed``), test set (seed ``2*seed + 1``) and class count."""
    size = 32 if image_size is None else image_size
    train = synthetic_dataset(10_000 if num_train is None else num_train, size, seed=2 * seed)
    test = synthetic_dataset(2_000 if num_test is None else num_test, size, seed=2 * seed + 1)
    return train, test, len(SHAPE_NAMES)


def _cifar10_splits(root: Path, image_size: int | None) -> tuple[Dataset, Dataset, int]:
    if image_size not in (None, 32):
        raise ValueError(f"CIFAR-10 images are 32x32; got image_size={image_size}")
    return cifar10(root, True, augment=True), cifar10(root, False), 10


def _image_folder_splits(root: Path, image_size: int | None) -> tuple[Dataset, Dataset, int]:
    size = 224 if image_size is None else image_size
    train, test = image_folder(root, True, size, augment=True), image_folder(root, False, size)
    if test.classes != train.classes:
        raise DatasetError(f"{root}: train and val class folders differ; expected layout {IMAGE_FOLDER_LAYOUT}")
    return train, test, len(train.classes)


def _splits(
    dataset: str,
    root: str | Path | None,
    num_train: int | None,
    num_test: int | None,
    image_size: int | None,
    seed: int,
) -> tuple[Dataset, Dataset, int]:
    """Train set, test set and number of classes for :func:`build_loaders`."""
    if dataset == "synthetic":
        return _synthetic_splits(num_train, num_test, image_size, seed)
    read = _cifar10_splits if dataset == "cifar10" else _image_folder_splits
    train, test, num_classes = read(_require_root(dataset, root), image_size)
    return _subset(train, num_train, seed), _subset(test, num_test, seed), num_classes


def build_loaders(
    dataset: str,
    root: str | Path | None = None,
    batch_size: int = 128,
    num_train: int | None = None,
    num_test: int | None = None,
    image_size: int | None = None,
    seed: int = 0,
    num_workers: int = 0,
) -> tuple[DataLoader, DataLoader, int]:
    """Train and test loaders for one of :data:`DATASETS`.

    Args:
        dataset: ``"synthetic"`` (built in, :func:`synthetic_dataset`),
            ``"cifar10"`` (:func:`cifar10`, train split augmented) or
            ``"imagefolder"`` (:func:`image_folder`, train split augmented).
        root: dataset folder; required for ``"cifar10"`` and
            ``"imagefolder"``, ignored for ``"synthetic"``.
        batch_size: images per batch (both loaders).
        num_train: training images; synthetic default 10,000, otherwise a
            seeded random subset of this size (default: all).
        num_test: test images; synthetic default 2,000, otherwise a seeded
            random subset (default: all).
        image_size: side of the images; default 32 for synthetic and
            CIFAR-10 (which only accepts 32), 224 for imagefolder.
        seed: fixes the synthetic images (train generated with seed
            ``2*seed``, test with ``2*seed + 1``, so they never overlap), the
            subsets, and the training order.
        num_workers: DataLoader worker processes.

    Returns:
        ``(train_loader, test_loader, num_classes)``. Batches are
        ``(images float32 [B, 3, S, S], labels int64 [B])``.

        Training order contract: ``train_loader.sampler`` is an
        :class:`EpochSampler`; the trainer calls
        ``train_loader.sampler.set_epoch(epoch)`` before each epoch, and the
        epoch's batches are then a pure function of ``(seed, epoch)``. To
        resume at batch ``k`` of epoch ``e``, call ``set_epoch(e)`` and skip
        the first ``k`` batches. The last batch may be smaller
        (``drop_last=False``). Random augmentation (cifar10/imagefolder)
        draws from torch's global RNG (per worker when ``num_workers > 0``)
        and is not covered by this contract; the synthetic data has no
        augmentation. The test loader is not shuffled.

    Raises:
        ValueError: unknown ``dataset`` (the message lists the valid names),
            missing ``root``, or an ``image_size`` CIFAR-10 cannot provide.
        DatasetError: the folder is missing or malformed.
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; valid names: {', '.join(DATASETS)}")
    train, test, num_classes = _splits(dataset, root, num_train, num_test, image_size, seed)
    sampler = EpochSampler(len(train), seed)  # type: ignore[arg-type]
    train_loader = DataLoader(train, batch_size=batch_size, sampler=sampler, num_workers=num_workers)
    test_loader = DataLoader(test, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    return train_loader, test_loader, num_classes
