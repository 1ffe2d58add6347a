"""The compile report: its SASS loop reader on a hand-made listing, and one ResNet-50 layer compiled for sm_90."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.compile_report import main, sass_loops

ROOT = Path(__file__).resolve().parents[1]

LISTING = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   LDG.E.U16 R2, desc[UR4][R4.64] ;
        /*0020*/                   IMAD R3, R2, R2, RZ ;
        /*0030*/                   LDGSTS.E.BYPASS.128 [R5], desc[UR4][R6.64] ;
        /*0040*/                   LDG.E.U16 R7, desc[UR4][R8.64] ;
        /*0050*/                   HGMMA.64x16x16.F32.BF16 R24, gdesc[UR8], R24 ;
        /*0060*/                   ISETP.GE.AND P0, PT, R3, 0x10, PT ;
        /*0070*/              @!P0 BRA 0x30 ;
        /*0080*/                   EXIT ;
"""


def test_sass_loops_finds_the_backward_branch_and_counts_its_body() -> None:
    (loop,) = sass_loops(LISTING)
    # body 0x30..0x70: LDGSTS, LDG.U16, HGMMA, ISETP, BRA; the LDG.U16 at 0x10 is outside it
    assert loop == {"instructions": 5, "mma": 1, "global_loads": 1, "async_copies": 1, "integer_alu": 1,
                    "loads_16bit": 1}  # fmt: skip


def test_a_resnet50_layer_compiles_without_spills_or_scalar_loads_in_loops(tmp_path: Path) -> None:
    """``python -m benchmarks.compile_report`` on one 3x3 layer (64 -> 64 channels, 56x56), batch 8.

    Run in a subprocess without ``TRITON_INTERPRET``: the test session's kernels are the interpreter's.
    """
    out = tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {"TRITON_CACHE_DIR": str(tmp_path)}
    command = [sys.executable, "-m", "benchmarks.compile_report", "--batches", "8", "--shapes", "r50.layer1.0.conv2",
               "--gate-group", "16", "--out", str(out)]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    kernels = json.loads(out.read_text())["kernels"]
    assert [k["kernel"] for k in kernels] == ["_conv2d_kernel", "_gated_conv2d_kernel", "_count_kernel",
                                              "_scatter_kernel"] + 5 * ["_gated_conditional_kernel"]  # fmt: skip
    for report in kernels:
        assert report["spill_bytes"] == 0 and report["loads_16bit_in_loops"] == 0
        assert report["launches"] == ["r50.layer1.0.conv2 b8"]
    dense, first, count, scatter, conditional, *remainder = kernels
    for report in (dense, first, conditional, *remainder):  # the conv kernels: K loops of 16-byte loads
        assert report["loops"] and report["loads_16B"] > 0
    assert not count["loops"] and not scatter["loops"]  # the compaction: one tile of decisions per program
    assert dense["wgmma_n"] and first["wgmma_n"] == [64]  # the first launch holds all 4 groups of 16 channels
    assert conditional["wgmma_n"] == [16] and conditional["constexprs"]["BLOCK_M"] == 128
    # each group's last < 128 rows: one 64-row tile (a warpgroup MMA), one of 32, then 16-row ones and an 8-row
    # one, transposed (mma.sync)
    heights = [(k["constexprs"]["BLOCK_M"], k["constexprs"]["TILES"]) for k in remainder]
    assert heights == [(64, 3), (32, 3), (16, 2), (8, 4)]
    assert remainder[0]["wgmma_n"] == [16]
    for report in remainder[1:]:
        assert report["mma_sync"] > 0 and report["wgmma_n"] == []


def test_the_report_refuses_the_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(SystemExit):
        main(["--out", "unused.json"])
