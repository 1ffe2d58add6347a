"""Gated-conv benchmark sweep: cuDNN dense vs Triton dense vs Triton gated, one JSON per run.

Run on a CUDA machine from the repository root::

    python -m benchmarks.run_gpu                      # full sweep, ~8 min on an H200
    python -m benchmarks.run_gpu --quick              # the dominant ResNet-50 shapes, batches 8 and 64
    python -m benchmarks.run_gpu --count-only --out /tmp/counts.json   # MAC/byte counts only, any machine

**What is measured.** Every 3x3 and 1x1 conv shape of torchvision ResNet-18 and
ResNet-50 at 224x224 (:mod:`benchmarks.shapes`), at batches 1, 8, 64 and gate
densities 0.1, 0.25, 0.5, 1.0, in bfloat16, channels_last, as a layer runs
after BatchNorm folding: the Triton kernels apply a per-channel scale/shift in
their epilogue (residual and ReLU off), weights are packed once
(``kernels.pack_weight``). The cuDNN baseline is ``F.conv2d`` on the same
channels_last bfloat16 tensors, without bias or epilogue (so it does strictly
less work), with ``cudnn.benchmark`` autotuning on. The gate is
``base_fraction=0.25``, ``base_layout="first"``, ``gate_group=16`` unless told
otherwise. The gated kernel computes its decisions itself: its inputs are
built (:func:`benchmarks.masks.beacon_case`) so that they equal a spatially
coherent mask of the target density (:func:`benchmarks.masks.blob_mask`); the
decisions it returns are checked against that mask and the density reported is
the one measured from them.

**How it is timed.** ``triton.testing.do_bench(fn, warmup=25, rep=100,
quantiles=[0.5, 0.2, 0.8])``: CUDA events around each call, L2 flushed before
each call (which also hides host launch overhead behind the flush), the median
and the 20/80 % quantiles in milliseconds. The first call (compilation, cuDNN
autotuning) is outside the timed region. Inputs are random (never zeros).

**Correctness.** Once per shape, at batch 8 (or the smallest batch swept), every
implementation runs on fresh random inputs (so no stale buffer of an earlier
call can pass for an output) and is compared with the float64 reference of
``kernels.reference`` (gated: on the kernel's own decisions); the errors
``||out - ref|| / ||ref||`` and ``max|out - ref| / max|ref|`` are recorded, cuDNN's
as the yardstick, and an error above ``BF16_REL_TOL`` (or a decision that
differs from the mask) makes the run exit with status 1 after writing the JSON.

**What is counted.** ``gating.accounting.gated_count`` of the decisions, with
2-byte elements: dense and executed MACs and bytes and the gate's MACs; the
ideal speedup is ``macs_dense / macs_executed``. The kernel's own counters
(``GatedConvStats``: tiles and tile-rounded MACs it ran) come from one extra
call with ``return_stats=True`` outside the timed region.

**Output.** One JSON (written atomically) with the GPU name, torch / triton /
CUDA / cuDNN versions, dtype, every parameter, the shapes, a record per
(shape, batch) for the dense runs and per (shape, batch, density) for the gated
runs, and the summary the project targets (:func:`summarize`):

a. geometric mean over the ResNet-50 shapes at batch 64 of the Triton-dense
   throughput relative to cuDNN (``cudnn_ms / triton_dense_ms``);
b. at densities 0.1, 0.25, 0.5 and batches 8 and 64: the fraction of cases where
   the speedup over cuDNN (``cudnn_ms / triton_gated_ms``) is at least 0.7 times
   the ideal speedup, and the geometric mean of speedup / ideal;
c. at density 1.0 (all gates on): geometric mean and maximum of
   ``triton_gated_ms / triton_dense_ms``, the cost of the gate itself.

Without CUDA the timing sweep exits with status 2; ``--count-only`` writes the
counting records (and per-network totals) on any machine.
"""

from __future__ import annotations

import argparse
import functools
import math
import re
import sys
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

import kernels
from gating.accounting import LayerCount, gated_count
from gating.io import atomic_write_json
from kernels.reference import conv2d_reference, gated_conv2d_reference

from .masks import BeaconCase, beacon_case, blob_scores, group_decisions, top_fraction
from .shapes import MODELS, ConvShape, gated_module, select_shapes

