"""Recorded real decisions: recording, the file round trip, its refusals, and counting them (CPU, no conv timed)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from benchmarks import record_decisions, run_gpu
from benchmarks.cases import recorded_case
from benchmarks.checks import check_dense, check_gated
from benchmarks.sweep import Sweep
from benchmarks.recorded import RecordedLayer, load_decisions, record_decisions as record, recorded_records
from benchmarks.recorded import save_decisions
from gating import GateConfig, GatedModel
from gating.models import resnet20
from kernels import GateSpec


def _student(batch: int = 6) -> tuple[GatedModel, torch.Tensor]:
    torch.manual_seed(0)
    model = GatedModel(resnet20(num_classes=10, width=8), GateConfig(gate_group=4))
    images = torch.randn(batch, 3, 12, 12)
    model.calibrate(images, 0.5)
    return model.eval(), images


def test_recorded_decisions_are_the_forward_decisions_and_count_as_accounting_does(tmp_path: Path) -> None:
    model, images = _student()
    layers = record(model, images, prefix="tiny.")
    gated = model.gated_layers()
    assert [layer.name for layer in layers] == [f"tiny.{name}" for name in gated]
    with torch.no_grad():
        model(images)
    report = {count.name: count for count in model.report().layers}
    for layer, (name, module) in zip(layers, gated.items()):
        assert torch.equal(layer.decisions, module.last_decisions)
        assert layer.spec == module.spec and layer.in_channels == module.in_channels
    path = tmp_path / "d.pt"
    save_decisions(layers, path, {"kind": "test"})
    loaded, source = load_decisions(path)
    assert source == {"kind": "test"} and len(loaded) == len(layers)
    for a, b in zip(loaded, layers):
        assert a.name == b.name and a.kernel == b.kernel and a.spec == b.spec and torch.equal(a.decisions, b.decisions)
    records = recorded_records(loaded, batches=(6, 64), model="tiny")
    assert len(records) == len(layers), "a batch larger than the recording must be skipped"
    for rec, (name, _) in zip(records, gated.items()):
        count = report[f"model.{name}"] if f"model.{name}" in report else report[name]
        assert rec["mask_source"] == "real" and rec["batch"] == 6
        assert rec["macs_executed"] == count.macs_executed and rec["conditional_macs"] == count.conditional_macs
        assert rec["kernel_conditional_macs"] == count.kernel_conditional_macs
    first_two = recorded_records(loaded[:1], batches=(2,), model="tiny")[0]
    assert first_two["macs_dense"] * 3 == records[0]["macs_dense"], "batch 2 counts the first two images"


def test_decisions_that_do_not_fit_their_layer_are_refused(tmp_path: Path) -> None:
    spec = GateSpec(gate_group=4)
    geometry = dict(in_channels=8, out_channels=16, kernel=(3, 3), stride=(1, 1), padding=(1, 1), dilation=(1, 1),
                    height=5, width=5, spec=spec)  # fmt: skip
    with pytest.raises(ValueError, match=r"layer net.a are torch.bool \[2, 3, 5, 5\].*needs bool \[2, 4, 5, 5\]"):
        RecordedLayer("net.a", **geometry, decisions=torch.zeros(2, 3, 5, 5, dtype=torch.bool))
    layer = RecordedLayer("net.a", **geometry, decisions=torch.zeros(2, 4, 5, 5, dtype=torch.bool))
    path = tmp_path / "d.pt"
    save_decisions([layer], path, {})
    payload = torch.load(path, weights_only=True)
    payload["layers"][0]["out_channels"] = 32
    torch.save(payload, path)
    with pytest.raises(ValueError, match=rf"{path}.*layer net.a.*needs bool \[2, 8, 5, 5\]"):
        load_decisions(path)
    with pytest.raises(ValueError, match="does not exist"):
        load_decisions(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="truncated or not a safe torch file"):
        load_decisions(tmp_path / "junk.pt")
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a decisions file"):
        load_decisions(tmp_path / "other.pt")


def test_count_only_run_counts_recorded_decisions(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model, images = _student(batch=8)
    decisions = tmp_path / "tiny.pt"
    save_decisions(record(model, images, prefix="tiny."), decisions, {"kind": "test"})
    out = tmp_path / "counts.json"
    argv = ["--count-only", "--models", "r18", "--batches", "8", "--densities", "0.25", "--out", str(out),
            "--decisions", str(decisions)]  # fmt: skip
    assert run_gpu.main(argv) == 0
    payload = json.loads(out.read_text())
    sources = {(t["model"], t["mask_source"]) for t in payload["network_totals"]}
    assert sources == {("r18", "blob"), ("tiny", "real")}
    assert all(t["kernel_overhead"] >= 1.0 for t in payload["network_totals"])
    assert "learned" in capsys.readouterr().out
    assert run_gpu.main([*argv[:-1], str(tmp_path / "missing.pt")]) == 2


def test_a_recorded_case_hands_its_decisions_to_the_gated_op_and_passes_the_checks() -> None:
    """On CPU the ops run their references: the case's plumbing, given decisions and checks, without a GPU."""
    model, images = _student(batch=4)
    layer = record(model, images, prefix="tiny.")[1]
    case = recorded_case(Sweep(), layer, batch=3, purpose="check", device="cpu")
    assert case.decisions_given and case.shape.name == "tiny." + layer.name.removeprefix("tiny.")
    assert case.density == pytest.approx(float(layer.decisions[:3].float().mean()))
    _, decisions = case.triton_gated()
    assert torch.equal(decisions, layer.decisions[:3])
    check = check_gated(case)
    assert check["ok"] and check["decisions_match_mask"]
    assert all(err["ok"] for err in check_dense(case).values())
    assert layer.kernel == (3, 3) and layer.padding == (1, 1)
    uneven = dataclasses.replace(layer, kernel=(3, 1), padding=(1, 0))  # same output size, not square
    with pytest.raises(NotImplementedError, match=r"square, got kernel=\(3, 1\), padding=\(1, 0\)"):
        uneven.shape()


def test_a_timing_run_with_recorded_decisions_needs_cuda(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    model, images = _student(batch=2)
    decisions = tmp_path / "tiny.pt"
    save_decisions(record(model, images, prefix="tiny."), decisions, {"kind": "test"})
    assert run_gpu.main(["--decisions", str(decisions), "--out", str(tmp_path / "t.json")]) == 2
    assert "timing needs a CUDA GPU" in capsys.readouterr().err and not (tmp_path / "t.json").exists()


def test_record_command_refuses_a_folder_that_is_not_a_demo_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert record_decisions.main(["--out", str(tmp_path / "d.pt"), "demo", str(tmp_path)]) == 2
    assert "results.json is missing" in capsys.readouterr().err
    assert not (tmp_path / "d.pt").exists()
