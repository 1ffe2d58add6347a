"""GatedModel: conversion rules, open_gates parity, losses, stats and state_dict."""

import contextlib
import copy
import warnings

import pytest
import torch
import torchvision
from torch import nn

from gating import ChannelGatedConv2d, GateConfig, GatedModel
from gating.models import resnet20, resnet56

TORCHVISION = {
    "resnet18": (lambda: torchvision.models.resnet18(weights=None), 64),
    "resnet50": (lambda: torchvision.models.resnet50(weights=None), 64),
    "mobilenet_v2": (lambda: torchvision.models.mobilenet_v2(weights=None), 64),
    "vgg16_bn": (lambda: torchvision.models.vgg16_bn(weights=None), 32),
    "cifar_resnet20": (lambda: resnet20(), 32),
    "cifar_resnet56": (lambda: resnet56(), 32),
}


def randomise_bn(model: nn.Module) -> None:
    """Give every BatchNorm non-trivial running statistics so eval outputs are not degenerate."""
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)


@pytest.mark.parametrize("name", list(TORCHVISION))
def test_open_gates_equals_original(name):
    factory, size = TORCHVISION[name]
    torch.manual_seed(0)
    original = factory().eval()
    randomise_bn(original)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected = original(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # none of these models has a conv that needs a warning
        gated = GatedModel(copy.deepcopy(original)).eval()
    assert len(gated.gated_names) > 0
    assert all(isinstance(m, ChannelGatedConv2d) for m in gated.gated_layers().values())
    with torch.no_grad(), gated.open_gates():
        got = gated(x)
    scale = expected.abs().max()
    assert (got - expected).abs().max() <= 1e-4 * scale
    # Gated forward runs and records a decision mask for every gated layer.
    with torch.no_grad():
        gated(x)
    stats = gated.gate_stats()
    assert set(stats) == set(gated.gated_names) and all(0.0 <= v <= 1.0 for v in stats.values())
    # Every non-conv parameter and buffer of the original is still there, unchanged.
    original_state = original.state_dict()
    for key, value in gated.model.state_dict().items():
        if key in original_state:
            assert torch.equal(value, original_state[key]), key


def test_default_rules_on_torchvision_models():
    r18 = GatedModel(torchvision.models.resnet18(weights=None))
    assert "conv1" not in r18.gated_names  # stem
    assert not any("downsample" in n for n in r18.gated_names)
    assert "layer1.0.conv1" in r18.gated_names and "layer4.1.conv2" in r18.gated_names
    mnv2 = GatedModel(torchvision.models.mobilenet_v2(weights=None))
    depthwise = [n for n, m in mnv2.model.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert depthwise and not set(depthwise) & set(mnv2.gated_names)
    assert "features.0.0" not in mnv2.gated_names
    assert "features.1.conv.1" in mnv2.gated_names  # a 1x1 projection conv that is no shortcut


def test_include_exclude_and_unsupported_convs():
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.Conv2d(8, 16, 3, padding=1, groups=2),
        nn.ConvTranspose2d(16, 8, 3),
        nn.Conv2d(8, 8, 3),
    )
    with pytest.warns(UserWarning) as record:
        gated = GatedModel(copy.deepcopy(net), GateConfig(include=("0",), exclude=("4",)))
    messages = [str(w.message) for w in record]
    assert any("'2'" in m and "groups=2" in m for m in messages)
    assert any("'3'" in m and "transposed" in m for m in messages)
    assert all("\n" not in m for m in messages)
    assert gated.gated_names == ["0", "1"]
    with pytest.raises(NotImplementedError, match=r"'2'.*groups=2"):
        GatedModel(copy.deepcopy(net), GateConfig(include=("2",)))
    with pytest.raises(NotImplementedError, match=r"'3'.*transposed"), pytest.warns(UserWarning, match="'2'"):
        GatedModel(copy.deepcopy(net), GateConfig(include=("3",)))
    with pytest.raises(ValueError, match="does not have"):
        GatedModel(copy.deepcopy(net), GateConfig(exclude=("nope",)))


def test_wrong_input_names_the_layer():
    gated = GatedModel(resnet20())
    with pytest.raises(ValueError, match=r"conv1.*4-D"):
        gated(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match=r"conv1.*3 input channels, got 1"):
        gated(torch.randn(2, 1, 32, 32))
    with pytest.raises(TypeError, match=r"conv1.*float64"):
        gated(torch.randn(2, 3, 32, 32, dtype=torch.float64))
    layer = gated.gated_layers()["layer1.0.conv1"]
    with pytest.raises(ValueError, match=r"layer1\.0\.conv1.*16 input channels"):
        layer(torch.randn(1, 5, 8, 8))


def test_state_dict_round_trip_and_config_mismatch():
    torch.manual_seed(0)
    config = GateConfig(gate_group=8, target_flops_ratio=0.5)
    source = GatedModel(resnet20(), config)
    with torch.no_grad():
        for layer in source.gated_layers().values():
            layer.threshold.uniform_(-1, 1)
    source.train()
    source(torch.randn(4, 3, 32, 32))  # moves gate BN running stats
    state = source.state_dict()
    target = GatedModel(resnet20(), config)
    target.load_state_dict(state)
    for key, value in source.state_dict().items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, target.state_dict()[key]), key
    source.eval(), target.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(source(x), target(x))
    other = GatedModel(resnet20(), GateConfig(gate_group=16))
    with pytest.raises(ValueError, match="gate config"):
        other.load_state_dict(state)