DTYPE = torch.bfloat16
ELEM_SIZE = 2  # bytes per bfloat16 element, for accounting
BATCHES = (1, 8, 64)
QUICK_BATCHES = (8, 64)
DENSITIES = (0.1, 0.25, 0.5, 1.0)
QUANTILES = (0.5, 0.2, 0.8)
CHECK_BATCH = 8
BF16_REL_TOL = 1e-2
TARGET_FRACTION_OF_IDEAL = 0.7
SPARSE_DENSITIES = (0.1, 0.25, 0.5)
SUMMARY_BATCHES = (8, 64)
THROUGHPUT_MODEL, THROUGHPUT_BATCH = "r50", 64
RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEVICE = torch.device("cuda")  # where the timing cases live
TOTALLED_FIELDS = ("macs_dense", "macs_executed", "bytes_dense", "bytes_executed")


@dataclass(frozen=True)
class Sweep:
    """Every parameter of one run (written into the JSON)."""

    models: tuple[str, ...]
    batches: tuple[int, ...]
    densities: tuple[float, ...]
    quick: bool
    warmup_ms: int
    rep_ms: int
    seed: int
    base_fraction: float
    base_layout: str
    gate_group: int

    def gate_kwargs(self) -> dict[str, object]:
        return {"base_fraction": self.base_fraction, "base_layout": self.base_layout, "gate_group": self.gate_group}

    @property
    def check_batch(self) -> int:
        """The batch at which outputs are checked: ``CHECK_BATCH`` if swept, else the smallest."""
        return CHECK_BATCH if CHECK_BATCH in self.batches else min(self.batches)


# ------------------------------------------------------------------ counting
def derived_seed(sweep: Sweep, *parts: object) -> int:
    """A seed that depends only on ``sweep.seed`` and ``parts`` (stable across runs and machines)."""
    return zlib.crc32("/".join(map(str, (sweep.seed, *parts))).encode())


@functools.lru_cache(maxsize=4)
def _case_scores(sweep: Sweep, shape: ConvShape, batch: int) -> torch.Tensor:
    return blob_scores(batch, shape.out_height, shape.out_width, seed=derived_seed(sweep, "mask", shape.name, batch))


def case_mask(sweep: Sweep, shape: ConvShape, batch: int, density: float) -> torch.Tensor:
    """The blob mask of a case (on CPU); one score field per (shape, batch), so densities are nested."""
    return top_fraction(_case_scores(sweep, shape, batch), density, shape.out_height, shape.out_width)


def count_case(sweep: Sweep, shape: ConvShape, batch: int, decisions: torch.Tensor) -> LayerCount:
    """``gating.accounting`` counts of one gated call of ``shape`` with ``decisions`` [N, G, OH, OW]."""
    module = gated_module(shape, sweep.base_fraction, sweep.base_layout, sweep.gate_group)
    return gated_count(
        shape.name, module, shape.input_shape(batch), shape.output_shape(batch), ELEM_SIZE, decisions.cpu()
    )


def count_fields(count: LayerCount) -> dict[str, object]:
    """The counts of a case, with the ideal (count-implied) speedups."""
    return {
        "measured_density": count.density,
        "macs_dense": count.macs_dense,
        "macs_executed": count.macs_executed,
        "gate_macs": count.gate_macs,
        "bytes_dense": count.bytes_dense,
        "bytes_executed": count.bytes_executed,
        "ideal_speedup": count.macs_dense / count.macs_executed,
        "ideal_bytes_speedup": count.bytes_dense / count.bytes_executed,
    }


def case_key(shape: ConvShape, batch: int) -> dict[str, object]:
    return {"model": shape.name.split(".")[0], "shape": shape.name, "layers": shape.count, "batch": batch}


def count_records(sweep: Sweep, shapes: Sequence[ConvShape]) -> list[dict[str, object]]:
    """Counts of every (shape, batch, density) from the masks themselves (no conv is run)."""
    records = []
    for shape in shapes:
        groups = gated_module(shape, sweep.base_fraction, sweep.base_layout, sweep.gate_group).num_groups
        for batch in sweep.batches:
            for density in sweep.densities:
                decisions = group_decisions(case_mask(sweep, shape, batch, density), groups)
                count = count_case(sweep, shape, batch, decisions)
                records.append({**case_key(shape, batch), "target_density": density, **count_fields(count)})
    return records


