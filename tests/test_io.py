"""Tests of gating.io: atomic writes, checkpoint validation, checked state loading."""

import os
import random
import re
from collections import defaultdict

import pytest
import torch
from torch import nn

from gating import io
from gating.io import CheckpointError


def _write_checkpoint(path, **overrides):
    kwargs = dict(
        model_state=nn.Linear(3, 2).state_dict(),
        optimizer_state={"state": {}, "param_groups": []},
        epoch=2,
        step=5,
        config={"lr": 0.1, "name": "toy", "betas": [0.9, 0.99]},
        metrics={"accuracy": 91.5},
        extra={"global_step": 21},
    )
    kwargs.update(overrides)
    io.save_checkpoint(path, **kwargs)


def _snapshot(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def _assert_unchanged(module, before):
    after = module.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), key


# ------------------------------------------------------------------ atomic_save


def test_atomic_save_round_trip_and_overwrite(tmp_path):
    path = tmp_path / "obj.pt"
    io.atomic_save({"x": torch.arange(4)}, path)
    io.atomic_save({"x": torch.arange(6)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.arange(6))
    assert os.listdir(tmp_path) == ["obj.pt"]


def _failing_save(obj, f, *args, **kwargs):
    f.write(b"PK\x03\x04 half a checkpoint")
    raise OSError("disk full")


def test_atomic_save_failure_leaves_no_file(tmp_path, monkeypatch):
    path = tmp_path / "new.pt"
    monkeypatch.setattr(torch, "save", _failing_save)
    with pytest.raises(OSError, match="disk full"):
        io.atomic_save({"x": 1}, path)
    assert os.listdir(tmp_path) == []


def test_atomic_save_failure_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    io.atomic_save({"x": torch.ones(3)}, path)
    before = path.read_bytes()
    monkeypatch.setattr(torch, "save", _failing_save)
    with pytest.raises(OSError, match="disk full"):
        io.atomic_save({"x": torch.zeros(3)}, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ckpt.pt"]


# ---------------------------------------------------------- save/load checkpoint


def test_checkpoint_round_trip(tmp_path):
    path = tmp_path / "ckpt.pt"
    model = nn.Linear(3, 2)
    _write_checkpoint(path, model_state=model.state_dict(), scaler_state={})
    ckpt = io.load_checkpoint(path)
    assert ckpt["format"] == io.FORMAT and ckpt["format_version"] == io.FORMAT_VERSION
    assert (ckpt["epoch"], ckpt["step"]) == (2, 5)
    assert ckpt["config"] == {"lr": 0.1, "name": "toy", "betas": [0.9, 0.99]}
    assert ckpt["metrics"] == {"accuracy": 91.5}
    assert ckpt["extra"] == {"global_step": 21}
    assert ckpt["scheduler_state"] is None and ckpt["scaler_state"] == {}
    for key, value in model.state_dict().items():
        assert torch.equal(ckpt["model_state"][key], value)


def test_checkpoint_rng_state_restores_torch_and_python_streams(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.manual_seed(123)
    random.seed(456)
    _write_checkpoint(path)
    expected = (torch.rand(5), [random.random() for _ in range(5)])
    torch.manual_seed(0)
    random.seed(0)
    io.restore_rng_state(io.load_checkpoint(path)["rng_state"])
    assert torch.equal(torch.rand(5), expected[0])
    assert [random.random() for _ in range(5)] == expected[1]


def test_checkpoint_without_rng_state(tmp_path):
    path = tmp_path / "ckpt.pt"
    _write_checkpoint(path, rng_state=False)
    assert io.load_checkpoint(path)["rng_state"] is None


@pytest.mark.parametrize(
    "where, kwargs",
    [
        ("config['out']", {"config": {"out": object()}}),
        ("metrics['version']", {"metrics": {"version": torch.__version__}}),
        ("extra['history'][0]", {"extra": {"history": [defaultdict(int)]}}),
    ],
    ids=["object", "str-subclass", "dict-subclass"],
)
def test_save_checkpoint_rejects_values_that_cannot_load_safely(tmp_path, where, kwargs):
    path = tmp_path / "ckpt.pt"
    with pytest.raises(TypeError, match=re.escape(f"{where} is a")):
        _write_checkpoint(path, **kwargs)
    assert not path.exists()


def test_load_missing_checkpoint(tmp_path):
    path = tmp_path / "nope.pt"
    with pytest.raises(CheckpointError, match="does not exist") as info:
        io.load_checkpoint(path)
    assert str(path) in str(info.value)


def test_load_truncated_checkpoint(tmp_path):
    good = tmp_path / "good.pt"
    _write_checkpoint(good)
    data = good.read_bytes()
    path = tmp_path / "truncated.pt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated, corrupt") as info:
        io.load_checkpoint(path)
    assert str(path) in str(info.value)


def test_load_garbage_file(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(os.urandom(256))
    with pytest.raises(CheckpointError, match="truncated, corrupt") as info:
        io.load_checkpoint(path)
    assert str(path) in str(info.value)


class _Custom:
    pass


def test_load_unsafe_pickle_is_refused(tmp_path):
    path = tmp_path / "unsafe.pt"
    torch.save({"format": io.FORMAT, "payload": _Custom()}, path)
    with pytest.raises(CheckpointError, match="not a safe torch file") as info:
        io.load_checkpoint(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "content",
    [{"state_dict": {"w": torch.ones(2)}}, torch.ones(3), [1, 2, 3]],
    ids=["plain-state-dict", "tensor", "list"],
)
def test_load_foreign_file(tmp_path, content):
    path = tmp_path / "foreign.pt"
    torch.save(content, path)
    with pytest.raises(CheckpointError, match="is not a gating checkpoint") as info:
        io.load_checkpoint(path)
    assert str(path) in str(info.value)


def test_load_checkpoint_missing_keys(tmp_path):
    path = tmp_path / "partial.pt"
    torch.save({"format": io.FORMAT, "format_version": io.FORMAT_VERSION, "epoch": 0}, path)
    with pytest.raises(CheckpointError, match="lacks required keys: model_state, step, config") as info:
        io.load_checkpoint(path)
    assert str(path) in str(info.value)


def test_load_checkpoint_wrong_version(tmp_path):
    path = tmp_path / "future.pt"
    _write_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    ckpt["format_version"] = io.FORMAT_VERSION + 1
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=f"format version {io.FORMAT_VERSION + 1}") as info:
        io.load_checkpoint(path)
    assert str(path) in str(info.value)


# ------------------------------------------------------- load_state_dict_checked


class _Net(nn.Module):
    def __init__(self, hidden=4):
        super().__init__()
        self.fc1 = nn.Linear(3, hidden)
        self.bn = nn.BatchNorm1d(hidden)
        self.fc2 = nn.Linear(hidden, 2)


def test_load_state_dict_checked_loads_matching_state():
    source, target = _Net(), _Net()
    io.load_state_dict_checked(target, source.state_dict(), "student")
    _assert_unchanged(target, _snapshot(source))


def test_load_state_dict_checked_refuses_shape_mismatch():
    target = _Net(hidden=4)
    before = _snapshot(target)
    expected = r"student: .*shape mismatches \(7\): bn.bias: checkpoint \(5,\) vs model \(4,\)"
    with pytest.raises(CheckpointError, match=expected):
        io.load_state_dict_checked(target, _Net(hidden=5).state_dict(), "student")
    _assert_unchanged(target, before)


def test_load_state_dict_checked_refuses_missing_and_unexpected_keys():
    target = _Net()
    before = _snapshot(target)
    state = _snapshot(_Net())
    del state["fc2.bias"]
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as info:
        io.load_state_dict_checked(target, state, "teacher")
    message = str(info.value)
    assert message.startswith("teacher:")
    assert "missing keys (1): fc2.bias" in message
    assert "unexpected keys (1): extra.weight" in message
    _assert_unchanged(target, before)


def test_load_state_dict_checked_lists_only_a_few_keys():
    target = nn.Sequential(*[nn.Linear(2, 2) for _ in range(5)])
    with pytest.raises(CheckpointError, match=r"missing keys \(10\): .*\(\+5 more\)"):
        io.load_state_dict_checked(target, {}, "student")
