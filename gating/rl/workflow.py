"""``python -m gating train-rl``: a runtime-gated student with a budget policy, on the built-in data.

:func:`run_train_rl` trains a dense ResNet-20 teacher (as the demo does),
wraps a copy with runtime gates (``GateConfig(kind="runtime")``), then for
``rounds`` rounds trains the budget policy with PPO (:func:`train_policy`,
network frozen) and fine-tunes the network and its importances under the
policy by distillation from the teacher (``gating.distill.Trainer``, each
input's budget drawn from the training range). It measures, for every
budget of ``budgets``, test accuracy and executed-MAC ratio with the policy
and with the fixed schedule (``GatedModel.set_budget``: one keep ratio in
every layer), and writes ``OUT/results.json``. Checkpoints of the teacher,
and of the student and the policy after each round, let ``resume`` continue.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from .. import data, io
from ..config import GateConfig
from ..distill import Trainer, TrainConfig, teacher_recipe, train_teacher
from ..measurement import calibration_batch, measure
from ..model import GatedModel
from .policy import BudgetController, BudgetPolicy
from .train import PolicyTrainConfig, train_policy

__all__ = ["RLConfig", "run_train_rl", "table"]


@dataclass
class RLConfig:
    """Everything ``train-rl`` does, with its defaults; invalid values raise ``ValueError`` naming the field."""

    out: Path = Path("runs/train-rl")
    teacher_epochs: int = 5
    num_train: int = 6000
    num_test: int = 2000
    image_size: int = 24
    batch_size: int = 128
    width: int = 16
    seed: int = 0
    channel_group: int = 4
    rounds: int = 2
    policy_updates: int = 40
    finetune_epochs: int = 1
    student_lr: float = 0.02
    budget_low: float = 0.2
    budget_high: float = 1.0
    budgets: tuple[float, ...] = (0.3, 0.5, 0.7)
    calibration_images: int = 256
    progress: bool = True
    resume: bool = False
    policy_batch_size: int = 64
    hidden: int = 32

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.budgets = tuple(float(b) for b in self.budgets)
        for name in ("teacher_epochs", "num_train", "num_test", "batch_size", "width", "channel_group", "rounds",
                     "policy_updates", "finetune_epochs", "calibration_images", "policy_batch_size", "hidden"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"RLConfig.{name} must be an int >= 1, got {value!r}")
        if not self.budgets or not all(0 < b <= 1 for b in self.budgets):
            raise ValueError(f"RLConfig.budgets must be values in (0, 1], got {self.budgets!r}")
        if not self.student_lr > 0:
            raise ValueError(f"RLConfig.student_lr must be > 0, got {self.student_lr!r}")
        self.policy_config()  # checks the budget range

    def policy_config(self) -> PolicyTrainConfig:
        return PolicyTrainConfig(updates=self.policy_updates, budget_low=self.budget_low, budget_high=self.budget_high,
                                 hidden=self.hidden, seed=self.seed, progress=self.progress)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["out"], out["budgets"] = str(self.out), list(self.budgets)
        return out


def run_train_rl(config: RLConfig) -> dict[str, Any]:
    """Run the workflow of the module docstring; returns what it writes to ``results.json``."""
    started = time.perf_counter()
    config.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    train_loader, test_loader, classes = data.build_loaders(
        "synthetic", batch_size=config.batch_size, num_train=config.num_train, num_test=config.num_test,
        image_size=config.image_size, seed=config.seed,
    )
    print(f"[1/3] teacher: ResNet-20 (width {config.width}) on {config.num_train} built-in images", flush=True)
    teacher = io.build("resnet20", num_classes=classes, width=config.width)
    device = train_teacher(teacher, train_loader, test_loader,
                           teacher_recipe(config.teacher_epochs, seed=config.seed, progress=config.progress),
                           config.out / "teacher.ckpt", resume=config.resume)

    print(f"[2/3] student: runtime gates, {config.rounds} rounds of policy training and fine-tuning", flush=True)
    student = GatedModel(teacher, GateConfig(kind="runtime", channel_group=config.channel_group)).to(device)
    policy = BudgetPolicy([layer.in_channels for layer in student.gated_layers().values()], config.hidden).to(device)
    controller = BudgetController(student, policy)
    policy_loader = DataLoader(train_loader.dataset, batch_size=config.policy_batch_size,
                               sampler=data.EpochSampler(len(train_loader.dataset), config.seed))
    for round_index in range(config.rounds):
        policy_file = config.out / f"policy-round{round_index}.pt"
        student_file = config.out / f"student-round{round_index}.ckpt"
        if config.resume and policy_file.is_file() and student_file.is_file():
            policy.load_state_dict(torch.load(policy_file, map_location=device, weights_only=True))
            Trainer(student, train_loader, test_loader, _finetune_config(config), teacher=teacher,
                    checkpoint_path=student_file).fit(resume=True)
            continue
        train_policy(student, policy_loader, config.policy_config(), controller)
        io.atomic_save(policy.state_dict(), policy_file)
        controller.budget_range = (config.budget_low, config.budget_high)
        Trainer(student, train_loader, test_loader, _finetune_config(config), teacher=teacher,
                checkpoint_path=student_file).fit(resume=config.resume)
        controller.budget_range = None

    print("[3/3] measuring every budget on the test set, policy and fixed schedule", flush=True)
    teacher_accuracy, _ = measure(teacher, test_loader, device)
    per_budget = {}
    for budget in config.budgets:
        controller.budget = budget
        accuracy, ratio = _measured_ratio(student, test_loader, device)
        per_budget[str(budget)] = {"policy": {"accuracy": accuracy, "macs_ratio": ratio}}
    controller.remove()
    calibration = calibration_batch(train_loader, config.calibration_images, device)
    for budget in config.budgets:
        keep = student.set_budget(budget, calibration)
        accuracy, ratio = _measured_ratio(student, test_loader, device)
        per_budget[str(budget)]["fixed"] = {"accuracy": accuracy, "macs_ratio": ratio, "keep_ratio": keep}
    results = {
        "teacher_accuracy": teacher_accuracy,
        "budgets": per_budget,
        "config": config.to_dict(),
        "device": str(device),
    }
    return io.publish_results(results, config.out / "results.json", started, table(results))


def _measured_ratio(model: GatedModel, loader: DataLoader, device: torch.device) -> tuple[float, float]:
    """Test accuracy (percent) and executed-MAC ratio over the whole test set."""
    accuracy, report = measure(model, loader, device)
    return accuracy, report.macs_executed / report.macs_dense


def _finetune_config(config: RLConfig) -> TrainConfig:
    return TrainConfig(epochs=config.finetune_epochs, lr=config.student_lr, kd_alpha=0.5, eval_every=None,
                       max_grad_norm=5.0, seed=config.seed, progress=config.progress)


def table(results: dict[str, Any]) -> str:
    """The printed table: per budget, accuracy and executed-MAC ratio of the policy and the fixed schedule."""
    lines = [f"teacher accuracy {results['teacher_accuracy']:.2f} %", "",
             f"{'budget':>7} {'policy MACs':>12} {'policy %':>9} {'fixed MACs':>11} {'fixed %':>8}"]
    for budget, row in results["budgets"].items():
        lines.append(f"{float(budget):>7.2f} {row['policy']['macs_ratio']:>12.3f} {row['policy']['accuracy']:>9.2f} "
                     f"{row['fixed']['macs_ratio']:>11.3f} {row['fixed']['accuracy']:>8.2f}")
    return "\n".join(lines)

