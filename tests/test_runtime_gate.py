"""The runtime channel-importance gate: selection rules by hand, exact zeros, compounding counts, budgets."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import gating
from gating import GateConfig, GatedModel
from gating.gates import RuntimeGatedConv2d, unified_importance
from gating.gates.runtime import keep_counts, top_k_mask, tradeoff_mask
from gating.models import resnet20
from gating.prune import PruneConfig, dependency_groups, prune


def test_sign_fix_keeps_two_negatives_negative():
    runtime = torch.tensor([[2.0, -2.0, 2.0, -2.0]])
    static = torch.tensor([3.0, 3.0, -3.0, -3.0])
    assert unified_importance(runtime, static).tolist() == [[6.0, -6.0, -6.0, -6.0]]


def test_keep_counts_round_up_to_the_channel_group():
    ratios = torch.tensor([0.01, 0.3, 0.5, 0.51, 1.0], dtype=torch.float64)
    assert keep_counts(ratios, 32, 8).tolist() == [8, 16, 16, 24, 32]
    assert keep_counts(torch.tensor([0.2], dtype=torch.float64), 6, 8).tolist() == [6]  # group wider than the layer


def test_top_k_by_hand_with_one_k_per_input():
    importance = torch.tensor([[0.1, 0.9, 0.5, 0.3], [4.0, 3.0, 2.0, 1.0]])
    mask = top_k_mask(importance, torch.tensor([2, 1]))
    assert mask.tolist() == [[False, True, True, False], [True, False, False, False]]


def test_tradeoff_pruner_by_hand():
    runtime = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]])
    static = torch.tensor([5.0, 0.0, 4.0, 1.0, 3.0, 2.0])
    k = torch.tensor([2])  # prune 4: bottom-4 runtime {0,1,2,3}, bottom-4 static {1,3,5,4}; both: {1,3}
    # R_r = 1: the other 2 from the runtime side (0, 2); R_r = 0: from the static side (5, 4).
    assert tradeoff_mask(runtime, static, k, 1.0).tolist() == [[False, False, False, False, True, True]]
    assert tradeoff_mask(runtime, static, k, 0.0).tolist() == [[True, False, True, False, False, False]]
    # R_r = 0.5: one from each side (runtime 0, then static 5).
    assert tradeoff_mask(runtime, static, k, 0.5).tolist() == [[False, False, True, False, True, False]]


def _layer(c_in=8, c_out=16, group=4, **kwargs):
    torch.manual_seed(0)
    conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
    bn = nn.BatchNorm2d(c_out)
    with torch.no_grad():
        bn.bias.uniform_(0.5, 1.0)  # a pruned channel would leave the BatchNorm non-zero
    return RuntimeGatedConv2d(conv, bn, channel_group=group, **kwargs).eval()


def test_pruned_channels_are_exact_zeros_after_the_batchnorm_and_kept_ones_exact():
    layer = _layer()
    with torch.no_grad():
        layer.predictor.weight.normal_()
    layer.set_keep_ratio(0.5)
    x = torch.randn(3, 8, 5, 5)
    y = layer(x)
    dense = layer.bn(layer.conv(x))
    mask = layer.last_masks
    assert mask.shape == (3, 16) and mask.sum(dim=1).tolist() == [8, 8, 8]
    assert (y[~mask] == 0).all()
    assert torch.equal(y[mask], dense[mask])
    runtime = layer.predictor(x.mean(dim=(2, 3)))
    expected = top_k_mask(unified_importance(runtime, layer.static_importance), torch.tensor([8, 8, 8]))
    assert torch.equal(mask, expected)
    assert not torch.equal(mask[0], mask[1]) or not torch.equal(mask[1], mask[2])  # per input


def test_importances_receive_gradients_through_the_kept_channels():
    layer = _layer().train()
    layer.set_keep_ratio(0.5)
    layer(torch.randn(2, 8, 5, 5)).square().sum().backward()
    assert layer.predictor.weight.grad.abs().sum() > 0 and layer.static_importance.grad.abs().sum() > 0


def test_per_input_keep_ratios_and_bad_values():
    layer = _layer()
    layer.set_keep_ratio(torch.tensor([0.25, 1.0]))
    layer(torch.randn(2, 8, 5, 5))
    assert layer.last_masks.sum(dim=1).tolist() == [4, 16]
    for bad in (0.0, 1.5, torch.tensor([[0.5]])):
        with pytest.raises(ValueError, match="keep_ratio must be in"):
            layer.set_keep_ratio(bad)
    with pytest.raises(ValueError, match="2 per-input keep ratios for a batch of 3"):
        layer(torch.randn(3, 8, 5, 5))
    with pytest.raises(ValueError, match=r"channel_group must be an int in \[1, 16\]"):
        RuntimeGatedConv2d(nn.Conv2d(8, 16, 3), channel_group=32)
    with pytest.raises(ValueError, match="channel_group 8 does not divide the 12 output channels"):
        RuntimeGatedConv2d(nn.Conv2d(8, 12, 3), channel_group=8)
    odd = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 12, 3))
    with pytest.raises(ValueError, match="cannot gate '2': RuntimeGatedConv2d: channel_group 8 does not divide"):
        GatedModel(odd, GateConfig(kind="runtime", channel_group=8, skip_stem=False))


def test_compounding_macs_by_hand():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))
    model = GatedModel(net, GateConfig(kind="runtime", channel_group=4, skip_stem=False)).eval()
    assert model.gated_names == ["0", "3"] and isinstance(model.model[1], nn.Identity)
    model.set_keep_ratio(0.5)
    x = torch.randn(2, 3, 6, 6)
    model(x)
    report = {layer.name: layer for layer in model.report().layers}
    second = model.gated_layers()["3"]
    active = second.last_active_inputs.sum(dim=1)
    assert active.tolist() == [8, 8]  # the first layer's pruned channels reach it as zero maps
    expected = int((second.last_masks.sum(dim=1) * active).sum()) * 9 * 36 + 2 * 16 * 16
    assert report["3"].macs_executed == expected
    assert report["3"].macs_dense == 2 * 16 * 16 * 9 * 36
    assert report["0"].macs_executed == 2 * 8 * 3 * 9 * 36 + 2 * 3 * 16
    assert report["3"].density == 0.5 and set(report) == {"0", "3", "8"}  # inner conv / predictor not recounted


def test_open_gates_is_the_dense_network_and_state_round_trips(tmp_path):
    torch.manual_seed(0)
    dense = resnet20().eval()
    model = GatedModel(dense, GateConfig(kind="runtime")).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), model.open_gates():
        torch.testing.assert_close(model(x), dense(x), rtol=0, atol=0)
    copy = GatedModel(resnet20(), GateConfig(kind="runtime")).eval()
    copy.load_state_dict(model.state_dict())
    model.set_keep_ratio(0.5)
    copy.set_keep_ratio(0.5)
    with torch.no_grad():
        assert torch.equal(copy(x), model(x))
    with pytest.raises(ValueError, match="differing: kind"):
        GatedModel(resnet20(), GateConfig()).load_state_dict(model.state_dict())


def test_set_budget_meets_the_budget_from_below_and_is_monotone():
    torch.manual_seed(0)
    model = GatedModel(resnet20(width=32), GateConfig(kind="runtime", channel_group=4)).eval()
    x = torch.randn(4, 3, 16, 16)
    reached = []
    for budget in (0.3, 0.5, 0.7):
        model.set_budget(budget, x)
        model(x)
        reached.append(model.executed_macs_ratio())
        assert reached[-1] <= budget
    assert reached == sorted(reached) and reached[-1] - reached[0] > 0.2
    with pytest.raises(ValueError, match=r"budget must be in \(0, 1\]"):
        model.set_budget(0.0, x)
    with pytest.raises(NotImplementedError, match="use set_budget"):
        model.calibrate(x, 0.5)
    with pytest.raises(NotImplementedError, match="use calibrate"):
        GatedModel(resnet20(), GateConfig()).set_budget(0.5, x)


def test_static_pruning_slices_runtime_gates_and_saves(tmp_path):
    torch.manual_seed(0)
    model = GatedModel(gating.build("resnet20", width=32), GateConfig(kind="runtime")).eval()
    x = torch.randn(2, 3, 32, 32)
    groups = dependency_groups(model, x[:1])
    inner = next(g for g in groups if g.producers == ["model.layer2.1.conv1"])
    assert ("model.layer2.1.conv2", "in") in {(m.module, m.role) for m in inner.members}
    prune(model, x[:1], PruneConfig(ratio=0.5, scope="layer"))
    layer = model.gated_layers()["layer2.1.conv1"]
    assert layer.out_channels == 32 and layer.bn.num_features == 32 and layer.predictor.out_features == 32
    model.set_keep_ratio(0.5)
    gating.save(model, tmp_path / "rt")
    loaded = gating.load(tmp_path / "rt")
    loaded.set_keep_ratio(0.5)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert math.isclose(loaded.gate_stats()["layer2.1.conv1"], 0.5)
