"""Channel-sparse implicit-GEMM convolution in Triton: per sample, only kept outputs from active inputs.

``docs/design.md#channel-sparse-kernel``. Semantics (the reference,
:func:`kernels.channel_sparse_reference.channel_sparse_conv2d_reference`)::

    y[n, o] = relu(out_mask[n, o] * (conv(x[n] * in_mask[n], W)[o] * scale[o] + shift[o]) + residual[n, o])

Schedule. Channels are cut into groups of 8 (``CHANNEL_GROUP``, the runtime
gate's granularity; the last group may be narrower). On device, with PyTorch
ops and no host synchronisation
(:func:`kernels.channel_sparse_reference.channel_group_lists`), each sample
gets the list of its output groups with the active ones first and the list of
its input groups with the active ones first, with their counts. A tile is
``block`` channels wide (16 by default, the narrowest ``tl.dot`` operand):
``block / 8`` consecutive list entries, gathered wherever the groups are, so
two active groups of 8 far apart share one tile. The grid is the upper bound,
``N x cdiv(OH*OW, block_m) x cdiv(G_out, block/8)`` programs; program
``(n, pixel tile, slot)`` takes entries ``slot*block/8 ...`` of sample ``n``'s
output list:

* the slot starts below the active count: it holds active output groups
  (and, in the last such slot, possibly inactive ones). The K loop walks only
  the active input groups of ``n``, ``block / 8`` per step, x the ``kh*kw``
  taps (one ``[block_m, block] @ [block, block]`` ``tl.dot`` each, float32
  accumulation); each group is one contiguous 8-channel (16-byte in
  bfloat16) run of the channels_last input and of the packed weight's rows.
  Channels that are off inside an active group are replaced by zeros after
  the load (a select, so the load keeps a per-group mask and vectorises).
  The fused epilogue writes ``relu(keep * (acc*scale + shift) + residual)``,
  so pruned channels are exact zeros (``relu(residual)`` with a residual).
* otherwise: inactive output groups only: no K loop, the same epilogue on a
  zero accumulator (exact zeros, or ``relu(residual)``). Every output
  element is written exactly once, into a fresh channels_last tensor.

With ``return_counters`` the programs add their work to an int64 ``[8]``
tensor with atomics (:data:`CHANNEL_SPARSE_FIELDS`);
:func:`kernels.channel_sparse_counters` predicts it from the masks alone.
After one warm-up call (compilation) a call allocates only tensors whose
sizes depend on shapes, never on mask values, and never synchronises, so it
can be captured in a CUDA graph.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (
    PackedWeight,
    channels_last,
    contiguous_vector,
    device_guard,
    dot_options,
    new_output,
    optional_pointer,
    packed_data,
    require_kernel_support,
    tensor_strides,
    weight_4d,
)
from ._validation import ConvGeometry, validate_channel_sparse
from .conv_tiles import store_epilogue, tile_dot
from .channel_sparse_reference import (
    CHANNEL_SPARSE_FIELDS,
    DEFAULT_CHANNEL_BLOCK,
    CHANNEL_GROUP,
    ChannelSparseTiling,
    GroupLists,
    channel_group_lists,
    channel_sparse_tiling,
)

__all__ = ["channel_sparse_conv2d"]


@triton.jit
def _listed_channels(order_ptr, row, first, count, n_groups, C, LISTED: tl.constexpr, BLOCK_C: tl.constexpr,
                     GROUP: tl.constexpr):  # fmt: skip
    """Channels of the list entries ``first .. first + BLOCK_C/GROUP - 1`` of one sample, ``GROUP`` each.

    ``order_ptr + row`` is the sample's group list (``LISTED``; without it
    entry ``e`` is group ``e``). Returns ``(channels, ok)``: ``[BLOCK_C]``
    channel indices, runs of ``GROUP`` contiguous channels (hinted so the
    loads they address vectorise), and whether each is a real channel of an
    entry below ``count``.
    """
    offs = tl.arange(0, BLOCK_C)
    entry = first + offs // GROUP
    listed = entry < count
    if LISTED:
        group = tl.load(order_ptr + row + entry, mask=entry < n_groups, other=0)
    else:
        group = entry
    tl.static_assert(GROUP == 8, "the contiguity hints below assume groups of 8 channels")
    channels = tl.max_contiguous(tl.multiple_of(group * GROUP + offs % GROUP, 8), 8)
    return channels, listed & (channels < C)


@triton.jit
def _sparse_k_loop(
    acc, x_ptr, w_ptr, in_mask_ptr, in_order_ptr, n, n_listed, oh, ow, m_ok, ch, ch_ok,
    H, W, C_in, C_out, NG_IN, sxn, sxc, sxh, sxw, SH, SW, PH, PW, DH, DW,
    KH: tl.constexpr, KW: tl.constexpr, BLOCK_C: tl.constexpr, GROUP: tl.constexpr, HAS_IN_MASK: tl.constexpr,
    COUNT: tl.constexpr, UPCAST_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """``acc += x[n, pixels, listed inputs] @ w[listed inputs, ch]`` over every tap; also the K channels run.

    The sample's first ``n_listed`` input groups (its active ones with
    ``HAS_IN_MASK``, else all ``NG_IN``) are walked ``BLOCK_C / GROUP`` at a
    time: one flat loop of ``cdiv(n_listed, BLOCK_C/GROUP) * kh*kw`` dots,
    tap-major. Channels off in ``in_mask`` read as zeros (a select after the
    load, so the load keeps its per-group mask). Returns ``(acc,
    k_channels)``, ``k_channels`` the real input channels of the steps run,
    taps included (counted only with ``COUNT``).
    """
    per_step: tl.constexpr = BLOCK_C // GROUP
    img_off = n.to(tl.int64) * sxn
    n_steps = tl.cdiv(n_listed, per_step)
    k_channels = 0
    for step in range(0, n_steps * KH * KW):
        tap = step // n_steps
        i = step - tap * n_steps
        cs, c_ok = _listed_channels(in_order_ptr, n * NG_IN, i * per_step, n_listed, NG_IN, C_in, HAS_IN_MASK,
                                    BLOCK_C, GROUP)  # fmt: skip
        if COUNT:
            k_channels += tl.sum(c_ok.to(tl.int32), axis=0)
        r = tap // KW
        ih = oh * SH - PH + r * DH
        iw = ow * SW - PW + (tap - r * KW) * DW
        pix_ok = m_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        a_ptrs = x_ptr + (img_off + ih * sxh + iw * sxw)[:, None] + cs[None, :] * sxc
        a = tl.load(a_ptrs, mask=pix_ok[:, None] & c_ok[None, :], other=0.0)
        if HAS_IN_MASK:
            active = tl.load(in_mask_ptr + n * C_in + cs, mask=c_ok, other=0) != 0
            a = tl.where(active[None, :], a, 0.0)
        w_ptrs = w_ptr + (tap * C_in + cs)[:, None] * C_out + ch[None, :]
        b = tl.load(w_ptrs, mask=c_ok[:, None] & ch_ok[None, :], other=0.0)
        acc = tile_dot(a, b, acc, UPCAST_DOT, DOT_PRECISION, False)
    return acc, k_channels


@triton.jit
def _store_masked_epilogue(
    y, keep, y_ptr, scale_ptr, shift_ptr, res_ptr, n, oh, ow, m_ok, ch, ch_ok,
    syn, syc, syh, syw, srn, src, srh, srw,
    HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, HAS_RESIDUAL: tl.constexpr, RELU: tl.constexpr,
):  # fmt: skip
    """Store ``relu(keep * (y*scale[ch] + shift[ch]) + residual)`` (float32 math) in y_ptr's dtype.

    ``keep`` bool ``[BLOCK_C]``: the kept output channels; the others are
    exact zeros before the residual add (``tl.where``, so nothing of ``y``
    leaks into them). The residual, ReLU and store are the dense kernel's
    :func:`kernels.conv_tiles.store_epilogue`.
    """
    if HAS_SCALE:
        y = y * tl.load(scale_ptr + ch, mask=ch_ok, other=0.0).to(tl.float32)[None, :]
    if HAS_SHIFT:
        y = y + tl.load(shift_ptr + ch, mask=ch_ok, other=0.0).to(tl.float32)[None, :]
    y = tl.where(keep[None, :], y, 0.0)
    store_epilogue(
        y, m_ok[:, None] & ch_ok[None, :], y_ptr, scale_ptr, shift_ptr, res_ptr, n, oh, ow, ch, ch_ok,
        syn, syc, syh, syw, srn, src, srh, srw, False, False, HAS_RESIDUAL, RELU,
    )  # fmt: skip


@triton.jit
def _count_work(
    counters_ptr, computed, n_dots, rows, cols, k_channels, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr
):  # fmt: skip
    """Add one program's work to the int64 counters (``CHANNEL_SPARSE_FIELDS`` order, first six)."""
    tl.atomic_add(counters_ptr + 0, 1)
    if computed:
        tl.atomic_add(counters_ptr + 1, 1)
        tl.atomic_add(counters_ptr + 3, n_dots.to(tl.int64))
        tl.atomic_add(counters_ptr + 4, rows.to(tl.int64) * cols * k_channels)
        tl.atomic_add(counters_ptr + 5, n_dots.to(tl.int64) * (BLOCK_M * BLOCK_C * BLOCK_C))
    else:
        tl.atomic_add(counters_ptr + 2, 1)


