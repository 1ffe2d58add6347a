"""``DistributedRun``: where one process stands in a data-parallel training run (or a single-process one).

A :class:`~gating.distill.Trainer` asks its run for everything that differs
between one process and ``torchrun --nproc_per_node N``: the model to call
in training (wrapped in ``DistributedDataParallel``), whether it is the main
process (the only one that writes checkpoints, logs, results and progress
bars), sums of metrics over the processes, a common decision to stop, and
the global batch of a local one. A single-process run (``world_size == 1``,
the default) answers all of these locally, without ``torch.distributed``.

:meth:`DistributedRun.from_environment` reads torchrun's variables
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` / ``MASTER_PORT``)
and joins the process group: NCCL on CUDA (one GPU per process, ``cuda:LOCAL_RANK``),
gloo on CPU.

Gates under data parallelism (``docs/design.md#data-parallel-training``):

* every gate parameter takes part in every training step's graph (the
  thresholds through the straight-through surrogate and the threshold loss,
  the runtime gate's predictor through its soft importance), so DDP runs
  with ``find_unused_parameters=False``; ``tests/test_distributed.py`` runs
  both gate kinds under DDP, which raises on the next step if a parameter
  got no gradient;
* the budget loss uses the executed-MAC ratio of the global batch
  (``GatedModel.global_batch``), and with ``sync_batchnorm`` every BatchNorm,
  the gates' decision BatchNorms included, trains on global-batch statistics
  (:func:`~gating.distill.sync_batchnorm.global_batchnorm`); without it
  each process normalises its own share, as plain DDP does.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from .config import resolve_device
from .sync_batchnorm import global_batchnorm

__all__ = ["DistributedRun"]


@dataclass
class DistributedRun:
    """One process of a data-parallel run of ``world_size`` processes; the defaults are a single process.

    Attributes:
        rank: this process's index in ``[0, world_size)``.
        world_size: number of processes (1 = no ``torch.distributed``).
        device: the device this process trains on.
        sync_batchnorm: BatchNorms train on global-batch statistics (only
            matters when ``world_size > 1``).
    """

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    sync_batchnorm: bool = False

    @classmethod
    def from_environment(cls, device: str | None = None, sync_batchnorm: bool = False) -> "DistributedRun":
        """The run torchrun started this process in, joining its process group; a single process otherwise.

        ``device``: ``None`` picks ``cuda:LOCAL_RANK`` when CUDA is available
        (``cuda`` alone for a single process), else the CPU; an explicit
        ``"cuda"`` under torchrun also becomes ``cuda:LOCAL_RANK``.

        Raises:
            ValueError: torchrun's variables are incomplete, or there are
                more processes than GPUs on a CUDA run.
        """
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls(device=resolve_device(device), sync_batchnorm=sync_batchnorm)
        try:
            rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
        except KeyError as missing:
            raise ValueError(f"WORLD_SIZE={world_size} but {missing.args[0]} is not set: start the run with torchrun")
        chosen = resolve_device(device)
        if chosen.type == "cuda":
            if local_rank >= torch.cuda.device_count():
                raise ValueError(f"process {local_rank} on this node has no GPU: {torch.cuda.device_count()} visible")
            chosen = torch.device("cuda", local_rank)
            torch.cuda.set_device(chosen)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo", rank=rank, world_size=world_size)
        return cls(rank=rank, world_size=world_size, device=chosen, sync_batchnorm=sync_batchnorm)

    @property
    def is_main(self) -> bool:
        """Whether this process writes checkpoints, logs, results and progress bars (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.world_size > 1

    def all_reduce(self, tensor: Tensor) -> Tensor:
        """Differentiable sum of ``tensor`` over the processes (``tensor`` itself in a single process)."""
        if not self.distributed:
            return tensor
        return _SumOverProcesses.apply(tensor)

    def mean(self, tensor: Tensor) -> Tensor:
        """Differentiable mean over the global batch of a per-sample ``tensor`` ``[n, ...]`` (dimension 0)."""
        if not self.distributed:
            return tensor.mean(dim=0)
        count = torch.tensor([float(tensor.shape[0])], device=tensor.device, dtype=tensor.dtype)
        return self.all_reduce(tensor.sum(dim=0)) / self.all_reduce(count).detach()[0]

    def sum(self, values: Sequence[float]) -> list[float]:
        """Each value summed over the processes (float64)."""
        if not self.distributed:
            return [float(v) for v in values]
        tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(tensor)
        return tensor.tolist()

    def any(self, *flags: bool) -> tuple[bool, ...]:
        """Each flag, true if it is true in any process (so all processes take the same decision)."""
        return tuple(total > 0 for total in self.sum([float(bool(flag)) for flag in flags]))

    def gather(self, tensor: Tensor) -> Tensor:
        """The processes' equally sized ``tensor`` ``[n, ...]`` concatenated in rank order ``[world_size*n, ...]``."""
        if not self.distributed:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    def broadcast_module(self, module: nn.Module) -> None:
        """Give every process rank 0's parameters and buffers of ``module`` (no-op in a single process)."""
        if self.distributed:
            with torch.no_grad():
                for tensor in (*module.parameters(), *module.buffers()):
                    dist.broadcast(tensor.data, src=0)

    def broadcast_object(self, value: Any) -> Any:
        """Rank 0's ``value`` (a picklable object) in every process (``value`` itself in a single process)."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        """Wait for every process (no-op in a single process)."""
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        """Leave the process group (no-op in a single process)."""
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()

    @contextlib.contextmanager
    def training(self, model: nn.Module) -> Iterator[nn.Module]:
        """While active, yields the module to call for training steps: ``model``, or it wrapped in DDP.

        In a data-parallel run: BatchNorms on global-batch statistics when
        ``sync_batchnorm``, the budget loss over the global batch (a model
        with ``global_batch``, e.g. ``GatedModel``), and DDP (which first
        broadcasts rank 0's parameters and buffers). On a normal exit every
        process gets rank 0's buffers (BatchNorm statistics of the last step);
        everything is undone on exit.
        """
        if not self.distributed:
            yield model
            return
        with contextlib.ExitStack() as stack:
            if self.sync_batchnorm:
                stack.enter_context(global_batchnorm(model, self.all_reduce))
            global_batch = getattr(model, "global_batch", None)
            if global_batch is not None:
                stack.enter_context(global_batch(self.mean))
            ids = [self.device.index] if self.device.type == "cuda" else None
            yield DistributedDataParallel(model, device_ids=ids, find_unused_parameters=False)
            self._broadcast_buffers(model)

    def _broadcast_buffers(self, model: nn.Module) -> None:
        """Give every process rank 0's buffers (DDP broadcasts them before each forward, not after the last one)."""
        with torch.no_grad():
            for buffer in model.buffers():
                dist.broadcast(buffer.data, src=0)

    def _comm_device(self) -> torch.device:
        """Where collective tensors live: the GPU for NCCL, the CPU for gloo."""
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")


class _SumOverProcesses(torch.autograd.Function):
    """``sum_r x_r`` in every process; the gradient of each ``x_r`` is the sum of the processes' output
    gradients (every process's loss depends on every ``x_r``)."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor) -> Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total
