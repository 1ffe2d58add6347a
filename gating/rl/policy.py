"""The budget policy of runtime gates: per input and per gated layer, a keep ratio for a MAC budget.

One episode is one input's forward pass; step ``l`` is the ``l``-th runtime
gate it reaches (``docs/design.md#runtime-importance-gate``):

    e_l   = ReLU(W_l GAP(x_l))                 per-layer encoder of the layer's pooled input
    h_l   = GRUCell([e_l, b, l / L], h_{l-1})  shared recurrent state (b = the budget)
    a_l   ~ Normal(b + w_mu h_l, exp(log_std)) the keep ratio, clipped to [0.1, 1]
    V_l   = w_v h_l

:class:`BudgetController` puts the policy into a runtime-gated
``GatedModel`` with forward pre-hooks that set each layer's per-input keep
ratio, and records the transitions for :mod:`gating.rl.ppo`. States are
stored flat as ``[layer, budget, h_{l-1} (hidden), pooled input (padded)]``
so that a PPO minibatch can mix layers.
"""

from __future__ import annotations

import torch
from torch import nn

from ..bisection import largest_within

MIN_KEEP = 0.1


class BudgetPolicy(nn.Module):
    """Gaussian keep-ratio policy and value function (module docstring).

    Args:
        in_channels: input channels of each runtime gate, in forward order.
        hidden: width of the encoders and of the recurrent state.
    """

    def __init__(self, in_channels: list[int], hidden: int = 32) -> None:
        super().__init__()
        if not in_channels or any(c < 1 for c in in_channels):
            raise ValueError(f"BudgetPolicy needs the input channels of at least one layer, got {in_channels!r}")
        self.in_channels, self.hidden = list(in_channels), hidden
        self.max_channels = max(in_channels)
        # One encoder per layer, stored padded to the widest layer so a minibatch that
        # mixes layers is one batched product (padded inputs are zero).
        bounds = torch.tensor([1 / c**0.5 for c in in_channels])[:, None]
        self.encoder_weight = nn.Parameter((torch.rand(len(in_channels), hidden, self.max_channels) * 2 - 1)
                                           * bounds[:, :, None])
        self.encoder_bias = nn.Parameter((torch.rand(len(in_channels), hidden) * 2 - 1) * bounds)
        self.rnn = nn.GRUCell(hidden + 2, hidden)
        self.mean_head = nn.Linear(hidden, 1)
        nn.init.zeros_(self.mean_head.weight)
        nn.init.zeros_(self.mean_head.bias)  # starts at keep ratio = budget
        self.log_std = nn.Parameter(torch.full((1,), -2.0))
        self.value_head = nn.Linear(hidden, 1)

    @property
    def state_width(self) -> int:
        return 2 + self.hidden + self.max_channels

    def make_state(self, layer: int, budget: torch.Tensor, h_prev: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """Flat states ``[N, state_width]`` of step ``layer`` for inputs pooled ``[N, C_layer]``."""
        n = pooled.shape[0]
        padded = torch.zeros(n, self.max_channels, dtype=h_prev.dtype, device=h_prev.device)
        padded[:, : pooled.shape[1]] = pooled.to(h_prev.dtype)
        layer_col = torch.full((n, 1), float(layer), dtype=h_prev.dtype, device=h_prev.device)
        return torch.cat([layer_col, budget.to(h_prev.dtype)[:, None], h_prev, padded], dim=1)

    def _hidden(self, states: torch.Tensor) -> torch.Tensor:
        layer = states[:, 0].long()
        budget = states[:, 1:2]
        h_prev = states[:, 2 : 2 + self.hidden]
        pooled = states[:, 2 + self.hidden :]
        if bool((layer == layer[0]).all()):  # one layer (every forward-pass step): its own encoder only
            own = pooled @ self.encoder_weight[layer[0]].T
        else:  # a PPO minibatch mixing layers: every encoder on every row in one product, then each row's block
            every = pooled @ self.encoder_weight.flatten(0, 1).T  # [M, L * hidden]
            own = every.view(-1, len(self.in_channels), self.hidden)[torch.arange(len(layer)), layer]
        encoded = torch.relu(own + self.encoder_bias[layer])
        position = (layer.to(states.dtype) / len(self.in_channels))[:, None]
        return self.rnn(torch.cat([encoded, budget, position], dim=1), h_prev)

    def step(self, states: torch.Tensor) -> tuple[torch.distributions.Normal, torch.Tensor, torch.Tensor]:
        """Action distribution, value ``[N]`` and the new recurrent state for flat ``states``."""
        h = self._hidden(states)
        mean = states[:, 1:2] + self.mean_head(h)
        dist = torch.distributions.Normal(mean, self.log_std.exp().expand_as(mean))
        return dist, self.value_head(h).squeeze(1), h

    def distribution(self, states: torch.Tensor) -> torch.distributions.Normal:
        return self.step(states)[0]

    def value(self, states: torch.Tensor) -> torch.Tensor:
        return self.step(states)[1]


class BudgetController:
    """Drives a runtime-gated ``GatedModel`` with a :class:`BudgetPolicy` through forward pre-hooks.

    Set ``budget`` (a float or one per input) before a forward, or
    ``budget_range = (low, high)`` to draw each input's budget uniformly in
    every forward of a model in training mode (fine-tuning the network under
    the policy); with ``sample=True`` actions are drawn (policy training),
    else the mean is used. After :meth:`calibrate`, a requested budget goes
    through the measured ``budget_map`` before the policy sees it (not while
    sampling or drawing budgets, which train the policy and the network on
    the policy's own budget scale).
    After a forward, ``transitions`` holds ``(state, action, log_prob,
    value)`` per step in order, for the inputs of that forward.
    """

    def __init__(self, model: nn.Module, policy: BudgetPolicy) -> None:
        layers = list(model.gated_layers().values())
        if [layer.in_channels for layer in layers] != policy.in_channels:
            raise ValueError(
                f"BudgetController: the policy was built for layers with input channels {policy.in_channels}, the "
                f"model's runtime gates have {[layer.in_channels for layer in layers]}"
            )
        self.model, self.policy = model, policy
        self.budget: float | torch.Tensor = 1.0
        self.budget_range: tuple[float, float] | None = None
        self.budget_map: tuple[torch.Tensor, torch.Tensor] | None = None
        self.generator = torch.Generator().manual_seed(0)
        self.sample = False
        self.transitions: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._h: torch.Tensor | None = None
        self._handles = [layer.register_forward_pre_hook(self._hook(i)) for i, layer in enumerate(layers)]

    def _hook(self, index: int):
        def set_keep(layer: nn.Module, args: tuple) -> None:
            x = args[0]
            n = x.shape[0]
            if index == 0 or self._h is None or self._h.shape[0] != n:
                self._h = torch.zeros(n, self.policy.hidden, device=x.device)
                self.transitions = []
            if index != len(self.transitions):
                raise RuntimeError(
                    f"BudgetController: runtime gate {index} ran after {len(self.transitions)} others; the gates "
                    "must run once each, in their registration order"
                )
            if index == 0 and self.budget_range is not None and self.model.training:
                low, high = self.budget_range
                self.budget = low + (high - low) * torch.rand(n, generator=self.generator)
            budget = torch.as_tensor(self.budget, dtype=torch.float32, device=x.device).expand(n)
            if not self.sample and not (self.budget_range is not None and self.model.training):
                budget = self.policy_budget(budget)
            pooled = x.detach().mean(dim=(2, 3)).float()
            if not bool(torch.isfinite(pooled).all()):
                raise FloatingPointError(f"BudgetController: non-finite activations reach runtime gate {index} "
                                         f"({getattr(layer, 'layer_name', '?')}); the network diverged")
            with torch.no_grad():
                state = self.policy.make_state(index, budget, self._h, pooled)
                dist, value, self._h = self.policy.step(state)
                action = dist.sample() if self.sample else dist.mean
                log_prob = dist.log_prob(action).squeeze(1)
            self.transitions.append((state, action, log_prob, value))
            layer.set_keep_ratio(action.squeeze(1).double().clamp(MIN_KEEP, 1.0).to(x.device))

        return set_keep

    def policy_budget(self, budget: torch.Tensor) -> torch.Tensor:
        """The budget the policy is conditioned on for requested ``budget`` ``[N]``: itself, or through the map
        :meth:`calibrate` measured (piecewise linear between its points)."""
        if self.budget_map is None:
            return budget
        asked, given = (t.to(budget.device, budget.dtype) for t in self.budget_map)
        index = torch.searchsorted(asked, budget.contiguous()).clamp(1, len(asked) - 1)
        low, high = asked[index - 1], asked[index]
        weight = ((budget - low) / (high - low)).clamp(0.0, 1.0)
        return given[index - 1] + weight * (given[index] - given[index - 1])

    @torch.no_grad()
    def calibrate(self, inputs: torch.Tensor, points: int = 10, low: float = 0.1, steps: int = 12) -> None:
        """Map requested budgets to the budgets the policy is given so that the executed-MAC ratio on ``inputs``
        (eval mode) meets them.

        A trained policy meets its budget only on the network it was trained
        on; fine-tuning after it (or a budget range it saw rarely) shifts the
        executed MACs. For ``points`` budgets evenly spaced over ``[low, 1]``
        this finds, by bisection over ``steps`` halvings, the largest policy
        budget whose measured ratio does not exceed the requested one, and
        keeps the piecewise-linear map (``budget_map``); budgets between the
        points are interpolated, the fixed-schedule counterpart is
        ``GatedModel.set_budget``. The model's training mode is kept.
        """
        if self.budget_range is not None and self.model.training:
            raise RuntimeError("BudgetController.calibrate: set budget_range to None first (it draws budgets)")
        if not (isinstance(points, int) and points >= 2 and 0 < low < 1 and isinstance(steps, int) and steps >= 1):
            raise ValueError(f"BudgetController.calibrate: needs points >= 2, 0 < low < 1 and steps >= 1, got "
                             f"points={points!r}, low={low!r}, steps={steps!r}")
        was_training, saved = self.model.training, (self.budget, self.budget_map)
        self.model.eval()
        self.budget_map = None
        asked = torch.linspace(low, 1.0, points, dtype=torch.float64)

        def executed(budget: float) -> float:
            self.budget = budget
            self.model(inputs)
            return self.model.executed_macs_ratio()

        try:
            given = [largest_within(executed, target, 0.0, 1.5, steps) for target in asked.tolist()]
        finally:
            self.budget = saved[0]
            self.model.train(was_training)
        # Monotone: a larger request never gets a smaller policy budget.
        self.budget_map = (asked, torch.cummax(torch.tensor(given, dtype=torch.float64), dim=0).values)

    def remove(self) -> None:
        """Remove the hooks (the layers keep their last keep ratios)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def budget_reward(
    task_loss: torch.Tensor, cost: torch.Tensor, budget: torch.Tensor, loss_scale: float, penalty_scale: float = 1.2,
    slack: float = 0.03, under_weight: float = 1.0
) -> torch.Tensor:
    """The final-step reward ``[N]``: ``-task_loss / loss_scale``, minus ``penalty_scale * (exp((cost - budget) /
    slack) - 1)`` when ``cost`` (executed-MAC ratio) exceeds ``budget``, minus ``under_weight * (budget - cost)``
    under it.

    The paper gives a small bonus under budget; that rewards spending less
    than asked, so a trained policy undershoots. Penalising the unused budget
    linearly makes the policy spend it, which is what ``set_budget`` promises.
    The exponent is capped at 5 so one bad sample cannot dominate an update.
    """
    over = cost - budget
    penalty = penalty_scale * (torch.exp((over / slack).clamp(max=5.0)) - 1.0)
    reward = -task_loss / max(loss_scale, 1e-8)
    return torch.where(over > 0, reward - penalty, reward + under_weight * over)


def stack_rollout(transitions, final_reward: torch.Tensor, gamma: float, lam: float):
    """A :class:`gating.rl.ppo.Rollout` from one forward's transitions and its final-step reward ``[N]``."""
    from .ppo import Rollout, gae

    states = torch.stack([t[0] for t in transitions])  # [T, N, S]
    actions = torch.stack([t[1] for t in transitions])  # [T, N, 1]
    log_probs = torch.stack([t[2] for t in transitions])  # [T, N]
    values = torch.stack([t[3] for t in transitions])  # [T, N]
    steps, n = log_probs.shape
    rewards = torch.zeros(steps, n, device=final_reward.device)
    rewards[-1] = final_reward
    dones = torch.zeros(steps, n, device=final_reward.device)
    dones[-1] = 1.0
    advantages, returns = gae(rewards, values, torch.zeros(n, device=final_reward.device), dones, gamma, lam)
    return Rollout(states.flatten(0, 1), actions.flatten(0, 1), log_probs.flatten(), advantages.flatten(),
                   returns.flatten())

