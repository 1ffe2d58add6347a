"""``kernels.GateSpec``: the one definition of ``base_fraction``, ``base_layout``, ``gate_group`` and ``gate_block``.

Validation (``docs/design.md#exception-policy``: ``TypeError`` for a wrong
type, ``ValueError`` for a wrong value, the message naming the field), and
that every holder of the settings (``GateConfig``, ``ChannelGatedConv2d``,
``GatedModel``, the folded inference form) reads or passes the same spec.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from gating import ChannelGatedConv2d, GateConfig, GatedModel
from gating.ops import GatedConvInference, fold_gated_conv
from kernels import GateSpec

BAD_SETTINGS = {
    "fraction-zero": ({"base_fraction": 0.0}, ValueError, "base_fraction"),
    "fraction-above-one": ({"base_fraction": 1.5}, ValueError, "base_fraction"),
    "fraction-str": ({"base_fraction": "1/4"}, TypeError, "base_fraction"),
    "fraction-bool": ({"base_fraction": True}, TypeError, "base_fraction"),
    "layout-unknown": ({"base_layout": "diagonal"}, ValueError, "base_layout"),
    "layout-not-str": ({"base_layout": 1}, TypeError, "base_layout"),
    "grouped-not-1/p": ({"base_layout": "grouped", "base_fraction": 0.3}, ValueError, "base_fraction"),
    "group-zero": ({"gate_group": 0}, ValueError, "gate_group"),
    "group-bool": ({"gate_group": True}, TypeError, "gate_group"),
    "group-float": ({"gate_group": 2.0}, TypeError, "gate_group"),
    "group-str": ({"gate_group": "4"}, TypeError, "gate_group"),
    "block-zero": ({"gate_block": 0}, ValueError, "gate_block"),
    "block-negative": ({"gate_block": -2}, ValueError, "gate_block"),
    "block-bool": ({"gate_block": True}, TypeError, "gate_block"),
    "block-float": ({"gate_block": 2.0}, TypeError, "gate_block"),
}


@pytest.mark.parametrize("name", list(BAD_SETTINGS))
def test_bad_settings_raise_the_policy_type_naming_the_field(name: str) -> None:
    settings, error, field = BAD_SETTINGS[name]
    with pytest.raises(error, match=f"GateSpec.{field}"):
        GateSpec(**settings)
    with pytest.raises(error, match=f"GateConfig.{field}"):
        GateConfig(**settings)
    with pytest.raises(error, match=f"ChannelGatedConv2d.{field}"):
        ChannelGatedConv2d(8, 16, 3, **settings)


def test_defaults_dict_and_immutability() -> None:
    spec = GateSpec()
    # gate_group 32: the default the gate-granularity study chose (docs/design.md#gate-granularity)
    assert spec.to_dict() == {"base_fraction": 0.25, "base_layout": "first", "gate_group": 32, "gate_block": 1}
    assert GateSpec.names() == tuple(spec.to_dict())
    assert GateSpec(**spec.to_dict()) == spec and hash(GateSpec(0.25)) == hash(spec)
    one = GateSpec(1, "grouped", 1)
    assert isinstance(one.base_fraction, float) and one == GateSpec(1.0, "grouped", 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.gate_group = 8


def test_of_names_the_owner_and_keeps_defaults() -> None:
    assert GateSpec.of("Owner", gate_group=4) == GateSpec(gate_group=4)
    with pytest.raises(ValueError, match="Owner.gate_group must be a positive int, got 0"):
        GateSpec.of("Owner", gate_group=0)
    with pytest.raises(TypeError, match="unknown gate settings"):
        GateSpec.of("Owner", group=4)


def test_check_names_the_layer_sizes() -> None:
    GateSpec(0.25, "grouped").check(out_channels=8, in_channels=4)
    GateSpec(0.25, "first").check(out_channels=2, in_channels=2)
    with pytest.raises(ValueError, match="in_channels=2, out_channels=8"):
        GateSpec(0.25, "grouped").check(out_channels=8, in_channels=2)


def test_gate_config_spec() -> None:
    config = GateConfig(base_fraction=0.5, base_layout="grouped", gate_group=4, alpha=3.0)
    assert config.spec == GateSpec(0.5, "grouped", 4)
    assert GateConfig().spec == GateSpec()


def _layer_pair(spec: GateSpec) -> tuple[ChannelGatedConv2d, ChannelGatedConv2d]:
    torch.manual_seed(0)
    by_keywords = ChannelGatedConv2d(8, 16, 3, padding=1, bias=True, **spec.to_dict())
    torch.manual_seed(0)
    by_spec = ChannelGatedConv2d(8, 16, 3, padding=1, bias=True, spec=spec)
    return by_keywords, by_spec


@pytest.mark.parametrize(
    "spec", [GateSpec(0.5, "grouped", 4), GateSpec(0.25, "first", 3), GateSpec(0.25, "first", 8, 2)], ids=str
)
def test_layer_from_spec_behaves_as_from_keywords(spec: GateSpec) -> None:
    by_keywords, by_spec = _layer_pair(spec)
    assert by_keywords.spec == by_spec.spec == spec
    settings = (by_spec.base_fraction, by_spec.base_layout, by_spec.gate_group, by_spec.gate_block)
    assert settings == tuple(spec.to_dict().values())
    x = torch.randn(2, 8, 7, 7, generator=torch.Generator().manual_seed(1))
    for train in (True, False):
        by_keywords.train(train)
        by_spec.train(train)
        assert torch.equal(by_keywords(x), by_spec(x))
        assert torch.equal(by_keywords.last_decisions, by_spec.last_decisions)
    assert repr(by_keywords) == repr(by_spec) and str(spec) in repr(by_spec)


def test_layer_settings_are_read_only() -> None:
    layer = ChannelGatedConv2d(8, 16, 3, spec=GateSpec(gate_group=8))
    with pytest.raises(AttributeError):
        layer.gate_group = 4
    assert layer.gate_group == 8 and layer.num_groups == 2


def test_spec_and_keywords_conflict() -> None:
    with pytest.raises(ValueError, match="either as spec= or one by one, not both"):
        ChannelGatedConv2d(8, 16, 3, spec=GateSpec(gate_group=8), gate_group=8)
    with pytest.raises(ValueError, match="base_layout='first'"):
        ChannelGatedConv2d.from_conv(nn.Conv2d(8, 16, 3), spec=GateSpec(), base_layout="first")
    with pytest.raises(TypeError, match="spec must be a kernels.GateSpec"):
        ChannelGatedConv2d(8, 16, 3, spec={"gate_group": 8})
    with pytest.raises(ValueError, match="in_channels=2"):
        ChannelGatedConv2d(2, 16, 3, spec=GateSpec(base_layout="grouped"))


def test_model_fold_and_inference_carry_the_spec() -> None:
    config = GateConfig(base_fraction=0.5, base_layout="grouped", gate_group=4, gate_block=2)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1))
    (layer,) = GatedModel(net, config).gated_layers().values()
    assert layer.spec == config.spec
    folded = fold_gated_conv(layer.eval())
    assert folded.spec == layer.spec
    assert {k: folded.kernel_kwargs()[k] for k in GateSpec.names()} == layer.spec.to_dict()
    inference = GatedConvInference(folded)
    assert inference.spec == layer.spec and inference.folded.spec == layer.spec
    x = torch.randn(2, 8, 5, 5, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.allclose(inference(x), layer(x), atol=1e-5, rtol=1e-5)
