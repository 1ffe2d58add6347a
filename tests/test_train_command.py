"""``python -m gating train``: your model and data, its run folder, resuming, refusals, and torchrun."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

import gating
from gating import GatedModel, data
from gating.cli import USAGE_STATUS, main, run
from gating.distill import DistributedRun
from gating.train import TrainRunConfig, TrainSetupError, run_train

from _helpers import ROOT, free_port

pytestmark = pytest.mark.usefixtures("single_thread")

STUDENT = ["--num-train", "256", "--num-test", "128", "--image-size", "12", "--model-arg", "width=4",
           "--epochs", "2", "--batch-size", "32", "--calibration-images", "64", "--bn-recalibration-batches", "2",
           "--budget-fit-batches", "2", "--no-progress"]
TINY = [*STUDENT, "--teacher-epochs", "1", "--teacher-batch-size", "64"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One tiny run of the command (teacher trained first), shared by the tests that read its folder."""
    out = tmp_path_factory.mktemp("train") / "run"
    assert main(["train", "--out", str(out), *TINY]) == 0
    return out


def test_the_run_folder_holds_settings_checkpoints_logs_models_and_results(finished, capsys):
    names = {p.name for p in finished.iterdir()}
    assert names == {"config.json", "teacher.ckpt", "student.ckpt", "teacher_metrics.jsonl",
                     "student_metrics.jsonl", "teacher_model", "student_model", "results.json"}
    results = json.loads((finished / "results.json").read_text())
    log = [json.loads(line) for line in (finished / "student_metrics.jsonl").read_text().splitlines()]
    assert [record["epoch"] for record in log] == [1, 2]
    assert {"lr", "train_loss", "train_accuracy", "loss", "accuracy", "macs_ratio"} <= log[-1].keys()
    assert len((finished / "teacher_metrics.jsonl").read_text().splitlines()) == 1
    student = gating.load(finished / "student_model")
    assert isinstance(student, GatedModel) and results["world_size"] == 1
    # the saved student is the measured one: its accuracy over the test set is the one reported
    _, test, _ = data.build_loaders("synthetic", batch_size=64, num_train=256, num_test=128, image_size=12)
    correct = 0
    with torch.no_grad():
        for inputs, targets in test:
            correct += int((student.eval()(inputs).argmax(1) == targets).sum())
    assert 100.0 * correct / 128 == pytest.approx(results["student_accuracy"])
    assert results["macs_ratio"] == pytest.approx(results["macs_executed"] / results["teacher_macs"])
    assert 0 < results["macs_ratio"] < 1 and results["settings"]["gate.target_flops_ratio"] == 0.5


