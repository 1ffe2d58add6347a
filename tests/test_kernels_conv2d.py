"""Dense Triton conv (launch function ``kernels.conv2d_triton``) against its float64 reference; argument checks.

The Triton kernel runs on CUDA when there is one, else on CPU through the
Triton interpreter (``tests/conftest.py``); the registered op and its wrapper
``kernels.conv2d`` are checked in ``test_library.py``. Tolerance and poisoned
outputs: see ``tests/_helpers.py``.
"""

from __future__ import annotations

import dataclasses
import functools
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import kernels
from _helpers import (
    COMMON_BAD_ARGS,
    DEVICE,
    DTYPES,
    HYPOTHESIS,
    META,
    ROOT,
    as_float64,
    assert_matches,
    compile_for_hopper,
    conv_args,
    draw_geometry,
    poisoned_empty,
    rand,
    to_device,
)
from kernels import conv_output_size, conv_tuning
from kernels._validation import ConvGeometry, validate_conv
from kernels.conv_tuning import CANDIDATES, ConvTiling, conv_tiling


def run_against_reference(
    kernel: Callable[..., object], reference: Callable[..., object], *args: torch.Tensor, **kwargs: object
) -> object:
    """Run ``kernel`` on DEVICE with poisoned outputs; return (its result on CPU, truth, reference at its dtype)."""
    with poisoned_empty():
        result = kernel(*map(to_device, args), **{k: to_device(v) for k, v in kwargs.items()}).cpu()
    truth = reference(*[as_float64(a) for a in args], **{k: as_float64(v) for k, v in kwargs.items()})
    at_dtype = reference(*args, **kwargs)
    return result, truth, at_dtype


@st.composite
def conv_cases(draw: st.DrawFn) -> dict[str, object]:
    return {
        **draw_geometry(draw, 12),
        "batch": draw(st.integers(1, 3)),
        "c_in": draw(st.integers(1, 40)),
        "c_out": draw(st.integers(1, 40)),
        "dtype": draw(st.sampled_from(DTYPES)),
        "epilogue": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**16)),
    }


def _case(**overrides: object) -> dict[str, object]:
    base = {"batch": 2, "c_in": 19, "c_out": 21, "kernel": 3, "stride": 1, "padding": 1, "dilation": 1,
            "height": 9, "width": 7, "dtype": torch.float32, "epilogue": True, "seed": 0}  # fmt: skip
    return base | overrides


@settings(HYPOTHESIS, max_examples=60)
@given(case=conv_cases())
@example(case=_case())
@example(case=_case(dtype=torch.bfloat16, stride=2, height=11, width=9))
@example(case=_case(dtype=torch.float16, kernel=5, padding=2, batch=3, c_in=33, c_out=40))
@example(case=_case(dtype=torch.bfloat16, kernel=3, dilation=2, padding=2, batch=1, epilogue=False))
@example(case=_case(kernel=1, padding=0, c_in=40, c_out=37, stride=2, height=5, width=5))
@example(case=_case(dtype=torch.float16, kernel=1, padding=0, c_in=1, c_out=1, height=1, width=1, batch=1))
def test_conv2d_matches_reference(case: dict[str, object]) -> None:
    gen = torch.Generator().manual_seed(case["seed"])
    dtype, k = case["dtype"], case["kernel"]
    x = rand((case["batch"], case["c_in"], case["height"], case["width"]), dtype, gen)
    weight = rand((case["c_out"], case["c_in"], k, k), dtype, gen, std=(case["c_in"] * k * k) ** -0.5)
    conv = {"stride": case["stride"], "padding": case["padding"], "dilation": case["dilation"]}
    if case["epilogue"]:
        out_hw = [conv_output_size(size, k, case["stride"], case["padding"], case["dilation"]) for size in x.shape[2:]]
        conv |= {
            "scale": rand((case["c_out"],), torch.float32, gen).abs() + 0.5,
            "shift": rand((case["c_out"],), torch.float32, gen),
            "residual": rand((case["batch"], case["c_out"], *out_hw), dtype, gen),
            "relu": True,
        }
    out, truth, at_dtype = run_against_reference(kernels.conv2d_triton, kernels.conv2d_reference, x, weight, **conv)
    assert_matches(out, truth, at_dtype, case["c_in"] * k * k)


