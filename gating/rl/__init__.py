"""Reinforcement learning for runtime channel pruning (``docs/design.md#runtime-importance-gate``).

* ``ppo``: :func:`gae`, :class:`PPO`, :class:`PPOConfig`, :class:`Rollout`:
  proximal policy optimisation with generalised advantage estimation,
  written out here.
* ``policy``: :class:`BudgetPolicy` (per-layer keep ratios for a budget),
  :class:`BudgetController` (drives a runtime-gated ``GatedModel`` with it),
  :func:`budget_reward`.
  :meth:`BudgetController.calibrate` maps requested budgets to the policy's
  so that executed MACs meet them.
* ``train``: :func:`train_policy` with :class:`PolicyTrainConfig`.
* ``static``: the static policy: :func:`search_static_ratios` with
  :class:`StaticPolicyConfig` (per-layer kept fractions for a parameter
  budget), :func:`prune_static` (the channels removed for storage).
* ``workflow``: ``python -m gating train-rl`` (:class:`RLConfig`,
  :func:`run_train_rl`).
"""

from .policy import BudgetController, BudgetPolicy, budget_reward
from .ppo import PPO, PPOConfig, Rollout, gae
from .static import StaticPolicy, StaticPolicyConfig, StaticSearch, prune_static, search_static_ratios
from .train import PolicyTrainConfig, train_policy

__all__ = [
    "PPO",
    "BudgetController",
    "BudgetPolicy",
    "PPOConfig",
    "PolicyTrainConfig",
    "Rollout",
    "StaticPolicy",
    "StaticPolicyConfig",
    "StaticSearch",
    "budget_reward",
    "gae",
    "prune_static",
    "search_static_ratios",
    "train_policy",
]
