"""Step 1 of the inference build: the ``torch.fx`` graph of the network a model runs.

:func:`trace_network` traces a copy of the network (the one a ``GatedModel``
wraps, found through its ``pruning_root``) with the gated convolutions
(``ChannelGatedConv2d``, ``RuntimeGatedConv2d``) kept as leaves, so each is one
``call_module`` node named as in ``GatedModel.gated_names``. Modules that are
the identity in eval mode (``nn.Identity``, which a runtime ``GatedModel``
leaves where it took a BatchNorm, and dropout) are removed from the graph, so
that a conv, its BatchNorm and its ReLU are direct neighbours. The copy keeps
no module hooks (``GatedModel`` records every layer call through hooks).
"""

from __future__ import annotations

import copy

import torch.fx as fx
from torch import nn

from ..gates import ChannelGatedConv2d, RuntimeGatedConv2d
from ..prune.groups import traced_network

__all__ = ["GATED_LAYERS", "input_node", "trace_network"]

GATED_LAYERS = (ChannelGatedConv2d, RuntimeGatedConv2d)
"""The gated convolutions the tracer keeps as leaves."""

_EVAL_IDENTITIES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


class _GatedLeafTracer(fx.Tracer):
    """The default fx tracer, with the gated convolutions as leaves (their forward is not traced)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, GATED_LAYERS) or super().is_leaf_module(m, qualname)


def trace_network(model: nn.Module) -> fx.GraphModule:
    """An fx ``GraphModule`` over a deep copy of the network ``model`` runs, in eval mode, eval identities removed.

    ``model`` itself is not changed. Module names in the graph are relative
    to the wrapped network (``GatedModel.model``). Raises
    ``NotImplementedError`` naming ``model``'s class and fx's reason when the
    network cannot be traced (data-dependent control flow, for instance), and
    ``ValueError`` when its forward does not take exactly one tensor input.
    """
    network, _ = traced_network(model)
    network = copy.deepcopy(network).eval()
    _drop_hooks(network)
    try:
        graph = _GatedLeafTracer().trace(network)
    except Exception as err:  # fx raises many types; report them as one
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise NotImplementedError(
            f"gating.engine.build: torch.fx cannot trace {type(model).__name__} "
            f"(network {type(network).__name__}): {reason}"
        ) from err
    gm = fx.GraphModule(network, graph)
    placeholders = [node for node in gm.graph.nodes if node.op == "placeholder"]
    if len(placeholders) != 1:
        raise ValueError(
            f"gating.engine.build: {type(model).__name__}'s forward must take one input tensor x, "
            f"it takes {[node.target for node in placeholders]}"
        )
    _drop_eval_identities(gm)
    return gm


_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
)


def _drop_hooks(network: nn.Module) -> None:
    """Remove the module hooks the copy inherited (``GatedModel``'s call recorder and input checks).

    They would record every call of the built model and never be cleared;
    the built model checks its own input and keeps only the gated layers'
    decisions. Global hooks (``nn.modules.module.register_module_*``) are
    untouched.
    """
    for module in network.modules():
        for name in _HOOK_DICTS:
            hooks = getattr(module, name, None)
            if isinstance(hooks, dict):
                hooks.clear()


def _drop_eval_identities(gm: fx.GraphModule) -> None:
    """Remove the ``call_module`` nodes of modules that are the identity in eval mode (rewires their users)."""
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and isinstance(gm.get_submodule(str(node.target)), _EVAL_IDENTITIES):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()


def input_node(gm: fx.GraphModule) -> fx.Node:
    """The graph's one ``placeholder`` node (the input ``x``)."""
    return next(node for node in gm.graph.nodes if node.op == "placeholder")