def test_input_layouts_and_packed_weight_give_identical_results() -> None:
    gen = torch.Generator().manual_seed(1)
    x = rand((2, 24, 10, 8), torch.float16, gen).to(DEVICE)
    weight = rand((17, 12, 3, 3), torch.float16, gen, std=0.1).to(DEVICE)
    conv = {"padding": (1, 0), "stride": (2, 1)}
    expected = kernels.conv2d_triton(x[:, ::2], weight, **conv)
    for variant in (x[:, ::2].contiguous(), x[:, ::2].contiguous(memory_format=torch.channels_last)):
        assert torch.equal(kernels.conv2d_triton(variant, kernels.pack_weight(weight), **conv), expected)
        unpacked_view = kernels.pack_weight(weight).unpack()
        assert torch.equal(kernels.conv2d_triton(variant, unpacked_view, **conv), expected)
    assert expected.is_contiguous(memory_format=torch.channels_last)


def test_strided_residual_and_channel_vectors() -> None:
    gen = torch.Generator().manual_seed(2)
    x = rand((2, 8, 6, 6), torch.float32, gen)
    weight = rand((16, 8, 1, 1), torch.float32, gen)
    residual = rand((2, 16, 6, 6), torch.float32, gen)
    scale, shift = rand((32,), torch.float32, gen)[::2], rand((16, 2), torch.float32, gen)[:, 1]
    for layout in (residual.contiguous(), residual.contiguous(memory_format=torch.channels_last)):
        out, truth, at_dtype = run_against_reference(
            kernels.conv2d_triton, kernels.conv2d_reference, x, weight,
            scale=scale, shift=shift, residual=layout, relu=True,
        )
        assert_matches(out, truth, at_dtype, 8)


@pytest.mark.parametrize("fn", [kernels.conv2d_triton, kernels.conv2d], ids=["kernel", "op"])
def test_empty_batch_returns_empty_output(fn: Callable[..., torch.Tensor]) -> None:
    x = torch.zeros(0, 5, 7, 7, dtype=torch.bfloat16, device=DEVICE)
    out = fn(x, torch.zeros(9, 5, 3, 3, dtype=torch.bfloat16, device=DEVICE), stride=2)
    assert out.shape == (0, 9, 3, 3) and out.dtype == torch.bfloat16


def test_pack_weight_layout_and_checks() -> None:
    weight = torch.randn(6, 4, 3, 2)
    packed = kernels.pack_weight(weight)
    assert packed.data.shape == (3, 2, 4, 6) and packed.data.is_contiguous()
    assert packed.shape == weight.shape and torch.equal(packed.unpack(), weight)
    with pytest.raises(ValueError, match="weight"):
        kernels.pack_weight(torch.randn(6, 4, 3))
    with pytest.raises(TypeError, match="weight"):  # an integer tensor is a wrong dtype: TypeError by the policy
        kernels.pack_weight(torch.ones(6, 4, 3, 3, dtype=torch.int32))
    with pytest.raises(ValueError, match="contiguous"):
        kernels.PackedWeight(weight.transpose(0, 3))


def call_conv(fn: Callable[..., object], args: dict[str, object]) -> object:
    args = dict(args)
    return fn(args.pop("x"), args.pop("weight"), **args)


ENTRY_POINTS = {"kernel": kernels.conv2d_triton, "op": kernels.conv2d, "reference": kernels.conv2d_reference}


