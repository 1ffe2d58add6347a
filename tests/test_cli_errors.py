"""The command line's failures: one line on stderr, exit status 2 for a bad argument and 1 for a failed run."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from gating.cli import USAGE_STATUS, run
from gating.io import CheckpointError

from _helpers import ROOT

TINY_DEMO = ["--teacher-epochs", "1", "--student-epochs", "1", "--num-train", "64", "--num-test", "32",
             "--image-size", "16", "--no-progress"]


@pytest.mark.parametrize("argv, status, message", [
    (["demo", "--teacher-epochs", "0"], USAGE_STATUS, "gating demo: --teacher-epochs must be an int >= 1"),
    (["train-rl", "--param-budget", "2"], USAGE_STATUS, r"gating train-rl: --param-budget must be in \(0, 1\]"),
    (["prune", "MISSING", "--ratio", "1.5", "--out", "OUT"], USAGE_STATUS, r"gating prune: --ratio must be in"),
    (["prune", "MISSING", "--ratio", "0.5", "--out", "OUT"], 1, "gating prune: .*missing or not a directory"),
    (["train-rl", "--data", "imagefolder", "--root", "MISSING"], 1, "gating train-rl: image folder .*missing/train does not exist"),
    (["demo", "--resume", "--out", "CORRUPT", *TINY_DEMO], 1, "gating demo: .*teacher.ckpt"),
])
def test_each_failure_is_one_line_with_its_exit_status(tmp_path, capsys, argv, status, message):
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "teacher.ckpt").write_bytes(b"not a checkpoint")
    names = {"MISSING": str(tmp_path / "missing"), "OUT": str(tmp_path / "out"), "CORRUPT": str(corrupt)}
    argv = [names.get(arg, arg) for arg in argv]
    if "--out" not in argv and argv[0] != "prune":
        argv += ["--out", str(tmp_path / "out")]
    assert run(argv) == status
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert re.match(message, lines[0]), lines[0]
    assert not (tmp_path / "out").exists()


def test_debug_shows_the_original_exception(tmp_path):
    (tmp_path / "teacher.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        run(["--debug", "demo", "--resume", "--out", str(tmp_path), *TINY_DEMO])


def test_python_dash_m_gating_exits_with_the_status_and_no_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "gating", "demo", "--teacher-epochs", "0", "--out", str(tmp_path / "o")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == USAGE_STATUS
    assert done.stderr.strip().splitlines() == ["gating demo: --teacher-epochs must be an int >= 1, got 0"]
    unknown = subprocess.run([sys.executable, "-m", "gating", "demo", "--no-such-flag"], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
    assert unknown.returncode == 2 and "unrecognized arguments: --no-such-flag" in unknown.stderr
