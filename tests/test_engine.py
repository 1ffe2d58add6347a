"""``gating.engine.build``: the built model computes what the eval-mode model computes, and says what it cannot.

The reference is always the eval-mode model the build started from (its
PyTorch modules: ``F.conv2d``, ``nn.BatchNorm2d``, the gates' training
semantics), never the built model itself.

* float64: outputs within 1e-9 of the largest output (relative), decisions
  equal. A decision can only differ where its gate statistic rounds to
  exactly 0 in one computation and not in the other (the build sums the
  folded affine of the raw partial sum, the module normalises then
  thresholds; a runtime gate's top-k can swap two channels whose importances
  tie), so agreement is asserted at >= 99.9 % rather than 100 %; none of the
  seeded cases here differs.
* float32 (and bfloat16 for a dense model): the error against the float64
  eval model is at most 4x PyTorch's own error for the same model at that
  dtype, plus a few roundings (:func:`assert_within_pytorch_error`).

BatchNorm running statistics and affine parameters are set to random,
non-trivial values so that folding is really exercised; partial-sum gates
are calibrated on another batch than the one tested (a threshold set at a
quantile of the tested batch would put a statistic exactly on it).
Small images (24x24, batch 2) keep the file at about 25 s on an idle 2-core machine.
"""

from __future__ import annotations

import copy
import functools
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from gating import GateConfig, GatedModel
from gating.engine import DenseConvInference, InferenceModel, build, fold_conv_batchnorm
from gating.models import resnet20, resnet56
from gating.ops import GatedConvInference, RuntimeConvInference
from gating.prune import PruneConfig, prune

pytestmark = pytest.mark.usefixtures("single_thread")  # small tensors: one thread, no OpenMP spinning under load
TOLERANCE64 = 1e-9
MIN_AGREEMENT = 0.999
KINDS = ("plain", "partial_sum", "runtime")
NETWORKS = {
    "resnet18": lambda: torchvision.models.resnet18(num_classes=10),
    "resnet50": lambda: torchvision.models.resnet50(num_classes=10),
    "mobilenet_v2": lambda: torchvision.models.mobilenet_v2(num_classes=10),
    "resnet20": resnet20,
    "resnet56": resnet56,
}
FUSED = (DenseConvInference, GatedConvInference, RuntimeConvInference)


def randomize_batchnorms(model: nn.Module, seed: int = 1) -> nn.Module:
    """Give every BatchNorm2d random running statistics (mean ~ 0.1 N(0,1), var in [0.5, 1.5]) and affine terms."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in model.modules():
            if isinstance(bn, nn.BatchNorm2d):
                c = bn.num_features
                bn.running_mean.copy_(0.1 * torch.randn(c, generator=generator))
                bn.running_var.copy_(0.5 + torch.rand(c, generator=generator))
                if bn.affine:
                    bn.weight.copy_(0.5 + torch.rand(c, generator=generator))
                    bn.bias.copy_(0.1 * torch.randn(c, generator=generator))
    return model


def images(size: int = 24, seed: int = 0, batch: int = 2) -> torch.Tensor:
    """A float32 batch ``[batch, 3, size, size]`` of N(0, 1) pixels."""
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


@functools.lru_cache(maxsize=None)
def _source(name: str, kind: str) -> nn.Module:
    """The float32 eval-mode model ``name`` of ``kind`` (cached; tests work on deep copies)."""
    torch.manual_seed(0)
    network = randomize_batchnorms(NETWORKS[name]())
    if kind == "plain":
        return network.eval()
    model = GatedModel(network, GateConfig(kind=kind))
    if kind == "partial_sum":
        model.calibrate(images(seed=100), 0.5)
    else:
        model.set_keep_ratio(0.5)
    return model.eval()


def source(name: str, kind: str, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A fresh copy of the cached model in ``dtype``."""
    return copy.deepcopy(_source(name, kind)).to(dtype)


