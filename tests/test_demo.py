"""The main job, end to end: ``python -m gating demo`` reaches the issue's numbers on the built-in data."""

import json
import subprocess
import sys

import pytest

import gating
from gating.cli import build_parser, demo_config, main
from gating.demo import DemoConfig, run_demo
from gating.demo_seeds import summarize_seeds


@pytest.mark.slow
def test_demo_reaches_accuracy_and_mac_reduction(tmp_path):
    out = tmp_path / "demo"
    results = run_demo(DemoConfig(out=out, progress=False))
    written = json.loads((out / "results.json").read_text())
    assert written["teacher_accuracy"] == results["teacher_accuracy"]
    for key in ("teacher_accuracy", "student_accuracy", "macs_dense", "macs_executed", "bytes_dense",
                "bytes_executed", "layers", "seed", "torch", "demo_config", "student_train_config"):
        assert key in written
    assert written["teacher_accuracy"] > 80.0
    assert written["student_accuracy"] >= written["teacher_accuracy"] - 2.0
    assert written["macs_dense"] / written["macs_executed"] >= 2.0
    assert written["bytes_executed"] < written["bytes_dense"]
    assert all(0.0 <= d <= 1.0 for d in written["layers"].values()) and len(written["layers"]) == 18
    # Resuming a finished run trains nothing more and measures the same model.
    again = run_demo(DemoConfig(out=out, progress=False, resume=True))
    assert again["student_accuracy"] == written["student_accuracy"]
    assert again["macs_executed"] == written["macs_executed"]


def test_cli_maps_flags_to_the_demo_config(tmp_path):
    args = build_parser().parse_args(["demo", "--out", str(tmp_path), "--student-lr", "0.03",
                                      "--feature-kd-weight", "2", "--student-batch-size", "16", "--no-progress", "--resume"])
    config = demo_config(args)
    assert config == DemoConfig(out=tmp_path, student_lr=0.03, feature_kd_weight=2.0, student_batch_size=16,
                                progress=False, resume=True)
    assert demo_config(build_parser().parse_args(["demo"])) == DemoConfig()


def test_cli_rejects_bad_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit, match="--teacher-epochs must be an int >= 1"):
        main(["demo", "--out", str(tmp_path), "--teacher-epochs", "0"])
    with pytest.raises(SystemExit, match=r"--target-flops must be in \(0, 1\]"):
        main(["demo", "--out", str(tmp_path), "--target-flops", "1.5"])
    with pytest.raises(SystemExit, match="--feature-kd-weight must be a finite number >= 0"):
        main(["demo", "--out", str(tmp_path), "--feature-kd-weight", "-1"])
    with pytest.raises(SystemExit, match=r"--budget-ramp-epochs must be a number in \[0, epochs=4\]"):
        main(["demo", "--out", str(tmp_path), "--student-epochs", "4", "--budget-ramp-epochs", "6"])
    with pytest.raises(SystemExit, match="--student-batch-size must be an int >= 1"):
        main(["demo", "--out", str(tmp_path), "--student-batch-size", "0"])
    with pytest.raises(SystemExit):
        main(["nonsense"])
    assert "invalid choice" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # refused before anything was written


@pytest.mark.parametrize(
    ("seeds", "message"),
    [("0,1,1", "1 is repeated"), ("0,-2", "-2 is negative"), ("0,x", "'x' is not an integer"),
     ("1.5", "'1.5' is not an integer")],
)
def test_cli_rejects_bad_seeds_in_one_line(seeds, message, capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--seeds", seeds])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == f"gating demo: error: argument --seeds: {message}"


def test_multi_seed_summary_against_hand_values():
    runs = [
        {"seed": 0, "teacher_accuracy": 98.0, "student_accuracy": 97.5, "macs_reduction": 2.6},
        {"seed": 1, "teacher_accuracy": 97.0, "student_accuracy": 95.5, "macs_reduction": 2.4},
        {"seed": 2, "teacher_accuracy": 99.0, "student_accuracy": 99.0, "macs_reduction": 2.8},
    ]
    summary = summarize_seeds(runs)
    assert summary["seeds"] == [0, 1, 2]
    assert summary["gaps"] == pytest.approx([0.5, 1.5, 0.0])
    assert summary["mean_gap"] == pytest.approx(2.0 / 3.0)
    assert summary["worst_gap"] == pytest.approx(1.5)
    assert summary["mean_macs_reduction"] == pytest.approx(2.6)
    assert summary["worst_macs_reduction"] == pytest.approx(2.4)
    assert summary["mean_teacher_accuracy"] == pytest.approx(98.0)
    assert summary["mean_student_accuracy"] == pytest.approx(97.333333333)
    with pytest.raises(ValueError, match="at least one run"):
        summarize_seeds([])


def test_module_entry_point_prints_help():
    result = subprocess.run([sys.executable, "-m", "gating", "demo", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for flag in ("--out", "--resume", "--target-flops", "--teacher-epochs", "--seeds", "--feature-kd-weight",
                 "--budget-ramp-epochs", "--bn-recalibration-batches", "--student-lr"):
        assert flag in result.stdout


def test_cli_maps_the_prune_flags(tmp_path):
    args = build_parser().parse_args(["demo", "--prune", "0.5", "--prune-criterion", "similarity",
                                      "--slimming-weight", "0.001"])
    config = demo_config(args)
    assert (config.prune_ratio, config.prune_criterion, config.slimming_weight) == (0.5, "similarity", 0.001)
    assert config.teacher_config().slimming_weight == 0.0  # the penalty only trains for the slimming criterion
    assert DemoConfig(prune_ratio=0.5).teacher_config().slimming_weight == 1e-4
    assert DemoConfig().teacher_config().slimming_weight == 0.0
    with pytest.raises(SystemExit, match=r"--prune must be in \[0, 1\)"):
        main(["demo", "--out", str(tmp_path), "--prune", "1.0"])
    with pytest.raises(SystemExit, match="--prune-criterion must be one of"):
        main(["demo", "--out", str(tmp_path), "--prune", "0.5", "--prune-criterion", "gate"])
    with pytest.raises(SystemExit, match="--slimming-weight must be a finite number >= 0"):
        main(["demo", "--out", str(tmp_path), "--prune", "0.5", "--slimming-weight", "-1"])
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_demo_with_pruning_stores_and_executes_less(tmp_path):
    """The mechanics of ``--prune`` on a short run (accuracy is measured by the recorded multi-seed runs)."""
    out = tmp_path / "pruned"
    results = run_demo(DemoConfig(out=out, progress=False, prune_ratio=0.5, teacher_epochs=1, student_epochs=1,
                                  num_train=512, num_test=256))
    assert results["student_param_bytes"] <= 0.5 * results["teacher_param_bytes"]
    assert results["student_disk_bytes"] < results["teacher_disk_bytes"]
    assert results["macs_executed"] <= 0.35 * results["teacher_macs"]
    assert results["macs_dense"] < results["teacher_macs"]
    assert results["pruning"]["after"]["params"] == results["student_params"] - sum(
        layer.threshold.numel() for layer in gating.load(out / "student_model").gated_layers().values()
    )
    student = gating.load(out / "student_model")
    assert student.config.target_flops_ratio == DemoConfig().target_flops
