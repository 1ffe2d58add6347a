"""gating: dynamic runtime channel gating for CNNs.

Public API:

* ``GateConfig``: how a network is gated (``gating.config``).
* ``ChannelGatedConv2d``: the partial-sum gated convolution (``gating.gates``).
* ``GatedModel``: wraps a CNN, swaps its convs, owns losses, stats, reports
  (``gating.model``).
* ``accounting``: exact MAC and byte counts (``Report``, ``count_model``).
* ``models``: CIFAR ResNet-20/56; ``data``: built-in, CIFAR-10 and
  ImageFolder datasets; ``distill``: knowledge-distillation trainer;
  ``io``: atomic checkpoints.
* ``prune``: static structured pruning (dependency groups, criteria, surgery).
* ``build``, ``save``, ``load``: a model as safetensors weights plus a JSON
  recipe, rebuilt without pickle (``gating.io.export``).
* ``engine``: the inference build (``gating.engine.build``; a workflow over
  the model, so not a ``GatedModel`` method): BatchNorm folded, residual add
  and ReLU fused, convolutions on the registered ops (``docs/engine.md``).
* ``train``: ``python -m gating train`` as a function (``run_train``,
  ``TrainRunConfig``), on one process or under ``torchrun``.
"""

from .accounting import LayerCount, Report
from .recorder import count_model
from .config import GateConfig
from .gates import ChannelGatedConv2d
from .io import build, load, save
from .model import GatedModel

__all__ = [
    "ChannelGatedConv2d",
    "GateConfig",
    "GatedModel",
    "LayerCount",
    "Report",
    "build",
    "count_model",
    "load",
    "save",
]
