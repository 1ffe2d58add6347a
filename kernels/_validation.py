"""Argument checks shared by every entry point: the wrappers, the registered ops, their fakes and the references.

Pure Python on tensor metadata (shape, dtype, device): no tensor is built and
no cached state is read, so the fake implementations of the registered ops run
exactly these checks and raise exactly what the real ops raise.

Exception policy (``docs/design.md#exception-policy``):

* ``TypeError``: a wrong type or dtype (a non-tensor where a tensor is
  expected, an integer tensor, a dtype that differs from x's, a bool or float
  where an int is expected);
* ``ValueError``: a wrong shape, rank, channel count, device or value (a
  stride below 1, an unknown base layout, an empty output);
* ``NotImplementedError``: a valid configuration this project does not
  implement (``groups != 1``; float64 or a CPU tensor in a Triton kernel).

Every message names the offending argument.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import torch

from . import partition


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

    def gate_shape(self, gate_group: int) -> tuple[int, int, int, int]:
        """``[N, G, OH, OW]``, ``G = ceil(C_out / gate_group)``: the shape of the gate decisions."""
        groups = partition.gate_group_count(self.out_channels, gate_group)
        return (self.batch, groups, self.out_height, self.out_width)


def describe(value: object) -> str:
    """A short description of ``value`` for error messages (rank and shape of a tensor, else its type)."""
    if isinstance(value, torch.Tensor):
        return f"a {value.dim()}-D {value.dtype} tensor of shape {tuple(value.shape)}"
    return f"{type(value).__name__}"


def conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Output length of a convolution along one spatial dimension (may be < 1 when the input is too small).

    ``(size + 2*padding - dilation*(kernel - 1) - 1) // stride + 1``, the rule
    of ``torch.nn.Conv2d``.
    """
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def conv_input_span(out_size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Smallest input length a convolution maps to ``out_size`` outputs: the inverse of :func:`conv_output_size`.

    ``(out_size - 1)*stride - 2*padding + dilation*(kernel - 1) + 1`` (the
    output length of the transposed convolution without ``output_padding``);
    ``conv_output_size(conv_input_span(o, ...), ...) == o``.
    """
    return (out_size - 1) * stride - 2 * padding + dilation * (kernel - 1) + 1


def is_int(value: object) -> bool:
    """True for a Python int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def as_pair(value: int | Sequence[int], name: str, minimum: int) -> tuple[int, int]:
    """``value`` (an int or a pair of ints, each ``>= minimum``) as an ``(h, w)`` tuple.

    ``TypeError`` for anything but ints (bools refused); ``ValueError`` for a
    sequence whose length is not 2 or an entry below ``minimum``.
    """
    if is_int(value):
        pair: tuple = (value, value)
    elif isinstance(value, (tuple, list, torch.Size)):
        pair = tuple(value)
    else:
        raise TypeError(f"{name} must be an int or a pair of ints, got {type(value).__name__}")
    if not all(is_int(v) for v in pair):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if len(pair) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {len(pair)} values {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return pair


TILE_WARPS = (1, 2, 4, 8)
"""``num_warps`` a launch configuration may take."""

MAX_TILE_ELEMENTS = 128 * 256
"""float32 accumulator elements of one program (128 registers a thread at 8 warps)."""


def check_tile_elements(name: str, block_m: int, block_n: int) -> None:
    """``ValueError`` naming ``name`` when a ``block_m x block_n`` tile exceeds :data:`MAX_TILE_ELEMENTS`."""
    if block_m * block_n > MAX_TILE_ELEMENTS:
        raise ValueError(
            f"{name}: block_m*block_n={block_m * block_n} exceeds {MAX_TILE_ELEMENTS} "
            "(the float32 accumulator of one program)"
        )


def check_tile_fields(tiling: object, name: str = "tiling") -> None:
    """``TypeError`` naming ``name.field`` unless every field of the tiling dataclass is an int.

    Fields declared ``bool`` must be bools; fields holding another tiling are
    checked the same way (``name.field.subfield``).
    """
    for field in dataclasses.fields(tiling):
        value = getattr(tiling, field.name)
        where = f"{name}.{field.name}"
        if dataclasses.is_dataclass(value):
            check_tile_fields(value, where)
        elif field.type in (bool, "bool"):
            if not isinstance(value, bool):
                raise TypeError(f"{where} must be a bool, got {describe(value)}")
        elif not is_int(value):
            raise TypeError(f"{where} must be an int, got {describe(value)}")


def check_tile_block(name: str, value: int, high: int, why: str = "tl.dot needs 16") -> None:
    """``ValueError`` naming ``name`` unless ``value`` is a power of two in ``[16, high]``."""
    if value < 16 or value > high or value & (value - 1):
        raise ValueError(f"{name}={value} must be a power of two in [16, {high}] ({why})")


def check_tile_launch(name: str, num_warps: int, num_stages: int | None = None) -> None:
    """``ValueError`` naming ``name`` unless ``num_warps`` is in :data:`TILE_WARPS` and ``num_stages >= 1``."""
    if num_warps not in TILE_WARPS:
        raise ValueError(f"{name}: num_warps={num_warps} must be one of {TILE_WARPS}")
    if num_stages is not None and num_stages < 1:
        raise ValueError(f"{name}: num_stages={num_stages} must be >= 1")


def check_tensor(value: object, name: str) -> torch.Tensor:
    """``value`` if it is a tensor, else ``TypeError`` naming ``name``."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {describe(value)}")
    return value


def check_same_device(value: torch.Tensor, name: str, x: torch.Tensor) -> None:
    if value.device != x.device:
        raise ValueError(f"{name} is on {value.device} but x is on {x.device}")


def check_channel_vector(value: torch.Tensor | None, name: str, x: torch.Tensor, channels: int) -> None:
    """``None`` or a floating ``[channels]`` tensor on x's device (any floating dtype)."""
    if value is None:
        return
    check_tensor(value, name)
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor of shape [{channels}] (C_out), got {describe(value)}")
    if value.shape != (channels,):
        raise ValueError(f"{name} must be a floating tensor of shape [{channels}] (C_out), got {describe(value)}")
    check_same_device(value, name, x)


def check_groups(groups: object) -> None:
    """``NotImplementedError`` unless ``groups == 1`` (grouped and depthwise convolutions are not implemented)."""
    if not is_int(groups):
        raise TypeError(f"groups must be an int, got {type(groups).__name__}")
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups!r}")
    if groups != 1:
        raise NotImplementedError(f"groups={groups!r} is not supported: these kernels implement groups=1 only")


def _check_x(x: object) -> torch.Tensor:
    check_tensor(x, "x")
    if x.dim() != 4:
        raise ValueError(f"x must be a 4-D tensor [N, C_in, H, W], got {describe(x)}")
    if not x.is_floating_point():
        raise TypeError(f"x must be floating point, got {x.dtype}")
    return x


def _check_weight(weight: object, x: torch.Tensor) -> torch.Size:
    """The ``[C_out, C_in, kh, kw]`` shape of ``weight``, checked against x (callers unpack a PackedWeight first)."""
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a tensor [C_out, C_in, kh, kw] or a PackedWeight, got {describe(weight)}")
    if len(weight.shape) != 4:
        raise ValueError(f"weight must be a 4-D tensor [C_out, C_in, kh, kw] or a PackedWeight, got {describe(weight)}")
    if weight.dtype != x.dtype:
        raise TypeError(f"weight dtype {weight.dtype} does not match x dtype {x.dtype}")
    if weight.device != x.device:
        raise ValueError(f"weight is on {weight.device} but x is on {x.device}")
    c_out, c_in, kh, kw = weight.shape
    if c_in != x.shape[1]:
        raise ValueError(f"weight has C_in={c_in} but x has {x.shape[1]} channels")
    if min(c_out, c_in, kh, kw) < 1:
        raise ValueError(f"weight must have non-zero sizes, got shape {tuple(weight.shape)}")
    return weight.shape


def _check_residual(residual: object, x: torch.Tensor, shape: tuple[int, int, int, int]) -> None:
    if residual is None:
        return
    check_tensor(residual, "residual")
    if residual.shape != shape:
        raise ValueError(f"residual must have shape {shape} (the output), got {describe(residual)}")
    if residual.dtype != x.dtype:
        raise TypeError(f"residual dtype {residual.dtype} does not match x dtype {x.dtype}")
    check_same_device(residual, "residual", x)


def validate_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    *,
    stride: int | Sequence[int],
    padding: int | Sequence[int],
    dilation: int | Sequence[int],
    scale: torch.Tensor | None,
    shift: torch.Tensor | None,
    residual: torch.Tensor | None,
    groups: int = 1,
) -> ConvGeometry:
    """Check the arguments of a dense conv (wrapper, op, fake or reference) and return its geometry.

    ``weight`` is a ``[C_out, C_in, kh, kw]`` tensor, any strides (callers
    pass ``PackedWeight.unpack()`` for a packed one). Raises, naming the argument (module docstring for the
    policy): ``NotImplementedError`` for ``groups != 1``; ``TypeError`` for a
    non-tensor, a non-floating x, a weight/residual dtype that differs from
    x's, non-floating scale/shift, non-int stride/padding/dilation;
    ``ValueError`` for ranks, C_in, devices, stride/dilation < 1, padding < 0,
    an empty output, scale/shift not ``[C_out]``, residual not
    ``[N, C_out, OH, OW]``.
    """
    check_groups(groups)
    x = _check_x(x)
    c_out, c_in, kh, kw = _check_weight(weight, x)
    stride_ = as_pair(stride, "stride", 1)
    padding_ = as_pair(padding, "padding", 0)
    dilation_ = as_pair(dilation, "dilation", 1)
    out_hw = [conv_output_size(*dims) for dims in zip(x.shape[2:], (kh, kw), stride_, padding_, dilation_)]
    if min(out_hw) < 1:
        raise ValueError(
            f"x spatial size {tuple(x.shape[2:])} is too small for kernel {(kh, kw)} with padding "
            f"{padding_} and dilation {dilation_} (output would be {tuple(out_hw)})"
        )
    geom = ConvGeometry(
        x.shape[0], c_in, x.shape[2], x.shape[3], c_out, (kh, kw), stride_, padding_, dilation_, *out_hw
    )
    check_channel_vector(scale, "scale", x, c_out)
    check_channel_vector(shift, "shift", x, c_out)
    _check_residual(residual, x, geom.out_shape)
    return geom