@pytest.mark.parametrize("fn", list(ENTRY_POINTS))
@pytest.mark.parametrize("case", COMMON_BAD_ARGS, ids=str)
def test_bad_arguments_raise_the_policy_error_naming_them(fn: str, case: str) -> None:
    mutate, error, message = COMMON_BAD_ARGS[case]
    args = conv_args()
    mutate(args)
    with pytest.raises(error, match=message):
        call_conv(ENTRY_POINTS[fn], args)


def test_kernel_rejects_float64_but_reference_and_cpu_op_accept_it() -> None:
    args = {k: v.double() for k, v in conv_args().items()}
    with pytest.raises(NotImplementedError, match="float64"):
        call_conv(kernels.conv2d_triton, args)
    assert call_conv(kernels.conv2d_reference, args).dtype == torch.float64
    assert call_conv(kernels.conv2d, args).dtype == torch.float64


def test_cpu_tensor_without_interpreter_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CPU tensor is a configuration the Triton kernel does not support: NotImplementedError by the policy."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(NotImplementedError, match="CUDA tensor.*kernels.reference"):
        call_conv(kernels.conv2d_triton, conv_args())
    assert call_conv(kernels.conv2d, conv_args()).shape == (2, 8, 4, 4)  # the op runs the reference on CPU


def test_references_import_without_triton() -> None:
    """Without Triton the ops still exist and run their references; the Triton launch functions are not exported."""
    script = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, kernels\n"
        "assert not kernels.TRITON_AVAILABLE and not hasattr(kernels, 'conv2d_triton')\n"
        "assert not hasattr(kernels, 'gated_conv2d_triton')\n"
        "x, w = torch.ones(1, 2, 3, 3), torch.ones(4, 2, 1, 1)\n"
        "assert torch.equal(kernels.conv2d(x, w), kernels.conv2d_reference(x, w))\n"
        "print(kernels.conv2d_reference(x, w).sum().item())\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert float(done.stdout) == 72.0


def test_dense_kernel_compiles_for_hopper_with_tensor_cores(tmp_path: Path) -> None:
    common = {"KH": 3, "KW": 3, "BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 8, "HAS_SCALE": True,
              "HAS_SHIFT": True, "HAS_RESIDUAL": True, "RELU": True, "UPCAST_DOT": False}  # fmt: skip
    tensors = ("x_ptr", "w_ptr", "y_ptr", "res_ptr")
    variants = [
        ({name: f"*{dtype}" for name in tensors}, common | {"DOT_PRECISION": precision, "SPLIT_K": split_k})
        for dtype, precision, split_k in (("bf16", "tf32", 1), ("fp16", "tf32", 1), ("fp32", "ieee", 1),
                                          ("bf16", "tf32", 3))
    ]
    # bf16/fp16 dots run on tensor cores (also in a split-K program); fp32 with IEEE precision runs exact FMAs.
    compiled = compile_for_hopper("kernels.conv2d", "_conv2d_kernel", variants, tmp_path)
    assert compiled == [True, True, False, True]


@pytest.mark.parametrize(
    "name",
    ["conv2d", "conv2d_reference", "conv2d_triton", "gated_conv2d", "gated_conv2d_reference", "gated_conv2d_triton"],
)
def test_grouped_convolution_is_refused_by_name(name):
    x, w = torch.randn(1, 8, 5, 5), torch.randn(8, 4, 3, 3)
    gate = (torch.ones(8), torch.zeros(8)) if name.startswith("gated") else ()
    with pytest.raises(NotImplementedError, match="groups=2"):
        getattr(kernels, name)(x, w, *gate, groups=2)



# Launch configurations (kernels.conv_tuning): every candidate, split-K, grouped order, overrides, selection.

# (x shape, C_out, kernel, conv keywords, dtype, epilogue): 3x3 stride 2 with scale/shift/residual/relu (ragged
# channels), ragged 1x1 (90 pixels, 40 -> 37 channels), dilated 3x3 over 70 channels (2-5 K steps per tap).
TILING_SHAPES = (
    ((2, 19, 9, 7), 21, 3, {"stride": 2, "padding": 1}, torch.bfloat16, True),
    ((3, 40, 5, 6), 37, 1, {}, torch.float16, False),
    ((1, 70, 6, 5), 24, 3, {"padding": (1, 0), "dilation": (2, 1)}, torch.float32, True),
)