def test_threshold_loss_value():
    gated = GatedModel(resnet20(), GateConfig(threshold_weight=0.5, target_threshold=1.0))
    with torch.no_grad():
        for i, layer in enumerate(gated.gated_layers().values()):
            layer.threshold.fill_(float(i))
    expected = sum(0.5 * layer.out_channels * (i - 1.0) ** 2
                   for i, layer in enumerate(gated.gated_layers().values()))
    assert gated.threshold_loss().item() == pytest.approx(expected)
    assert {id(p) for p in gated.no_weight_decay_parameters()} == {
        id(layer.threshold) for layer in gated.gated_layers().values()
    }


def _tune_thresholds(config: GateConfig, steps: int = 40) -> float:
    """Optimise only the thresholds on the gating loss; return the hard executed-MAC ratio."""
    torch.manual_seed(0)
    gated = GatedModel(resnet20(width=8), config)
    x = torch.randn(4, 3, 16, 16)
    thresholds = list(gated.no_weight_decay_parameters())
    gated.requires_grad_(False)
    for threshold in thresholds:
        threshold.requires_grad_(True)
    optimiser = torch.optim.Adam(thresholds, lr=0.1)
    for _ in range(steps):
        gated(x)
        loss = gated.gating_loss()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        gated(x)
    return gated.executed_macs_ratio()


def test_budget_loss_drives_executed_ratio_to_target():
    ratios = [_tune_thresholds(GateConfig(target_flops_ratio=t, threshold_weight=0.0)) for t in (0.9, 0.6, 0.45)]
    assert ratios[0] > ratios[1] > ratios[2]
    for ratio, target in zip(ratios, (0.9, 0.6, 0.45)):
        assert abs(ratio - target) < 0.08, (ratio, target)


def test_sparsity_rises_with_target_threshold():
    ratios = [
        _tune_thresholds(GateConfig(target_threshold=t, threshold_weight=1.0), steps=25) for t in (-1.0, 0.0, 1.0)
    ]
    assert ratios[0] > ratios[1] > ratios[2]


def test_soft_ratio_equals_hard_ratio_and_has_gradient():
    torch.manual_seed(0)
    gated = GatedModel(resnet20(width=8))
    gated(torch.randn(4, 3, 16, 16))
    soft = gated.soft_macs_ratio()
    assert soft.item() == pytest.approx(gated.executed_macs_ratio(), rel=1e-6)
    soft.backward()
    assert all(layer.threshold.grad.abs().sum() > 0 for layer in gated.gated_layers().values())
    with torch.no_grad():
        gated(torch.randn(4, 3, 16, 16))
    assert gated.soft_macs_ratio().item() == pytest.approx(gated.executed_macs_ratio(), rel=1e-6)
    with gated.open_gates():
        gated(torch.randn(4, 3, 16, 16))
    assert gated.soft_macs_ratio().item() == pytest.approx(1.0)
    assert gated.executed_macs_ratio() == pytest.approx(1.0)


def test_report_needs_a_forward():
    with pytest.raises(RuntimeError, match="forward"):
        GatedModel(resnet20()).report()


