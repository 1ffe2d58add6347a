"""Saving and loading models as safetensors plus a JSON recipe: bit identity, no half-writes, every bad file."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

import gating
from gating import GateConfig, GatedModel
from gating.io import ModelFileError, export
from gating.prune import PruneConfig, prune

from _helpers import ROOT


def _gated_pruned(tmp_path):
    torch.manual_seed(0)
    model = GatedModel(gating.build("resnet20", width=16), GateConfig(gate_group=8))
    with torch.no_grad():
        for layer in model.gated_layers().values():
            layer.gate_bn.running_var.uniform_(0.5, 2)
            layer.threshold.uniform_(-0.3, 0.3)
    model.eval()
    prune(model, torch.randn(1, 3, 32, 32), PruneConfig(ratio=0.4))
    return model


def test_mobilenet_v3_small_at_half_the_parameters_reloads_bit_identically_in_a_fresh_process(tmp_path):
    torch.manual_seed(0)
    model = gating.build("mobilenet_v3_small", num_classes=10).eval()
    result = prune(model, torch.randn(1, 3, 64, 64), PruneConfig(params=0.5))
    assert result.after.params <= 0.5 * result.before.params
    gating.save(model, tmp_path / "model")
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        want = model(x)
    torch.save(x, tmp_path / "x.pt")
    script = textwrap.dedent(f"""
        import torch, gating
        model = gating.load({str(tmp_path / 'model')!r})
        x = torch.load({str(tmp_path / 'x.pt')!r}, weights_only=True)
        with torch.no_grad():
            torch.save(model(x), {str(tmp_path / 'y.pt')!r})
    """)
    subprocess.run([sys.executable, "-c", script], check=True, cwd=ROOT, timeout=300)
    got = torch.load(tmp_path / "y.pt", weights_only=True)
    assert torch.equal(got, want)
    recipe = json.loads((tmp_path / "model" / "recipe.json").read_text())
    assert recipe["constructor"] == {"callable": "mobilenet_v3_small", "kwargs": {"num_classes": 10}}
    assert recipe["pruned_channels"]  # the rebuilt network is the pruned one


def test_gated_pruned_model_round_trip_keeps_outputs_and_decisions(tmp_path):
    model = _gated_pruned(tmp_path)
    gating.save(model, tmp_path / "gated")
    loaded = gating.load(tmp_path / "gated")
    assert isinstance(loaded, GatedModel) and loaded.gated_names == model.gated_names
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    for name, layer in model.gated_layers().items():
        assert torch.equal(loaded.gated_layers()[name].last_decisions, layer.last_decisions)
    assert not loaded.training


def test_save_refuses_an_existing_path_unless_overwrite(tmp_path):
    model = gating.build("resnet20")
    gating.save(model, tmp_path / "m")
    with pytest.raises(FileExistsError, match="exists"):
        gating.save(model, tmp_path / "m")
    other = gating.build("resnet20", num_classes=3)
    gating.save(other, tmp_path / "m", overwrite=True)
    assert gating.load(tmp_path / "m").fc.out_features == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary folders left


def test_a_failed_save_leaves_nothing_behind(tmp_path, monkeypatch):
    import safetensors.torch

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        gating.save(gating.build("resnet20"), tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


def test_save_needs_the_constructor():
    from gating.models import resnet20

    with pytest.raises(ValueError, match="gating.build"):
        gating.save(resnet20(), "unused")


def test_build_names_unknown_constructors():
    with pytest.raises(ValueError, match="neither a gating.models name"):
        gating.build("resnet_9000")
    with pytest.raises(ValueError, match="cannot be imported"):
        gating.build("no_such_module:thing")
    with pytest.raises(TypeError, match="JSON"):
        gating.build("resnet20", width=(16,))


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "saved"
    gating.save(gating.build("resnet20"), path)
    return path


def _edit_recipe(path, change):
    file = path / "recipe.json"
    recipe = json.loads(file.read_text())
    change(recipe)
    file.write_text(json.dumps(recipe))


def _rewrite_weights(path, tensors):
    from safetensors.torch import save_file

    save_file(tensors, str(path / "weights.safetensors"))
    digest, size = export._digest(path / "weights.safetensors")

    def fix(recipe):
        recipe["weights"].update(sha256=digest, bytes=size)

    _edit_recipe(path, fix)


def test_missing_folder_and_files(tmp_path, saved):
    with pytest.raises(ModelFileError, match="missing or not a directory"):
        gating.load(tmp_path / "nothing")
    (saved / "weights.safetensors").unlink()
    with pytest.raises(ModelFileError, match="weights.safetensors is missing"):
        gating.load(saved)
    (saved / "recipe.json").unlink()
    with pytest.raises(ModelFileError, match="recipe.json is missing"):
        gating.load(saved)


def test_truncated_weights(saved):
    file = saved / "weights.safetensors"
    file.write_bytes(file.read_bytes()[:1000])
    with pytest.raises(ModelFileError, match="truncated or replaced"):
        gating.load(saved)


def test_tampered_weights_fail_the_checksum(saved):
    file = saved / "weights.safetensors"
    data = bytearray(file.read_bytes())
    data[-1] ^= 0xFF
    file.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="SHA-256"):
        gating.load(saved)


def test_tampered_checksum(saved):
    _edit_recipe(saved, lambda r: r["weights"].update(sha256="0" * 64))
    with pytest.raises(ModelFileError, match="does not match the recipe"):
        gating.load(saved)


def test_recipe_that_is_not_json(saved):
    file = saved / "recipe.json"
    file.write_text(file.read_text()[:-40])
    with pytest.raises(ModelFileError, match="recipe.json is not valid JSON"):
        gating.load(saved)


@pytest.mark.parametrize("change, match", [
    (lambda r: r.update(format="other"), "not a gating model recipe"),
    (lambda r: r.update(format_version=99), "format version 99"),
    (lambda r: r.pop("gate"), "lacks required keys: gate"),
    (lambda r: r.update(constructor={"callable": "resnet_9000", "kwargs": {}}), "cannot build the network"),
    (lambda r: r.update(pruned_channels={"conv1": {"out": [0, 1, 99]}}), "pruned_channels do not fit"),
    (lambda r: r.update(pruned_channels={"conv1": {"out": "all"}}), "pruned_channels do not fit"),
])
def test_bad_recipes_are_named(saved, change, match):
    _edit_recipe(saved, change)
    with pytest.raises(ModelFileError, match=match):
        gating.load(saved)


def test_weights_from_another_architecture(saved):
    from gating.models import resnet56

    _rewrite_weights(saved, {k: v.contiguous() for k, v in resnet56().state_dict().items()})
    with pytest.raises(ModelFileError, match="does not fit the model its recipe builds.*unexpected keys"):
        gating.load(saved)


def test_recipe_whose_pruning_does_not_match_the_weights(saved):
    _edit_recipe(saved, lambda r: r.update(pruned_channels={
        "layer1.0.conv1": {"out": list(range(8))}, "layer1.0.bn1": {"out": list(range(8))},
        "layer1.0.conv2": {"in": list(range(8))},
    }))
    with pytest.raises(ModelFileError, match="shape mismatches"):
        gating.load(saved)


def test_zero_kernels_are_stored_compactly_and_restored_bit_for_bit(tmp_path):
    torch.manual_seed(0)
    model = gating.build("resnet20", width=32).eval()
    x = torch.randn(2, 3, 32, 32)
    gating.save(model, tmp_path / "dense")
    prune(model, x[:1], PruneConfig(criterion="multigranularity", ratio=0.5, scope="layer"))
    gating.save(model, tmp_path / "mg")
    recipe = json.loads((tmp_path / "mg" / "recipe.json").read_text())
    assert "layer2.1.conv2.weight" in recipe["compact_kernels"]
    loaded = gating.load(tmp_path / "mg")
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    disk = lambda p: sum(f.stat().st_size for f in p.iterdir())  # noqa: E731
    params = lambda m: sum(p.numel() * p.element_size() for p in m.parameters())  # noqa: E731
    # Less on disk than the pruned model's dense parameter bytes: the zero kernels are not stored.
    assert disk(tmp_path / "mg") < params(model) < disk(tmp_path / "dense")


def test_compact_kernels_missing_their_mask_are_named(tmp_path):
    model = gating.build("resnet20").eval()
    prune(model, torch.randn(1, 3, 32, 32), PruneConfig(criterion="multigranularity", ratio=0.5, scope="layer"))
    gating.save(model, tmp_path / "mg")
    from safetensors.torch import load_file

    tensors = load_file(str(tmp_path / "mg" / "weights.safetensors"))
    key = next(k for k in tensors if k.endswith("::alive"))
    del tensors[key]
    _rewrite_weights(tmp_path / "mg", tensors)
    with pytest.raises(ModelFileError, match="compact kernels of .* are missing"):
        gating.load(tmp_path / "mg")
