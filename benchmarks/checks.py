"""Correctness checks of the benchmarked implementations, with a tolerance measured per case.

Each check runs on fresh random inputs (so no stale buffer of an earlier call
can pass for an output) and compares with ``kernels.reference`` in float64;
the gated reference runs on the kernel's own decisions. The tolerance is not a
fixed constant but the error PyTorch itself makes on the same math at the
case's dtype (the rule FlashAttention's tests use): the same reference
(``torch.nn.functional.conv2d`` underneath; for the gated op the reference of
the gated conv on the same decisions) evaluated in the kernel's dtype is
compared with the float64 one, and an output passes when

    ``rel_l2(out) <= TOLERANCE_FACTOR * rel_l2(pytorch) + TOLERANCE_FLOOR``

with ``rel_l2(y) = ||y - ref||_2 / ||ref||_2`` against the float64 ``ref``.
An output above its tolerance, or a decision that differs from the case's
mask, is a failure (:func:`failures`). The channel-sparse benchmark
(:mod:`benchmarks.bench_channel_sparse`) checks its outputs the same way
(:func:`check_channel_sparse`), and its pruned outputs must be exactly 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from contextlib import AbstractContextManager

import torch

from kernels.channel_sparse_reference import channel_sparse_conv2d_reference
from kernels.reference import conv2d_reference, gated_conv2d_reference

from .cases import ConvCase

__all__ = [
    "TOLERANCE_FACTOR",
    "TOLERANCE_FLOOR",
    "check_channel_sparse",
    "check_dense",
    "check_gated",
    "dense_references",
    "failures",
    "gated_references",
    "rel_errors",
    "tolerance",
]

TOLERANCE_FACTOR = 2.0
"""How many times PyTorch's own relative L2 error at the case's dtype an output may have."""

TOLERANCE_FLOOR = 1e-6
"""Added to every tolerance, in relative L2 units.

Where PyTorch's error is exactly 0 (every output exactly representable, e.g.
all zeros or small integers), ``TOLERANCE_FACTOR * 0`` would demand a
bit-exact kernel; 1e-6 (about 8 float32 ulps) lets a kernel that accumulates
in float32 in another order pass, and is three orders of magnitude below one
bfloat16 or float16 rounding (2^-9 and 2^-12 relative), so it does not loosen
the check of a real case.
"""


def _ratio(num: float, den: float) -> float:
    """``num / den`` with ``0 / 0 = 0`` (an exact zero output) and ``x / 0 = inf``."""
    if den == 0:
        return 0.0 if num == 0 else math.inf
    return num / den


def tolerance(pytorch_error: float) -> float:
    """The largest accepted relative L2 error of an output whose PyTorch counterpart has ``pytorch_error``."""
    return TOLERANCE_FACTOR * pytorch_error + TOLERANCE_FLOOR


def rel_errors(out: torch.Tensor, ref: torch.Tensor, pytorch_out: torch.Tensor) -> dict[str, object]:
    """Errors of ``out`` against the float64 ``ref``, judged by PyTorch's error ``pytorch_out`` at its dtype.

    ``out``, ``ref`` and ``pytorch_out`` have one shape; ``out`` and
    ``pytorch_out`` may have any floating dtype. Returns ``rel_l2``
    (``||out - ref|| / ||ref||``), ``max_abs_over_max_ref``,
    ``pytorch_rel_error`` (``rel_l2`` of ``pytorch_out``), ``tolerance``
    (:func:`tolerance` of it) and ``ok`` (``rel_l2`` finite and within the
    tolerance).
    """
    ref = ref.double()
    diff = out.double() - ref
    rel = _ratio(float(diff.norm()), float(ref.norm()))
    pytorch_rel = _ratio(float((pytorch_out.double() - ref).norm()), float(ref.norm()))
    tol = tolerance(pytorch_rel)
    return {
        "rel_l2": rel,
        "max_abs_over_max_ref": _ratio(float(diff.abs().max()), float(ref.abs().max())) if ref.numel() else 0.0,
        "pytorch_rel_error": pytorch_rel,
        "tolerance": tol,
        "ok": math.isfinite(rel) and rel <= tol,
    }


def _reference_flags() -> AbstractContextManager:
    """cuDNN settings for the references: no autotuning, no TF32."""
    return torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=False, allow_tf32=False)


def dense_references(case: ConvCase) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{"cudnn": (ref, pytorch), "triton_dense": (ref, pytorch)}`` of the case's dense conv.

    ``ref`` is float64, ``pytorch`` the same math in the case's dtype, both
    ``[N, C_out, OH, OW]``: the plain conv for cuDNN, the conv with the
    case's scale/shift epilogue for Triton dense.
    """
    x, weight, args = case.inputs.x, case.inputs.weight, case.shape.conv_args()
    with _reference_flags():
        ref = conv2d_reference(x.double(), weight.double(), **args)
        plain = conv2d_reference(x, weight, **args)
        affine = conv2d_reference(x, weight, scale=case.scale, shift=case.shift, **args)
    ref_affine = ref * case.scale.double()[:, None, None] + case.shift.double()[:, None, None]
    return {"cudnn": (ref, plain), "triton_dense": (ref_affine, affine)}


