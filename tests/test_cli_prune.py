"""``python -m gating prune``: a saved model in, a smaller saved model out; bad input in one line."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import gating
from gating.cli import main

from _helpers import ROOT


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "model"
    gating.save(gating.build("resnet20", width=32).eval(), path)
    return path


def test_prune_command_writes_a_smaller_model_that_loads(saved, tmp_path, capsys):
    out = tmp_path / "pruned"
    assert main(["prune", str(saved), "--ratio", "0.5", "--image-size", "32", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "bytes on disk" in printed and "MACs" in printed and f"wrote {out}" in printed
    before, after = gating.load(saved), gating.load(out)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(after) < 0.6 * count(before)
    assert after(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_prune_command_by_gate_statistics_on_a_gated_model(tmp_path, capsys):
    model = gating.GatedModel(gating.build("resnet20", width=32), gating.GateConfig(gate_group=16)).eval()
    gating.save(model, tmp_path / "gated")
    out = tmp_path / "pruned"
    main(["prune", str(tmp_path / "gated"), "--criterion", "gate", "--flops", "0.7", "--image-size", "16",
          "--calibration-images", "8", "--out", str(out)])
    pruned = gating.load(out)
    assert isinstance(pruned, gating.GatedModel)
    assert all(layer.out_channels % 16 == 0 for layer in pruned.gated_layers().values())


@pytest.mark.parametrize("argv, message", [
    (["--ratio", "1.5"], r"--ratio must be in \[0, 1\)"),
    (["--flops", "0"], r"--flops must be in \(0, 1\]"),
    (["--ratio", "0.5", "--round-to", "0"], "--round-to must be an int >= 1"),
    (["--ratio", "0.5", "--image-size", "4"], "--image-size must be >= 8"),
])
def test_prune_command_rejects_bad_values(saved, tmp_path, argv, message):
    with pytest.raises(SystemExit, match=message):
        main(["prune", str(saved), "--out", str(tmp_path / "out"), *argv])
    assert not (tmp_path / "out").exists()


def test_prune_command_names_a_missing_model_and_an_existing_out(tmp_path, saved):
    with pytest.raises(SystemExit, match="missing or not a directory"):
        main(["prune", str(tmp_path / "nothing"), "--ratio", "0.5", "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match="exists; pass --overwrite"):
        main(["prune", str(saved), "--ratio", "0.5", "--out", str(saved)])


def test_prune_command_errors_are_one_line_without_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "gating", "prune", str(tmp_path / "nothing"), "--ratio", "0.5",
                             "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
