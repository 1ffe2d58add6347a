"""Training the budget policy of a runtime-gated model with PPO (``docs/design.md#runtime-importance-gate``).

:func:`train_policy` runs the network in eval mode under a sampling
:class:`~gating.rl.policy.BudgetController`, one batch per PPO update:
each input gets a budget drawn uniformly from ``[budget_low, budget_high]``,
the final-step reward is :func:`~gating.rl.policy.budget_reward` of its
cross-entropy (over its running mean) and its executed-MAC ratio
(``GatedModel.per_sample_macs_ratio``). The network's weights do not change
here; fine-tuning them under the policy is a separate
``gating.distill.Trainer`` run with the controller attached.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .policy import BudgetController, BudgetPolicy, budget_reward, stack_rollout
from .ppo import PPO, PPOConfig


@dataclass(frozen=True)
class PolicyTrainConfig:
    """What :func:`train_policy` does; invalid values raise ``ValueError`` naming the field.

    Attributes:
        updates: PPO updates, one per training batch (>= 1).
        budget_low, budget_high: the range budgets are drawn from, in (0, 1].
        hidden: width of the policy's encoders and recurrent state.
        ppo: the PPO hyper-parameters.
        seed: seed of the policy's initialisation, budgets and minibatch order.
        progress: show a tqdm bar.
    """

    updates: int = 200
    budget_low: float = 0.2
    budget_high: float = 1.0
    hidden: int = 32
    ppo: PPOConfig = field(default_factory=PPOConfig)
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.updates, bool) or not isinstance(self.updates, int) or self.updates < 1:
            raise ValueError(f"PolicyTrainConfig.updates must be an int >= 1, got {self.updates!r}")
        if not (0 < self.budget_low <= self.budget_high <= 1):
            raise ValueError(
                f"PolicyTrainConfig needs 0 < budget_low <= budget_high <= 1, got {self.budget_low!r}, {self.budget_high!r}"
            )
        if isinstance(self.hidden, bool) or not isinstance(self.hidden, int) or self.hidden < 1:
            raise ValueError(f"PolicyTrainConfig.hidden must be an int >= 1, got {self.hidden!r}")


def train_policy(
    model: nn.Module, loader: DataLoader, config: PolicyTrainConfig, controller: BudgetController | None = None
) -> tuple[BudgetPolicy, BudgetController]:
    """Train a :class:`BudgetPolicy` for the runtime-gated ``model`` on ``loader``'s ``(inputs, targets)``.

    ``controller``: continue training the policy of an attached controller
    (alternating with fine-tuning); ``None`` builds a new policy. Returns
    the policy and its controller, attached to ``model`` and set to act
    deterministically: set ``controller.budget`` and run the model.
    """
    if getattr(getattr(model, "config", None), "kind", None) != "runtime":
        raise ValueError("train_policy needs a GatedModel with GateConfig(kind='runtime')")
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    device = next(model.parameters()).device
    if controller is None:
        policy = BudgetPolicy([layer.in_channels for layer in model.gated_layers().values()], config.hidden).to(device)
        controller = BudgetController(model, policy)
    policy = controller.policy
    controller.sample, budget_range, controller.budget_range = True, controller.budget_range, None
    ppo = PPO(policy, config.ppo)
    loss_scale = None
    was_training = model.training
    model.eval()
    batches = itertools.islice(itertools.cycle(loader), config.updates)
    bar = tqdm(batches, total=config.updates, desc="policy", disable=not config.progress)
    try:
        for inputs, targets in bar:
            inputs, targets = inputs.to(device), targets.to(device)
            span = config.budget_high - config.budget_low
            budget = config.budget_low + span * torch.rand(inputs.shape[0], generator=generator)
            controller.budget = budget.to(device)
            with torch.no_grad():
                loss = F.cross_entropy(model(inputs), targets, reduction="none")
            mean_loss = float(loss.mean())
            loss_scale = mean_loss if loss_scale is None else 0.9 * loss_scale + 0.1 * mean_loss
            cost = model.per_sample_macs_ratio().to(device=device, dtype=torch.float32)
            reward = budget_reward(loss, cost, budget.to(device), loss_scale)
            rollout = stack_rollout(controller.transitions, reward, config.ppo.gamma, config.ppo.lam)
            ppo.update(rollout, generator)
            bar.set_postfix(reward=f"{float(reward.mean()):.3f}", over=f"{float((cost - budget.to(device)).mean()):+.3f}",
                            refresh=False)
    finally:
        model.train(was_training)
        controller.sample, controller.budget_range = False, budget_range
    return policy, controller
