"""Step 2 of the inference build: find what each convolution's epilogue can absorb.

A :class:`Chain` is a convolution node and the nodes after it that the build
folds or fuses into it, each the *only* consumer of the one before:

    conv -> [BatchNorm2d] -> [add(·, residual)] -> [ReLU]

which is ``relu(bn(conv(x)) + residual)``, the end of a residual block, and
also covers ``relu(bn(conv(x)))``, ``bn(conv(x)) + residual`` (MobileNetV2's
linear bottleneck) and every shorter prefix. What a convolution may absorb
is its :class:`Absorbs`: a dense conv the op cannot run (grouped, depthwise)
absorbs only its BatchNorm (folded into its weights); a runtime gate no
BatchNorm (it holds its own; its pruned channels must stay exact zeros).

The residual add is the plain two-operand ``+`` (``operator.add``/``iadd``,
``torch.add`` or ``Tensor.add`` without ``alpha``); the other operand becomes
the op's ``residual`` argument and must have the output's shape (true of
residual blocks). When both operands of an add end chains (a projection
shortcut), the convolution first in graph order takes the add, so the
block's main branch absorbs it and the shortcut is its residual. The ReLU is
``nn.ReLU``, ``F.relu``, ``torch.relu`` or ``Tensor.relu`` (in place or not:
the fused op writes a fresh tensor); other activations (``ReLU6``, ...) stay
PyTorch ops after the fused call.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Callable

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

__all__ = ["Absorbs", "Chain", "find_chains", "foldable_batchnorm"]

_ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)
_ADD_METHODS = ("add", "add_")
_IN_PLACE_ADDS = (operator.iadd, "add_")
_RELU_FUNCTIONS = (F.relu, torch.relu, torch.relu_)
_RELU_METHODS = ("relu", "relu_")


@dataclass(frozen=True)
class Absorbs:
    """What one convolution's replacement can absorb: its BatchNorm, and the residual add and ReLU."""

    batchnorm: bool
    epilogue: bool


@dataclass
class Chain:
    """A convolution node and the nodes the build folds or fuses into it (``None`` where absent).

    ``nodes`` are the chain's own
    nodes in graph order; ``last`` is the node whose value the fused call
    replaces.
    """

    conv: fx.Node
    bn: fx.Node | None = None
    add: fx.Node | None = None
    relu: fx.Node | None = None

    @property
    def nodes(self) -> list[fx.Node]:
        return [node for node in (self.conv, self.bn, self.add, self.relu) if node is not None]

    @property
    def last(self) -> fx.Node:
        return self.nodes[-1]

    def residual(self) -> fx.Node:
        """The add's other operand, read from the graph now (replacing earlier chains may have changed it)."""
        before_add = self.conv if self.bn is None else self.bn
        first, second = self.add.args
        return second if first is before_add else first


def foldable_batchnorm(bn: nn.Module, channels: int) -> bool:
    """Whether ``bn`` is a ``BatchNorm2d(channels)`` with running statistics, so eval mode is a fixed affine."""
    return (
        isinstance(bn, nn.BatchNorm2d)
        and bn.num_features == channels
        and bn.running_mean is not None
        and bn.running_var is not None
    )


def _sole_user(node: fx.Node) -> fx.Node | None:
    """The one node that reads ``node``, or ``None`` when it has several (or none)."""
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _module(gm: fx.GraphModule, node: fx.Node | None) -> nn.Module | None:
    """The module a ``call_module`` node runs, else ``None``."""
    return gm.get_submodule(str(node.target)) if node is not None and node.op == "call_module" else None


def _residual_of(add: fx.Node, operand: fx.Node) -> fx.Node | None:
    """The other operand of ``add`` when it is the plain ``operand + residual`` of two nodes, else ``None``.

    An in-place add (``+=``, ``add_``) qualifies only with ``operand`` first:
    then it writes into the chain's own output, which nothing else reads,
    whereas writing into ``residual`` is a side effect the fused op would drop.
    """
    plain = (add.op == "call_function" and add.target in _ADD_FUNCTIONS) or (
        add.op == "call_method" and add.target in _ADD_METHODS
    )
    if not plain or add.kwargs or len(add.args) != 2 or not all(isinstance(a, fx.Node) for a in add.args):
        return None
    first, second = add.args
    in_place = add.target in _IN_PLACE_ADDS
    if first is second or (in_place and first is not operand):
        return None
    return second if first is operand else first


def _is_relu(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether ``node`` is a plain ReLU of its first argument (module, function or method)."""
    if node.op == "call_module":
        return isinstance(_module(gm, node), nn.ReLU)
    if node.op == "call_function":
        return node.target in _RELU_FUNCTIONS and len(node.args) == 1 and set(node.kwargs) <= {"inplace"}
    return node.op == "call_method" and node.target in _RELU_METHODS and len(node.args) == 1 and not node.kwargs


def _chain(gm: fx.GraphModule, conv: fx.Node, absorbs: Absorbs, fuse_residual: bool, taken: set[fx.Node]) -> Chain:
    """The longest chain after ``conv`` that ``absorbs`` allows, leaving out adds already ``taken``."""
    chain = Chain(conv)
    out_channels = _module(gm, conv).out_channels
    user = _sole_user(conv)
    if absorbs.batchnorm and user is not None and foldable_batchnorm(_module(gm, user), out_channels):
        chain.bn, user = user, _sole_user(user)
    if not absorbs.epilogue or user is None:
        return chain
    if fuse_residual and user not in taken:
        if _residual_of(user, chain.last) is not None:
            chain.add, user = user, _sole_user(user)
            taken.add(chain.add)
    if user is not None and user.args and user.args[0] is chain.last and _is_relu(gm, user):
        chain.relu = user
    return chain


def find_chains(
    gm: fx.GraphModule, absorbs: Callable[[str, nn.Module], Absorbs | None], *, fuse_residual: bool
) -> list[Chain]:
    """The chains of every convolution of ``gm``, in graph order.

    ``absorbs(name, module)`` says what a ``call_module`` node's module can
    absorb, or ``None`` for a module that is not a convolution the build
    replaces. ``fuse_residual=False`` never takes an add.
    """
    chains, taken = [], set()
    for node in gm.graph.nodes:
        module = _module(gm, node)
        allowed = absorbs(str(node.target), module) if module is not None else None
        if allowed is not None:
            chains.append(_chain(gm, node, allowed, fuse_residual, taken))
    return chains
