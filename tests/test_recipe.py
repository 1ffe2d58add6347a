"""The gate-training recipe: budget ramp, feature distillation, BatchNorm re-estimation, their config checks."""

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from gating import GateConfig, GatedModel
from gating.distill import (
    TrainConfig,
    Trainer,
    budget_target,
    feature_kd_loss,
    recalibrate_batchnorm,
)
from gating.models import resnet20


pytestmark = pytest.mark.usefixtures("single_thread")


def _config(**overrides):
    base = dict(epochs=2, lr=0.05, seed=3, device="cpu", progress=False)
    base.update(overrides)
    return TrainConfig(**base)


def _image_loaders(n=32, size=8, batch=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, size, size, generator=generator)
    labels = torch.randint(0, 10, (n,), generator=generator)
    dataset = TensorDataset(images, labels)
    return DataLoader(dataset, batch_size=batch), DataLoader(dataset, batch_size=batch)


# ------------------------------------------------------------- budget schedule


@pytest.mark.parametrize(
    ("step", "expected"),
    [(0, 1.0), (1, 0.95), (5, 0.75), (9, 0.55), (10, 0.5), (11, 0.5), (1000, 0.5)],
)
def test_budget_target_ramps_linearly_then_holds(step, expected):
    assert budget_target(step, ramp_steps=10, start=1.0, goal=0.5) == pytest.approx(expected, abs=1e-12)


def test_budget_target_without_ramp_is_the_goal():
    assert budget_target(0, ramp_steps=0, start=1.0, goal=0.4) == 0.4


class _BudgetSpy(nn.Module):
    """A student with a budget goal that records the target it sees at every training forward."""

    budget_goal = 0.5

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3 * 8 * 8, 10)
        self.budget_target = None
        self.seen = []

    def forward(self, x):
        if self.training:
            self.seen.append(self.budget_target)
        return self.linear(x.flatten(1))


def test_trainer_sets_the_ramped_target_before_every_step():
    train, test = _image_loaders()  # 4 steps per epoch
    student = _BudgetSpy()
    Trainer(student, train, test, _config(budget_ramp_epochs=1, budget_ramp_start=0.9)).fit()
    expected = [0.9, 0.8, 0.7, 0.6, 0.5, 0.5, 0.5, 0.5]
    assert student.seen == pytest.approx(expected, abs=1e-12)


def test_gated_model_budget_loss_aims_at_the_current_target():
    gated = GatedModel(resnet20(width=4), GateConfig(target_flops_ratio=0.5, gate_group=4))
    gated.train()
    gated(torch.randn(4, 3, 8, 8))
    ratio = gated.soft_macs_ratio().item()
    assert gated.budget_goal == 0.5 and gated.budget_target == 0.5
    gated.budget_target = 0.8
    assert gated.budget_loss().item() == pytest.approx((ratio - 0.8) ** 2, rel=1e-5)


def test_ramp_needs_a_student_with_a_goal():
    train, test = _image_loaders()
    with pytest.raises(ValueError, match="budget_ramp_epochs > 0 needs a student with a MAC budget goal"):
        Trainer(nn.Sequential(nn.Flatten(), nn.Linear(192, 10)), train, test, _config(budget_ramp_epochs=1))


# -------------------------------------------------------- feature distillation