def eval_decisions(model: nn.Module) -> dict[str, torch.Tensor]:
    """The eval-mode model's decisions of its last forward, by gated layer name ({} for a plain model)."""
    if not isinstance(model, GatedModel):
        return {}
    return {
        name: layer.last_masks if model.config.kind == "runtime" else layer.last_decisions
        for name, layer in model.gated_layers().items()
    }


def assert_decisions_agree(expected: dict[str, torch.Tensor], built: InferenceModel) -> None:
    """Same layers, shapes and bool dtype; at least :data:`MIN_AGREEMENT` of all decisions equal (module docstring)."""
    assert set(built.last_decisions) == set(expected)
    same = total = 0
    for name, decisions in expected.items():
        got = built.last_decisions[name]
        assert got.dtype == torch.bool and got.shape == decisions.shape, name
        same += int((got == decisions).sum())
        total += decisions.numel()
    assert total == 0 or same / total >= MIN_AGREEMENT, f"{total - same} of {total} decisions differ"


def relative_error(got: torch.Tensor, truth: torch.Tensor) -> float:
    """``max|got - truth| / max|truth|`` in float64."""
    return float((got.double() - truth).abs().max() / truth.abs().max())


def assert_within_pytorch_error(got: torch.Tensor, pytorch: torch.Tensor, truth: torch.Tensor) -> None:
    """``got`` is no further from ``truth`` than 4x PyTorch's own result at that dtype, plus 16 roundings."""
    eps = torch.finfo(got.dtype).eps
    assert relative_error(got, truth) <= 4 * relative_error(pytorch, truth) + 16 * eps


def residual_calls(built: InferenceModel) -> int:
    """How many registered-op calls of the built graph take a fused residual (a second argument)."""
    network = built.network
    calls = [node for node in network.graph.nodes if node.op == "call_module" and len(node.args) == 2]
    return sum(isinstance(network.get_submodule(str(node.target)), FUSED) for node in calls)


