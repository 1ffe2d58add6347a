"""Correctness checks of the benchmarked implementations against float64 references.

Each check runs on fresh random inputs (so no stale buffer of an earlier call
can pass for an output) and compares with ``kernels.reference`` in float64;
the gated reference runs on the kernel's own decisions. An error above
:data:`REL_TOL`, or a decision that differs from the case's mask, is a failure
(:func:`failures`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from contextlib import AbstractContextManager

import torch

from kernels.reference import conv2d_reference, gated_conv2d_reference

from .cases import ConvCase

__all__ = ["REL_TOL", "check_dense", "check_gated", "failures", "rel_errors"]

REL_TOL = 1e-2
"""Largest accepted ``||out - ref|| / ||ref||`` of a bfloat16 output."""


def rel_errors(out: torch.Tensor, ref: torch.Tensor) -> dict[str, object]:
    """Relative L2 and max errors of ``out`` against the float64 ``ref`` (same shape); ``ok`` within ``REL_TOL``."""
    diff = out.double() - ref
    rel = float(diff.norm() / ref.norm())
    return {
        "rel_l2": rel,
        "max_abs_over_max_ref": float(diff.abs().max() / ref.abs().max()),
        "ok": math.isfinite(rel) and rel <= REL_TOL,
    }


def _reference_flags() -> AbstractContextManager:
    """cuDNN settings for the float64 references: no autotuning, no TF32."""
    return torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=False, allow_tf32=False)


def check_dense(case: ConvCase) -> dict[str, dict[str, object]]:
    """Errors of cuDNN and Triton dense against the float64 reference (references computed first)."""
    args = case.shape.conv_args()
    with _reference_flags():
        ref = conv2d_reference(case.inputs.x.double(), case.inputs.weight.double(), **args)
    ref_affine = ref * case.scale.double()[:, None, None] + case.shift.double()[:, None, None]
    return {"cudnn": rel_errors(case.cudnn(), ref), "triton_dense": rel_errors(case.triton_dense(), ref_affine)}


def check_gated(case: ConvCase) -> dict[str, object]:
    """Error of Triton gated against the float64 reference run on the kernel's decisions."""
    out, decisions = case.triton_gated()
    with _reference_flags():
        ref, _ = gated_conv2d_reference(
            case.inputs.x.double(), case.inputs.weight.double(), case.inputs.gate_scale, case.inputs.gate_shift,
            scale=case.scale.double(), shift=case.shift.double(), decisions=decisions,
            **case.gate, **case.shape.conv_args(),
        )  # fmt: skip
    return rel_errors(out, ref) | {"decisions_match_mask": torch.equal(decisions, case.inputs.decisions)}


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
