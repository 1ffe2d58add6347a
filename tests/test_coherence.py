"""The coherence loss: total variation of soft gate maps, by hand on a tiny map and in ``GatedModel.gating_loss``."""

from __future__ import annotations

import pytest
import torch

from gating import GateConfig, GatedModel
from gating.gates import total_variation
from gating.models import resnet20


def test_total_variation_value_and_gradient_by_hand():
    m = torch.tensor([[[[0.1, 0.9, 0.4], [0.3, 0.2, 0.8]]]], dtype=torch.float64, requires_grad=True)
    # Vertical pairs: |0.3-0.1| + |0.2-0.9| + |0.8-0.4| = 0.2 + 0.7 + 0.4 = 1.3 (3 pairs).
    # Horizontal pairs: |0.9-0.1| + |0.4-0.9| + |0.2-0.3| + |0.8-0.2| = 0.8 + 0.5 + 0.1 + 0.6 = 2.0 (4 pairs).
    value = total_variation(m)
    assert value.item() == pytest.approx((1.3 + 2.0) / 7, abs=1e-12)
    value.backward()
    # d/dm of sum |differences| / 7: each pixel gets sign(m - neighbour) summed over its neighbours, e.g.
    # (0,0) = 0.1: below 0.3 and right 0.9 are larger -> -2; (0,1) = 0.9: larger than all three -> +3.
    expected = torch.tensor([[-2, 3, -2], [2, -3, 2]], dtype=torch.float64) / 7
    assert torch.allclose(m.grad[0, 0], expected, rtol=0, atol=1e-12)
    assert total_variation(torch.ones(2, 3, 1, 1)).item() == 0.0  # no neighbours


def test_gating_loss_adds_the_weighted_coherence_of_every_gated_layer():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 16, 16)
    losses = {}
    for weight in (0.0, 2.5):
        torch.manual_seed(1)
        gated = GatedModel(resnet20(width=8), GateConfig(gate_group=4, coherence_weight=weight)).train()
        gated(x)
        maps = [layer.last_soft_map for layer in gated.gated_layers().values()]
        assert all(m is not None and m.shape[1] == layer.num_groups
                   for m, layer in zip(maps, gated.gated_layers().values()))  # fmt: skip
        coherence = torch.stack([total_variation(m) for m in maps]).mean()
        assert torch.allclose(gated.coherence_loss(), coherence)
        losses[weight] = (gated.gating_loss(), coherence)
    with_loss, coherence = losses[2.5]
    assert torch.allclose(with_loss, losses[0.0][0] + 2.5 * coherence)
    with_loss.backward()
    assert gated.model.layer1[0].conv1.threshold.grad.abs().sum() > 0
    gated.eval()
    with torch.no_grad():
        gated(x)
    assert gated.coherence_loss().item() == 0.0  # no soft maps at inference


@pytest.mark.parametrize("bad", [-1.0, float("inf"), True, "1"])
def test_bad_coherence_weight_is_refused(bad):
    with pytest.raises(ValueError, match="GateConfig.coherence_weight"):
        GateConfig(coherence_weight=bad)
