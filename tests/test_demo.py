"""The main job, end to end: ``python -m gating demo`` reaches the issue's numbers on the built-in data."""

import json
import subprocess
import sys

import pytest

from gating.cli import build_parser, main, run_demo


@pytest.mark.slow
def test_demo_reaches_accuracy_and_mac_reduction(tmp_path):
    out = tmp_path / "demo"
    results = run_demo(build_parser().parse_args(["demo", "--out", str(out), "--no-progress"]))
    written = json.loads((out / "results.json").read_text())
    assert written["teacher_accuracy"] == results["teacher_accuracy"]
    for key in ("teacher_accuracy", "student_accuracy", "macs_dense", "macs_executed", "bytes_dense",
                "bytes_executed", "layers"):
        assert key in written
    assert written["teacher_accuracy"] > 80.0
    assert written["student_accuracy"] >= written["teacher_accuracy"] - 2.0
    assert written["macs_dense"] / written["macs_executed"] >= 2.0
    assert written["bytes_executed"] < written["bytes_dense"]
    assert all(0.0 <= d <= 1.0 for d in written["layers"].values()) and len(written["layers"]) == 18
    # Resuming a finished run trains nothing more and measures the same model.
    again = run_demo(build_parser().parse_args(["demo", "--out", str(out), "--no-progress", "--resume"]))
    assert again["student_accuracy"] == written["student_accuracy"]
    assert again["macs_executed"] == written["macs_executed"]


def test_cli_rejects_bad_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit, match="--teacher-epochs must be >= 1"):
        main(["demo", "--out", str(tmp_path), "--teacher-epochs", "0"])
    with pytest.raises(SystemExit, match="--target-flops must be in"):
        main(["demo", "--out", str(tmp_path), "--target-flops", "1.5"])
    with pytest.raises(SystemExit):
        main(["nonsense"])
    assert "invalid choice" in capsys.readouterr().err


def test_module_entry_point_prints_help():
    result = subprocess.run([sys.executable, "-m", "gating", "demo", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for flag in ("--out", "--resume", "--target-flops", "--teacher-epochs"):
        assert flag in result.stdout
