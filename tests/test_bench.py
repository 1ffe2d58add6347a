"""``python -m gating bench`` on CPU: flags checked up front, counts equal to an independent recount, no timing.

Tiny models only (ResNet-20 at 32x32, the hidden testing path of ``--models``);
nothing here times anything or asserts a speed.
"""

from __future__ import annotations

import json

import pytest
import torch

import gating
from gating import GateConfig, GatedModel
from gating.bench import TIMING_NEEDS_CUDA, bench_input, calibration_input, BenchConfig
from gating.cli import CommandError, main

TOTALS = ("macs_dense", "bytes_dense", "macs_executed", "bytes_executed")
LAYER_FIELDS = ("name", "kind", "macs_dense", "macs_executed", "bytes_dense", "bytes_executed", "decisions_on",
                "decisions_total", "conditional_macs", "kernel_conditional_macs")


def _bench(tmp_path, *flags: str) -> dict:
    out = tmp_path / "bench.json"
    assert main(["bench", "--image-size", "32", "--batches", "1,3", "--calibration-images", "4", "--device", "cpu",
                 "--out", str(out), *flags]) == 0
    return json.loads(out.read_text())


@pytest.mark.usefixtures("single_thread")
def test_saved_gated_model_counts_equal_a_recount(tmp_path, capsys):
    """A saved, calibrated gated ResNet-20 benched as saved: every total and layer equals count_model's recount."""
    torch.manual_seed(0)
    gated = GatedModel(gating.build("resnet20", num_classes=10, width=4), GateConfig(target_flops_ratio=0.5))
    gated.calibrate(torch.randn(4, 3, 32, 32), 0.5)
    gating.save(gated.eval(), tmp_path / "model")

    result = _bench(tmp_path, "--saved", str(tmp_path / "model"))
    assert TIMING_NEEDS_CUDA in capsys.readouterr().out
    assert result["timing"] is None and result["timing_skipped"] == TIMING_NEEDS_CUDA
    assert result["environment"]["device"] == "cpu"
    assert result["parameters"]["dtype"] == "float32" and result["parameters"]["batches"] == [1, 3]
    assert [(r["model"], r["batch"]) for r in result["records"]] == [("model", 1), ("model", 3)]

    loaded = gating.load(tmp_path / "model").eval()
    for record in result["records"]:
        x = bench_input(record["batch"], 3, 32, seed=0)
        executed = gating.count_model(loaded.model, x)  # the layer names GatedModel.report() gives
        with loaded.open_gates():
            dense = gating.count_model(loaded, x)
        counts = record["counts"]
        assert (counts["macs_dense"], counts["bytes_dense"]) == (dense.macs_dense, dense.bytes_dense)
        assert (counts["macs_executed"], counts["bytes_executed"]) == (executed.macs_executed, executed.bytes_executed)
        assert counts["macs_reduction"] == dense.macs_dense / executed.macs_executed
        assert [{k: layer[k] for k in LAYER_FIELDS} for layer in counts["layers"]] == [
            {k: getattr(layer, k) for k in LAYER_FIELDS} for layer in executed.layers]
        assert record["timing"] is None and record["roofline"] is None
        assert record["setup"]["saved_gates"] and record["setup"]["target_flops"] is None
        for layer in counts["layers"]:
            counters = layer["kernel_counters"]
            if layer["kind"] == "gated":  # the kernel's own (tile-rounded) conditional MACs, as accounting has them
                assert counters["conditional_macs"] == layer["kernel_conditional_macs"]
            else:
                assert counters is None


