"""Dense Triton conv (``kernels.conv2d``) against its float64 reference, and argument checking.

Tolerance (used by both kernel test modules): inputs are drawn at the kernel's
dtype, then the reference runs twice on CPU on those same values: in float64
(the truth) and at the kernel's dtype (PyTorch's own error for the same math,
``err``). The kernel passes when

    max|kernel - truth| <= 4*err + (eps + eps32*sqrt(K)) * max|truth|

with ``eps`` the machine epsilon of the kernel's dtype (one rounding of the
largest output) and ``eps32*sqrt(K)`` the typical float32 accumulation error
over ``K = C_in*kh*kw`` terms: the kernel accumulates in float32 in another
order than PyTorch, so where PyTorch's own error is a single rounding (float32)
this floor keeps the test from demanding more than float32 summation gives.
Outputs are poisoned (every
``torch.empty`` is filled with NaN, or 0x5A for integers) so an element the
kernel fails to write is caught.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import kernels

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
ROOT = Path(__file__).resolve().parents[1]
# Kernels run on CUDA when there is one (compiled), else on CPU through the interpreter (conftest).
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def to_device(value: object) -> object:
    """Tensors moved to :data:`DEVICE` (other values unchanged)."""
    return value.to(DEVICE) if isinstance(value, torch.Tensor) else value
HYPOTHESIS = settings(deadline=None, derandomize=True, database=None)


def out_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Output length of a convolution along one spatial dimension."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


@contextlib.contextmanager
def poisoned_empty() -> Iterator[None]:
    """Within the block, ``torch.empty`` returns NaN-filled (floats) or 0x5A-filled (integers) tensors."""
    real_empty = torch.empty

    def empty(*args: object, **kwargs: object) -> torch.Tensor:
        t = real_empty(*args, **kwargs)
        if t.dtype == torch.bool:
            return t.fill_(True)
        return t.fill_(float("nan") if t.is_floating_point() else 0x5A)

    with mock.patch.object(torch, "empty", empty):
        yield


def assert_matches(out: torch.Tensor, truth: torch.Tensor, at_dtype: torch.Tensor, terms: int) -> None:
    """``out`` (kernel) close to ``truth`` by PyTorch's error ``|at_dtype - truth|`` over ``terms`` (module doc)."""
    assert out.dtype == at_dtype.dtype and out.shape == truth.shape
    assert out.is_contiguous(memory_format=torch.channels_last)
    err = (at_dtype.double() - truth).abs().max().item()
    floor = torch.finfo(out.dtype).eps + torch.finfo(torch.float32).eps * terms**0.5
    tol = 4 * err + floor * truth.abs().max().item()
    diff = (out.double() - truth).abs().max().item()
    assert diff <= tol, f"max error {diff:.3g} > tolerance {tol:.3g} (PyTorch's error {err:.3g})"


def rand(shape: tuple[int, ...], dtype: torch.dtype, gen: torch.Generator, std: float = 1.0) -> torch.Tensor:
    """Normal values with standard deviation ``std``, rounded to ``dtype``."""
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * std).to(dtype)


def as_float64(value: object) -> object:
    """Tensors in float64 (bool tensors and other values unchanged)."""
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.double()
    return value


def run_against_reference(
    kernel: Callable[..., object], reference: Callable[..., object], *args: torch.Tensor, **kwargs: object
) -> object:
    """Run ``kernel`` on DEVICE with poisoned outputs; return (its result on CPU, truth, reference at its dtype)."""
    with poisoned_empty():
        result = kernel(*map(to_device, args), **{k: to_device(v) for k, v in kwargs.items()}).cpu()
    truth = reference(*[as_float64(a) for a in args], **{k: as_float64(v) for k, v in kwargs.items()})
    at_dtype = reference(*args, **kwargs)
    return result, truth, at_dtype


