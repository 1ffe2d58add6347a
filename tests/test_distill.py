"""Tests of gating.distill: KD loss, config, trainer protocol, schedule, resume, divergence."""

import logging
import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler, TensorDataset

from gating import distill, io
from gating.distill import TrainConfig, Trainer, TrainingDivergedError, kd_loss
from gating.io import CheckpointError

N_CLASSES = 4
N_FEATURES = 8
BATCH = 32


pytestmark = pytest.mark.usefixtures("single_thread")


# ----------------------------------------------------------------- toy problem


class EpochOrderSampler(Sampler[int]):
    """Shuffles with an order that is a pure function of (seed, epoch)."""

    def __init__(self, n, seed):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=generator).tolist())

    def __len__(self):
        return self.n


def _centers():
    return 3.0 * torch.randn(N_CLASSES, N_FEATURES, generator=torch.Generator().manual_seed(7))


def _blobs(n, seed):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, N_CLASSES, (n,), generator=generator)
    inputs = _centers()[labels] + torch.randn(n, N_FEATURES, generator=generator)
    return TensorDataset(inputs, labels)


def _loaders(n_train=256, sampler="epoch", batch_size=BATCH):
    train = _blobs(n_train, seed=1)
    if sampler == "epoch":
        train_loader = DataLoader(train, batch_size=batch_size, sampler=EpochOrderSampler(n_train, seed=3))
    else:
        train_loader = DataLoader(train, batch_size=batch_size, shuffle=True)
    return train_loader, DataLoader(_blobs(128, seed=2), batch_size=BATCH)


