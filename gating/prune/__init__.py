"""Static structured pruning: dependency groups, criteria, surgery (``docs/design.md#static-pruning``).

* :func:`dependency_groups`: the channels that must go together (``groups``).
* :func:`prune` with a :class:`PruneConfig`: score, select and remove
  channels in place; returns a :class:`PruneResult` (``plan``);
  :func:`keep_for_ratios`: the kept channels for a fraction per group (what
  a static policy chooses).
* :func:`slimming_penalty`: the network-slimming L1 term on BatchNorm scales;
  :func:`kernel_l1_penalty`, :func:`zero_weak_kernels`,
  :func:`hold_zero_kernels`: kernel-level sparsity of the multi-granularity
  criterion (``criteria``).
* :func:`apply_cuts`, :func:`module_cuts`, :func:`replay_cuts`: the surgery
  itself (``surgery``).
"""

from .criteria import (
    CRITERIA,
    hold_zero_kernels,
    kernel_l1_penalty,
    similar_representatives,
    slimming_penalty,
    static_scores,
    zero_weak_kernels,
)
from .groups import (
    DependencyGroup,
    Member,
    Segment,
    TraceError,
    dependency_groups,
    following_batchnorms,
    traced_network,
)
from .plan import PruneConfig, PruneResult, Size, keep_for_ratios, measure, prune
from .surgery import apply_cuts, module_cuts, replay_cuts

__all__ = [
    "CRITERIA",
    "DependencyGroup",
    "Member",
    "PruneConfig",
    "PruneResult",
    "Segment",
    "Size",
    "TraceError",
    "apply_cuts",
    "dependency_groups",
    "following_batchnorms",
    "hold_zero_kernels",
    "keep_for_ratios",
    "kernel_l1_penalty",
    "measure",
    "module_cuts",
    "prune",
    "replay_cuts",
    "similar_representatives",
    "slimming_penalty",
    "static_scores",
    "traced_network",
    "zero_weak_kernels",
]
