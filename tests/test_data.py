"""Tests for gating.data: synthetic shapes, CIFAR-10 and ImageFolder readers, loaders."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from gating import data
from gating.data import DatasetError, EpochSampler

from _helpers import fake_image_folder

# --------------------------------------------------------------------------
# Synthetic shapes
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shapes() -> data.ShapesSample:
    return data.generate_shapes(1000, image_size=32, seed=0)


def _raw_pixels(images: torch.Tensor) -> torch.Tensor:
    """Undo the synthetic normalisation: values back in [0, 1]."""
    mean = torch.tensor(data.SYNTHETIC_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(data.SYNTHETIC_STD).view(1, 3, 1, 1)
    return images * std + mean


def test_synthetic_shapes_dtypes_and_balance(shapes: data.ShapesSample) -> None:
    assert shapes.images.shape == (1000, 3, 32, 32) and shapes.images.dtype == torch.float32
    assert shapes.labels.shape == (1000,) and shapes.labels.dtype == torch.int64
    assert shapes.masks.shape == (1000, 32, 32) and shapes.masks.dtype == torch.bool
    assert torch.bincount(shapes.labels, minlength=10).tolist() == [100] * 10
    assert len(data.SHAPE_NAMES) == 10


def test_synthetic_is_normalised(shapes: data.ShapesSample) -> None:
    assert abs(shapes.images.mean().item()) < 0.2
    assert 0.8 < shapes.images.std().item() < 1.2
    raw = _raw_pixels(shapes.images)
    assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5


def test_unbalanced_count_is_within_one() -> None:
    counts = torch.bincount(data.generate_shapes(25, seed=3).labels, minlength=10)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 25


def test_synthetic_is_deterministic_given_seed() -> None:
    a, b, c = (data.generate_shapes(64, seed=s) for s in (7, 7, 8))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a.images, c.images)
    assert not torch.equal(a.masks, c.masks)


def test_synthetic_does_not_depend_on_thread_count() -> None:
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = data.generate_shapes(300, seed=2)
        torch.set_num_threads(2)
        double = data.generate_shapes(300, seed=2)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(x, y) for x, y in zip(single, double))


def test_objects_cover_a_minority_of_each_image(shapes: data.ShapesSample) -> None:
    coverage = shapes.masks.float().mean(dim=(1, 2))
    assert 0.05 < coverage.mean().item() < 0.30
    assert coverage.min().item() > 0.0
    assert coverage.max().item() < 0.5


def test_every_class_has_similar_coverage(shapes: data.ShapesSample) -> None:
    coverage = shapes.masks.float().mean(dim=(1, 2))
    per_class = torch.stack([coverage[shapes.labels == k].mean() for k in range(10)])
    assert per_class.max() - per_class.min() < 0.05


def test_object_differs_from_background(shapes: data.ShapesSample) -> None:
    raw = _raw_pixels(shapes.images)
    fg = shapes.masks[:, None].float()
    obj = (raw * fg).sum(dim=(2, 3)) / fg.sum(dim=(2, 3))
    bg = (raw * (1 - fg)).sum(dim=(2, 3)) / (1 - fg).sum(dim=(2, 3))
    assert (obj - bg).norm(dim=1).min() > 0.1


def _nearest_centroid_accuracy(features: torch.Tensor, labels: torch.Tensor) -> float:
    centroids = torch.stack([features[labels == k].mean(0) for k in range(10)])
    predicted = torch.cdist(features, centroids).argmin(1)
    return (predicted == labels).float().mean().item()


def test_colour_is_not_the_label(shapes: data.ShapesSample) -> None:
    raw = _raw_pixels(shapes.images)
    fg = shapes.masks[:, None].float()
    object_colour = (raw * fg).sum(dim=(2, 3)) / fg.sum(dim=(2, 3))
    image_colour = raw.mean(dim=(2, 3))
    # chance is 0.1; a colour-coded label would give ~1.0
    assert _nearest_centroid_accuracy(object_colour, shapes.labels) < 0.2
    assert _nearest_centroid_accuracy(image_colour, shapes.labels) < 0.2


def test_synthetic_dataset_items_and_size() -> None:
    ds = data.synthetic_dataset(20, image_size=48, seed=1)
    image, label = ds[0]
    assert len(ds) == 20
    assert image.shape == (3, 48, 48) and image.dtype == torch.float32
    assert label.dtype == torch.int64 and 0 <= label.item() <= 9


@pytest.mark.parametrize("kwargs", [{"num_samples": 0}, {"num_samples": 10, "image_size": 4}])
def test_synthetic_rejects_bad_arguments(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        data.generate_shapes(**kwargs)


# --------------------------------------------------------------------------
# EpochSampler
# --------------------------------------------------------------------------


def _order(sampler: EpochSampler, epoch: int) -> list[int]:
    sampler.set_epoch(epoch)
    return list(sampler)


def test_epoch_sampler_is_a_permutation() -> None:
    sampler = EpochSampler(257, seed=0)
    assert len(sampler) == 257
    assert sorted(_order(sampler, 0)) == list(range(257))
    assert sorted(_order(sampler, 5)) == list(range(257))


def test_epoch_sampler_depends_only_on_seed_and_epoch() -> None:
    used = EpochSampler(100, seed=3)
    for epoch in range(4):
        _order(used, epoch)
    fresh = EpochSampler(100, seed=3)
    assert _order(used, 2) == _order(fresh, 2)
    assert _order(fresh, 2) == _order(fresh, 2)
    assert _order(fresh, 2) != _order(fresh, 3)
    assert _order(fresh, 2) != _order(EpochSampler(100, seed=4), 2)
    assert _order(EpochSampler(100, seed=1), 0) != _order(EpochSampler(100, seed=0), 1)


def test_epoch_sampler_ignores_global_rng() -> None:
    sampler = EpochSampler(50, seed=0)
    torch.manual_seed(1)
    first = _order(sampler, 1)
    torch.manual_seed(2)
    assert _order(sampler, 1) == first


# --------------------------------------------------------------------------
# build_loaders
# --------------------------------------------------------------------------


def test_build_loaders_synthetic_batches() -> None:
    train, test, num_classes = data.build_loaders("synthetic", batch_size=16, num_train=40, num_test=24)
    assert num_classes == 10
    assert isinstance(train.sampler, EpochSampler)
    images, labels = next(iter(train))
    assert images.shape == (16, 3, 32, 32) and images.dtype == torch.float32
    assert labels.shape == (16,) and labels.dtype == torch.int64
    assert [len(y) for _, y in train] == [16, 16, 8]
    assert [len(y) for _, y in test] == [16, 8]


def test_build_loaders_test_split_is_unshuffled_and_disjoint() -> None:
    train, test, _ = data.build_loaders("synthetic", batch_size=8, num_train=16, num_test=16)
    test_images = torch.cat([x for x, _ in test])
    assert torch.equal(test_images, test.dataset.tensors[0])
    assert not torch.equal(test_images, train.dataset.tensors[0])


def _batches(loader: torch.utils.data.DataLoader, epoch: int) -> list[torch.Tensor]:
    loader.sampler.set_epoch(epoch)
    return [labels for _, labels in loader]


def test_build_loaders_training_order_is_resumable() -> None:
    first, _, _ = data.build_loaders("synthetic", batch_size=8, num_train=40, num_test=10, seed=5)
    second, _, _ = data.build_loaders("synthetic", batch_size=8, num_train=40, num_test=10, seed=5)
    full = _batches(first, 2)
    second.sampler.set_epoch(2)
    resumed = [labels for i, (_, labels) in enumerate(second) if i >= 3]
    assert all(torch.equal(a, b) for a, b in zip(full[3:], resumed, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(full, _batches(first, 3)))


def test_build_loaders_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="synthetic.*cifar10.*imagefolder"):
        data.build_loaders("mnist")


@pytest.mark.parametrize("name", ["cifar10", "imagefolder"])
def test_build_loaders_requires_root(name: str) -> None:
    with pytest.raises(ValueError, match="root"):
        data.build_loaders(name)


# --------------------------------------------------------------------------
# CIFAR-10
# --------------------------------------------------------------------------

CIFAR_FILES = [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]


def _write_pickle(path: Path, entry: dict) -> None:
    with path.open("wb") as f:
        pickle.dump(entry, f)


def _fake_cifar(root: Path, per_batch: int = 6, key=lambda k: k.encode()) -> Path:
    """Write a tiny CIFAR-10 folder in the real pickle format; image 0 of each batch is pure red."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in CIFAR_FILES:
        pixels = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        pixels[0] = 0
        pixels[0, :1024] = 255
        labels = [i % 10 for i in range(per_batch)]
        _write_pickle(folder / name, {key("batch_label"): name.encode(), key("data"): pixels, key("labels"): labels})
    names = [n.encode() for n in ("airplane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")]
    _write_pickle(folder / "batches.meta", {key("label_names"): names, key("num_cases_per_batch"): per_batch})
    return root