@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("kind", ["partial_sum", "runtime"])
def test_random_model_meets_the_budget_and_dense_counts_match(tmp_path, kind):
    """--models resnet20: the dense baseline equals count_model of a fresh ResNet-20 (1000 classes) and the
    gates are calibrated to --target-flops on the seeded calibration batch."""
    result = _bench(tmp_path, "--models", "resnet20", "--kind", kind, "--target-flops", "0.5")
    fresh = gating.build("resnet20", num_classes=1000).eval()
    for record in result["records"]:
        counts = record["counts"]
        dense = gating.count_model(fresh, bench_input(record["batch"], 3, 32, seed=0))
        assert (counts["macs_dense"], counts["bytes_dense"]) == (dense.macs_dense, dense.bytes_dense)
        assert counts["macs_network_dense"] == dense.macs_dense  # not pruned
        assert sum(layer["macs_executed"] for layer in counts["layers"]) == counts["macs_executed"]
        assert sum(layer["bytes_executed"] for layer in counts["layers"]) == counts["bytes_executed"]
        assert record["setup"]["kind"] == kind and record["setup"]["target_flops"] == 0.5
        ratio = counts["macs_executed"] / counts["macs_dense"]
        if kind == "partial_sum":  # one threshold offset fits the budget closely
            assert ratio == pytest.approx(0.5, abs=0.08)
        else:  # keep ratios move in whole channel groups: the largest within the budget
            assert 0.2 < ratio <= 0.5 + 0.05
        if kind == "runtime":
            gated = [layer for layer in counts["layers"] if layer["kind"] == "runtime"]
            assert gated and all(layer["kernel_counters"]["macs"] > 0 for layer in gated)
    # the calibration batch is seeded apart from the measured images
    assert not torch.equal(calibration_input(BenchConfig(models=("resnet20",), image_size=32, device="cpu",
                                                         calibration_images=1), 3), bench_input(1, 3, 32, seed=0))


@pytest.mark.usefixtures("single_thread")
def test_pruned_model_counts_against_the_unpruned_baseline(tmp_path):
    result = _bench(tmp_path, "--models", "resnet20", "--prune-params", "0.6", "--batches", "2")
    record = result["records"][0]
    pruning = record["setup"]["pruning"]
    assert pruning["params_after"] <= 0.6 * pruning["params_before"]
    counts = record["counts"]
    assert counts["macs_network_dense"] < counts["macs_dense"]
    assert counts["macs_reduction"] == counts["macs_dense"] / counts["macs_executed"]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--models", "resnet19"], "--models names an unknown model 'resnet19' (close matches: resnet18"),
        (["--batches", "1,0"], "--batches must be an int >= 1, got 0"),
        (["--dtype", "float16", "--device", "cpu"], "--dtype float16 needs CUDA"),
        (["--dtype", "float8"], "--dtype must be one of"),
        (["--kind", "dense"], "--kind must be one of"),
        (["--target-flops", "1.5"], "--target-flops must be in (0, 1]"),
        (["--prune-params", "1"], "--prune-params must be in (0, 1)"),
        (["--saved", "nowhere", "--models", "resnet18"], "--saved benches one saved model; leave --models out"),
        (["--saved", "nowhere"], "--saved must be a folder written by gating.save"),
        (["--base-fraction", "0"], "--base-fraction must be in (0, 1]"),
    ],
)
def test_bad_flags_are_one_line_errors_before_any_work(tmp_path, flags, message):
    out = tmp_path / "bench.json"
    with pytest.raises(CommandError) as caught:
        main(["bench", "--out", str(out), *flags])
    assert caught.value.status == 2
    assert message in caught.value.message and "\n" not in caught.value.message
    assert caught.value.message.startswith("gating bench: ")
    assert not out.exists()


def test_a_budget_below_what_the_gates_can_execute_warns_naming_the_floor(tmp_path):
    out = tmp_path / "bench.json"
    with pytest.warns(UserWarning, match=r"--target-flops 0.2 is below what its gates can execute .*base fraction 0.5"):
        main(["bench", "--out", str(out), "--models", "resnet20", "--image-size", "16", "--batches", "1",
              "--base-fraction", "0.5", "--target-flops", "0.2"])
    setup = json.loads(out.read_text())["records"][0]["setup"]
    assert setup["budget_met"] is False and setup["reached_flops"] > 0.2
