"""The gate-group study on a tiny configuration: runs, shared teacher, reuse, counts (CPU, a few seconds per run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import gate_group_study
from gating.demo import DemoConfig

TINY = DemoConfig(
    teacher_epochs=1, student_epochs=1, num_train=192, num_test=64, image_size=16, batch_size=64,
    student_batch_size=64, calibration_images=64, bn_recalibration_batches=1, budget_fit_batches=1, progress=False,
)  # fmt: skip


@pytest.mark.slow
def test_study_trains_each_width_on_one_shared_teacher_and_counts_its_decisions(tmp_path: Path) -> None:
    result = gate_group_study.study(tmp_path, [16, 32], [0], images=4, base=TINY)
    narrow, wide = result["widths"]
    assert (narrow["gate_group"], wide["gate_group"]) == (16, 32)
    # one teacher per seed, shared: both widths measure against the same teacher accuracy
    assert narrow["runs"][0]["teacher_accuracy"] == wide["runs"][0]["teacher_accuracy"]
    assert (tmp_path / "teacher-seed-0.ckpt").is_file()
    for width in (narrow, wide):
        counts = width["runs"][0]["counts"]
        assert counts["kernel_conditional_macs"] >= counts["conditional_macs"] > 0
        assert width["mean_kernel_overhead"] == pytest.approx(counts["kernel_overhead"])
        config = json.loads((tmp_path / f"g{width['gate_group']}" / "seed-0" / "results.json").read_text())
        assert config["demo_config"]["gate_group"] == width["gate_group"]
    # a finished run is reused, not retrained
    before = (tmp_path / "g16" / "seed-0" / "student.ckpt").stat().st_mtime_ns
    again = gate_group_study.study(tmp_path, [16], [0], images=4, base=TINY)
    assert again["widths"][0]["runs"][0]["student_accuracy"] == narrow["runs"][0]["student_accuracy"]
    assert (tmp_path / "g16" / "seed-0" / "student.ckpt").stat().st_mtime_ns == before


def test_study_command_refuses_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        gate_group_study.main(["--out", str(tmp_path), "--gate-groups", "0"])
    assert "--gate-groups" in capsys.readouterr().err
    assert gate_group_study.main(["--out", str(tmp_path), "--seeds", "0", "0", "--result", str(tmp_path / "r.json")]) == 2
    assert "seed" in capsys.readouterr().err and not (tmp_path / "r.json").exists()
