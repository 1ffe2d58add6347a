"""ChannelGatedConv2d against a direct reference built from separate Yp / Yr convs."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gating import ChannelGatedConv2d
from kernels import partition


def explicit_base_mask(cout: int, cin: int, p: int, layout: str) -> torch.Tensor:
    """Base mask written out element by element from the spec, independent of kernels.partition."""
    mask = torch.zeros(cout, cin)
    for o in range(cout):
        for i in range(cin):
            if layout == "first":
                mask[o, i] = float(i < max(1, round(cin / p)))
            else:
                chunk_o = sum(1 for k in range(1, p) if k * cout // p <= o)
                chunk_i = sum(1 for k in range(1, p) if k * cin // p <= i)
                mask[o, i] = float(chunk_o == chunk_i)
    return mask


def reference_forward(layer: ChannelGatedConv2d, x: torch.Tensor, p: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Y = Yp + d*Yr with the gate computed from batch statistics (training mode)."""
    mask = explicit_base_mask(layer.out_channels, layer.in_channels, p, layer.base_layout)[:, :, None, None]
    kw = dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation)
    w = layer.weight.double()
    yp = F.conv2d(x.double(), w * mask, None if layer.bias is None else layer.bias.double(), **kw)
    yr = F.conv2d(x.double(), w * (1 - mask), **kw)
    mean = yp.mean(dim=(0, 2, 3), keepdim=True)
    var = yp.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    s = (yp - mean) / torch.sqrt(var + layer.gate_bn.eps) - layer.threshold.double()[None, :, None, None]
    g = layer.gate_group
    decisions = []
    for start in range(0, layer.out_channels, g):
        decisions.append(s[:, start : start + g].mean(dim=1) > 0)
    d = torch.stack(decisions, dim=1)
    d_channels = torch.cat([d[:, j : j + 1].expand(-1, min(g, layer.out_channels - j * g), -1, -1)
                            for j in range(d.shape[1])], dim=1)
    return yp + d_channels.double() * yr, d


@pytest.mark.parametrize("layout,p", [("first", 4), ("first", 2), ("grouped", 4), ("grouped", 2)])
@pytest.mark.parametrize("gate_group", [1, 3, 8, 16])
@pytest.mark.parametrize(
    "conv", [dict(kernel_size=3, padding=1), dict(kernel_size=3, stride=2, padding=2, dilation=2),
             dict(kernel_size=1), dict(kernel_size=(5, 3), padding=(2, 1), bias=True)]
)
def test_forward_matches_reference(layout, p, gate_group, conv):
    torch.manual_seed(0)
    layer = ChannelGatedConv2d(12, 20, base_fraction=1 / p, base_layout=layout, gate_group=gate_group,
                               dtype=torch.float64, **conv)
    with torch.no_grad():
        layer.threshold.uniform_(-0.5, 0.5)
    x = torch.randn(3, 12, 9, 7, dtype=torch.float64)
    expected, expected_d = reference_forward(layer, x, p)
    y = layer(x)
    assert torch.equal(layer.last_decisions, expected_d)
    torch.testing.assert_close(y, expected, rtol=1e-10, atol=1e-10)
    density = layer.density()
    assert 0.0 < density < 1.0


def test_eval_uses_running_stats_and_folded_gate_agrees():
    torch.manual_seed(1)
    layer = ChannelGatedConv2d(8, 16, 3, padding=1, gate_group=4, bias=True, dtype=torch.float64)
    for _ in range(5):
        layer(torch.randn(4, 8, 6, 6, dtype=torch.float64))
    layer.eval()
    with torch.no_grad():
        layer.threshold.uniform_(-1, 1)
        x = torch.randn(2, 8, 6, 6, dtype=torch.float64)
        y = layer(x)
        yp, yr = layer.partial_sums(x)
        scale, shift = layer.folded_gate()
        z = partition.group_sum(yp * scale.double()[None, :, None, None] + shift.double()[None, :, None, None], 4)
        assert torch.equal(layer.last_decisions, z > 0)
        d = partition.expand_groups(z > 0, 16, 4).double()
        torch.testing.assert_close(y, yp + d * yr)


def test_gate_group_one_folds_to_threshold_on_raw_partial_sum():
    torch.manual_seed(2)
    layer = ChannelGatedConv2d(8, 6, 3, padding=1, gate_group=1, dtype=torch.float64)
    layer(torch.randn(4, 8, 5, 5, dtype=torch.float64))
    layer.eval()
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        layer(x)
        yp, _ = layer.partial_sums(x)
    bn = layer.gate_bn
    sigma = torch.sqrt(bn.running_var + bn.eps)
    expected = yp > (bn.running_mean + sigma * layer.threshold.detach())[None, :, None, None]
    assert torch.equal(layer.last_decisions, expected)