def network_totals(records: Iterable[dict[str, object]]) -> list[dict[str, object]]:
    """Per (model, batch, density): MACs and bytes of the counted layers of the whole network.

    Each shape's counts are weighted by how many layers have it (the 7x7 stem
    and the classifier are not included).
    """
    totals: dict[tuple[object, ...], dict[str, object]] = {}
    for rec in records:
        key = {name: rec[name] for name in ("model", "batch", "target_density")}
        total = totals.setdefault(tuple(key.values()), key | dict.fromkeys(TOTALLED_FIELDS, 0))
        for field in TOTALLED_FIELDS:
            total[field] += rec["layers"] * rec[field]
    for total in totals.values():
        total["ideal_speedup"] = total["macs_dense"] / total["macs_executed"]
        total["ideal_bytes_speedup"] = total["bytes_dense"] / total["bytes_executed"]
    return list(totals.values())


# ------------------------------------------------------------------- summary
def geomean(values: Sequence[float]) -> float | None:
    """Geometric mean, or None for no values."""
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def _ratio_summary(ratios: Sequence[float]) -> dict[str, object]:
    return {
        "cases": len(ratios),
        "fraction_at_least_target": (
            sum(r >= TARGET_FRACTION_OF_IDEAL for r in ratios) / len(ratios) if ratios else None
        ),
        "geomean_speedup_over_ideal": geomean(ratios),
    }


def summarize(dense: Sequence[dict], gated: Sequence[dict]) -> dict[str, object]:
    """The project's target numbers (a), (b), (c) of the module docstring; None where no case applies."""
    throughput = [
        rec["triton_dense_vs_cudnn"]
        for rec in dense
        if rec["model"] == THROUGHPUT_MODEL and rec["batch"] == THROUGHPUT_BATCH
    ]
    sparse = [rec for rec in gated if rec["target_density"] in SPARSE_DENSITIES and rec["batch"] in SUMMARY_BATCHES]
    full = [rec["gated_over_triton_dense"] for rec in gated if rec["target_density"] == 1.0]
    return {
        "a_triton_dense_vs_cudnn_geomean": {
            "model": THROUGHPUT_MODEL, "batch": THROUGHPUT_BATCH,
            "shapes": len(throughput), "value": geomean(throughput),
        },
        "b_speedup_vs_ideal": {
            "target_fraction_of_ideal": TARGET_FRACTION_OF_IDEAL,
            "batches": list(SUMMARY_BATCHES),
            "all": _ratio_summary([rec["speedup_over_ideal"] for rec in sparse]),
            "per_density": {
                str(d): _ratio_summary([rec["speedup_over_ideal"] for rec in sparse if rec["target_density"] == d])
                for d in SPARSE_DENSITIES
            },
        },
        "c_gated_over_dense_at_density_1": {
            "cases": len(full), "geomean": geomean(full), "max": max(full) if full else None,
        },
    }  # fmt: skip


# ------------------------------------------------------------------- timing
@dataclass(frozen=True)
class ConvCase:
    """One benchmark case on the GPU: beacon inputs, packed weight, folded-BN scale/shift."""

    shape: ConvShape
    batch: int
    density: float
    inputs: BeaconCase
    packed: kernels.PackedWeight
    weight_cl: torch.Tensor
    scale: torch.Tensor
    shift: torch.Tensor
    gate: dict[str, object]

    def cudnn(self) -> torch.Tensor:
        return F.conv2d(self.inputs.x, self.weight_cl, None, **self.shape.conv_args())

    def triton_dense(self) -> torch.Tensor:
        return kernels.conv2d(
            self.inputs.x, self.packed, scale=self.scale, shift=self.shift, **self.shape.conv_args()
        )

    def triton_gated(self, return_stats: bool = False) -> tuple:
        return kernels.gated_conv2d(
            self.inputs.x, self.packed, self.inputs.gate_scale, self.inputs.gate_shift,
            scale=self.scale, shift=self.shift, return_stats=return_stats, **self.gate, **self.shape.conv_args(),
        )  # fmt: skip