class MLP(nn.Module):
    """Plain student: no gating protocol. Dropout makes the RNG stream matter."""

    def __init__(self, hidden=32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(N_FEATURES, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Dropout(0.2),
            nn.Linear(hidden, N_CLASSES),
        )

    def forward(self, x):
        return self.net(x)


class GatedToy(MLP):
    """Implements the student protocol: gating loss, no-decay thresholds, MACs ratio."""

    def __init__(self, hidden=32):
        super().__init__(hidden)
        self.threshold = nn.Parameter(torch.zeros(hidden))
        self.modes = []

    def forward(self, x):
        self.modes.append((self.training, torch.is_grad_enabled()))
        hidden = self.net[:3](x)
        self._open = torch.sigmoid(hidden - self.threshold).mean()
        return self.net[3:](hidden)

    def gating_loss(self):
        return 1e-2 * (self._open - 0.5) ** 2 + 1e-4 * (self.threshold - 1.0).pow(2).sum()

    def no_weight_decay_parameters(self):
        return [self.threshold]

    def executed_macs_ratio(self):
        return float(self._open)


def _nearest_center_teacher():
    """Linear discriminant of the blobs: an accurate, fixed teacher."""
    centers = _centers()
    teacher = nn.Linear(N_FEATURES, N_CLASSES)
    with torch.no_grad():
        teacher.weight.copy_(2 * centers)
        teacher.bias.copy_(-(centers**2).sum(dim=1))
    return teacher


def _config(**overrides):
    base = dict(epochs=3, lr=0.05, seed=11, device="cpu", progress=False)
    base.update(overrides)
    return TrainConfig(**base)


def _state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def _assert_same_state(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ---------------------------------------------------------------------- kd_loss


def _softmax(row, temperature=1.0):
    top = max(row)
    exps = [math.exp((v - top) / temperature) for v in row]
    return [e / sum(exps) for e in exps]


STUDENT = [[1.0, -0.5, 2.0], [0.3, 0.1, -1.2]]
TEACHER = [[2.5, 0.0, 1.0], [-0.4, 1.5, 0.2]]
TARGETS = [2, 1]


def _hand_ce():
    return -sum(math.log(_softmax(s)[t]) for s, t in zip(STUDENT, TARGETS)) / len(STUDENT)


def _hand_kl(temperature):
    """KL(p_teacher || p_student) at ``temperature``, averaged over the batch."""
    total = 0.0
    for s, t in zip(STUDENT, TEACHER):
        p_s, p_t = _softmax(s, temperature), _softmax(t, temperature)
        total += sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(p_t, p_s))
    return total / len(STUDENT)


def _kd(alpha, temperature, teacher=TEACHER):
    teacher = None if teacher is None else torch.tensor(teacher)
    return kd_loss(torch.tensor(STUDENT), teacher, torch.tensor(TARGETS), alpha, temperature).item()


@pytest.mark.parametrize("alpha, temperature", [(0.5, 4.0), (0.3, 1.0), (0.8, 2.5)])
def test_kd_loss_matches_hand_computation(alpha, temperature):
    expected = alpha * _hand_ce() + (1 - alpha) * temperature**2 * _hand_kl(temperature)
    assert _kd(alpha, temperature) == pytest.approx(expected, rel=1e-5)


def test_kd_loss_soft_term_carries_temperature_squared():
    assert _kd(0.0, 3.0) == pytest.approx(9.0 * _hand_kl(3.0), rel=1e-5)
    assert _kd(0.0, 3.0) != pytest.approx(_hand_kl(3.0), rel=1e-2)


def test_kd_loss_alpha_one_is_cross_entropy():
    assert _kd(1.0, 4.0) == pytest.approx(_hand_ce(), rel=1e-6)


def test_kd_loss_without_teacher_is_cross_entropy():
    assert _kd(0.2, 4.0, teacher=None) == pytest.approx(_hand_ce(), rel=1e-6)


@pytest.mark.parametrize("alpha, temperature", [(-0.1, 4.0), (1.5, 4.0), (0.5, 0.0)])
def test_kd_loss_rejects_bad_parameters(alpha, temperature):
    with pytest.raises(ValueError):
        kd_loss(torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(TARGETS), alpha, temperature)


# ----------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "field, value",
    [
        ("epochs", 0),
        ("epochs", 2.0),
        ("lr", 0.0),
        ("lr", float("nan")),
        ("momentum", -0.1),
        ("weight_decay", -1e-4),
        ("kd_alpha", 1.2),
        ("kd_temperature", 0.0),
        ("warmup_epochs", 3),
        ("eval_every", 0),
        ("checkpoint_every", -1),
        ("seed", "0"),
        ("device", "quantum"),
        ("amp", "yes"),
        ("max_grad_norm", 0.0),
        ("channels_last", 1),
    ],
)
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"TrainConfig.{field} "):
        TrainConfig(**{"epochs": 3, field: value})


def test_config_nesterov_needs_momentum():
    with pytest.raises(ValueError, match="TrainConfig.momentum must be > 0 when nesterov"):
        TrainConfig(epochs=1, momentum=0.0)
    TrainConfig(epochs=1, momentum=0.0, nesterov=False)


def test_amp_on_cpu_is_refused():
    train_loader, test_loader = _loaders()
    with pytest.raises(ValueError, match="amp=True needs a CUDA device"):
        Trainer(MLP(), train_loader, test_loader, _config(amp=True))


def test_channels_last_trains_the_same_model_in_that_memory_format():
    """Same data, seed and steps: weights agree with the default format's to float32 rounding, and stay channels_last."""
    gen = torch.Generator().manual_seed(0)
    images = TensorDataset(torch.randn(64, 3, 8, 8, generator=gen), torch.randint(0, 3, (64,), generator=gen))
    train_loader = DataLoader(images, batch_size=16, sampler=EpochOrderSampler(64, seed=3))

    def conv_net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten(), nn.Linear(8, 3))  # fmt: skip

    trained = {}
    for channels_last in (False, True):
        trainer = Trainer(conv_net(), train_loader, train_loader, _config(epochs=2, eval_every=None,
                                                                          channels_last=channels_last))  # fmt: skip
        trainer.fit()
        trained[channels_last] = trainer.student
    weight = trained[True][0].weight
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    for (name, a), b in zip(trained[False].state_dict().items(), trained[True].state_dict().values()):
        assert torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-5), name


# ------------------------------------------------------------ student protocol