def tiling_case(index: int) -> tuple[tuple[torch.Tensor, ...], dict[str, object]]:
    """Inputs (x, weight) and keywords of ``TILING_SHAPES[index]``."""
    x_shape, c_out, k, conv, dtype, epilogue = TILING_SHAPES[index]
    gen = torch.Generator().manual_seed(index)
    x = rand(x_shape, dtype, gen)
    weight = rand((c_out, x_shape[1], k, k), dtype, gen, std=(x_shape[1] * k * k) ** -0.5)
    kwargs = dict(conv)
    if epilogue:
        out_shape = kernels.conv2d_reference(x[:1].double(), weight.double(), **conv).shape[1:]
        kwargs |= {
            "scale": rand((c_out,), torch.float32, gen).abs() + 0.5,
            "shift": rand((c_out,), torch.float32, gen),
            "residual": rand((x_shape[0], *out_shape), dtype, gen),
            "relu": True,
        }
    return (x, weight), kwargs


def assert_tiling_matches_reference(tiling: ConvTiling, index: int) -> torch.Tensor:
    """The kernel launched with ``tiling`` on ``TILING_SHAPES[index]`` against the float64 reference; its output."""
    (x, weight), kwargs = tiling_case(index)
    kernel = functools.partial(kernels.conv2d_triton, tiling=tiling)
    out, truth, at_dtype = run_against_reference(kernel, kernels.conv2d_reference, x, weight, **kwargs)
    assert_matches(out, truth, at_dtype, weight[0].numel())
    return out


@pytest.mark.parametrize("tiling", CANDIDATES, ids=str)
def test_every_candidate_tiling_matches_reference(tiling: ConvTiling) -> None:
    for index in range(len(TILING_SHAPES)):
        assert_tiling_matches_reference(tiling, index)


@pytest.mark.parametrize("split_k", [2, 3])
def test_split_k_matches_reference_and_is_deterministic(split_k: int) -> None:
    for index in range(len(TILING_SHAPES)):
        tiling = ConvTiling(32, 16, 16, 4, 2, group_m=2, split_k=split_k)
        out = assert_tiling_matches_reference(tiling, index)
        assert torch.equal(assert_tiling_matches_reference(tiling, index), out)  # fixed summation order


def test_split_k_with_one_step_per_split() -> None:
    """1x1 over 40 channels in 16-channel steps: 3 K steps, 3 splits."""
    assert_tiling_matches_reference(ConvTiling(64, 64, 16, 4, 2, split_k=3), 1)


def test_grouped_order_gives_the_same_output_as_channel_fastest_order() -> None:
    """6 pixel tiles x 3 channel blocks (x [1, 16, 9, 9], 3x3 to 40 channels, 16x16 tiles), groups of 1, 4, 32."""
    gen = torch.Generator().manual_seed(5)
    x = rand((1, 16, 9, 9), torch.float16, gen)
    weight = rand((40, 16, 3, 3), torch.float16, gen, std=0.1)
    outputs = [
        kernels.conv2d_triton(
            x.to(DEVICE), weight.to(DEVICE), padding=1, relu=True, tiling=ConvTiling(16, 16, 16, 4, 2, group_m=group)
        ).cpu()
        for group in (1, 4, 32)
    ]
    for out in outputs[1:]:
        assert torch.equal(out, outputs[0])
    truth = kernels.conv2d_reference(x.double(), weight.double(), padding=1, relu=True)
    assert_matches(outputs[0], truth, kernels.conv2d_reference(x, weight, padding=1, relu=True), 16 * 9)


