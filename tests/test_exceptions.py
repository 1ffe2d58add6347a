"""One exception policy at every entry point (``docs/design.md#exception-policy``).

The same bad input goes to the gate module (``ChannelGatedConv2d``: constructor
and forward), the public wrapper ``kernels.gated_conv2d``, the registered op
``gating::gated_conv2d`` (where the input passes its schema), and the reference
``kernels.gated_conv2d_reference``; each must raise the policy's type:

* ``TypeError``: wrong type or dtype;
* ``ValueError``: wrong shape, rank, channel count or value;
* ``NotImplementedError``: a valid configuration the project does not support.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import kernels
from gating import ChannelGatedConv2d
from gating.ops import fold_gated_conv

IN, OUT, K = 8, 16, 3


def valid_spec() -> dict[str, object]:
    """A valid layer and input: 8 -> 16 channels, 3x3, padding 1, gate groups of 8, on a [2, 8, 6, 6] input."""
    return {
        "x": torch.randn(2, IN, 6, 6),
        "kernel_size": K,
        "stride": 1,
        "padding": 1,
        "dilation": 1,
        "base_fraction": 0.25,
        "base_layout": "first",
        "gate_group": 8,
        "gate_block": 1,
        "groups": 1,
    }


@dataclass(frozen=True)
class Case:
    """A bad input (overrides of :func:`valid_spec`; callables are called) and the policy's exception type."""

    overrides: dict[str, object]
    error: type[Exception]
    # False where the registered op's schema itself refuses the value (the dispatcher's own error).
    through_schema: bool = True


CASES = {
    "x-not-a-tensor": Case({"x": [[1.0]]}, TypeError, through_schema=False),
    "x-integer": Case({"x": lambda: torch.ones(2, IN, 6, 6, dtype=torch.int64)}, TypeError),
    "x-dtype-mismatch": Case({"x": lambda: torch.randn(2, IN, 6, 6, dtype=torch.float64)}, TypeError),
    "x-rank": Case({"x": lambda: torch.randn(IN, 6, 6)}, ValueError),
    "x-channels": Case({"x": lambda: torch.randn(2, 5, 6, 6)}, ValueError),
    "x-too-small": Case({"x": lambda: torch.randn(2, IN, 2, 2), "padding": 0}, ValueError),
    "stride-zero": Case({"stride": 0}, ValueError),
    "stride-bool": Case({"stride": True}, TypeError, through_schema=False),
    "stride-float": Case({"stride": 1.5}, TypeError, through_schema=False),
    "stride-three-values": Case({"stride": (1, 1, 1)}, ValueError, through_schema=False),
    "padding-negative": Case({"padding": -1}, ValueError),
    "dilation-zero": Case({"dilation": (1, 0)}, ValueError),
    "base_layout-unknown": Case({"base_layout": "diagonal"}, ValueError),
    "base_layout-not-a-string": Case({"base_layout": 1}, TypeError, through_schema=False),
    "base_fraction-zero": Case({"base_fraction": 0.0}, ValueError),
    "base_fraction-not-a-number": Case({"base_fraction": "1/4"}, TypeError, through_schema=False),
    "grouped-fraction-not-1/p": Case({"base_layout": "grouped", "base_fraction": 0.3}, ValueError),
    "gate_group-zero": Case({"gate_group": 0}, ValueError),
    "gate_group-bool": Case({"gate_group": True}, TypeError, through_schema=False),
    "gate_group-float": Case({"gate_group": 2.5}, TypeError, through_schema=False),
    "gate_block-zero": Case({"gate_block": 0}, ValueError),
    "gate_block-bool": Case({"gate_block": True}, TypeError, through_schema=False),
    "gate_block-float": Case({"gate_block": 2.0}, TypeError, through_schema=False),
    "groups-2": Case({"groups": 2}, NotImplementedError, through_schema=False),
}


def bad_spec(case: Case) -> dict[str, object]:
    spec = valid_spec()
    spec.update({k: v() if callable(v) else v for k, v in case.overrides.items()})
    return spec


