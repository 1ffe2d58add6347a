"""CPU tests of the benchmark plumbing: sweep defaults, command line, records, rates, summary and checks.

Collected by ``python -m pytest`` from the repository root (``bench_*.py``).
No conv is timed: where a timed record is assembled, the GPU case and
``do_bench`` are replaced by stand-ins with hand-picked times, so the rates in
the record can be checked against hand-computed values. The correctness checks
run on real cases on CPU (their kernels are then the PyTorch references) and on
hand-made outputs with 1, 2 and 3 times PyTorch's own error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from benchmarks import run_gpu, timing
from benchmarks.cases import ConvCase, make_case
from benchmarks.checks import (
    TOLERANCE_FLOOR,
    check_dense,
    check_gated,
    dense_references,
    failures,
    gated_references,
    rel_errors,
)
from benchmarks.counting import case_mask
from benchmarks.masks import group_decisions
from benchmarks.recorded import RecordedLayer
from benchmarks.report import dense_rates, gated_rates, gbps, print_rates, recorded_summary, summarize, tflops
from benchmarks.roofline import DevicePeaks, roofline_ms
from benchmarks.shapes import ConvShape, gated_module
from benchmarks.sweep import QUICK_BATCHES, QUICK_MODELS, Sweep, Targets
from kernels import GateSpec

CUDA = torch.cuda.is_available()


# --------------------------------------------------------------------- rates
def test_rates_of_hand_values() -> None:
    assert tflops(10**9, 2.0) == pytest.approx(1.0)  # 2e9 FLOP in 2 ms = 1e12 FLOP/s
    assert tflops(3 * 10**12, 1000.0) == pytest.approx(6.0)  # 6e12 FLOP in 1 s
    assert gbps(3 * 10**6, 1.5) == pytest.approx(2.0)  # 3e6 B in 1.5 ms = 2e9 B/s
    assert gbps(10**9, 1000.0) == pytest.approx(1.0)


def test_rates_per_quantile() -> None:
    times = {"median": 2.0, "p20": 1.0, "p80": 4.0}
    dense = dense_rates(times, macs=5 * 10**9, nbytes=8 * 10**6)
    assert dense["tflops"] == pytest.approx({"median": 5.0, "p20": 10.0, "p80": 2.5})
    assert dense["gbps"] == pytest.approx({"median": 4.0, "p20": 8.0, "p80": 2.0})
    gated = gated_rates(times, macs_executed=10**9, bytes_executed=2 * 10**6, kernel_macs=3 * 10**9)
    assert gated["tflops_executed"] == pytest.approx({"median": 1.0, "p20": 2.0, "p80": 0.5})
    assert gated["tflops_kernel"] == pytest.approx({"median": 3.0, "p20": 6.0, "p80": 1.5})
    assert gated["gbps_executed"] == pytest.approx({"median": 1.0, "p20": 2.0, "p80": 0.5})


# ------------------------------------------------------- timed records on CPU
SMALL = ConvShape("t.3x3", ("t.3x3", "t.3x3b"), 32, 48, 3, 1, 1, 1, 9, 9)
TIMES = {"cudnn": 0.5, "triton_dense": 0.25, "triton_gated": 0.125}  # median ms of each stand-in


@dataclass
class _Stats:
    base_macs: int
    conditional_macs: int

    def to_dict(self) -> dict[str, int]:
        return {"base_macs": self.base_macs, "conditional_macs": self.conditional_macs}


@dataclass
class _Inputs:
    decisions: torch.Tensor


class _FakeCase:
    """Stands in for ``benchmarks.cases.ConvCase`` on CPU: no conv, the case's intended decisions."""

    def __init__(self, sweep: Sweep, shape: ConvShape, batch: int, density: float) -> None:
        groups = gated_module(shape, sweep.spec).num_groups
        self.inputs = _Inputs(group_decisions(case_mask(sweep, shape, batch, density), groups))

    def cudnn(self) -> str:
        return "cudnn"

    def triton_dense(self) -> str:
        return "triton_dense"

    def triton_gated(self, return_stats: bool = False) -> object:
        if return_stats:
            return None, self.inputs.decisions, _Stats(base_macs=7 * 10**6, conditional_macs=10**6)
        return "triton_gated"


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """``make_case`` and ``do_bench`` replaced: median, p20, p80 = t, t/2, 2t of :data:`TIMES`."""

    def make_case(sweep: Sweep, shape: ConvShape, batch: int, density: float, purpose: str) -> _FakeCase:
        return _FakeCase(sweep, shape, batch, density)

    def time_ms(fn, sweep: Sweep) -> dict[str, float]:
        ms = TIMES[fn()]
        return {"median": ms, "p20": ms / 2, "p80": ms * 2}

    monkeypatch.setattr(timing, "make_case", make_case)
    monkeypatch.setattr(timing, "time_ms", time_ms)