def test_feature_kd_loss_hand_value_on_a_tiny_network():
    # Teacher and student: one Linear layer 2 -> 2 each, one input x = [1, 2].
    teacher, student = nn.Linear(2, 2), nn.Linear(2, 2)
    with torch.no_grad():
        teacher.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))  # t = [1, 2]
        teacher.bias.zero_()
        student.weight.copy_(torch.tensor([[1.0, 1.0], [0.0, 0.5]]))  # s = [3, 1]
        student.bias.zero_()
    x = torch.tensor([[1.0, 2.0]])
    # mean((s - t)^2) = (4 + 1) / 2 = 2.5; mean(t^2) = (1 + 4) / 2 = 2.5 -> 1.0 (up to the 1e-8 guard)
    one = feature_kd_loss([student(x)], [teacher(x)])
    assert float(one) == pytest.approx(2.5 / (2.5 + 1e-8), rel=1e-7)
    # Two layers average: the second pair s = t gives 0 -> mean 0.5.
    two = feature_kd_loss([student(x), teacher(x)], [teacher(x), teacher(x)])
    assert float(two) == pytest.approx(0.5, rel=1e-7)
    # The teacher side carries no gradient; the student side does.
    s, t = student(x), teacher(x)
    feature_kd_loss([s], [t]).backward()
    assert student.weight.grad is not None and teacher.weight.grad is None


def test_feature_kd_loss_rejects_mismatched_features():
    with pytest.raises(ValueError, match="equally many"):
        feature_kd_loss([torch.ones(2)], [])
    with pytest.raises(ValueError, match=r"feature 0 has shape \(2,\) in the student and \(3,\)"):
        feature_kd_loss([torch.ones(2)], [torch.ones(3)])


def test_trainer_feature_kd_pulls_the_named_block_towards_the_teacher():
    torch.manual_seed(0)
    teacher = resnet20(width=4).eval()
    train, test = _image_loaders(n=64)
    inputs = next(iter(train))[0]

    def block_error(student):
        grab = {}
        handles = [m.get_submodule("layer1").register_forward_hook(lambda _m, _a, out, k=k: grab.__setitem__(k, out))
                   for k, m in (("s", student), ("t", teacher))]
        student.eval()
        with torch.no_grad():
            student(inputs), teacher(inputs)
        for handle in handles:
            handle.remove()
        return float(feature_kd_loss([grab["s"]], [grab["t"]]))

    results = {}
    for weight in (0.0, 5.0):
        torch.manual_seed(1)
        student = resnet20(width=4)  # a fresh, different network
        config = _config(epochs=3, kd_alpha=0.5, feature_kd_weight=weight,
                         feature_kd_layers=("layer1",) if weight else ())
        Trainer(student, train, test, config, teacher=copy.deepcopy(teacher)).fit()
        results[weight] = block_error(student)
    assert results[5.0] < 0.5 * results[0.0]


def test_feature_kd_resolves_names_inside_a_gated_model():
    teacher = resnet20(width=4)
    student = GatedModel(teacher, GateConfig(gate_group=4, target_flops_ratio=0.6))
    train, test = _image_loaders()
    trainer = Trainer(student, train, test, _config(epochs=1, feature_kd_weight=1.0,
                                                    feature_kd_layers=("layer1.0", "layer3")), teacher=teacher)
    trainer.fit()
    assert trainer.history[-1]["epoch"] == 1


def test_feature_kd_bad_layer_and_missing_teacher():
    train, test = _image_loaders()
    config = _config(feature_kd_weight=1.0, feature_kd_layers=("layer9",))
    with pytest.raises(ValueError, match="feature_kd_layers names 'layer9', which the teacher does not have"):
        Trainer(resnet20(width=4), train, test, config, teacher=resnet20(width=4))
    with pytest.raises(ValueError, match="feature_kd_weight > 0 needs a teacher"):
        Trainer(resnet20(width=4), train, test, _config(feature_kd_weight=1.0, feature_kd_layers=("layer1",)))


# ---------------------------------------------------- BatchNorm re-estimation


def _net():
    torch.manual_seed(5)
    return nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 2))


def _shifted_problem(n=256):
    """Two classes told apart by the sign of channel 0's mean; inputs live far from zero (offset 6)."""
    generator = torch.Generator().manual_seed(11)
    labels = torch.randint(0, 2, (n,), generator=generator)
    images = torch.randn(n, 3, 4, 4, generator=generator) + 6.0
    images[:, 0] += (2.0 * labels - 1.0)[:, None, None]
    return images, labels


