"""Data-parallel training on CPU (gloo): samplers, BatchNorm over the global batch, and a 2-process
``Trainer`` run equal to the single-process run with the same global batch.

Equality is checked in float64, where the two runs differ only by the order
of a few sums (well below 1e-9); in float32 the same rounding differences are
amplified by training (measured in ``docs/design.md#data-parallel-training``).
The reference is always the plain single-process computation.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from gating import GateConfig, GatedModel, data
from gating.distill import DistributedRun, Trainer, TrainConfig
from gating.models import resnet20

from _helpers import free_port

WORLD = 2


def _spawn(function, *args) -> None:
    """Run ``function(rank, WORLD, port, *args)`` in WORLD gloo processes."""
    mp.spawn(_join_and_run, args=(free_port(), function, args), nprocs=WORLD, join=True)


def _join_and_run(rank: int, port: int, function, args) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        function(DistributedRun(rank, WORLD, torch.device("cpu"), sync_batchnorm=True), *args)
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------ samplers
@pytest.mark.parametrize("world", [1, 2, 4])
def test_global_batch_sampler_shares_concatenate_to_the_single_process_batches(world):
    single = data.GlobalBatchSampler(103, 16, seed=3)
    shards = [data.GlobalBatchSampler(103, 16, seed=3, rank=r, world_size=world) for r in range(world)]
    for epoch in (0, 1):
        for sampler in (single, *shards):
            sampler.set_epoch(epoch)
        expected = list(single)
        got = [sum(parts, []) for parts in zip(*(list(s) for s in shards))]
        assert got == expected and len(expected) == 103 // 16
        assert all(len(batch) == 16 // world for s in shards for batch in s)
        order = data.EpochSampler(103, 3)
        order.set_epoch(epoch)
        assert sum(expected, []) == order.order()[: 6 * 16].tolist()


@pytest.mark.parametrize("kwargs, match", [
    (dict(global_batch=2, world_size=4, rank=0), "smaller than the number of processes"),
    (dict(global_batch=6, world_size=4, rank=0), "multiple of the number of processes"),
    (dict(global_batch=8, world_size=2, rank=2), "rank must be in"),
])
def test_global_batch_sampler_refuses_impossible_shares(kwargs, match):
    with pytest.raises(ValueError, match=match):
        data.GlobalBatchSampler(100, **kwargs)
    with pytest.raises(ValueError, match="make no full global batch"):
        data.GlobalBatchSampler(7, 8)


def test_shard_sampler_covers_every_sample_once():
    for n, world in ((10, 3), (2, 4), (0, 2)):
        seen = [i for r in range(world) for i in data.ShardSampler(n, r, world)]
        assert seen == list(range(n))


# ------------------------------------------------------- BatchNorm over processes
def _batchnorm_case():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.BatchNorm2d(4, affine=False),
                          nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).double()
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(8, 3, 8, 8, generator=generator, dtype=torch.float64)
    return model, inputs, torch.randint(0, 3, (8,), generator=generator)


def _grads_and_stats(model: nn.Module) -> dict[str, torch.Tensor]:
    grads = {f"grad.{name}": p.grad for name, p in model.named_parameters()}
    return grads | {f"buffer.{name}": b for name, b in model.named_buffers()}


def _batchnorm_worker(run: DistributedRun, out: str) -> None:
    model, inputs, targets = _batchnorm_case()
    share = len(inputs) // run.world_size
    mine = slice(run.rank * share, (run.rank + 1) * share)
    with run.training(model) as ddp:
        nn.functional.cross_entropy(ddp(inputs[mine]), targets[mine]).backward()
    if run.is_main:
        torch.save(_grads_and_stats(model), out)


def test_global_batchnorm_gives_the_gradients_and_statistics_of_one_process(tmp_path):
    model, inputs, targets = _batchnorm_case()
    nn.functional.cross_entropy(model(inputs), targets).backward()
    expected = _grads_and_stats(model)
    _spawn(_batchnorm_worker, str(tmp_path / "got.pt"))
    got = torch.load(tmp_path / "got.pt")
    assert got.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-10, atol=1e-12, msg=key)


# ------------------------------------------------------------ the whole Trainer
def _trainer_case(kind: str, run: DistributedRun) -> Trainer:
    torch.manual_seed(0)
    teacher = resnet20(num_classes=10, width=8).double()
    images = data.synthetic_dataset(96, image_size=12, seed=0)
    dataset = TensorDataset(images.tensors[0].double(), images.tensors[1])
    config = GateConfig(target_flops_ratio=0.5, gate_group=4) if kind == "partial_sum" else GateConfig(kind="runtime")
    student = GatedModel(teacher, config)
    calibration = dataset.tensors[0][:32]
    if kind == "partial_sum":
        student.calibrate(calibration, 0.5)
    else:
        student.set_keep_ratio(0.5)
    sampler = data.GlobalBatchSampler(len(dataset), 16, seed=0, rank=run.rank, world_size=run.world_size)
    test = DataLoader(dataset, batch_size=32, sampler=data.ShardSampler(len(dataset), run.rank, run.world_size))
    recipe = TrainConfig(epochs=2, lr=0.05, device="cpu", progress=False,
                         bn_recalibration_batches=2, budget_fit_batches=2 if kind == "partial_sum" else 0)
    return Trainer(student, DataLoader(dataset, batch_sampler=sampler), test, recipe, teacher=teacher, run=run)


def _trainer_worker(run: DistributedRun, kind: str, out: str) -> None:
    trainer = _trainer_case(kind, run)
    history = trainer.fit()
    if run.is_main:
        torch.save({"state": trainer.student.state_dict(), "history": history}, out)


@pytest.mark.parametrize("kind", ["partial_sum", "runtime"])
def test_two_processes_train_the_weights_of_one_process_with_the_same_global_batch(kind, tmp_path):
    """Gate parameters all take part in every step (DDP with find_unused_parameters=False would raise
    otherwise), the budget loss and every BatchNorm see the global batch, and the final BatchNorm
    re-estimation and budget fit use global batches."""
    single = _trainer_case(kind, DistributedRun())
    expected_history = single.fit()
    expected = single.student.state_dict()
    _spawn(_trainer_worker, kind, str(tmp_path / "got.pt"))
    got = torch.load(tmp_path / "got.pt", weights_only=False)
    assert got["state"].keys() == expected.keys()
    for key, value in expected.items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(got["state"][key], value, rtol=1e-9, atol=1e-11, msg=key)
    assert len(got["history"]) == len(expected_history) == 2
    for mine, theirs in zip(got["history"], expected_history):
        assert mine.keys() == theirs.keys()
        for key in mine:  # sums of per-process float values: equal to float rounding, not bit for bit
            assert mine[key] == pytest.approx(theirs[key], rel=1e-6, abs=1e-9), key


def test_a_single_process_run_is_not_wrapped():
    model = nn.Linear(2, 2)
    with DistributedRun().training(model) as trained:
        assert trained is model
    assert DistributedRun().sum([1, 2.5]) == [1.0, 2.5] and DistributedRun().any(False, True) == (False, True)
    copy.deepcopy(DistributedRun())