def test_distillation_learns_the_toy_problem_and_keeps_teacher_frozen():
    torch.manual_seed(0)
    train_loader, test_loader = _loaders()
    teacher = _nearest_center_teacher().train()
    teacher_before = _state(teacher)
    trainer = Trainer(MLP(), train_loader, test_loader, _config(epochs=4), teacher=teacher)
    initial = trainer.evaluate()
    history = trainer.fit()
    assert [record["epoch"] for record in history] == [1, 2, 3, 4]
    assert history[-1]["accuracy"] >= 95.0
    assert history[-1]["loss"] < 0.5 * initial["loss"]
    assert "macs_ratio" not in history[-1]
    assert not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    _assert_same_state(teacher_before, teacher.state_dict())


def test_eval_every_none_trains_the_same_without_evaluating():
    train_loader, test_loader = _loaders()
    torch.manual_seed(0)
    evaluated = Trainer(MLP(), train_loader, test_loader, _config(eval_every=3))  # only after the last epoch
    last = evaluated.fit()[-1]
    assert "accuracy" in last
    torch.manual_seed(0)
    silent = Trainer(MLP(), train_loader, test_loader, _config(eval_every=None))
    silent.evaluate = lambda *args: pytest.fail("evaluate() ran with eval_every=None")
    history = silent.fit()
    train = {"train_loss": last["train_loss"], "train_accuracy": last["train_accuracy"]}
    assert history == [{"epoch": 3, "global_step": 3 * len(train_loader), "lr": 0.0, **train}]
    _assert_same_state(evaluated.student.state_dict(), silent.student.state_dict())


def test_cached_teacher_logits_train_as_the_online_teacher_without_running_it():
    """A loader of ``with_teacher_logits`` examples gives the same training as running the teacher each step."""
    train_loader, test_loader = _loaders()
    teacher = _nearest_center_teacher()
    torch.manual_seed(0)
    online = Trainer(MLP(), train_loader, test_loader, _config(kd_alpha=0.5), teacher=teacher)
    online.fit()
    cached_set = distill.with_teacher_logits(train_loader.dataset, teacher, batch_size=100)
    inputs, targets = train_loader.dataset.tensors
    assert torch.equal(cached_set.tensors[0], inputs) and torch.equal(cached_set.tensors[1], targets)
    with torch.no_grad():
        torch.testing.assert_close(cached_set.tensors[2], teacher(inputs))
    calls = []
    teacher.register_forward_hook(lambda *args: calls.append(1))
    cached_loader = DataLoader(cached_set, batch_size=BATCH, sampler=EpochOrderSampler(len(cached_set), seed=3))
    torch.manual_seed(0)
    cached = Trainer(MLP(), cached_loader, test_loader, _config(kd_alpha=0.5), teacher=teacher)
    cached.fit()
    assert calls == [], "the teacher ran although the loader gave its logits"
    torch.manual_seed(0)
    without_teacher = Trainer(MLP(), cached_loader, test_loader, _config(kd_alpha=0.5))
    without_teacher.fit()
    for key, value in online.student.state_dict().items():
        torch.testing.assert_close(cached.student.state_dict()[key], value, rtol=1e-5, atol=1e-6)
        assert torch.equal(without_teacher.student.state_dict()[key], cached.student.state_dict()[key])


def test_with_teacher_logits_bad_input():
    teacher = _nearest_center_teacher()
    with pytest.raises(ValueError, match="empty"):
        distill.with_teacher_logits(TensorDataset(torch.zeros(0, N_FEATURES), torch.zeros(0)), teacher)
    with pytest.raises(ValueError, match="batch_size"):
        distill.with_teacher_logits(_blobs(4, seed=0), teacher, batch_size=0)


def test_nearest_center_teacher_is_accurate():
    train_loader, test_loader = _loaders()
    trainer = Trainer(_nearest_center_teacher(), train_loader, test_loader, _config())
    assert trainer.evaluate()["accuracy"] >= 95.0


