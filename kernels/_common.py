"""Host-side pieces shared by the Triton kernels and their PyTorch references.

Pure PyTorch, no Triton, so ``kernels.reference`` works where Triton is not
installed: the single validation path of kernels and references alike
(:func:`validate_conv`, :func:`validate_gated` -> :class:`ConvGeometry`), the
packed weight layout, the per-output-channel base intervals the gated kernel
reads, and the small launch helpers both kernels use.

Errors: ``ValueError`` naming the argument for malformed arguments;
``NotImplementedError`` naming the configuration for what the kernels do not
support; ``RuntimeError`` for a Triton kernel called on a CPU tensor outside
the Triton interpreter.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import NamedTuple

import torch

from . import partition

KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@dataclass(frozen=True)
class PackedWeight:
    """A conv weight packed once, at build time, into the layout the kernels read.

    ``data`` is ``[kh, kw, C_in, C_out]`` contiguous: row ``(r*kw + s)*C_in + c``
    of the implicit-GEMM ``B`` operand is contiguous over output channels, so a
    ``[BLOCK_K, BLOCK_N]`` tile is a set of coalesced rows.
    """

    data: torch.Tensor

    def __post_init__(self) -> None:
        if self.data.dim() != 4 or not self.data.is_contiguous():
            raise ValueError(
                f"PackedWeight.data must be a contiguous [kh, kw, C_in, C_out] tensor, got {_describe(self.data)}"
            )

    @property
    def shape(self) -> torch.Size:
        """The logical weight shape ``[C_out, C_in, kh, kw]``."""
        kh, kw, c_in, c_out = self.data.shape
        return torch.Size((c_out, c_in, kh, kw))

    @property
    def dtype(self) -> torch.dtype:
        return self.data.dtype

    @property
    def device(self) -> torch.device:
        return self.data.device

    def unpack(self) -> torch.Tensor:
        """The weight as ``[C_out, C_in, kh, kw]`` (a view of ``data``, no copy)."""
        return self.data.permute(3, 2, 0, 1)


def pack_weight(weight: torch.Tensor) -> PackedWeight:
    """Pack a ``[C_out, C_in, kh, kw]`` floating weight for the kernels (one copy).

    The result is detached: the kernels are inference-only and have no autograd.
    """
    if not isinstance(weight, torch.Tensor) or weight.dim() != 4:
        raise ValueError(f"weight must be a 4-D tensor [C_out, C_in, kh, kw], got {_describe(weight)}")
    if not weight.is_floating_point():
        raise ValueError(f"weight must be floating point, got {weight.dtype}")
    return PackedWeight(weight.detach().permute(2, 3, 1, 0).contiguous())


def weight_4d(weight: torch.Tensor | PackedWeight) -> torch.Tensor:
    """The weight as a ``[C_out, C_in, kh, kw]`` tensor, whichever form it was given in."""
    return weight.unpack() if isinstance(weight, PackedWeight) else weight


def packed_data(weight: torch.Tensor | PackedWeight) -> torch.Tensor:
    """The ``[kh, kw, C_in, C_out]`` contiguous kernel operand (packs a plain tensor per call)."""
    return weight.data if isinstance(weight, PackedWeight) else pack_weight(weight).data


@dataclass(frozen=True)
class ConvGeometry:
    """Checked sizes of one convolution: input ``[N, C_in, H, W]``, output ``[N, C_out, OH, OW]``."""

    batch: int
    in_channels: int
    height: int
    width: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    out_height: int
    out_width: int

    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.out_channels, self.out_height, self.out_width)

    @property
    def pixels(self) -> int:
        """Output pixels ``N * OH * OW``: the M dimension of the implicit GEMM."""
        return self.batch * self.out_height * self.out_width


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dim()}-D tensor of shape {tuple(value.shape)}"
    return f"{type(value).__name__}"


def _pair(value: int | tuple[int, int], name: str, minimum: int) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return pair


def _check_channel_vector(value: torch.Tensor | None, name: str, x: torch.Tensor, channels: int) -> None:
    if value is None:
        return
    if not isinstance(value, torch.Tensor) or value.shape != (channels,) or not value.is_floating_point():
        raise ValueError(f"{name} must be a floating tensor of shape [{channels}] (C_out), got {_describe(value)}")
    if value.device != x.device:
        raise ValueError(f"{name} is on {value.device} but x is on {x.device}")


def validate_conv(
    x: torch.Tensor,
    weight: torch.Tensor | PackedWeight,
    *,
    stride: int | tuple[int, int],
    padding: int | tuple[int, int],
    dilation: int | tuple[int, int],
    scale: torch.Tensor | None,
    shift: torch.Tensor | None,
    residual: torch.Tensor | None,
    groups: int = 1,
) -> ConvGeometry:
    """Check the arguments of a dense conv (kernel or reference) and return its geometry.

    Raises ``NotImplementedError`` for ``groups != 1`` (grouped and depthwise
    convolutions are not implemented; transposed convolutions have no entry
    point at all).

    Raises ``ValueError`` naming the offending argument: x/weight not 4-D or not
    floating, C_in or dtype or device mismatch, bad stride/padding/dilation, an
    empty output, scale/shift not ``[C_out]`` on x's device, residual not
    ``[N, C_out, OH, OW]`` with x's dtype and device.
    """
    if groups != 1:
        raise NotImplementedError(f"groups={groups!r} is not supported: these kernels implement groups=1 only")
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"x must be a 4-D tensor [N, C_in, H, W], got {_describe(x)}")
    if not x.is_floating_point():
        raise ValueError(f"x must be floating point, got {x.dtype}")
    if not isinstance(weight, PackedWeight) and (not isinstance(weight, torch.Tensor) or weight.dim() != 4):
        raise ValueError(
            f"weight must be a 4-D tensor [C_out, C_in, kh, kw] or a PackedWeight, got {_describe(weight)}"
        )
    if weight.dtype != x.dtype:
        raise ValueError(f"weight dtype {weight.dtype} does not match x dtype {x.dtype}")
    if weight.device != x.device:
        raise ValueError(f"weight is on {weight.device} but x is on {x.device}")
    c_out, c_in, kh, kw = weight.shape
    if c_in != x.shape[1]:
        raise ValueError(f"weight has C_in={c_in} but x has {x.shape[1]} channels")
    if min(c_out, c_in, kh, kw) < 1:
        raise ValueError(f"weight must have non-zero sizes, got shape {tuple(weight.shape)}")
    stride_ = _pair(stride, "stride", 1)
    padding_ = _pair(padding, "padding", 0)
    dilation_ = _pair(dilation, "dilation", 1)
    out_hw = [
        (size + 2 * pad - dil * (k - 1) - 1) // st + 1
        for size, pad, dil, k, st in zip(x.shape[2:], padding_, dilation_, (kh, kw), stride_)
    ]
    if min(out_hw) < 1:
        raise ValueError(
            f"x spatial size {tuple(x.shape[2:])} is too small for kernel {(kh, kw)} with padding "
            f"{padding_} and dilation {dilation_} (output would be {tuple(out_hw)})"
        )
    geom = ConvGeometry(
        x.shape[0], c_in, x.shape[2], x.shape[3], c_out, (kh, kw), stride_, padding_, dilation_, *out_hw
    )
    _check_channel_vector(scale, "scale", x, c_out)
    _check_channel_vector(shift, "shift", x, c_out)
    if residual is not None:
        if not isinstance(residual, torch.Tensor) or residual.shape != geom.out_shape:
            raise ValueError(f"residual must have shape {geom.out_shape} (the output), got {_describe(residual)}")
        if residual.dtype != x.dtype:
            raise ValueError(f"residual dtype {residual.dtype} does not match x dtype {x.dtype}")
        if residual.device != x.device:
            raise ValueError(f"residual is on {residual.device} but x is on {x.device}")
    return geom


def validate_gated(
    x: torch.Tensor,
    weight: torch.Tensor | PackedWeight,
    gate_scale: torch.Tensor,
    gate_shift: torch.Tensor,
    *,
    base_fraction: float,
    base_layout: str,
    gate_group: int,
    decisions: torch.Tensor | None,
    **conv_args: object,
) -> ConvGeometry:
    """:func:`validate_conv` plus the gate arguments; returns the geometry.

    Adds ``ValueError`` for gate_scale/gate_shift not ``[C_out]`` on x's device,
    an unknown base_layout, gate_group < 1, a base_fraction the layout rejects
    (see :mod:`kernels.partition`), and decisions not bool ``[N, G, OH, OW]`` on
    x's device.
    """
    geom = validate_conv(x, weight, **conv_args)
    _check_channel_vector(gate_scale, "gate_scale", x, geom.out_channels)
    _check_channel_vector(gate_shift, "gate_shift", x, geom.out_channels)
    if base_layout not in partition.BASE_LAYOUTS:
        raise ValueError(f"base_layout must be one of {partition.BASE_LAYOUTS}, got {base_layout!r}")
    if not isinstance(gate_group, int) or isinstance(gate_group, bool) or gate_group < 1:
        raise ValueError(f"gate_group must be an int >= 1, got {gate_group!r}")
    base_intervals(geom.out_channels, geom.in_channels, base_fraction, base_layout, torch.device("cpu"))
    if decisions is not None:
        shape = (geom.batch, partition.gate_group_count(geom.out_channels, gate_group), *geom.out_shape[2:])
        if not isinstance(decisions, torch.Tensor) or decisions.dtype != torch.bool or decisions.shape != shape:
            raise ValueError(f"decisions must be a bool tensor of shape {shape}, got {_describe(decisions)}")
        if decisions.device != x.device:
            raise ValueError(f"decisions is on {decisions.device} but x is on {x.device}")
    return geom


class BaseIntervals(NamedTuple):
    """Per output channel, its base input channels as one interval ``[lo, hi)``."""

    lo: torch.Tensor  # int32 [C_out]
    hi: torch.Tensor  # int32 [C_out]
    alignment: int  # 8 when C_in and every bound are multiples of 8, else 1


@functools.lru_cache(maxsize=256)
def base_intervals(
    out_channels: int, in_channels: int, base_fraction: float, base_layout: str, device: torch.device
) -> BaseIntervals:
    """The base intervals of :func:`partition.base_mask`, on ``device``.

    Cached per configuration and device, so after a first (warm-up) call the
    kernels make no host-to-device copy and are CUDA-graph capturable.
    ``alignment`` lets the gated kernel promise aligned channel ranges.
    Raises ``NotImplementedError`` for a layout whose base channels are not one
    contiguous interval per output channel.
    """
    mask = partition.base_mask(out_channels, in_channels, base_fraction, base_layout)
    lo = mask.int().argmax(dim=1)
    hi = lo + mask.sum(dim=1)
    channel = torch.arange(in_channels)
    if not torch.equal(mask, (channel >= lo[:, None]) & (channel < hi[:, None])):
        raise NotImplementedError(f"base_layout={base_layout!r}: base channels are not one interval per output")
    aligned = in_channels % 8 == 0 and bool((lo % 8 == 0).all() and (hi % 8 == 0).all())
    return BaseIntervals(lo.int().to(device), hi.int().to(device), 8 if aligned else 1)


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def require_kernel_support(x: torch.Tensor) -> None:
    """Raise unless the Triton kernels can run on ``x``.

    ``NotImplementedError`` for a dtype other than float16/bfloat16/float32;
    ``RuntimeError`` for a non-CUDA tensor outside the Triton interpreter.
    """
    if x.dtype not in KERNEL_DTYPES:
        raise NotImplementedError(
            f"dtype {x.dtype} is not supported by the Triton kernels (float16, bfloat16, float32); "
            "use kernels.reference"
        )
    if x.device.type != "cuda" and not interpreting():
        raise RuntimeError(
            f"Triton kernels need a CUDA tensor (got one on {x.device}); use kernels.reference on CPU"
        )


def dot_options(dtype: torch.dtype) -> dict[str, object]:
    """Constexpr dot settings for a kernel launch on ``dtype`` operands.

    ``UPCAST_DOT`` is True only under the interpreter, whose ``tl.dot`` is wrong
    on bfloat16; it never changes the compiled path. ``DOT_PRECISION`` is
    ``"ieee"`` for float32 (exact fp32 products, no TF32) and ``"tf32"``
    otherwise, where it has no effect on float16/bfloat16 tensor-core dots.
    """
    return {
        "UPCAST_DOT": interpreting(),
        "DOT_PRECISION": "ieee" if dtype == torch.float32 else "tf32",
    }


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= ``n`` (``n >= 1``)."""
    return 1 << (n - 1).bit_length()


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` in channels_last memory format (no copy if it already is)."""
    return x.contiguous(memory_format=torch.channels_last)


def contiguous_vector(v: torch.Tensor | None) -> torch.Tensor | None:
    """A per-channel vector the kernels index with stride 1 (no copy if it already is contiguous)."""
    return None if v is None else v.contiguous()


def new_output(geom: ConvGeometry, x: torch.Tensor) -> torch.Tensor:
    """Uninitialised ``[N, C_out, OH, OW]`` output in x's dtype, channels_last."""
    return torch.empty(geom.out_shape, dtype=x.dtype, device=x.device, memory_format=torch.channels_last)


def optional_pointer(t: torch.Tensor | None, fallback: torch.Tensor) -> torch.Tensor:
    """``t``, or a stand-in tensor for a pointer argument the kernel never reads."""
    return fallback if t is None else t


def tensor_strides(t: torch.Tensor | None) -> tuple[int, int, int, int]:
    """Strides of a 4-D tensor, or zeros for an absent one."""
    return (0, 0, 0, 0) if t is None else tuple(t.stride())
