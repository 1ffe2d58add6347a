"""Channel-sparse conv benchmark: executed vs algorithmic MACs anywhere, time vs cuDNN dense on CUDA.

Run from the repository root::

    python -m benchmarks.bench_channel_sparse                 # CUDA: time, check, write the JSON
    python -m benchmarks.bench_channel_sparse --count-only    # any machine: the kernel's counters only

Collected by ``python -m pytest`` too (``bench_*.py``): the counting checks
below run on every machine.

**Cases.** Every 3x3 and 1x1 conv shape of torchvision ResNet-18 and ResNet-50
at 224x224 (:mod:`benchmarks.shapes`), batches 1 and 32, bfloat16,
channels_last, as a runtime-gated layer runs after BatchNorm folding
(per-channel scale/shift in the epilogue). Keep 0.5 of the input and 0.5 of
the output channels: per sample, a random half of the channel blocks
(:func:`block_mask`, blocks of the kernel's ``block``, 16 by default, or of
``--group`` channels; seed fixed, derived per shape and batch), the input
channels outside the input mask are zero (as the previous gated layer leaves
them). The ideal speedup is
``macs_dense / macs_executed`` with ``macs_executed = sum_n kept_out_n *
active_in_n * kh*kw*OH*OW`` (:func:`kernels.channel_sparse_macs`), 4 here.

**Counting** (``--count-only``, and the pytest checks): the kernel's own
counters predicted from the masks (:func:`kernels.channel_sparse_counters`,
equal to what the Triton kernel reports, which the kernel tests check):
``macs_kernel`` (MACs over the active 8-channel groups), ``tile_macs`` (MMA
tiles, padding included), dot steps and programs, beside the algorithmic and
dense MACs.

**Timing** (CUDA only): ``triton.testing.do_bench`` (:func:`benchmarks.timing.time_ms`:
median and 20/80 % quantiles, L2 flushed) of cuDNN dense (``F.conv2d`` on the
same channels_last bfloat16 tensors, no epilogue, ``cudnn.benchmark`` on) and
of ``kernels.channel_sparse_conv2d`` (block lists built on device inside the
call, so they are timed). Records hold both times, ``speedup =
cudnn_ms / channel_sparse_ms``, the ideal speedup, their ratio and TFLOP/s
(dense MACs for cuDNN, executed MACs for the kernel). At the smallest batch
each case is first checked against the float64 reference
(:func:`benchmarks.checks.check_channel_sparse`, PyTorch's own bfloat16 error
as the yardstick); a failed check makes the run exit with status 1 after the
JSON is written. ``python -m benchmarks.run_gpu`` runs this timing too and
writes its JSON beside its own.

**Output.** ``benchmarks/results/channel_sparse_<gpu>.json`` (timing) or
``channel_sparse_counts.json`` (``--count-only``), with the GPU name, torch
and Triton versions, dtype, parameters and one record per (shape, batch).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

import kernels
from gating.io import atomic_write_json
from kernels import CHANNEL_SPARSE_FIELDS, DEFAULT_CHANNEL_BLOCK, channel_sparse_counters, channel_sparse_macs
from kernels._validation import check_channel_block

from .checks import check_channel_sparse
from .report import RESULTS_DIR, environment, tflops
from .shapes import MODELS, ConvShape, select_shapes
from .sweep import derived_seed
from .timing import time_ms

__all__ = ["ChannelSparseSweep", "block_mask", "count_record", "main", "run", "time_record"]

DTYPE = torch.bfloat16
"""Dtype of every timed tensor."""


@dataclass(frozen=True)
class ChannelSparseSweep:
    """Every parameter of one run (written into the JSON); the defaults are the full run.

    ``keep`` is the fraction of mask groups kept per sample, on the input
    and on the output side; ``block`` the kernel's channel block; ``group``
    the mask granularity (None: ``block``; 8 is the runtime gate's default
    ``channel_group`` and the kernel's own granularity; finer groups are
    rounded up to 8 by the kernel);
    ``warmup_ms``/``rep_ms`` the ``do_bench`` times.
    """

    models: tuple[str, ...] = MODELS
    batches: tuple[int, ...] = (1, 32)
    keep: float = 0.5
    block: int = DEFAULT_CHANNEL_BLOCK
    seed: int = 0
    warmup_ms: int = 25
    rep_ms: int = 100
    group: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.keep <= 1.0:
            raise ValueError(f"keep must be in (0, 1], got {self.keep!r}")
        if not self.batches or min(self.batches) < 1:
            raise ValueError(f"batches must be >= 1, got {self.batches!r}")
        check_channel_block(self.block)
        if self.group is not None and self.group < 1:
            raise ValueError(f"group must be >= 1, got {self.group!r}")

    @property
    def mask_group(self) -> int:
        """Channels per mask group: ``group``, or the kernel's ``block``."""
        return self.block if self.group is None else self.group

    @property
    def check_batch(self) -> int:
        """The batch at which outputs are checked against the float64 reference: the smallest."""
        return min(self.batches)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def block_mask(batch: int, channels: int, keep: float, block: int, gen: torch.Generator) -> torch.Tensor:
    """Bool ``[batch, channels]``: per sample a random ``ceil(keep * blocks)`` of the blocks of ``block`` channels."""
    blocks = -(-channels // block)
    kept = max(1, math.ceil(keep * blocks - 1e-9))
    rank = torch.rand(batch, blocks, generator=gen).argsort(dim=1).argsort(dim=1)
    return (rank < kept).repeat_interleave(block, dim=1)[:, :channels]


def case_masks(sweep: ChannelSparseSweep, shape: ConvShape, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out_mask [N, C_out], in_mask [N, C_in])`` of a case, on CPU, from a seed fixed per (shape, batch)."""
    gen = torch.Generator().manual_seed(derived_seed(sweep, "channel_sparse", shape.name, batch))
    out_mask = block_mask(batch, shape.out_channels, sweep.keep, sweep.mask_group, gen)
    return out_mask, block_mask(batch, shape.in_channels, sweep.keep, sweep.mask_group, gen)


def dense_macs(shape: ConvShape, batch: int) -> int:
    """``N * C_out * C_in * k*k * OH*OW`` of a case."""
    return batch * shape.out_channels * shape.in_channels * shape.kernel**2 * shape.out_height * shape.out_width


def count_record(sweep: ChannelSparseSweep, shape: ConvShape, batch: int) -> dict[str, object]:
    """Dense, algorithmic and kernel MACs of a case, and the kernel's counters (pure PyTorch, any machine)."""
    out_mask, in_mask = case_masks(sweep, shape, batch)
    kernel, out_hw = (shape.kernel, shape.kernel), (shape.out_height, shape.out_width)
    counters = channel_sparse_counters(out_mask, in_mask, shape.in_channels, kernel, out_hw, sweep.block)
    work = dict(zip(CHANNEL_SPARSE_FIELDS, counters.tolist()))
    executed = int(channel_sparse_macs(out_mask, in_mask, shape.in_channels, kernel, out_hw))
    macs = dense_macs(shape, batch)
    return {
        "shape": shape.name,
        "layers": shape.count,
        "batch": batch,
        "kept_out_fraction": float(out_mask.float().mean()),
        "active_in_fraction": float(in_mask.float().mean()),
        "macs_dense": macs,
        "macs_executed": executed,
        "macs_kernel": work["macs"],
        "tile_macs": work["tile_macs"],
        "ideal_speedup": macs / executed,
        "kernel_over_executed": work["macs"] / executed,
        "tiles_over_executed": work["tile_macs"] / executed,
        "counters": work,
    }


def _inputs(sweep: ChannelSparseSweep, shape: ConvShape, batch: int, seed_offset: int) -> dict[str, object]:
    """Random bf16 CUDA inputs of a case (inactive input channels zero), the packed weight and the folded affine."""
    out_mask, in_mask = case_masks(sweep, shape, batch)
    gen = torch.Generator().manual_seed(sweep.seed + seed_offset)
    x = torch.randn(shape.input_shape(batch), generator=gen) * in_mask[:, :, None, None]
    weight = torch.randn(shape.out_channels, shape.in_channels, shape.kernel, shape.kernel, generator=gen)
    weight = weight * (shape.in_channels * shape.kernel**2) ** -0.5
    scale, shift = torch.rand(shape.out_channels, generator=gen) + 0.5, torch.randn(shape.out_channels, generator=gen)
    cuda = {"device": "cuda"}
    x = x.to(dtype=DTYPE, **cuda).contiguous(memory_format=torch.channels_last)
    weight = weight.to(dtype=DTYPE, **cuda)
    return {"x": x, "weight": weight, "packed": kernels.pack_weight(weight), "out_mask": out_mask.cuda(),
            "in_mask": in_mask.cuda(), "scale": scale.cuda(), "shift": shift.cuda()}  # fmt: skip


def time_record(sweep: ChannelSparseSweep, shape: ConvShape, batch: int) -> dict[str, object]:
    """:func:`count_record` plus cuDNN and channel-sparse times, speedup, rates and (at the check batch) the check."""
    record = count_record(sweep, shape, batch)
    conv = shape.conv_args()

    def sparse(case: dict[str, object]) -> torch.Tensor:
        return kernels.channel_sparse_conv2d(
            case["x"], case["packed"], case["out_mask"], case["in_mask"], scale=case["scale"], shift=case["shift"],
            block=sweep.block, **conv,
        )  # fmt: skip

    if batch == sweep.check_batch:
        fresh = _inputs(sweep, shape, batch, seed_offset=1)
        record["check"] = check_channel_sparse(
            sparse(fresh), fresh["x"], fresh["weight"], fresh["out_mask"], fresh["in_mask"], fresh["scale"],
            fresh["shift"], conv,
        )  # fmt: skip
    case = _inputs(sweep, shape, batch, seed_offset=2)
    cudnn_ms = time_ms(lambda: F.conv2d(case["x"], case["weight"], None, **conv), sweep)
    sparse_ms = time_ms(lambda: sparse(case), sweep)
    speedup = cudnn_ms["median"] / sparse_ms["median"]
    return record | {
        "cudnn_ms": cudnn_ms,
        "channel_sparse_ms": sparse_ms,
        "speedup": speedup,
        "speedup_over_ideal": speedup / record["ideal_speedup"],
        "cudnn_tflops": {q: tflops(record["macs_dense"], ms) for q, ms in cudnn_ms.items()},
        "channel_sparse_tflops": {q: tflops(record["macs_executed"], ms) for q, ms in sparse_ms.items()},
    }


def default_out(count_only: bool, directory: Path = RESULTS_DIR) -> Path:
    """``channel_sparse_counts.json``, or ``channel_sparse_<gpu>.json`` for a timing run, in ``directory``."""
    if count_only:
        return directory / "channel_sparse_counts.json"
    gpu = re.sub(r"[^a-z0-9]+", "_", torch.cuda.get_device_name().lower()).strip("_")
    return directory / f"channel_sparse_{gpu}.json"


def _print(records: list[dict[str, object]], timed: bool) -> None:
    for r in records:
        line = (f"{r['shape']:<22} b{r['batch']:<3} ideal {r['ideal_speedup']:.2f}x  "
                f"kernel/executed MACs {r['kernel_over_executed']:.3f}  "
                f"MMA tiles/executed {r['tiles_over_executed']:.3f}")  # fmt: skip
        if timed:
            line += f"  speedup {r['speedup']:.2f}x ({r['speedup_over_ideal']:.2f} of ideal)"
        print(line, flush=True)


def run(sweep: ChannelSparseSweep, count_only: bool, out: Path | None = None) -> int:
    """Count or time every case, write the JSON to ``out`` (default :func:`default_out`), print one line per case.

    Returns the exit status: 0; 1 when a check failed (the JSON is written
    first); 2 for a timing run without CUDA (nothing written).
    """
    cuda = torch.cuda.is_available()
    if not count_only and not cuda:
        print("bench_channel_sparse: timing needs a CUDA GPU; use --count-only on this machine", file=sys.stderr)
        return 2
    shapes = select_shapes(sweep.models, quick=False)
    start = time.perf_counter()
    if count_only:
        records = [count_record(sweep, shape, batch) for shape in shapes for batch in sweep.batches]
    else:
        torch.backends.cudnn.benchmark = True
        records = [time_record(sweep, shape, batch) for shape in shapes for batch in sweep.batches]
    bad = [f"{r['shape']} b{r['batch']}" for r in records if "check" in r and not r["check"]["ok"]]
    payload = {
        "benchmark": "channel_sparse_conv2d",
        "environment": environment(cuda and not count_only),
        "parameters": sweep.to_dict() | {"count_only": count_only},
        "shapes": [shape.to_dict() for shape in shapes],
        "records": records,
        "failed_checks": bad,
        "wall_s": time.perf_counter() - start,
    }
    out = out or default_out(count_only)
    atomic_write_json(payload, out)
    _print(records, timed=not count_only)
    print(f"wrote {out} ({len(records)} cases, {payload['wall_s']:.1f} s)")
    if bad:
        print(f"bench_channel_sparse: {len(bad)} checks failed: {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.bench_channel_sparse [flags]``: parse the flags, then :func:`run`."""
    full = ChannelSparseSweep()
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_channel_sparse",
                                     description=__doc__.split("\n\n")[0])  # fmt: skip
    parser.add_argument("--count-only", action="store_true", help="the kernel's counters only (no GPU needed)")
    parser.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/channel_sparse_<gpu>.json)")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(full.models))
    parser.add_argument("--batches", nargs="+", type=int, default=list(full.batches))
    parser.add_argument("--keep", type=float, default=full.keep, help="default: %(default)s")
    parser.add_argument("--block", type=int, default=full.block, help="default: %(default)s")
    parser.add_argument("--seed", type=int, default=full.seed, help="default: %(default)s")
    parser.add_argument("--warmup", type=int, default=full.warmup_ms, help="do_bench warm-up, ms")
    parser.add_argument("--rep", type=int, default=full.rep_ms, help="do_bench repetition, ms")
    parser.add_argument("--group", type=int, help="mask granularity in channels (default: --block)")
    args = parser.parse_args(argv)
    try:
        sweep = ChannelSparseSweep(tuple(args.models), tuple(args.batches), args.keep, args.block, args.seed,
                                   args.warmup, args.rep, args.group)  # fmt: skip
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))
    return run(sweep, args.count_only, args.out)


