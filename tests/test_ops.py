"""gating.ops: folding, the ops' dispatch, and an eval-mode ChannelGatedConv2d run through the kernel path."""

import pytest
import torch
from torch import nn

import kernels
from _helpers import DEVICE, assert_matches
from gating import ChannelGatedConv2d
from gating.ops import GatedConvInference, fold_gated_conv, gated_conv2d


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


def module_function_given(layer: ChannelGatedConv2d, bn: nn.BatchNorm2d, x: torch.Tensor, decisions: torch.Tensor):
    """``relu(bn(Yp + d*Yr))`` of the module on given decisions (eval statistics), in the layer's dtype."""
    with torch.no_grad():
        yp, yr = layer.partial_sums(x)
        on = kernels.expand_groups(decisions, layer.out_channels, layer.gate_group).to(yp.dtype)
        return torch.relu(bn(yp + on * yr))


@pytest.mark.parametrize("layout,gate_group", [("first", 16), ("grouped", 8)])
def test_triton_kernel_computes_the_module_function(layout, gate_group):
    """The Triton kernel (interpreted on CPU in CI, compiled on GPU) on the folded arguments."""
    layer, bn = trained_layer(layout, gate_group, True, dtype=torch.float32, kernel_size=3, padding=1)
    x = torch.randn(2, 12, 7, 7)
    with torch.no_grad():
        layer.to(DEVICE)(x.to(DEVICE))
        folded = fold_gated_conv(layer, bn.to(DEVICE))
        got, decisions, _ = kernels.gated_conv2d_triton(
            x.to(DEVICE), folded.weight, folded.gate_scale, folded.gate_shift, relu=True, **folded.kernel_kwargs()
        )
    # Decisions may differ only where the gate statistic sits within rounding of
    # the threshold; the output must be the module's function of the kernel's decisions.
    assert (decisions == layer.last_decisions).float().mean() > 0.99
    assert 0 < decisions.float().mean() < 1
    decisions, layer, bn = decisions.cpu(), layer.cpu(), bn.cpu()
    at_dtype = module_function_given(layer, bn, x, decisions)
    truth = module_function_given(layer.double(), bn.double(), x.double(), decisions)
    assert_matches(got.cpu(), truth, at_dtype, 12 * 3 * 3)


def test_ops_run_the_reference_on_cpu():
    """The torch dispatcher sends CPU tensors to the reference; no device test in gating."""
    x = torch.randn(1, 4, 5, 5)
    w = torch.randn(8, 4, 3, 3)
    scale, shift = torch.ones(8), torch.zeros(8)
    y, d = gated_conv2d(x, w, scale, shift, gate_group=8)
    ref_y, ref_d = kernels.gated_conv2d_reference(x, w, scale, shift, gate_group=8)
    assert torch.equal(y, ref_y) and torch.equal(d, ref_d)
    assert torch.equal(kernels.conv2d(x, w, padding=1), kernels.conv2d_reference(x, w, padding=1))


def test_inference_module_buffers_follow_to():
    layer, bn = trained_layer("first", 8, True, kernel_size=3, padding=1)
    fused = GatedConvInference.from_gated(layer, bn).float()
    assert fused.packed_weight.dtype == fused.gate_scale.dtype == torch.float32
    assert fused.folded.weight.shape == layer.weight.shape and fused.folded.stride == (1, 1)
    x = torch.randn(2, 12, 9, 9)
    folded = fused.folded
    expected, _ = kernels.gated_conv2d_reference(
        x, folded.weight, folded.gate_scale, folded.gate_shift, **folded.kernel_kwargs()
    )
    assert torch.equal(fused(x), expected)


def test_fold_rejects_wrong_batchnorm():
    layer, _ = trained_layer("first", 8, False, kernel_size=1)
    with pytest.raises(ValueError, match="BatchNorm2d\\(24\\)"):
        fold_gated_conv(layer, nn.BatchNorm2d(12))
    with pytest.raises(TypeError, match="ChannelGatedConv2d"):
        fold_gated_conv(nn.Conv2d(3, 3, 1))
    with pytest.raises(TypeError, match="BatchNorm2d\\(24\\)"):
        fold_gated_conv(layer, nn.BatchNorm1d(24))


def test_batchnorm_without_running_statistics_is_a_value_error():
    """One type for both places that need running statistics (docs/design.md#exception-policy)."""
    layer, _ = trained_layer("first", 8, False, kernel_size=1)
    with pytest.raises(ValueError, match="bn.*no running statistics"):
        fold_gated_conv(layer, nn.BatchNorm2d(24, track_running_stats=False))
    untracked = ChannelGatedConv2d(12, 24, 1, gate_group=8)
    untracked.gate_bn = nn.BatchNorm2d(24, affine=False, track_running_stats=False)
    with pytest.raises(ValueError, match="gate_bn.*no running statistics"):
        fold_gated_conv(untracked)