class ConstantGate(nn.Module):
    """Logits do not depend on ``g``; ``gating_loss`` gives ``g`` the gradient ``coeff``."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(N_FEATURES, N_CLASSES)
        self.g = nn.Parameter(torch.tensor([0.5, -1.0, 2.0]))
        self.coeff = torch.tensor([1.0, 2.0, 3.0])

    def forward(self, x):
        return self.fc(x)

    def gating_loss(self):
        return (self.coeff * self.g).sum()

    def no_weight_decay_parameters(self):
        return [self.g]


def test_gating_loss_is_added_to_every_step():
    train_loader, test_loader = _loaders(n_train=BATCH)
    student = ConstantGate()
    g0 = student.g.detach().clone()
    config = _config(epochs=1, lr=0.1, momentum=0.0, nesterov=False, weight_decay=0.5)
    Trainer(student, train_loader, test_loader, config).fit()
    # One SGD step at lr 0.1 (cosine factor 1 at step 0), no weight decay on g.
    assert torch.allclose(student.g.detach(), g0 - 0.1 * student.coeff, rtol=0, atol=1e-7)


def test_no_weight_decay_parameters_get_their_own_group():
    train_loader, test_loader = _loaders()
    student = GatedToy()
    trainer = Trainer(student, train_loader, test_loader, _config(weight_decay=1e-3))
    groups = trainer.optimizer.param_groups
    assert len(groups) == 2
    decayed, undecayed = groups
    assert decayed["weight_decay"] == 1e-3 and undecayed["weight_decay"] == 0.0
    assert undecayed["params"] == [student.threshold]
    others = {id(p) for p in student.parameters()} - {id(student.threshold)}
    assert {id(p) for p in decayed["params"]} == others


def test_plain_student_has_one_decayed_group():
    train_loader, test_loader = _loaders()
    trainer = Trainer(MLP(), train_loader, test_loader, _config(weight_decay=1e-3))
    assert [group["weight_decay"] for group in trainer.optimizer.param_groups] == [1e-3]


def test_modes_during_training_and_evaluation():
    train_loader, test_loader = _loaders()
    student = GatedToy()
    student.eval()
    trainer = Trainer(student, train_loader, test_loader, _config(epochs=1))
    trainer.fit()
    assert (True, True) in student.modes and (False, False) in student.modes
    assert set(student.modes) == {(True, True), (False, False)}
    assert not student.training
    student.train()
    trainer.evaluate()
    assert student.training


class FixedRatio(nn.Module):
    """MACs ratio 0.25 for batches of 3 and 1.0 for a batch of 1."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(N_FEATURES, N_CLASSES)

    def forward(self, x):
        self._ratio = 0.25 if len(x) == 3 else 1.0
        return self.fc(x)

    def executed_macs_ratio(self):
        return self._ratio


def test_evaluate_reports_percent_accuracy_and_weighted_macs_ratio():
    student = FixedRatio()
    with torch.no_grad():
        student.fc.weight.zero_()
        student.fc.bias.copy_(torch.tensor([0.0, 1.0, 0.0, 0.0]))
    inputs = torch.randn(4, N_FEATURES)
    loader = DataLoader(TensorDataset(inputs, torch.tensor([1, 1, 0, 1])), batch_size=3)
    trainer = Trainer(student, loader, loader, _config())
    metrics = trainer.evaluate()
    assert metrics["accuracy"] == pytest.approx(75.0)
    assert metrics["macs_ratio"] == pytest.approx((3 * 0.25 + 1 * 1.0) / 4)


# --------------------------------------------------------------------- schedule


def _scheduled_lrs(**config):
    """LR of every update of a 3-epoch x 4-batch run, and the LR after the last one."""
    train_loader, test_loader = _loaders(n_train=4 * BATCH)
    trainer = Trainer(MLP(), train_loader, test_loader, _config(lr=0.2, **config))
    lrs = [trainer.optimizer.param_groups[0]["lr"]]
    for _ in range(3 * 4):
        trainer.optimizer.step()
        trainer.scheduler.step()
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
    return lrs