# ------------------------------------------------------------------ pytest checks (no pytest import needed)
CUDA = torch.cuda.is_available()


def test_block_aligned_half_masks_run_exactly_the_algorithmic_macs_a_quarter_of_dense() -> None:
    sweep = ChannelSparseSweep()
    for shape in select_shapes(sweep.models, quick=False):
        for batch in sweep.batches:
            record = count_record(sweep, shape, batch)
            assert record["macs_kernel"] == record["macs_executed"], record["shape"]
            assert record["ideal_speedup"] == 4.0 and record["kept_out_fraction"] == 0.5
            work = record["counters"]
            assert work["output_tiles"] == work["zero_tiles"]  # half of the output blocks skipped
            assert work["tile_macs"] >= work["macs"]


def test_masks_keep_whole_blocks_and_differ_between_samples() -> None:
    mask = block_mask(32, 256, 0.5, 16, torch.Generator().manual_seed(0))
    blocks = mask.reshape(32, 16, 16)
    assert bool((blocks.all(dim=2) | ~blocks.any(dim=2)).all()) and mask.sum(dim=1).tolist() == [128] * 32
    assert len({tuple(row.tolist()) for row in mask}) > 16


def test_check_accepts_pytorchs_own_rounding_and_refuses_a_leak_into_pruned_channels() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 32, 6, 6, generator=gen).to(DTYPE)
    weight = (torch.randn(32, 32, 3, 3, generator=gen) / 17).to(DTYPE)
    out_mask, in_mask = block_mask(2, 32, 0.5, 16, gen), block_mask(2, 32, 0.5, 16, gen)
    scale, shift = torch.rand(32, generator=gen) + 0.5, torch.randn(32, generator=gen)
    conv = {"padding": 1}
    out = kernels.channel_sparse_conv2d_reference(x, weight, out_mask, in_mask, scale=scale, shift=shift, **conv)
    assert check_channel_sparse(out, x, weight, out_mask, in_mask, scale, shift, conv)["ok"]
    leaked = out.clone()
    leaked[~out_mask] = 1e-3
    check = check_channel_sparse(leaked, x, weight, out_mask, in_mask, scale, shift, conv)
    assert not check["ok"] and not check["pruned_exact_zero"]


