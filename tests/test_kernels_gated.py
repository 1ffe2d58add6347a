"""Gated Triton conv (launch function ``kernels.gated_conv2d_triton``) against its float64 reference; skipping.

The Triton kernel runs on CUDA when there is one, else on CPU through the
Triton interpreter; the registered op and its wrapper ``kernels.gated_conv2d``
are checked in ``test_library.py``. Outputs use the tolerance of
``tests/_helpers.py`` (PyTorch's own error at the kernel's dtype). Decisions
are compared with the float64 reference only where the group sum of the gate
statistic is clear of the kernel's rounding error (see
:func:`clear_of_rounding`); the output is then compared with the reference run
on the kernel's own decisions, so a near-threshold flip cannot fail it.
The work counters must equal what the returned decisions imply under the
tiling documented in ``kernels.gated_conv2d`` (:func:`expected_stats`), and
``kernels.gated_kernel_counters`` must predict them exactly.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st

import kernels
import kernels.conv_tuning
import kernels.kernel_bytes
from _helpers import (
    COMMON_BAD_ARGS,
    DEVICE,
    DTYPES,
    HYPOTHESIS,
    META,
    as_float64,
    assert_matches,
    compile_for_hopper,
    conv_args,
    draw_geometry,
    poisoned_empty,
    rand,
    set_arg,
    to_device,
)
from kernels import GatedConvStats, conv_output_size
from kernels._common import base_intervals
from kernels import gated_kernel_counters, gated_tiling
from kernels.compaction_kernels import active_rows_triton

EPS32 = torch.finfo(torch.float32).eps


def clear_of_rounding(
    x: torch.Tensor, weight: torch.Tensor, gate_scale: torch.Tensor, gate_shift: torch.Tensor,
    gate: dict, geometry: dict,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Float64 decisions and where they are clear of the kernel's rounding error.

    The kernel forms the base sum in float32 from the same input values, so its
    error is bounded like an output's (``test_kernels_conv2d``): ``err = 4*|PyTorch
    float32 - float64| + eps32*sqrt(K)*max|base sum|``. A group sum of ``g``
    channels can then be off by ``g*(max|gate_scale|*err + 4*eps32*max|z|)``
    (the second term: float32 rounding of the statistic and its sum); decisions
    whose float64 group sum exceeds that are clear.
    """
    c_out, c_in, kh, kw = weight.shape
    base = kernels.base_mask(c_out, c_in, gate["base_fraction"], gate["base_layout"])[:, :, None, None]
    w_base = weight.double() * base
    y64 = F.conv2d(x.double(), w_base, **geometry)
    y32 = F.conv2d(x.float(), w_base.float(), **geometry).double()
    err = 4 * (y32 - y64).abs().max() + EPS32 * math.sqrt(c_in * kh * kw) * y64.abs().max()
    z = y64 * gate_scale.double()[:, None, None] + gate_shift.double()[:, None, None]
    group_sum = kernels.group_sum(z, gate["gate_group"])
    size = min(gate["gate_group"], c_out)
    margin = size * (gate_scale.abs().max() * err + 4 * EPS32 * z.abs().max())
    # A block's mean is off by at most its pixels' largest error, plus the float32 rounding of the mean.
    statistic = kernels.block_mean(group_sum, gate.get("gate_block", 1))
    margin = margin + 4 * EPS32 * group_sum.abs().max()
    return statistic > 0, statistic.abs() > margin


