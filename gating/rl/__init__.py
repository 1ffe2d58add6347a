"""Reinforcement learning for runtime channel pruning (``docs/design.md#runtime-importance-gate``).

* ``ppo``: :func:`gae`, :class:`PPO`, :class:`PPOConfig`, :class:`Rollout`:
  proximal policy optimisation with generalised advantage estimation,
  written out here.
* ``policy``: :class:`BudgetPolicy` (per-layer keep ratios for a budget),
  :class:`BudgetController` (drives a runtime-gated ``GatedModel`` with it),
  :func:`budget_reward`.
* ``train``: :func:`train_policy` with :class:`PolicyTrainConfig`.
"""

from .policy import BudgetController, BudgetPolicy, budget_reward
from .ppo import PPO, PPOConfig, Rollout, gae
from .train import PolicyTrainConfig, train_policy

__all__ = [
    "PPO",
    "BudgetController",
    "BudgetPolicy",
    "PPOConfig",
    "PolicyTrainConfig",
    "Rollout",
    "budget_reward",
    "gae",
    "train_policy",
]
