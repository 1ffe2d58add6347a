"""ImageNet-style image folders: ``<root>/{train,val}/<class>/<image>`` (never downloads)."""

from __future__ import annotations

from pathlib import Path

from torchvision import datasets, transforms

from .errors import DatasetError

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "IMAGE_FOLDER_LAYOUT", "image_folder"]

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