def test_count_only_writes_its_json(tmp_path: Path) -> None:
    out = tmp_path / "counts.json"
    assert main(["--count-only", "--models", "r18", "--batches", "1", "--out", str(out)]) == 0
    payload = json.loads(out.read_text())
    assert payload["parameters"]["keep"] == 0.5 and payload["environment"]["dtype"] == "bfloat16"
    assert len(payload["records"]) == len(payload["shapes"]) and not payload["failed_checks"]


def test_masks_in_groups_of_8_are_exact_and_finer_ones_are_rounded_up() -> None:
    """The kernel skips in groups of 8 (gathered two per 16-wide tile): exact for the runtime gate's default."""
    for group, exact in ((8, True), (4, False)):
        sweep = ChannelSparseSweep(models=("r18",), batches=(32,), group=group)
        for record in (count_record(sweep, shape, 32) for shape in select_shapes(sweep.models, quick=False)):
            assert record["ideal_speedup"] == 4.0
            assert (record["macs_kernel"] == record["macs_executed"]) is exact, (group, record["shape"])


def test_timing_without_cuda_exits_2(tmp_path: Path) -> None:
    if CUDA:  # pytest is imported here only, so that ``benchmarks.run_gpu`` can import this module without it
        import pytest

        pytest.skip("checks the exit path of a machine without CUDA")
    assert main(["--out", str(tmp_path / "x.json")]) == 2 and not (tmp_path / "x.json").exists()


if __name__ == "__main__":
    sys.exit(main())
