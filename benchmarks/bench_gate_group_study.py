"""The gate-group study on a tiny configuration: runs, shared teacher, reuse, counts (CPU, a few seconds per run)."""

from __future__ import annotations

import dataclasses
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
def test_study_trains_each_setting_on_one_shared_teacher_and_counts_its_decisions(tmp_path: Path) -> None:
    result = gate_group_study.study(tmp_path, [16, 32], [0], images=4, base=TINY, gate_blocks=[1, 2])
    settings = {(s["gate_group"], s["gate_block"]): s for s in result["settings"]}
    assert list(settings) == [(16, 1), (16, 2), (32, 1), (32, 2)]
    # one teacher per seed, shared: every setting measures against the same teacher accuracy
    assert len({s["runs"][0]["teacher_accuracy"] for s in settings.values()}) == 1
    assert (tmp_path / "teacher-seed-0.ckpt").is_file()
    for (gate_group, gate_block), setting in settings.items():
        counts = setting["runs"][0]["counts"]
        assert counts["kernel_conditional_macs"] >= counts["conditional_macs"] > 0
        assert setting["mean_kernel_overhead"] == pytest.approx(counts["kernel_overhead"])
        folder = tmp_path / gate_group_study.setting_name(gate_group, gate_block) / "seed-0"
        config = json.loads((folder / "results.json").read_text())["demo_config"]
        assert (config["gate_group"], config["gate_block"]) == (gate_group, gate_block)
    assert (tmp_path / "g16-b2" / "seed-0").is_dir() and (tmp_path / "g16" / "seed-0").is_dir()
    # a finished run is reused, not retrained
    before = (tmp_path / "g16" / "seed-0" / "student.ckpt").stat().st_mtime_ns
    again = gate_group_study.study(tmp_path, [16], [0], images=4, base=TINY)
    assert again["settings"][0]["runs"][0]["student_accuracy"] == settings[16, 1]["runs"][0]["student_accuracy"]
    assert (tmp_path / "g16" / "seed-0" / "student.ckpt").stat().st_mtime_ns == before
    # ... but not for another recipe
    with pytest.raises(ValueError, match="student_lr=0.05 \\(wanted 0.1\\)"):
        gate_group_study.study(tmp_path, [16], [0], images=4, base=dataclasses.replace(TINY, student_lr=0.1))


def test_setting_names() -> None:
    assert [gate_group_study.setting_name(*s) for s in ((16, 1), (16, 2), (64, 4, 0.5), (16, 1, 1.0))] == [
        "g16", "g16-b2", "g64-b4-tv0.5", "g16-tv1"]  # fmt: skip


def test_study_command_refuses_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        gate_group_study.main(["--out", str(tmp_path), "--gate-groups", "0"])
    assert "--gate-groups" in capsys.readouterr().err
    assert gate_group_study.main(["--out", str(tmp_path), "--seeds", "0", "0", "--result", str(tmp_path / "r.json")]) == 2
    assert "seed" in capsys.readouterr().err and not (tmp_path / "r.json").exists()