def make_case(sweep: Sweep, shape: ConvShape, batch: int, density: float, purpose: str) -> ConvCase:
    """A case on ``DEVICE``; ``purpose`` salts the seed (fresh inputs per check)."""
    device = DEVICE
    mask = case_mask(sweep, shape, batch, density).to(device)
    seed = derived_seed(sweep, purpose, shape.name, batch, density)
    inputs = beacon_case(shape, mask, dtype=DTYPE, seed=seed, **sweep.gate_kwargs())
    gen = torch.Generator(device=device).manual_seed(seed + 1)
    scale = 0.5 + torch.rand(shape.out_channels, generator=gen, device=device)
    shift = torch.rand(shape.out_channels, generator=gen, device=device) - 0.5
    return ConvCase(
        shape, batch, density, inputs, kernels.pack_weight(inputs.weight),
        inputs.weight.contiguous(memory_format=torch.channels_last), scale, shift, sweep.gate_kwargs(),
    )  # fmt: skip


def time_ms(fn: Callable[[], object], sweep: Sweep) -> dict[str, float]:
    """``do_bench`` median and 20/80 % quantiles of ``fn`` in milliseconds."""
    import triton.testing

    median, low, high = triton.testing.do_bench(
        fn, warmup=sweep.warmup_ms, rep=sweep.rep_ms, quantiles=list(QUANTILES)
    )
    return {"median": median, "p20": low, "p80": high}


def rel_errors(out: torch.Tensor, ref: torch.Tensor) -> dict[str, object]:
    """Relative L2 and max errors of ``out`` against the float64 ``ref``; ``ok`` within ``BF16_REL_TOL``."""
    diff = out.double() - ref
    rel = float(diff.norm() / ref.norm())
    return {
        "rel_l2": rel,
        "max_abs_over_max_ref": float(diff.abs().max() / ref.abs().max()),
        "ok": math.isfinite(rel) and rel <= BF16_REL_TOL,
    }


def _reference_flags():
    """cuDNN settings for the float64 references: no autotuning, no TF32."""
    return torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=False, allow_tf32=False)


def check_dense(case: ConvCase) -> dict[str, dict[str, object]]:
    """Errors of cuDNN and Triton dense against the float64 reference (references computed first)."""
    args = case.shape.conv_args()
    with _reference_flags():
        ref = conv2d_reference(case.inputs.x.double(), case.inputs.weight.double(), **args)
    ref_affine = ref * case.scale.double()[:, None, None] + case.shift.double()[:, None, None]
    return {"cudnn": rel_errors(case.cudnn(), ref), "triton_dense": rel_errors(case.triton_dense(), ref_affine)}


def check_gated(case: ConvCase) -> dict[str, object]:
    """Error of Triton gated against the float64 reference run on the kernel's decisions."""
    out, decisions = case.triton_gated()
    with _reference_flags():
        ref, _ = gated_conv2d_reference(
            case.inputs.x.double(), case.inputs.weight.double(), case.inputs.gate_scale, case.inputs.gate_shift,
            scale=case.scale.double(), shift=case.shift.double(), decisions=decisions,
            **case.gate, **case.shape.conv_args(),
        )  # fmt: skip
    return rel_errors(out, ref) | {"decisions_match_mask": torch.equal(decisions, case.inputs.decisions)}


def measure_dense(sweep: Sweep, shape: ConvShape, batch: int, density: float) -> dict[str, object]:
    """cuDNN and Triton dense timings of (shape, batch), checked at ``sweep.check_batch``."""
    check = None
    if batch == sweep.check_batch:
        check = check_dense(make_case(sweep, shape, batch, density, "check-dense"))
    case = make_case(sweep, shape, batch, density, "time")
    cudnn = time_ms(case.cudnn, sweep)
    triton_dense = time_ms(case.triton_dense, sweep)
    return {
        **case_key(shape, batch),
        "cudnn_ms": cudnn,
        "triton_dense_ms": triton_dense,
        "triton_dense_vs_cudnn": cudnn["median"] / triton_dense["median"],
        "check": check,
    }


