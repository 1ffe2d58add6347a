"""``python -m gating train-rl``: a runtime-gated student with a budget policy (and optionally a static one).

:func:`run_train_rl` trains a dense ResNet-20 teacher (as the demo does),
wraps a copy with runtime gates (``GateConfig(kind="runtime")``), then for
``rounds`` rounds trains the budget policy with PPO (:func:`train_policy`,
network frozen) and fine-tunes the network and its importances under the
policy by distillation from the teacher (``gating.distill.Trainer``, each
input's budget drawn from the training range). With ``param_budget``, the
static policy (:mod:`gating.rl.static`) removes, before round
:data:`STATIC_ROUND`, the channels the trained static importance ranks last
for that fraction of the parameters, and a new budget policy is trained for
the smaller network. At the end the budget policy's map from requested to
given budgets is calibrated on training images
(:meth:`BudgetController.calibrate`); it measures, for every budget of
``budgets``, test accuracy and executed-MAC ratio with the policy and with
the fixed schedule (``GatedModel.set_budget``: one keep ratio in every
layer, set on the same training images), saves both models with
``gating.save`` (``OUT/teacher_model``, ``OUT/student_model``) and writes
``OUT/results.json`` (with parameters and bytes on disk of both). The data
is the built-in set, or CIFAR-10 / an ImageFolder from a local folder.
Checkpoints of the teacher, and of the student and the policy after each
round (and the static choice, ``OUT/static.json``), let ``resume``
continue.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from .. import data, io
from ..config import GateConfig, require_int
from ..distill import DistributedRun, Trainer, TrainConfig, teacher_recipe, train_teacher
from ..distill.config import resolve_device
from ..prune import PruneConfig, prune
from ..prune.criteria import eval_forward
from ..measurement import calibration_batch, measure, saved_sizes
from ..model import GatedModel
from .policy import BudgetController, BudgetPolicy
from .static import StaticPolicyConfig, prune_static, search_static_ratios
from .train import PolicyTrainConfig, train_policy

__all__ = ["RLConfig", "run_train_rl", "table"]

STATIC_ROUND = 1
"""With ``param_budget``, channels are removed before this round (the static importance trained in the earlier ones)."""

SYNTHETIC_IMAGE_SIZE = 24
"""Image side of the built-in data when ``RLConfig.image_size`` is None (other data: its loader's default)."""


@dataclass
class RLConfig:
    """Everything ``train-rl`` does, with its defaults; invalid values raise ``ValueError`` naming the field."""

    out: Path = Path("runs/train-rl")
    teacher_epochs: int = 5
    num_train: int = 6000
    num_test: int = 2000
    image_size: int | None = None
    batch_size: int = 128
    width: int = 16
    seed: int = 0
    channel_group: int = 4
    rounds: int = 3
    policy_updates: int = 40
    finetune_epochs: int = 2
    student_lr: float = 0.02
    budget_low: float = 0.2
    budget_high: float = 1.0
    budgets: tuple[float, ...] = (0.3, 0.5, 0.7)
    calibration_images: int = 256
    progress: bool = True
    resume: bool = False
    policy_batch_size: int = 64
    hidden: int = 32
    data: str = "synthetic"
    root: Path | None = None
    param_budget: float | None = None
    static_updates: int = 20
    static_episodes: int = 8
    static_images: int = 128

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.budgets = tuple(float(b) for b in self.budgets)
        for name in ("teacher_epochs", "num_train", "num_test", "batch_size", "width", "channel_group", "rounds",
                     "policy_updates", "finetune_epochs", "calibration_images", "policy_batch_size", "hidden",
                     "static_updates", "static_episodes", "static_images"):
            require_int("RLConfig", name, getattr(self, name), 1)
        if not self.budgets or not all(0 < b <= 1 for b in self.budgets):
            raise ValueError(f"RLConfig.budgets must be values in (0, 1], got {self.budgets!r}")
        if not self.student_lr > 0:
            raise ValueError(f"RLConfig.student_lr must be > 0, got {self.student_lr!r}")
        self.policy_config()  # checks the budget range
        if self.data not in data.DATASETS:
            raise ValueError(f"RLConfig.data must be one of {data.DATASETS}, got {self.data!r}")
        if self.data != "synthetic" and self.root is None:
            raise ValueError(f"RLConfig.root must name the {self.data} folder (data={self.data!r})")
        if self.root is not None:
            self.root = Path(self.root)
        if self.image_size is not None and (isinstance(self.image_size, bool) or not isinstance(self.image_size, int)
                                            or self.image_size < 8):
            raise ValueError(f"RLConfig.image_size must be an int >= 8 or None, got {self.image_size!r}")
        if self.param_budget is not None:
            self.static_config()  # checks the parameter budget
            if self.rounds <= STATIC_ROUND:
                raise ValueError(f"RLConfig.rounds must be > {STATIC_ROUND} with a param_budget (the static pruning "
                                 f"happens before round {STATIC_ROUND}), got {self.rounds}")

    def static_config(self) -> StaticPolicyConfig:
        """The static policy's search (``param_budget`` must be set)."""
        try:
            return StaticPolicyConfig(param_budget=self.param_budget, updates=self.static_updates,
                                      episodes=self.static_episodes, seed=self.seed, progress=self.progress)
        except ValueError as error:
            raise ValueError(str(error).replace("StaticPolicyConfig.", "RLConfig.")) from None

    def policy_config(self) -> PolicyTrainConfig:
        return PolicyTrainConfig(updates=self.policy_updates, budget_low=self.budget_low, budget_high=self.budget_high,
                                 hidden=self.hidden, seed=self.seed, progress=self.progress)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["out"], out["budgets"] = str(self.out), list(self.budgets)
        out["root"] = None if self.root is None else str(self.root)
        return out


def run_train_rl(config: RLConfig, run: DistributedRun | None = None) -> dict[str, Any] | None:
    """Run the workflow of the module docstring; returns what it writes to ``results.json`` (``None`` outside
    the main process).

    ``run``: this process's place in a data-parallel run (default: a single
    process). Under torchrun the teacher's training and each round's
    fine-tuning are data-parallel (``gating.distill.Trainer`` with ``run``;
    ``batch_size`` is the global batch); the PPO policy training and the
    static search run in every process on the same data and rank 0's result
    is given to all; only rank 0 measures and writes.
    """
    started = time.perf_counter()
    run = run or DistributedRun(device=resolve_device(None))
    torch.manual_seed(config.seed)
    image_size = config.image_size or (SYNTHETIC_IMAGE_SIZE if config.data == "synthetic" else None)
    train_loader, test_loader, classes = data.build_loaders(
        config.data, root=config.root, batch_size=config.batch_size, num_train=config.num_train,
        num_test=config.num_test, image_size=image_size, seed=config.seed,
    )
    share_train, share_test = _shares(train_loader, test_loader, config, run)
    if run.is_main:
        config.out.mkdir(parents=True, exist_ok=True)
    run.barrier()
    source = "built-in" if config.data == "synthetic" else f"{config.data} ({config.root})"
    _say(run, f"[1/3] teacher: ResNet-20 (width {config.width}) on {len(train_loader.dataset)} {source} images")
    teacher = io.build("resnet20", num_classes=classes, width=config.width)
    recipe = teacher_recipe(config.teacher_epochs, seed=config.seed, progress=config.progress, device=str(run.device))
    device = train_teacher(teacher, share_train, share_test, recipe, config.out / "teacher.ckpt",
                           resume=config.resume, run=run)

    _say(run, f"[2/3] student: runtime gates, {config.rounds} rounds of policy training and fine-tuning")
    student = GatedModel(teacher, GateConfig(kind="runtime", channel_group=config.channel_group)).to(device)
    static = None
    policy = BudgetPolicy([layer.in_channels for layer in student.gated_layers().values()], config.hidden).to(device)
    controller = BudgetController(student, policy)
    policy_loader = DataLoader(train_loader.dataset, batch_size=config.policy_batch_size,
                               sampler=data.EpochSampler(len(train_loader.dataset), config.seed))
    for round_index in range(config.rounds):
        if round_index == STATIC_ROUND and config.param_budget is not None:
            # The static importance has trained for a round: remove what it ranks last, then a new policy
            # for the smaller layers (the old one's encoders no longer fit them).
            controller.remove()
            static = _static_pruning(student, train_loader, config, device, run)
            policy = BudgetPolicy([layer.in_channels for layer in student.gated_layers().values()],
                                  config.hidden).to(device)
            controller = BudgetController(student, policy)
        policy_file = config.out / f"policy-round{round_index}.pt"
        student_file = config.out / f"student-round{round_index}.ckpt"
        finetune = _finetune_config(config, run)
        if config.resume and policy_file.is_file() and student_file.is_file():
            policy.load_state_dict(torch.load(policy_file, map_location=device, weights_only=True))
            Trainer(student, share_train, share_test, finetune, teacher=teacher, checkpoint_path=student_file,
                    run=run).fit(resume=True)
            continue
        train_policy(student, policy_loader, config.policy_config(), controller)
        run.broadcast_module(policy)  # every process trained the same policy; rank 0's is the one saved
        if run.is_main:
            io.atomic_save(policy.state_dict(), policy_file)
        controller.budget_range = (config.budget_low, config.budget_high)
        if run.distributed:  # each process draws its own share's budgets
            controller.generator.manual_seed(run.rank)
        Trainer(student, share_train, share_test, finetune, teacher=teacher, checkpoint_path=student_file,
                run=run).fit(resume=config.resume)
        controller.budget_range = None

    if not run.is_main:
        run.barrier()
        return None
    print("[3/3] measuring every budget on the test set, policy and fixed schedule", flush=True)
    teacher_accuracy, _ = measure(teacher, test_loader, device)
    calibration = calibration_batch(train_loader, config.calibration_images, device)
    controller.calibrate(calibration)
    per_budget = {}
    for budget in config.budgets:
        controller.budget = budget
        accuracy, ratio = _measured_ratio(student, test_loader, device)
        per_budget[str(budget)] = {"policy": {"accuracy": accuracy, "macs_ratio": ratio}}
    budget_map = [[float(a), float(b)] for a, b in zip(*controller.budget_map)]
    controller.remove()
    for budget in config.budgets:
        keep = student.set_budget(budget, calibration)
        accuracy, ratio = _measured_ratio(student, test_loader, device)
        per_budget[str(budget)]["fixed"] = {"accuracy": accuracy, "macs_ratio": ratio, "keep_ratio": keep}
    student.set_keep_ratio(1.0)
    results = {
        "teacher_accuracy": teacher_accuracy,
        "budgets": per_budget,
        "budget_map": budget_map,
        "static_pruning": static,
        "storage": saved_sizes({"teacher": teacher, "student": student}, config.out),
        "config": config.to_dict(),
        "world_size": run.world_size,
        "device": str(device),
    }
    results = io.publish_results(results, config.out / "results.json", started, table(results))
    run.barrier()
    return results


def _shares(train_loader: DataLoader, test_loader: DataLoader, config: RLConfig,
            run: DistributedRun) -> tuple[DataLoader, DataLoader]:
    """The loaders the data-parallel training reads: this process's share of each global batch and of the test
    set (``GlobalBatchSampler`` / ``ShardSampler``); the loaders themselves in a single process."""
    if not run.distributed:
        return train_loader, test_loader
    train, test = train_loader.dataset, test_loader.dataset
    batches = data.GlobalBatchSampler(len(train), config.batch_size, config.seed, run.rank, run.world_size)
    shard = data.ShardSampler(len(test), run.rank, run.world_size)
    return DataLoader(train, batch_sampler=batches), DataLoader(test, batch_size=config.batch_size, sampler=shard)


def _say(run: DistributedRun, message: str) -> None:
    if run.is_main:
        print(message, flush=True)


def _static_pruning(student: GatedModel, loader: DataLoader, config: RLConfig, device: torch.device,
                    run: DistributedRun) -> dict[str, Any]:
    """Search per-layer static ratios for ``config.param_budget`` and remove the channels (module docstring).

    The search's choice is kept in ``OUT/static.json`` so that ``resume``
    replays the same cuts before loading the fine-tuned checkpoints. Returns
    what ``results.json`` records: the kept fraction per group, the measured
    parameter ratio and calibration loss of the policy's choice and of one
    global threshold on the static importance at the same budget. In a
    data-parallel run every process searches and rank 0's record is used.
    """
    record_file = config.out / "static.json"
    example = loader.dataset[0][0][None].to(device)
    student.set_keep_ratio(1.0)  # the budget policy's per-input ratios of its last batch no longer apply
    if config.resume and record_file.is_file():
        record = json.loads(record_file.read_text())
    else:
        count = min(config.static_images, len(loader.dataset))
        inputs = calibration_batch(loader, count, device)
        targets = torch.tensor([int(loader.dataset[i][1]) for i in range(count)], device=device)
        _say(run, f"      static policy: per-layer ratios for {config.param_budget} of the parameters")
        search = search_static_ratios(student, example, inputs, targets, config.static_config())
        baseline = copy.deepcopy(student)
        with warnings.catch_warnings():  # a comparison only: its round_to floors are not the user's concern
            warnings.simplefilter("ignore", UserWarning)
            prune(baseline, example, PruneConfig(criterion="static", params=config.param_budget))
        with torch.no_grad():
            baseline_loss = F.cross_entropy(eval_forward(baseline, inputs), targets).item()
        total = sum(p.numel() for p in student.parameters())
        record = {
            "param_budget": config.param_budget,
            "ratios": {str(k): v for k, v in search.ratios.items()},
            "keep": {str(k): v.tolist() for k, v in search.keep.items()},
            "param_ratio": search.param_ratio,
            "calibration_loss": search.loss,
            "unpruned_calibration_loss": search.baseline_loss,
            "uniform": {"fraction": search.uniform_fraction, "calibration_loss": search.uniform_loss},
            "chosen": search.chosen,
            "global_threshold": {"param_ratio": sum(p.numel() for p in baseline.parameters()) / total,
                                 "calibration_loss": baseline_loss},
        }
        record = run.broadcast_object(record)
        if run.is_main:
            io.atomic_write_json(record, record_file)
    prune_static(student, example, {int(k): torch.tensor(v, dtype=torch.int64) for k, v in record["keep"].items()})
    _say(run, f"      removed channels ({record['chosen']}): {record['param_ratio']:.3f} of the parameters stay (calibration loss "
          f"{record['calibration_loss']:.3f}; one fraction everywhere: {record['uniform']['calibration_loss']:.3f}; "
          f"one global threshold: {record['global_threshold']['calibration_loss']:.3f})")
    return record


def _measured_ratio(model: GatedModel, loader: DataLoader, device: torch.device) -> tuple[float, float]:
    """Test accuracy (percent) and executed-MAC ratio over the whole test set."""
    accuracy, report = measure(model, loader, device)
    return accuracy, report.macs_executed / report.macs_dense


def _finetune_config(config: RLConfig, run: DistributedRun) -> TrainConfig:
    return TrainConfig(epochs=config.finetune_epochs, lr=config.student_lr, kd_alpha=0.5, eval_every=None,
                       max_grad_norm=5.0, seed=config.seed, progress=config.progress, device=str(run.device))


def table(results: dict[str, Any]) -> str:
    """The printed table: per budget, accuracy and executed-MAC ratio of the policy and the fixed schedule."""
    lines = [f"teacher accuracy {results['teacher_accuracy']:.2f} %", "",
             f"{'budget':>7} {'policy MACs':>12} {'policy %':>9} {'fixed MACs':>11} {'fixed %':>8}"]
    for budget, row in results["budgets"].items():
        lines.append(f"{float(budget):>7.2f} {row['policy']['macs_ratio']:>12.3f} {row['policy']['accuracy']:>9.2f} "
                     f"{row['fixed']['macs_ratio']:>11.3f} {row['fixed']['accuracy']:>8.2f}")
    return "\n".join(lines)