def test_cosine_schedule_per_step():
    total = 3 * 4
    expected = [0.2 * 0.5 * (1 + math.cos(math.pi * step / total)) for step in range(total + 1)]
    assert _scheduled_lrs() == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_warmup_then_cosine():
    lrs = _scheduled_lrs(warmup_epochs=1)
    expected = {0: 1 / 4, 1: 2 / 4, 3: 4 / 4, 4: 1.0, 8: 0.5, 12: 0.0}
    assert {step: lrs[step] for step in expected} == pytest.approx(
        {step: 0.2 * factor for step, factor in expected.items()}, rel=1e-12, abs=1e-15
    )


def test_schedule_is_stepped_once_per_batch_by_fit():
    train_loader, test_loader = _loaders(n_train=4 * BATCH)
    trainer = Trainer(MLP(), train_loader, test_loader, _config(lr=0.2))
    trainer.fit(stop_after_steps=6)
    assert trainer.scheduler.last_epoch == 6
    expected = 0.2 * 0.5 * (1 + math.cos(math.pi * 6 / 12))
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(expected)


# ----------------------------------------------------------------------- resume


def _run(tmp_path, name, student_cls=GatedToy, sampler="epoch", stop=None, resume=False, **config):
    torch.manual_seed(1234)  # same initial weights for every run
    student = student_cls()
    train_loader, test_loader = _loaders(sampler=sampler)
    trainer = Trainer(
        student,
        train_loader,
        test_loader,
        _config(checkpoint_every=4, **config),
        checkpoint_path=tmp_path / f"{name}.pt",
    )
    history = trainer.fit(resume=resume, stop_after_steps=stop)
    return student, history


@pytest.mark.parametrize("sampler", ["epoch", "shuffle"])
@pytest.mark.parametrize("stop", [11, 16, 24], ids=["mid-epoch", "epoch-end", "last-step"])
def test_resume_is_bit_exact(tmp_path, sampler, stop):
    reference, reference_history = _run(tmp_path, "reference", sampler=sampler)
    _run(tmp_path, "run", sampler=sampler, stop=stop)
    resumed, history = _run(tmp_path, "run", sampler=sampler, resume=True)
    _assert_same_state(reference.state_dict(), resumed.state_dict())
    assert history == reference_history
    assert len(history) == 3


class RecordingSampler(EpochOrderSampler):
    def __init__(self, n, seed):
        super().__init__(n, seed)
        self.calls = []

    def set_epoch(self, epoch):
        self.calls.append(epoch)
        super().set_epoch(epoch)


def _recording_trainer(tmp_path):
    train = _blobs(256, seed=1)
    sampler = RecordingSampler(256, seed=3)
    train_loader = DataLoader(train, batch_size=BATCH, sampler=sampler)
    trainer = Trainer(GatedToy(), train_loader, _loaders()[1], _config(), checkpoint_path=tmp_path / "run.pt")
    return trainer, sampler


def test_sampler_set_epoch_is_called_before_every_epoch(tmp_path):
    trainer, sampler = _recording_trainer(tmp_path)
    trainer.fit(stop_after_steps=11)
    assert sampler.calls == [0, 1]
    trainer, sampler = _recording_trainer(tmp_path)
    trainer.fit(resume=True)
    assert sampler.calls == [1, 2]


class NaNAt(GatedToy):
    """``gating_loss`` turns NaN at training step ``nan_step``; records the checkpoint then."""

    nan_step = 5

    def __init__(self):
        super().__init__()
        self.calls = 0
        self.checkpoint_bytes = None
        self.checkpoint_file = None

    def gating_loss(self):
        step, self.calls = self.calls, self.calls + 1
        if step != self.nan_step:
            return super().gating_loss()
        self.checkpoint_bytes = self.checkpoint_file.read_bytes()
        return torch.tensor(float("nan"))


