"""``python -m gating train-rl``: flags, bad values, and a tiny end-to-end run that resumes."""

from __future__ import annotations

import json

import pytest

from gating.cli import main
from gating.rl.workflow import RLConfig

TINY = ["--teacher-epochs", "1", "--num-train", "256", "--num-test", "128", "--image-size", "16", "--rounds", "1",
        "--policy-updates", "2", "--no-progress"]


@pytest.mark.parametrize("argv, message", [
    (["--rounds", "0"], "--rounds must be an int >= 1"),
    (["--budgets", "0.5,1.5"], r"--budgets must be values in \(0, 1\]"),
    (["--budget-low", "0.8", "--budget-high", "0.5"], "budget_low <= budget_high"),
    (["--student-lr", "0"], "--student-lr must be > 0"),
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


def test_rl_config_defaults_are_valid():
    config = RLConfig()
    assert config.policy_config().budget_low == config.budget_low
