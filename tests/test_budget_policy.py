"""The budget policy of runtime gates: its controller, reward, per-input costs and training loop."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gating import GateConfig, GatedModel
from gating.models import resnet20
from gating.rl import BudgetController, BudgetPolicy, PolicyTrainConfig, budget_reward, train_policy


def _model(width=16):
    torch.manual_seed(0)
    return GatedModel(resnet20(width=width), GateConfig(kind="runtime", channel_group=4)).eval()


def _policy(model):
    return BudgetPolicy([layer.in_channels for layer in model.gated_layers().values()], hidden=8)


def test_budget_reward_by_hand():
    loss = torch.tensor([1.0, 1.0, 2.0])
    cost = torch.tensor([0.50, 0.56, 0.40])
    budget = torch.tensor([0.50, 0.50, 0.50])
    reward = budget_reward(loss, cost, budget, loss_scale=2.0)
    expected = torch.tensor([-0.5, -0.5 - 1.2 * (torch.exp(torch.tensor(2.0)) - 1), -1.0 - 1.0 * 0.1])
    torch.testing.assert_close(reward, expected)


def test_per_sample_cost_averages_to_the_batch_ratio_and_follows_each_input():
    model = _model()
    model.set_keep_ratio(torch.tensor([0.25, 1.0]))
    x = torch.randn(2, 3, 16, 16)
    model(x)
    per_sample = model.per_sample_macs_ratio()
    assert per_sample.shape == (2,) and per_sample[0] < per_sample[1]
    assert per_sample.mean().item() == pytest.approx(model.executed_macs_ratio(), rel=1e-12)


def test_controller_sets_one_keep_ratio_per_input_and_layer():
    model = _model()
    policy = _policy(model)
    controller = BudgetController(model, policy)
    controller.budget = torch.tensor([0.3, 0.9])
    with torch.no_grad():
        model(torch.randn(2, 3, 16, 16))
    layers = list(model.gated_layers().values())
    assert len(controller.transitions) == len(layers)
    # The untrained mean is the budget itself: keep ratio = budget, per input.
    assert torch.allclose(layers[3].keep_ratio, torch.tensor([0.3, 0.9], dtype=torch.float64), atol=1e-6)
    reached = []
    for budget in (0.3, 0.5, 0.7, 0.9):
        controller.budget = budget
        with torch.no_grad():
            model(torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1)))
        reached.append(model.executed_macs_ratio())
    assert reached == sorted(reached)  # executed MACs are monotone in the budget
    controller.remove()


def test_controller_refuses_a_policy_for_another_model():
    with pytest.raises(ValueError, match="input channels"):
        BudgetController(_model(), _policy(_model(width=8)))


def test_train_policy_runs_ppo_updates_and_leaves_a_deterministic_controller():
    model = _model()
    gen = torch.Generator().manual_seed(0)
    data = [(torch.randn(16, 3, 16, 16, generator=gen), torch.randint(0, 10, (16,), generator=gen)) for _ in range(2)]
    before = {k: v.clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    policy, controller = train_policy(model, data, PolicyTrainConfig(updates=3, hidden=8, progress=False))
    assert not controller.sample
    after = model.state_dict()
    assert all(torch.equal(value, after[key]) for key, value in before.items())  # the network is not trained here
    fresh = _policy(model)
    assert any(not torch.equal(a, b) for a, b in zip(policy.state_dict().values(), fresh.state_dict().values()))
    with pytest.raises(ValueError, match="kind='runtime'"):
        train_policy(GatedModel(resnet20(), GateConfig()), data, PolicyTrainConfig(updates=1, progress=False))
    with pytest.raises(ValueError, match="budget_low"):
        PolicyTrainConfig(budget_low=0.0)


def test_controller_notices_gates_run_out_of_order():
    class Swapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3, padding=1)
            self.b = nn.Conv2d(3, 8, 3, padding=1)

        def forward(self, x):
            return self.b(x) + self.a(x)

    model = GatedModel(Swapped(), GateConfig(kind="runtime", skip_stem=False)).eval()
    controller = BudgetController(model, _policy(model))
    with pytest.raises(RuntimeError, match="registration order"):
        model(torch.randn(1, 3, 8, 8))
    controller.remove()


def test_calibrate_maps_budgets_so_executed_macs_meet_them():
    torch.manual_seed(0)
    model = GatedModel(resnet20(width=16), GateConfig(kind="runtime", channel_group=1)).eval()  # fine steps
    policy = _policy(model)
    with torch.no_grad():  # a policy that overspends: keep ratio = budget + 0.3
        policy.mean_head.bias.fill_(0.3)
    controller = BudgetController(model, policy)
    inputs = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    controller.budget = 0.5
    with torch.no_grad():
        model(inputs)
    assert model.executed_macs_ratio() > 0.55  # uncalibrated: well over budget
    controller.calibrate(inputs, points=5, low=0.2, steps=10)
    asked, given = controller.budget_map
    assert torch.equal(asked, torch.linspace(0.2, 1.0, 5, dtype=torch.float64))
    assert bool((given[1:] >= given[:-1]).all())  # monotone
    for budget in (0.4, 0.5, 0.7, 0.8):  # grid points and in-between budgets (interpolated)
        controller.budget = budget
        with torch.no_grad():
            model(inputs)
        assert budget - 0.05 <= model.executed_macs_ratio() <= budget + 0.01
    # The map reproduces a grid point exactly.
    torch.testing.assert_close(controller.policy_budget(asked[2:3]), given[2:3])
    controller.remove()


def test_calibrate_refuses_bad_arguments():
    model = _model()
    controller = BudgetController(model, _policy(model))
    with pytest.raises(ValueError, match="points >= 2"):
        controller.calibrate(torch.randn(2, 3, 16, 16), points=1)
    controller.remove()