@pytest.mark.parametrize("key", [lambda k: k.encode(), str], ids=["bytes-keys", "str-keys"])
def test_cifar10_reads_the_pickle_format(tmp_path: Path, key) -> None:
    root = _fake_cifar(tmp_path, key=key)
    train, test = data.cifar10(root, train=True), data.cifar10(str(root), train=False)
    assert len(train) == 30 and len(test) == 6
    assert train.classes[0] == "airplane" and len(train.classes) == 10
    image, label = test[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and label == 0
    red = (1.0 - data.CIFAR10_MEAN[0]) / data.CIFAR10_STD[0]
    assert torch.allclose(image[0], torch.full((32, 32), red))
    assert torch.allclose(image[1], torch.full((32, 32), -data.CIFAR10_MEAN[1] / data.CIFAR10_STD[1]))
    assert data.cifar10(root, train=True, augment=True)[3][0].shape == (3, 32, 32)


def test_cifar10_missing_folder_names_path(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="cifar-10-batches-py") as info:
        data.cifar10(tmp_path / "nowhere", train=True)
    assert str(tmp_path / "nowhere") in str(info.value)
    assert "data_batch_1" in str(info.value)


def test_cifar10_missing_files_are_listed(tmp_path: Path) -> None:
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"")
    with pytest.raises(DatasetError, match="data_batch_2.*test_batch.*batches.meta") as info:
        data.cifar10(tmp_path, train=False)
    assert str(tmp_path / "cifar-10-batches-py") in str(info.value)


