"""Proximal policy optimisation with generalised advantage estimation, written out (no RL framework).

A rollout is a batch of ``B`` episodes of ``T`` steps (for the budget
policy: one episode per input, one step per gated layer)::

    delta_t = r_t + gamma * V(s_{t+1}) * (1 - done_t) - V(s_t)
    A_t     = delta_t + gamma * lam * (1 - done_t) * A_{t+1}       (GAE)
    R_t     = A_t + V(s_t)                                         (value target)

and :meth:`PPO.update` minimises, over a few epochs of shuffled minibatches,

    - mean(min(rho * A, clip(rho, 1 - eps, 1 + eps) * A))
    + value_coef * mean((V - R)^2) - entropy_coef * mean(entropy)

with ``rho = exp(log pi(a|s) - log pi_old(a|s))`` and advantages normalised
per update. The policy is any module with ``step(states) -> (distribution,
value [M], ...)``: a ``torch.distributions.Distribution`` over actions and
the state values, computed together.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


def gae(
    rewards: torch.Tensor, values: torch.Tensor, last_value: torch.Tensor, dones: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and value targets ``[T, B]`` for rewards, values and done flags ``[T, B]``.

    ``last_value`` ``[B]`` bootstraps after the last step (ignored where it is done).
    """
    if not rewards.shape == values.shape == dones.shape or last_value.shape != rewards.shape[1:]:
        raise ValueError(
            f"gae: rewards, values and dones must share a shape [T, B] and last_value be [B], got "
            f"{tuple(rewards.shape)}, {tuple(values.shape)}, {tuple(dones.shape)}, {tuple(last_value.shape)}"
        )
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(last_value)
    next_value = last_value
    for t in range(rewards.shape[0] - 1, -1, -1):
        alive = 1.0 - dones[t].to(rewards.dtype)
        delta = rewards[t] + gamma * next_value * alive - values[t]
        running = delta + gamma * lam * alive * running
        advantages[t] = running
        next_value = values[t]
    return advantages, advantages + values


@dataclass(frozen=True)
class PPOConfig:
    """PPO hyper-parameters (the paper's: gamma 0.999, lambda 0.95, clip 0.2, value 0.5, minibatch 64)."""

    lr: float = 3e-4
    gamma: float = 0.999
    lam: float = 0.95
    clip: float = 0.2
    value_coef: float = 0.5
    entropy_coef: float = 0.0
    epochs: int = 4
    minibatch: int = 64
    max_grad_norm: float = 0.5

    def __post_init__(self) -> None:
        for name in ("lr", "clip", "max_grad_norm"):
            if not getattr(self, name) > 0:
                raise ValueError(f"PPOConfig.{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("gamma", "lam"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"PPOConfig.{name} must be in [0, 1], got {getattr(self, name)!r}")
        for name in ("epochs", "minibatch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"PPOConfig.{name} must be an int >= 1, got {value!r}")
        if self.value_coef < 0 or self.entropy_coef < 0:
            raise ValueError("PPOConfig.value_coef and entropy_coef must be >= 0")


@dataclass
class Rollout:
    """Flattened transitions of one rollout: states ``[M, ...]``, actions ``[M, ...]``, old log-probs,
    advantages and value targets ``[M]`` (``M = T * B``)."""

    states: torch.Tensor
    actions: torch.Tensor
    log_probs: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor


class PPO:
    """Clipped-surrogate PPO updates of ``policy`` with Adam (see the module docstring)."""

    def __init__(self, policy: nn.Module, config: PPOConfig | None = None) -> None:
        self.policy = policy
        self.config = config or PPOConfig()
        self.optimizer = torch.optim.Adam(policy.parameters(), lr=self.config.lr)

    def update(self, rollout: Rollout, generator: torch.Generator | None = None) -> dict[str, float]:
        """Run ``epochs`` passes of minibatch updates on ``rollout``; returns the last losses."""
        cfg = self.config
        advantages = rollout.advantages
        if advantages.numel() > 1:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        count = advantages.shape[0]
        stats: dict[str, float] = {}
        for _ in range(cfg.epochs):
            order = torch.randperm(count, generator=generator)
            for start in range(0, count, cfg.minibatch):
                idx = order[start : start + cfg.minibatch]
                dist, value = self.policy.step(rollout.states[idx])[:2]
                log_prob = _sum_action_dims(dist.log_prob(rollout.actions[idx]))
                ratio = torch.exp(log_prob - rollout.log_probs[idx])
                adv = advantages[idx]
                policy_loss = -torch.min(ratio * adv, ratio.clamp(1 - cfg.clip, 1 + cfg.clip) * adv).mean()
                value_loss = (value - rollout.returns[idx]).pow(2).mean()
                entropy = _sum_action_dims(dist.entropy()).mean()
                loss = policy_loss + cfg.value_coef * value_loss - cfg.entropy_coef * entropy
                self.optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm)
                self.optimizer.step()
                stats = {"policy_loss": policy_loss.item(), "value_loss": value_loss.item(), "entropy": entropy.item()}
        return stats


def _sum_action_dims(values: torch.Tensor) -> torch.Tensor:
    """Log-probabilities / entropies summed over action dimensions beyond the first (batch) one."""
    return values.flatten(1).sum(dim=1) if values.dim() > 1 else values
