"""The static policy: per-layer static keep ratios for a parameter budget, then the channels removed for storage.

The runtime gates' static importance (``RuntimeGatedConv2d.static_importance``)
ranks each layer's channels for every input alike; channels it ranks last can
leave the network for good (``docs/design.md#runtime-importance-gate``). How
many each layer can lose is what the static policy decides, one episode per
candidate network, one step per prunable dependency group (in the order of
:func:`gating.prune.dependency_groups`)::

    s_g = [g / G, budget, u, channel share of g, kept share so far, importance quantiles of g]
    a_g ~ Normal(u + MLP(s_g), exp(log_std))     the group's kept fraction, clipped to [0.1, 1]

where ``u`` is the one kept fraction that, in every group, meets the
budget (found by bisection on counted parameters: parameters fall faster
than channels, since a group's channels are inputs of the next layer too);
the policy learns where to keep more and where less than ``u``.

The episode's reward (final step) is :func:`gating.rl.policy.budget_reward`
of the cross-entropy of the network with those channels removed on a fixed
calibration batch (runtime gates fully open; relative to that of the uniform
choice ``u``) and its parameter ratio against ``param_budget``: over budget
is penalised steeply, unused budget linearly. The loss is measured before
any fine-tuning, a proxy for what fine-tuning recovers.
PPO (:mod:`gating.rl.ppo`) trains the policy on batches of episodes; the
result is the best-rewarded network seen (the uniform start, any sampled
episode, or the final mean action: with channel counts rounded to multiples
of 8, the reward is a step function and the last mean is not always the
best network the search met). The kept channels are those of highest static importance, counted as
:func:`gating.prune.keep_for_ratios` rounds them (multiples of the gates'
channel group). :func:`prune_static` then removes the channels from the
model in place with the pruning surgery, so ``gating.save`` stores the
smaller network. The non-RL baseline is ``gating.prune.prune`` with
``PruneConfig(criterion="static", params=budget)``: one global threshold on
the static importance.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..bisection import largest_within
from ..prune import (
    DependencyGroup,
    apply_cuts,
    dependency_groups,
    keep_for_ratios,
    module_cuts,
    static_scores,
)
from .policy import MIN_KEEP, budget_reward, stack_rollout
from .ppo import PPO, PPOConfig

__all__ = ["StaticPolicy", "StaticPolicyConfig", "StaticSearch", "prune_static", "search_static_ratios"]

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
STATE_FIXED = 5  # position, budget, uniform fraction, channel share, kept share so far


@dataclass(frozen=True)
class StaticPolicyConfig:
    """What :func:`search_static_ratios` does; invalid values raise ``ValueError`` naming the field.

    Attributes:
        param_budget: fraction of the model's parameters to keep, in (0, 1].
        updates: PPO updates (>= 1), each on ``episodes`` candidate networks.
        episodes: candidate networks per update (>= 1).
        hidden: width of the policy's MLP.
        ppo: PPO hyper-parameters.
        seed: seed of the policy's initialisation, its actions and minibatch order.
        progress: show a tqdm bar.
    """

    param_budget: float = 0.5
    updates: int = 30
    episodes: int = 16
    hidden: int = 32
    ppo: PPOConfig = field(default_factory=lambda: PPOConfig(lr=1e-3, minibatch=128))
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.param_budget, bool) or not isinstance(self.param_budget, (int, float)) or not (
            0 < self.param_budget <= 1
        ):
            raise ValueError(f"StaticPolicyConfig.param_budget must be in (0, 1], got {self.param_budget!r}")
        for name in ("updates", "episodes", "hidden"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"StaticPolicyConfig.{name} must be an int >= 1, got {value!r}")


class StaticPolicy(nn.Module):
    """Gaussian kept-fraction policy and value function over the steps of a static episode (module docstring)."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(STATE_FIXED + len(QUANTILES), hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh())
        self.mean_head = nn.Linear(hidden, 1)
        nn.init.zeros_(self.mean_head.weight)
        nn.init.zeros_(self.mean_head.bias)  # starts at the uniform fraction u in every group
        self.log_std = nn.Parameter(torch.full((1,), -2.0))
        self.value_head = nn.Linear(hidden, 1)

    def step(self, states: torch.Tensor) -> tuple[torch.distributions.Normal, torch.Tensor]:
        """Action distribution and value ``[M]`` for states ``[M, STATE_FIXED + len(QUANTILES)]``."""
        h = self.body(states)
        mean = states[:, 2:3] + self.mean_head(h)
        return torch.distributions.Normal(mean, self.log_std.exp().expand_as(mean)), self.value_head(h).squeeze(1)


@dataclass
class StaticSearch:
    """Result of :func:`search_static_ratios`.

    ``ratios``: kept fraction per group index; ``keep``: the kept channel
    indices per group; ``param_ratio`` and ``loss``: parameters over the
    model's and cross-entropy on the calibration batch of that choice;
    ``baseline_loss``: the unpruned model's; ``uniform_fraction`` and
    ``uniform_loss``: the one fraction in every group that meets the budget,
    and its loss (the policy's starting point and a baseline); ``chosen``:
    which candidate won (``"policy mean"``, ``"sampled"`` or ``"uniform"``);
    ``history``: per update, mean reward, loss and parameter ratio.
    """

    ratios: dict[int, float]
    keep: dict[int, torch.Tensor]
    param_ratio: float
    loss: float
    baseline_loss: float
    uniform_fraction: float
    uniform_loss: float
    chosen: str = "policy mean"
    history: list[dict[str, float]] = field(default_factory=list)


