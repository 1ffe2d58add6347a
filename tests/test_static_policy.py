"""The static policy of runtime gates: per-layer static ratios for a parameter budget, and the storage cut."""

from __future__ import annotations

import copy

import pytest
import torch

from gating import GateConfig, GatedModel, io
from gating.models import resnet20
from gating.prune import PruneConfig, dependency_groups, keep_for_ratios, prune, static_scores
from gating.rl import StaticPolicyConfig, prune_static, search_static_ratios


def _model(channel_group=4):
    torch.manual_seed(0)
    network = io.build("resnet20", width=16)  # built by name, so gating.save can write its recipe
    return GatedModel(network, GateConfig(kind="runtime", channel_group=channel_group)).eval()


def _params(model):
    return sum(p.numel() for p in model.parameters())


def test_static_scores_are_the_runtime_gates_static_importance():
    model = _model()
    example = torch.randn(1, 3, 16, 16)
    groups = dependency_groups(model, example)
    scores = static_scores(model, groups)
    layer = model.model.layer1[0].conv1  # its outputs form a group of their own
    group = next(g for g in groups if g.producers == ["model.layer1.0.conv1"])
    torch.testing.assert_close(scores[group.index], layer.static_importance.detach().double())


def test_keep_for_ratios_keeps_the_most_important_channels_in_channel_group_multiples():
    model = _model(channel_group=4)
    example = torch.randn(1, 3, 16, 16)
    groups = dependency_groups(model, example)
    scores = static_scores(model, groups)
    index = next(g.index for g in groups if g.producers == ["model.layer2.0.conv1"])  # 32 channels
    keep = keep_for_ratios(model, groups, scores, {index: 0.3})
    # 0.3 * 32 = 9.6 -> 10 wanted, rounded up to round_to = lcm(8, 4) = 8 -> 16.
    assert len(keep[index]) == 16
    expected = scores[index].argsort(descending=True, stable=True)[:16].sort().values
    assert torch.equal(keep[index], expected)


def test_prune_static_removes_channels_and_the_model_saves_and_loads(tmp_path):
    model = _model()
    example = torch.randn(1, 3, 16, 16)
    groups = dependency_groups(model, example)
    scores = static_scores(model, groups)
    singles = [g.index for g in groups if g.index in scores and len(g.producers) == 1]
    keep = keep_for_ratios(model, groups, scores, {i: 0.5 for i in singles})
    before = _params(model)
    x = torch.randn(2, 3, 16, 16)
    # Removing a channel equals zeroing its producer's output (gates fully open).
    reference = copy.deepcopy(model)
    reference.set_keep_ratio(1.0)
    modules = dict(reference.named_modules())
    handles = []
    for index, kept in keep.items():
        producer = modules[groups[index].producers[0]]
        dropped = torch.ones(producer.out_channels, dtype=torch.bool)
        dropped[kept] = False
        handles.append(producer.register_forward_hook(
            lambda m, a, y, d=dropped: y.masked_fill(d[None, :, None, None], 0.0)))
    with torch.no_grad():
        expected = reference(x)
    prune_static(model, example, keep)
    model.set_keep_ratio(1.0)
    assert _params(model) < before
    assert model.model.layer2[0].conv1.out_channels == 16
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-4)
    io.save(model, tmp_path / "m")
    loaded = io.load(tmp_path / "m").eval()
    loaded.set_keep_ratio(1.0)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    assert _params(loaded) == _params(model)


def test_prune_static_refuses_keep_from_another_model():
    model = _model()
    with pytest.raises(ValueError, match="group 999 does not exist"):
        prune_static(model, torch.randn(1, 3, 16, 16), {999: torch.tensor([0, 1])})


def test_global_threshold_baseline_meets_a_parameter_budget():
    model = _model()
    result = prune(model, torch.randn(1, 3, 16, 16), PruneConfig(criterion="static", params=0.6))
    assert result.after.params <= 0.6 * result.before.params


def test_search_meets_the_parameter_budget_and_improves_on_its_start():
    model = _model()
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(32, 3, 16, 16, generator=generator)
    with torch.no_grad():  # targets the unpruned model predicts: the loss rises as capacity goes
        targets = model(inputs).argmax(dim=1)
    before = _params(model)
    config = StaticPolicyConfig(param_budget=0.5, updates=12, episodes=6, hidden=16, progress=False)
    search = search_static_ratios(model, inputs[:1], inputs, targets, config)
    assert _params(model) == before  # the search does not change the model
    assert search.param_ratio <= 0.5 + 0.03  # the budget penalty holds it (slack 0.03)
    assert search.param_ratio >= 0.3  # and the unused-budget term spends it
    assert all(0.1 <= r <= 1.0 for r in search.ratios.values())
    first, last = search.history[0], search.history[-1]
    assert last["reward"] > first["reward"]


def test_search_refuses_a_model_without_runtime_gates_and_bad_budgets():
    with pytest.raises(ValueError, match="param_budget must be in"):
        StaticPolicyConfig(param_budget=0.0)
    model = GatedModel(resnet20(width=8), GateConfig()).eval()
    x = torch.randn(4, 3, 16, 16)
    with pytest.raises(ValueError, match="no dependency group"):
        search_static_ratios(model, x[:1], x, torch.zeros(4, dtype=torch.int64),
                             StaticPolicyConfig(updates=1, episodes=1, progress=False))