def gated_references(case: ConvCase, decisions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ref, pytorch)`` of the case's gated conv on ``decisions`` (bool ``[N, G, OH, OW]``).

    ``ref`` is float64, ``pytorch`` the gated reference in the case's dtype;
    both ``[N, C_out, OH, OW]`` with the case's scale/shift epilogue.
    """
    x, weight, gate = case.inputs.x, case.inputs.weight, (case.inputs.gate_scale, case.inputs.gate_shift)
    kwargs = {"decisions": decisions, **case.spec.to_dict(), **case.shape.conv_args()}
    with _reference_flags():
        ref, _ = gated_conv2d_reference(
            x.double(), weight.double(), *gate, scale=case.scale.double(), shift=case.shift.double(), **kwargs
        )
        pytorch, _ = gated_conv2d_reference(x, weight, *gate, scale=case.scale, shift=case.shift, **kwargs)
    return ref, pytorch


def check_dense(case: ConvCase) -> dict[str, dict[str, object]]:
    """:func:`rel_errors` of cuDNN and Triton dense (references computed first)."""
    references = dense_references(case)
    outputs = {"cudnn": case.cudnn(), "triton_dense": case.triton_dense()}
    return {name: rel_errors(outputs[name], *references[name]) for name in references}


def check_gated(case: ConvCase) -> dict[str, object]:
    """:func:`rel_errors` of Triton gated on its own decisions, and whether they are the case's mask."""
    out, decisions = case.triton_gated()
    errors = rel_errors(out, *gated_references(case, decisions))
    return errors | {"decisions_match_mask": torch.equal(decisions, case.inputs.decisions)}


def failures(dense: Iterable[dict], gated: Iterable[dict]) -> list[str]:
    """Names of the cases whose outputs or decisions failed their check."""
    bad = []
    for rec in dense:
        if rec["check"] is not None and not all(err["ok"] for err in rec["check"].values()):
            bad.append(f"{rec['shape']} b{rec['batch']} dense")
    for rec in gated:
        check_ok = rec["check"] is None or (rec["check"]["ok"] and rec["check"]["decisions_match_mask"])
        if not (check_ok and rec["decisions_match_mask"]):
            bad.append(f"{rec['shape']} b{rec['batch']} d{rec['target_density']} gated")
    return bad


def check_channel_sparse(
    out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, out_mask: torch.Tensor, in_mask: torch.Tensor | None,
    scale: torch.Tensor, shift: torch.Tensor, conv_args: dict[str, int],
) -> dict[str, object]:  # fmt: skip
    """:func:`rel_errors` of a channel-sparse output ``out`` on its inputs, and whether its pruned outputs are 0.

    The float64 reference and the same math in x's dtype are
    :func:`kernels.channel_sparse_reference.channel_sparse_conv2d_reference`
    with the folded ``scale``/``shift`` (no residual, no ReLU, so every
    pruned output must be exactly 0: ``pruned_exact_zero``, part of ``ok``).
    """
    masks = (out_mask, in_mask)
    with _reference_flags():
        ref = channel_sparse_conv2d_reference(
            x.double(), weight.double(), *masks, scale=scale.double(), shift=shift.double(), **conv_args
        )
        pytorch = channel_sparse_conv2d_reference(x, weight, *masks, scale=scale, shift=shift, **conv_args)
    errors = rel_errors(out, ref, pytorch)
    zero = bool((out.masked_select(~out_mask[:, :, None, None]) == 0).all())
    return errors | {"pruned_exact_zero": zero, "ok": errors["ok"] and zero}
