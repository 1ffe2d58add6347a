"""Benchmarks of the gated conv: exact counts everywhere, timings on CUDA.

Collected by ``python -m pytest`` from the repository root (``bench_*.py``).

**Counting** (any machine, CPU included; no conv is run): for every 3x3 and
1x1 shape of ResNet-18 and ResNet-50 at 224x224 (:mod:`benchmarks.shapes`),
batches 1, 8, 64 and densities 0.1, 0.25, 0.5, 1.0, the decisions are a blob
mask at output resolution (:mod:`benchmarks.masks`) and
``gating.accounting.gated_count`` gives dense and executed MACs and bytes with
bfloat16 (2-byte) elements. Asserted: executed MACs and bytes fall strictly as
the density falls; at density 1.0 the executed MACs are the dense MACs plus the
gate's; the ideal speedup ``macs_dense / macs_executed`` at density 0.1 is
above 2. Also here: the shapes add up to the network's convolution FLOPs, the
masks have the density and coherence they claim, the beacon inputs make the
reference gate decide exactly the mask. The sweep, summary, rate, command and
check-tolerance logic is tested in :mod:`benchmarks.bench_report`.

**Timing** (skipped without CUDA, because timing is GPU-only by design): for a
few dominant ResNet-50 shapes at batch 64, cuDNN dense (``F.conv2d``,
channels_last bfloat16), Triton dense (``kernels.conv2d``) and Triton gated
(``kernels.gated_conv2d``, densities 0.1, 0.5, 1.0). Each output is first
checked against the float64 reference on fresh inputs, within twice the error
PyTorch makes on the same math in bfloat16 (:mod:`benchmarks.checks`); then
``triton.testing.do_bench`` (CUDA events, L2 flushed, median and 20/80 %
quantiles) is stored in ``benchmark.extra_info`` (``do_bench_median_ms``
etc.), which is the device time to quote, with the achieved rates at each
quantile (``tflops``/``gbps``, see :mod:`benchmarks.report`), and ``benchmark.pedantic`` times one
synchronised call on the host clock (launch overhead included) for
pytest-benchmark's table. Run them with::

    python -m pytest benchmarks -k time --benchmark-enable --benchmark-json=/tmp/bench.json

The full sweep and the JSON committed under ``benchmarks/results/`` come from
``python -m benchmarks.run_gpu``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.cases import make_case
from benchmarks.checks import check_dense, check_gated
from benchmarks.counting import count_case, count_fields, count_records, dense_fields, network_totals
from benchmarks.masks import beacon_case, blob_mask, group_decisions
from benchmarks.report import dense_rates, gated_rates
from benchmarks.shapes import ConvShape, find_shape, gated_module, model_shapes, select_shapes, torchvision_model
from benchmarks.sweep import Sweep
from benchmarks.timing import time_ms
from gating.accounting import dense_count
from kernels import base_mask, gate_group_count, gated_kernel_counters
from kernels.reference import gated_conv2d_reference

SWEEP = Sweep()
CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="timing needs CUDA")


# ------------------------------------------------------------------ counting
@pytest.fixture(scope="module")
def counts() -> dict[tuple[str, int], dict[float, dict]]:
    """Count records of the whole counting sweep, by (shape, batch) and then density."""
    by_case: dict[tuple[str, int], dict[float, dict]] = defaultdict(dict)
    for rec in count_records(SWEEP, [s for m in SWEEP.models for s in model_shapes(m)]):
        by_case[rec["shape"], rec["batch"]][rec["target_density"]] = rec
    return by_case


def test_count_sweep_covers_every_case(counts: dict) -> None:
    shapes = sum(len(model_shapes(m)) for m in ("r18", "r50"))
    assert len(counts) == shapes * 3
    assert all(sorted(per_density) == [0.1, 0.25, 0.5, 1.0] for per_density in counts.values())


def test_executed_macs_and_bytes_fall_strictly_with_density(counts: dict) -> None:
    bad = []
    for (shape, batch), per_density in counts.items():
        recs = [per_density[d] for d in sorted(per_density, reverse=True)]
        for field in ("macs_executed", "bytes_executed"):
            values = [rec[field] for rec in recs]
            if not all(a > b for a, b in zip(values, values[1:])):
                bad.append(f"{shape} b{batch} {field}: {values}")
    assert not bad, "\n".join(bad)


def test_full_density_executes_dense_plus_gate(counts: dict) -> None:
    for per_density in counts.values():
        rec = per_density[1.0]
        assert rec["measured_density"] == 1.0
        assert rec["gate_macs"] > 0
        assert rec["macs_executed"] == rec["macs_dense"] + rec["gate_macs"]


def test_ideal_speedup_at_density_0_1_exceeds_2(counts: dict) -> None:
    speedups = {case: per_density[0.1]["ideal_speedup"] for case, per_density in counts.items()}
    assert min(speedups.values()) > 2, min(speedups.items(), key=lambda kv: kv[1])


def test_measured_density_is_target_up_to_one_pixel(counts: dict) -> None:
    for (name, _), per_density in counts.items():
        shape = find_shape(name)
        for target, rec in per_density.items():
            assert abs(rec["measured_density"] - target) <= 0.5 / (shape.out_height * shape.out_width) + 1e-12


def test_network_totals_weight_shapes_by_layer_count() -> None:
    records = [
        {"model": "r18", "mask_source": "blob", "batch": 1, "target_density": 0.5, "layers": layers,
         "macs_dense": 10, "macs_executed": 5, "bytes_dense": 8, "bytes_executed": 6, "conditional_macs": 4,
         "kernel_conditional_macs": kernel, "kernel_overhead": kernel / 4, "tiled_kernel_conditional_macs": 12}
        for layers, kernel in ((1, 8), (3, 5))
    ]  # fmt: skip
    (total,) = network_totals(records)
    fields = ("macs_dense", "macs_executed", "bytes_dense", "bytes_executed", "conditional_macs")
    assert [total[f] for f in fields] == [40, 20, 32, 24, 16]
    assert total["ideal_speedup"] == 2.0 and total["kernel_overhead"] == (8 + 3 * 5) / 16
    assert total["tiled_kernel_overhead"] == 3.0 and total["worst_layer_kernel_overhead"] == 2.0
    real = [{**records[0], "mask_source": "real", "target_density": None}]
    assert [t["mask_source"] for t in network_totals(records + real)] == ["blob", "real"]


# -------------------------------------------------------------------- shapes
@pytest.mark.parametrize("model, distinct, layers", [("r18", 10, 19), ("r50", 22, 52)])
def test_shapes_add_up_to_the_network_conv_flops(model: str, distinct: int, layers: int) -> None:
    shapes = model_shapes(model)
    assert len(shapes) == distinct and sum(s.count for s in shapes) == layers
    net = torchvision_model(model)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.empty(1, 3, 224, 224, device="meta"))
    conv_macs = counter.get_flop_counts()["Global"][torch.ops.aten.convolution] // 2
    stem = dense_count("conv1", net.conv1, torch.Size((1, 3, 224, 224)), torch.Size((1, 64, 112, 112)), 2)
    counted = sum(
        s.count * dense_count(s.name, gated_module(s, SWEEP.spec), s.input_shape(1), s.output_shape(1), 2).macs_dense
        for s in shapes
    )
    assert counted + stem.macs_dense == conv_macs


def test_shape_of_a_strided_bottleneck_conv() -> None:
    shape = find_shape("r50.layer2.0.conv2")
    assert shape.name == "r50.layer2.0.conv2" and shape.count == 1
    assert (shape.in_channels, shape.out_channels, shape.kernel, shape.stride, shape.padding) == (128, 128, 3, 2, 1)
    assert (shape.height, shape.width, shape.out_height, shape.out_width) == (56, 56, 28, 28)
    assert find_shape("r50.layer3.4.conv2").name == "r50.layer3.1.conv2"
    assert all(s.kernel in (1, 3) and s.in_channels > 3 for m in ("r18", "r50") for s in model_shapes(m))


def test_quick_subset_keeps_the_repeated_shapes() -> None:
    quick = select_shapes(("r50",), quick=True)
    assert [s.name for s in quick] == [s.name for s in model_shapes("r50") if s.count >= 3]
    assert {s.out_height for s in quick} == {56, 28, 14, 7}


# --------------------------------------------------------------------- masks
@pytest.mark.parametrize("height, width", [(7, 7), (28, 28), (14, 20)])
def test_masks_have_the_target_pixel_count_and_nest(height: int, width: int) -> None:
    previous = None
    for density in (0.1, 0.25, 0.5, 1.0):
        mask = blob_mask(4, height, width, density, seed=7)
        assert mask.shape == (4, height, width) and mask.dtype == torch.bool
        assert mask.flatten(1).sum(dim=1).tolist() == [max(1, round(density * height * width))] * 4
        if previous is not None:
            assert not (previous & ~mask).any()
        previous = mask
    samples = blob_mask(4, height, width, 0.25, seed=7)
    assert not torch.equal(samples[0], samples[1])


def _boundary_rate(mask: torch.Tensor) -> float:
    """Fraction of horizontally or vertically adjacent pixel pairs that disagree."""
    rows = (mask[:, 1:] != mask[:, :-1]).float().mean()
    cols = (mask[:, :, 1:] != mask[:, :, :-1]).float().mean()
    return float(rows + cols) / 2


def test_masks_are_spatially_coherent() -> None:
    mask = blob_mask(16, 28, 28, 0.25, seed=3)
    shuffled = mask.flatten(1)[:, torch.randperm(28 * 28, generator=torch.Generator().manual_seed(0))]
    assert _boundary_rate(mask) < 0.25 * _boundary_rate(shuffled.view_as(mask))


BEACON_SHAPES = [
    ConvShape("t.3x3", ("t.3x3",), 32, 48, 3, 1, 1, 1, 9, 9),
    ConvShape("t.3x3s2", ("t.3x3s2",), 24, 40, 3, 2, 1, 1, 10, 11),
    ConvShape("t.1x1s2", ("t.1x1s2",), 64, 40, 1, 2, 0, 1, 11, 11),
    ConvShape("t.1x1", ("t.1x1",), 16, 64, 1, 1, 0, 1, 7, 6),
    ConvShape("t.3x3d2", ("t.3x3d2",), 16, 32, 3, 1, 2, 2, 8, 8),
]


@pytest.mark.parametrize("shape", BEACON_SHAPES, ids=lambda s: s.name)
@pytest.mark.parametrize(
    "layout, gate_group, dtype",
    [
        ("first", 16, torch.float32),
        ("grouped", 16, torch.bfloat16),
        ("first", 1, torch.bfloat16),
        ("grouped", 12, torch.float32),
    ],
    ids=["first-g16-fp32", "grouped-g16-bf16", "first-g1-bf16", "grouped-g12-fp32"],
)  # fmt: skip
def test_beacon_inputs_make_the_reference_gate_decide_the_mask(
    shape: ConvShape, layout: str, gate_group: int, dtype: torch.dtype
) -> None:
    groups = gate_group_count(shape.out_channels, gate_group)
    for seed, density in enumerate((0.1, 0.25, 0.5, 1.0)):
        mask = blob_mask(3, shape.out_height, shape.out_width, density, seed=seed)
        case = beacon_case(
            shape, mask, base_fraction=0.25, base_layout=layout, gate_group=gate_group, dtype=dtype, seed=seed
        )
        assert case.x.dtype == case.weight.dtype == dtype
        assert case.x.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(case.decisions, group_decisions(mask, groups))
        base = base_mask(shape.out_channels, shape.in_channels, 0.25, layout)[:, :, None, None]
        rest = (case.weight.double() * base).abs().sum(dim=(1, 2, 3)) - case.beacon
        assert case.x.abs().max() <= 1 and rest.max() < case.beacon / 2  # the promised margin
        _, decisions = gated_conv2d_reference(
            case.x, case.weight, case.gate_scale, case.gate_shift,
            base_fraction=0.25, base_layout=layout, gate_group=gate_group, **shape.conv_args(),
        )  # fmt: skip
        assert torch.equal(decisions, case.decisions), (density, decisions.float().mean())


def test_beacon_rejects_a_mask_of_the_wrong_size() -> None:
    shape = BEACON_SHAPES[0]
    with pytest.raises(ValueError, match="mask is 8x9"):
        beacon_case(shape, torch.ones(1, 8, 9, dtype=torch.bool), base_fraction=0.25, base_layout="first",
                    gate_group=16, dtype=torch.float32, seed=0)  # fmt: skip


# -------------------------------------------------------------------- timing
TIMED_LAYERS = ("r50.layer1.0.conv2", "r50.layer3.0.conv3", "r50.layer3.1.conv2")
TIMED_BATCH = 64
TIMED_DENSITIES = (0.1, 0.5, 1.0)


def _time(benchmark, fn: Callable[[], object], rates: Callable[[dict[str, float]], dict]) -> None:
    """``do_bench`` quantiles and the ``rates`` at them into ``extra_info``, then pytest-benchmark's host timing.

    pytest-benchmark times one synchronised call on the host clock.
    """

    def synchronised() -> None:
        fn()
        torch.cuda.synchronize()

    with torch.backends.cudnn.flags(enabled=True, benchmark=True, deterministic=False, allow_tf32=True):
        timing = time_ms(fn, SWEEP)
        benchmark.pedantic(synchronised, rounds=20, warmup_rounds=3)
    benchmark.extra_info.update({f"do_bench_{name}_ms": value for name, value in timing.items()})
    benchmark.extra_info.update(rates=rates(timing))
    assert math.isfinite(timing["median"]) and timing["median"] > 0


@needs_cuda
@pytest.mark.parametrize("layer", TIMED_LAYERS)
@pytest.mark.parametrize("impl", ["cudnn", "triton_dense"])
def test_time_dense(benchmark, layer: str, impl: str) -> None:
    shape = find_shape(layer)
    errors = check_dense(make_case(SWEEP, shape, TIMED_BATCH, 1.0, "check-dense"))
    assert errors[impl]["ok"], errors
    case = make_case(SWEEP, shape, TIMED_BATCH, 1.0, "time")
    counts = dense_fields(SWEEP, shape, TIMED_BATCH)
    judged = {key: errors[impl][key] for key in ("rel_l2", "pytorch_rel_error", "tolerance")}
    benchmark.extra_info.update(layer=layer, batch=TIMED_BATCH, **judged, **counts)
    _time(benchmark, getattr(case, impl), lambda t: dense_rates(t, counts["macs_dense"], counts["bytes_dense"]))


@needs_cuda
@pytest.mark.parametrize("layer", TIMED_LAYERS)
@pytest.mark.parametrize("density", TIMED_DENSITIES)
def test_time_triton_gated(benchmark, layer: str, density: float) -> None:
    shape = find_shape(layer)
    check = check_gated(make_case(SWEEP, shape, TIMED_BATCH, density, f"check-{density}"))
    assert check["ok"] and check["decisions_match_mask"], check
    case = make_case(SWEEP, shape, TIMED_BATCH, density, "time")
    _, decisions, stats = case.triton_gated(return_stats=True)
    assert torch.equal(decisions, case.inputs.decisions)
    kernel = stats.to_dict()
    predicted = gated_kernel_counters(decisions.cpu(), shape.in_channels, shape.out_channels,
                                      (shape.kernel, shape.kernel), **SWEEP.spec.to_dict())  # fmt: skip
    assert stats.counters.cpu().tolist() == predicted.tolist(), "the compiled kernel's counters differ from the rule"
    assert kernel["tiles_conditional_executed"] > 0
    if density == 1.0:  # every first-launch tile is all on: it runs its conditional work in place
        assert kernel["tiles_conditional_executed"] == kernel["tiles_total"]
    kernel_macs = kernel["base_macs"] + kernel["conditional_macs"]
    counts = count_fields(count_case(SWEEP, shape, TIMED_BATCH, decisions))
    benchmark.extra_info.update(
        layer=layer, batch=TIMED_BATCH, target_density=density, measured_density=counts["measured_density"],
        ideal_speedup=counts["ideal_speedup"], rel_l2=check["rel_l2"], tolerance=check["tolerance"],
        pytorch_rel_error=check["pytorch_rel_error"], kernel_stats=kernel,
        macs_executed=counts["macs_executed"], bytes_executed=counts["bytes_executed"], kernel_macs=kernel_macs,
    )  # fmt: skip
    _time(
        benchmark,
        case.triton_gated,
        lambda t: gated_rates(t, counts["macs_executed"], counts["bytes_executed"], kernel_macs),
    )