def _accuracy(model, images, labels):
    model.eval()
    with torch.no_grad():
        return float((model(images).argmax(1) == labels).float().mean())


def test_recalibration_changes_only_batchnorm_statistics_and_restores_accuracy():
    images, labels = _shifted_problem()
    model = _net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(60):  # trained with batch statistics ...
        model.train()
        loss = nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model[1].reset_running_stats()  # ... but its running statistics describe zero-mean data
    before_accuracy = _accuracy(model, images, labels)
    parameters = {k: v.clone() for k, v in model.named_parameters()}
    running = {k: v.clone() for k, v in model.named_buffers()}

    seen = recalibrate_batchnorm(model, images.split(64))

    assert seen == len(images)
    for name, value in model.named_parameters():
        assert torch.equal(value, parameters[name]), name
    for name, value in model.named_buffers():
        assert not torch.equal(value, running[name]), name  # mean, var, num_batches_tracked all re-estimated
    expected_mean = torch.stack([model[0](b).mean(dim=(0, 2, 3)) for b in images.split(64)]).mean(0)
    assert torch.allclose(model[1].running_mean, expected_mean.detach(), atol=1e-5)
    after_accuracy = _accuracy(model, images, labels)
    assert before_accuracy < 0.75 and after_accuracy > 0.95
    assert model[1].momentum == 0.1 and not model.training


def test_recalibration_keeps_the_listed_batchnorms_and_rejects_no_batches():
    model = _net()
    model[1].running_mean.fill_(3.0)
    recalibrate_batchnorm(model, [torch.randn(4, 3, 4, 4)], keep=[model[1]])
    assert torch.equal(model[1].running_mean, torch.full((8,), 3.0))
    with pytest.raises(ValueError, match="no batches"):
        recalibrate_batchnorm(model, [])
    assert torch.equal(model[1].running_mean, torch.full((8,), 3.0))


def test_trainer_recalibrates_a_gated_student_but_not_its_gate_statistics():
    student = GatedModel(resnet20(width=4), GateConfig(gate_group=4, target_flops_ratio=0.6))
    train, test = _image_loaders()
    trainer = Trainer(student, train, test, _config(epochs=1, bn_recalibration_batches=2))
    trainer.fit(stop_after_steps=4)  # the whole epoch, but stopped before its end-of-epoch work
    buffers = {k: v.clone() for k, v in student.named_buffers()}
    parameters = {k: v.clone() for k, v in student.named_parameters()}
    assert trainer.recalibrate_batchnorm() == 16
    gate_bn = {f"model.{name}.gate_bn." for name in student.gated_names}
    for name, value in student.named_buffers():
        if any(name.startswith(prefix) for prefix in gate_bn):
            assert torch.equal(value, buffers[name]), name
        elif name.endswith("running_mean"):
            assert not torch.equal(value, buffers[name]), name
    for name, value in student.named_parameters():
        assert torch.equal(value, parameters[name]), name


# --------------------------------------------------------------- config checks


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(feature_kd_weight=-0.5, feature_kd_layers=("a",)), "feature_kd_weight must be a finite number >= 0"),
        (dict(feature_kd_weight=1.0), "feature_kd_layers must be non-empty when feature_kd_weight > 0"),
        (dict(feature_kd_layers=("",)), "feature_kd_layers must be a tuple of module names"),
        (dict(budget_ramp_epochs=2.5), r"budget_ramp_epochs must be a number in \[0, epochs=2\]"),
        (dict(budget_ramp_epochs=-1), "budget_ramp_epochs must be a number"),
        (dict(budget_ramp_start=0.0), r"budget_ramp_start must be in \(0, 1\]"),
        (dict(budget_ramp_start=1.5), r"budget_ramp_start must be in \(0, 1\]"),
        (dict(bn_recalibration_batches=-2), "bn_recalibration_batches must be an int >= 0"),
        (dict(bn_recalibration_batches=1.5), "bn_recalibration_batches must be an int >= 0"),
        (dict(budget_fit_batches=-1), "budget_fit_batches must be an int >= 0"),
    ],
)
def test_recipe_settings_out_of_range_are_rejected_when_the_config_is_built(overrides, message):
    with pytest.raises(ValueError, match=f"TrainConfig.{message}"):
        _config(**overrides)


