"""BatchNorm over the global batch of a data-parallel run, for any ``torch.distributed`` backend.

``torch.nn.SyncBatchNorm`` runs on CUDA only; data-parallel training on CPU
(gloo) needs the same thing, so :func:`global_batchnorm` makes every
``BatchNorm2d`` of a model, while it is active, normalise training batches
with the mean and variance of the global batch (all processes' local batches
together) and update its running statistics with them, exactly as one
process holding the whole batch would. Eval mode is untouched.

How: the module's ``forward`` is overridden on the instance for the
duration of the context (class, parameters, buffers and ``state_dict`` keys
stay those of ``nn.BatchNorm2d``, so checkpoints, pruning and saving see a
plain BatchNorm). The statistics are two differentiable all-reduces
(``DistributedRun.all_reduce``): the sum (-> mean), then
the sum of squared deviations (-> variance), the two-pass form a single
BatchNorm computes, so the result matches it to float rounding. The backward
of a sum all-reduce is a sum all-reduce of the gradients; combined with
DistributedDataParallel's gradient averaging this gives each parameter the
gradient of the single-process loss.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

__all__ = ["global_batchnorm", "global_batch_norm_forward"]

AllReduce = Callable[[Tensor], Tensor]
"""A differentiable sum over the processes (identity in a single process)."""


def global_batch_norm_forward(bn: nn.BatchNorm2d, all_reduce: AllReduce, x: Tensor) -> Tensor:
    """``bn(x)`` with training statistics taken over the global batch; ``x`` ``[n, C, H, W]`` (local share).

    In eval mode, or for a BatchNorm without running statistics in eval
    mode, this is ``nn.BatchNorm2d.forward``. Statistics are computed in
    float32 or wider; the output has ``x``'s dtype.
    """
    if not bn.training:
        return nn.BatchNorm2d.forward(bn, x)
    if x.dim() != 4 or x.shape[1] != bn.num_features:
        raise ValueError(f"BatchNorm2d({bn.num_features}) expects [N, {bn.num_features}, H, W], got {tuple(x.shape)}")
    dtype = torch.promote_types(x.dtype, torch.float32)
    values = x.to(dtype)
    local = values.shape[0] * values.shape[2] * values.shape[3]
    count = all_reduce(torch.tensor([float(local)], dtype=dtype, device=x.device)).detach()
    mean = all_reduce(values.sum(dim=(0, 2, 3))) / count
    centred = values - mean[None, :, None, None]
    var = all_reduce(centred.pow(2).sum(dim=(0, 2, 3))) / count
    if bn.track_running_stats and bn.running_mean is not None:
        _update_running_stats(bn, mean.detach(), var.detach(), float(count))
    out = centred * torch.rsqrt(var + bn.eps)[None, :, None, None]
    if bn.affine:
        out = out * bn.weight.to(dtype)[None, :, None, None] + bn.bias.to(dtype)[None, :, None, None]
    return out.to(x.dtype)


@torch.no_grad()
def _update_running_stats(bn: nn.BatchNorm2d, mean: Tensor, var: Tensor, count: float) -> None:
    """What ``F.batch_norm`` does to the running statistics (unbiased variance, momentum or cumulative)."""
    bn.num_batches_tracked.add_(1)
    momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
    unbiased = var * (count / max(count - 1.0, 1.0))
    bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), momentum)
    bn.running_var.lerp_(unbiased.to(bn.running_var.dtype), momentum)


@contextlib.contextmanager
def global_batchnorm(model: nn.Module, all_reduce: AllReduce) -> Iterator[int]:
    """While active, every ``nn.BatchNorm2d`` of ``model`` trains on global-batch statistics; yields their number.

    ``all_reduce`` is the differentiable sum over the processes
    (``DistributedRun.all_reduce``). The original ``forward`` is restored on
    exit, also after an exception.
    """
    patched = [module for module in model.modules() if isinstance(module, nn.BatchNorm2d)]
    for module in patched:
        module.forward = functools.partial(global_batch_norm_forward, module, all_reduce)
    try:
        yield len(patched)
    finally:
        for module in patched:
            del module.forward