def measure_gated(sweep: Sweep, shape: ConvShape, batch: int, density: float, dense: dict) -> dict[str, object]:
    """Triton gated timing, decisions, counts and kernel counters of one case, checked at ``sweep.check_batch``."""
    check = None
    if batch == sweep.check_batch:
        check = check_gated(make_case(sweep, shape, batch, density, f"check-{density}"))
    case = make_case(sweep, shape, batch, density, "time")
    _, decisions, stats = case.triton_gated(return_stats=True)
    counts = count_fields(count_case(sweep, shape, batch, decisions))
    kernel = stats.to_dict()
    gated = time_ms(case.triton_gated, sweep)
    speedup = dense["cudnn_ms"]["median"] / gated["median"]
    return {
        **case_key(shape, batch),
        "target_density": density,
        "decisions_match_mask": torch.equal(decisions, case.inputs.decisions),
        **counts,
        "kernel_stats": kernel | {"macs": kernel["base_macs"] + kernel["conditional_macs"]},
        "triton_gated_ms": gated,
        "speedup": speedup,
        "speedup_over_ideal": speedup / counts["ideal_speedup"],
        "gated_over_triton_dense": gated["median"] / dense["triton_dense_ms"]["median"],
        "check": check,
    }


def timing_records(sweep: Sweep, shapes: Sequence[ConvShape]) -> tuple[list[dict], list[dict]]:
    """Dense records per (shape, batch) and gated records per (shape, batch, density), with a progress bar."""
    from tqdm import tqdm

    dense_records, gated_records = [], []
    with torch.backends.cudnn.flags(enabled=True, benchmark=True, deterministic=False, allow_tf32=True):
        with tqdm(total=len(shapes) * len(sweep.batches) * len(sweep.densities), unit="case") as bar:
            for shape in shapes:
                for batch in sweep.batches:
                    bar.set_postfix_str(f"{shape.name} b{batch}")
                    dense = measure_dense(sweep, shape, batch, sweep.densities[0])
                    dense_records.append(dense)
                    for density in sweep.densities:
                        gated_records.append(measure_gated(sweep, shape, batch, density, dense))
                        bar.update()
                    torch.cuda.empty_cache()
    return dense_records, gated_records


def failures(dense: Iterable[dict], gated: Iterable[dict]) -> list[str]:
    """Names of the cases whose outputs or decisions failed their check."""
    bad = []
    for rec in dense:
        if rec["check"] is not None and not all(err["ok"] for err in rec["check"].values()):
            bad.append(f"{rec['shape']} b{rec['batch']} dense")
    for rec in gated:
        check_ok = rec["check"] is None or (rec["check"]["ok"] and rec["check"]["decisions_match_mask"])
        if not (check_ok and rec["decisions_match_mask"]):
            bad.append(f"{rec['shape']} b{rec['batch']} d{rec['target_density']} gated")
    return bad


# ----------------------------------------------------------------- output
def _triton_version() -> str | None:
    if not kernels.TRITON_AVAILABLE:
        return None
    import triton

    return triton.__version__


def environment(cuda: bool) -> dict[str, object]:
    """GPU name and software versions of this run."""
    return {
        "gpu": torch.cuda.get_device_name() if cuda else None,
        "torch": torch.__version__,
        "triton": _triton_version(),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "dtype": str(DTYPE).removeprefix("torch."),
        "element_size_bytes": ELEM_SIZE,
    }


def default_out(count_only: bool) -> Path:
    if count_only:
        return RESULTS_DIR / "gated_conv_counts.json"
    gpu = re.sub(r"[^a-z0-9]+", "_", torch.cuda.get_device_name().lower()).strip("_")
    return RESULTS_DIR / f"gated_conv_{gpu}.json"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def print_summary(summary: dict[str, object]) -> None:
    """The target numbers, one line each."""
    a = summary["a_triton_dense_vs_cudnn_geomean"]
    b = summary["b_speedup_vs_ideal"]
    c = summary["c_gated_over_dense_at_density_1"]
    print(
        f"(a) Triton dense / cuDNN throughput, {a['model']} b{a['batch']}, "
        f"geomean of {a['shapes']} shapes: {_fmt(a['value'])}"
    )
    for name, part in [("all", b["all"]), *b["per_density"].items()]:
        print(
            f"(b) density {name:>4}, batches {b['batches']}: {part['cases']} cases, speedup >= "
            f"{TARGET_FRACTION_OF_IDEAL} x ideal in {_fmt(part['fraction_at_least_target'])} of them, "
            f"geomean speedup/ideal {_fmt(part['geomean_speedup_over_ideal'])}"
        )
    print(
        f"(c) density 1.0, gated / Triton dense time ({c['cases']} cases): "
        f"geomean {_fmt(c['geomean'])}, max {_fmt(c['max'])}"
    )


