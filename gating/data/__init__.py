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

Modules: :mod:`~gating.data.synthetic` (the generated shapes),
:mod:`~gating.data.cifar10`, :mod:`~gating.data.imagefolder`,
:mod:`~gating.data.loaders` (:func:`build_loaders`, :class:`EpochSampler`) and
:mod:`~gating.data.errors` (:class:`DatasetError`). Every public name is
re-exported here, so ``gating.data.<name>`` is the stable spelling. The
attribute ``gating.data.cifar10`` is the function :func:`cifar10`, not its
module; reach the module with ``from gating.data.cifar10 import ...``.
"""

from __future__ import annotations

from .cifar10 import CIFAR10_LAYOUT, CIFAR10_MEAN, CIFAR10_STD, CIFAR10Pickles, cifar10
from .errors import DatasetError
from .imagefolder import IMAGE_FOLDER_LAYOUT, IMAGENET_MEAN, IMAGENET_STD, image_folder
from .loaders import DATASETS, EpochSampler, GlobalBatchSampler, ShardSampler, build_loaders
from .synthetic import SHAPE_NAMES, SYNTHETIC_MEAN, SYNTHETIC_STD, ShapesSample, generate_shapes, synthetic_dataset

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
    "GlobalBatchSampler",
    "ShardSampler",
    "ShapesSample",
    "build_loaders",
    "cifar10",
    "generate_shapes",
    "image_folder",
    "synthetic_dataset",
]