@triton.jit
def _channel_sparse_conv2d_kernel(
    x_ptr, w_ptr, y_ptr, scale_ptr, shift_ptr, res_ptr,
    out_mask_ptr, out_order_ptr, out_count_ptr, in_mask_ptr, in_order_ptr, in_count_ptr, counters_ptr,
    H, W, C_in, C_out, OH, OW, TILES, SLOTS, NG_OUT, NG_IN,
    sxn, sxc, sxh, sxw, syn, syc, syh, syw, srn, src, srh, srw,
    SH, SW, PH, PW, DH, DW,
    KH: tl.constexpr, KW: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, GROUP: tl.constexpr,
    HAS_IN_MASK: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
    RELU: tl.constexpr, COUNT: tl.constexpr, UPCAST_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """One program per (sample, tile of BLOCK_M output pixels, slot of BLOCK_C/GROUP entries of its output list).

    Slots are fastest, so the programs of one pixel tile (which read the same
    x rows) are adjacent. See the module docstring for the schedule.
    """
    pid = tl.program_id(0)
    slot = pid % SLOTS
    rest = pid // SLOTS
    tile = rest % TILES
    n = rest // TILES
    pixels = OH * OW
    offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < pixels
    oh = offs_m // OW
    ow = offs_m - oh * OW
    first = slot * (BLOCK_C // GROUP)
    # Every entry of the slot that is a real group (active or not) is stored; the listed ones are computed.
    ch, ch_ok = _listed_channels(out_order_ptr, n * NG_OUT, first, NG_OUT, NG_OUT, C_out, True, BLOCK_C, GROUP)
    n_out = tl.load(out_count_ptr + n)
    computed = first < n_out
    acc = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
    keep = ch < 0
    n_in = 0
    k_channels = 0
    if computed:
        listed = first + tl.arange(0, BLOCK_C) // GROUP < n_out
        keep = listed & ch_ok & (tl.load(out_mask_ptr + n * C_out + ch, mask=ch_ok, other=0) != 0)
        if HAS_IN_MASK:
            n_in = tl.load(in_count_ptr + n)
        else:
            n_in = NG_IN
        acc, k_channels = _sparse_k_loop(
            acc, x_ptr, w_ptr, in_mask_ptr, in_order_ptr, n, n_in, oh, ow, m_ok, ch, ch_ok & listed,
            H, W, C_in, C_out, NG_IN, sxn, sxc, sxh, sxw, SH, SW, PH, PW, DH, DW,
            KH, KW, BLOCK_C, GROUP, HAS_IN_MASK, COUNT, UPCAST_DOT, DOT_PRECISION,
        )  # fmt: skip
    _store_masked_epilogue(
        acc, keep, y_ptr, scale_ptr, shift_ptr, res_ptr, n, oh, ow, m_ok, ch, ch_ok,
        syn, syc, syh, syw, srn, src, srh, srw, HAS_SCALE, HAS_SHIFT, HAS_RESIDUAL, RELU,
    )  # fmt: skip
    if COUNT:
        rows = tl.minimum(pixels - tile * BLOCK_M, BLOCK_M)
        cols = tl.sum(((first + tl.arange(0, BLOCK_C) // GROUP < n_out) & ch_ok).to(tl.int32), axis=0)
        n_dots = tl.cdiv(n_in, BLOCK_C // GROUP) * KH * KW
        _count_work(counters_ptr, computed, n_dots, rows, cols, k_channels, BLOCK_M, BLOCK_C)


def channel_sparse_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor | PackedWeight,
    out_mask: torch.Tensor,
    in_mask: torch.Tensor | None = None,
    *,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    relu: bool = False,
    block: int = DEFAULT_CHANNEL_BLOCK,
    groups: int = 1,
    return_counters: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Triton launch of the channel-sparse conv (module docstring); the CUDA implementation of its op.

    Call :func:`kernels.channel_sparse_conv2d` to let the dispatcher choose.
    Called directly, it runs on CUDA tensors, or on CPU tensors under
    ``TRITON_INTERPRET=1``; it launches under ``x``'s CUDA device.

    Args:
        x: ``[N, C_in, H, W]`` float16, bfloat16 or float32 (channels_last
            preferred; other layouts are converted once).
        weight: ``[C_out, C_in, kh, kw]`` in x's dtype, or a :class:`PackedWeight`.
        out_mask: bool ``[N, C_out]``, the output channels kept per sample.
        in_mask: bool ``[N, C_in]``, the input channels active per sample
            (an inactive one reads as zeros), or None: all active.
        stride, padding, dilation, scale, shift, residual, relu, groups: as
            :func:`kernels.conv2d`; the pruned outputs are masked after
            scale/shift and before the residual.
        block: tile width in channels, one of ``(16, 32, 64, 128)``. The
            kernel skips in groups of 8 channels (a group runs when any of
            its channels is on; masks need no alignment) and gathers
            ``block / 8`` active groups per tile.
        return_counters: also return the int64 ``[8]`` work counters
            (``CHANNEL_SPARSE_FIELDS``), counted on device.

    Returns:
        A fresh ``[N, C_out, OH, OW]`` tensor in x's dtype, channels_last
        (and the counters). Inference only.

    Raises: as :func:`kernels._validation.validate_channel_sparse`, plus
    ``NotImplementedError`` from :func:`require_kernel_support`.
    """
    weight = weight_4d(weight)
    geom = validate_channel_sparse(
        x, weight, out_mask, in_mask, block=block, stride=stride, padding=padding, dilation=dilation,
        scale=scale, shift=shift, residual=residual, groups=groups,
    )  # fmt: skip
    require_kernel_support(x)
    y = new_output(geom, x)
    counters = torch.zeros(len(CHANNEL_SPARSE_FIELDS) if return_counters else 0, dtype=torch.int64, device=x.device)
    tiling = channel_sparse_tiling(geom.batch, geom.out_height * geom.out_width, block)
    if return_counters:
        counters[6], counters[7] = tiling.block_m, block
    if geom.batch > 0:
        with device_guard(x):
            _launch(tiling, geom, channels_last(x), packed_data(weight), y, out_mask, in_mask, counters,
                    contiguous_vector(scale), contiguous_vector(shift), residual, relu)  # fmt: skip
    return (y, counters) if return_counters else y


def _mask_operands(mask: torch.Tensor | None, fallback: torch.Tensor) -> tuple[torch.Tensor, GroupLists]:
    """A mask as the kernel reads it (uint8 ``[N, C]`` contiguous) and its group lists; stand-ins for None."""
    if mask is None:
        return fallback, GroupLists(fallback, fallback)
    return mask.contiguous().view(torch.uint8), channel_group_lists(mask, CHANNEL_GROUP)


def _launch(
    tiling: ChannelSparseTiling, geom: ConvGeometry, x: torch.Tensor, w: torch.Tensor, y: torch.Tensor,
    out_mask: torch.Tensor, in_mask: torch.Tensor | None, counters: torch.Tensor,
    scale: torch.Tensor | None, shift: torch.Tensor | None, residual: torch.Tensor | None, relu: bool,
) -> None:  # fmt: skip
    """Build the group lists on device and launch ``_channel_sparse_conv2d_kernel`` over the upper-bound grid."""
    out_bytes, out_lists = _mask_operands(out_mask, y)
    in_bytes, in_lists = _mask_operands(in_mask, out_bytes)
    tiles = triton.cdiv(geom.out_height * geom.out_width, tiling.block_m)
    ng_out, ng_in = triton.cdiv(geom.out_channels, CHANNEL_GROUP), triton.cdiv(geom.in_channels, CHANNEL_GROUP)
    slots = triton.cdiv(ng_out, tiling.block // CHANNEL_GROUP)
    grid = (geom.batch * tiles * slots,)
    _channel_sparse_conv2d_kernel[grid](
        x, w, y, optional_pointer(scale, y), optional_pointer(shift, y), optional_pointer(residual, y),
        out_bytes, out_lists.order, out_lists.counts, in_bytes, in_lists.order, in_lists.counts,
        optional_pointer(counters if counters.numel() else None, out_lists.counts),
        geom.height, geom.width, geom.in_channels, geom.out_channels, geom.out_height, geom.out_width,
        tiles, slots, ng_out, ng_in,
        *x.stride(), *y.stride(), *tensor_strides(residual),
        *geom.stride, *geom.padding, *geom.dilation,
        KH=geom.kernel[0], KW=geom.kernel[1], BLOCK_M=tiling.block_m, BLOCK_C=tiling.block, GROUP=CHANNEL_GROUP,
        HAS_IN_MASK=in_mask is not None, HAS_SCALE=scale is not None, HAS_SHIFT=shift is not None,
        HAS_RESIDUAL=residual is not None, RELU=relu, COUNT=counters.numel() > 0,
        num_warps=tiling.num_warps, num_stages=tiling.num_stages, **dot_options(x.dtype),
    )  # fmt: skip