def test_cifar10_corrupt_file_names_it(tmp_path: Path) -> None:
    root = _fake_cifar(tmp_path)
    (root / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match="test_batch"):
        data.cifar10(root, train=False)


def test_cifar10_wrong_array_shape_is_rejected(tmp_path: Path) -> None:
    root = _fake_cifar(tmp_path)
    bad = {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}
    _write_pickle(root / "cifar-10-batches-py" / "test_batch", bad)
    with pytest.raises(DatasetError, match="3072"):
        data.cifar10(root, train=False)


def test_build_loaders_cifar10_subset(tmp_path: Path) -> None:
    root = _fake_cifar(tmp_path)
    train, test, num_classes = data.build_loaders("cifar10", root, batch_size=4, num_train=8)
    images, labels = next(iter(train))
    assert num_classes == 10 and len(train.dataset) == 8 and len(test.dataset) == 6
    assert images.shape == (4, 3, 32, 32) and labels.dtype == torch.int64
    with pytest.raises(ValueError, match="32"):
        data.build_loaders("cifar10", root, image_size=64)


# --------------------------------------------------------------------------
# ImageFolder
# --------------------------------------------------------------------------


def test_image_folder_loads_pngs(tmp_path: Path) -> None:
    root = fake_image_folder(tmp_path)
    ds = data.image_folder(root, train=False, image_size=16)
    assert ds.classes == ["cat", "dog", "eel"] and len(ds) == 6
    image, label = ds[5]
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32 and label == 2
    assert data.image_folder(root, train=True, image_size=16, augment=True)[0][0].shape == (3, 16, 16)


def test_image_folder_missing_split_names_path_and_layout(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"\{train,val\}/<class>/<image>") as info:
        data.image_folder(tmp_path, train=True)
    assert str(tmp_path / "train") in str(info.value)


def test_image_folder_without_classes(tmp_path: Path) -> None:
    (tmp_path / "val").mkdir()
    with pytest.raises(DatasetError, match="<class>") as info:
        data.image_folder(tmp_path, train=False)
    assert str(tmp_path / "val") in str(info.value)


def test_image_folder_classes_without_images(tmp_path: Path) -> None:
    (tmp_path / "train" / "cat").mkdir(parents=True)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    with pytest.raises(DatasetError, match="cat") as info:
        data.image_folder(tmp_path, train=True)
    assert str(tmp_path / "train") in str(info.value)


def test_build_loaders_imagefolder(tmp_path: Path) -> None:
    root = fake_image_folder(tmp_path)
    train, test, num_classes = data.build_loaders("imagefolder", root, batch_size=4, image_size=24)
    images, labels = next(iter(test))
    assert num_classes == 3 and len(train.dataset) == 6
    assert images.shape == (4, 3, 24, 24) and labels.tolist() == [0, 0, 1, 1]


def test_build_loaders_imagefolder_rejects_mismatched_classes(tmp_path: Path) -> None:
    root = fake_image_folder(tmp_path)
    (root / "val" / "eel").rename(root / "val" / "emu")
    with pytest.raises(DatasetError, match="class folders differ"):
        data.build_loaders("imagefolder", root, image_size=24)
