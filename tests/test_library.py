"""The registered ops ``gating::conv2d`` and ``gating::gated_conv2d`` (``kernels.library``).

* ``torch.library.opcheck`` (schema, aliasing, fake vs real, AOT dispatch) over
  a few shapes and dtypes, on CPU (reference) and on CUDA (Triton) when present;
* ``torch.compile(fullgraph=True)`` of a folded inference layer without graph
  breaks, and ``torch.export`` holding each op as one node;
* the FLOP formulas against ``torch.utils.flop_counter``'s conv rule and
  ``gating.accounting``;
* the fake implementations raise what the real ops raise;
* the wrappers' conventions (given decisions returned as is, stats).
"""

from __future__ import annotations

import contextlib
import types
import warnings

import pytest
import torch
import torch._dynamo
import torch.nn.functional as F
from torch import nn
from torch._dynamo.testing import CompileCounterWithBackend
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode

import kernels
from _helpers import OP_DEVICES, rand
from gating import ChannelGatedConv2d
from gating.accounting import conv_macs, gated_count
from gating.ops import GatedConvInference
from kernels._common import device_guard

CONV_GEOMETRIES = [
    {"x": (2, 4, 6, 6), "w": (8, 4, 3, 3), "stride": [1, 1], "padding": [1, 1], "dilation": [1, 1]},
    {"x": (1, 5, 7, 6), "w": (20, 5, 1, 3), "stride": [2, 1], "padding": [0, 2], "dilation": [1, 2]},
]


def _dtypes(device: str) -> list[torch.dtype]:
    """Two dtypes per device: float32 everywhere, float64 on CPU (reference), bfloat16 on CUDA (Triton)."""
    return [torch.float32, torch.float64 if device == "cpu" else torch.bfloat16]


def conv_op_args(geometry: dict, dtype: torch.dtype, device: str, epilogue: bool, seed: int = 0) -> tuple:
    """Positional arguments of ``gating::conv2d`` (weight given as a packed view when ``epilogue``)."""
    gen = torch.Generator().manual_seed(seed)
    x = rand(geometry["x"], dtype, gen).to(device)
    w = rand(geometry["w"], dtype, gen, std=0.3).to(device)
    if epilogue:
        w = kernels.pack_weight(w).unpack()
    conv = (geometry["stride"], geometry["padding"], geometry["dilation"])
    out_hw = [kernels.conv_output_size(*dims) for dims in zip(geometry["x"][2:], geometry["w"][2:], *conv)]
    c_out = geometry["w"][0]
    scale = rand((c_out,), torch.float32, gen).to(device) if epilogue else None
    shift = rand((c_out,), torch.float32, gen).to(device) if epilogue else None
    residual = rand((geometry["x"][0], c_out, *out_hw), dtype, gen).to(device) if epilogue else None
    return (x, w, geometry["stride"], geometry["padding"], geometry["dilation"], scale, shift, residual, epilogue)


def gated_op_args(
    geometry: dict, dtype: torch.dtype, device: str, layout: str, gate_group: int, given: bool, count: bool,
    gate_block: int = 1,
) -> tuple:  # fmt: skip
    """Positional arguments of ``gating::gated_conv2d`` (decisions given when ``given``)."""
    x, w, stride, padding, dilation, scale, shift, residual, relu = conv_op_args(geometry, dtype, device, given)
    gen = torch.Generator().manual_seed(1)
    c_out = w.shape[0]
    gate_scale = (rand((c_out,), torch.float32, gen).abs() + 0.5).to(device)
    gate_shift = rand((c_out,), torch.float32, gen).to(device)
    decisions = None
    if given:
        shape = (x.shape[0], kernels.gate_group_count(c_out, gate_group), *residual.shape[2:])
        decisions = (torch.rand(shape, generator=gen) > 0.5).to(device)
    return (
        x, w, gate_scale, gate_shift, 0.5, layout, gate_group, gate_block, stride, padding, dilation,
        scale, shift, residual, relu, decisions, count,
    )  # fmt: skip


# ------------------------------------------------------------------ opcheck
@pytest.mark.parametrize("device", OP_DEVICES)
@pytest.mark.parametrize("geometry", range(len(CONV_GEOMETRIES)))
def test_opcheck_conv2d(device: str, geometry: int) -> None:
    for dtype in _dtypes(device):
        for epilogue in (False, True):
            args = conv_op_args(CONV_GEOMETRIES[geometry], dtype, device, epilogue)
            torch.library.opcheck(kernels.conv2d_op, args)


@pytest.mark.parametrize("device", OP_DEVICES)
@pytest.mark.parametrize(
    "geometry, layout, gate_group, given, count, gate_block",
    [(0, "first", 4, False, True, 1), (0, "grouped", 8, True, True, 1), (1, "grouped", 3, False, False, 1),
     (1, "first", 16, True, False, 1), (0, "first", 8, False, True, 2), (1, "grouped", 4, False, False, 3)],
)  # fmt: skip
def test_opcheck_gated_conv2d(
    device: str, geometry: int, layout: str, gate_group: int, given: bool, count: bool, gate_block: int
) -> None:
    for dtype in _dtypes(device):
        args = gated_op_args(CONV_GEOMETRIES[geometry], dtype, device, layout, gate_group, given, count, gate_block)
        torch.library.opcheck(kernels.gated_conv2d_op, args)