@pytest.mark.parametrize("gate_group,sparse_bp", [(1, False), (4, False), (4, True)])
def test_surrogate_gradient_matches_hand_computation(gate_group, sparse_bp):
    torch.manual_seed(3)
    alpha = 2.0
    layer = ChannelGatedConv2d(8, 8, 3, padding=1, gate_group=gate_group, alpha=alpha, sparse_bp=sparse_bp,
                               dtype=torch.float64)
    with torch.no_grad():
        layer.threshold.uniform_(-0.3, 0.3)
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64)
    upstream = torch.randn(2, 8, 5, 5, dtype=torch.float64)
    (layer(x) * upstream).sum().backward()

    with torch.no_grad():
        yp, yr = layer.partial_sums(x)
        s = F.batch_norm(yp, None, None, training=True, eps=layer.gate_bn.eps)
        s = s - layer.threshold[None, :, None, None]
        grad = torch.zeros(8, dtype=torch.float64)
        for start in range(0, 8, gate_group):
            members = slice(start, start + gate_group)
            z = s[:, members].mean(dim=1)  # [N, H, W]
            sig = torch.sigmoid(alpha * z)
            slope = alpha * sig * (1 - sig)
            if sparse_bp:
                slope = slope * (z > 0)
            # dL/dz summed over the group's channels, then dz/dΔ_c = -1/|group|.
            dz = (upstream[:, members] * yr[:, members]).sum(dim=1) * slope
            grad[members] = -dz.sum() / gate_group
    torch.testing.assert_close(layer.threshold.grad, grad)


def test_from_conv_copies_weights_and_rejects_unsupported():
    conv = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=True)
    gated = ChannelGatedConv2d.from_conv(conv)
    assert torch.equal(gated.weight, conv.weight) and torch.equal(gated.bias, conv.bias)
    assert gated.stride == (2, 2) and gated.padding == (1, 1)
    with pytest.raises(NotImplementedError, match="groups=2"):
        ChannelGatedConv2d.from_conv(nn.Conv2d(8, 8, 3, groups=2))
    with pytest.raises(NotImplementedError, match="transposed"):
        ChannelGatedConv2d.from_conv(nn.ConvTranspose2d(8, 8, 3))
    with pytest.raises(NotImplementedError, match="padding_mode"):
        ChannelGatedConv2d.from_conv(nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect"))


def test_bad_inputs_name_the_layer():
    layer = ChannelGatedConv2d(8, 16, 3)
    layer.layer_name = "block.conv1"
    with pytest.raises(ValueError, match=r"block\.conv1.*4-D"):
        layer(torch.randn(8, 5, 5))
    with pytest.raises(ValueError, match=r"block\.conv1.*8 input channels, got 3"):
        layer(torch.randn(1, 3, 5, 5))
    with pytest.raises(TypeError, match=r"block\.conv1.*floating-point"):
        layer(torch.ones(1, 8, 5, 5, dtype=torch.int64))
    with pytest.raises(TypeError, match=r"block\.conv1.*float64.*float32"):
        layer(torch.randn(1, 8, 5, 5, dtype=torch.float64))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="base_layout"):
        ChannelGatedConv2d(8, 8, 3, base_layout="diagonal")
    with pytest.raises(ValueError, match="gate_group"):
        ChannelGatedConv2d(8, 8, 3, gate_group=0)
    with pytest.raises(ValueError, match="1/p"):
        ChannelGatedConv2d(8, 8, 3, base_fraction=0.3, base_layout="grouped")
    with pytest.raises(ValueError, match="at least 4 input"):
        ChannelGatedConv2d(2, 8, 3, base_layout="grouped")


def test_partition_matches_explicit_definition():
    for cout, cin, p, layout in [(20, 12, 4, "first"), (20, 12, 4, "grouped"), (7, 5, 2, "grouped"), (3, 9, 3, "first")]:
        got = partition.base_mask(cout, cin, 1 / p, layout)
        assert torch.equal(got, explicit_base_mask(cout, cin, p, layout).bool()), (cout, cin, p, layout)
    assert partition.group_sizes(20, 8) == [8, 8, 4]
    d = torch.tensor([True, False, True]).view(1, 3, 1, 1)
    assert partition.expand_groups(d, 20, 8).view(-1).tolist() == [True] * 8 + [False] * 8 + [True] * 4


@pytest.mark.parametrize("channels, group", [(16, 4), (20, 8), (5, 16), (12, 1)])
def test_mask_groups_matches_expanded_decisions(channels, group):
    """The broadcast masking equals multiplying by the per-channel expansion, values and gradients."""
    torch.manual_seed(0)
    values = torch.randn(2, channels, 3, 4, dtype=torch.float64, requires_grad=True)
    groups = partition.gate_group_count(channels, group)
    decisions = torch.rand(2, groups, 3, 4, dtype=torch.float64, requires_grad=True)
    got = partition.mask_groups(values, decisions, group)
    want = values * partition.expand_groups(decisions, channels, group)
    assert torch.equal(got, want)
    grad = torch.randn_like(want)
    got_grads = torch.autograd.grad(got, (values, decisions), grad)
    want_grads = torch.autograd.grad(want, (values, decisions), grad)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="decisions must be"):
        partition.mask_groups(values, decisions[:, :, :2], group)