def test_timed_records_carry_rates_of_their_counts(fake_gpu: None) -> None:
    sweep = Sweep(batches=(2,))  # check_batch is 2: the checks need a GPU, so time batch 3
    dense = timing.measure_dense(sweep, SMALL, 3, 0.5)
    macs = 3 * 48 * 9 * 9 * 32 * 9  # N * C_out * OH * OW * C_in * k * k
    nbytes = 2 * (48 * 32 * 9 + 3 * 32 * 9 * 9 + 3 * 48 * 9 * 9)  # bf16 weight, input, output
    assert (dense["macs_dense"], dense["bytes_dense"]) == (macs, nbytes)
    assert dense["cudnn_rates"]["tflops"]["median"] == pytest.approx(2 * macs / 0.5 * 1e-9)
    assert dense["cudnn_rates"]["gbps"]["p20"] == pytest.approx(nbytes / 0.25 * 1e-6)
    assert dense["triton_dense_rates"]["tflops"]["p80"] == pytest.approx(2 * macs / 0.5 * 1e-9)
    assert dense["triton_dense_vs_cudnn"] == pytest.approx(2.0)

    peaks = DevicePeaks(matmul_tflops=100.0, copy_gbps=1000.0)
    gated = timing.measure_gated(sweep, SMALL, 3, 0.5, dense, peaks)
    rates = gated["triton_gated_rates"]
    # roofline: max(2 * MACs / 100e12 FLOP/s, bytes / 1000e9 B/s), in ms
    roof_dense = max(2 * macs / 100e12, nbytes / 1000e9) * 1e3
    roof_exec = max(2 * gated["macs_executed"] / 100e12, gated["bytes_executed"] / 1000e9) * 1e3
    assert gated["roofline_dense_ms"] == pytest.approx(roof_dense)
    assert gated["roofline_ideal_speedup"] == pytest.approx(roof_dense / roof_exec)
    assert gated["speedup_over_roofline_ideal"] == pytest.approx(4.0 / (roof_dense / roof_exec))
    assert gated["kernel_stats"]["macs"] == 8 * 10**6
    assert rates["tflops_kernel"]["median"] == pytest.approx(2 * 8e6 / 0.125 * 1e-9)
    assert rates["tflops_executed"]["p20"] == pytest.approx(2 * gated["macs_executed"] / 0.0625 * 1e-9)
    assert rates["gbps_executed"]["p80"] == pytest.approx(gated["bytes_executed"] / 0.25 * 1e-6)
    assert gated["macs_executed"] < macs and gated["speedup"] == pytest.approx(4.0)
    assert gated["decisions_match_mask"] and gated["check"] is None


def test_print_rates_lists_every_timed_run(fake_gpu: None, capsys: pytest.CaptureFixture) -> None:
    sweep = Sweep(batches=(2,))
    dense = timing.measure_dense(sweep, SMALL, 3, 0.5)
    gated = [timing.measure_gated(sweep, SMALL, 3, d, dense, DevicePeaks(100.0, 1000.0)) for d in (0.5, 1.0)]
    print_rates([dense], gated)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 + 2 + 2 and "TFLOP/s" in lines[0] and "GB/s" in lines[0]
    assert lines[1].split()[2:4] == ["cudnn", "0.500"] and lines[4].split()[3:5] == ["triton_gated", "0.125"]


class _RecordedFake(_FakeCase):
    """A recorded layer's case without a conv: the layer's shape and its first ``batch`` decisions."""

    def __init__(self, layer: RecordedLayer, batch: int) -> None:
        self.shape = layer.shape()
        self.inputs = _Inputs(layer.decisions[:batch])