def test_calibrate_meets_the_budget_on_its_batch():
    torch.manual_seed(0)
    gated = GatedModel(resnet20(width=8), GateConfig(gate_group=4))
    x = torch.randn(16, 3, 16, 16)
    density = gated.calibrate(x, 0.5)
    assert 0.0 < density < 1.0 and gated.training
    gated.eval()
    with torch.no_grad():
        gated(x)
    assert gated.executed_macs_ratio() == pytest.approx(0.5, abs=0.02)
    for name, value in gated.gate_stats().items():
        assert value == pytest.approx(density, abs=0.05), name
    assert gated.uniform_density(1.2) == 1.0  # clipped: the gate's own MACs make 1.0 reachable below d = 1
    with pytest.raises(ValueError, match="target_flops_ratio"):
        gated.calibrate(x, 0.0)


def _distil(tmp_path, stop=None, resume=False) -> GatedModel:
    from gating.data import build_loaders
    from gating.distill import TrainConfig, Trainer

    train, test, classes = build_loaders("synthetic", batch_size=32, num_train=96, num_test=32, image_size=16)
    torch.manual_seed(1)
    teacher = resnet20(num_classes=classes, width=4)
    student = GatedModel(copy.deepcopy(teacher), GateConfig(gate_group=4, target_flops_ratio=0.5))
    config = TrainConfig(epochs=2, lr=0.05, progress=False)
    trainer = Trainer(student, train, test, config, teacher=teacher, checkpoint_path=tmp_path / "student.ckpt")
    trainer.fit(resume=resume, stop_after_steps=stop)
    return student


def test_gated_student_resume_equals_uninterrupted(tmp_path):
    whole = _distil(tmp_path / "whole")
    _distil(tmp_path / "split", stop=4)
    resumed = _distil(tmp_path / "split", resume=True)
    expected = whole.state_dict()
    for key, value in resumed.state_dict().items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, expected[key]), key


def test_wrapping_leaves_the_model_untouched_unless_inplace():
    original = resnet20(width=4)
    before = {k: v.clone() for k, v in original.state_dict().items()}
    conv = original.layer1[0].conv1
    gated = GatedModel(original, GateConfig(gate_group=4))
    assert original.layer1[0].conv1 is conv and type(conv) is nn.Conv2d  # nothing swapped in the original
    assert isinstance(gated.model.layer1[0].conv1, ChannelGatedConv2d)
    assert gated.model is not original
    with torch.no_grad():
        gated.model.bn1.weight.add_(1.0)  # training the student does not move the original
    assert all(torch.equal(v, before[k]) for k, v in original.state_dict().items())

    shared = GatedModel(original, GateConfig(gate_group=4), inplace=True)
    assert shared.model is original and isinstance(original.layer1[0].conv1, ChannelGatedConv2d)
    assert shared.model.bn1 is original.bn1
    with pytest.raises(TypeError, match="inplace must be a bool"):
        GatedModel(resnet20(width=4), inplace="yes")


def test_gate_config_types_and_values():
    with pytest.raises(TypeError, match="GateConfig.gate_group must be an int, got True"):
        GateConfig(gate_group=True)
    with pytest.raises(TypeError, match="GateConfig.gate_group must be an int"):
        GateConfig(gate_group=2.0)
    with pytest.raises(ValueError, match="GateConfig.gate_group must be a positive int"):
        GateConfig(gate_group=0)


@pytest.mark.parametrize("kind", ["partial_sum", "runtime"])
def test_a_deep_copy_records_its_own_calls(kind):
    torch.manual_seed(0)
    model = GatedModel(resnet20(width=8), GateConfig(kind=kind, channel_group=4) if kind == "runtime"
                       else GateConfig()).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        model(x)
    calls = len(model._recorder.calls)
    copied = copy.deepcopy(model)
    if kind == "runtime":
        copied.set_keep_ratio(0.25)
    with torch.no_grad(), (contextlib.nullcontext() if kind == "runtime" else copied.open_gates()):
        copied(x)
    # The copy's hooks feed the copy's recorder; the original's calls are untouched.
    assert len(model._recorder.calls) == calls
    assert len(copied._recorder.calls) == calls
    copied_modules = set(map(id, copied.modules()))
    assert all(id(call.module) in copied_modules for call in copied._recorder.calls)
    assert copied.report().macs_executed != model.report().macs_executed