# ---------------------------------------------------------------- budget fit


def _calibrated_student(start=0.8, goal=0.5):
    torch.manual_seed(2)
    student = GatedModel(resnet20(width=8), GateConfig(gate_group=4, target_flops_ratio=goal))
    inputs = torch.randn(64, 3, 16, 16)
    student.calibrate(inputs, start)
    return student, inputs


def _eval_ratio(student, batches):
    student.eval()
    dense = executed = 0
    with torch.no_grad():
        for batch in batches:
            student(batch)
            report = student.report()
            dense, executed = dense + report.macs_dense, executed + report.macs_executed
    return executed / dense


@pytest.mark.parametrize(("start", "goal"), [(0.8, 0.5), (0.4, 0.6)])
def test_fit_budget_meets_the_goal_from_above_and_below_moving_only_thresholds(start, goal):
    student, inputs = _calibrated_student(start, goal)
    batches = list(inputs.split(32))
    before = _eval_ratio(student, batches)
    assert abs(before - goal) > 0.05
    state = {k: v.clone() for k, v in student.state_dict().items() if isinstance(v, torch.Tensor)}
    thresholds = {n: l.threshold.clone() for n, l in student.gated_layers().items()}
    student.train()
    offset = student.fit_budget(batches, tolerance=2e-3)
    assert student.training  # mode restored
    assert goal - 2e-3 <= _eval_ratio(student, batches) <= goal
    assert (offset > 0) == (before > goal)
    for name, layer in student.gated_layers().items():
        assert torch.allclose(layer.threshold, thresholds[name] + offset)  # one common offset
    for key, value in student.state_dict().items():
        if isinstance(value, torch.Tensor) and not key.endswith(".threshold"):
            assert torch.equal(value, state[key]), key


def test_fit_budget_bad_arguments():
    student, inputs = _calibrated_student()
    with pytest.raises(ValueError, match="no batches"):
        student.fit_budget([])
    with pytest.raises(ValueError, match=r"target_flops_ratio must be in \(0, 1\]"):
        student.fit_budget([inputs], 1.5)
    with pytest.raises(ValueError, match=r"target_flops_ratio must be in \(0, 1\], got None"):
        GatedModel(resnet20(width=4), GateConfig(gate_group=4)).fit_budget([inputs])


def test_trainer_meets_the_budget_after_the_last_epoch():
    student, _ = _calibrated_student(0.9, 0.55)
    train, test = _image_loaders(n=32, size=16)
    trainer = Trainer(student, train, test, _config(epochs=1, budget_fit_batches=2, bn_recalibration_batches=2))
    trainer.fit()
    fit_inputs = [inputs for inputs, _ in list(train)[:2]]  # what the trainer fitted on (plain loader order)
    ratio = _eval_ratio(student, fit_inputs)
    # BatchNorm re-estimation after the fit moves the inputs of later layers a little.
    assert ratio == pytest.approx(0.55, abs=0.03)
    with pytest.raises(ValueError, match="budget_fit_batches > 0 needs a student with fit_budget"):
        Trainer(nn.Sequential(nn.Flatten(), nn.Linear(768, 10)), train, test, _config(budget_fit_batches=1))


def test_last_history_record_holds_the_fitted_offset():
    student, _ = _calibrated_student(0.9, 0.55)
    train, test = _image_loaders(n=16, size=16)
    history = Trainer(student, train, test, _config(epochs=1, budget_fit_batches=1)).fit()
    assert history[-1]["budget_fit_offset"] > 0  # calibrated above the goal: thresholds rise
