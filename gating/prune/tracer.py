"""The channel-layout propagation rules of the dependency tracer (see :mod:`gating.prune.groups`).

:class:`Propagation` walks a shape-propagated ``torch.fx`` graph once and
gives every tensor node a :data:`~gating.prune.layout.Layout`; groups united
by residual adds and scales are merged with a union-find, and
:meth:`Propagation.groups` returns the resulting dependency groups.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from ..convs import is_depthwise
from .layout import DependencyGroup, Layout, Member, Segment, TraceError

_FOLLOW_MODULES = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.SiLU,
    nn.GELU,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Sigmoid,
    nn.Tanh,
    nn.ELU,
    nn.Mish,
    nn.Dropout,
    nn.Dropout2d,
    nn.Identity,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.Upsample,
)
_COUPLING_FUNCTIONS = {
    operator.add,
    operator.iadd,
    operator.sub,
    operator.isub,
    operator.mul,
    operator.imul,
    operator.truediv,
    torch.add,
    torch.sub,
    torch.mul,
    torch.div,
}
_COUPLING_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_"}
_FLATTEN = {torch.flatten, "flatten", "view", "reshape", torch.reshape}


class _UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []

    def new(self) -> int:
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        self.parent[self.find(a)] = self.find(b)


def _where(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack")
    if stack:
        path = list(stack.values())[-1]
        path = path[0] if isinstance(path, tuple) else path
        return f"in module {path!r} (node {node.name!r})"
    return f"at node {node.name!r}"


def _op_name(node: fx.Node) -> str:
    target = node.target
    return target if isinstance(target, str) else getattr(target, "__name__", repr(target))


def _is_producer(m: nn.Module) -> bool:
    return hasattr(m, "prune_channels") or isinstance(m, nn.Linear) or (
        isinstance(m, nn.modules.conv._ConvNd) and m.groups == 1 and not m.transposed
    )


class Propagation:
    """Walks the fx graph once, assigning a channel layout to every tensor node."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.sets = _UnionFind()
        self.sizes: list[int] = []
        self.producer: dict[int, str] = {}
        self.pinned: dict[int, str] = {}
        self.members: list[tuple[str, str, Layout]] = []
        self.layouts: dict[fx.Node, Layout] = {}
        self.calls: dict[str, fx.Node] = {}

    # -- helpers
    def _space(self, size: int, producer: str | None = None, pinned: str = "") -> Layout:
        g = self.sets.new()
        self.sizes.append(size)
        if producer is not None:
            self.producer[g] = producer
        if pinned:
            self.pinned[g] = pinned
        return (Segment(g, size),)

    @staticmethod
    def _shape(node: Any) -> torch.Size | None:
        if not isinstance(node, fx.Node):
            return None
        meta = node.meta.get("tensor_meta")
        return getattr(meta, "shape", None)

    def _couple(self, a: Layout, b: Layout, node: fx.Node) -> Layout:
        if len(a) != len(b) or any(x.length != y.length or x.repeat != y.repeat for x, y in zip(a, b)):
            raise TraceError(
                f"{_op_name(node)} {_where(node)} combines tensors whose channels are laid out differently "
                f"({[s.length for s in a]} vs {[s.length for s in b]} channels per segment)"
            )
        for x, y in zip(a, b):
            self.sets.union(x.group, y.group)
        return a

    def _tensor_args(self, node: fx.Node) -> list[fx.Node]:
        return [a for a in node.all_input_nodes if a in self.layouts]

    # -- node rules
    def run(self) -> None:
        for node in self.gm.graph.nodes:
            layout = self._visit(node)
            if layout is not None:
                self.layouts[node] = layout

    def _visit(self, node: fx.Node) -> Layout | None:
        shape = self._shape(node)
        if node.op == "placeholder":
            if shape is None or len(shape) < 2:
                return None
            return self._space(shape[1], pinned=f"model input {node.name!r}")
        if node.op == "output":
            for arg in node.all_input_nodes:
                for seg in self.layouts.get(arg, ()):
                    self.pinned.setdefault(seg.group, "model output")
            return None
        if node.op == "get_attr":
            return None
        if node.op == "call_module":
            return self._module(node, shape)
        return self._function(node, shape)

    def _module(self, node: fx.Node, shape: torch.Size | None) -> Layout | None:
        name = str(node.target)
        module = self.gm.get_submodule(name)
        if name in self.calls and any(True for _ in module.parameters(recurse=False)):
            raise TraceError(f"module {name!r} is called twice (nodes {self.calls[name].name!r}, {node.name!r}); "
                             "shared weights cannot be pruned per call")
        self.calls[name] = node
        untracked = self._untracked(node)
        if untracked:
            raise TraceError(
                f"module {name!r} ({type(module).__name__}) reads tensors whose channels the tracer cannot follow "
                f"({', '.join(n.name for n in untracked)})"
            )
        inputs = self._tensor_args(node)
        layout = self.layouts[inputs[0]] if inputs else None
        if layout is None:
            return None
        if _is_producer(module):
            self.members.append((name, "in", layout))
            out = self._space(int(shape[1]), producer=name)
            self.members.append((name, "out", out))
            return out
        if is_depthwise(module):
            self.members.append((name, "out", layout))
            return layout
        if isinstance(module, nn.modules.conv._ConvNd):
            raise TraceError(
                f"module {name!r} ({type(module).__name__}, groups={module.groups}, "
                f"transposed={module.transposed}) cannot be pruned: only groups = 1 and depthwise convolutions are supported"
            )
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            self.members.append((name, "out", layout))
            return layout
        if isinstance(module, nn.Flatten):
            return self._flatten(node, inputs[0], shape)
        if isinstance(module, _FOLLOW_MODULES) or (
            not any(True for _ in module.parameters()) and self._keeps_channels(inputs[0], shape)
        ):
            return self._follow(node, inputs[0], shape)
        raise TraceError(
            f"module {name!r} ({type(module).__name__}) is unknown to the pruning tracer: its channel coupling "
            "cannot be followed"
        )

    def _keeps_channels(self, src: fx.Node, shape: torch.Size | None) -> bool:
        src_shape = self._shape(src)
        return shape is not None and src_shape is not None and len(shape) == len(src_shape) and shape[1] == src_shape[1]

    def _follow(self, node: fx.Node, src: fx.Node, shape: torch.Size | None) -> Layout:
        layout = self.layouts[src]
        src_shape = self._shape(src)
        if shape is None or len(shape) < 2 or src_shape is None or shape[1] != src_shape[1]:
            raise TraceError(
                f"{_op_name(node)} {_where(node)} changes the channel count "
                f"({None if src_shape is None else tuple(src_shape)} -> {None if shape is None else tuple(shape)})"
            )
        return layout

    def _flatten(self, node: fx.Node, src: fx.Node, shape: torch.Size | None) -> Layout:
        layout = self.layouts[src]
        src_shape = self._shape(src)
        if shape is not None and src_shape is not None and len(shape) == 2 and len(src_shape) >= 2:
            if shape[0] == src_shape[0] and shape[1] == src_shape[1:].numel():
                per_channel = int(src_shape[2:].numel())
                return tuple(Segment(s.group, s.length, s.repeat * per_channel) for s in layout)
            if tuple(shape) == tuple(src_shape):
                return layout
        raise TraceError(
            f"{_op_name(node)} {_where(node)} reshapes {None if src_shape is None else tuple(src_shape)} to "
            f"{None if shape is None else tuple(shape)}: only flattening [N, C, ...] to [N, C*...] keeps channels"
        )

    def _untracked(self, node: fx.Node) -> list[fx.Node]:
        """Tensor inputs of ``node`` with a channel dimension that no layout describes (e.g. parameters used directly)."""
        found = []
        for arg in node.all_input_nodes:
            meta = arg.meta.get("tensor_meta")
            if arg in self.layouts or meta is None:
                continue
            shapes = [getattr(m, "shape", None) for m in (meta if isinstance(meta, (tuple, list)) else (meta,))]
            if any(s is not None and len(s) >= 2 and s[1] > 1 for s in shapes):
                found.append(arg)
        return found

    def _function(self, node: fx.Node, shape: torch.Size | None) -> Layout | None:
        inputs = self._tensor_args(node)
        untracked = self._untracked(node)
        if untracked:
            raise TraceError(
                f"{_op_name(node)} {_where(node)} uses tensors whose channels the tracer cannot follow "
                f"({', '.join(n.name for n in untracked)})"
            )
        if inputs and shape is None and node.meta.get("tensor_meta") is not None:
            raise TraceError(
                f"{_op_name(node)} {_where(node)} returns several tensors (a channel split or chunk): "
                "its channel coupling cannot be followed"
            )
        if not inputs or shape is None:
            return None  # sizes, getattr, constants
        target = node.target
        if target in _COUPLING_FUNCTIONS or (node.op == "call_method" and target in _COUPLING_METHODS):
            if len(inputs) == 1:
                return self._follow(node, inputs[0], shape)
            a, b = (self.layouts[i] for i in inputs[:2])
            sa, sb = self._shape(inputs[0]), self._shape(inputs[1])
            if len(sa) != len(sb):
                raise TraceError(f"{_op_name(node)} {_where(node)} broadcasts tensors of ranks {len(sa)} and {len(sb)}")
            return self._couple(a, b, node)
        if target is torch.cat or target is torch.concat:
            tensors = node.args[0] if node.args else node.kwargs["tensors"]
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
            rank = len(shape)
            if dim % rank == 1:
                return tuple(seg for t in tensors for seg in self.layouts[t])
            layout = self.layouts[tensors[0]]
            for t in tensors[1:]:
                layout = self._couple(layout, self.layouts[t], node)
            return layout
        if target in _FLATTEN or (node.op == "call_method" and target in _FLATTEN):
            return self._flatten(node, inputs[0], shape)
        if len(inputs) == 1 and self._keeps_channels(inputs[0], shape):
            return self._follow(node, inputs[0], shape)
        if len(inputs) == 1 and self._reduces_to_channels(inputs[0], shape):
            return self.layouts[inputs[0]]
        raise TraceError(
            f"{_op_name(node)} {_where(node)} is unknown to the pruning tracer "
            f"(inputs {[tuple(self._shape(i)) for i in inputs]}, output {tuple(shape)}): its channel coupling "
            "cannot be followed"
        )

    def _reduces_to_channels(self, src: fx.Node, shape: torch.Size) -> bool:
        src_shape = self._shape(src)
        return src_shape is not None and len(shape) == 2 and len(src_shape) > 2 and shape[1] == src_shape[1]

    # -- result
    def groups(self) -> list[DependencyGroup]:
        """The dependency groups, indexed in order of first appearance, with their members."""
        roots: dict[int, DependencyGroup] = {}
        index_of: dict[int, int] = {}
        for g in range(len(self.sizes)):
            root = self.sets.find(g)
            if root not in index_of:
                index_of[root] = len(index_of)
                roots[root] = DependencyGroup(index_of[root], self.sizes[g])
            group = roots[root]
            if g in self.producer:
                group.producers.append(self.producer[g])
            if g in self.pinned and group.prunable:
                group.prunable, group.reason = False, self.pinned[g]
        groups = sorted(roots.values(), key=lambda gr: gr.index)
        for group in groups:
            if group.prunable and not group.producers:
                group.prunable, group.reason = False, "no producing convolution or linear"
        for name, role, layout in self.members:
            mapped = tuple(Segment(index_of[self.sets.find(s.group)], s.length, s.repeat) for s in layout)
            for index in dict.fromkeys(s.group for s in mapped):
                groups[index].members.append(Member(name, role, mapped))
        return groups
