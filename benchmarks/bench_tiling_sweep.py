"""Tile variants of the compacted gated kernel (``benchmarks.tiling_sweep``): variants, counts, summary, CLI.

The timed path runs the real kernel under the Triton interpreter on CPU (only
``do_bench`` is replaced), so the variants' outputs are compared for real.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

import kernels
from benchmarks import tiling_sweep, timing
from benchmarks.recorded import record_decisions, recorded_records, save_decisions
from benchmarks.sweep import Sweep
from gating import GateConfig, GatedModel
from gating.models import resnet20


def _recorded(batch: int = 4, gate_group: int = 16) -> list:
    """Decisions of a calibrated ResNet-20 of width 8 (8/16/32 channels) on 12x12 images."""
    torch.manual_seed(1)
    model = GatedModel(resnet20(num_classes=10, width=8), GateConfig(gate_group=gate_group))
    images = torch.randn(batch, 3, 12, 12)
    model.calibrate(images, 0.5)
    return record_decisions(model.eval(), images, prefix="tiny.")


def test_variants_replace_only_the_conditional_tile_height() -> None:
    own = kernels.compact_tiling(4096, 64, 128, (3, 3), 32, 0.25, "first")
    variants = tiling_sweep.layer_variants(own, (16, 128), column_major=True)
    assert list(variants) == ["own", "block_m=16", "block_m=128", "column_major"]
    assert own.tile_major and variants["column_major"] == dataclasses.replace(own, tile_major=False)
    assert variants["own"] is own
    for name, block_m, warps in (("block_m=16", 16, 4), ("block_m=128", 128, 4)):
        tiling = variants[name]
        assert (tiling.block_m, tiling.num_warps) == (block_m, warps)
        assert (tiling.base, tiling.block_n, tiling.block_k, tiling.flat_k) == (own.base, own.block_n, own.block_k,
                                                                                own.flat_k)  # fmt: skip
        kernels.check_gated_tiling(tiling, own, "compact", 32, 128)  # the kernel accepts every variant


def test_records_count_each_compacted_layer_per_variant_and_skip_the_rest() -> None:
    layers = _recorded()
    records = tiling_sweep.variant_records(layers, "tiny", batches=(2, 4, 8), block_ms=(16, 64))
    compacted = [layer for layer in layers if layer.out_channels >= 16]  # 8-channel groups: the tiled schedule
    assert len(compacted) < len(layers)
    assert len(records) == len(compacted) * 2 * 3  # batches 2 and 4 (8 > the recording), own + 2 variants
    reference = {(r["shape"], r["batch"]): r for r in recorded_records(layers, (2, 4), "tiny")}
    for record in records:
        counted = reference[(record["shape"], record["batch"])]
        assert record["conditional_macs"] == counted["conditional_macs"]  # accounting's exact count
        if record["variant"] == "own":  # the default tiles count as every other benchmark counts them
            assert record["kernel_conditional_macs"] == counted["kernel_conditional_macs"]
            assert record["kernel_bytes"] == counted["kernel_bytes"]
        if record["conditional_macs"]:
            assert record["kernel_overhead"] == record["kernel_conditional_macs"] / record["conditional_macs"] >= 1
        else:
            assert record["kernel_overhead"] is None and record["kernel_conditional_macs"] == 0
        assert "ms" not in record


def test_a_group_with_one_active_pixel_pads_to_8_rows_at_every_height() -> None:
    """Remainder tiles: a group's last rows run in 16- and 8-row tiles whatever the main height, so only bytes
    differ."""
    layer = _recorded()[-1]
    lone = torch.zeros_like(layer.decisions)
    lone[0, 0, 0, 0] = True
    one = dataclasses.replace(layer, decisions=lone)
    records = {r["variant"]: r for r in tiling_sweep.variant_records([one], "tiny", (4,), (16, 32, 64))}
    assert len({r["kernel_conditional_macs"] for r in records.values()}) == 1
    # one pixel of one 16-channel group: an 8-row last tile, the K walk padded by less than a fifth
    assert all(8 <= r["kernel_overhead"] < 8 * 1.2 for r in records.values())
    assert len({r["kernel_bytes"] for r in records.values()}) == 1  # a lone row: no full tile at any height


def test_summary_adds_layers_per_model_batch_and_variant() -> None:
    def record(shape: str, variant: str, exact: int, kernel_macs: int, nbytes: int, ms: float | None) -> dict:
        timed = {} if ms is None else {"ms": {"median": ms}}
        return {"model": "m", "shape": shape, "batch": 8, "variant": variant, "conditional_macs": exact,
                "kernel_conditional_macs": kernel_macs, "kernel_overhead": kernel_macs / exact if exact else None,
                "kernel_macs": 2 * kernel_macs, "kernel_bytes": nbytes, "dense_kernel_macs": 10 * exact + 100,
                "dense_kernel_bytes": 1000, **timed}  # fmt: skip

    records = [record("a", "own", 100, 120, 400, 2.0), record("b", "own", 0, 0, 600, 1.0),
               record("a", "block_m=64", 100, 150, 300, 1.0), record("b", "block_m=64", 0, 0, 500, 1.0)]  # fmt: skip
    rows = {row["variant"]: row for row in tiling_sweep.summarize_variants(records)}
    assert rows["own"]["kernel_overhead"] == pytest.approx(1.2) and rows["own"]["bytes_vs_own"] == 1.0
    assert rows["block_m=64"]["kernel_overhead"] == pytest.approx(1.5)
    assert rows["block_m=64"]["worst_layer_kernel_overhead"] == pytest.approx(1.5)  # layer b has no work
    assert rows["block_m=64"]["bytes_vs_own"] == pytest.approx(800 / 1000)
    assert rows["block_m=64"]["ms"] == 2.0 and rows["block_m=64"]["ms_vs_own"] == pytest.approx(2 / 3)
    # memory-bound limit: summed bytes over the dense kernel's (2 layers x 1000)
    assert rows["block_m=64"]["estimate"]["memory_bound"] == pytest.approx(800 / 2000)
    untimed = tiling_sweep.summarize_variants([{k: v for k, v in r.items() if k != "ms"} for r in records])
    assert all("ms" not in row for row in untimed)


def test_timed_variants_run_the_kernel_and_give_the_own_tiles_output(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every variant's output equals the own tiles' (rows only regroup); do_bench is faked."""
    monkeypatch.setattr(timing, "time_ms", lambda fn, sweep: {"median": 1.0, "p20": 0.5, "p80": 2.0})
    layer = next(layer for layer in _recorded(batch=2) if layer.out_channels == 32)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: the root conftest.py set the interpreter
    records = tiling_sweep.variant_records([layer], "tiny", (2,), (16, 32), sweep=Sweep(), device=device)
    assert [r["variant"] for r in records] == ["own", "block_m=16", "block_m=32"]
    for record in records:
        assert record["ms"]["median"] == 1.0
        assert record["max_abs_diff_vs_own"] == 0.0


def test_count_only_command_writes_the_json_and_refuses_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    decisions = tmp_path / "tiny.pt"
    save_decisions(_recorded(), decisions, {"kind": "test"})
    out = tmp_path / "sweep.json"
    argv = ["--decisions", str(decisions), "--batches", "4", "--block-m", "16", "64", "--count-only", "--out", str(out)]
    assert tiling_sweep.main(argv) == 0
    payload = json.loads(out.read_text())
    assert payload["parameters"]["block_m"] == [16, 64]
    assert {row["variant"] for row in payload["summary"]} == {"own", "block_m=16", "block_m=64"}
    assert "block_m=64" in capsys.readouterr().out
    assert tiling_sweep.main([*argv[:1], str(tmp_path / "missing.pt"), *argv[2:]]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        tiling_sweep.main(["--decisions", str(decisions), "--block-m", "48", "--count-only"])
    assert exit_info.value.code == 2 and "--block-m 48: must be a power of two" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert tiling_sweep.main(argv[:-3] + ["--out", str(tmp_path / "t.json")]) == 2
    assert "timing needs a CUDA GPU" in capsys.readouterr().err and not (tmp_path / "t.json").exists()