def run(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


# ------------------------------------------------------------ equality
CASES = [(name, kind) for name in ("resnet18", "resnet50", "mobilenet_v2", "resnet20") for kind in KINDS]


@pytest.mark.parametrize("name, kind", CASES + [("resnet56", "partial_sum")])
def test_float64_build_equals_the_eval_model(name: str, kind: str) -> None:
    model = source(name, kind, torch.float64)
    x = images().double()
    expected = run(model, x)
    decisions = eval_decisions(model)
    for fuse_residual in (True, False):
        built = build(model, fuse_residual=fuse_residual)
        got = built(x)
        assert got.dtype == torch.float64 and got.shape == expected.shape
        assert relative_error(got, expected) <= TOLERANCE64, f"fuse_residual={fuse_residual}"
        assert_decisions_agree(decisions, built)
        assert (residual_calls(built) > 0) == fuse_residual  # every one of these networks has residual adds


@pytest.mark.parametrize("kind", KINDS)
def test_dense_convs_on_cudnn_equal_the_eval_model_and_fastest_uses_the_op_off_cuda(kind: str) -> None:
    model = source("resnet20", kind, torch.float64)
    x = images().double()
    expected = run(model, x)
    on_cudnn = build(model, dense="cudnn")
    assert relative_error(on_cudnn(x), expected) <= TOLERANCE64
    dense = [m for m in on_cudnn.modules() if isinstance(m, DenseConvInference)]
    assert dense and all(m.packed_weight is None and m.weight is not None for m in dense)
    fastest = build(model)  # the default: the faster backend per shape, timed on CUDA only
    assert relative_error(fastest(x), expected) <= TOLERANCE64
    dense = [m for m in fastest.modules() if isinstance(m, DenseConvInference)]
    assert dense and all(m.backend == "fastest" and m.choices == {} for m in dense)
    with pytest.raises(ValueError, match="dense must be one of"):
        build(model, dense="tensorrt")


@pytest.mark.parametrize("name, kind", CASES)
def test_float32_build_is_within_pytorch_float32_error(name: str, kind: str) -> None:
    model32, model64 = source(name, kind), source(name, kind, torch.float64)
    x = images()
    truth = run(model64, x.double())
    pytorch = run(model32, x)
    built = build(model32)
    got = built(x)
    assert got.dtype == torch.float32
    assert_within_pytorch_error(got, pytorch, truth)
    assert_decisions_agree(eval_decisions(model32), built)


@pytest.mark.parametrize("kind", ("partial_sum", "runtime"))
def test_a_float64_model_built_in_float32_folds_wide_and_runs_float32(kind: str) -> None:
    model64 = source("resnet20", kind, torch.float64)
    x = images(24)
    truth = run(model64, x.double())
    built = build(model64, dtype=torch.float32)
    got = built(x)
    assert got.dtype == torch.float32
    vectors = [b for m in built.modules() if isinstance(m, FUSED) for b in m.buffers(recurse=False) if b.dim() == 1]
    assert vectors and all(v.dtype == torch.float32 for v in vectors)
    assert_within_pytorch_error(got, run(source("resnet20", kind), x), truth)
    assert_decisions_agree(eval_decisions(model64), built)


def test_bfloat16_build_casts_folded_weights_and_stays_within_pytorch_bfloat16_error() -> None:
    model = source("resnet20", "plain")
    x = images(24)
    truth = run(source("resnet20", "plain", torch.float64), x.double())
    pytorch = run(source("resnet20", "plain", torch.bfloat16), x.bfloat16())
    built = build(model, dtype=torch.bfloat16)
    got = built(x.bfloat16())
    assert got.dtype == torch.bfloat16
    convs = [m for m in built.modules() if isinstance(m, DenseConvInference)]
    assert convs and all(m.packed_weight.dtype == torch.bfloat16 and m.shift.dtype == torch.float32 for m in convs)
    assert built.network.fc.weight.dtype == torch.bfloat16
    assert_within_pytorch_error(got, pytorch, truth)


def test_a_statically_pruned_gated_model_builds_exactly() -> None:
    torch.manual_seed(0)
    model = GatedModel(randomize_batchnorms(resnet20(width=32)), GateConfig(gate_group=16))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # prune's note on round_to
        prune(model, images(24)[:1], PruneConfig(ratio=0.25, scope="layer"))
    model.calibrate(images(24, seed=100), 0.5)
    model = model.double().eval()
    x = images(24).double()
    expected = run(model, x)
    built = build(model)
    assert relative_error(built(x), expected) <= TOLERANCE64
    assert_decisions_agree(eval_decisions(model), built)


def test_build_leaves_the_model_unchanged() -> None:
    model = GatedModel(randomize_batchnorms(resnet20()), GateConfig())
    model.calibrate(images(seed=100), 0.5)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    build(model, dtype=torch.float64)
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items() if k in before)
    model(images())  # the model's own call recording still works
    assert model.report().macs_dense > 0


# ------------------------------------------------------------ folding
@pytest.mark.parametrize("groups, bias", [(1, False), (1, True), (4, True), (8, False)])
def test_batchnorm_folding_is_exact_in_float64(groups: int, bias: bool) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, padding=1, groups=groups, bias=bias).double()
    bn = randomize_batchnorms(nn.BatchNorm2d(16)).double().eval()
    x = torch.randn(2, 8, 10, 10, dtype=torch.float64)
    weight, folded_bias = fold_conv_batchnorm(conv, bn)
    expected = run(nn.Sequential(conv, bn), x)
    got = F.conv2d(x, weight, folded_bias, padding=1, groups=groups)
    assert relative_error(got, expected) <= 1e-13


