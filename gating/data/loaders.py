"""Train/test loaders over any dataset of :data:`DATASETS`, with a resumable training order.

:func:`build_loaders` picks the source, draws the seeded subsets and returns a
pair of :class:`~torch.utils.data.DataLoader`; the training loader's order
comes from an :class:`EpochSampler`, a pure function of ``(seed, epoch)``.
:class:`GlobalBatchSampler` and :class:`ShardSampler` split that order and a
test set between the processes of a data-parallel run.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from .cifar10 import CIFAR10_LAYOUT, cifar10
from .errors import DatasetError
from .imagefolder import IMAGE_FOLDER_LAYOUT, image_folder
from .synthetic import SHAPE_NAMES, synthetic_dataset

__all__ = ["DATASETS", "EpochSampler", "GlobalBatchSampler", "ShardSampler", "build_loaders"]

DATASETS = ("synthetic", "cifar10", "imagefolder")
"""Names accepted by :func:`build_loaders`."""


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


class GlobalBatchSampler(Sampler[list[int]]):
    """Batch sampler of one process of a data-parallel run: its contiguous share of every global batch.

    Step ``k`` of epoch ``e`` has the global batch ``order[k*B : (k+1)*B]`` of
    the :class:`EpochSampler` order of ``(seed, e)`` (``B = global_batch``);
    process ``rank`` of ``world_size`` gets its slice ``rank*b : (rank+1)*b``
    with ``b = B / world_size``. Concatenated in rank order, the processes'
    batches are the batch a single process with ``world_size=1`` gets, so a
    data-parallel run sees exactly the data of the single-process run with
    the same global batch. The last incomplete global batch of an epoch is
    dropped (every step has the same ``B``, which the equivalence needs);
    the next epoch's permutation reaches the dropped images.

    Raises:
        ValueError: ``world_size < 1``, ``rank`` outside ``[0, world_size)``,
            ``global_batch`` smaller than ``world_size`` or not a multiple of
            it, or fewer than ``global_batch`` samples.
    """

    def __init__(self, num_samples: int, global_batch: int, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank {rank} of world_size {world_size}")
        if global_batch < world_size:
            raise ValueError(f"the global batch ({global_batch}) is smaller than the number of processes "
                             f"({world_size}): every process needs at least one image per step")
        if global_batch % world_size:
            raise ValueError(f"the global batch ({global_batch}) must be a multiple of the number of processes "
                             f"({world_size})")
        if num_samples < global_batch:
            raise ValueError(f"{num_samples} training images make no full global batch of {global_batch}")
        self.order = EpochSampler(num_samples, seed)
        self.global_batch, self.rank, self.world_size = global_batch, rank, world_size
        self.local_batch = global_batch // world_size

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches the next iteration yields."""
        self.order.set_epoch(epoch)

    def __iter__(self) -> Iterator[list[int]]:
        order = self.order.order()
        for step in range(len(self)):
            start = step * self.global_batch + self.rank * self.local_batch
            yield order[start : start + self.local_batch].tolist()

    def __len__(self) -> int:
        return self.order.num_samples // self.global_batch


class ShardSampler(Sampler[int]):
    """Process ``rank``'s contiguous share of ``0..num_samples-1`` (sizes differ by at most one; may be empty).

    For evaluation in a data-parallel run: every sample is seen by exactly
    one process, in order, without padding; metrics are then summed over
    the processes.
    """

    def __init__(self, num_samples: int, rank: int = 0, world_size: int = 1) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank {rank} of world_size {world_size}")
        self.start = num_samples * rank // world_size
        self.stop = num_samples * (rank + 1) // world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop - self.start


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