def run_module(spec: dict[str, object]) -> object:
    """Build the gate module from the spec and run it on ``spec["x"]``."""
    geometry = {k: spec[k] for k in ("stride", "padding", "dilation")}
    gate = {k: spec[k] for k in ("base_fraction", "base_layout", "gate_group", "gate_block")}
    if spec["groups"] != 1:
        conv = nn.Conv2d(IN, OUT, spec["kernel_size"], groups=spec["groups"], **geometry)
        layer = ChannelGatedConv2d.from_conv(conv, **gate)
    else:
        layer = ChannelGatedConv2d(IN, OUT, spec["kernel_size"], **geometry, **gate)
    return layer(spec["x"])


def _kernel_args(spec: dict[str, object]) -> tuple[tuple, dict[str, object]]:
    weight = torch.randn(OUT, IN, spec["kernel_size"], spec["kernel_size"])
    args = (spec["x"], weight, torch.ones(OUT), torch.zeros(OUT))
    keys = ("stride", "padding", "dilation", "base_fraction", "base_layout", "gate_group", "gate_block", "groups")
    return args, {k: spec[k] for k in keys}


def run_wrapper(spec: dict[str, object]) -> object:
    args, kwargs = _kernel_args(spec)
    return kernels.gated_conv2d(*args, **kwargs)


def run_reference(spec: dict[str, object]) -> object:
    args, kwargs = _kernel_args(spec)
    return kernels.gated_conv2d_reference(*args, **kwargs)


def _as_list(value: object) -> list:
    return [value, value] if isinstance(value, int) else list(value)


def run_op(spec: dict[str, object]) -> object:
    """The registered op called directly, with the spec's values passed through its schema."""
    (x, weight, gate_scale, gate_shift), kw = _kernel_args(spec)
    geometry = [_as_list(kw[k]) for k in ("stride", "padding", "dilation")]
    return torch.ops.gating.gated_conv2d(
        x, weight, gate_scale, gate_shift, kw["base_fraction"], kw["base_layout"], kw["gate_group"],
        kw["gate_block"], *geometry, None, None, None, False, None, False,
    )  # fmt: skip


ENTRY_POINTS: dict[str, Callable[[dict[str, object]], object]] = {
    "module": run_module,
    "wrapper": run_wrapper,
    "op": run_op,
    "reference": run_reference,
}


# The raw op is fed only the cases its schema can express: a bool, float or 3-tuple where the schema
# declares int[2], a non-tensor x or a ``groups`` argument (the op has none) are Python-level values that
# the wrapper checks before it calls the op; the schema coerces or refuses them on its own terms.
ENTRY_CASES = [
    (entry, name) for name, case in CASES.items() for entry in ENTRY_POINTS if entry != "op" or case.through_schema
]


@pytest.mark.parametrize(("entry", "name"), ENTRY_CASES)
def test_same_bad_input_same_exception_type(entry: str, name: str) -> None:
    case = CASES[name]
    spec = bad_spec(case)
    with pytest.raises(Exception) as caught:
        ENTRY_POINTS[entry](spec)
    assert caught.type is case.error, f"{entry} raised {caught.type.__name__}: {caught.value}"


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_the_valid_spec_runs_everywhere(entry: str) -> None:
    ENTRY_POINTS[entry](valid_spec())


def test_batchnorm_without_running_statistics_is_a_value_error_everywhere() -> None:
    layer = ChannelGatedConv2d(IN, OUT, K, padding=1, gate_group=8).eval()
    with pytest.raises(ValueError, match="no running statistics"):
        fold_gated_conv(layer, nn.BatchNorm2d(OUT, track_running_stats=False))
    layer.gate_bn = nn.BatchNorm2d(OUT, affine=False, track_running_stats=False)
    with pytest.raises(ValueError, match="no running statistics"):
        layer.folded_gate()
    with pytest.raises(ValueError, match="no running statistics"):
        fold_gated_conv(layer)


def test_messages_name_the_argument_or_the_layer() -> None:
    layer = ChannelGatedConv2d(IN, OUT, K, padding=1)
    layer.layer_name = "block.conv1"
    with pytest.raises(ValueError, match=r"block\.conv1.*too small"):
        layer(torch.randn(1, IN, 0, 6))
    for entry in ("wrapper", "reference", "op"):
        with pytest.raises(ValueError, match="stride must be >= 1"):
            ENTRY_POINTS[entry](bad_spec(CASES["stride-zero"]))
    with pytest.raises(ValueError, match="stride must be >= 1"):
        run_module(bad_spec(CASES["stride-zero"]))