def test_cuda_kernels_are_registered_exactly_when_triton_is_installed() -> None:
    for name in ("gating::conv2d", "gating::gated_conv2d"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(name, "CUDA") == kernels.TRITON_AVAILABLE


def test_launches_run_under_the_tensors_cuda_device() -> None:
    guard = device_guard(types.SimpleNamespace(device=torch.device("cuda", 1)))
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1
    assert isinstance(device_guard(torch.empty(1)), contextlib.nullcontext)


# ------------------------------------------------------------- compile, export
def folded_layer(gate_group: int = 8) -> tuple[GatedConvInference, ChannelGatedConv2d, nn.BatchNorm2d]:
    """An eval-mode gated conv + BN with running statistics, and its folded inference module."""
    torch.manual_seed(0)
    layer = ChannelGatedConv2d(12, 24, 3, padding=1, gate_group=gate_group, bias=True)
    bn = nn.BatchNorm2d(24)
    with torch.no_grad():
        layer.threshold.uniform_(-0.3, 0.3)
        for _ in range(2):
            bn(layer(torch.randn(4, 12, 9, 9)))
    layer.eval(), bn.eval()
    return GatedConvInference.from_gated(layer, bn, relu=True), layer, bn


def test_compile_fullgraph_of_a_folded_layer_has_no_graph_break() -> None:
    fused, _, _ = folded_layer()
    x = torch.randn(2, 12, 9, 9)
    explanation = torch._dynamo.explain(fused)(x)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1
    counter = CompileCounterWithBackend("aot_eager")  # AOT tracing runs the fake implementation
    compiled = torch.compile(fused, backend=counter, fullgraph=True)
    out = compiled(x)
    decisions = fused.last_decisions
    assert counter.frame_count == 1
    assert torch.equal(out, fused(x)) and torch.equal(decisions, fused.last_decisions)


class _DenseThenGated(nn.Module):
    def __init__(self, fused: GatedConvInference) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(12, 3, 3, 3), requires_grad=False)
        self.fused = fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fused(kernels.conv2d(x, self.weight, padding=1, relu=True))


def test_export_holds_each_op_as_one_node() -> None:
    fused, _, _ = folded_layer()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*last_decisions was assigned during export")
        program = torch.export.export(_DenseThenGated(fused), (torch.randn(2, 3, 9, 9),))
    targets = [node.target for node in program.graph.nodes if node.op == "call_function"]
    assert targets.count(torch.ops.gating.conv2d.default) == 1
    assert targets.count(torch.ops.gating.gated_conv2d.default) == 1
    assert not any(getattr(t, "namespace", None) == "aten" and "convolution" in str(t) for t in targets)


# -------------------------------------------------------------- FLOP formulas
def total_flops(fn, *args, **kwargs) -> int:
    with FlopCounterMode(display=False) as counter:
        fn(*args, **kwargs)
    return counter.get_total_flops()


@pytest.mark.parametrize("geometry", range(len(CONV_GEOMETRIES)))
def test_dense_flops_are_pytorchs_conv_rule(geometry: int) -> None:
    x, w, stride, padding, dilation, *_ = conv_op_args(CONV_GEOMETRIES[geometry], torch.float32, "cpu", False)
    ours = total_flops(kernels.conv2d, x, w, stride=stride, padding=padding, dilation=dilation)
    assert ours == total_flops(F.conv2d, x, w, None, stride, padding, dilation)
    conv = nn.Conv2d(w.shape[1], w.shape[0], tuple(w.shape[2:]), stride, padding, dilation)
    out = kernels.conv2d(x, w, stride=stride, padding=padding, dilation=dilation)
    assert ours == 2 * conv_macs(conv, x.shape, out.shape)


@pytest.mark.parametrize("gate_group", [1, 8, 24])
def test_gated_flops_equal_accounting_of_the_same_decisions(gate_group: int) -> None:
    fused, layer, _ = folded_layer(gate_group)
    x = torch.randn(2, 12, 9, 9)
    with torch.no_grad():
        flops = total_flops(fused, x)
        out = fused(x)
    decisions = fused.last_decisions
    count = gated_count("layer", layer, x.shape, out.shape, out.element_size(), decisions)
    assert 0 < count.density < 1
    assert flops == 2 * count.macs_executed
    folded = fused.folded
    args = (x, folded.weight, folded.gate_scale, folded.gate_shift)
    # Given decisions: the op computes no gate statistic, so the gate term is not counted.
    given = total_flops(kernels.gated_conv2d, *args, **folded.kernel_kwargs(), decisions=decisions)
    assert given == 2 * (count.macs_executed - count.gate_macs)
    # The reference's counters are the same exact count, in (pixel, gate group) units.
    _, _, stats = kernels.gated_conv2d(*args, **folded.kernel_kwargs(), return_stats=True)
    work = stats.to_dict()
    assert work["base_macs"] + work["conditional_macs"] + count.gate_macs == count.macs_executed
    assert work["tiles_conditional_executed"] == count.decisions_on and work["tiles_total"] == count.decisions_total
    assert (work["block_m"], work["block_n"], work["block_k"]) == (1, min(gate_group, 24), 1)


