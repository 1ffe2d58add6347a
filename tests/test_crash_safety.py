"""Training survives being stopped: SIGTERM writes a checkpoint and stops cleanly, SIGKILL at any step resumes exactly."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from gating import data
from gating.cli import SIGTERM_STATUS, main
from gating.distill import TrainConfig, Trainer, TrainingInterrupted

from _helpers import ROOT

pytestmark = pytest.mark.usefixtures("single_thread")


class SignalOnce(Dataset):
    """``dataset``, sending ``signum`` to this process when item number ``at`` is read (once)."""

    def __init__(self, dataset: Dataset, at: int, signum: int = signal.SIGTERM) -> None:
        self.dataset, self.at, self.signum, self.read = dataset, at, signum, 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        self.read += 1
        if self.read == self.at:
            os.kill(os.getpid(), self.signum)
        return self.dataset[index]


def _toy(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    inputs, labels = torch.randn(96, 8, generator=generator), torch.randint(0, 3, (96,), generator=generator)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))
    return model, TensorDataset(inputs, labels)


def _trainer(model, dataset, path):
    loader = DataLoader(dataset, batch_size=16, sampler=data.EpochSampler(len(dataset), 5))
    config = TrainConfig(epochs=2, lr=0.05, seed=3, device="cpu", progress=False, eval_every=None)
    return Trainer(model, loader, loader, config, checkpoint_path=path)


def test_sigterm_checkpoints_the_step_in_progress_and_resume_ends_like_an_uninterrupted_run(tmp_path):
    model, dataset = _toy()
    _trainer(model, dataset, tmp_path / "full.ckpt").fit()
    interrupted, dataset = _toy()
    with pytest.raises(TrainingInterrupted, match="SIGTERM received: checkpoint of step 3 written to"):
        _trainer(interrupted, SignalOnce(dataset, at=16 * 2 + 5), tmp_path / "run.ckpt").fit()  # during step 3
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is removed again
    resumed, _ = _toy()
    trainer = _trainer(resumed, dataset, tmp_path / "run.ckpt")
    trainer.fit(resume=True)
    assert trainer.global_step == 12
    for key, value in model.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key


def test_sigterm_without_a_checkpoint_path_says_nothing_was_saved():
    model, dataset = _toy()
    with pytest.raises(TrainingInterrupted, match="no checkpoint path was set, so nothing was saved"):
        _trainer(model, SignalOnce(dataset, at=3), None).fit()


def test_the_cli_turns_sigterm_into_a_one_line_message_and_status_143(tmp_path, monkeypatch, capsys):
    import gating.cli as cli

    def interrupted(args):
        raise TrainingInterrupted(7, tmp_path / "teacher.ckpt")

    monkeypatch.setattr(cli, "run_train_rl_command", interrupted)
    assert main(["train-rl", "--out", str(tmp_path)]) == SIGTERM_STATUS == 143
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"gating train-rl: SIGTERM received: checkpoint of step 7 written to {tmp_path / 'teacher.ckpt'}; "
                   "resume to continue; run the same command with --resume"]


_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset
    from gating import data
    from gating.distill import TrainConfig, Trainer

    torch.set_num_threads(1)
    mode, path, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
    generator = torch.Generator().manual_seed(0)
    inputs, labels = torch.randn(96, 8, generator=generator), torch.randint(0, 3, (96,), generator=generator)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))

    class KillAt(TensorDataset):
        read = 0
        def __getitem__(self, index):
            KillAt.read += 1
            if KillAt.read == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return super().__getitem__(index)

    dataset = KillAt(inputs, labels)
    loader = DataLoader(dataset, batch_size=16, sampler=data.EpochSampler(96, 5))
    config = TrainConfig(epochs=2, lr=0.05, seed=3, device="cpu", progress=False, eval_every=None, checkpoint_every=1)
    Trainer(model, loader, loader, config, checkpoint_path=path + ".ckpt").fit(resume=mode == "resume")
    torch.save(model.state_dict(), path + ".pt")
""")


def _run(mode: str, path, kill_at: int = 0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _SCRIPT, mode, str(path), str(kill_at)], cwd=ROOT, timeout=300,
                          capture_output=True, text=True)


@pytest.mark.slow
def test_sigkill_at_a_random_step_then_resume_is_bit_equal_to_an_uninterrupted_run(tmp_path):
    assert _run("full", tmp_path / "full").returncode == 0
    kill_at = random.Random(2026).randrange(17, 2 * 96)  # an item read after the first step, in either epoch
    killed = _run("train", tmp_path / "run", kill_at)
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "run.pt").exists() and (tmp_path / "run.ckpt").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temporary checkpoint left behind
    resumed = _run("resume", tmp_path / "run")
    assert resumed.returncode == 0, resumed.stderr
    want, got = torch.load(tmp_path / "full.pt"), torch.load(tmp_path / "run.pt")
    for key in want:
        assert torch.equal(got[key], want[key]), key