def conv_geometry(x_shape: tuple[int, ...], w_shape: tuple[int, ...], padding: int = 0) -> ConvGeometry:
    """The checked geometry of a stride-1 conv of meta tensors of these shapes."""
    x, weight = torch.empty(x_shape, device=META), torch.empty(w_shape, device=META)
    return validate_conv(x, weight, stride=1, padding=padding, dilation=1, scale=None, shift=None, residual=None)


VALID_TILING = ConvTiling(64, 64, 32, 4, 3)
# conv_args(): 3x3 over C_in=4, so 9 K steps at any block_k.
BAD_TILINGS = {
    "not-a-tiling": ((64, 64, 32, 4, 3), TypeError, "tiling must be a kernels.conv_tuning.ConvTiling"),
    "float-field": (dataclasses.replace(VALID_TILING, block_k=32.0), TypeError, "tiling.block_k must be an int"),
    "block_m-not-power-of-2": (dataclasses.replace(VALID_TILING, block_m=48), ValueError, "tiling: block_m=48 must"),
    "block_n-not-power-of-2": (dataclasses.replace(VALID_TILING, block_n=24), ValueError, "tiling: block_n=24 must"),
    "block_k-below-16": (dataclasses.replace(VALID_TILING, block_k=8), ValueError, r"block_k=8 must .*\[16, 128\]"),
    "block_k-too-large": (dataclasses.replace(VALID_TILING, block_k=256), ValueError, r"block_k=256 must .*\[16, 128"),
    "block_m-too-large": (dataclasses.replace(VALID_TILING, block_m=512), ValueError, r"block_m=512 must .*\[16, 256"),
    "tile-too-large": (
        dataclasses.replace(VALID_TILING, block_m=256, block_n=256), ValueError, r"tiling: block_m\*block_n=65536"
    ),
    "num_warps": (dataclasses.replace(VALID_TILING, num_warps=3), ValueError, "tiling: num_warps=3 must be one of"),
    "num_stages": (dataclasses.replace(VALID_TILING, num_stages=0), ValueError, "tiling: num_stages=0 must be >= 1"),
    "group_m": (dataclasses.replace(VALID_TILING, group_m=0), ValueError, "tiling: group_m=0 must be >= 1"),
    "split_k-zero": (dataclasses.replace(VALID_TILING, split_k=0), ValueError, "tiling: split_k=0 must be >= 1"),
    "split_k-over-steps": (
        dataclasses.replace(VALID_TILING, split_k=10), ValueError, r"tiling: split_k=10 exceeds the 9 K steps"
    ),
}


@pytest.mark.parametrize("case", BAD_TILINGS, ids=str)
def test_bad_tiling_override_is_rejected_naming_tiling_and_the_reason(case: str) -> None:
    tiling, error, message = BAD_TILINGS[case]
    with pytest.raises(error, match=message):
        call_conv(kernels.conv2d_triton, conv_args() | {"tiling": tiling})


def test_selection_off_cuda_is_the_untimed_uncached_heuristic() -> None:
    geom = conv_geometry((2, 70, 9, 9), (24, 70, 3, 3), padding=1)

    def launch(tiling: ConvTiling) -> None:
        raise AssertionError("nothing is timed off CUDA")

    for device in ("cpu", "meta"):
        assert conv_tuning.select_tiling(geom, torch.float16, torch.device(device), launch) == conv_tiling(
            geom.pixels, 70, 24, taps=9
        )
        assert conv_tuning.cached_choice(geom, torch.float16, torch.device(device)) is None


