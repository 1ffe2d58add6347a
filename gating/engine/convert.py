"""Step 3 of the inference build: replace each chain by one inference module, and say what stays PyTorch.

Per chain (:mod:`gating.engine.fuse`), by its convolution:

* ``nn.Conv2d`` the op takes (groups = 1, zero padding): a
  :class:`~gating.engine.dense.DenseConvInference` (BatchNorm folded into the
  weights, ``gating::conv2d`` with the residual add and ReLU in its epilogue);
* other ``nn.Conv2d`` (grouped, depthwise, another padding mode): a copy with
  the BatchNorm folded in (:func:`~gating.engine.dense.folded_conv2d`), run as
  ``F.conv2d``; its residual add and ReLU stay PyTorch ops;
* ``ChannelGatedConv2d``: ``gating.ops.GatedConvInference`` (``fold_gated_conv``:
  gate BatchNorm and thresholds into the gate affine, the following BatchNorm
  into scale/shift; ``gating::gated_conv2d``);
* ``RuntimeGatedConv2d``: ``gating.ops.RuntimeConvInference``
  (``fold_runtime_conv``: its own BatchNorm into scale/shift;
  ``gating::channel_sparse_conv2d``). The gate it consults (predictor,
  static importance) stays in the folding dtype, so a float16/bfloat16 build
  ranks channels in float32 as the float32 model does.

The replacement keeps the convolution's module name, so gated layers keep the
names of ``GatedModel.gated_names``. Folding runs in ``fold_dtype`` (float32,
or float64 when the model or the build is float64) on copies of the layers;
weights are packed once in the build dtype. What cannot be converted stays the
model's own (eval-mode) module and gets one note naming it: a convolution the
op cannot take (except depthwise ones, which are expected), a module called
more than once (one module cannot carry two fusions), a convolution that is
not an ``nn.Conv2d``, and a BatchNorm that does not follow a convolution as
its only consumer.
"""

from __future__ import annotations

import collections
import copy

import torch
import torch.fx as fx
from torch import nn

from ..convs import is_depthwise
from ..gates import ChannelGatedConv2d, RuntimeGatedConv2d, unsupported_reason
from ..ops import GatedConvInference, RuntimeConvInference, fold_runtime_conv
from .dense import DenseConvInference, folded_conv2d
from .fuse import Absorbs, Chain, find_chains

__all__ = ["INFERENCE_MODULES", "convert"]

INFERENCE_MODULES = (DenseConvInference, GatedConvInference, RuntimeConvInference)
"""The modules a converted chain runs as (their tensors are already in the build dtype)."""

_CONV = nn.modules.conv._ConvNd
_GATES = (ChannelGatedConv2d, RuntimeGatedConv2d)


def _note(name: str, module: nn.Module, reason: str) -> str:
    """The one-line fallback note for the layer ``name``."""
    return f"gating.engine: layer {name!r} ({type(module).__name__}) runs as the PyTorch op: {reason}"


def _absorbs(module: nn.Module) -> Absorbs | None:
    """What a module's replacement absorbs; ``None`` for modules the build does not replace."""
    if isinstance(module, ChannelGatedConv2d):
        return Absorbs(batchnorm=True, epilogue=True)
    if isinstance(module, RuntimeGatedConv2d):
        return Absorbs(batchnorm=False, epilogue=True)
    if type(module) is nn.Conv2d:
        return Absorbs(batchnorm=True, epilogue=unsupported_reason(module) is None)
    return None


def _replacement(
    chain: Chain, conv: nn.Module, bn: nn.Module | None, dtype: torch.dtype, fold_dtype: torch.dtype, dense: str
) -> nn.Module:
    """The inference module of one chain (folding on copies of ``conv`` and ``bn`` cast to ``fold_dtype``)."""
    name, relu = str(chain.conv.target), chain.relu is not None
    conv = copy.deepcopy(conv).to(fold_dtype)
    bn = None if bn is None else copy.deepcopy(bn).to(fold_dtype)
    if isinstance(conv, ChannelGatedConv2d):
        return _vectors_at(GatedConvInference.from_gated(conv, bn, relu=relu, dtype=dtype), dtype)
    if isinstance(conv, RuntimeGatedConv2d):
        return _vectors_at(RuntimeConvInference(conv, fold_runtime_conv(conv, dtype), relu=relu), dtype)
    if unsupported_reason(conv) is not None:
        return folded_conv2d(conv, bn, dtype)
    return DenseConvInference(conv, bn, dtype, relu=relu, name=name, backend=dense)


