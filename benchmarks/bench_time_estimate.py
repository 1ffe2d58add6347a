"""Roofline time estimates from counts (hand cases) and the gate-granularity study's choice of defaults."""

from __future__ import annotations

import pytest

from benchmarks.gate_group_study import choose_default
from benchmarks.time_estimate import BALANCES, balance_of, time_ratio, time_ratio_bounds


def _layer(gated: tuple[float, float], dense: tuple[float, float], layers: int = 1) -> dict[str, float]:
    return {"kernel_macs": gated[0], "kernel_bytes": gated[1], "dense_kernel_macs": dense[0],
            "dense_kernel_bytes": dense[1], "layers": layers}  # fmt: skip


def test_time_ratio_by_hand() -> None:
    layers = [_layer((50, 100), (100, 100)), _layer((10, 40), (10, 80), layers=2)]
    # balance 2 FLOP/byte: layer times max(2*macs/2, bytes): gated 100 + 2*40, dense 100 + 2*80
    assert time_ratio(layers, 2.0) == pytest.approx(180 / 260)
    # balance 0.5: gated max(200, 100) + 2*max(40, 40) = 280, dense 400 + 2*80 = 560
    assert time_ratio(layers, 0.5) == pytest.approx(0.5)
    bounds = time_ratio_bounds(layers)
    assert bounds["compute_bound"] == pytest.approx(70 / 120)
    assert bounds["memory_bound"] == pytest.approx(180 / 260)
    assert bounds["worst"] == pytest.approx(max(time_ratio(layers, b) for b in BALANCES))


def test_worst_case_can_lie_between_the_limits() -> None:
    # each layer saves only on its non-binding resource, so both limits show a saving that no balance has
    layers = [_layer((100, 0.5), (100, 1)), _layer((0.5, 100), (1, 100))]
    bounds = time_ratio_bounds(layers)
    assert bounds["compute_bound"] == pytest.approx(100.5 / 101)
    assert bounds["memory_bound"] == pytest.approx(100.5 / 101)
    assert bounds["worst"] == pytest.approx(1.0)


def test_balance_and_bad_input() -> None:
    assert balance_of(1000.0, 4000.0) == pytest.approx(250.0)
    with pytest.raises(ValueError, match="peaks must be positive"):
        balance_of(0.0, 1.0)
    with pytest.raises(ValueError, match="balance"):
        time_ratio([_layer((1, 1), (1, 1))], 0.0)
    with pytest.raises(ValueError, match="at least one layer"):
        time_ratio_bounds([])


def _setting(group: int, block: int, gap: float, worst: float, overhead: float = 1.05) -> dict[str, float]:
    return {"gate_group": group, "gate_block": block, "coherence_weight": 0.0, "mean_gap": gap,
            "mean_time_ratio_worst": worst, "mean_kernel_overhead": overhead}  # fmt: skip


def test_default_is_the_fastest_estimate_within_half_a_point_of_the_best_gap() -> None:
    settings = [_setting(16, 1, 0.10, 0.60), _setting(64, 1, 0.55, 0.50), _setting(64, 4, 0.70, 0.40)]
    chosen = choose_default(settings)
    # g64-b4 is fastest but 0.6 points behind the best gap; g64 (0.45 behind) is the fastest of the rest
    assert (chosen["gate_group"], chosen["gate_block"]) == (64, 1)
    assert chosen["eligible"] == ["g16", "g64"]
    # a tie in the estimate goes to the lower kernel overhead
    tie = [_setting(16, 1, 0.0, 0.5, overhead=1.10), _setting(32, 1, 0.0, 0.5, overhead=1.04)]
    assert choose_default(tie)["gate_group"] == 32
    # the window is inclusive, whatever the float rounding of the means of percentages (the study's own case:
    # mean gaps -0.2666... and 0.2333..., exactly half a point apart up to rounding)
    edge = [_setting(16, 1, -0.2666666666666657, 0.6), _setting(16, 4, -0.2666666666666657 + 0.5 + 1e-12, 0.5)]
    assert choose_default(edge)["eligible"] == ["g16", "g16-b4"]
    with pytest.raises(ValueError, match="at least one setting"):
        choose_default([])