def test_nan_loss_stops_with_step_and_keeps_last_checkpoint(tmp_path):
    path = tmp_path / "ckpt.pt"
    train_loader, test_loader = _loaders()
    student = NaNAt()
    student.checkpoint_file = path
    trainer = Trainer(student, train_loader, test_loader, _config(checkpoint_every=1), checkpoint_path=path)
    with pytest.raises(TrainingDivergedError, match="nan at global step 5 ") as info:
        trainer.fit()
    assert info.value.step == 5
    assert path.read_bytes() == student.checkpoint_bytes
    checkpoint = io.load_checkpoint(path)
    assert checkpoint["extra"]["global_step"] == 5


def test_resume_after_divergence_matches_uninterrupted(tmp_path):
    reference, reference_history = _run(tmp_path, "reference")
    torch.manual_seed(1234)
    student = NaNAt()
    student.checkpoint_file = tmp_path / "run.pt"
    train_loader, test_loader = _loaders()
    config = _config(checkpoint_every=4)
    crashing = Trainer(student, train_loader, test_loader, config, checkpoint_path=tmp_path / "run.pt")
    with pytest.raises(TrainingDivergedError):
        crashing.fit()
    assert io.load_checkpoint(tmp_path / "run.pt")["extra"]["global_step"] == 4
    resumed, history = _run(tmp_path, "run", resume=True)
    _assert_same_state(reference.state_dict(), resumed.state_dict())
    assert history == reference_history


def test_resume_without_checkpoint_starts_from_scratch(tmp_path, caplog):
    reference, reference_history = _run(tmp_path, "reference")
    with caplog.at_level(logging.WARNING, logger=distill.__name__):
        resumed, history = _run(tmp_path, "missing", resume=True)
    assert "training from scratch" in caplog.text
    _assert_same_state(reference.state_dict(), resumed.state_dict())
    assert history == reference_history


def test_resume_needs_a_checkpoint_path():
    train_loader, test_loader = _loaders()
    with pytest.raises(ValueError, match="checkpoint_path"):
        Trainer(MLP(), train_loader, test_loader, _config()).fit(resume=True)


def test_resume_refuses_a_different_config(tmp_path):
    _run(tmp_path, "run", stop=5)
    with pytest.raises(CheckpointError, match=r"different config \(lr: 0.05 -> 0.07\)"):
        _run(tmp_path, "run", resume=True, lr=0.07)


def test_resume_refuses_a_different_student_without_touching_it(tmp_path):
    _run(tmp_path, "run", stop=5)
    student = GatedToy(hidden=16)
    before = _state(student)
    train_loader, test_loader = _loaders()
    trainer = Trainer(student, train_loader, test_loader, _config(), checkpoint_path=tmp_path / "run.pt")
    with pytest.raises(CheckpointError, match="student: state dict does not match"):
        trainer.fit(resume=True)
    _assert_same_state(before, student.state_dict())


def test_resume_refuses_a_different_loader_length(tmp_path):
    _run(tmp_path, "run", stop=5)
    train_loader, test_loader = _loaders(batch_size=16)
    trainer = Trainer(GatedToy(), train_loader, test_loader, _config(), checkpoint_path=tmp_path / "run.pt")
    with pytest.raises(CheckpointError, match="8 steps per epoch; this train loader has 16"):
        trainer.fit(resume=True)


def test_checkpoint_contents(tmp_path):
    _run(tmp_path, "run", stop=10)
    checkpoint = io.load_checkpoint(tmp_path / "run.pt")
    assert (checkpoint["epoch"], checkpoint["step"]) == (1, 2)
    assert checkpoint["extra"]["global_step"] == 10
    assert checkpoint["config"]["lr"] == 0.05
    assert [record["epoch"] for record in checkpoint["extra"]["history"]] == [1]
    assert checkpoint["optimizer_state"]["state"] and checkpoint["scheduler_state"]["last_epoch"] == 10


@pytest.mark.parametrize("stop", [0, -3, 2.5])
def test_stop_after_steps_must_be_a_positive_int(stop):
    train_loader, test_loader = _loaders()
    with pytest.raises(ValueError, match="stop_after_steps"):
        Trainer(MLP(), train_loader, test_loader, _config()).fit(stop_after_steps=stop)
