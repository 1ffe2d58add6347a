"""Dependency groups: the channels of a network that must be removed together.

``dependency_groups(model, example)`` traces ``model`` with ``torch.fx``,
propagates a *channel layout* along every tensor and returns the groups of
coupled channels (``docs/design.md#static-pruning``):

* a convolution (groups = 1) or ``nn.Linear`` *produces* a new channel space
  (its output channels) and *consumes* its input's layout (its input channels
  or features);
* BatchNorm, depthwise convolutions (groups = in = out channels), activations,
  pooling, dropout and other per-channel ops *follow* their input's layout;
* element-wise ``+ - * /`` of two tensors couples their layouts (residual
  adds, squeeze-excitation scales), so their producers form one group;
* ``torch.cat`` along channels concatenates layouts (each input keeps its own
  group, at an offset in the consumers of the concatenation);
* flattening ``[N, C, H, W]`` to ``[N, C*H*W]`` keeps the layout with ``H*W``
  features per channel, so the ``nn.Linear`` head after it is a consumer.

A module that implements ``prune_channels(out_keep, in_keep)`` (as
``gating.ChannelGatedConv2d`` does) is traced as a leaf and treated like a
convolution with groups = 1. The model's inputs and outputs are never pruned:
a group touching them is reported with ``prunable = False``.

Anything the tracer cannot follow (a grouped convolution that is not
depthwise, a channel split or slice, an unknown module with parameters, a
module called twice) raises :class:`TraceError` naming the operation and the
module, before anything is changed.
"""

from __future__ import annotations

import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from .layout import DependencyGroup, Layout, Member, Segment, TraceError
from .tracer import Propagation

__all__ = ["DependencyGroup", "Layout", "Member", "Segment", "TraceError", "dependency_groups",
           "following_batchnorms", "trace", "traced_network"]


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return hasattr(m, "prune_channels") or super().is_leaf_module(m, qualname)


def trace(model: nn.Module) -> fx.GraphModule:
    """``torch.fx`` graph of ``model`` with layers implementing ``prune_channels`` kept as leaves.

    Raises :class:`TraceError` naming the failing module when fx cannot trace
    it (data-dependent control flow, for instance).
    """
    try:
        graph = _Tracer().trace(model)
    except Exception as err:  # fx raises many types; report them as one
        raise TraceError(f"torch.fx cannot trace {type(model).__name__}: {str(err).splitlines()[0]}") from err
    return fx.GraphModule(model, graph)


@torch.no_grad()
def dependency_groups(model: nn.Module, example: torch.Tensor) -> list[DependencyGroup]:
    """The dependency groups of ``model`` for an input like ``example`` (e.g. ``[1, 3, H, W]``).

    ``model`` is not changed (its training mode is kept; one forward runs on
    ``example`` to learn the shapes). Module names are relative to ``model``.
    Raises :class:`TraceError` for operations the tracer cannot follow.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"dependency_groups: model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(example, torch.Tensor) or example.dim() < 2:
        raise ValueError(f"dependency_groups: example must be a tensor [N, C, ...], got {getattr(example, 'shape', example)}")
    network, prefix = traced_network(model)
    gm = trace(network)
    was_training = network.training
    network.eval()
    try:
        ShapeProp(gm).propagate(example)
    finally:
        network.train(was_training)
    propagation = Propagation(gm)
    propagation.run()
    groups = propagation.groups()
    if prefix:
        for group in groups:
            group.producers = [prefix + name for name in group.producers]
            group.members = [Member(prefix + m.module, m.role, m.layout) for m in group.members]
    return groups


def traced_network(model: nn.Module) -> tuple[nn.Module, str]:
    """The module the tracer follows and the prefix of its names in ``model``.

    A wrapper names the network it runs in a ``pruning_root`` attribute
    (``GatedModel.pruning_root = "model"``); wrappers may nest.
    """
    prefix = ""
    while isinstance(getattr(model, "pruning_root", None), str):
        prefix += model.pruning_root + "."
        model = model.get_submodule(model.pruning_root)
    return model, prefix


def following_batchnorms(network: nn.Module) -> dict[str, str]:
    """``{conv name: BatchNorm name}`` for every ``nn.Conv2d`` whose output only feeds one ``BatchNorm2d``.

    Read from the ``torch.fx`` graph of ``network`` (:func:`trace`; names
    relative to ``network``). ``GatedModel`` moves such a BatchNorm into a
    runtime gate, so that the gate's pruned channels leave it as exact zeros.
    """
    gm = trace(network)
    pairs = {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(gm.get_submodule(str(node.target)), nn.Conv2d):
            continue
        users = list(node.users)
        if len(users) == 1 and users[0].op == "call_module":
            follower = gm.get_submodule(str(users[0].target))
            if isinstance(follower, nn.BatchNorm2d):
                pairs[str(node.target)] = str(users[0].target)
    return pairs
