"""The channel-sparse conv: Triton kernel vs reference, counters, the op ``gating::channel_sparse_conv2d``, and
``gating.ops.RuntimeConvInference`` vs an eval-mode ``RuntimeGatedConv2d``.

The Triton kernel runs on CUDA when there is one, else on CPU through the
Triton interpreter (``tests/conftest.py``). Tolerance and poisoned outputs:
``tests/_helpers.py``; on top of that, the input channels the masks mark
inactive hold NaN (so reading one shows), the pruned outputs must be exactly
0 (``relu(residual)`` with a residual), and the kernel's counters must equal
:func:`kernels.channel_sparse_counters` of the same masks.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn
from torch._dynamo.testing import CompileCounterWithBackend
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode

import kernels
from _helpers import (
    COMMON_BAD_ARGS,
    DEVICE,
    META,
    OP_DEVICES,
    ROOT,
    as_float64,
    assert_matches,
    compile_for_hopper,
    conv_args,
    poisoned_empty,
    rand,
    set_arg,
    to_device,
)
from gating.gates import ChannelGatedConv2d, RuntimeGatedConv2d
from gating.ops import RuntimeConvInference, fold_runtime_conv
from kernels import CHANNEL_SPARSE_FIELDS, channel_group_lists, channel_sparse_counters, conv_output_size

MaskFn = Callable[[int, int, torch.Generator], torch.Tensor]


# ------------------------------------------------------------------ masks
def _groups(n: int, c: int, gen: torch.Generator, group: int = 8, p: float = 0.5) -> torch.Tensor:
    """Random groups of ``group`` channels on or off per sample (what the runtime gate makes)."""
    on = torch.rand(n, -(-c // group), generator=gen) < p
    return on.repeat_interleave(group, dim=1)[:, :c]


MASKS: dict[str, MaskFn] = {
    "full": lambda n, c, gen: torch.ones(n, c, dtype=torch.bool),
    "empty": lambda n, c, gen: torch.zeros(n, c, dtype=torch.bool),
    "one-block": lambda n, c, gen: (torch.arange(c) // 16 == min(1, (c - 1) // 16)).expand(n, c).clone(),
    "groups8": _groups,
    "scattered": lambda n, c, gen: torch.rand(n, c, generator=gen) < 0.4,
    # sample 0 nothing, sample 1 everything, the rest groups of 8
    "per-sample": lambda n, c, gen: torch.cat([torch.zeros(1, c, dtype=torch.bool),
                                               torch.ones(1, c, dtype=torch.bool), _groups(n - 2, c, gen)]),
}  # fmt: skip


def _case(**overrides: object) -> dict[str, object]:
    base = {"batch": 2, "c_in": 19, "c_out": 21, "kernel": 3, "stride": 1, "padding": 1, "dilation": 1,
            "height": 9, "width": 7, "dtype": torch.float32, "out": "scattered", "in": "scattered",
            "epilogue": True, "block": 16, "seed": 0}  # fmt: skip
    return base | overrides


CASES = {
    "3x3-ragged-channels": _case(),
    "3x3-s2-bf16-per-sample": _case(batch=3, c_in=40, c_out=40, stride=2, height=11, width=9,
                                    dtype=torch.bfloat16, out="per-sample", **{"in": "groups8"}),
    "1x1-fp16-no-in-mask": _case(kernel=1, padding=0, c_in=48, c_out=40, dtype=torch.float16, out="groups8",
                                 epilogue=False, **{"in": None}),
    "1x1-s2-one-block": _case(kernel=1, padding=0, stride=2, c_in=33, c_out=37, out="one-block",
                              **{"in": "full"}),
    "empty-out-residual": _case(dtype=torch.float16, c_in=24, c_out=24, out="empty"),
    "empty-in": _case(c_in=24, c_out=32, out="per-sample", batch=3, **{"in": "empty"}),
    "full-bf16-block32": _case(dtype=torch.bfloat16, c_in=40, c_out=48, out="full", block=32, **{"in": "full"}),
    "ragged-pixel-tiles": _case(batch=3, c_in=32, c_out=24, height=10, width=13, out="per-sample",
                                **{"in": "per-sample"}),
    "5x5-dilated-block64": _case(kernel=5, dilation=2, padding=3, c_in=20, c_out=70, block=64, height=8,
                                 width=8, out="groups8", **{"in": "scattered"}),
}  # fmt: skip


def make_inputs(case: dict[str, object]) -> tuple[tuple, dict[str, object]]:
    """``(x, weight, out_mask, in_mask)`` and the keyword arguments of a case (CPU, the case's dtype)."""
    gen = torch.Generator().manual_seed(case["seed"])
    dtype, k, n = case["dtype"], case["kernel"], case["batch"]
    x = rand((n, case["c_in"], case["height"], case["width"]), dtype, gen)
    weight = rand((case["c_out"], case["c_in"], k, k), dtype, gen, std=(case["c_in"] * k * k) ** -0.5)
    out_mask = MASKS[case["out"]](n, case["c_out"], gen)
    in_mask = None if case["in"] is None else MASKS[case["in"]](n, case["c_in"], gen)
    if in_mask is not None:  # what the mask marks inactive must never be read
        x = torch.where(in_mask[:, :, None, None], x, torch.full((), float("nan"), dtype=dtype))
    kwargs = {"stride": case["stride"], "padding": case["padding"], "dilation": case["dilation"],
              "block": case["block"]}  # fmt: skip
    if case["epilogue"]:
        out_hw = [conv_output_size(s, k, case["stride"], case["padding"], case["dilation"]) for s in x.shape[2:]]
        kwargs |= {
            "scale": rand((case["c_out"],), torch.float32, gen).abs() + 0.5,
            "shift": rand((case["c_out"],), torch.float32, gen),
            "residual": rand((n, case["c_out"], *out_hw), dtype, gen),
            "relu": True,
        }
    return (x, weight, out_mask, in_mask), kwargs


def pruned_values(out_mask: torch.Tensor, kwargs: dict[str, object], like: torch.Tensor) -> torch.Tensor:
    """What every pruned output must be exactly: 0, or ``relu(residual)`` / ``residual``."""
    residual = kwargs.get("residual")
    if residual is None:
        return torch.zeros_like(like)
    return torch.relu(residual) if kwargs.get("relu") else residual


# ------------------------------------------------------------ kernel vs reference
@pytest.mark.parametrize("name", CASES)
def test_kernel_matches_reference_skips_and_counts(name: str) -> None:
    case = CASES[name]
    args, kwargs = make_inputs(case)
    with poisoned_empty():
        out, counters = kernels.channel_sparse_conv2d_triton(
            *map(to_device, args), **{k: to_device(v) for k, v in kwargs.items()}, return_counters=True
        )
    out, counters = out.cpu(), counters.cpu()
    wide = {k: as_float64(v) for k, v in kwargs.items()}
    truth = kernels.channel_sparse_conv2d_reference(*map(as_float64, args), **wide)
    at_dtype = kernels.channel_sparse_conv2d_reference(*args, **kwargs)
    assert_matches(out, truth, at_dtype, case["c_in"] * case["kernel"] ** 2)
    pruned = ~args[2][:, :, None, None].expand_as(out)
    assert torch.equal(out[pruned], pruned_values(args[2], kwargs, out)[pruned])
    out_hw = tuple(out.shape[2:])
    kernel = (case["kernel"], case["kernel"])
    predicted = channel_sparse_counters(args[2], args[3], case["c_in"], kernel, out_hw, case["block"])
    assert counters.tolist() == predicted.tolist()


def _kernel_work(x: torch.Tensor, w: torch.Tensor, out_mask: torch.Tensor, in_mask: torch.Tensor,
                 **conv: object) -> dict[str, int]:  # fmt: skip
    """The kernel's counters of one call (and its output checked against the reference)."""
    args = [t.to(DEVICE) for t in (x, w, out_mask, in_mask)]
    out, counters = kernels.channel_sparse_conv2d_triton(*args, return_counters=True, **conv)
    expected = kernels.channel_sparse_conv2d_reference(x.double(), w.double(), out_mask, in_mask, **conv)
    torch.testing.assert_close(out.cpu().double(), expected, rtol=2e-2, atol=2e-2)
    return dict(zip(CHANNEL_SPARSE_FIELDS, counters.tolist()))


def test_half_of_the_groups_in_and_out_executes_the_algorithmic_macs_a_quarter_of_dense() -> None:
    gen = torch.Generator().manual_seed(3)
    x, w = rand((2, 64, 6, 6), torch.float16, gen), rand((64, 64, 3, 3), torch.float16, gen, std=0.05)
    out_mask, in_mask = torch.zeros(2, 64, dtype=torch.bool), torch.zeros(2, 64, dtype=torch.bool)
    out_mask[0, :32] = out_mask[1, 16:48] = True
    in_mask[0, 32:] = in_mask[1, 8:40] = True
    work = _kernel_work(x, w, out_mask, in_mask, padding=1)
    assert work["macs"] == int(kernels.channel_sparse_macs(out_mask, in_mask, 64, (3, 3), (6, 6)))
    assert work["macs"] == 2 * 32 * 32 * 9 * 36
    dense_dots = 2 * 1 * 4 * 4 * 9  # samples x pixel tiles x output tiles x input tiles x taps
    assert work["dot_tiles"] * 4 == dense_dots and work["output_tiles"] == work["zero_tiles"] == 4


def test_groups_of_8_far_apart_share_one_tile() -> None:
    """Output groups 0 and 5, input groups 1 and 7 of 64 channels: one output tile, one K step per tap."""
    gen = torch.Generator().manual_seed(4)
    x, w = rand((1, 64, 5, 5), torch.bfloat16, gen), rand((48, 64, 3, 3), torch.bfloat16, gen, std=0.05)
    out_mask, in_mask = torch.zeros(1, 48, dtype=torch.bool), torch.zeros(1, 64, dtype=torch.bool)
    out_mask[0, 0:8] = out_mask[0, 40:48] = True
    in_mask[0, 8:16] = in_mask[0, 56:64] = True
    work = _kernel_work(x, w, out_mask, in_mask, padding=1)
    assert (work["programs"], work["output_tiles"], work["dot_tiles"]) == (3, 1, 9)
    assert work["macs"] == 16 * 16 * 9 * 25 and work["tile_macs"] == 9 * 32 * 16 * 16


def test_counter_prediction_by_hand() -> None:
    """2 samples, C_in 32, C_out 48, 3x3, 4x4 outputs (one 16-row tile each), tiles of 16 = two groups of 8."""
    out_mask = torch.zeros(2, 48, dtype=torch.bool)
    out_mask[0, :16] = True  # groups 0, 1
    out_mask[1, :8] = out_mask[1, 40:] = True  # groups 0, 5: gathered into one tile
    in_mask = torch.zeros(2, 32, dtype=torch.bool)
    in_mask[0] = True  # four groups: two K steps
    in_mask[1, 3] = True  # one group, one channel: one K step
    got = dict(zip(CHANNEL_SPARSE_FIELDS, channel_sparse_counters(out_mask, in_mask, 32, (3, 3), (4, 4)).tolist()))
    assert got == {"programs": 6, "output_tiles": 2, "zero_tiles": 4, "dot_tiles": 9 * (1 * 2 + 1 * 1),
                   "macs": 16 * 9 * (16 * 32 + 16 * 8), "tile_macs": 27 * 16**3,
                   "block_m": 16, "block": 16}  # fmt: skip
    assert int(kernels.channel_sparse_macs(out_mask, in_mask, 32, (3, 3), (4, 4))) == 16 * 9 * (16 * 32 + 16 * 1)


def test_group_lists_put_active_groups_first_in_order() -> None:
    mask = torch.zeros(3, 20, dtype=torch.bool)  # groups of 8: [0, 8), [8, 16), [16, 20)
    mask[0, 17] = True
    mask[1, [0, 9]] = True
    lists = channel_group_lists(mask)
    assert lists.order.dtype == torch.int32 and lists.counts.tolist() == [1, 2, 0]
    assert lists.order.tolist() == [[2, 0, 1], [0, 1, 2], [0, 1, 2]]


def test_layouts_and_packed_weight_give_identical_results() -> None:
    gen = torch.Generator().manual_seed(1)
    x = rand((2, 24, 7, 6), torch.float16, gen).to(DEVICE)
    weight = rand((20, 24, 3, 3), torch.float16, gen, std=0.1).to(DEVICE)
    out_mask, in_mask = _groups(2, 20, gen).to(DEVICE), _groups(2, 24, gen).to(DEVICE)
    expected = kernels.channel_sparse_conv2d_triton(x, weight, out_mask, in_mask, padding=1)
    assert expected.is_contiguous(memory_format=torch.channels_last)
    strided = torch.zeros(2, 48, 7, 6, dtype=x.dtype, device=DEVICE)
    strided[:, ::2] = x
    for variant in (x.contiguous(memory_format=torch.channels_last), strided[:, ::2]):
        got = kernels.channel_sparse_conv2d_triton(variant, kernels.pack_weight(weight), out_mask, in_mask, padding=1)
        assert torch.equal(got, expected)


@pytest.mark.parametrize("fn", ["kernel", "op", "reference"])
def test_empty_batch_returns_empty_output_and_zero_counters(fn: str) -> None:
    x = torch.zeros(0, 5, 7, 7, dtype=torch.bfloat16, device=DEVICE)
    w = torch.zeros(9, 5, 3, 3, dtype=torch.bfloat16, device=DEVICE)
    out_mask = torch.zeros(0, 9, dtype=torch.bool, device=DEVICE)
    out, counters = ENTRY_POINTS[fn](x, w, out_mask, stride=2, return_counters=True)
    assert out.shape == (0, 9, 3, 3) and out.dtype == torch.bfloat16
    assert counters.tolist()[:6] == [0] * 6


# ------------------------------------------------------------------ the op
def op_args(dtype: torch.dtype, device: str, in_mask: bool, epilogue: bool, count: bool, seed: int = 0) -> tuple:
    """Positional arguments of ``gating::channel_sparse_conv2d``: a 3x3, stride (2, 1) conv, 2 x 20 -> 24."""
    gen = torch.Generator().manual_seed(seed)
    x = rand((2, 20, 7, 6), dtype, gen).to(device)
    w = kernels.pack_weight(rand((24, 20, 3, 3), dtype, gen, std=0.2)).unpack().to(device)
    out_mask, masks_in = _groups(2, 24, gen).to(device), _groups(2, 20, gen).to(device)
    vector = (lambda: rand((24,), torch.float32, gen).to(device)) if epilogue else (lambda: None)
    residual = rand((2, 24, 4, 6), dtype, gen).to(device) if epilogue else None
    return (x, w, out_mask, masks_in if in_mask else None, [2, 1], [1, 1], [1, 1], vector(), vector(), residual,
            epilogue, 16, count)  # fmt: skip


@pytest.mark.parametrize("device", OP_DEVICES)
@pytest.mark.parametrize("in_mask, epilogue, count", [(True, True, True), (False, False, False), (True, False, True)])
def test_opcheck(device: str, in_mask: bool, epilogue: bool, count: bool) -> None:
    dtype = torch.float64 if device == "cpu" else torch.bfloat16
    torch.library.opcheck(kernels.channel_sparse_conv2d_op, op_args(dtype, device, in_mask, epilogue, count))


def test_cuda_kernel_is_registered_exactly_when_triton_is_installed() -> None:
    has_cuda = torch._C._dispatch_has_kernel_for_dispatch_key("gating::channel_sparse_conv2d", "CUDA")
    assert has_cuda == kernels.TRITON_AVAILABLE


def test_op_on_cpu_runs_the_reference_with_predicted_counters() -> None:
    args = op_args(torch.float32, "cpu", True, True, True)
    out, counters = torch.ops.gating.channel_sparse_conv2d(*args)
    x, w, out_mask, in_mask = args[:4]
    conv = {"stride": args[4], "padding": args[5], "dilation": args[6], "scale": args[7], "shift": args[8],
            "residual": args[9], "relu": args[10]}  # fmt: skip
    assert torch.equal(out, kernels.channel_sparse_conv2d_reference(x, w, out_mask, in_mask, **conv))
    assert torch.equal(counters, channel_sparse_counters(out_mask, in_mask, 20, (3, 3), (4, 6)))
    _, empty = torch.ops.gating.channel_sparse_conv2d(*args[:-1], False)
    assert empty.shape == (0,) and empty.dtype == torch.int64


def total_flops(fn: Callable[..., object], *args: object, **kwargs: object) -> int:
    with FlopCounterMode(display=False) as counter:
        fn(*args, **kwargs)
    return counter.get_total_flops()


def test_flops_are_read_from_the_masks_and_the_dense_bound_without_them() -> None:
    x, w, out_mask, in_mask, stride, padding, *_ = op_args(torch.float32, "cpu", True, False, False)
    conv = {"stride": stride, "padding": padding}
    kept, active = out_mask.sum(dim=1), in_mask.sum(dim=1)
    expected = 2 * int((kept * active).sum()) * 9 * 4 * 6
    assert 0 < expected < 2 * 2 * 24 * 20 * 9 * 4 * 6
    assert total_flops(kernels.channel_sparse_conv2d, x, w, out_mask, in_mask, **conv) == expected
    all_inputs = 2 * int(kept.sum()) * 20 * 9 * 4 * 6
    assert total_flops(kernels.channel_sparse_conv2d, x, w, out_mask, **conv) == all_inputs
    with FakeTensorMode() as mode:
        fakes = [mode.from_tensor(t) for t in (x, w, out_mask, in_mask)]
        assert total_flops(kernels.channel_sparse_conv2d, *fakes, **conv) == 2 * 2 * 24 * 20 * 9 * 4 * 6


FAKE_BAD_CASES = {
    "out_mask-shape": (2, lambda: torch.ones(2, 23, dtype=torch.bool)),
    "out_mask-dtype": (2, lambda: torch.ones(2, 24)),
    "in_mask-shape": (3, lambda: torch.ones(2, 24, dtype=torch.bool)),
    "c_in": (1, lambda: torch.randn(24, 21, 3, 3)),
    "block": (11, lambda: 8),
}


def _error_of(call: Callable[[], object]) -> tuple[type, str]:
    with pytest.raises(Exception) as caught:
        call()
    return caught.type, str(caught.value)


@pytest.mark.parametrize("case", FAKE_BAD_CASES)
def test_fake_raises_what_the_real_op_raises(case: str) -> None:
    args = list(op_args(torch.float32, "cpu", True, False, False))
    index, value = FAKE_BAD_CASES[case]
    args[index] = value()
    real = _error_of(lambda: torch.ops.gating.channel_sparse_conv2d(*args))
    with FakeTensorMode() as mode:
        fake_args = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
        fake = _error_of(lambda: torch.ops.gating.channel_sparse_conv2d(*fake_args))
    assert fake == real and real[0] in (TypeError, ValueError)


class _TwoLayers(nn.Module):
    """A dense conv, then a channel-sparse one on the first's output channels."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(16, 3, 3, 3), requires_grad=False)
        self.sparse = nn.Parameter(torch.randn(24, 16, 1, 1), requires_grad=False)

    def forward(self, x: torch.Tensor, out_mask: torch.Tensor) -> torch.Tensor:
        y = kernels.conv2d(x, self.weight, padding=1, relu=True)
        return kernels.channel_sparse_conv2d(y, self.sparse, out_mask, y.amax(dim=(2, 3)) > 0)


def test_compile_and_export_hold_the_op_as_one_node() -> None:
    model, x = _TwoLayers(), torch.randn(2, 3, 6, 6)
    out_mask = _groups(2, 24, torch.Generator().manual_seed(0))
    counter = CompileCounterWithBackend("aot_eager")  # AOT tracing runs the fake implementation
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    assert torch.equal(compiled(x, out_mask), model(x, out_mask)) and counter.frame_count == 1
    program = torch.export.export(model, (x, out_mask))
    targets = [node.target for node in program.graph.nodes if node.op == "call_function"]
    assert targets.count(torch.ops.gating.channel_sparse_conv2d.default) == 1


# ------------------------------------------------------------- bad arguments
def sparse_args() -> dict[str, object]:
    """A valid call: :func:`conv_args` (output [2, 8, 4, 4]) plus out_mask [2, 8] and in_mask [2, 4]."""
    return conv_args() | {"out_mask": torch.ones(2, 8, dtype=torch.bool), "in_mask": torch.ones(2, 4, dtype=torch.bool)}


SPARSE_BAD_ARGS = COMMON_BAD_ARGS | {
    "out_mask-list": (set_arg("out_mask", [[True] * 8] * 2), TypeError, "out_mask must be a torch.Tensor"),
    "out_mask-float": (set_arg("out_mask", lambda: torch.ones(2, 8)), TypeError, "out_mask must be a bool"),
    "out_mask-shape": (
        set_arg("out_mask", lambda: torch.ones(2, 9, dtype=torch.bool)), ValueError, r"out_mask.*\[2, 8\]"
    ),
    "out_mask-rank": (set_arg("out_mask", lambda: torch.ones(16, dtype=torch.bool)), ValueError, "out_mask must be"),
    "out_mask-device": (
        set_arg("out_mask", lambda: torch.ones(2, 8, dtype=torch.bool, device=META)), ValueError, "out_mask is on meta"
    ),
    "in_mask-channels": (
        set_arg("in_mask", lambda: torch.ones(2, 8, dtype=torch.bool)), ValueError, r"in_mask.*\[2, 4\]"
    ),
    "in_mask-int": (
        set_arg("in_mask", lambda: torch.ones(2, 4, dtype=torch.int64)), TypeError, "in_mask must be a bool"
    ),
    "in_mask-batch": (set_arg("in_mask", lambda: torch.ones(3, 4, dtype=torch.bool)), ValueError, "in_mask must be"),
    "block-8": (set_arg("block", 8), ValueError, r"block must be one of \(16, 32, 64, 128\)"),
    "block-bool": (set_arg("block", True), TypeError, "block must be an int"),
}  # fmt: skip


def call_sparse(fn: Callable[..., object], args: dict[str, object]) -> object:
    args = dict(args)
    return fn(args.pop("x"), args.pop("weight"), args.pop("out_mask"), args.pop("in_mask"), **args)


ENTRY_POINTS = {
    "kernel": kernels.channel_sparse_conv2d_triton,
    "op": kernels.channel_sparse_conv2d,
    "reference": kernels.channel_sparse_conv2d_reference,
}


@pytest.mark.parametrize("fn", list(ENTRY_POINTS))
@pytest.mark.parametrize("case", SPARSE_BAD_ARGS, ids=str)
def test_bad_arguments_raise_the_policy_error_naming_them(fn: str, case: str) -> None:
    mutate, error, message = SPARSE_BAD_ARGS[case]
    args = sparse_args()
    mutate(args)
    with pytest.raises(error, match=message):
        call_sparse(ENTRY_POINTS[fn], args)


def test_kernel_rejects_float64_and_cpu_without_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    args = {k: v.double() if v.is_floating_point() else v for k, v in sparse_args().items()}
    with pytest.raises(NotImplementedError, match="float64"):
        call_sparse(kernels.channel_sparse_conv2d_triton, args)
    assert call_sparse(kernels.channel_sparse_conv2d, args).dtype == torch.float64
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(NotImplementedError, match="CUDA tensor"):
        call_sparse(kernels.channel_sparse_conv2d_triton, sparse_args())


def test_without_triton_the_op_runs_its_reference() -> None:
    script = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, kernels\n"
        "assert not hasattr(kernels, 'channel_sparse_conv2d_triton')\n"
        "x, w, m = torch.ones(2, 3, 4, 4), torch.ones(8, 3, 1, 1), torch.tensor([[True] * 8, [False] * 8])\n"
        "print(kernels.channel_sparse_conv2d(x, w, m).sum().item())\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert float(done.stdout) == 8 * 16 * 3.0


# --------------------------------------------------------- CUDA-only properties
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs and sync checks need a GPU")
def test_cuda_graph_capture_without_host_sync_and_replay_with_new_masks() -> None:
    gen = torch.Generator().manual_seed(5)
    x = rand((4, 64, 14, 14), torch.bfloat16, gen).cuda().contiguous(memory_format=torch.channels_last)
    w = kernels.pack_weight(rand((96, 64, 3, 3), torch.bfloat16, gen, std=0.05).cuda())
    out_mask, in_mask = _groups(4, 96, gen).cuda(), _groups(4, 64, gen).cuda()

    def call() -> tuple[torch.Tensor, torch.Tensor]:
        return kernels.channel_sparse_conv2d(x, w, out_mask, in_mask, padding=1, return_counters=True)

    call()  # warm-up: compilation
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        call()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, counters = call()
    out_mask.copy_(_groups(4, 96, gen).cuda())
    in_mask.copy_(_groups(4, 64, gen).cuda())
    graph.replay()
    torch.cuda.synchronize()
    expected = kernels.channel_sparse_conv2d_reference(x, w, out_mask, in_mask, padding=1)
    torch.testing.assert_close(out, expected, rtol=2e-2, atol=2e-2)
    predicted = channel_sparse_counters(out_mask, in_mask, 64, (3, 3), (14, 14))
    assert counters.tolist() == predicted.tolist()


def test_kernel_compiles_for_hopper_with_tensor_cores(tmp_path: Path) -> None:
    common = {"KH": 3, "KW": 3, "BLOCK_M": 64, "BLOCK_C": 16, "GROUP": 8, "HAS_IN_MASK": True, "HAS_SCALE": True,
              "HAS_SHIFT": True, "HAS_RESIDUAL": True, "RELU": True, "COUNT": True, "UPCAST_DOT": False}  # fmt: skip
    masks = {"out_mask_ptr": "*u8", "in_mask_ptr": "*u8", "out_order_ptr": "*i32", "out_count_ptr": "*i32",
             "in_order_ptr": "*i32", "in_count_ptr": "*i32", "counters_ptr": "*i64"}  # fmt: skip
    variants = [
        (masks | {name: f"*{dtype}" for name in ("x_ptr", "w_ptr", "y_ptr", "res_ptr")},
         common | {"DOT_PRECISION": precision})
        for dtype, precision in (("bf16", "tf32"), ("fp32", "ieee"))
    ]  # fmt: skip
    compiled = compile_for_hopper("kernels.channel_sparse_conv2d", "_channel_sparse_conv2d_kernel", variants, tmp_path)
    assert compiled == [True, False]  # bf16 on tensor cores; fp32 with IEEE precision runs exact FMAs


# ------------------------------------------------------- the runtime-gated layer
def runtime_layer(
    dtype: torch.dtype = torch.float64, *, bn: bool = True, bias: bool = True, pruner: str = "unified",
    predictor: bool = True, c_in: int = 24, c_out: int = 40, **conv: object,
) -> RuntimeGatedConv2d:  # fmt: skip
    """An eval-mode runtime gate with non-trivial BN statistics and (``predictor``) a runtime predictor."""
    torch.manual_seed(0)
    conv_args_ = {"kernel_size": 3, "padding": 1} | conv
    layer = RuntimeGatedConv2d(
        nn.Conv2d(c_in, c_out, bias=bias, dtype=dtype, **conv_args_),
        nn.BatchNorm2d(c_out, dtype=dtype) if bn else None,
        pruner=pruner, runtime_ratio=0.5,
    )  # fmt: skip
    with torch.no_grad():
        if bn:
            layer.bn.running_mean.uniform_(-0.5, 0.5)
            layer.bn.running_var.uniform_(0.5, 2.0)
            layer.bn.weight.uniform_(0.5, 1.5)
            layer.bn.bias.uniform_(-0.2, 0.2)
        if predictor:
            layer.predictor.weight.normal_(0, 1)
    layer.set_keep_ratio(0.5)
    return layer.eval()


def _input(layer: RuntimeGatedConv2d, n: int = 3, size: int = 9) -> torch.Tensor:
    x = torch.randn(n, layer.in_channels, size, size, dtype=layer.weight.dtype)
    x[0, :8] = 0  # whole zero input channels, as a previous gate leaves them
    return x


@pytest.mark.parametrize("bn, bias, pruner", [(True, True, "unified"), (False, True, "unified"),
                                              (True, False, "tradeoff"), (False, False, "tradeoff")])  # fmt: skip
def test_runtime_inference_equals_the_eval_layer(bn: bool, bias: bool, pruner: str) -> None:
    layer = runtime_layer(bn=bn, bias=bias, pruner=pruner, stride=2)
    fused = RuntimeConvInference.from_runtime(layer, count_work=True)
    x = _input(layer)
    with torch.no_grad():
        expected, got = layer(x), fused(x)
    assert torch.equal(fused.last_masks, layer.last_masks)
    assert torch.equal(fused.last_active_inputs, layer.last_active_inputs)
    assert 0 < layer.density() < 1
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    assert fused.last_counters.tolist() == channel_sparse_counters(
        layer.last_masks, layer.last_active_inputs, 24, (3, 3), tuple(expected.shape[2:])
    ).tolist()


def test_runtime_inference_follows_set_keep_ratio_and_force_open() -> None:
    layer = runtime_layer()
    fused = RuntimeConvInference.from_runtime(layer)
    x = _input(layer)
    for ratio in (0.25, torch.tensor([1.0, 0.2, 0.6], dtype=torch.float64), 0.75):
        layer.set_keep_ratio(ratio)
        with torch.no_grad():
            expected, got = layer(x), fused(x)
        assert torch.equal(fused.last_masks, layer.last_masks)
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    assert fused.last_masks.sum(dim=1).tolist() == [32, 32, 32]  # 0.75 * 40 = 30, rounded up to groups of 8
    layer.force_open = True
    with torch.no_grad():
        torch.testing.assert_close(fused(x), layer(x), rtol=1e-10, atol=1e-10)
    assert bool(fused.last_masks.all())
    layer.force_open = False
    layer.set_keep_ratio(torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="2 per-input keep ratios for a batch of 3"):
        fused(x)


def test_runtime_inference_with_residual_relu_and_the_previous_layers_masks() -> None:
    layer = runtime_layer(kernel_size=1, padding=0)
    fused = RuntimeConvInference.from_runtime(layer, relu=True)
    x = _input(layer)
    previous = torch.rand(3, 24) < 0.5
    x = x * previous[:, :, None, None]
    residual = torch.randn(3, 40, 9, 9, dtype=torch.float64)
    with torch.no_grad():
        expected = torch.relu(layer(x) + residual)
        got = fused(x, residual=residual, in_mask=previous)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    assert torch.equal(fused.last_active_inputs, previous)


def test_runtime_inference_compiles_fullgraph_with_the_layers_mask_rule() -> None:
    fused = RuntimeConvInference.from_runtime(runtime_layer(), relu=True)
    x = _input(fused.gate)
    counter = CompileCounterWithBackend("aot_eager")  # AOT tracing runs the fake implementation
    compiled = torch.compile(fused, backend=counter, fullgraph=True)
    with torch.no_grad():
        assert torch.equal(compiled(x), fused(x)) and counter.frame_count == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_folded_layer_through_the_triton_kernel_matches_the_layer(dtype: torch.dtype) -> None:
    """The kernel itself (interpreter on CPU) on the folded layer, against the float32 layer at dtype's tolerance.

    The predictor keeps its initial weight 0, so the masks are the static ranking and do not depend on rounding.
    """
    layer = runtime_layer(torch.float32, predictor=dtype == torch.float32, c_in=32, c_out=24)
    x = _input(layer, n=2, size=6)
    with torch.no_grad():
        expected = layer(x).double()
        pruned_in = layer.last_active_inputs
    folded = fold_runtime_conv(layer, dtype)
    got = kernels.channel_sparse_conv2d_triton(
        x.to(dtype).to(DEVICE), folded.weight, layer.last_masks.to(DEVICE), pruned_in.to(DEVICE),
        scale=folded.scale.to(DEVICE), shift=folded.shift.to(DEVICE), padding=folded.padding,
    ).cpu()  # fmt: skip
    tol = {torch.float32: 1e-4, torch.bfloat16: 5e-2}[dtype]
    torch.testing.assert_close(got.double(), expected, rtol=tol, atol=tol)
    assert bool((got[~layer.last_masks] == 0).all())


def test_fold_runtime_conv_checks_its_layer() -> None:
    with pytest.raises(TypeError, match="needs a RuntimeGatedConv2d, got ChannelGatedConv2d"):
        fold_runtime_conv(ChannelGatedConv2d(8, 8, 3))
    layer = runtime_layer()
    layer.bn = nn.BatchNorm2d(40, track_running_stats=False, dtype=torch.float64)
    with pytest.raises(ValueError, match="RuntimeGatedConv2d: bn, the BatchNorm to fold, tracks no running"):
        fold_runtime_conv(layer)
    folded = fold_runtime_conv(runtime_layer(torch.float32), torch.bfloat16)
    assert folded.weight.dtype == torch.bfloat16 and folded.scale.dtype == torch.float32