def test_selection_on_cuda_times_once_per_key_and_never_while_capturing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA branch of ``select_tiling`` with the device and the timer replaced (no GPU needed)."""
    props = types.SimpleNamespace(multi_processor_count=4, shared_memory_per_block_optin=227 * 1024)
    monkeypatch.setattr(conv_tuning, "interpreting", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)
    capturing = [True]
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: capturing[0])
    timed: list[ConvTiling] = []
    # Fake timer: the fewest programs win, and split-K halves a candidate's time.
    monkeypatch.setattr(
        conv_tuning, "time_ms", lambda launch, t: timed.append(t) or 1.0 / (t.block_m * t.block_n * t.split_k)
    )
    conv_tuning.clear_choices()
    geom = conv_geometry((2, 70, 9, 9), (24, 70, 3, 3), padding=1)
    device = torch.device("cuda", 0)
    heuristic = conv_tuning.heuristic_tiling(geom, props.multi_processor_count)
    try:
        assert conv_tuning.select_tiling(geom, torch.float16, device, launch=None) == heuristic and not timed
        capturing[0] = False
        chosen = conv_tuning.select_tiling(geom, torch.float16, device, launch=None)
        assert timed == conv_tuning.candidates(geom, torch.float16, 4, props.shared_memory_per_block_optin)
        assert chosen == max(timed, key=lambda t: t.block_m * t.block_n * t.split_k) and chosen.split_k > 1
        timed.clear()
        capturing[0] = True  # a cached key keeps its timed choice under capture
        assert conv_tuning.select_tiling(geom, torch.float16, device, launch=None) == chosen and not timed
        other = conv_geometry((2, 70, 12, 12), (24, 70, 3, 3), padding=1)  # 288 pixels: the 512 bucket
        assert conv_tuning.cached_choice(other, torch.float16, device) is None
    finally:
        conv_tuning.clear_choices()


def test_candidates_fit_the_shape_and_pass_the_check() -> None:
    small = conv_geometry((1, 24, 7, 7), (40, 24, 1, 1))  # 49 pixels, C_in 24, C_out 40
    wide = conv_geometry((8, 256, 14, 14), (512, 256, 3, 3), padding=1)
    for geom in (small, wide):
        listed = conv_tuning.candidates(geom, torch.bfloat16, sm_count=132, shared_limit=227 * 1024)
        assert len(set(listed)) == len(listed) and conv_tuning.heuristic_tiling(geom, 132) in listed
        for tiling in listed:
            conv_tuning.check_tiling(tiling, geom)
    small_listed = conv_tuning.candidates(small, torch.bfloat16)
    assert {(t.block_m, t.block_k) for t in small_listed} == {(64, 32)}  # clamped to 64 rows, 32 channels
    assert max(t.block_n for t in small_listed) == 64
    assert all(t.split_k == 1 for t in small_listed)  # no SM count: no split-K
    wide_listed = conv_tuning.candidates(wide, torch.bfloat16, sm_count=132, shared_limit=227 * 1024)
    assert 64 in {t.block_k for t in wide_listed}
    for tiling in wide_listed:  # 1568 pixels: every tiling fills less than two waves of 132 SMs
        tiles = -(-1568 // tiling.block_m) * -(-512 // tiling.block_n)
        split = conv_tuning.split_k_rule(tiles, conv_tuning.k_step_count(wide, tiling.block_k), 132)
        assert split > 1 and tiling.split_k in (1, split)
        assert {dataclasses.replace(tiling, split_k=1), dataclasses.replace(tiling, split_k=split)} <= set(wide_listed)
    # float32 tiles take twice the shared memory: 128x256x64 over 3 stages (288 KiB) does not fit 227 KiB.
    assert all(t.block_n < 256 for t in conv_tuning.candidates(wide, torch.float32, shared_limit=227 * 1024))


def test_split_k_rule() -> None:
    assert conv_tuning.split_k_rule(tiles=264, k_steps=144, sm_count=132) == 1  # two full waves
    assert conv_tuning.split_k_rule(tiles=100, k_steps=144, sm_count=132) == 3
    assert conv_tuning.split_k_rule(tiles=16, k_steps=144, sm_count=132) == conv_tuning.MAX_SPLIT_K
    assert conv_tuning.split_k_rule(tiles=16, k_steps=9, sm_count=132) == 2  # at least 4 K steps a split
    assert conv_tuning.split_k_rule(tiles=1, k_steps=144, sm_count=None) == 1