def _check_decisions(decisions: object, x: torch.Tensor, shape: tuple[int, int, int, int]) -> None:
    if decisions is None:
        return
    check_tensor(decisions, "decisions")
    if decisions.dtype != torch.bool:
        raise TypeError(f"decisions must be a bool tensor of shape {shape}, got {describe(decisions)}")
    if decisions.shape != shape:
        raise ValueError(f"decisions must be a bool tensor of shape {shape}, got {describe(decisions)}")
    check_same_device(decisions, "decisions", x)


def validate_gated(
    x: torch.Tensor,
    weight: torch.Tensor,
    gate_scale: torch.Tensor,
    gate_shift: torch.Tensor,
    *,
    base_fraction: float,
    base_layout: str,
    gate_group: int,
    gate_block: int,
    decisions: torch.Tensor | None,
    **conv_args: object,
) -> ConvGeometry:
    """:func:`validate_conv` plus the gate arguments; returns the geometry.

    Adds: gate_scale/gate_shift must be floating ``[C_out]`` on x's device;
    the partition checks of :func:`partition.check_partition` (base_layout,
    base_fraction), :func:`partition.gate_group_count` (gate_group) and
    :func:`partition.check_gate_block` (gate_block);
    decisions ``None`` or bool ``[N, G, OH, OW]`` on x's device (``TypeError``
    for another dtype, ``ValueError`` for another shape or device).
    """
    geom = validate_conv(x, weight, **conv_args)
    check_channel_vector(check_tensor(gate_scale, "gate_scale"), "gate_scale", x, geom.out_channels)
    check_channel_vector(check_tensor(gate_shift, "gate_shift"), "gate_shift", x, geom.out_channels)
    partition.check_partition(geom.out_channels, geom.in_channels, base_fraction, base_layout)
    partition.check_gate_block(gate_block)
    _check_decisions(decisions, x, geom.gate_shape(gate_group))
    return geom


