"""Accounting against hand-computed small cases and torch.utils.flop_counter."""

import copy

import pytest
import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from gating import ChannelGatedConv2d, GateConfig, GatedModel, count_model
from gating.accounting import dense_count, gated_count
from gating.models import resnet20

N, CIN, COUT, H, W = 2, 8, 4, 4, 4


def small_layer(**kw) -> ChannelGatedConv2d:
    # base_fraction 1/4 of 8 inputs -> 2 base channels; gate_group 2 -> 2 groups.
    return ChannelGatedConv2d(CIN, COUT, 3, padding=1, gate_group=2, **kw)


def test_hand_computed_group_on_everywhere():
    layer = small_layer()
    decisions = torch.zeros(N, 2, H, W, dtype=torch.bool)
    decisions[:, 0] = True  # group 0 (channels 0, 1) on everywhere, group 1 off
    inp, out = torch.Size([N, CIN, H, W]), torch.Size([N, COUT, H, W])
    count = gated_count("l", layer, inp, out, 4, decisions)
    positions = N * H * W
    assert count.macs_dense == positions * COUT * CIN * 9
    base = positions * COUT * 2 * 9
    cond = positions * 2 * 6 * 9  # two channels of group 0, six conditional inputs each
    gate = positions * COUT
    assert count.macs_executed == base + cond + gate
    assert count.gate_macs == gate
    weights = (COUT * 2 * 9 + 2 * 6 * 9) * 4 + 2 * COUT * 4
    inputs = (N * 2 * H * W + N * 6 * H * W) * 4  # base channels + every conditional pixel
    outputs = N * COUT * H * W * 4
    assert count.bytes_executed == weights + inputs + outputs + N * 2 * H * W
    assert count.bytes_dense == COUT * CIN * 9 * 4 + N * CIN * H * W * 4 + outputs
    assert count.density == pytest.approx(0.5)


def test_kernel_conditional_macs_follow_the_kernel_tiles():
    """Compacted tiles of active pixels x one 16-channel group, over the flattened K of 9 taps x 12 channels."""
    layer = ChannelGatedConv2d(16, 32, 3, padding=1, gate_group=16)  # base: inputs 0-3; 2 groups
    inp, out = torch.Size([1, 16, 8, 8]), torch.Size([1, 32, 8, 8])
    decisions = torch.zeros(1, 2, 8, 8, dtype=torch.bool)
    decisions[0, 0, 3, 5] = True  # one pixel of group 0: one 8-row last tile
    count = gated_count("l", layer, inp, out, 2, decisions)
    # a row of a tile: block_n x K, 9 taps x 12 channels = 108, in steps of 16 -> 112
    row = 16 * 112
    assert count.conditional_macs == 16 * 12 * 9
    assert count.kernel_conditional_macs == 8 * row
    assert count.kernel_overhead == pytest.approx(8 * row / (16 * 12 * 9))
    decisions[0, 0] = True  # all of group 0: one full tile of 64 rows, only the K rounding (112 / 108) remains
    count = gated_count("l", layer, inp, out, 2, decisions)
    assert count.kernel_conditional_macs == 64 * row and count.conditional_macs == 64 * 16 * 12 * 9
    assert count.kernel_overhead == pytest.approx(112 / 108)
    decisions[0, 1, :2, :] = True  # 16 pixels of group 1: one 16-row tail tile
    count = gated_count("l", layer, inp, out, 2, decisions)
    assert count.kernel_conditional_macs == (64 + 16) * row
    decisions[:] = False
    count = gated_count("l", layer, inp, out, 2, decisions)
    assert count.kernel_conditional_macs == 0 and count.kernel_overhead is None


def test_hand_computed_single_corner_pixel():
    layer = small_layer()
    decisions = torch.zeros(1, 2, H, W, dtype=torch.bool)
    decisions[0, 1, 0, 0] = True  # group 1 at the top-left output pixel only
    count = gated_count("l", layer, torch.Size([1, CIN, H, W]), torch.Size([1, COUT, H, W]), 2, decisions)
    base = H * W * COUT * 2 * 9
    assert count.macs_executed == base + 2 * 6 * 9 + H * W * COUT
    # The 3x3 window at (0, 0) with padding 1 covers input pixels (0..1, 0..1): 4 per conditional channel.
    weights = (COUT * 2 * 9 + 2 * 6 * 9) * 4 + 2 * COUT * 4
    inputs = (2 * H * W + 6 * 4) * 2
    assert count.bytes_executed == weights + inputs + COUT * H * W * 2 + 2 * H * W