def _param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _group_features(groups: list[DependencyGroup], scores: dict[int, torch.Tensor]) -> torch.Tensor:
    """Per scored group: ``[channel share, quantiles of its static importance over their max |.|]``."""
    total = sum(len(scores[g.index]) for g in groups)
    rows = []
    for group in groups:
        score = scores[group.index].float()
        quantiles = torch.quantile(score, torch.tensor(QUANTILES)) / score.abs().max().clamp_min(1e-12)
        rows.append(torch.cat([torch.tensor([len(score) / total]), quantiles]))
    return torch.stack(rows)


class _Candidates:
    """Evaluates candidate networks: a model copy with the chosen channels removed, on a calibration batch."""

    def __init__(self, model: nn.Module, groups, scores, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        self.model, self.groups, self.scores = model, groups, scores
        self.inputs, self.targets = inputs, targets
        self.total = _param_count(model)

    def keep(self, ratios: dict[int, float]) -> dict[int, torch.Tensor]:
        return keep_for_ratios(self.model, self.groups, self.scores, ratios)

    def cut(self, ratios: dict[int, float]) -> nn.Module:
        """A copy of the model with ``ratios`` applied."""
        trial = copy.deepcopy(self.model)
        apply_cuts(trial, module_cuts(self.groups, self.keep(ratios)))
        return trial

    @torch.no_grad()
    def evaluate(self, ratios: dict[int, float]) -> tuple[float, float]:
        """(cross-entropy on the batch, parameter ratio) of the network with ``ratios`` applied."""
        trial = self.cut(ratios).eval()
        loss = F.cross_entropy(trial(self.inputs), self.targets).item()
        return loss, _param_count(trial) / self.total

    def uniform_fraction(self, indices: list[int], budget: float, steps: int = 12) -> float:
        """The largest kept fraction, the same in every group of ``indices``, whose parameter ratio meets
        ``budget`` (bisection; :data:`MIN_KEEP` when even that exceeds it)."""
        def param_ratio(fraction: float) -> float:
            return _param_count(self.cut({i: fraction for i in indices})) / self.total

        return largest_within(param_ratio, budget, MIN_KEEP, 1.0, steps)


def _open_runtime_gates(model: nn.Module) -> list[tuple[nn.Module, object]]:
    """Set every runtime gate's keep ratio to 1 (static capacity is judged with all channels running)."""
    saved = []
    for module in model.modules():
        if hasattr(module, "static_importance") and hasattr(module, "set_keep_ratio"):
            saved.append((module, module.keep_ratio))
            module.set_keep_ratio(1.0)
    return saved


def search_static_ratios(
    model: nn.Module, example: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor, config: StaticPolicyConfig
) -> StaticSearch:
    """Train a :class:`StaticPolicy` with PPO and return the kept fraction per group it chooses (its mean action).

    ``model``: a network with runtime gates (e.g. ``GatedModel(..., GateConfig(kind="runtime"))``), not
    changed; ``example`` ``[1, C, H, W]`` drives the trace; ``inputs`` / ``targets`` (int64 ``[N]``) are the
    calibration batch the candidates' loss is measured on.

    Raises:
        ValueError: no dependency group has a runtime-gated producer, or the batch is empty.
    """
    if not isinstance(config, StaticPolicyConfig):
        raise TypeError(f"search_static_ratios: config must be a StaticPolicyConfig, got {type(config).__name__}")
    if inputs.shape[0] == 0 or targets.shape[0] != inputs.shape[0]:
        raise ValueError(f"search_static_ratios: inputs {tuple(inputs.shape)} and targets {tuple(targets.shape)} "
                         "must be a non-empty batch of the same length")
    saved = _open_runtime_gates(model)
    try:
        groups = dependency_groups(model, example)
        scores = static_scores(model, groups)
        scored = [g for g in groups if g.index in scores]
        if not scored:
            raise ValueError(f"search_static_ratios: no dependency group of {type(model).__name__} has a runtime-gated "
                             "producer (build the model with GateConfig(kind='runtime'))")
        candidates = _Candidates(model, groups, scores, inputs, targets)
        return _train(candidates, scored, config)
    finally:
        for module, keep in saved:
            module.keep_ratio = keep


def _rollout_states(
    features: torch.Tensor, budget: float, start: float, actions: torch.Tensor | None, step: int
) -> torch.Tensor:
    """States ``[E, STATE_FIXED + Q]`` of ``step`` for ``E`` episodes whose earlier actions are ``actions[:step]``
    ``[T, E]`` (``start``: the uniform fraction ``u``)."""
    episodes = 1 if actions is None else actions.shape[1]
    steps = features.shape[0]
    shares = features[:, 0]
    if step == 0 or actions is None:
        so_far = torch.zeros(episodes)
    else:
        done = shares[:step, None]
        so_far = (actions[:step].clamp(MIN_KEEP, 1.0) * done).sum(0) / done.sum()
    fixed = torch.tensor([step / steps, budget, start])
    return torch.cat([fixed.expand(episodes, 3), features[step, :1].expand(episodes, 1), so_far[:, None],
                      features[step, 1:].expand(episodes, -1)], dim=1)


def _episodes(policy: StaticPolicy, features: torch.Tensor, budget: float, start: float, count: int, sample: bool):
    """Run ``count`` episodes; returns transitions (per step: state, action, log_prob, value) and actions ``[T, E]``."""
    steps = features.shape[0]
    actions = torch.zeros(steps, count)
    transitions = []
    with torch.no_grad():
        for step in range(steps):
            state = _rollout_states(features, budget, start, actions, step)
            dist, value = policy.step(state)
            action = dist.sample() if sample else dist.mean
            transitions.append((state, action, dist.log_prob(action).squeeze(1), value))
            actions[step] = action.squeeze(1)
    return transitions, actions.clamp(MIN_KEEP, 1.0)


def _train(candidates: _Candidates, scored: list[DependencyGroup], config: StaticPolicyConfig) -> StaticSearch:
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    policy = StaticPolicy(config.hidden)
    ppo = PPO(policy, config.ppo)
    features = _group_features(scored, candidates.scores)
    baseline_loss, _ = candidates.evaluate({})
    start = candidates.uniform_fraction([g.index for g in scored], config.param_budget)
    uniform = {g.index: start for g in scored}
    uniform_loss, uniform_cost = candidates.evaluate(uniform)
    budget = torch.tensor([config.param_budget])

    def score(loss: torch.Tensor, cost: torch.Tensor) -> torch.Tensor:
        # Losses relative to the uniform choice's: without fine-tuning, removed channels cost far more than the
        # unpruned loss, and the budget terms must weigh against differences between candidates.
        return budget_reward(loss, cost, budget.expand_as(cost), uniform_loss)

    # The best candidate seen (the uniform start, every sampled network, the final mean): the policy's episodes
    # are a search, and its last mean is not always the best network it found.
    best = (float(score(torch.tensor([uniform_loss]), torch.tensor([uniform_cost]))), uniform, "uniform")
    history = []
    bar = tqdm(range(config.updates), desc="static policy", disable=not config.progress)
    for _ in bar:
        transitions, actions = _episodes(policy, features, config.param_budget, start, config.episodes, sample=True)
        losses, costs = [], []
        for episode in range(config.episodes):
            ratios = {g.index: float(actions[i, episode]) for i, g in enumerate(scored)}
            loss, cost = candidates.evaluate(ratios)
            losses.append(loss)
            costs.append(cost)
        loss_t, cost_t = torch.tensor(losses), torch.tensor(costs)
        reward = score(loss_t, cost_t)
        top = int(reward.argmax())
        if float(reward[top]) > best[0]:
            best = (float(reward[top]), {g.index: float(actions[i, top]) for i, g in enumerate(scored)}, "sampled")
        ppo.update(stack_rollout(transitions, reward, config.ppo.gamma, config.ppo.lam), generator)
        history.append({"reward": float(reward.mean()), "loss": float(loss_t.mean()), "param_ratio": float(cost_t.mean())})
        bar.set_postfix(loss=f"{history[-1]['loss']:.3f}", params=f"{history[-1]['param_ratio']:.3f}", refresh=False)
    _, actions = _episodes(policy, features, config.param_budget, start, 1, sample=False)
    mean = {g.index: float(actions[i, 0]) for i, g in enumerate(scored)}
    mean_loss, mean_cost = candidates.evaluate(mean)
    if float(score(torch.tensor([mean_loss]), torch.tensor([mean_cost]))) >= best[0]:
        best = (best[0], mean, "policy mean")
    _, ratios, chosen = best
    loss, param_ratio = candidates.evaluate(ratios)
    return StaticSearch(ratios=ratios, keep=candidates.keep(ratios), param_ratio=param_ratio, loss=loss,
                        baseline_loss=baseline_loss, uniform_fraction=start, uniform_loss=uniform_loss,
                        chosen=chosen, history=history)


def prune_static(model: nn.Module, example: torch.Tensor, keep: dict[int, torch.Tensor]) -> None:
    """Remove, in place, every channel not in ``keep`` (group index -> kept indices, e.g. ``StaticSearch.keep``).

    The groups are traced again on ``example`` and must be those the search
    saw; the model records the cuts (``pruned_channels``) so that
    ``gating.save`` / ``gating.load`` rebuild the smaller network.
    """
    groups = dependency_groups(model, example)
    by_index = {g.index: g for g in groups}
    for index, kept in keep.items():
        if index not in by_index or len(kept) > by_index[index].channels:
            raise ValueError(f"prune_static: group {index} does not exist in this model or holds fewer channels than "
                             "the kept ones; keep must come from a search on this model")
    apply_cuts(model, module_cuts(groups, keep))
