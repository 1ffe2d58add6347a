"""Spatially coherent gate-decision masks, and inputs that make the real gate produce them.

**Masks** (:func:`blob_mask`). Per sample, ``BLOBS`` discs with random centres
and radii ``r_b`` are drawn at output resolution; each pixel scores
``max_b (1 - d_b / r_b)`` (``d_b`` its distance to centre ``b``), and exactly
``clamp(round(density * OH * OW), 1, OH * OW)`` pixels with the highest scores
are on (ties broken by a tiny seeded jitter): a union of the discs, each
shrunk or grown in proportion to its radius until the count is reached. So the
density is the target up to one pixel's rounding (5/49 for 0.1 on a 7x7 map),
and the on pixels form a few round regions, as objects in an image would. With
one seed the masks of different densities are nested (a higher density only
adds pixels). Every gate group of a pixel gets the same decision
(:func:`group_decisions`): the benchmark varies how much of the image is on,
not how it varies across channels.

**Beacon inputs** (:func:`beacon_case`). To time the gated kernel with the
decisions it computes itself (not ones handed to it), the conv's inputs are
built so that the gate's decision is the mask, exactly, at any dtype:

* every output channel ``o`` has a *beacon* input channel ``b(o)``, its first
  base channel in ``kernels.partition.base_mask`` (channel 0 for every output
  in the ``"first"`` layout; the first channel of input chunk ``i`` for output
  chunk ``i`` in ``"grouped"``);
* beacon channels hold ``+1`` where the mask is on and ``-1`` where it is off,
  upsampled to input resolution by nearest neighbour so that the centre tap of
  output pixel ``(oh, ow)`` reads exactly the mask's value at ``(oh, ow)``;
  every other input is uniform in ``[-1, 1]``;
* weights are uniform in ``[-1, 1] / sqrt(fan_in)`` (rounded to the dtype),
  except ``W[o, b(o)]``: zero but for its centre tap, which is
  ``beacon = 2^ceil(log2(2 S + 1))``, where ``S`` bounds
  ``sum |W[o, c, r, s]|`` over the other base channels of any ``o``; so the
  base partial sum is ``beacon * (+-1) + rest`` with ``|rest| <= S <
  beacon / 2``, and a power of two is exact in every float dtype;
* ``gate_scale = 1/beacon`` and ``gate_shift = 0``: every channel of a gate
  group has the sign of the beacon, so their sum does too.

The intended decisions are returned with the case; callers check the kernel's
decisions against them and report the density measured from what it returned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from kernels import partition

from .shapes import ConvShape

BLOBS = 3
RADIUS_RANGE = (0.15, 0.4)  # disc radius as a fraction of max(OH, OW)
JITTER = 1e-6


def _target_pixels(density: float, pixels: int) -> int:
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density!r}")
    return min(pixels, max(1, round(density * pixels)))


def blob_scores(batch: int, height: int, width: int, *, seed: int) -> torch.Tensor:
    """Float ``[batch, height * width]`` pixel scores of ``BLOBS`` random discs per sample (CPU, seeded).

    Score ``max_b (1 - d_b / r_b)`` plus a tiny jitter that breaks ties; see the
    module docstring. :func:`top_fraction` turns scores into a mask.
    """
    gen = torch.Generator().manual_seed(seed)
    centres = torch.rand(batch, BLOBS, 2, generator=gen) * torch.tensor([height, width])
    low, high = RADIUS_RANGE
    radii = (low + (high - low) * torch.rand(batch, BLOBS, generator=gen)) * max(height, width)
    rows = torch.arange(height, dtype=torch.float32)[:, None] + 0.5
    cols = torch.arange(width, dtype=torch.float32)[None, :] + 0.5
    dist = ((rows - centres[..., 0, None, None]) ** 2 + (cols - centres[..., 1, None, None]) ** 2).sqrt()
    score = (1 - dist / radii[..., None, None]).amax(dim=1).flatten(1)
    return score + JITTER * torch.rand(batch, height * width, generator=gen)


def top_fraction(scores: torch.Tensor, density: float, height: int, width: int) -> torch.Tensor:
    """Bool ``[N, height, width]``: per sample, the ``round(density * pixels)`` best-scoring pixels (>= 1)."""
    on = scores.topk(_target_pixels(density, height * width), dim=1).indices
    mask = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device).scatter_(1, on, True)
    return mask.view(-1, height, width)


def blob_mask(batch: int, height: int, width: int, density: float, *, seed: int) -> torch.Tensor:
    """Bool ``[batch, height, width]`` on CPU: the top-density pixels of :func:`blob_scores`.

    Deterministic for a given ``seed``; masks of one seed are nested across densities.
    """
    return top_fraction(blob_scores(batch, height, width, seed=seed), density, height, width)


def group_decisions(mask: torch.Tensor, groups: int) -> torch.Tensor:
    """Per-group decisions ``[N, groups, OH, OW]`` (a view): the same mask for every gate group."""
    n, oh, ow = mask.shape
    return mask[:, None].expand(n, groups, oh, ow)


@dataclass(frozen=True)
class BeaconCase:
    """Inputs of one gated conv whose gate decisions are ``decisions`` (see the module docstring).

    ``x`` is channels_last in the case's dtype; ``gate_scale``/``gate_shift``
    are float32; ``decisions`` is the intended bool ``[N, G, OH, OW]``.
    """

    x: torch.Tensor
    weight: torch.Tensor
    gate_scale: torch.Tensor
    gate_shift: torch.Tensor
    decisions: torch.Tensor
    beacon: float


def _nearest_source(size: int, out_size: int, stride: int, offset: int) -> torch.Tensor:
    """Output index whose centre tap reads each input index (nearest one, clamped)."""
    return ((torch.arange(size) - offset).div(stride, rounding_mode="floor")).clamp(0, out_size - 1)


def _centre_offset(shape: ConvShape) -> int:
    """Input offset ``centre*dilation - padding`` of the centre tap; checks it is inside the input."""
    if shape.kernel % 2 == 0:
        raise ValueError(f"{shape.name}: beacon inputs need an odd kernel, got {shape.kernel}")
    offset = (shape.kernel // 2) * shape.dilation - shape.padding
    last_h = (shape.out_height - 1) * shape.stride + offset
    last_w = (shape.out_width - 1) * shape.stride + offset
    if offset < 0 or last_h >= shape.height or last_w >= shape.width:
        raise ValueError(f"{shape.name}: the centre tap of some output pixel falls in the padding")
    return offset


def _beacon_plane(mask: torch.Tensor, shape: ConvShape) -> torch.Tensor:
    """``[N, H, W]`` of +1 / -1: the mask upsampled to input resolution at the centre taps."""
    offset = _centre_offset(shape)
    rows = _nearest_source(shape.height, shape.out_height, shape.stride, offset).to(mask.device)
    cols = _nearest_source(shape.width, shape.out_width, shape.stride, offset).to(mask.device)
    on = mask[:, rows][:, :, cols]
    return torch.where(on, 1.0, -1.0)


def beacon_case(
    shape: ConvShape,
    mask: torch.Tensor,
    *,
    base_fraction: float,
    base_layout: str,
    gate_group: int,
    gate_block: int = 1,
    dtype: torch.dtype,
    seed: int,
) -> BeaconCase:
    """Inputs on ``mask``'s device for which the gate of ``shape`` decides ``mask`` in every group.

    ``mask`` is bool ``[N, OH, OW]`` at the shape's output resolution. With
    ``gate_block > 1`` it is first made block-constant (a block is on when at
    least half its pixels are); every pixel's gate statistic then has its
    block's sign, so the block means decide that mask.
    """
    n, oh, ow = mask.shape
    if (oh, ow) != (shape.out_height, shape.out_width):
        raise ValueError(f"{shape.name}: mask is {oh}x{ow}, output is {shape.out_height}x{shape.out_width}")
    if gate_block > 1:
        mask = partition.block_mean(mask[:, None].float(), gate_block)[:, 0] >= 0.5
    device = mask.device
    gen = torch.Generator(device=device).manual_seed(seed)
    c_out, c_in, k = shape.out_channels, shape.in_channels, shape.kernel
    base = partition.base_mask(c_out, c_in, base_fraction, base_layout, device)
    beacon_of = base.int().argmax(dim=1)
    outputs = torch.arange(c_out, device=device)

    weight = (torch.rand(c_out, c_in, k, k, generator=gen, device=device) * 2 - 1) / math.sqrt(c_in * k * k)
    weight = weight.to(dtype).float()
    weight[outputs, beacon_of] = 0.0
    rest = (weight.abs().sum(dim=(2, 3)) * base).sum(dim=1).max()
    beacon = 2.0 ** math.ceil(math.log2(2 * float(rest) + 1))
    weight[outputs, beacon_of, k // 2, k // 2] = beacon

    x = torch.rand(n, c_in, shape.height, shape.width, generator=gen, device=device) * 2 - 1
    x[:, beacon_of.unique()] = _beacon_plane(mask, shape)[:, None]
    groups = partition.gate_group_count(c_out, gate_group)
    return BeaconCase(
        x=x.to(dtype).contiguous(memory_format=torch.channels_last),
        weight=weight.to(dtype),
        gate_scale=torch.full((c_out,), 1.0 / beacon, device=device),
        gate_shift=torch.zeros(c_out, device=device),
        decisions=group_decisions(mask, groups),
        beacon=beacon,
    )