def program_steps(
    mask: torch.Tensor, gate_group: int, bn: int, bk: int, gpb: int, subs: int, blocks: int
) -> tuple[list[int], list[int]]:
    """Per block ``q`` of ``gpb`` gate groups (``bn // gpb`` columns each, per sub-block): K steps of its base loop
    (the hull of its channels' base intervals) and of its conditional loops (``[0, C_in)`` minus the channels
    that are base for all of them), summed over its sub-blocks, at ``bk`` channels a step."""
    c_out, c_in = mask.shape
    slot = bn // gpb
    lo = mask.int().argmax(dim=1)
    hi = lo + mask.sum(dim=1)
    base_steps, cond_steps = [0] * blocks, [0] * blocks
    for q in range(blocks):
        for sub in range(subs):
            offsets = [(q * gpb + col // slot, col % slot + sub * bn) for col in range(bn)]
            chans = [group * gate_group + offset for group, offset in offsets
                     if offset < gate_group and group * gate_group + offset < c_out]  # fmt: skip
            if not chans:
                continue
            los, his = lo[chans], hi[chans]
            base_steps[q] += math.ceil((his.max() - los.min()).item() / bk)
            common_lo, common_hi = los.max().item(), his.min().item()
            if common_hi > common_lo:
                cond_steps[q] += math.ceil(common_lo / bk) + math.ceil((c_in - common_hi) / bk)
            else:
                cond_steps[q] += math.ceil(c_in / bk)
    return base_steps, cond_steps


def program_pairs(flat: torch.Tensor, bm: int, gpb: int) -> tuple[torch.Tensor, torch.Tensor]:
    """int ``[tiles_m, tiles_n]``: the (pixel, group) pairs on, and all pairs, of each (pixel tile, group block)."""
    pixels, groups = flat.shape
    on = torch.zeros(math.ceil(pixels / bm), math.ceil(groups / gpb), dtype=torch.long)
    pairs = torch.zeros_like(on)
    for p in range(on.shape[0]):
        for q in range(on.shape[1]):
            tile = flat[p * bm : (p + 1) * bm, q * gpb : (q + 1) * gpb]
            on[p, q], pairs[p, q] = int(tile.sum()), tile.numel()
    return on, pairs


def expected_stats(
    decisions: torch.Tensor, stats: GatedConvStats, weight_shape: torch.Size, gate: dict, decisions_given: bool
) -> dict[str, int]:
    """Counters implied by ``decisions`` under the documented tiling.

    Program ``(p, q)``: pixels ``[p*block_m, (p+1)*block_m)`` of the flattened
    ``(n, oh, ow)`` order and gate groups ``[q*groups_per_block, ...)``, each group
    in ``block_n // groups_per_block`` columns per sub-block (:func:`program_steps`);
    each K step costs ``block_m*block_n*kh*kw*block_k`` MACs; the conditional
    loops run when a decision of the program is on. The base loop runs twice
    with several sub-blocks unless decisions are given.
    """
    c_out, c_in, kh, kw = weight_shape
    n, groups, oh, ow = decisions.shape
    bm, bn, bk, gpb, subs = stats.block_m, stats.block_n, stats.block_k, stats.groups_per_block, stats.sub_blocks
    flat = decisions.permute(0, 2, 3, 1).reshape(-1, groups)
    active = program_pairs(flat, bm, gpb)[0] > 0
    tiles_m, tiles_n = active.shape
    mask = kernels.base_mask(c_out, c_in, gate["base_fraction"], gate["base_layout"])
    base_steps, cond_steps = program_steps(mask, gate["gate_group"], bn, bk, gpb, subs, tiles_n)
    passes = 2 if subs > 1 and not decisions_given else 1
    step = bm * bn * kh * kw * bk
    return {
        "tiles_total": tiles_m * tiles_n,
        "tiles_conditional_executed": int(active.sum()),
        "base_macs": tiles_m * sum(base_steps) * passes * step,
        "conditional_macs": sum(int(active[:, q].sum()) * cond_steps[q] for q in range(tiles_n)) * step,
    }


def column_conditional_steps(mask: torch.Tensor, channels: list[int], block_k: int, taps: int = 1,
                             flat_k: bool = False) -> int:  # fmt: skip
    """K steps over all taps of a column's conditional loops: ``[0, C_in)`` minus the channels base for all ``channels``.

    Per tap, each of the (up to two) channel ranges rounds up to ``block_k``;
    with ``flat_k`` the ``taps * channels`` pairs round up once.
    """
    c_in = mask.shape[1]
    lo = mask.int().argmax(dim=1)[channels]
    hi = lo + mask.sum(dim=1)[channels]
    common_lo, common_hi = lo.max().item(), hi.min().item()
    ranges = [common_lo, c_in - common_hi] if common_hi > common_lo else [c_in]
    if flat_k:
        return math.ceil(taps * sum(ranges) / block_k)
    return taps * sum(math.ceil(length / block_k) for length in ranges)


def expected_compact_stats(
    decisions: torch.Tensor, stats: GatedConvStats, weight_shape: torch.Size, gate: dict, decisions_given: bool,
    tiling: kernels.CompactTiling | None = None,
) -> dict[str, int]:
    """Counters of the compacted schedule implied by ``decisions``, counted from ``nonzero`` per gate group.

    First launch: ``cdiv(M, bm1) * cdiv(G, groups per block)`` programs, each
    running its base loop over the hull of its channels' base intervals (twice
    with several sub-blocks unless decisions are given); a program with at
    least ``in_place_percent`` % of its (pixel, group) pairs on (and one)
    also runs its conditional loops, and leaves none of its pairs to the
    conditional launch. Conditional launch: per (group, sub-block of
    ``block_n`` channels) with ``a`` active pixels left, the tiles of
    :func:`tail_rows`, each ``cond_steps * rows*block_n*block_k`` MACs
    (``cond_steps`` counting the taps). ``tiling``: the launch's override (None: the layer's own tiles).
    """
    c_out, c_in, kh, kw = weight_shape
    g = gate["gate_group"]
    n, groups, oh, ow = decisions.shape
    pixels = n * oh * ow
    compact = tiling or kernels.compact_tiling(
        pixels, c_in, c_out, (kh, kw), g, gate["base_fraction"], gate["base_layout"]
    )
    first = compact.base
    mask = kernels.base_mask(c_out, c_in, gate["base_fraction"], gate["base_layout"])
    blocks = math.ceil(groups / first.groups_per_block)
    base_steps, first_cond_steps = program_steps(mask, g, first.block_n, first.block_k, first.groups_per_block,
                                                 first.sub_blocks, blocks)  # fmt: skip
    passes = 2 if first.sub_blocks > 1 and not decisions_given else 1
    flat = decisions.permute(0, 2, 3, 1).reshape(pixels, groups).clone()
    percent = compact.in_place_percent if decisions_given or gate.get("gate_block", 1) == 1 else 0
    on, pairs = program_pairs(flat, first.block_m, first.groups_per_block)
    here = (on > 0) & (100 * on >= percent * pairs) & (percent > 0)
    first_step = first.block_m * first.block_n * kh * kw * first.block_k
    tiles = int(here.sum())
    conditional = sum(int(here[:, q].sum()) * first_cond_steps[q] for q in range(blocks)) * first_step
    bm1, gpb = first.block_m, first.groups_per_block
    for p, q in here.nonzero().tolist():
        flat[p * bm1 : (p + 1) * bm1, q * gpb : (q + 1) * gpb] = False
    bm, bn, bk = stats.block_m, stats.block_n, stats.block_k
    for j in range(groups):
        active = flat[:, j].nonzero().numel()
        for sub in range(stats.sub_blocks):
            chans = [j * g + sub * bn + col for col in range(bn)
                     if sub * bn + col < g and j * g + sub * bn + col < c_out]  # fmt: skip
            if chans:
                column_tiles, rows_run = tail_rows(active, bm)
                tiles += column_tiles
                steps = column_conditional_steps(mask, chans, bk, kh * kw, compact.flat_k)
                conditional += rows_run * steps * bn * bk
    rows = math.ceil(pixels / first.block_m)
    return {
        "tiles_total": rows * blocks,
        "tiles_conditional_executed": tiles,
        "base_macs": rows * sum(base_steps) * passes * first_step,
        "conditional_macs": conditional,
    }


def run_gated(
    x: torch.Tensor, weight: torch.Tensor, gate_scale: torch.Tensor, gate_shift: torch.Tensor,
    gate: dict, conv: dict, decisions: torch.Tensor | None = None, schedule: str = "auto",
    tiling: kernels.GatedTiling | kernels.CompactTiling | None = None,
) -> tuple[torch.Tensor, torch.Tensor, GatedConvStats]:  # fmt: skip
    """Run the kernel on DEVICE with poisoned buffers, check it all against the reference; return its results.

    ``out`` and ``decisions`` come back on CPU, ``stats`` stays on DEVICE; ``tiling`` is handed to the kernel
    and to the counter prediction.
    """
    args = (x, weight, gate_scale, gate_shift)
    kernel_args = {k: to_device(v) for k, v in conv.items()} | {"decisions": to_device(decisions)}
    with poisoned_empty():
        out, got, counters = kernels.gated_conv2d_triton(
            *map(to_device, args), **gate, **kernel_args, count_work=True, schedule=schedule, tiling=tiling
        )
    stats = GatedConvStats(counters)
    if decisions is not None:  # the launch function returns a fresh copy of given decisions
        assert got is not kernel_args["decisions"] and torch.equal(got.cpu(), decisions)
    assert got.is_contiguous(memory_format=torch.channels_last)
    out, got = out.cpu(), got.cpu()
    assert got.dtype == torch.bool and int(got.view(torch.uint8).max()) <= 1, "decisions not all written"
    if decisions is None:
        geometry = {k: v for k, v in conv.items() if k in ("stride", "padding", "dilation")}
        truth_decisions, clear = clear_of_rounding(x, weight, gate_scale, gate_shift, gate, geometry)
        assert torch.equal(got[clear], truth_decisions[clear])
        assert clear.float().mean() >= 0.5, "too few decisions clear of rounding to test"
    reference = kernels.gated_conv2d_reference
    truth, _ = reference(*map(as_float64, args), **gate, **{k: as_float64(v) for k, v in conv.items()}, decisions=got)
    at_dtype, _ = reference(*args, **gate, **conv, decisions=got)
    assert_matches(out, truth, at_dtype, math.prod(weight.shape[1:]))
    block = gate.get("gate_block", 1) if decisions is None else 1
    resolved = kernels.resolve_schedule(schedule, gate["gate_group"], weight.shape[0], block)
    if resolved == "compact":
        expected = expected_compact_stats(got, stats, weight.shape, gate, decisions is not None, tiling)
    else:
        expected = expected_stats(got, stats, weight.shape, gate, decisions is not None)
    counters = stats.to_dict()
    assert {name: counters[name] for name in expected} == expected
    predicted = gated_kernel_counters(
        got, weight.shape[1], weight.shape[0], tuple(weight.shape[2:]), **gate, decisions_given=decisions is not None,
        schedule=schedule, tiling=tiling,
    )
    assert predicted.tolist() == stats.counters.tolist(), "gated_kernel_counters disagrees with the kernel"
    return out, got, stats


def make_case(
    batch: int, c_in: int, c_out: int, kernel: int, size: tuple[int, int], dtype: torch.dtype, seed: int,
    shift: float = 0.0, epilogue: bool = False, conv: dict | None = None,
) -> tuple[tuple[torch.Tensor, ...], dict]:  # fmt: skip
    """Inputs ``(x, weight, gate_scale, gate_shift)`` and conv kwargs; ``shift`` moves the gate threshold."""
    gen = torch.Generator().manual_seed(seed)
    conv = dict(conv or {"padding": kernel // 2})
    x = rand((batch, c_in, *size), dtype, gen)
    weight = rand((c_out, c_in, kernel, kernel), dtype, gen, std=(c_in * kernel * kernel) ** -0.5)
    gate_scale = rand((c_out,), torch.float32, gen).abs() + 0.5
    gate_shift = (rand((c_out, 2), torch.float32, gen) * 0.3 + shift)[:, 0]  # strided on purpose
    if epilogue:
        out_hw = [
            conv_output_size(s, kernel, conv.get("stride", 1), conv.get("padding", 0), conv.get("dilation", 1))
            for s in size
        ]
        conv |= {
            "scale": rand((c_out,), torch.float32, gen).abs() + 0.5,
            "shift": rand((c_out,), torch.float32, gen),
            "residual": rand((batch, c_out, *out_hw), dtype, gen),
            "relu": True,
        }
    return (x, weight, gate_scale, gate_shift), conv


def _gate(gate_group: int, base_layout: str = "first", base_fraction: float = 0.25, gate_block: int = 1) -> dict:
    return {"gate_group": gate_group, "base_layout": base_layout, "base_fraction": base_fraction,
            "gate_block": gate_block}  # fmt: skip


@st.composite
def gated_cases(draw: st.DrawFn) -> dict[str, object]:
    geometry = draw_geometry(draw, 9)
    gate_block = draw(st.sampled_from([1, 1, 2, 3, 4]))
    return {
        "batch": draw(st.integers(1, 3)),
        "c_in": draw(st.integers(4, 24)),
        "c_out": draw(st.integers(4, 40)),
        "kernel": geometry["kernel"],
        "conv": {key: geometry[key] for key in ("stride", "padding", "dilation")},
        "size": (geometry["height"], geometry["width"]),
        "dtype": draw(st.sampled_from(DTYPES)),
        "gate": _gate(
            draw(st.sampled_from([1, 8, 16, 32, 64, 3, 12])),
            draw(st.sampled_from(["first", "grouped"])),
            draw(st.sampled_from([0.25, 0.5])),
            gate_block,
        ),
        "shift": draw(st.floats(-1.0, 1.0)),
        "epilogue": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**16)),
        # Decisions over pixel blocks run on the compacted schedule only.
        "schedule": draw(st.sampled_from(["auto", "compact"] if gate_block > 1 else ["auto", "compact", "tiled"])),
    }


def _gcase(**overrides: object) -> dict[str, object]:
    base = {"batch": 2, "c_in": 20, "c_out": 40, "kernel": 3, "conv": {"padding": 1}, "size": (7, 9),
            "dtype": torch.bfloat16, "gate": _gate(16), "shift": 0.0, "epilogue": True, "seed": 0,
            "schedule": "auto"}  # fmt: skip
    return base | overrides


@settings(HYPOTHESIS, max_examples=30)
@given(case=gated_cases())
@example(case=_gcase())
@example(case=_gcase(gate=_gate(8, "grouped"), dtype=torch.float16, conv={"stride": 2, "padding": 1}))
@example(case=_gcase(gate=_gate(1, "grouped"), dtype=torch.float32, c_out=23, c_in=13, epilogue=False))
@example(case=_gcase(gate=_gate(64, "first"), c_out=72, c_in=16, kernel=1, conv={}, size=(5, 5)))
@example(case=_gcase(gate=_gate(32, "grouped", 0.5), c_out=37, kernel=5, conv={"padding": 4, "dilation": 2}))
@example(case=_gcase(gate=_gate(8, "grouped"), schedule="compact", c_in=12, conv={"stride": 2, "padding": 1}))
@example(case=_gcase(c_in=16, c_out=32, batch=1, size=(3, 4), schedule="compact"))  # flat K, map under a tile
@example(case=_gcase(gate=_gate(16, gate_block=2)))  # ragged edge blocks on the 7x9 map
@example(case=_gcase(gate=_gate(8, "grouped", gate_block=4), dtype=torch.float32, conv={"stride": 2, "padding": 1}))
@example(case=_gcase(gate=_gate(32, gate_block=4), size=(3, 2), batch=3, epilogue=False))  # block over the whole map
def test_gated_conv2d_matches_reference(case: dict[str, object]) -> None:
    args, conv = make_case(
        case["batch"], case["c_in"], case["c_out"], case["kernel"], case["size"], case["dtype"], case["seed"],
        case["shift"], case["epilogue"], case["conv"],
    )  # fmt: skip
    run_gated(*args, case["gate"], conv, schedule=case["schedule"])


GROUP_CONFIGS = [(g, layout) for g in (1, 8, 16, 32, 64) for layout in ("first", "grouped")]


@pytest.mark.parametrize("gate_group, layout", GROUP_CONFIGS)
def test_all_off_keeps_base_sum_and_skips_every_tile(gate_group: int, layout: str) -> None:
    args, conv = make_case(2, 32, 72, 1, (5, 7), torch.float16, seed=3, shift=-1e4)
    out, decisions, stats = run_gated(*args, _gate(gate_group, layout), conv)
    assert not decisions.any()
    assert int(stats.tiles_conditional_executed) == 0 and int(stats.conditional_macs) == 0
    x, weight = args[:2]
    base = kernels.base_mask(72, 32, 0.25, layout, x.device)[:, :, None, None].to(weight.dtype)
    truth = kernels.conv2d_reference(x.double(), weight.double() * base.double())
    assert_matches(out, truth, kernels.conv2d_reference(x, weight * base), 32)


@pytest.mark.parametrize("gate_group, layout", GROUP_CONFIGS)
def test_all_on_equals_dense_conv_and_runs_every_tile(gate_group: int, layout: str) -> None:
    args, conv = make_case(2, 32, 72, 1, (5, 7), torch.float16, seed=4, shift=1e4)
    out, decisions, stats = run_gated(*args, _gate(gate_group, layout), conv)
    assert decisions.all()
    # tiled: every tile has a decision on; compacted: every first-launch tile is all on, so it runs in place
    # (kernels.gated_tiling.IN_PLACE_PERCENT) and the conditional launch has nothing left
    assert int(stats.tiles_conditional_executed) == int(stats.tiles_total) > 0
    x, weight = args[:2]
    truth = kernels.conv2d_reference(x.double(), weight.double())
    assert_matches(out, truth, kernels.conv2d_reference(x, weight), 32)


@pytest.mark.parametrize("layout", ["first", "grouped"])
@pytest.mark.parametrize("schedule, first_launch_tiles", [("tiled", 2 * 3), ("compact", None)])
def test_single_active_pixel_runs_one_pixel_tile(layout: str, schedule: str, first_launch_tiles: int | None) -> None:
    gen = torch.Generator().manual_seed(5)
    x = torch.zeros(2, 16, 8, 8, dtype=torch.bfloat16)
    x[1, :, 3, 2] = 1.0
    weight = (torch.rand(40, 16, 1, 1, generator=gen) + 0.1).to(torch.bfloat16)
    gate_scale, gate_shift = torch.ones(40), torch.full((40,), -0.05)
    _, decisions, stats = run_gated(x, weight, gate_scale, gate_shift, _gate(16, layout), {}, schedule=schedule)
    assert decisions.sum() == 3 and decisions[1, :, 3, 2].all()
    # compact: the first launch's programs hold every group of 40 channels ("first") or 16-column blocks
    first = first_launch_tiles or 2 * (1 if layout == "first" else 3)
    assert int(stats.tiles_total) == first and int(stats.tiles_conditional_executed) == 3


@pytest.mark.parametrize("layout", ["first", "grouped"])
def test_given_decisions_are_used_as_is(layout: str) -> None:
    args, conv = make_case(2, 12, 40, 3, (6, 7), torch.float32, seed=6, epilogue=True)
    gen = torch.Generator().manual_seed(6)
    for decisions in (torch.zeros(2, 3, 6, 7, dtype=torch.bool), torch.rand(2, 3, 6, 7, generator=gen) > 0.8):
        decisions[1, 2, 4, 5] = True
        run_gated(*args, _gate(16, layout), conv, decisions=decisions)
    single = torch.zeros(2, 3, 6, 7, dtype=torch.bool)
    single[0, 1, 0, 0] = True
    _, _, stats = run_gated(*args, _gate(16, layout), conv, decisions=single)
    assert int(stats.tiles_conditional_executed) == 1


@pytest.mark.parametrize("layout", ["first", "grouped"])
def test_spatially_coherent_mask_skips_tiles_away_from_the_blob(layout: str) -> None:
    gen = torch.Generator().manual_seed(7)
    rows = torch.arange(12.0)
    blob = torch.exp(-((rows[:, None] - 2) ** 2 + (rows[None, :] - 3) ** 2) / 4)
    x = torch.randn(2, 20, 12, 12, generator=gen) * 0.01
    x[0] += 3 * blob
    x = x.to(torch.bfloat16)
    weight = (rand((40, 20, 3, 3), torch.float32, gen, std=0.1) + 0.02).to(torch.bfloat16)
    gate_scale, gate_shift = torch.ones(40), torch.full((40,), -0.05)
    gate = _gate(16, layout)
    _, decisions, stats = run_gated(x, weight, gate_scale, gate_shift, gate, {"padding": 1}, schedule="tiled")
    assert decisions[1].sum() == 0 and decisions[0, :, :6, :8].any()
    assert 0 < int(stats.tiles_conditional_executed) < int(stats.tiles_total)


@pytest.mark.parametrize("pattern", ["checkerboard", "scattered", "one-group", "one-pixel"])
def test_compacted_conditional_work_follows_the_active_pixels_not_their_layout(pattern: str) -> None:
    """Scattered decisions cost the compacted schedule their count rounded up to 8 rows per group, no more."""
    args, conv = make_case(3, 32, 48, 3, (9, 11), torch.bfloat16, seed=8, epilogue=True)
    gen = torch.Generator().manual_seed(8)
    decisions = torch.zeros(3, 3, 9, 11, dtype=torch.bool)
    if pattern == "checkerboard":
        rows, cols = torch.meshgrid(torch.arange(9), torch.arange(11), indexing="ij")
        decisions[:] = ((rows + cols) % 2 == 0)[None, None]
    elif pattern == "scattered":
        decisions = torch.rand(3, 3, 9, 11, generator=gen) < 0.1
    elif pattern == "one-group":
        decisions[:, 1] = True
    else:
        decisions[2, 0, 8, 10] = True  # the last pixel of the batch
    _, _, stats = run_gated(*args, _gate(16), conv, decisions=decisions, schedule="compact")
    per_group = decisions.permute(1, 0, 2, 3).reshape(3, -1).sum(dim=1)
    exact_rows = int(per_group.sum())
    tiled_rows = int((-(-per_group // 8)).sum()) * 8  # full, remainder, 16-row tail and 8-row last tiles
    flat_k = kernels.compact_tiling(3 * 9 * 11, 32, 48, (3, 3), 16, 0.25, "first").flat_k
    assert flat_k  # 24 conditional input channels of 32: 9 * 24 = 216 K pairs pad to 224, per tap to 9 * 32
    steps = column_conditional_steps(kernels.base_mask(48, 32, 0.25, "first"), list(range(16)), stats.block_k, 9, True)
    assert steps * stats.block_k == 224
    assert int(stats.conditional_macs) == tiled_rows * 16 * 224
    assert tiled_rows - exact_rows < 3 * 8


# Active pixels per gate group: none, all, then remainders 0, 1, 15, 16, 17, 31 (block_m - 1) past whole
# 32-row tiles, 31 with no full tile, and a single pixel.
TAIL_COUNTS = (0, 48 * 48, 64, 33, 47, 48, 49, 63, 31, 1)


def scattered_decisions(counts: tuple[int, ...], batch: int, height: int, width: int, seed: int) -> torch.Tensor:
    """Bool ``[batch, len(counts), height, width]`` with ``counts[j]`` pixels of group ``j`` on, scattered at random."""
    gen = torch.Generator().manual_seed(seed)
    pixels = batch * height * width
    flat = torch.zeros(pixels, len(counts), dtype=torch.bool)
    for j, count in enumerate(counts):
        flat[torch.randperm(pixels, generator=gen)[:count], j] = True
    return flat.reshape(batch, height, width, len(counts)).permute(0, 3, 1, 2).contiguous()


def tail_rows(count: int, block_m: int) -> tuple[int, int]:
    """``(tiles, rows run)`` of a compacted column of ``count`` pixels: full ``block_m`` tiles, then the rest cut
    greedily into tiles of ``block_m/2, ..., 32`` rows (at most one each), then into 16-row ones while more than 8
    are left (the last one padded), then one 8-row tile for what is left (padded)."""
    tiles, rows, left = count // block_m, count // block_m * block_m, count % block_m
    height = block_m // 2
    while height >= 32:
        if left >= height:
            tiles, rows, left = tiles + 1, rows + height, left - height
        height //= 2
    while left > 8:
        tiles, rows, left = tiles + 1, rows + 16, left - 16
    if left > 0:
        tiles, rows = tiles + 1, rows + 8
    return tiles, rows


@pytest.mark.parametrize("block_m", [32, 128])
@pytest.mark.parametrize("kernel", [1, 3])
def test_remainder_tiles_run_each_remainder_once(kernel: int, block_m: int) -> None:
    """2304 pixels (own block_m 128; 32 by override): full tiles, then every remainder in 64/32/16/8-row tiles.

    Outputs poisoned; nothing in place, so every active pixel runs in the conditional launches.
    """
    args, conv = make_case(1, 16, 16 * len(TAIL_COUNTS), kernel, (48, 48), torch.bfloat16, seed=11, epilogue=True)
    decisions = scattered_decisions(TAIL_COUNTS, 1, 48, 48, seed=11)
    own = kernels.compact_tiling(2304, 16, 160, (kernel, kernel), 16, 0.25, "first")
    assert own.block_m == 128 and own.remainder_heights == (64, 32, 16, 8)
    tiling = dataclasses.replace(own, block_m=block_m, in_place_percent=0)
    _, _, stats = run_gated(*args, _gate(16), conv, decisions=decisions, schedule="compact", tiling=tiling)
    tiles = [tail_rows(count, block_m) for count in TAIL_COUNTS]
    expected = {32: [0, 72, 2, 2, 2, 2, 3, 3, 2, 1], 128: [0, 18, 1, 2, 2, 2, 3, 3, 2, 1]}[block_m]
    assert [t for t, _ in tiles] == expected
    assert [r for _, r in tiles] == [0, 2304, 64, 40, 48, 48, 56, 64, 32, 8]  # counts rounded up to 8 rows
    assert int(stats.tiles_conditional_executed) == sum(t for t, _ in tiles)
    steps = column_conditional_steps(kernels.base_mask(160, 16, 0.25, "first"), list(range(16)), stats.block_k,
                                     kernel * kernel, own.flat_k)  # fmt: skip
    assert int(stats.conditional_macs) == sum(r for _, r in tiles) * steps * 16 * stats.block_k


@pytest.mark.parametrize("pattern", ["one-pixel", "block_m-1", "block_m+1", "scattered"])
def test_tail_tiles_of_128_row_columns(pattern: str) -> None:
    """block_m 128 (8192 pixels, batch 1): a lone pixel runs one 8-row tile, not a 128-row one."""
    args, conv = make_case(1, 16, 32, 1, (64, 128), torch.float16, seed=12, epilogue=True, conv={})
    if pattern == "one-pixel":
        decisions = torch.zeros(1, 2, 64, 128, dtype=torch.bool)
        decisions[0, 1, 63, 127] = True  # the last pixel of the batch
    elif pattern == "scattered":
        decisions = torch.rand(1, 2, 64, 128, generator=torch.Generator().manual_seed(12)) < 0.004
    else:
        decisions = scattered_decisions((127, 129) if pattern == "block_m-1" else (129, 127), 1, 64, 128, seed=12)
    tiling = dataclasses.replace(kernels.compact_tiling(8192, 16, 32, (1, 1), 16, 0.25, "first"), in_place_percent=0)
    _, _, stats = run_gated(*args, _gate(16), conv, decisions=decisions, schedule="compact", tiling=tiling)
    counts = decisions.sum(dim=(0, 2, 3)).tolist()
    assert stats.block_m == 128
    assert int(stats.tiles_conditional_executed) == sum(tail_rows(c, 128)[0] for c in counts)
    rows = sum(tail_rows(c, 128)[1] for c in counts)
    assert rows - sum(counts) < 8 * len(counts)  # at most 7 padded rows per group
    assert int(stats.conditional_macs) == rows * 16 * stats.block_k  # 12 conditional channels, one 16-wide step
    if pattern == "one-pixel":
        assert int(stats.tiles_conditional_executed) == 1 and rows == 8


def test_tail_tiles_bound_the_padding_of_every_group() -> None:
    """Prediction only: on a layer of 65536 pixels (block_m 128), each group pays fewer than 8 padded rows."""
    counts = (0, 1, 11, 92, 100, 127, 128, 129, 65536, 300)
    decisions = scattered_decisions(counts, 16, 64, 64, seed=13)
    counters = gated_kernel_counters(decisions, 64, 16 * len(counts), (3, 3), gate_group=16, schedule="compact")
    stats = GatedConvStats(counters)
    tiling = kernels.compact_tiling(65536, 64, 16 * len(counts), (3, 3), 16, 0.25, "first")
    assert stats.block_m == 128 and tiling.tail_num_warps == 1
    assert [tiling.warps_of(height) for height in (128, *tiling.remainder_heights)] == [4, 4, 2, 1, 1]
    steps = column_conditional_steps(kernels.base_mask(16 * len(counts), 64, 0.25, "first"), list(range(16)),
                                     stats.block_k, 9, tiling.flat_k)  # fmt: skip
    assert int(stats.tiles_conditional_executed) == sum(tail_rows(c, 128)[0] for c in counts)
    assert int(stats.conditional_macs) == sum(tail_rows(c, 128)[1] for c in counts) * steps * 16 * stats.block_k
    assert [tail_rows(c, 128)[1] for c in (1, 11, 92, 100)] == [8, 16, 96, 104]  # 16, 16, 96, 112 with 16-row tails
    assert kernels.compact_tiling(31, 64, 64, (3, 3), 16, 0.25, "first").remainder_heights == (16, 8)  # block_m 16


# First-launch tiles of the in-place case: 2 images of 12x12 (288 pixels) in 64-row tiles (the last one 32 rows)
# x all 4 groups of 16 channels; share of each tile's pairs on.
IN_PLACE_SHARES = (1.0, 0.7, 0.3, 0.0, 1.0)


def in_place_decisions(shares: tuple[float, ...], seed: int) -> torch.Tensor:
    """Bool ``[2, 4, 12, 12]``: in each 64-pixel tile of the flattened batch, ``share`` of its pairs on, at random."""
    gen = torch.Generator().manual_seed(seed)
    flat = torch.zeros(288, 4, dtype=torch.bool)
    for tile, share in enumerate(shares):
        block = flat[tile * 64 : (tile + 1) * 64]
        chosen = torch.randperm(block.numel(), generator=gen)[: round(share * block.numel())]
        block.view(-1)[chosen] = True
    return flat.reshape(2, 12, 12, 4).permute(0, 3, 1, 2).contiguous()


@pytest.mark.parametrize("kernel", [1, 3])
@pytest.mark.parametrize("percent, in_place", [(100, [0, 4]), (60, [0, 1, 4]), (1, [0, 1, 2, 4]), (0, [])])
def test_tiles_mostly_on_run_their_conditional_work_in_place(kernel: int, percent: int, in_place: list[int]) -> None:
    """A first-launch tile with at least ``percent`` % of its pairs on runs them in place; the rest are compacted.

    Outputs poisoned, checked against the reference; counters against the independent count and the prediction.
    """
    args, conv = make_case(2, 24, 64, kernel, (12, 12), torch.bfloat16, seed=23, epilogue=True)
    decisions = in_place_decisions(IN_PLACE_SHARES, seed=23)
    own = kernels.compact_tiling(288, 24, 64, (kernel, kernel), 16, 0.25, "first")
    assert (own.base.block_m, own.base.groups_per_block) == (64, 4)
    tiling = dataclasses.replace(own, in_place_percent=percent)
    _, _, stats = run_gated(*args, _gate(16), conv, decisions=decisions, schedule="compact", tiling=tiling)
    flat = decisions.permute(0, 2, 3, 1).reshape(288, 4)
    here = kernels.gated_work.in_place_tiles(flat, own.base, percent)
    assert here[:, 0].nonzero().flatten().tolist() == in_place
    left = kernels.gated_work.pending_pairs(flat, own.base, here)
    assert int(left.sum()) == sum(int(flat[t * 64 : (t + 1) * 64].sum()) for t in range(5) if t not in in_place)
    assert int(stats.tiles_conditional_executed) >= len(in_place)


@pytest.mark.parametrize("layout", ["first", "grouped"])
@pytest.mark.parametrize("share", [0.9, 0.5, 0.1])
def test_in_place_tiles_of_groups_wider_than_one_sub_block(share: float, layout: str) -> None:
    """Groups of 160 channels (two column sub-blocks): a tile 90 % on runs both sub-blocks in place, 50 % and 10 %
    do not (their pixels run in two 16-row tail tiles, or one transposed 8-row last tile, per sub-block)."""
    args, conv = make_case(2, 16, 160, 3, (5, 6), torch.bfloat16, seed=25, epilogue=True)
    gen = torch.Generator().manual_seed(25)
    decisions = torch.zeros(60, dtype=torch.bool)
    decisions[torch.randperm(60, generator=gen)[: round(share * 60)]] = True
    decisions = decisions.reshape(2, 1, 5, 6)
    _, _, stats = run_gated(*args, _gate(160, layout), conv, decisions=decisions, schedule="compact")
    own = kernels.compact_tiling(60, 16, 160, (3, 3), 160, 0.25, layout)
    assert own.base.sub_blocks == 2 and own.base.block_m == 64  # one first-launch tile holds the whole batch
    in_place = share >= own.in_place_percent / 100
    assert own.block_m == 32
    assert int(stats.tiles_conditional_executed) == (1 if in_place else 2 * tail_rows(round(share * 60), 32)[0])


def test_a_mostly_on_layer_runs_in_place_on_the_decisions_it_computes() -> None:
    """Decisions made by the kernel (gate threshold shifted so most are on), 90 %: the tiles all on run in place."""
    args, conv = make_case(2, 24, 64, 3, (12, 12), torch.float16, seed=24, shift=1.5, epilogue=True)
    own = kernels.compact_tiling(288, 24, 64, (3, 3), 16, 0.25, "first")
    _, got, stats = run_gated(*args, _gate(16), conv, schedule="compact",
                              tiling=dataclasses.replace(own, in_place_percent=90))  # fmt: skip
    here = kernels.gated_work.in_place_tiles(got.permute(0, 2, 3, 1).reshape(288, 4), own.base, 90)
    assert 0 < int(here.sum()) and got.float().mean() > 0.9


# 2 images of 9x11 (198 pixels), 24 -> 48 channels, 3x3: own compact tiles are 128 rows.
OVERRIDE_LAYER = {"pixels": 198, "c_in": 24, "c_out": 48, "kernel": (3, 3)}


def own_tiling(schedule: str, gate_group: int) -> kernels.GatedTiling | kernels.CompactTiling:
    layer = OVERRIDE_LAYER
    return kernels.schedule_tiling(schedule, layer["pixels"], layer["c_in"], layer["c_out"], layer["kernel"],
                                   gate_group, 0.25, "first")  # fmt: skip


def _override(name: str) -> tuple[str, int, kernels.GatedTiling | kernels.CompactTiling]:
    """``(schedule, gate_group, tiling)`` of a valid override of the layer's own tiles."""
    replace = dataclasses.replace
    compact16 = own_tiling("compact", 16)
    if name == "compact-64-row-tiles-with-tails":  # full 64-row tiles, 16-row tails; first launch one group wide
        base = replace(compact16.base, block_m=32, block_n=16, groups_per_block=1, num_warps=2)
        return "compact", 16, replace(compact16, base=base, block_m=64, block_k=16, num_warps=2, tail_num_warps=2)
    if name == "compact-16-row-tiles-column-major":  # up to 12 full tiles a column, numbered group by group
        return "compact", 16, replace(compact16, block_m=16, tile_major=False, in_place_percent=0)
    if name == "compact-flat-k-flipped":
        return "compact", 16, replace(compact16, flat_k=not compact16.flat_k, block_k=32, num_stages=2)
    if name == "compact-32-wide-groups":
        compact32 = own_tiling("compact", 32)
        return "compact", 32, replace(compact32, block_m=32, block_k=64, base=replace(compact32.base, block_k=16))
    tiled8 = own_tiling("tiled", 8)  # two 8-channel groups per 16 columns
    return "tiled", 8, replace(tiled8, block_m=16, block_n=32, groups_per_block=4, block_k=16, num_warps=2)


OVERRIDES = ["compact-64-row-tiles-with-tails", "compact-16-row-tiles-column-major", "compact-flat-k-flipped",
             "compact-32-wide-groups", "tiled-wide"]


@pytest.mark.parametrize("name", OVERRIDES)
def test_tiling_override_runs_exactly_and_counts_as_predicted(name: str) -> None:
    """An accepted override changes tiles, never the result; the counters follow it and are predicted."""
    schedule, gate_group, tiling = _override(name)
    assert tiling != own_tiling(schedule, gate_group)
    layer = OVERRIDE_LAYER
    args, conv = make_case(2, layer["c_in"], layer["c_out"], 3, (9, 11), torch.bfloat16, seed=21, epilogue=True)
    out, got, stats = run_gated(*args, _gate(gate_group), conv, schedule=schedule, tiling=tiling)
    counted = tiling.columns if isinstance(tiling, kernels.CompactTiling) else tiling
    assert (stats.block_m, stats.block_n, stats.block_k) == (counted.block_m, counted.block_n, counted.block_k)
    own_out, own_decisions, _ = kernels.gated_conv2d_triton(
        *map(to_device, args), **_gate(gate_group), **{k: to_device(v) for k, v in conv.items()}, schedule=schedule
    )
    assert torch.equal(got, own_decisions.cpu())  # the same base sums decide the same way
    assert_matches(out, own_out.cpu().double(), own_out.cpu(), 9 * layer["c_in"])
    predicted = kernels.gated_kernel_bytes(got, layer["c_in"], layer["c_out"], (3, 3), gate_group=gate_group,
                                           schedule=schedule, element_size=2, residual=True, tiling=tiling)  # fmt: skip
    own = kernels.gated_kernel_bytes(got, layer["c_in"], layer["c_out"], (3, 3), gate_group=gate_group,
                                     schedule=schedule, element_size=2, residual=True)  # fmt: skip
    assert predicted != own  # other tiles issue other loads


def _bad_override(name: str) -> tuple[str, object, type[Exception], str]:
    replace = dataclasses.replace
    compact = own_tiling("compact", 16)
    cases = {
        "tuple": ("compact", tuple(dataclasses.astuple(compact)), TypeError,
                  r"tiling must be a kernels.gated_tiling.CompactTiling for the 'compact' schedule"),
        "tiled-for-compact": ("compact", own_tiling("tiled", 16), TypeError, "CompactTiling for the 'compact'"),
        "compact-for-tiled": ("tiled", compact, TypeError, "GatedTiling for the 'tiled' schedule"),
        "float-field": ("compact", replace(compact, block_m=16.0), TypeError, "tiling.block_m must be an int"),
        "base-float-field": ("compact", replace(compact, base=replace(compact.base, block_k=32.0)), TypeError,
                             "tiling.base.block_k must be an int"),
        "flat_k-int": ("compact", replace(compact, flat_k=1), TypeError, "tiling.flat_k must be a bool"),
        "tile_major-str": ("compact", replace(compact, tile_major="yes"), TypeError,
                           "tiling.tile_major must be a bool"),
        "conditional-columns": ("compact", replace(compact, block_n=32), ValueError,
                                "tiling.block_n=32 does not fit this layer: gate_group=16 over C_out=48 needs "
                                "block_n=16"),
        "base-group-slot": ("compact", replace(compact, base=replace(compact.base, group_slot=32, groups_per_block=1)),
                            ValueError, "tiling.base.group_slot=32 does not fit this layer"),
        "base-partial-groups": ("compact", replace(compact, base=replace(compact.base, block_n=128)), ValueError,
                                r"tiling.base: block_n=128 must hold whole gate groups: group_slot\*groups_per_block"),
        "block_m-48": ("compact", replace(compact, block_m=48), ValueError,
                       r"tiling: block_m=48 must be a power of two in \[16, 256\]"),
        "block_m-512": ("compact", replace(compact, block_m=512), ValueError, r"tiling: block_m=512 must"),
        "block_k-8": ("compact", replace(compact, block_k=8), ValueError, r"tiling: block_k=8 must .*\[16, 128\]"),
        "base-block_k-256": ("compact", replace(compact, base=replace(compact.base, block_k=256)), ValueError,
                             r"tiling.base: block_k=256 must"),
        "num_warps-3": ("compact", replace(compact, num_warps=3), ValueError, r"tiling: num_warps=3 must be one of"),
        "tail_num_warps-16": ("compact", replace(compact, tail_num_warps=16), ValueError,
                              "tiling.tail_num_warps: num_warps=16 must be one of"),
        "num_stages-0": ("compact", replace(compact, num_stages=0), ValueError, "tiling: num_stages=0 must be >= 1"),
        "tiled-block_n-8": ("tiled", replace(own_tiling("tiled", 8), block_n=8, groups_per_block=1), ValueError,
                            r"tiling: block_n=8 must be a power of two in \[16, 128\]"),
        "tiled-sub-blocks": ("tiled", replace(own_tiling("tiled", 16), sub_blocks=2), ValueError,
                             "tiling.sub_blocks=2 does not fit this layer"),
    }
    return cases[name]


BAD_OVERRIDES = ["tuple", "tiled-for-compact", "compact-for-tiled", "float-field", "base-float-field", "flat_k-int",
                 "tile_major-str", "conditional-columns", "base-group-slot", "base-partial-groups", "block_m-48",
                 "block_m-512", "block_k-8", "base-block_k-256", "num_warps-3", "tail_num_warps-16", "num_stages-0",
                 "tiled-block_n-8", "tiled-sub-blocks"]  # fmt: skip


@pytest.mark.parametrize("name", BAD_OVERRIDES)
def test_bad_tiling_override_is_rejected_by_kernel_and_predictions_naming_the_field(name: str) -> None:
    schedule, tiling, error, message = _bad_override(name)
    gate_group = 8 if name == "tiled-block_n-8" else 16
    layer = OVERRIDE_LAYER
    args, conv = make_case(2, layer["c_in"], layer["c_out"], 3, (9, 11), torch.float32, seed=22)
    with pytest.raises(error, match=message):
        kernels.gated_conv2d_triton(*args, **_gate(gate_group), **conv, schedule=schedule, tiling=tiling)
    decisions = torch.zeros(2, -(-layer["c_out"] // gate_group), 9, 11, dtype=torch.bool)
    with pytest.raises(error, match=message):
        gated_kernel_counters(decisions, layer["c_in"], layer["c_out"], (3, 3), gate_group=gate_group,
                              schedule=schedule, tiling=tiling)  # fmt: skip
    with pytest.raises(error, match=message):
        kernels.gated_kernel_bytes(decisions, layer["c_in"], layer["c_out"], (3, 3), gate_group=gate_group,
                                   schedule=schedule, element_size=4, tiling=tiling)  # fmt: skip


COMPACTIONS = {"spec": kernels.active_rows, "kernels": active_rows_triton}


@pytest.mark.parametrize("compaction", COMPACTIONS)
def test_active_rows_match_nonzero_per_group(compaction: str) -> None:
    """The PyTorch spec and the two Triton launches the launcher runs (tiles of 256 pixels x 16 groups)."""
    build = COMPACTIONS[compaction]
    gen = torch.Generator().manual_seed(9)
    cases = ((1, 1, 1.0), (37, 3, 0.3), (200, 5, 0.05), (64, 2, 0.0), (2304, 10, 0.01), (1000, 20, 0.5),
             (513, 17, 1.0), (600, 1, 0.2))  # fmt: skip
    for pixels, groups, density in cases:
        flat = torch.rand(pixels, groups, generator=gen) < density
        rows, counts = build(to_device(flat.to(torch.uint8)))
        rows, counts = rows.cpu(), counts.cpu()
        assert rows.shape == (groups, pixels + 1) and rows.dtype == counts.dtype == torch.int32
        for j in range(groups):
            expected = flat[:, j].nonzero().flatten()
            assert int(counts[j]) == expected.numel()
            assert torch.equal(rows[j, : expected.numel()].long(), expected)
    empty_rows, empty_counts = build(to_device(torch.zeros(0, 3, dtype=torch.bool)))
    assert empty_rows.shape == (3, 1) and empty_counts.cpu().tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match=r"decisions_flat must be \[M, G\]"):
        build(torch.zeros(2, 3, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="decisions_flat must be bool or uint8, got torch.float32"):
        build(torch.zeros(2, 3))


def test_compaction_kernel_bytes_hand_count() -> None:
    """2048 pixels x 2 groups, 43 pairs on: decisions read twice, 8 x 2 tile cells, one row index per pair."""
    assert kernels.active_rows_kernel_bytes(2048, 2, 43) == 2 * 4096 + 28 * 16 + 8 * 2 + 4 * 43
    assert kernels.active_rows_kernel_bytes(2048, 2, 43) < kernels.active_rows_bytes(2048, 2) / 20


def test_schedule_is_checked_and_auto_compacts_groups_of_16_or_more() -> None:
    assert [kernels.resolve_schedule("auto", g, 64) for g in (1, 8, 12, 16, 64, 500)] == [
        "tiled", "tiled", "compact", "compact", "compact", "compact"
    ]  # fmt: skip
    assert kernels.resolve_schedule("auto", 64, 8) == "tiled" and kernels.resolve_schedule("tiled", 64, 64) == "tiled"
    args = gated_args() | {"gate_group": 8}
    with pytest.raises(ValueError, match="schedule must be one of"):
        call_gated(kernels.gated_conv2d_triton, args | {"schedule": "sparse"})
    with pytest.raises(TypeError, match="schedule must be a str"):
        gated_kernel_counters(torch.zeros(2, 1, 4, 4, dtype=torch.bool), 8, 8, (3, 3), gate_group=8, schedule=1)


@pytest.mark.parametrize(
    "gate_group, c_out",
    [(5, 23), (12, 40), (40, 40), (1000, 40), (160, 160), (144, 150)],
    ids=["odd", "non-power-of-two", "whole-layer", "larger-than-c_out", "two-sub-blocks", "ragged-sub-blocks"],
)
def test_any_gate_group_size(gate_group: int, c_out: int) -> None:
    args, conv = make_case(1, 8, c_out, 3, (5, 6), torch.bfloat16, seed=gate_group, epilogue=True)
    _, decisions, stats = run_gated(*args, _gate(gate_group, "grouped"), conv)
    assert decisions.shape == (1, math.ceil(c_out / gate_group), 5, 6)
    assert stats.sub_blocks == math.ceil(min(gate_group, c_out) / 128)


@pytest.mark.parametrize(
    "gate_group, block_n, groups_per_block",
    [(1, 16, 16), (8, 16, 2), (16, 16, 1), (32, 32, 1), (64, 64, 1), (12, 16, 1), (100, 128, 1)],
)
def test_tiling_puts_whole_gate_groups_in_each_program(gate_group: int, block_n: int, groups_per_block: int) -> None:
    tiling = gated_tiling(100_000, 256, 512, gate_group, 0.25)
    assert (tiling.block_n, tiling.groups_per_block, tiling.sub_blocks) == (block_n, groups_per_block, 1)
    assert tiling.block_m == 128 and tiling.block_k == 32


@pytest.mark.parametrize(
    "c_in, base_fraction, layout, alignment",
    [(32, 0.25, "first", 8), (20, 0.25, "first", 1), (32, 0.25, "grouped", 8), (24, 0.25, "grouped", 1),
     (32, 0.5, "grouped", 8)],
)  # fmt: skip
def test_base_intervals_follow_the_partition(c_in: int, base_fraction: float, layout: str, alignment: int) -> None:
    lo, hi, align, uniform, uniform_lo, uniform_hi = base_intervals(40, c_in, base_fraction, layout, torch.device("cpu"))
    assert uniform == (layout == "first")
    assert (uniform_lo, uniform_hi) == ((0, int(hi[0])) if uniform else (0, 0))
    channel = torch.arange(c_in)
    interval_mask = (channel >= lo[:, None]) & (channel < hi[:, None])
    assert torch.equal(interval_mask, kernels.base_mask(40, c_in, base_fraction, layout))
    assert lo.dtype == torch.int32 and align == alignment


def test_empty_batch_returns_empty_results_and_zero_counters() -> None:
    x = torch.zeros(0, 8, 5, 5, dtype=torch.float16, device=DEVICE)
    weight = torch.zeros(20, 8, 3, 3, dtype=torch.float16, device=DEVICE)
    gate_scale, gate_shift = torch.ones(20, device=DEVICE), torch.zeros(20, device=DEVICE)
    out, decisions, counters = kernels.gated_conv2d_triton(x, weight, gate_scale, gate_shift, gate_group=8)
    assert out.shape == (0, 20, 3, 3) and decisions.shape == (0, 3, 3, 3) and counters.shape == (0,)
    counted = GatedConvStats(
        kernels.gated_conv2d_triton(x, weight, gate_scale, gate_shift, gate_group=16, count_work=True)[2]
    )
    assert counted.to_dict()["tiles_total"] == 0 and counted.block_m == 16  # the compacted tiles' smallest
    empty = torch.zeros(0, 2, 3, 3, dtype=torch.bool, device=DEVICE)
    assert gated_kernel_counters(empty, 8, 20, (3, 3), gate_group=16).tolist() == counted.counters.tolist()
    out, decisions, stats = kernels.gated_conv2d(x, weight, gate_scale, gate_shift, gate_group=8, return_stats=True)
    assert out.shape == (0, 20, 3, 3) and decisions.shape == (0, 3, 3, 3) and decisions.dtype == torch.bool
    assert stats.to_dict()["tiles_total"] == 0 and stats.to_dict()["base_macs"] == 0


def gated_args() -> dict[str, object]:
    """A valid gated call: :func:`conv_args` plus gate_scale/gate_shift [8]."""
    return conv_args() | {"gate_scale": torch.ones(8), "gate_shift": torch.zeros(8)}


GATED_BAD_ARGS = COMMON_BAD_ARGS | {
    "gate_scale-list": (set_arg("gate_scale", [1.0] * 8), TypeError, "gate_scale must be a torch.Tensor"),
    "gate_scale-shape": (set_arg("gate_scale", lambda: torch.ones(9)), ValueError, "gate_scale must be"),
    "gate_scale-device": (
        set_arg("gate_scale", lambda: torch.ones(8, device=META)), ValueError, "gate_scale is on meta"
    ),
    "gate_shift-shape": (set_arg("gate_shift", lambda: torch.ones(1, 8)), ValueError, "gate_shift must be"),
    "gate_shift-device": (
        set_arg("gate_shift", lambda: torch.ones(8, device=META)), ValueError, "gate_shift is on meta"
    ),
    "base_layout": (set_arg("base_layout", "diagonal"), ValueError, "base_layout must be one of"),
    "base_layout-type": (set_arg("base_layout", 1), TypeError, "base_layout must be a str"),
    "gate_group": (set_arg("gate_group", 0), ValueError, "gate_group must be"),
    "gate_group-bool": (set_arg("gate_group", True), TypeError, "gate_group must be an int"),
    "base_fraction": (set_arg("base_fraction", 0.0), ValueError, "base_fraction"),
    "base_fraction-type": (set_arg("base_fraction", "1/4"), TypeError, "base_fraction"),
    "grouped-fraction": (lambda a: a.update(base_layout="grouped", base_fraction=0.3), ValueError, "base_fraction"),
    "decisions-shape": (
        set_arg("decisions", lambda: torch.zeros(2, 2, 4, 4, dtype=torch.bool)), ValueError, "decisions must be"
    ),
    "decisions-dtype": (set_arg("decisions", lambda: torch.zeros(2, 1, 4, 4)), TypeError, "decisions must be"),
    "decisions-device": (
        set_arg("decisions", lambda: torch.zeros(2, 1, 4, 4, dtype=torch.bool, device=META)),
        ValueError,
        "decisions is on meta",
    ),
}


def call_gated(fn: Callable[..., object], args: dict[str, object]) -> object:
    args = dict(args)
    return fn(args.pop("x"), args.pop("weight"), args.pop("gate_scale"), args.pop("gate_shift"), **args)


ENTRY_POINTS = {
    "kernel": kernels.gated_conv2d_triton, "op": kernels.gated_conv2d, "reference": kernels.gated_conv2d_reference
}  # fmt: skip


@pytest.mark.parametrize("fn", list(ENTRY_POINTS))
@pytest.mark.parametrize("case", GATED_BAD_ARGS, ids=str)
def test_bad_arguments_raise_the_policy_error_naming_them(fn: str, case: str) -> None:
    mutate, error, message = GATED_BAD_ARGS[case]
    args = gated_args() | {"gate_group": 8}
    mutate(args)
    with pytest.raises(error, match=message):
        call_gated(ENTRY_POINTS[fn], args)


def test_kernel_rejects_float64_and_cpu_without_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    args = {k: v.double() for k, v in gated_args().items()}
    with pytest.raises(NotImplementedError, match="float64"):
        call_gated(kernels.gated_conv2d_triton, args)
    out, decisions, stats = call_gated(kernels.gated_conv2d_reference, args | {"return_stats": True})
    assert out.dtype == torch.float64 and decisions.shape == (2, 1, 4, 4) and stats is None
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    # A CPU tensor is a configuration the Triton kernel does not support: NotImplementedError by the policy.
    with pytest.raises(NotImplementedError, match="CUDA tensor"):
        call_gated(kernels.gated_conv2d_triton, gated_args())


def test_gated_kernel_compiles_for_hopper_with_tensor_cores(tmp_path: Path) -> None:
    common = {"KH": 3, "KW": 3, "BLOCK_M": 64, "BLOCK_K": 32, "COUNT_STATS": True, "HAS_SCALE": True,
              "HAS_SHIFT": True, "HAS_RESIDUAL": True, "RELU": True, "UPCAST_DOT": False,
              "DOT_PRECISION": "tf32"}  # fmt: skip
    tilings = [(16, 1, 16, 1, False, 1, False, False), (64, 64, 1, 1, False, 8, False, False),
               (128, 128, 1, 2, True, 8, False, False), (64, 16, 4, 1, False, 8, True, False),
               (128, 128, 1, 2, True, 8, True, False), (64, 64, 1, 1, False, 8, True, True)]  # fmt: skip
    pointers = {name: "*bf16" for name in ("x_ptr", "w_ptr", "y_ptr", "res_ptr")}
    pointers |= {"dec_ptr": "*u8", "base_lo_ptr": "*i32", "base_hi_ptr": "*i32", "stats_ptr": "*i64"}
    variants = [
        (pointers, common | {"BLOCK_N": n, "GROUP_SLOT": slot, "GROUPS_PER_BLOCK": gpb, "SUB_BLOCKS": subs,
                             "HAS_DECISIONS": given, "DEFER_DECISIONS": defer, "RANGE_ALIGN": align,
                             "COMPACT": compact,
                             "BASE_PATH": 0 if align == 8 else 1, "COND_PATH": 0 if align == 8 else 2,
                             "SLOT_IS_GROUP": slot == 16})  # fmt: skip
        for n, slot, gpb, subs, given, align, compact, defer in tilings
    ]
    compiled = compile_for_hopper("kernels.gated_conv2d", "_gated_conv2d_kernel", variants, tmp_path)
    assert compiled == [True] * len(variants)
    pointers = {name: "*bf16" for name in ("x_ptr", "w_ptr", "y_ptr", "res_ptr")}
    pointers |= {"rows_ptr": "*i32", "counts_ptr": "*i32", "base_lo_ptr": "*i32", "base_hi_ptr": "*i32",
                 "stats_ptr": "*i64"}  # fmt: skip
    # TILES: 1 full tiles, 2 the 16-row tail tiles of MAIN_BLOCK_M columns, 3 a remainder level, 4 the 8-row last
    # tile (transposed)
    conditional = [
        (pointers, common | {"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "GROUP_SLOT": n, "SUB_BLOCKS": subs,
                             "RANGE_ALIGN": 8, "FLAT_K": flat, "BASE_PATH": 1 if flat else 0, "COND_PATH": 2 if flat else 0,
                             "SLOT_IS_GROUP": subs == 1, "TILES": tiles, "MAIN_BLOCK_M": main,
                             "TILE_MAJOR": tiles != 3})  # fmt: skip
        for m, n, k, subs, flat, tiles, main in (
            (16, 16, 64, 1, False, 2, 128), (128, 16, 16, 1, True, 1, 128), (64, 64, 32, 1, False, 3, 128),
            (64, 128, 64, 2, False, 1, 64), (8, 16, 32, 1, True, 4, 16), (8, 32, 64, 1, False, 4, 128),
        )  # fmt: skip
    ]
    compiled = compile_for_hopper("kernels.gated_conditional", "_gated_conditional_kernel", conditional, tmp_path)
    assert compiled == [True] * len(conditional)


def test_kernel_counters_reject_decisions_of_another_layer() -> None:
    """A decisions tensor whose group count does not fit the layer is refused, naming both."""
    with pytest.raises(ValueError, match=r"bool \[N, 3, OH, OW\].*out_channels=20.*\(2, 2, 3, 3\)"):
        gated_kernel_counters(torch.zeros(2, 2, 3, 3, dtype=torch.bool), 8, 20, (3, 3), gate_group=8)
    with pytest.raises(ValueError, match="bool"):
        gated_kernel_counters(torch.zeros(2, 3, 3, 3), 8, 20, (3, 3), gate_group=8)


def _bytes_case() -> torch.Tensor:
    """Decisions of a 1x1, 16 -> 32 channel layer (gate groups of 16) on 2 x 32 x 32 pixels: 3 and 40 active."""
    flat = torch.zeros(2048, 2, dtype=torch.bool)
    flat[[0, 1, 100], 0] = True  # group 0: pixel tiles 0 and 1 of 64
    flat[:40, 1] = True  # group 1: pixel tile 0
    return flat.reshape(2, 32, 32, 2).permute(0, 3, 1, 2)


def test_gated_kernel_bytes_hand_count_compact() -> None:
    """First launch: 32 programs of 64 pixels x 32 columns (both groups), one K step of 16 (base channels 0-3).

    Conditional launches: block_m 32 (2048 // 64), block_n 16, one K step of 16 (channels 4-15); group 0's 3
    pixels run one 8-row last tile, group 1's 40 one full 32-row tile and one 8-row last tile. Nothing runs
    in place (``in_place_percent`` 0), then the first tile (42 of its 128 pairs on) does, at 30 %.
    """
    decisions = _bytes_case()
    own = dataclasses.replace(kernels.compact_tiling(2048, 16, 32, (1, 1), 16, 0.25, "first"), in_place_percent=0)
    got = kernels.kernel_bytes.gated_kernel_bytes(decisions, 16, 32, (1, 1), gate_group=16, element_size=2,
                                                  tiling=own)  # fmt: skip
    step = (64 * 16 + 16 * 32) * 2  # one A tile and one B tile
    active = (3 + 40) * 16  # (pixel, channel) pairs whose gate is on
    # + decisions, the gated-off pairs' outputs (the conditional launch stores the others), base sums
    first = 32 * step + 32 * 64 * 2 * 1 + (32 * 64 * 32 - active) * 2 + 4 * active
    between = kernels.active_rows_kernel_bytes(2048, 2, 3 + 40)  # the compaction kernels (hand count above)
    rows, tiles = 8 + 32 + 8, 3
    conditional = rows * (4 + 4 * 16 + 2 * 16) + rows * 16 * 2 + tiles * 16 * 16 * 2  # ids, sums, outputs; A; B
    assert got == (first, between, conditional) and got.total == first + between + conditional
    in_place = kernels.kernel_bytes.gated_kernel_bytes(decisions, 16, 32, (1, 1), gate_group=16, element_size=2,
                                                       tiling=dataclasses.replace(own, in_place_percent=30))
    left = 16  # group 0's pixel 100 (tile 1) is the only pair left to the conditional launch
    # + the tile's conditional K step, the uint8 pairs left; every output of tile 0 stored, base sums of one pair
    assert in_place.first == 33 * step + 32 * 64 * 2 + 2048 * 2 + (32 * 64 * 32 - left) * 2 + 4 * left
    assert in_place.between == kernels.active_rows_kernel_bytes(2048, 2, 1)
    assert in_place.conditional == 8 * (4 + 4 * 16 + 2 * 16) + 8 * 16 * 2 + 16 * 16 * 2  # one 8-row last tile
    with_residual = kernels.kernel_bytes.gated_kernel_bytes(
        decisions, 16, 32, (1, 1), gate_group=16, element_size=2, residual=True, tiling=own
    )
    assert with_residual.first - got.first == (32 * 64 * 32 - active) * 2
    assert with_residual.conditional - got.conditional == rows * 16 * 2
    # 2x2 gate blocks: float32 statistics instead of decisions, every pair's base sum kept and output stored
    # (decided after the first launch), the block means
    blocks = kernels.kernel_bytes.gated_kernel_bytes(
        decisions, 16, 32, (1, 1), gate_group=16, gate_block=2, element_size=2,
        tiling=dataclasses.replace(own, in_place_percent=30),  # in place only when deciding per pixel
    )
    assert blocks.first - got.first == 32 * 64 * 2 * 3 + 4 * (2048 * 32 - active) + active * 2
    pool, rows_out, cols_out, decide = 16 * (1024 + 256), 16 * (256 + 512), 16 * (512 + 1024), 4 * 1024 * 7
    assert blocks.between - got.between == pool + rows_out + cols_out + decide
    empty = kernels.kernel_bytes.gated_kernel_bytes(decisions[:0], 16, 32, (1, 1), gate_group=16, element_size=2)
    assert empty.total == 0


def test_gated_kernel_bytes_hand_count_tiled() -> None:
    """One launch of 32 x 2 programs (64 pixels x one group of 16 columns); 3 of them run the conditional loop."""
    decisions = _bytes_case()
    got = kernels.kernel_bytes.gated_kernel_bytes(
        decisions, 16, 32, (1, 1), gate_group=16, element_size=2, schedule="tiled"
    )
    step = (64 * 16 + 16 * 16) * 2
    first = 64 * step + 64 * 64 * 1 + 64 * 64 * 16 * 2  # base loops, decisions, outputs
    assert got == (first, 0, 3 * step)
    given = kernels.kernel_bytes.gated_kernel_bytes(
        decisions, 16, 32, (1, 1), gate_group=16, element_size=2, schedule="tiled", decisions_given=True
    )
    assert given == got  # decisions loaded instead of stored, the base loop run once either way


def test_dense_kernel_bytes_hand_count() -> None:
    """Heuristic tiles of 2048 pixels, 16 -> 32 channels: 64 x 32, block_k 16: 32 programs, one K step each."""
    assert kernels.kernel_bytes.dense_kernel_bytes(2048, 16, 32, (1, 1), element_size=2) == 32 * (
        (64 * 16 + 16 * 32) + 64 * 32
    ) * 2
    # 3x3, 40 -> 20 channels at 50 pixels: 64 x 32 tiles, block_k 32: one program of 9 * 2 K steps
    assert kernels.kernel_bytes.dense_kernel_bytes(50, 40, 20, (3, 3), element_size=4, residual=True) == (
        18 * (64 * 32 + 32 * 32) + 2 * 64 * 32
    ) * 4
    # MACs in the same tiles: 32 programs x 1 step x 64*32*16, and 1 program x 18 steps x 64*32*32
    assert kernels.kernel_bytes.dense_kernel_macs(2048, 16, 32, (1, 1)) == 32 * 64 * 32 * 16 == 2048 * 32 * 16
    assert kernels.kernel_bytes.dense_kernel_macs(50, 40, 20, (3, 3)) == 18 * 64 * 32 * 32 > 50 * 20 * 9 * 40
    tiling = kernels.conv_tuning.ConvTiling(64, 32, 32, 4, 3, 8, 2)
    with pytest.raises(ValueError, match="split_k"):
        kernels.kernel_bytes.dense_kernel_bytes(50, 40, 20, (3, 3), element_size=2, tiling=tiling)
    with pytest.raises(ValueError, match="split_k"):
        kernels.kernel_bytes.dense_kernel_macs(50, 40, 20, (3, 3), tiling=tiling)