def draw_geometry(draw: st.DrawFn, max_size: int) -> dict[str, int]:
    """Kernel 1/3/5, stride 1/2, dilation 1/2, padding and an input size (odd ones too) that fits them."""
    kernel = draw(st.sampled_from([1, 3, 5]))
    dilation = draw(st.sampled_from([1, 2]))
    span = dilation * (kernel - 1) + 1
    padding = draw(st.integers(0, span // 2))
    smallest = max(1, span - 2 * padding)
    return {
        "kernel": kernel,
        "stride": draw(st.sampled_from([1, 2])),
        "padding": padding,
        "dilation": dilation,
        "height": draw(st.integers(smallest, max_size)),
        "width": draw(st.integers(smallest, max_size)),
    }


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
        out_hw = [out_size(size, k, case["stride"], case["padding"], case["dilation"]) for size in x.shape[2:]]
        conv |= {
            "scale": rand((case["c_out"],), torch.float32, gen).abs() + 0.5,
            "shift": rand((case["c_out"],), torch.float32, gen),
            "residual": rand((case["batch"], case["c_out"], *out_hw), dtype, gen),
            "relu": True,
        }
    out, truth, at_dtype = run_against_reference(kernels.conv2d, kernels.conv2d_reference, x, weight, **conv)
    assert_matches(out, truth, at_dtype, case["c_in"] * k * k)


def test_input_layouts_and_packed_weight_give_identical_results() -> None:
    gen = torch.Generator().manual_seed(1)
    x = rand((2, 24, 10, 8), torch.float16, gen).to(DEVICE)
    weight = rand((17, 12, 3, 3), torch.float16, gen, std=0.1).to(DEVICE)
    conv = {"padding": (1, 0), "stride": (2, 1)}
    expected = kernels.conv2d(x[:, ::2], weight, **conv)
    for variant in (x[:, ::2].contiguous(), x[:, ::2].contiguous(memory_format=torch.channels_last)):
        assert torch.equal(kernels.conv2d(variant, kernels.pack_weight(weight), **conv), expected)
    assert expected.is_contiguous(memory_format=torch.channels_last)


def test_strided_residual_and_channel_vectors() -> None:
    gen = torch.Generator().manual_seed(2)
    x = rand((2, 8, 6, 6), torch.float32, gen)
    weight = rand((16, 8, 1, 1), torch.float32, gen)
    residual = rand((2, 16, 6, 6), torch.float32, gen)
    scale, shift = rand((32,), torch.float32, gen)[::2], rand((16, 2), torch.float32, gen)[:, 1]
    for layout in (residual.contiguous(), residual.contiguous(memory_format=torch.channels_last)):
        out, truth, at_dtype = run_against_reference(
            kernels.conv2d, kernels.conv2d_reference, x, weight, scale=scale, shift=shift, residual=layout, relu=True
        )
        assert_matches(out, truth, at_dtype, 8)


def test_empty_batch_returns_empty_output() -> None:
    x = torch.zeros(0, 5, 7, 7, dtype=torch.bfloat16, device=DEVICE)
    out = kernels.conv2d(x, torch.zeros(9, 5, 3, 3, dtype=torch.bfloat16, device=DEVICE), stride=2)
    assert out.shape == (0, 9, 3, 3) and out.dtype == torch.bfloat16


def test_pack_weight_layout_and_checks() -> None:
    weight = torch.randn(6, 4, 3, 2)
    packed = kernels.pack_weight(weight)
    assert packed.data.shape == (3, 2, 4, 6) and packed.data.is_contiguous()
    assert packed.shape == weight.shape and torch.equal(packed.unpack(), weight)
    with pytest.raises(ValueError, match="weight"):
        kernels.pack_weight(torch.randn(6, 4, 3))
    with pytest.raises(ValueError, match="weight"):
        kernels.pack_weight(torch.ones(6, 4, 3, 3, dtype=torch.int32))
    with pytest.raises(ValueError, match="contiguous"):
        kernels.PackedWeight(weight.transpose(0, 3))


def conv_args() -> dict[str, object]:
    """A valid fp32 conv call: x [2, 4, 6, 6], weight [8, 4, 3, 3], output [2, 8, 4, 4]."""
    return {"x": torch.randn(2, 4, 6, 6), "weight": torch.randn(8, 4, 3, 3)}


def set_arg(key: str, value: object) -> Callable[[dict[str, object]], None]:
    return lambda args: args.__setitem__(key, value() if callable(value) else value)


META = torch.device("meta")

# (mutation of a valid call, expected message fragment naming the argument), all ValueError.
COMMON_BAD_ARGS = {
    "x-3d": (set_arg("x", lambda: torch.randn(4, 6, 6)), "x must be a 4-D"),
    "x-int": (set_arg("x", lambda: torch.ones(2, 4, 6, 6, dtype=torch.int64)), "x must be floating"),
    "weight-3d": (set_arg("weight", lambda: torch.randn(8, 4, 3)), "weight must be a 4-D"),
    "c_in": (set_arg("weight", lambda: torch.randn(8, 5, 3, 3)), "weight has C_in=5"),
    "weight-dtype": (set_arg("weight", lambda: torch.randn(8, 4, 3, 3, dtype=torch.float16)), "weight dtype"),
    "weight-device": (set_arg("weight", lambda: torch.randn(8, 4, 3, 3, device=META)), "weight is on meta"),
    "stride": (set_arg("stride", 0), "stride"),
    "stride-pair": (set_arg("stride", (1, 2, 3)), "stride"),
    "padding": (set_arg("padding", -1), "padding"),
    "dilation": (set_arg("dilation", (1, 0)), "dilation"),
    "too-small": (set_arg("dilation", 4), "x spatial size"),
    "scale-shape": (set_arg("scale", lambda: torch.ones(7)), "scale must be"),
    "scale-device": (set_arg("scale", lambda: torch.ones(8, device=META)), "scale is on meta"),
    "shift-shape": (set_arg("shift", lambda: torch.ones(8, 1)), "shift must be"),
    "shift-device": (set_arg("shift", lambda: torch.ones(8, device=META)), "shift is on meta"),
    "residual-shape": (set_arg("residual", lambda: torch.ones(2, 8, 6, 6)), "residual must have shape"),
    "residual-dtype": (set_arg("residual", lambda: torch.ones(2, 8, 4, 4, dtype=torch.float64)), "residual dtype"),
    "residual-device": (set_arg("residual", lambda: torch.ones(2, 8, 4, 4, device=META)), "residual is on meta"),
}


def call_conv(fn: Callable[..., object], args: dict[str, object]) -> object:
    args = dict(args)
    return fn(args.pop("x"), args.pop("weight"), **args)


@pytest.mark.parametrize("fn", [kernels.conv2d, kernels.conv2d_reference], ids=["kernel", "reference"])
@pytest.mark.parametrize("case", COMMON_BAD_ARGS, ids=str)
def test_bad_arguments_raise_value_error_naming_them(fn: Callable[..., object], case: str) -> None:
    mutate, message = COMMON_BAD_ARGS[case]
    args = conv_args()
    mutate(args)
    with pytest.raises(ValueError, match=message):
        call_conv(fn, args)


def test_kernel_rejects_float64_but_reference_accepts_it() -> None:
    args = {k: v.double() for k, v in conv_args().items()}
    with pytest.raises(NotImplementedError, match="float64"):
        call_conv(kernels.conv2d, args)
    assert call_conv(kernels.conv2d_reference, args).dtype == torch.float64


def test_cpu_tensor_without_interpreter_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="CUDA tensor.*kernels.reference"):
        call_conv(kernels.conv2d, conv_args())


def test_references_import_without_triton() -> None:
    script = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, kernels\n"
        "assert not kernels.TRITON_AVAILABLE and not hasattr(kernels, 'conv2d')\n"
        "print(kernels.conv2d_reference(torch.ones(1, 2, 3, 3), torch.ones(4, 2, 1, 1)).sum().item())\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert float(done.stdout) == 72.0


_HOPPER_COMPILE = """
import importlib, json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
spec = json.loads(sys.argv[1])
fn = getattr(importlib.import_module(spec["module"]), spec["kernel"])
for pointers, constexprs in spec["variants"]:
    signature = {
        name: "constexpr" if name in constexprs else pointers.get(name, "*fp32") if name.endswith("_ptr") else "i32"
        for name in fn.arg_names
    }
    source = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4, "num_stages": 3})
    print("mma" in compiled.asm["ptx"])
"""


def compile_for_hopper(
    module: str, kernel: str, variants: list[tuple[dict[str, str], dict[str, object]]], cache: Path
) -> list[bool]:
    """Compile ``module.kernel`` to sm_90 PTX/cubin, without a GPU, per (pointer types, constexprs) variant.

    Runs in a subprocess without ``TRITON_INTERPRET`` so ``triton.jit`` builds
    the real compiler path that the interpreter never exercises (pointers not
    named are ``*fp32``, other arguments ``i32``); returns, per variant, whether
    its ``tl.dot`` lowered to tensor-core MMA instructions.
    """
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env |= {"TRITON_CACHE_DIR": str(cache), "TRITON_DEFAULT_FP_FUSION": "1"}
    spec = json.dumps({"module": module, "kernel": kernel, "variants": variants})
    done = subprocess.run(
        [sys.executable, "-c", _HOPPER_COMPILE, spec], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return [line == "True" for line in done.stdout.split()]


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


@pytest.mark.parametrize("name", ["conv2d", "conv2d_reference", "gated_conv2d", "gated_conv2d_reference"])
def test_grouped_convolution_is_refused_by_name(name):
    x, w = torch.randn(1, 8, 5, 5), torch.randn(8, 4, 3, 3)
    gate = (torch.ones(8), torch.zeros(8)) if name.startswith("gated") else ()
    with pytest.raises(NotImplementedError, match="groups=2"):
        getattr(kernels, name)(x, w, *gate, groups=2)