def test_strided_dilated_receptive_field():
    layer = ChannelGatedConv2d(4, 2, 3, stride=2, padding=2, dilation=2, gate_group=2)
    decisions = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    decisions[0, 0, 1, 2] = True
    # Output (1, 2) reads input rows 1*2-2+{0,2,4} = {0,2,4}, cols 2*2-2+{0,2,4} = {2,4,6}: 9 pixels.
    count = gated_count("l", layer, torch.Size([1, 4, 7, 7]), torch.Size([1, 2, 4, 4]), 1, decisions)
    weights = (2 * 1 * 9 + 2 * 3 * 9) * 4 + 2 * 2 * 4  # float32 weights
    assert count.bytes_executed == weights + (1 * 49 + 3 * 9) + 2 * 16 + 16


def test_grouped_layout_counts_each_reader_set():
    layer = ChannelGatedConv2d(4, 4, 1, base_fraction=0.5, base_layout="grouped", gate_group=2)
    decisions = torch.zeros(1, 2, 3, 3, dtype=torch.bool)
    decisions[0, 0, 0, 0] = True  # group 0 = chunk 0 outputs, reads input chunk 1 conditionally
    count = gated_count("l", layer, torch.Size([1, 4, 3, 3]), torch.Size([1, 4, 3, 3]), 1, decisions)
    assert count.macs_executed == 9 * 4 * 2 + 2 * 2 + 9 * 4
    weights = (4 * 2 + 2 * 2) * 4 + 2 * 4 * 4
    assert count.bytes_executed == weights + (4 * 9 + 2 * 1) + 4 * 9 + 18


def test_forced_open_counts_as_dense():
    layer = small_layer()
    inp, out = torch.Size([N, CIN, H, W]), torch.Size([N, COUT, H, W])
    count = gated_count("l", layer, inp, out, 4, None)
    dense = dense_count("l", layer, inp, out, 4)
    assert (count.macs_executed, count.bytes_executed) == (dense.macs_dense, dense.bytes_dense)


def flop_counter_macs(model: nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() // 2


MODELS = {
    "cifar_resnet20": (lambda: resnet20(), 32),
    "resnet18": (lambda: torchvision.models.resnet18(weights=None), 64),
    "resnet50": (lambda: torchvision.models.resnet50(weights=None), 64),
    "mobilenet_v2": (lambda: torchvision.models.mobilenet_v2(weights=None), 64),
    "vgg16_bn": (lambda: torchvision.models.vgg16_bn(weights=None), 32),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_dense_macs_equal_flop_counter(name):
    factory, size = MODELS[name]
    model = factory().eval()
    x = torch.randn(2, 3, size, size)
    expected = flop_counter_macs(model, x)
    assert count_model(model, x).macs_dense == expected
    gated = GatedModel(copy.deepcopy(model)).eval()
    with torch.no_grad():
        gated(x)
    report = gated.report()
    assert report.macs_dense == expected
    with torch.no_grad(), gated.open_gates():
        gated(x)
    assert gated.report().macs_executed == expected


def test_counted_transposed_conv_and_linear_match_flop_counter():
    model = nn.Sequential(nn.Conv2d(3, 6, 3, groups=3), nn.ConvTranspose2d(6, 4, 3, stride=2), nn.Flatten(),
                          nn.Linear(4 * 13 * 13, 5))
    x = torch.randn(2, 3, 8, 8)
    assert count_model(model, x).macs_dense == flop_counter_macs(model, x)


def test_executed_work_falls_with_density():
    torch.manual_seed(0)
    gated = GatedModel(resnet20(width=8), GateConfig(gate_group=4)).eval()
    x = torch.zeros(2, 3, 32, 32)
    x[:, :, 8:20, 10:22] = torch.randn(2, 3, 12, 12)  # an object on a flat background
    macs, nbytes = [], []
    for delta in (-10.0, -0.5, 0.0, 0.5, 10.0):
        with torch.no_grad():
            for layer in gated.gated_layers().values():
                layer.threshold.fill_(delta)
            gated(x)
        report = gated.report()
        macs.append(report.macs_executed)
        nbytes.append(report.bytes_executed)
    assert macs == sorted(macs, reverse=True) and macs[0] > macs[-1]
    assert nbytes == sorted(nbytes, reverse=True) and nbytes[0] > nbytes[-1]
    assert report.macs_reduction > 2.5  # all conditional work skipped leaves ~1/4 of the gated MACs
    table = report.table()
    assert "layer1.0.conv1" in table and "total" in table


def test_reports_add_layer_by_layer():
    torch.manual_seed(0)
    gated = GatedModel(resnet20(width=8)).eval()
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        gated(x)
        whole = gated.report()
        gated(x[:1])
        first = gated.report()
        gated(x[1:])
        rest = gated.report()
    combined = first + rest
    assert combined.macs_executed == whole.macs_executed and combined.macs_dense == whole.macs_dense
    for a, b in zip(combined.layers, whole.layers):
        assert a.density == pytest.approx(b.density if b.density is not None else None)
    assert combined.to_dict()["layers"][1]["density"] == whole.layers[1].density
