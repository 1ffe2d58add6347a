"""gating.ops: dispatch, and an eval-mode ChannelGatedConv2d run through the kernel path."""

import pytest
import torch
from torch import nn

import kernels
from gating import ChannelGatedConv2d
from gating.ops import GatedConvInference, fold_gated_conv, gated_conv2d, use_triton


def trained_layer(layout: str, gate_group: int, bias: bool, dtype=torch.float64, **conv) -> tuple:
    """A gated conv + BN with non-trivial running statistics and thresholds, in eval mode."""
    torch.manual_seed(0)
    layer = ChannelGatedConv2d(12, 24, base_layout=layout, gate_group=gate_group, bias=bias, dtype=dtype, **conv)
    bn = nn.BatchNorm2d(24).to(dtype)
    with torch.no_grad():
        layer.threshold.uniform_(-0.5, 0.5)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.2, 0.2)
        for _ in range(3):
            bn(layer(torch.randn(4, 12, 9, 9, dtype=dtype)))
    return layer.eval(), bn.eval()


@pytest.mark.parametrize("layout", ["first", "grouped"])
@pytest.mark.parametrize("gate_group", [1, 8, 16])
@pytest.mark.parametrize("bias", [False, True])
def test_folded_layer_equals_module_forward(layout, gate_group, bias):
    layer, bn = trained_layer(layout, gate_group, bias, kernel_size=3, padding=1, stride=2)
    x = torch.randn(2, 12, 9, 9, dtype=torch.float64)
    residual = torch.randn(2, 24, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        expected = torch.relu(bn(layer(x)) + residual)
        fused = GatedConvInference.from_gated(layer, bn, relu=True)
        got = fused(x, residual=residual)
    assert torch.equal(fused.last_decisions, layer.last_decisions)
    assert 0 < layer.density() < 1
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_without_batchnorm_the_bias_is_the_shift():
    layer, _ = trained_layer("first", 8, True, kernel_size=1)
    x = torch.randn(3, 12, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        expected = layer(x)
        got = GatedConvInference.from_gated(layer)(x)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("layout,gate_group", [("first", 16), ("grouped", 8)])
def test_triton_kernel_computes_the_module_function(layout, gate_group):
    """The Triton kernel (interpreted on CPU in CI, compiled on GPU) on the folded arguments."""
    layer, bn = trained_layer(layout, gate_group, True, dtype=torch.float32, kernel_size=3, padding=1)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    layer, bn = layer.to(device), bn.to(device)
    x = torch.randn(2, 12, 7, 7, device=device)
    with torch.no_grad():
        layer(x)
        folded = fold_gated_conv(layer, bn)
        got, decisions = kernels.gated_conv2d(
            x, folded.weight, folded.gate_scale, folded.gate_shift, relu=True, **folded.kernel_kwargs()
        )
        # Decisions may differ only where the gate statistic sits within rounding of
        # the threshold; the output must be the module's function of the kernel's decisions.
        yp, yr = layer.partial_sums(x)
        on = kernels.expand_groups(decisions, 24, gate_group).float()
        expected_given_decisions = torch.relu(bn(yp + on * yr))
    assert (decisions == layer.last_decisions).float().mean() > 0.99
    assert 0 < decisions.float().mean() < 1
    torch.testing.assert_close(got, expected_given_decisions, rtol=1e-4, atol=1e-4)


def test_dispatch_follows_the_device():
    x = torch.randn(1, 4, 5, 5)
    assert not use_triton(x)
    w = torch.randn(8, 4, 3, 3)
    scale, shift = torch.ones(8), torch.zeros(8)
    y, d = gated_conv2d(x, w, scale, shift, gate_group=8)
    ref_y, ref_d = kernels.gated_conv2d_reference(x, w, scale, shift, gate_group=8)
    assert torch.equal(y, ref_y) and torch.equal(d, ref_d)


def test_fold_rejects_wrong_batchnorm():
    layer, _ = trained_layer("first", 8, False, kernel_size=1)
    with pytest.raises(ValueError, match="BatchNorm2d\\(24\\)"):
        fold_gated_conv(layer, nn.BatchNorm2d(12))
    with pytest.raises(TypeError, match="ChannelGatedConv2d"):
        fold_gated_conv(nn.Conv2d(3, 3, 1))