def _vectors_at(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """``module`` with its folded ``[C_out]`` buffers in ``promote_types(dtype, float32)``, the ops' epilogue precision.

    Folding may have run wider (float64 for a float64 model built in float32).
    """
    accumulate = torch.promote_types(dtype, torch.float32)
    for name, buffer in module.named_buffers(recurse=False):
        if buffer.dim() == 1 and buffer.is_floating_point():
            setattr(module, name, buffer.to(accumulate))
    return module


def _replace(gm: fx.GraphModule, chain: Chain, module: nn.Module) -> None:
    """Put ``module`` under the convolution's name and one call of it in place of the chain's nodes."""
    target = str(chain.conv.target)
    gm.add_submodule(target, module)
    args = (chain.conv.args[0],) if chain.add is None else (chain.conv.args[0], chain.residual())
    with gm.graph.inserting_before(chain.last):
        fused = gm.graph.call_module(target, args)
    chain.last.replace_all_uses_with(fused)
    for node in reversed(chain.nodes):
        gm.graph.erase_node(node)


def _called_once(gm: fx.GraphModule) -> set[str]:
    """Names of the modules that exactly one ``call_module`` node runs."""
    calls = collections.Counter(str(node.target) for node in gm.graph.nodes if node.op == "call_module")
    return {name for name, count in calls.items() if count == 1}


def _notes(gm: fx.GraphModule, chains: list[Chain], once: set[str]) -> list[str]:
    """In graph order, a note per convolution or BatchNorm that will not run as a registered op."""
    heads = {chain.conv: chain for chain in chains}
    absorbed = {node for chain in chains for node in chain.nodes}
    notes = []
    for node in gm.graph.nodes:
        module = gm.get_submodule(str(node.target)) if node.op == "call_module" else None
        name = str(node.target)
        if node in heads:
            reason = unsupported_reason(module) if type(module) is nn.Conv2d else None
            if reason is not None and not is_depthwise(module, multiplier=True):
                folded = "; its BatchNorm is folded into its weights" if heads[node].bn is not None else ""
                notes.append(_note(name, module, reason + folded))
        elif node in absorbed or not isinstance(module, (_CONV, *_GATES, nn.BatchNorm2d)):
            continue
        elif name not in once:
            notes.append(_note(name, module, "it is called more than once, so it cannot carry a fusion"))
        elif isinstance(module, nn.BatchNorm2d):
            notes.append(_note(name, module, _batchnorm_reason(gm, node, module)))
        else:
            notes.append(_note(name, module, "the engine converts nn.Conv2d and the gated convolutions only"))
    return notes


def _batchnorm_reason(gm: fx.GraphModule, node: fx.Node, bn: nn.BatchNorm2d) -> str:
    """Why the BatchNorm of ``node`` is not folded (read on the graph before conversion)."""
    if bn.running_mean is None or bn.running_var is None:
        return "it tracks no running statistics (eval mode uses batch statistics), so it does not fold"
    source = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
    producer = gm.get_submodule(str(source.target)) if source is not None and source.op == "call_module" else None
    if isinstance(producer, RuntimeGatedConv2d):
        return "a runtime gate already holds its BatchNorm and its pruned channels must stay exact zeros"
    if isinstance(producer, (*_GATES, _CONV)):
        return f"it follows {str(source.target)!r}, whose output also feeds other operations or is not converted"
    return "it does not directly follow a convolution, so it is not folded"


@torch.no_grad()
def convert(
    gm: fx.GraphModule, dtype: torch.dtype, fold_dtype: torch.dtype, *, fuse_residual: bool, dense: str = "fastest"
) -> list[str]:
    """Replace every chain of ``gm`` (eval mode, on the build device) in place; returns the fallback notes.

    ``dense``: the backend of dense convolutions (``DENSE_BACKENDS``).

    Modules called more than once keep their PyTorch module. Depthwise
    convolutions run as folded ``F.conv2d`` without a note (the op takes
    groups = 1 only; they are the common case of MobileNets); other
    convolutions the op cannot take get a note.
    """
    once = _called_once(gm)

    def absorbs(name: str, module: nn.Module) -> Absorbs | None:
        return _absorbs(module) if name in once else None

    chains = find_chains(gm, absorbs, fuse_residual=fuse_residual)
    notes = _notes(gm, chains, once)
    for chain in chains:
        conv = gm.get_submodule(str(chain.conv.target))
        bn = None if chain.bn is None else gm.get_submodule(str(chain.bn.target))
        _replace(gm, chain, _replacement(chain, conv, bn, dtype, fold_dtype, dense))
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return notes
