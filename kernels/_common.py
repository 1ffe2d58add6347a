"""Host-side pieces shared by the Triton kernels, their PyTorch references and the registered ops.

Pure PyTorch, no Triton, so ``kernels.reference`` and ``kernels.library`` work
where Triton is not installed: the packed weight layout, the per-output-channel
base intervals the gated kernel reads, the one tiling rule both kernels start
from (:func:`gemm_tile_mk`), and the small launch helpers (device guard, output
allocation, kernel support). Argument checks live in :mod:`kernels._validation`.

Errors follow ``docs/design.md#exception-policy``: ``TypeError`` for a wrong
type or dtype, ``ValueError`` for a wrong shape or value,
``NotImplementedError`` for what the Triton kernels do not support (float64, a
CPU tensor outside the Triton interpreter).
"""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass
from typing import ContextManager, NamedTuple

import torch

from . import partition
from ._validation import ConvGeometry, describe

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
        if not isinstance(self.data, torch.Tensor):
            raise TypeError(f"PackedWeight.data must be a torch.Tensor, got {describe(self.data)}")
        if self.data.dim() != 4 or not self.data.is_contiguous():
            raise ValueError(
                f"PackedWeight.data must be a contiguous [kh, kw, C_in, C_out] tensor, got {describe(self.data)}"
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
    ``TypeError`` for a non-tensor or a non-floating weight, ``ValueError`` for
    another rank.
    """
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a 4-D tensor [C_out, C_in, kh, kw], got {describe(weight)}")
    if weight.dim() != 4:
        raise ValueError(f"weight must be a 4-D tensor [C_out, C_in, kh, kw], got {describe(weight)}")
    if not weight.is_floating_point():
        raise TypeError(f"weight must be floating point, got {weight.dtype}")
    return PackedWeight(weight.detach().permute(2, 3, 1, 0).contiguous())


def weight_4d(weight: object) -> object:
    """The weight as a ``[C_out, C_in, kh, kw]`` tensor (a view for a PackedWeight); other values unchanged."""
    return weight.unpack() if isinstance(weight, PackedWeight) else weight


def packed_data(weight: torch.Tensor) -> torch.Tensor:
    """The ``[kh, kw, C_in, C_out]`` contiguous kernel operand of a ``[C_out, C_in, kh, kw]`` weight.

    No copy when ``weight`` is the view ``PackedWeight.unpack()`` returns (or
    any tensor with those strides); otherwise one packing copy per call.
    """
    packed = weight.permute(2, 3, 1, 0)
    return packed if packed.is_contiguous() else packed.contiguous()


class BaseIntervals(NamedTuple):
    """Per output channel, its base input channels as one interval ``[lo, hi)``."""

    lo: torch.Tensor  # int32 [C_out]
    hi: torch.Tensor  # int32 [C_out]
    alignment: int  # 8 when C_in and every bound are multiples of 8, else 1
    uniform: bool  # every output channel has the same interval (the "first" layout)
    uniform_lo: int  # that interval as host ints, passed to the kernels as is (0, 0 when not uniform)
    uniform_hi: int


@functools.lru_cache(maxsize=256)
def base_intervals(
    out_channels: int, in_channels: int, base_fraction: float, base_layout: str, device: torch.device
) -> BaseIntervals:
    """The base intervals of :func:`partition.base_mask`, on ``device``.

    Cached per configuration and device, so after a first (warm-up) call the
    kernels make no host-to-device copy and are CUDA-graph capturable.
    ``alignment`` lets the gated kernel promise aligned channel ranges;
    ``uniform`` lets it drop the per-(input, output channel) base masks of its
    K loops (their ranges are then exactly the base / conditional channels),
    so the weight tiles load as whole 16-byte rows.
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
    uniform = bool((lo == lo[0]).all() and (hi == hi[0]).all())
    bounds = (int(lo[0]), int(hi[0])) if uniform else (0, 0)
    return BaseIntervals(lo.int().to(device), hi.int().to(device), 8 if aligned else 1, uniform, *bounds)


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def require_kernel_support(x: torch.Tensor) -> None:
    """Raise ``NotImplementedError`` unless the Triton kernels can run on ``x``.

    Refused: a dtype other than float16/bfloat16/float32, and a non-CUDA tensor
    outside the Triton interpreter (the registered ops send those to the
    references; only a direct call of a Triton launch function gets here).
    """
    if x.dtype not in KERNEL_DTYPES:
        raise NotImplementedError(
            f"dtype {x.dtype} is not supported by the Triton kernels (float16, bfloat16, float32); "
            "use kernels.reference"
        )
    if x.device.type != "cuda" and not interpreting():
        raise NotImplementedError(
            f"Triton kernels need a CUDA tensor (got one on {x.device}); use kernels.reference on CPU"
        )


def device_guard(x: torch.Tensor) -> ContextManager[object]:
    """Context in which to launch a kernel on ``x``: its CUDA device made current, or nothing for other devices."""
    return torch.cuda.device(x.device) if x.device.type == "cuda" else contextlib.nullcontext()


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


def gemm_tile_mk(pixels: int, k_channels: int) -> tuple[int, int]:
    """``(block_m, block_k)`` of both conv kernels: the one M/K tiling rule.

    ``block_m`` 128 from 8192 output pixels on (64 below); ``block_k`` the next
    power of two of ``k_channels`` (the input channels one K loop walks) in
    [16, 32] (``tl.dot`` needs 16).
    """
    block_m = 128 if pixels >= 8192 else 64
    block_k = min(32, max(16, next_power_of_2(k_channels)))
    return block_m, block_k


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` in channels_last memory format (no copy if it already is)."""
    return x.contiguous(memory_format=torch.channels_last)


def contiguous_vector(v: torch.Tensor | None) -> torch.Tensor | None:
    """A per-channel vector the kernels index with stride 1 (no copy if it already is contiguous)."""
    return None if v is None else v.contiguous()


def new_output(geom: ConvGeometry, x: torch.Tensor) -> torch.Tensor:
    """Uninitialised ``[N, C_out, OH, OW]`` output in x's dtype, channels_last."""
    return torch.empty(geom.out_shape, dtype=x.dtype, device=x.device, memory_format=torch.channels_last)


def new_decisions(geom: ConvGeometry, gate_group: int, x: torch.Tensor) -> torch.Tensor:
    """Uninitialised bool ``[N, G, OH, OW]`` decisions on x's device, channels_last."""
    shape = geom.gate_shape(gate_group)
    return torch.empty(shape, dtype=torch.bool, device=x.device, memory_format=torch.channels_last)


def optional_pointer(t: torch.Tensor | None, fallback: torch.Tensor) -> torch.Tensor:
    """``t``, or a stand-in tensor for a pointer argument the kernel never reads."""
    return fallback if t is None else t


def tensor_strides(t: torch.Tensor | None) -> tuple[int, int, int, int]:
    """Strides of a 4-D tensor, or zeros for an absent one."""
    return (0, 0, 0, 0) if t is None else tuple(t.stride())
