"""On-device lists of the active pixels of each gate group, across the whole batch (pure PyTorch).

The compacted schedule of :func:`kernels.gated_conv2d` runs the conditional
channels of gate group ``j`` as a GEMM over the rows of its active output
pixels only, gathered from every image of the batch into shared tiles. This
module builds those lists from the decisions with a prefix sum and a scatter:
no host synchronisation, fixed-size outputs (sized by the upper bound, every
pixel active), so the launch that reads them is CUDA-graph capturable.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["ActiveRows", "active_rows"]


class ActiveRows(NamedTuple):
    """Compacted active pixels per gate group.

    ``rows`` int32 ``[G, M + 1]``: ``rows[j, :counts[j]]`` are the flattened
    ``(n, oh, ow)`` indices of the pixels where group ``j`` is on, ascending;
    entries past ``counts[j]`` are undefined (column ``M`` collects the
    scatter of the inactive ones). ``counts`` int32 ``[G]``.
    """

    rows: torch.Tensor
    counts: torch.Tensor


def active_rows(decisions_flat: torch.Tensor) -> ActiveRows:
    """Per gate group, the ascending list of pixels whose decision is on.

    Args:
        decisions_flat: bool or uint8 ``[M, G]`` (pixel-major, as a
            channels_last ``[N, G, OH, OW]`` decisions tensor viewed flat), on
            any device.

    Returns:
        :class:`ActiveRows` on the same device. An inclusive prefix sum over
        pixels gives each active pixel its slot; one scatter writes it.
    """
    if decisions_flat.dim() != 2:
        raise ValueError(f"decisions_flat must be [M, G], got shape {tuple(decisions_flat.shape)}")
    pixels, groups = decisions_flat.shape
    on = decisions_flat != 0
    slot = torch.cumsum(on, dim=0, dtype=torch.int32)  # [M, G], 1-based slot of each active pixel
    counts = slot[-1] if pixels else torch.zeros(groups, dtype=torch.int32, device=on.device)
    target = torch.where(on, slot - 1, pixels).t().long()  # [G, M]; inactive pixels go to column M
    pixel = torch.arange(pixels, dtype=torch.int32, device=on.device).expand(groups, pixels)
    rows = torch.empty(groups, pixels + 1, dtype=torch.int32, device=on.device)
    rows.scatter_(1, target, pixel)
    return ActiveRows(rows, counts.contiguous())