def test_gated_flops_of_fake_outputs_are_the_all_on_upper_bound() -> None:
    fused, layer, _ = folded_layer()
    x = torch.randn(2, 12, 9, 9)
    base, conditional, gate = kernels.gated_mac_terms((2, 24, 9, 9), 12, (3, 3), 0.25, "first", 8)
    with FakeTensorMode(allow_non_fake_inputs=True):
        flops = total_flops(fused, torch.empty(2, 12, 9, 9))
    assert flops == 2 * (base + conditional + gate)
    with torch.no_grad():
        fused(x)
    assert total_flops(fused, x) < flops


# ---------------------------------------------------------------- fake = real
FAKE_BAD_CASES = {
    "c_in": lambda a: a.__setitem__(1, torch.randn(8, 5, 3, 3)),
    "residual-shape": lambda a: a.__setitem__(13, torch.randn(2, 8, 5, 5)),
    "gate_scale-shape": lambda a: a.__setitem__(2, torch.ones(7)),
    "decisions-shape": lambda a: a.__setitem__(15, torch.zeros(2, 3, 6, 6, dtype=torch.bool)),
    "decisions-dtype": lambda a: a.__setitem__(15, torch.zeros(2, 2, 6, 6)),
    "x-int": lambda a: a.__setitem__(0, torch.ones(2, 4, 6, 6, dtype=torch.int32)),
    "gate_group": lambda a: a.__setitem__(6, 0),
    "gate_block": lambda a: a.__setitem__(7, 0),
    "base_layout": lambda a: a.__setitem__(5, "diagonal"),
}


def _error_of(call) -> tuple[type, str]:
    with pytest.raises(Exception) as caught:
        call()
    return caught.type, str(caught.value)


@pytest.mark.parametrize("case", FAKE_BAD_CASES)
def test_fake_raises_what_the_real_op_raises(case: str) -> None:
    args = list(gated_op_args(CONV_GEOMETRIES[0], torch.float32, "cpu", "first", 4, True, False))
    args[13] = torch.randn(2, 8, 6, 6)
    FAKE_BAD_CASES[case](args)
    real = _error_of(lambda: torch.ops.gating.gated_conv2d(*args))
    with FakeTensorMode() as mode:
        fake_args = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
        fake = _error_of(lambda: torch.ops.gating.gated_conv2d(*fake_args))
    assert fake == real and real[0] in (TypeError, ValueError)


def test_dense_fake_raises_what_the_real_op_raises() -> None:
    x, w = torch.randn(2, 4, 6, 6), torch.randn(8, 3, 3, 3)
    real = _error_of(lambda: torch.ops.gating.conv2d(x, w, [1, 1], [0, 0], [1, 1], None, None, None, False))
    meta = _error_of(
        lambda: torch.ops.gating.conv2d(x.to("meta"), w.to("meta"), [1, 1], [0, 0], [1, 1], None, None, None, False)
    )
    assert real == meta == (ValueError, "weight has C_in=3 but x has 4 channels")


# ------------------------------------------------------------------ wrappers
def test_wrapper_returns_given_decisions_as_is_and_the_op_a_fresh_copy() -> None:
    args = gated_op_args(CONV_GEOMETRIES[0], torch.float32, "cpu", "first", 4, True, True)
    x, w, gate_scale, gate_shift, fraction, layout, group, block, stride, padding, dilation = args[:11]
    given = args[15]
    conv = {"stride": stride, "padding": padding, "dilation": dilation}
    _, returned = kernels.gated_conv2d(
        x, w, gate_scale, gate_shift, base_fraction=fraction, base_layout=layout, gate_group=group, decisions=given,
        **conv,
    )  # fmt: skip
    assert returned is given
    _, fresh, counters = torch.ops.gating.gated_conv2d(*args)
    assert fresh is not given and torch.equal(fresh, given) and fresh.is_contiguous(memory_format=torch.channels_last)
    assert counters.dtype == torch.int64 and counters.shape == (len(kernels.COUNTER_FIELDS),)


def test_wrappers_accept_packed_weights_and_int_geometry() -> None:
    x, w = torch.randn(2, 4, 7, 7), torch.randn(8, 4, 3, 3)
    packed = kernels.pack_weight(w)
    expected = kernels.conv2d(x, w, stride=(2, 2), padding=[1, 1])
    assert torch.equal(kernels.conv2d(x, packed, stride=2, padding=1), expected)
    gate = (torch.ones(8), torch.zeros(8))
    out, decisions, stats = kernels.gated_conv2d(x, packed, *gate, gate_group=4, return_stats=True)
    assert out.shape == (2, 8, 5, 5) and decisions.shape == (2, 2, 5, 5)
    assert isinstance(stats, kernels.GatedConvStats) and int(stats.tiles_total) == 2 * 2 * 5 * 5