def test_resume_with_other_settings_is_refused_naming_them(finished, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in finished.iterdir()}
    assert run(["train", "--out", str(finished), *TINY, "--lr", "0.01", "--target-flops", "0.4", "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "holds a run with other settings" in err
    assert "--lr: 0.05 -> 0.01" in err and "--target-flops: 0.5 -> 0.4" in err
    assert {p.name: p.stat().st_mtime_ns for p in finished.iterdir()} == before


def test_a_folder_with_a_run_is_not_overwritten_without_resume(finished, capsys):
    assert run(["train", "--out", str(finished), *TINY]) == USAGE_STATUS
    assert "is not empty: pass --resume" in capsys.readouterr().err


def test_a_saved_teacher_is_used_and_a_teacher_of_another_shape_is_refused(finished, tmp_path, capsys):
    base = STUDENT
    out = tmp_path / "from-teacher"
    assert main(["train", "--out", str(out), *base, "--teacher", str(finished / "teacher_model"), "--epochs", "1"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert "teacher.ckpt" not in {p.name for p in out.iterdir()}
    teacher = gating.load(finished / "teacher_model")
    assert results["teacher_params"] == sum(p.numel() for p in teacher.parameters())

    state = tmp_path / "teacher.pt"
    torch.save(teacher.state_dict(), state)
    wide = [*base, "--model-arg", "width=8"]
    cases = [
        ([*wide, "--teacher", str(state)], "shape mismatches"),
        ([*wide, "--teacher", str(finished / "teacher_model")], "with arguments {'width': 4}"),
        ([*base, "--model", "resnet56", "--teacher", str(state)], "missing keys"),
        ([*base, "--teacher", str(finished / "student_model")], "is a gated model"),
        ([*base, "--teacher", str(tmp_path / "nothing.pt")], "does not exist"),
    ]
    torch.save({"fc.weight": torch.zeros(100, 16)}, tmp_path / "hundred.pt")
    cases.append(([*base, "--teacher", str(tmp_path / "hundred.pt")], "classifies 100 classes, the data has 10"))
    for flags, message in cases:
        target = tmp_path / "refused"
        assert run(["train", "--out", str(target), *flags]) == 1, flags
        err = capsys.readouterr().err.strip()
        assert message in err and err.count("\n") == 0, err
        assert not target.exists()


@pytest.mark.parametrize("flags, message", [
    (["--model", "resnet19"], "close matches: resnet18"),
    (["--teacher", "t.ckpt", "--teacher-epochs", "3"], "--teacher-epochs train a teacher; --teacher loads one"),
    (["--root", "somewhere"], "--root is for --data cifar10 / imagefolder"),
    (["--data", "cifar10"], "--data cifar10"),
    (["--lr", "-1"], "--lr must be"),
    (["--target-flops", "1.5"], "--target-flops must be"),
    (["--kind", "runtime", "--budget-fit-batches", "2"], "runtime gates meet the budget"),
    (["--model-arg", "width"], "--model-arg expects KEY=VALUE"),
    (["--model-arg", "num_classes=3"], "must not set num_classes"),
    (["--base-fraction", "1.5"], "--base-fraction must be in (0, 1]"),
    (["--kind", "fancy"], "--kind must be one of"),
])
def test_bad_flags_are_one_line_usage_errors_and_write_nothing(flags, message, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(["train", "--out", str(out), *STUDENT, *flags]) == USAGE_STATUS
    err = capsys.readouterr().err.strip()
    assert message in err and err.count("\n") == 0 and err.startswith("gating train: "), err
    assert not out.exists()


def test_a_missing_data_folder_is_a_runtime_error_naming_it(tmp_path, capsys):
    out = tmp_path / "out"
    assert run(["train", "--out", str(out), "--data", "cifar10", "--root", str(tmp_path / "nope")]) == 1
    assert str(tmp_path / "nope") in capsys.readouterr().err and not out.exists()


def test_more_processes_than_images_per_global_batch_is_refused_before_anything_is_written(tmp_path):
    config = TrainRunConfig(out=tmp_path / "out", num_train=64, num_test=32, image_size=12, batch_size=2,
                            model_args={"width": 4})
    with pytest.raises(TrainSetupError, match=r"global batch \(2\) is smaller than the number of processes \(4\)"):
        run_train(config, DistributedRun(rank=0, world_size=4))
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------- subprocesses
def _command(out, *extra: str) -> list[str]:
    return [sys.executable, "-m", "gating", "train", "--out", str(out), *TINY, "--checkpoint-every", "1", *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_sigkill_at_a_random_moment_then_resume_ends_with_the_weights_of_an_uninterrupted_run(tmp_path):
    started = time.perf_counter()
    full = subprocess.run(_command(tmp_path / "full"), cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert full.returncode == 0, full.stderr
    duration = time.perf_counter() - started
    process = subprocess.Popen(_command(tmp_path / "run"), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    time.sleep(random.Random(2026).uniform(0.3, 0.8) * duration)  # teacher or student phase, any step
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    resumed = subprocess.run(_command(tmp_path / "run", "--resume"), cwd=ROOT, env=_env(), capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    for role in ("teacher", "student"):
        want = gating.load(tmp_path / "full" / f"{role}_model").state_dict()
        got = gating.load(tmp_path / "run" / f"{role}_model").state_dict()
        for key, value in want.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(got[key], value), (role, key)


@pytest.mark.slow
def test_torchrun_with_two_gloo_processes_writes_one_run_folder(tmp_path):
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), "-m", "gating", "train", "--out", str(out), *TINY, "--sync-bn"]
    done = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("[3/3] measuring on the test set") == 1  # only rank 0 speaks
    results = json.loads((out / "results.json").read_text())
    assert results["world_size"] == 2 and 0 < results["macs_ratio"] < 1
    log = [json.loads(line) for line in (out / "student_metrics.jsonl").read_text().splitlines()]
    assert [record["epoch"] for record in log] == [1, 2]


def test_the_demo_refuses_to_run_as_one_of_several_processes(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert run(["demo", "--out", str(tmp_path / "out")]) == USAGE_STATUS
    assert "only `gating train` and `gating train-rl` are data-parallel" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