CHANNEL_BLOCKS = (16, 32, 64, 128)
"""Channel block sizes of the channel-sparse kernel: multiples of the mask granularity (8), powers of two
(``tl.arange``), at least 16 (``tl.dot``)."""


def check_channel_block(block: object) -> int:
    """``block`` if it is one of :data:`CHANNEL_BLOCKS` (``TypeError`` for a non-int, ``ValueError`` otherwise)."""
    if not is_int(block):
        raise TypeError(f"block must be an int, one of {CHANNEL_BLOCKS}, got {type(block).__name__}")
    if block not in CHANNEL_BLOCKS:
        raise ValueError(f"block must be one of {CHANNEL_BLOCKS} (channels per block), got {block!r}")
    return block


def check_channel_mask(mask: object, name: str, x: torch.Tensor, shape: tuple[int, int], what: str) -> None:
    """``mask`` must be a bool ``shape`` tensor on x's device (``what`` names its axes for the message)."""
    check_tensor(mask, name)
    if mask.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool tensor of shape {list(shape)} ({what}), got {describe(mask)}")
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name} must be a bool tensor of shape {list(shape)} ({what}), got {describe(mask)}")
    check_same_device(mask, name, x)


def validate_channel_sparse(
    x: torch.Tensor,
    weight: torch.Tensor,
    out_mask: torch.Tensor,
    in_mask: torch.Tensor | None,
    *,
    block: int,
    **conv_args: object,
) -> ConvGeometry:
    """:func:`validate_conv` plus the channel masks and the block size; returns the geometry.

    Adds: ``out_mask`` bool ``[N, C_out]`` and ``in_mask`` (``None`` or bool
    ``[N, C_in]``) on x's device (``TypeError`` for another type or dtype,
    ``ValueError`` for another shape or device); ``block`` one of
    :data:`CHANNEL_BLOCKS`.
    """
    geom = validate_conv(x, weight, **conv_args)
    check_channel_mask(out_mask, "out_mask", x, (geom.batch, geom.out_channels), "N, C_out")
    if in_mask is not None:
        check_channel_mask(in_mask, "in_mask", x, (geom.batch, geom.in_channels), "N, C_in")
    check_channel_block(block)
    return geom