def test_recorded_layers_are_timed_on_their_own_decisions(fake_gpu: None, monkeypatch: pytest.MonkeyPatch) -> None:
    decisions = torch.rand(4, 3, 9, 9, generator=torch.Generator().manual_seed(0)) < 0.3
    layer = RecordedLayer("tiny.l", 32, 48, (3, 3), (1, 1), (1, 1), (1, 1), 9, 9, GateSpec(gate_group=16), decisions)
    monkeypatch.setattr(timing, "recorded_case", lambda sweep, layer, batch, purpose: _RecordedFake(layer, batch))
    peaks = DevicePeaks(100.0, 1000.0)
    record = timing.measure_recorded(Sweep(batches=(2,)), layer, 3, "tiny", peaks)
    assert (record["model"], record["shape"], record["batch"], record["mask_source"]) == ("tiny", "tiny.l", 3, "real")
    per_group = 16 * 24 * 9  # 16 outputs x 24 conditional inputs x 9 taps per active (pixel, group)
    assert record["conditional_macs"] == int(decisions[:3].sum()) * per_group
    assert record["speedup"] == pytest.approx(4.0) and record["triton_dense_vs_cudnn"] == pytest.approx(2.0)
    assert record["check"] is None and record["dense_check"] is None and record["decisions_match_mask"]
    # memory bound at this size: the executed bytes (plus decisions and gate affine) set the roofline
    ideal = roofline_ms(record["macs_dense"], record["bytes_dense"], peaks) / roofline_ms(
        record["macs_executed"], record["bytes_executed"], peaks
    )
    assert record["roofline_ideal_speedup"] == pytest.approx(ideal) and record["kernel_stats"]["macs"] == 8 * 10**6


