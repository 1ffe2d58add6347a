"""Static pruning: dependency groups, surgery against masking, criteria, budgets and bad input."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

from gating import ChannelGatedConv2d, GateConfig, GatedModel
from gating.models import resnet20
from gating.prune import (
    PruneConfig,
    TraceError,
    apply_cuts,
    dependency_groups,
    hold_zero_kernels,
    kernel_l1_penalty,
    measure,
    module_cuts,
    prune,
    similar_representatives,
    slimming_penalty,
    zero_weak_kernels,
)

TORCHVISION = ("resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "vgg16_bn")


def _randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and scales, so removed channels would show in the outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.1)
                    m.bias.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
    return model.eval()


def _random_keep(groups, seed: int) -> dict[int, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    keep = {}
    for g in groups:
        if g.prunable and g.channels >= 4:
            count = max(1, g.channels // 2)
            keep[g.index] = torch.randperm(g.channels, generator=gen)[:count].sort().values
    return keep


def _masked(model: nn.Module, cuts) -> nn.Module:
    """The unpruned model with every removed input channel / feature of every consumer zeroed."""
    masked = copy.deepcopy(model)
    modules = dict(masked.named_modules())
    with torch.no_grad():
        for name, sides in cuts.items():
            module = modules[name]
            if "in" in sides and not (isinstance(module, nn.Conv2d) and module.groups > 1):
                drop = torch.ones(module.weight.shape[1], dtype=torch.bool)
                drop[sides["in"]] = False
                module.weight[:, drop] = 0
    return masked


def _group_of(groups, producer: str):
    return next(g for g in groups if producer in g.producers)


# ------------------------------------------------------------------ groups
def test_resnet20_groups_couple_each_stage_residual_stream():
    groups = dependency_groups(resnet20(), torch.randn(1, 3, 32, 32))
    stage2 = _group_of(groups, "layer2.0.conv2")
    assert sorted(stage2.producers) == sorted(
        ["layer2.0.downsample.0", "layer2.0.conv2", "layer2.1.conv2", "layer2.2.conv2"]
    )
    members = {(m.module, m.role) for m in stage2.members}
    assert ("layer2.0.downsample.1", "out") in members and ("layer2.0.bn2", "out") in members
    assert {("layer2.1.conv1", "in"), ("layer3.0.conv1", "in"), ("layer3.0.downsample.0", "in")} <= members
    inner = _group_of(groups, "layer2.1.conv1")
    assert inner.producers == ["layer2.1.conv1"] and inner.channels == 32
    assert {(m.module, m.role) for m in inner.members} == {
        ("layer2.1.conv1", "out"), ("layer2.1.bn1", "out"), ("layer2.1.conv2", "in")
    }
    head = _group_of(groups, "layer3.2.conv2")
    assert ("fc", "in") in {(m.module, m.role) for m in head.members}
    assert not _group_of(groups, "fc").prunable and not groups[0].prunable  # logits, input image


def test_vgg_flatten_head_spans_every_pixel_of_a_channel():
    groups = dependency_groups(torchvision.models.vgg16_bn(), torch.randn(1, 3, 32, 32))
    last = _group_of(groups, "features.40")
    member = next(m for m in last.members if m.module == "classifier.0")
    assert member.role == "in" and member.layout[0].repeat == 49 and member.layout[0].length == 512


def test_mobilenet_v2_depthwise_follows_and_residual_couples():
    groups = dependency_groups(torchvision.models.mobilenet_v2(), torch.randn(1, 3, 64, 64))
    expand = _group_of(groups, "features.2.conv.0.0")
    roles = {(m.module, m.role) for m in expand.members}
    assert ("features.2.conv.1.0", "out") in roles  # depthwise 3x3 follows its input
    assert ("features.2.conv.2", "in") in roles
    residual = _group_of(groups, "features.2.conv.2")
    assert "features.3.conv.2" in residual.producers  # block 3 adds onto block 2's output


def test_mobilenet_v3_squeeze_excitation_scales_couple_with_their_input():
    groups = dependency_groups(torchvision.models.mobilenet_v3_small(), torch.randn(1, 3, 64, 64))
    se_out = _group_of(groups, "features.4.block.2.fc2")  # SE scale multiplies the depthwise output
    assert "features.4.block.0.0" in se_out.producers
    roles = {(m.module, m.role) for m in se_out.members}
    assert ("features.4.block.2.fc1", "in") in roles and ("features.4.block.1.0", "out") in roles
    squeeze = _group_of(groups, "features.4.block.2.fc1")
    assert squeeze.producers == ["features.4.block.2.fc1"] and squeeze.prunable


class _Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.b = nn.Conv2d(3, 10, 1)
        self.bn = nn.BatchNorm2d(16)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.c = nn.Conv2d(16, 8, 1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        y = torch.cat([self.a(x), self.b(x)], dim=1)
        y = self.c(torch.relu(self.dw(self.bn(y))))
        return self.fc(y.mean(dim=(2, 3)))


def test_concat_keeps_offsets_of_each_input_group():
    model = _randomise(_Concat())
    groups = dependency_groups(model, torch.randn(1, 3, 8, 8))
    a, b = _group_of(groups, "a"), _group_of(groups, "b")
    assert a.index != b.index and a.channels == 6 and b.channels == 10
    consumer = next(m for m in b.members if m.module == "c")
    assert a.offsets(consumer) == [(0, 1)] and b.offsets(consumer) == [(6, 1)]
    keep = {a.index: torch.tensor([1, 4]), b.index: torch.tensor([0, 5, 9])}
    cuts = module_cuts(groups, keep)
    assert cuts["c"]["in"].tolist() == [1, 4, 6, 11, 15]
    assert cuts["bn"]["out"].tolist() == [1, 4, 6, 11, 15] and cuts["dw"]["out"].tolist() == [1, 4, 6, 11, 15]
    x = torch.randn(2, 3, 8, 8)
    masked = _masked(model, cuts)
    apply_cuts(model, cuts)
    torch.testing.assert_close(model(x), masked(x), rtol=1e-5, atol=1e-6)
    assert model.dw.groups == 5 and model.c.in_channels == 5


@pytest.mark.parametrize("name", TORCHVISION + ("resnet20",))
def test_pruned_equals_masked(name):
    model = resnet20() if name == "resnet20" else getattr(torchvision.models, name)()
    model = _randomise(model)
    size = 32 if name in ("resnet20", "vgg16_bn") else 64
    x = torch.randn(2, 3, size, size)
    groups = dependency_groups(model, x[:1])
    assert any(g.prunable for g in groups)
    cuts = module_cuts(groups, _random_keep(groups, seed=1))
    masked = _masked(model, cuts)
    before = measure(model, x[:1])
    apply_cuts(model, cuts)
    with torch.no_grad():
        got, want = model(x), masked(x)
    scale = want.abs().max().item()
    assert (got - want).abs().max().item() <= 1e-4 * max(scale, 1.0)
    after = measure(model, x[:1])
    assert after.params < before.params and after.macs < before.macs


# ------------------------------------------------------------------ gated layers
@pytest.mark.parametrize("name", ["resnet20", "resnet18", "mobilenet_v2", "mobilenet_v3_small"])
def test_gated_model_groups_match_the_dense_model(name):
    network = resnet20() if name == "resnet20" else getattr(torchvision.models, name)()
    x = torch.randn(1, 3, 32, 32)
    gated_model = GatedModel(network, GateConfig(gate_group=8))
    assert gated_model.gated_names
    dense = dependency_groups(network, x)
    gated = dependency_groups(gated_model, x)
    strip = lambda g: sorted(p.removeprefix("model.") for p in g.producers)  # noqa: E731
    assert [strip(g) for g in dense] == [strip(g) for g in gated]
    assert [(g.channels, g.prunable) for g in dense] == [(g.channels, g.prunable) for g in gated]


def test_pruned_gated_torchvision_model_stays_gated_and_runs():
    model = GatedModel(_randomise(torchvision.models.resnet18()), GateConfig(gate_group=16)).eval()
    x = torch.randn(2, 3, 64, 64)
    prune(model, x[:1], PruneConfig(ratio=0.5, scope="layer"))
    assert all(isinstance(layer, ChannelGatedConv2d) for layer in model.gated_layers().values())
    assert all(layer.out_channels % 16 == 0 for layer in model.gated_layers().values())
    with torch.no_grad():
        assert model(x).shape == (2, 1000)
        with model.open_gates():
            assert torch.isfinite(model(x)).all()


def test_gated_layer_pruned_by_whole_gate_groups_keeps_its_decisions():
    torch.manual_seed(0)
    layer = ChannelGatedConv2d(24, 48, 3, padding=1, gate_group=16).eval()
    with torch.no_grad():
        layer.gate_bn.running_mean.uniform_(-1, 1)
        layer.gate_bn.running_var.uniform_(0.5, 2)
        layer.threshold.uniform_(-0.5, 0.5)
    x = torch.randn(2, 24, 9, 9)
    full = layer(x)
    full_decisions = layer.last_decisions
    keep = torch.cat([torch.arange(0, 16), torch.arange(32, 48)])
    layer.prune_channels(keep, None)
    assert layer.num_groups == 2 and layer.out_channels == 32
    torch.testing.assert_close(layer(x), full[:, keep], rtol=0, atol=0)
    assert torch.equal(layer.last_decisions, full_decisions[:, [0, 2]])


def test_gated_layer_pruned_inputs_rebuild_the_partition():
    torch.manual_seed(0)
    layer = ChannelGatedConv2d(32, 32, 3, padding=1, gate_group=16, base_fraction=0.25).eval()
    with torch.no_grad():
        layer.gate_bn.running_var.uniform_(0.5, 2)
    in_keep = torch.arange(0, 32, 2)
    fresh = ChannelGatedConv2d(16, 32, 3, padding=1, gate_group=16, base_fraction=0.25).eval()
    with torch.no_grad():
        fresh.weight.copy_(layer.weight[:, in_keep])
        fresh.threshold.copy_(layer.threshold)
        fresh.gate_bn.running_var.copy_(layer.gate_bn.running_var)
    layer.prune_channels(None, in_keep)
    assert layer.base_mask.shape == (32, 16) and layer.base_mask.sum(dim=1).tolist() == [4] * 32
    x = torch.randn(2, 16, 7, 7)
    torch.testing.assert_close(layer(x), fresh(x), rtol=0, atol=0)


def test_pruning_a_gated_model_keeps_it_gated_and_rounds_to_the_gate_group():
    model = GatedModel(_randomise(resnet20(width=32)), GateConfig(gate_group=16))
    model.eval()
    result = prune(model, torch.randn(1, 3, 32, 32), PruneConfig(ratio=0.5, scope="layer"))
    for name, layer in model.gated_layers().items():
        assert isinstance(layer, ChannelGatedConv2d)
        assert layer.out_channels % 16 == 0, name
        assert layer.num_groups == layer.out_channels // 16
    assert result.after.params < 0.6 * result.before.params
    x = torch.randn(2, 3, 32, 32)
    assert model(x).shape == (2, 10)
    report = model.report()  # accounting follows the new shapes
    assert report.macs_dense == 2 * result.after.macs  # batch 2; accounting counts the pruned shapes exactly


# ------------------------------------------------------------------ criteria
def test_similarity_keeps_the_strongest_of_each_duplicated_filter_cluster():
    torch.manual_seed(0)
    base = torch.randn(4, 18)
    # channels 0-3 distinct directions; 4-7 are scaled copies (2x) of them: keep the copies.
    rows = torch.cat([base, 2 * base + 1e-3 * torch.randn(4, 18)])
    strength = rows.abs().sum(dim=1)
    assert similar_representatives(rows, strength, 4).tolist() == [4, 5, 6, 7]
    assert similar_representatives(rows, strength, 8).tolist() == list(range(8))


def test_similarity_criterion_prunes_duplicated_filters_first():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    with torch.no_grad():
        model[0].weight[4:] = model[0].weight[:4] * 1.5  # 4..7 repeat 0..3, stronger
    prune(model, torch.randn(1, 3, 8, 8), PruneConfig(criterion="similarity", ratio=0.5, round_to=1))
    assert model.pruned_channels["0"]["out"] == [4, 5, 6, 7]


def test_feature_similarity_keeps_one_of_two_channels_with_equal_feature_maps():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    with torch.no_grad():
        model[0].weight[4:] = model[0].weight[:4] * 2  # same feature maps up to scale, twice as strong
        model[0].bias[4:] = model[0].bias[:4] * 2
    prune(model, torch.randn(1, 3, 8, 8), PruneConfig(criterion="similarity", similarity_source="features",
                                                      ratio=0.5, round_to=1), calibration=torch.randn(4, 3, 8, 8))
    assert model.pruned_channels["0"]["out"] == [4, 5, 6, 7]
    with pytest.raises(ValueError, match="needs calibration"):
        prune(model, torch.randn(1, 3, 8, 8), PruneConfig(criterion="similarity", similarity_source="features",
                                                          ratio=0.5))


def test_slimming_prunes_smallest_batchnorm_scales_globally():
    model = _randomise(nn.Sequential(
        nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 16, 3), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 4, 1),
    ))
    with torch.no_grad():
        model[1].weight.copy_(torch.arange(1, 17) / 100)  # all smaller than model[4]'s
        model[4].weight.copy_(torch.arange(1, 17).float())
    result = prune(model, torch.randn(1, 3, 8, 8), PruneConfig(criterion="slimming", ratio=0.25, round_to=1))
    assert model.pruned_channels["0"]["out"] == list(range(8, 16))  # all 8 removed from the weak layer
    assert "3" not in model.pruned_channels or model.pruned_channels["3"].get("out") is None
    assert result.kept[_group_index(result, "0")] == (8, 16)
    with torch.no_grad():
        assert slimming_penalty(model).item() == pytest.approx(float(model[1].weight.abs().sum() + model[4].weight.abs().sum()))


def _group_index(result, producer):
    return next(g.index for g in result.groups if producer in g.producers)


def test_gate_criterion_removes_the_groups_that_are_never_on():
    torch.manual_seed(0)
    model = GatedModel(nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1),
                                     nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, 4, 1)),
                       GateConfig(gate_group=8, skip_stem=True, include=("2",), exclude=("5",))).eval()
    layer = model.model[2]
    with torch.no_grad():
        layer.threshold[8:16] = 50.0  # group 1 never opens
        layer.threshold[24:32] = 50.0  # group 3 never opens
        layer.threshold[:8] = -50.0
        layer.threshold[16:24] = -50.0
    prune(model, torch.randn(1, 3, 10, 10), PruneConfig(criterion="gate", ratio=0.5, round_to=8),
          calibration=torch.randn(4, 3, 10, 10))
    assert model.model.pruned_channels["2"]["out"] == list(range(0, 8)) + list(range(16, 24))


def test_flops_budget_is_met_by_measurement():
    model = _randomise(resnet20(width=32))
    result = prune(model, torch.randn(1, 3, 32, 32), PruneConfig(flops=0.5))
    assert result.after.macs <= 0.5 * result.before.macs
    assert result.after.macs == measure(model, torch.randn(1, 3, 32, 32)).macs
    assert result.after.macs > 0.3 * result.before.macs  # the bisection does not overshoot wildly


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("kwargs, match", [
    ({"ratio": 1.0}, "ratio must be in"),
    ({"ratio": -0.1}, "ratio must be in"),
    ({"ratio": 0.5, "flops": 0.5}, "exactly one"),
    ({}, "exactly one"),
    ({"flops": 0.0}, "flops must be in"),
    ({"ratio": 0.5, "criterion": "magnitude"}, "criterion"),
    ({"ratio": 0.5, "round_to": 0}, "round_to"),
    ({"ratio": 0.5, "scope": "local"}, "scope"),
])
def test_bad_prune_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PruneConfig(**kwargs)


def test_ratio_that_would_empty_a_layer_keeps_round_to_and_warns():
    model = _randomise(nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 4, 1)))
    with pytest.warns(UserWarning, match="round_to=8"):
        prune(model, torch.randn(1, 3, 8, 8), PruneConfig(ratio=0.95, scope="layer", max_ratio=0.99))
    assert model[0].out_channels == 8


class _Split(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        a, b = torch.chunk(self.conv(x), 2, dim=1)
        return self.head(a * b)


class _Grouped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.grouped = nn.Conv2d(8, 8, 3, groups=2)

    def forward(self, x):
        return self.grouped(self.conv(x))


@pytest.mark.parametrize("model, match", [
    (_Split(), "chunk"),
    (_Grouped(), r"'grouped'.*groups=2"),
])
def test_untraceable_operations_are_named(model, match):
    with pytest.raises(TraceError, match=match):
        dependency_groups(model, torch.randn(1, 3, 8, 8))


def test_bad_plan_leaves_the_model_unchanged():
    model = _randomise(resnet20())
    groups = dependency_groups(model, torch.randn(1, 3, 32, 32))
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="cannot be pruned"):
        module_cuts(groups, {0: torch.tensor([0, 1])})  # the input image's channels
    with pytest.raises(ValueError, match="distinct channel indices"):
        apply_cuts(model, {"conv1": {"out": torch.tensor([0, 0, 1])}, "layer1.0.conv1": {"in": torch.tensor([0])}})
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


# ------------------------------------------------------------------ multi-granularity
def test_multigranularity_prunes_free_channels_and_kernels_of_coupled_groups():
    model = _randomise(resnet20(width=32))
    x = torch.randn(2, 3, 32, 32)
    result = prune(model, x[:1], PruneConfig(criterion="multigranularity", ratio=0.5, scope="layer"))
    assert model.layer2[1].conv1.out_channels == 32  # a free group (one producer): half its channels gone
    assert model.layer2[1].conv2.out_channels == 64  # the residual stream keeps its channels ...
    zero, total = result.zeroed_kernels["layer2.1.conv2"]
    kernels = model.layer2[1].conv2.weight.abs().sum(dim=(2, 3))
    assert total == kernels.numel() and zero == int((kernels == 0).sum()) == total // 2  # ... but loses kernels
    assert "layer2.1.conv1" not in result.zeroed_kernels
    assert result.after.nonzero_params < result.after.params
    assert torch.isfinite(model(x)).all()
    with pytest.raises(ValueError, match="takes a ratio"):
        PruneConfig(criterion="multigranularity", flops=0.5)


def test_kernel_l1_penalty_value_and_gradient_by_hand():
    conv = nn.Conv2d(1, 2, 2, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[[1.0, -1.0], [0.0, 2.0]]], [[[0.5, 0.0], [0.0, 0.0]]]]))
    penalty = kernel_l1_penalty(nn.Sequential(conv), eps=0.0)
    assert penalty.item() == pytest.approx(1.0)  # mean of ||K|| / ||K|| over two kernels
    penalty.backward()
    expected = torch.sign(conv.weight.detach()) / torch.tensor([4.0, 0.5]).view(2, 1, 1, 1) / 2
    torch.testing.assert_close(conv.weight.grad, expected)


def test_zeroed_kernels_stay_zero_through_sgd_with_momentum_and_weight_decay():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1))
    assert zero_weak_kernels(model[0], 0.5) == 12
    dead = model[0].weight.detach().abs().sum(dim=(2, 3)) == 0
    before = model[0].weight.detach().clone()
    hold_zero_kernels(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(4, 3, 6, 6)).square().mean().backward()
        optimizer.step()
    weight = model[0].weight.detach()
    assert (weight[dead] == 0).all()
    assert not torch.equal(weight[~dead], before[~dead])
