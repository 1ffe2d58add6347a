"""Dense Triton conv (launch function ``kernels.conv2d_triton``) against its float64 reference; argument checks.

The Triton kernel runs on CUDA when there is one, else on CPU through the
Triton interpreter (``tests/conftest.py``); the registered op and its wrapper
``kernels.conv2d`` are checked in ``test_library.py``. Tolerance and poisoned
outputs: see ``tests/_helpers.py``.
"""

from __future__ import annotations

import subprocess
import sys
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
from kernels import conv_output_size


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
    common = {"KH": 3, "KW": 3, "BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "HAS_SCALE": True,
              "HAS_SHIFT": True, "HAS_RESIDUAL": True, "RELU": True, "UPCAST_DOT": False}  # fmt: skip
    tensors = ("x_ptr", "w_ptr", "y_ptr", "res_ptr")
    variants = [
        ({name: f"*{dtype}" for name in tensors}, common | {"DOT_PRECISION": precision})
        for dtype, precision in (("bf16", "tf32"), ("fp16", "tf32"), ("fp32", "ieee"))
    ]
    # bf16/fp16 dots run on tensor cores; fp32 with IEEE precision runs exact FMAs.
    assert compile_for_hopper("kernels.conv2d", "_conv2d_kernel", variants, tmp_path) == [True, True, False]


@pytest.mark.parametrize(
    "name",
    ["conv2d", "conv2d_reference", "conv2d_triton", "gated_conv2d", "gated_conv2d_reference", "gated_conv2d_triton"],
)
def test_grouped_convolution_is_refused_by_name(name):
    x, w = torch.randn(1, 8, 5, 5), torch.randn(8, 4, 3, 3)
    gate = (torch.ones(8), torch.zeros(8)) if name.startswith("gated") else ()
    with pytest.raises(NotImplementedError, match="groups=2"):
        getattr(kernels, name)(x, w, *gate, groups=2)