# -------------------------------------------------------------------- sweep
def test_command_line_defaults_are_the_sweep_defaults() -> None:
    assert run_gpu.sweep_from_args(run_gpu.parse_args([])) == Sweep()
    quick = run_gpu.sweep_from_args(run_gpu.parse_args(["--quick"]))
    assert quick == Sweep.preset(quick=True) == Sweep(models=QUICK_MODELS, batches=QUICK_BATCHES, quick=True)
    argv = ["--quick", "--batches", "4", "--gate-group", "8", "--base-layout", "grouped"]
    assert run_gpu.sweep_from_args(run_gpu.parse_args(argv)) == Sweep(
        models=QUICK_MODELS, batches=(4,), quick=True, gate_group=8, base_layout="grouped"
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--densities", "0"], "densities must be in (0, 1]"),
        (["--batches", "0"], "batches must be >= 1"),
        (["--gate-group", "0"], "gate_group must be a positive int"),
        (["--base-fraction", "1.5"], "base_fraction must be in (0, 1]"),
    ],
)
def test_command_line_refuses_bad_values(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        run_gpu.parse_args(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_sweep_check_batch_and_json_parameters() -> None:
    assert Sweep().check_batch == 8 and Sweep(batches=(64, 16)).check_batch == 16
    params = Sweep(models=["r18"]).to_dict()
    assert params["models"] == ["r18"] and params["batches"] == [1, 8, 64]
    assert json.loads(json.dumps(params)) == params
    with pytest.raises(ValueError, match="models"):
        Sweep(models=("vgg",))


# ------------------------------------------------------------------ summary
def _dense(model: str, batch: int, ratio: float) -> dict:
    return {"model": model, "batch": batch, "triton_dense_vs_cudnn": ratio}


def _gated(density: float, batch: int, over_ideal: float, over_dense: float) -> dict:
    return {
        "target_density": density,
        "batch": batch,
        "speedup_over_ideal": over_ideal,
        "speedup_over_roofline_ideal": 2 * over_ideal,
        "gated_over_triton_dense": over_dense,
    }


def test_summary_numbers() -> None:
    dense = [_dense("r50", 64, 0.5), _dense("r50", 64, 2.0), _dense("r50", 8, 9.0), _dense("r18", 64, 9.0)]
    gated = [
        _gated(0.1, 64, 0.8, 0.5), _gated(0.1, 8, 0.2, 0.5), _gated(0.5, 64, 0.7, 0.5),
        _gated(0.5, 1, 9.0, 0.5), _gated(1.0, 64, 9.0, 1.25), _gated(1.0, 1, 9.0, 0.8),
    ]  # fmt: skip
    summary = summarize(dense, gated)
    assert summary["a_triton_dense_vs_cudnn_geomean"]["value"] == pytest.approx(1.0)
    b = summary["b_speedup_vs_ideal"]
    assert b["all"]["cases"] == 3 and b["all"]["fraction_at_least_target"] == pytest.approx(2 / 3)
    assert b["all"]["geomean_speedup_over_ideal"] == pytest.approx((0.8 * 0.2 * 0.7) ** (1 / 3))
    empty = {"cases": 0, "fraction_at_least_target": None, "geomean_speedup_over_ideal": None}
    assert b["per_density"]["0.25"] == empty
    assert b["per_density"]["0.1"]["fraction_at_least_target"] == 0.5
    c = summary["c_gated_over_dense_at_density_1"]
    assert c["cases"] == 2 and c["geomean"] == pytest.approx(1.0) and c["max"] == 1.25
    roof = summary["b_speedup_vs_roofline_ideal"]["all"]
    assert roof["cases"] == 3 and roof["fraction_at_least_target"] == pytest.approx(2 / 3)  # 1.6, 0.4, 1.4
    strict = summarize(dense, gated, Targets(fraction_of_ideal=0.75))["b_speedup_vs_ideal"]
    assert strict["target_fraction_of_ideal"] == 0.75 and strict["all"]["fraction_at_least_target"] == 1 / 3


def test_failures_name_the_failed_checks() -> None:
    ok = {"rel_l2": 1e-3, "max_abs_over_max_ref": 1e-2, "ok": True}
    dense = [{"shape": "s", "batch": 8, "check": {"cudnn": ok, "triton_dense": ok | {"ok": False}}},
             {"shape": "s", "batch": 64, "check": None}]  # fmt: skip
    gated = [
        {"shape": "s", "batch": 8, "target_density": 0.1, "decisions_match_mask": True,
         "check": ok | {"decisions_match_mask": False}},
        {"shape": "s", "batch": 64, "target_density": 0.1, "decisions_match_mask": False, "check": None},
        {"shape": "s", "batch": 64, "target_density": 0.5, "decisions_match_mask": True, "check": None},
    ]  # fmt: skip
    assert failures(dense, gated) == ["s b8 dense", "s b8 d0.1 gated", "s b64 d0.1 gated"]


# ------------------------------------------------------------------- checks
def test_tolerance_is_twice_the_pytorch_error() -> None:
    gen = torch.Generator().manual_seed(0)
    ref = torch.randn(2, 8, 5, 5, dtype=torch.float64, generator=gen)
    noise = torch.randn(ref.shape, dtype=torch.float64, generator=gen)
    pytorch = ref + 1e-3 * noise * ref.norm() / noise.norm()  # PyTorch's error: exactly 1e-3 relative
    twice, thrice = (rel_errors(ref + k * (pytorch - ref), ref, pytorch) for k in (2, 3))
    assert twice["pytorch_rel_error"] == pytest.approx(1e-3) and twice["rel_l2"] == pytest.approx(2e-3)
    assert twice["tolerance"] == pytest.approx(2e-3 + TOLERANCE_FLOOR)
    assert twice["ok"] and not thrice["ok"]
    assert not rel_errors(torch.full_like(ref, float("nan")), ref, pytorch)["ok"]


def test_tolerance_floor_where_pytorch_is_exact() -> None:
    ref = torch.arange(1.0, 9.0, dtype=torch.float64)
    assert rel_errors(ref.float(), ref, ref.float())["ok"]  # small integers: exact, 0 <= floor
    assert rel_errors(ref * (1 + TOLERANCE_FLOOR / 2), ref, ref)["ok"]
    assert not rel_errors(ref * (1 + 2 * TOLERANCE_FLOOR), ref, ref)["ok"]
    zero = torch.zeros(3, dtype=torch.float64)
    exact = rel_errors(zero, zero, zero)
    assert exact["ok"] and exact["rel_l2"] == exact["pytorch_rel_error"] == 0.0
    assert not rel_errors(zero + 1e-9, zero, zero)["ok"]  # any error of an all-zero reference is infinite


def _cpu_case() -> ConvCase:
    """A real case on CPU: its "Triton" calls run the registered ops' references in bfloat16."""
    return make_case(Sweep(), SMALL, 2, 0.5, "check", device="cpu")


@pytest.mark.parametrize("factor, ok", [(1, True), (2, True), (3, False)])
def test_gated_check_accepts_up_to_twice_the_pytorch_error(factor: int, ok: bool) -> None:
    case = _cpu_case()
    out, decisions = case.triton_gated()
    ref, pytorch = gated_references(case, decisions)
    assert torch.equal(out, pytorch) and pytorch.dtype == torch.bfloat16  # on CPU the op is PyTorch's reference
    made = rel_errors(ref + factor * (pytorch.double() - ref), ref, pytorch)
    assert 1e-4 < made["pytorch_rel_error"] < 1e-2 and made["ok"] is ok
    check = check_gated(case)
    assert check["ok"] and check["decisions_match_mask"]
    assert check["rel_l2"] == pytest.approx(check["pytorch_rel_error"])


@pytest.mark.parametrize("impl", ["cudnn", "triton_dense"])
@pytest.mark.parametrize("factor, ok", [(2, True), (3, False)])
def test_dense_check_accepts_up_to_twice_the_pytorch_error(impl: str, factor: int, ok: bool) -> None:
    case = _cpu_case()
    ref, pytorch = dense_references(case)[impl]
    assert rel_errors(ref + factor * (pytorch.double() - ref), ref, pytorch)["ok"] is ok
    check = check_dense(case)[impl]
    assert check["ok"] and check["tolerance"] == pytest.approx(2 * check["pytorch_rel_error"] + TOLERANCE_FLOOR)


# ------------------------------------------------------------------ command
def test_count_only_run_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "results" / "counts.json"
    argv = ["--count-only", "--models", "r18", "--batches", "1", "--densities", "0.5", "1.0", "--out", str(out)]
    assert run_gpu.main(argv) == 0
    payload = json.loads(out.read_text())
    assert payload["parameters"]["models"] == ["r18"] and payload["environment"]["dtype"] == "bfloat16"
    assert payload["parameters"]["quantiles"] == [0.5, 0.2, 0.8] and payload["parameters"]["count_only"]
    assert len(payload["counts"]) == 2 * len(payload["shapes"]) == 20
    assert [t["target_density"] for t in payload["network_totals"]] == [0.5, 1.0]
    assert [p.name for p in out.parent.iterdir()] == ["counts.json"]


@pytest.mark.skipif(CUDA, reason="checks the exit path of a machine without CUDA")
def test_timing_run_without_cuda_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert run_gpu.main(["--out", str(tmp_path / "x.json")]) == 2
    assert "timing needs a CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


# ------------------------------------------------------------------ roofline
def test_roofline_time_is_the_slower_of_compute_and_traffic() -> None:
    peaks = DevicePeaks(matmul_tflops=500.0, copy_gbps=2000.0)
    assert roofline_ms(10**9, 10**3, peaks) == pytest.approx(2e9 / 500e12 * 1e3)  # compute bound: 4 us
    assert roofline_ms(10**3, 10**9, peaks) == pytest.approx(1e9 / 2000e9 * 1e3)  # memory bound: 0.5 ms
    with pytest.raises(ValueError, match="positive"):
        DevicePeaks(0.0, 1.0)


def test_recorded_summary_sums_a_network_per_model_and_batch() -> None:
    def rec(model: str, batch: int, cudnn: float, gated: float) -> dict:
        return {"model": model, "batch": batch, "cudnn_ms": {"median": cudnn}, "triton_dense_ms": {"median": 1.0},
                "triton_gated_ms": {"median": gated}, "macs_dense": 100, "macs_executed": 40,
                "roofline_dense_ms": 2.0, "roofline_executed_ms": 1.0}  # fmt: skip

    (net, other) = recorded_summary([rec("r50", 8, 1.0, 0.5), rec("r50", 8, 3.0, 1.5), rec("r50", 64, 1.0, 1.0)])
    assert (net["model"], net["batch"], net["layers"]) == ("r50", 8, 2)
    assert net["speedup"] == pytest.approx(4.0 / 2.0) and net["ideal_speedup"] == pytest.approx(2.5)
    assert net["roofline_ideal_speedup"] == pytest.approx(2.0) and other["speedup"] == pytest.approx(1.0)
