"""``python -m gating train-rl``: flags, bad values, and a tiny end-to-end run that resumes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from gating.cli import main
from gating.rl.workflow import RLConfig

from _helpers import ROOT, fake_image_folder, free_port

TINY = ["--teacher-epochs", "1", "--num-train", "256", "--num-test", "128", "--image-size", "16", "--rounds", "1",
        "--policy-updates", "2", "--no-progress"]


@pytest.mark.parametrize("argv, message", [
    (["--rounds", "0"], "--rounds must be an int >= 1"),
    (["--budgets", "0.5,1.5"], r"--budgets must be values in \(0, 1\]"),
    (["--budget-low", "0.8", "--budget-high", "0.5"], "budget_low <= budget_high"),
    (["--student-lr", "0"], "--student-lr must be > 0"),
    (["--param-budget", "1.5", "--rounds", "2"], r"--param-budget must be in \(0, 1\]"),
    (["--param-budget", "0.5", "--rounds", "1"], "--rounds must be > 1 with a param_budget"),
    (["--data", "mnist"], "--data must be one of"),
    (["--data", "cifar10"], "--root must name the cifar10 folder"),
    (["--image-size", "4"], "--image-size must be an int >= 8"),
])
def test_train_rl_rejects_bad_values_before_any_work(tmp_path, argv, message):
    with pytest.raises(SystemExit, match=message):
        main(["train-rl", "--out", str(tmp_path / "out"), *argv])
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_train_rl_runs_end_to_end_and_resumes(tmp_path, capsys):
    out = tmp_path / "rl"
    main(["train-rl", "--out", str(out), *TINY])
    first = json.loads((out / "results.json").read_text())
    assert set(first["budgets"]) == {"0.3", "0.5", "0.7"}
    for row in first["budgets"].values():
        assert 0 < row["policy"]["macs_ratio"] <= 1 and 0 < row["fixed"]["macs_ratio"] <= 1
        assert row["fixed"]["macs_ratio"] <= float(next(b for b, r in first["budgets"].items() if r is row)) + 1e-9
    policy_ratios = [first["budgets"][b]["policy"]["macs_ratio"] for b in ("0.3", "0.5", "0.7")]
    assert policy_ratios == sorted(policy_ratios)
    assert (out / "policy-round0.pt").is_file() and (out / "student-round0.ckpt").is_file()
    main(["train-rl", "--out", str(out), *TINY, "--resume"])
    again = json.loads((out / "results.json").read_text())
    assert again["budgets"] == first["budgets"]
    assert "budget  policy MACs" in capsys.readouterr().out


def test_train_rl_names_a_missing_data_folder(tmp_path):
    with pytest.raises(SystemExit, match="cifar-10-batches-py: folder does not exist"):
        main(["train-rl", "--out", str(tmp_path / "out"), "--data", "cifar10", "--root", str(tmp_path / "nothing")])
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_train_rl_static_pruning_removes_channels_and_resumes(tmp_path):
    out = tmp_path / "rl"
    argv = ["train-rl", "--out", str(out), *TINY, "--rounds", "2", "--param-budget", "0.6", "--static-updates", "2"]
    main(argv)
    first = json.loads((out / "results.json").read_text())
    static, storage = first["static_pruning"], first["storage"]
    assert static["param_budget"] == 0.6 and static["param_ratio"] <= 0.6 + 0.03
    # The student holds its predictors and static importances too, yet fewer parameters than the teacher.
    assert storage["student_params"] < storage["teacher_params"]
    assert storage["student_disk_bytes"] < storage["teacher_disk_bytes"]
    assert (out / "static.json").is_file() and (out / "student_model").is_dir()
    policy_ratios = [first["budgets"][b]["policy"]["macs_ratio"] for b in ("0.3", "0.5", "0.7")]
    assert policy_ratios == sorted(policy_ratios)
    main([*argv, "--resume"])  # replays the cuts, then loads the pruned checkpoints
    again = json.loads((out / "results.json").read_text())
    assert again["budgets"] == first["budgets"] and again["storage"] == first["storage"]


@pytest.mark.slow
def test_train_rl_reads_an_image_folder(tmp_path):
    root = fake_image_folder(tmp_path / "images")
    out = tmp_path / "rl"
    main(["train-rl", "--out", str(out), "--data", "imagefolder", "--root", str(root), *TINY])
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["data"] == "imagefolder" and results["config"]["root"] == str(root)
    for row in results["budgets"].values():
        assert 0 < row["policy"]["macs_ratio"] <= 1
    assert (out / "student_model").is_dir()


def test_rl_config_defaults_are_valid():
    config = RLConfig()
    assert config.policy_config().budget_low == config.budget_low


@pytest.mark.slow
def test_train_rl_under_torchrun_with_two_gloo_processes_writes_one_result(tmp_path):
    """Teacher training and fine-tuning run data-parallel, the policy and the static choice are rank 0's."""
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), "-m", "gating", "train-rl", "--out", str(out), *TINY, "--rounds", "2",
               "--param-budget", "0.6", "--static-updates", "2"]
    done = subprocess.run(command, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("[3/3]") == 1  # only rank 0 measures and speaks
    results = json.loads((out / "results.json").read_text())
    assert results["world_size"] == 2 and set(results["budgets"]) == {"0.3", "0.5", "0.7"}
    assert {"policy-round0.pt", "policy-round1.pt", "static.json", "student_model"} <= {p.name for p in out.iterdir()}