# ------------------------------------------------------------ fallbacks
class Mixed(nn.Module):
    """A net with a grouped conv, a depthwise conv, a BatchNorm after pooling, and functional/method ReLUs."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.grouped, self.bn1 = nn.Conv2d(16, 16, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(16)
        self.pool, self.bn2 = nn.AvgPool2d(2), nn.BatchNorm2d(16)
        self.depthwise, self.bn3 = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16)
        self.pointwise, self.bn4 = nn.Conv2d(16, 16, 1, bias=False), nn.BatchNorm2d(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn0(self.stem(x)))
        y = torch.relu(self.bn1(self.grouped(x)) + x)
        y = self.bn2(self.pool(y))
        z = F.relu(self.bn3(self.depthwise(y)))
        return torch.add(self.bn4(self.pointwise(z)), y).relu()


def test_layers_the_ops_cannot_take_run_as_pytorch_ops_with_one_warning_each() -> None:
    model = randomize_batchnorms(Mixed()).double().eval()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    with pytest.warns(UserWarning) as record:
        built = build(model)
    messages = [str(w.message) for w in record if str(w.message).startswith("gating.engine")]
    assert len(messages) == 2, messages
    assert "layer 'grouped' (Conv2d) runs as the PyTorch op: groups=4" in messages[0]
    assert "layer 'bn2' (BatchNorm2d) runs as the PyTorch op" in messages[1]
    assert "does not directly follow a convolution" in messages[1]
    assert relative_error(built(x), run(model, x)) <= TOLERANCE64
    network = built.network
    assert isinstance(network.stem, DenseConvInference) and network.stem.relu
    assert isinstance(network.pointwise, DenseConvInference) and network.pointwise.relu  # torch.add(...).relu()
    assert residual_calls(built) == 1
    assert type(network.grouped) is nn.Conv2d and type(network.depthwise) is nn.Conv2d  # BN folded into both
    assert not hasattr(network, "bn1") and not hasattr(network, "bn3") and isinstance(network.bn2, nn.BatchNorm2d)


class Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.relu(self.conv(x)))


def test_a_module_called_twice_is_not_fused_and_is_named() -> None:
    model = Shared().double().eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    message = r"layer 'conv' \(Conv2d\) runs as the PyTorch op: it is called more than once"
    with pytest.warns(UserWarning, match=message):
        built = build(model)
    assert relative_error(built(x), run(model, x)) <= TOLERANCE64


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) if x.sum() > 0 else x


def test_an_untraceable_model_is_named_with_the_reason() -> None:
    with pytest.raises(NotImplementedError, match=r"torch.fx cannot trace Branchy.*"):
        build(Branchy())


# ------------------------------------------------------------ calibration warning
def test_uncalibrated_partial_sum_gates_warn_once_with_the_count() -> None:
    model = GatedModel(resnet20(), GateConfig())
    with pytest.warns(UserWarning, match=r"18 of 18 partial-sum gated layers were never calibrated") as record:
        build(model)
    assert sum("never calibrated" in str(w.message) for w in record) == 1


def test_calibrated_or_runtime_gates_build_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build(source("resnet20", "partial_sum"))
        build(source("resnet20", "runtime"))


# ------------------------------------------------------------ input contract
@pytest.mark.parametrize(
    "x, error, match",
    [
        ("pixels", TypeError, "expected a torch.Tensor input, got str"),
        (torch.randn(3, 8, 8), ValueError, r"expected a 4-D input \[N, C, H, W\], got shape \(3, 8, 8\)"),
        (torch.randn(1, 4, 8, 8), ValueError, "expected 3 input channels, got 4"),
        (torch.randn(1, 3, 8, 8, dtype=torch.float64), TypeError, "built for torch.float32 inputs, got torch.float64"),
        (torch.randn(1, 3, 8, 8, device="meta"), ValueError, "built for inputs on cpu, got one on meta"),
    ],
)
def test_bad_inputs_are_refused_naming_expected_and_got(x: object, error: type, match: str) -> None:
    built = build(source("resnet20", "runtime"))
    with pytest.raises(error, match=match):
        built(x)
    assert built.last_decisions == {}


def test_build_argument_errors() -> None:
    model = source("resnet20", "plain")
    with pytest.raises(ValueError, match="cuda_graph=True needs a CUDA device, got device cpu"):
        build(model, cuda_graph=True)
    with pytest.raises(TypeError, match="dtype must be one of"):
        build(model, dtype=torch.int8)
    with pytest.raises(TypeError, match="model must be an nn.Module, got str"):
        build("resnet20")
    with pytest.raises(TypeError, match="fuse_residual must be a bool"):
        build(model, fuse_residual=1)
