"""PPO and GAE: the advantage recursion by hand, and PPO learning a small deterministic task."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gating.rl.ppo import PPO, PPOConfig, Rollout, gae


def test_gae_by_hand():
    rewards = torch.tensor([[1.0], [0.0], [2.0]])
    values = torch.tensor([[0.5], [1.0], [0.0]])
    dones = torch.tensor([[0.0], [0.0], [1.0]])
    gamma, lam = 0.9, 0.8
    d2 = 2.0 - 0.0
    d1 = 0.0 + 0.9 * 0.0 - 1.0
    d0 = 1.0 + 0.9 * 1.0 - 0.5
    a2 = d2
    a1 = d1 + gamma * lam * a2
    a0 = d0 + gamma * lam * a1
    advantages, returns = gae(rewards, values, torch.tensor([7.0]), dones, gamma, lam)
    torch.testing.assert_close(advantages[:, 0], torch.tensor([a0, a1, a2]))
    torch.testing.assert_close(returns, advantages + values)
    with pytest.raises(ValueError, match="share a shape"):
        gae(rewards, values[:2], torch.tensor([0.0]), dones, gamma, lam)


class _Policy(nn.Module):
    """Gaussian policy with a state-dependent mean and a learned log-std; a value head."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.mean = nn.Sequential(nn.Linear(dim, 32), nn.Tanh(), nn.Linear(32, 1))
        self.log_std = nn.Parameter(torch.full((1,), -0.5))
        self.critic = nn.Sequential(nn.Linear(dim, 32), nn.Tanh(), nn.Linear(32, 1))

    def distribution(self, states):
        return torch.distributions.Normal(self.mean(states), self.log_std.exp().expand(states.shape[0], 1))

    def step(self, states):
        return self.distribution(states), self.critic(states).squeeze(1)


def _episode_targets(states: torch.Tensor) -> torch.Tensor:
    # A fixed target action per (episode, step), in [0.1, 1] like a keep ratio.
    return 0.1 + 0.9 * torch.sigmoid(3 * states[..., 0] - 2 * states[..., 1])


def test_ppo_reaches_the_optimum_of_a_deterministic_episodic_task():
    """Episodes of 4 steps; the only reward is at the last step, 1 - mean squared action error (optimum 1)."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    steps, episodes, dim = 4, 128, 3
    policy = _Policy(dim)
    ppo = PPO(policy, PPOConfig(lr=3e-3, gamma=1.0, lam=0.95, epochs=4, minibatch=64))
    returns = []
    for update in range(150):
        states = torch.randn(steps, episodes, dim, generator=gen)
        states[..., 2] = torch.arange(steps, dtype=torch.float32)[:, None] / steps  # step index
        with torch.no_grad():
            dist, values = policy.step(states.flatten(0, 1))
            actions = dist.sample()
            log_probs = dist.log_prob(actions).squeeze(1)
            values = values.view(steps, episodes)
        error = (actions.view(steps, episodes).clamp(0.1, 1.0) - _episode_targets(states)).pow(2).mean(dim=0)
        rewards = torch.zeros(steps, episodes)
        rewards[-1] = 1.0 - error
        dones = torch.zeros(steps, episodes)
        dones[-1] = 1.0
        advantages, targets = gae(rewards, values, torch.zeros(episodes), dones, 1.0, 0.95)
        ppo.update(Rollout(states.flatten(0, 1), actions, log_probs, advantages.flatten(), targets.flatten()), gen)
        returns.append(float(rewards[-1].mean()))
        if sum(returns[-5:]) / 5 >= 0.95:
            break
    assert sum(returns[-5:]) / 5 >= 0.95, f"mean return {sum(returns[-5:]) / 5:.3f} after {update + 1} updates"
    assert returns[0] < 0.8  # it had something to learn (0.72 at the start on this seed)


def test_bad_ppo_config():
    with pytest.raises(ValueError, match="clip"):
        PPOConfig(clip=0.0)
    with pytest.raises(ValueError, match="minibatch"):
        PPOConfig(minibatch=0)
    with pytest.raises(ValueError, match="gamma"):
        PPOConfig(gamma=1.5)