def print_totals(totals: Iterable[dict[str, object]]) -> None:
    """Whole-network counted MACs and bytes per (model, batch, density)."""
    print(
        f"{'model':<6}{'batch':>6}{'density':>9}{'GMACs dense':>13}{'GMACs exec':>12}"
        f"{'ideal x':>9}{'MB dense':>10}{'MB exec':>10}"
    )
    for t in totals:
        print(
            f"{t['model']:<6}{t['batch']:>6}{t['target_density']:>9}{t['macs_dense'] / 1e9:>13.2f}"
            f"{t['macs_executed'] / 1e9:>12.2f}{t['ideal_speedup']:>9.2f}"
            f"{t['bytes_dense'] / 1e6:>10.1f}{t['bytes_executed'] / 1e6:>10.1f}"
        )


# ------------------------------------------------------------------ command
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run_gpu", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/gated_conv_<gpu>.json)")
    parser.add_argument("--quick", action="store_true", help="shapes run by >= 3 layers of ResNet-50, batches 8 64")
    parser.add_argument("--count-only", action="store_true", help="MAC/byte counts only (no GPU needed)")
    parser.add_argument("--models", nargs="+", choices=MODELS, help="default: r18 r50 (r50 with --quick)")
    parser.add_argument("--batches", nargs="+", type=int, help=f"default: {BATCHES} ({QUICK_BATCHES} with --quick)")
    parser.add_argument("--densities", nargs="+", type=float, default=list(DENSITIES))
    parser.add_argument("--warmup", type=int, default=25, help="do_bench warm-up, ms")
    parser.add_argument("--rep", type=int, default=100, help="do_bench repetition time, ms")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--base-fraction", type=float, default=0.25)
    parser.add_argument("--base-layout", choices=("first", "grouped"), default="first")
    parser.add_argument("--gate-group", type=int, default=16)
    args = parser.parse_args(argv)
    if any(not 0.0 < d <= 1.0 for d in args.densities):
        parser.error("densities must be in (0, 1]")
    if any(b < 1 for b in args.batches or ()):
        parser.error("batches must be >= 1")
    return args


def sweep_from_args(args: argparse.Namespace) -> Sweep:
    return Sweep(
        models=tuple(args.models or (("r50",) if args.quick else MODELS)),
        batches=tuple(args.batches or (QUICK_BATCHES if args.quick else BATCHES)),
        densities=tuple(args.densities),
        quick=args.quick,
        warmup_ms=args.warmup,
        rep_ms=args.rep,
        seed=args.seed,
        base_fraction=args.base_fraction,
        base_layout=args.base_layout,
        gate_group=args.gate_group,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cuda = torch.cuda.is_available()
    if not args.count_only and not cuda:
        print(
            "run_gpu: timing needs a CUDA GPU (torch.cuda.is_available() is False). "
            "Use --count-only for the MAC/byte counts on this machine.",
            file=sys.stderr,
        )
        return 2
    sweep = sweep_from_args(args)
    shapes = select_shapes(sweep.models, sweep.quick)
    out = args.out or default_out(args.count_only)
    start = time.perf_counter()
    payload: dict[str, object] = {
        "benchmark": "gated_conv2d",
        "environment": environment(cuda and not args.count_only),
        "parameters": asdict(sweep) | {"count_only": args.count_only, "quantiles": list(QUANTILES)},
        "shapes": [shape.to_dict() for shape in shapes],
    }
    if args.count_only:
        records = count_records(sweep, shapes)
        totals = network_totals(records)
        payload |= {"counts": records, "network_totals": totals}
        bad: list[str] = []
        print_totals(totals)
    else:
        dense, gated = timing_records(sweep, shapes)
        summary = summarize(dense, gated)
        bad = failures(dense, gated)
        payload |= {"dense": dense, "gated": gated, "summary": summary, "failed_checks": bad}
        print_summary(summary)
    payload["wall_s"] = time.perf_counter() - start
    atomic_write_json(payload, out)
    print(f"wrote {out} ({len(shapes)} shapes, {payload['wall_s']:.1f} s)")
    if bad:
        print(f"run_gpu: {len(bad)} checks failed: {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
