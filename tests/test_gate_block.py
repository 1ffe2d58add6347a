"""Decisions over blocks of pixels (``gate_block``): hand-computed blocks, module, accounting, calibration, checkpoints.

The kernel against the reference at ``gate_block`` 2 and 4 is in
``test_kernels_gated.py`` (its examples and drawn cases); bad values in
``test_gate_spec.py`` and ``test_exceptions.py``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import kernels
from gating import ChannelGatedConv2d, GateConfig, GatedModel
from gating.accounting import gated_count
from gating.models import resnet20
from gating.ops import GatedConvInference
from kernels import partition


def blocks_by_hand(per_pixel: torch.Tensor, block: int) -> torch.Tensor:
    """Block means written out block by block (independent of ``kernels.block_mean``), at pixel resolution."""
    out = torch.empty_like(per_pixel)
    height, width = per_pixel.shape[-2:]
    for top in range(0, height, block):
        for left in range(0, width, block):
            window = per_pixel[..., top : top + block, left : left + block]
            out[..., top : top + block, left : left + block] = window.mean(dim=(-2, -1), keepdim=True)
    return out


def test_block_mean_hand_case_with_ragged_edges():
    x = torch.arange(1.0, 31.0, dtype=torch.float64).view(1, 1, 6, 5)
    got = kernels.block_mean(x, 4)
    # Blocks: rows 0-3 x cols 0-3, rows 0-3 x col 4, rows 4-5 x cols 0-3, rows 4-5 x col 4.
    expected = torch.tensor([[10.0] * 4 + [12.5]] * 4 + [[25.0] * 4 + [27.5]] * 2, dtype=torch.float64)
    assert torch.equal(got[0, 0], expected)
    assert torch.equal(kernels.block_mean(x, 8), torch.full_like(x, 15.5))  # one block covers the whole map
    assert kernels.block_mean(x, 1) is x


@pytest.mark.parametrize("block", [2, 3, 4])
def test_block_mean_matches_blocks_by_hand_and_spreads_the_gradient(block):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, 9, dtype=torch.float64, requires_grad=True)
    got = kernels.block_mean(x, block)
    assert torch.allclose(got, blocks_by_hand(x.detach(), block), rtol=0, atol=1e-12)
    weights = torch.randn_like(got)
    (got * weights).sum().backward()
    # d/dx of sum_p w_p * mean_{block(p)} x = mean of w over x's block.
    assert torch.allclose(x.grad, blocks_by_hand(weights, block), rtol=0, atol=1e-12)


def test_tiled_schedule_refuses_blocks_and_auto_compacts_them():
    with pytest.raises(ValueError, match="gate_block=2"):
        kernels.resolve_schedule("tiled", 8, 64, 2)
    assert kernels.resolve_schedule("auto", 8, 64, 1) == "tiled"
    assert kernels.resolve_schedule("auto", 8, 64, 2) == "compact"


def _layer(block: int, **kw) -> ChannelGatedConv2d:
    torch.manual_seed(0)
    layer = ChannelGatedConv2d(12, 20, 3, padding=1, gate_group=8, gate_block=block, dtype=torch.float64, **kw)
    with torch.no_grad():
        layer.threshold.uniform_(-0.5, 0.5)
    return layer


@pytest.mark.parametrize("block", [1, 2, 4])
def test_module_decides_on_block_means_of_the_gate_statistic(block):
    layer = _layer(block)
    x = torch.randn(3, 12, 7, 9, dtype=torch.float64)
    y = layer(x)
    # Training mode: batch statistics of the base partial sum, per-pixel group means, block means by hand.
    mask = torch.zeros(20, 12, 1, 1, dtype=torch.float64)
    mask[:, :3] = 1
    yp = F.conv2d(x, layer.weight * mask, padding=1)
    yr = F.conv2d(x, layer.weight * (1 - mask), padding=1)
    s = (yp - yp.mean(dim=(0, 2, 3), keepdim=True)) / torch.sqrt(
        yp.var(dim=(0, 2, 3), unbiased=False, keepdim=True) + layer.gate_bn.eps
    ) - layer.threshold[None, :, None, None]
    z = torch.stack([s[:, :8].mean(dim=1), s[:, 8:16].mean(dim=1), s[:, 16:].mean(dim=1)], dim=1)
    decisions = blocks_by_hand(z.detach(), block) > 0
    assert torch.equal(layer.last_decisions, decisions)
    on = torch.cat([decisions[:, j : j + 1].expand(-1, size, -1, -1) for j, size in enumerate((8, 8, 4))], dim=1)
    assert torch.allclose(y, yp + on * yr, rtol=0, atol=1e-12)


def test_gate_block_one_is_the_per_pixel_gate_bit_for_bit():
    """The per-pixel formula as it stood before gate blocks existed, evaluated term by term."""
    layer = _layer(1)
    x = torch.randn(3, 12, 7, 9, dtype=torch.float64)
    yp, yr = layer.partial_sums(x)
    s = layer.gate_bn(yp) - layer.threshold[None, :, None, None]
    z = partition.group_sum(s, 8) / layer._group_size.double()[None, :, None, None]
    expected = yp + partition.mask_groups(yr, (z > 0).to(yp.dtype), 8)
    out = layer(x)
    assert torch.equal(layer.last_decisions, z > 0)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("block", [2, 4])
def test_folded_inference_layer_equals_the_module_in_eval(block):
    layer = _layer(block, bias=True)
    layer.train()
    layer(torch.randn(4, 12, 7, 9, dtype=torch.float64))  # running statistics
    layer.eval()
    x = torch.randn(2, 12, 7, 9, dtype=torch.float64)
    with torch.no_grad():
        expected = layer(x)
        folded = GatedConvInference.from_gated(layer)
        got = folded(x)
    assert torch.equal(folded.last_decisions, layer.last_decisions)
    assert torch.allclose(got, expected, rtol=0, atol=1e-12)
    assert folded.spec.gate_block == block


def test_accounting_counts_whole_blocks_at_their_real_size():
    # 8 inputs, 2 base; 4 outputs in 2 groups of 2; a 5x5 map in 2x2 blocks (ragged last row and column).
    layer = ChannelGatedConv2d(8, 4, 3, padding=1, gate_group=2, gate_block=2)
    decisions = torch.zeros(1, 2, 5, 5, dtype=torch.bool)
    decisions[0, 0, 4:, 4:] = True  # the 1x1 corner block of group 0
    decisions[0, 1, :2, 2:4] = True  # a full 2x2 block of group 1
    count = gated_count("l", layer, torch.Size([1, 8, 5, 5]), torch.Size([1, 4, 5, 5]), 4, decisions)
    base = 25 * 4 * 2 * 9
    cond = (1 + 4) * 2 * 6 * 9  # five active pixels, two channels each, six conditional inputs, 9 taps
    assert count.conditional_macs == cond
    assert count.macs_executed == base + cond + 25 * 4
    assert count.decisions_on == 5 and count.decisions_total == 50


def test_calibration_reaches_the_budget_with_blocks():
    torch.manual_seed(0)
    gated = GatedModel(resnet20(width=8), GateConfig(gate_group=4, gate_block=2))
    x = torch.randn(16, 3, 16, 16)
    density = gated.calibrate(x, 0.5)
    gated.eval()
    with torch.no_grad():
        gated(x)
    assert gated.executed_macs_ratio() == pytest.approx(0.5, abs=0.03)
    for layer in gated.gated_layers().values():
        d = layer.last_decisions
        assert torch.equal(d, kernels.block_mean(d.double(), 2) > 0.5)  # constant over each block
    assert 0.0 < density < 1.0


def test_checkpoint_with_another_gate_block_is_refused_and_old_checkpoints_load():
    source = GatedModel(resnet20(width=8), GateConfig(gate_group=4, gate_block=2))
    state = source.state_dict()
    same = GatedModel(resnet20(width=8), GateConfig(gate_group=4, gate_block=2))
    same.load_state_dict(state)
    with pytest.raises(ValueError, match="differing: gate_block"):
        GatedModel(resnet20(width=8), GateConfig(gate_group=4)).load_state_dict(state)
    # A checkpoint written before gate_block existed holds a per-pixel (gate_block 1) model.
    per_pixel = GatedModel(resnet20(width=8), GateConfig(gate_group=4))
    old = per_pixel.state_dict()
    extra = next(key for key in old if key.endswith("_extra_state"))
    old[extra] = {**old[extra], "gate_config": {k: v for k, v in old[extra]["gate_config"].items()
                                                  if k != "gate_block"}}  # fmt: skip
    GatedModel(resnet20(width=8), GateConfig(gate_group=4)).load_state_dict(old)
    with pytest.raises(ValueError, match="differing: gate_block"):
        same.load_state_dict(old)
