"""Helpers shared by the test modules: devices, tolerances, poisoned outputs, random inputs, bad-argument tables.

Tolerance (:func:`assert_matches`): inputs are drawn at the kernel's dtype,
then the reference runs twice on CPU on those same values: in float64 (the
truth) and at the kernel's dtype (PyTorch's own error for the same math,
``err``). The kernel passes when

    max|kernel - truth| <= 4*err + (eps + eps32*sqrt(K)) * max|truth|

with ``eps`` the machine epsilon of the kernel's dtype (one rounding of the
largest output) and ``eps32*sqrt(K)`` the typical float32 accumulation error
over ``K = C_in*kh*kw`` terms: the kernel accumulates in float32 in another
order than PyTorch, so where PyTorch's own error is a single rounding (float32)
this floor keeps the test from demanding more than float32 summation gives.
Outputs are poisoned (:func:`poisoned_empty`: every ``torch.empty`` is filled
with NaN, or 0x5A for integers) so an element the kernel fails to write is
caught.
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

import torch
from hypothesis import settings
from hypothesis import strategies as st

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
ROOT = Path(__file__).resolve().parents[1]
# Kernels run on CUDA when there is one (compiled), else on CPU through the interpreter (conftest).
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# Devices the registered ops are checked on: CPU (reference) always, CUDA (Triton) when present.
OP_DEVICES = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)
HYPOTHESIS = settings(deadline=None, derandomize=True, database=None)
META = torch.device("meta")


def to_device(value: object) -> object:
    """Tensors moved to :data:`DEVICE` (other values unchanged)."""
    return value.to(DEVICE) if isinstance(value, torch.Tensor) else value


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


def conv_args() -> dict[str, object]:
    """A valid fp32 conv call: x [2, 4, 6, 6], weight [8, 4, 3, 3], output [2, 8, 4, 4]."""
    return {"x": torch.randn(2, 4, 6, 6), "weight": torch.randn(8, 4, 3, 3)}


def set_arg(key: str, value: object) -> Callable[[dict[str, object]], None]:
    """A mutation of a call's argument dict: ``args[key] = value`` (``value()`` when callable)."""
    return lambda args: args.__setitem__(key, value() if callable(value) else value)


# (mutation of a valid conv_args() call, exception type of the policy, message fragment naming the argument).
COMMON_BAD_ARGS: dict[str, tuple[Callable[[dict[str, object]], None], type[Exception], str]] = {
    "x-list": (set_arg("x", [[1.0]]), TypeError, "x must be a torch.Tensor"),
    "x-3d": (set_arg("x", lambda: torch.randn(4, 6, 6)), ValueError, "x must be a 4-D"),
    "x-int": (set_arg("x", lambda: torch.ones(2, 4, 6, 6, dtype=torch.int64)), TypeError, "x must be floating"),
    "weight-list": (set_arg("weight", [1.0]), TypeError, "weight must be a tensor"),
    "weight-3d": (set_arg("weight", lambda: torch.randn(8, 4, 3)), ValueError, "weight must be a 4-D"),
    "c_in": (set_arg("weight", lambda: torch.randn(8, 5, 3, 3)), ValueError, "weight has C_in=5"),
    "weight-dtype": (
        set_arg("weight", lambda: torch.randn(8, 4, 3, 3, dtype=torch.float16)), TypeError, "weight dtype"
    ),
    "weight-device": (
        set_arg("weight", lambda: torch.randn(8, 4, 3, 3, device=META)), ValueError, "weight is on meta"
    ),
    "stride": (set_arg("stride", 0), ValueError, "stride"),
    "stride-pair": (set_arg("stride", (1, 2, 3)), ValueError, "stride"),
    "stride-bool": (set_arg("stride", True), TypeError, "stride"),
    "stride-float": (set_arg("stride", (1, 1.5)), TypeError, "stride"),
    "padding": (set_arg("padding", -1), ValueError, "padding"),
    "dilation": (set_arg("dilation", (1, 0)), ValueError, "dilation"),
    "too-small": (set_arg("dilation", 4), ValueError, "x spatial size"),
    "scale-shape": (set_arg("scale", lambda: torch.ones(7)), ValueError, "scale must be"),
    "scale-int": (set_arg("scale", lambda: torch.ones(8, dtype=torch.int32)), TypeError, "scale must be"),
    "scale-device": (set_arg("scale", lambda: torch.ones(8, device=META)), ValueError, "scale is on meta"),
    "shift-shape": (set_arg("shift", lambda: torch.ones(8, 1)), ValueError, "shift must be"),
    "shift-device": (set_arg("shift", lambda: torch.ones(8, device=META)), ValueError, "shift is on meta"),
    "residual-shape": (set_arg("residual", lambda: torch.ones(2, 8, 6, 6)), ValueError, "residual must have shape"),
    "residual-dtype": (
        set_arg("residual", lambda: torch.ones(2, 8, 4, 4, dtype=torch.float64)), TypeError, "residual dtype"
    ),
    "residual-device": (
        set_arg("residual", lambda: torch.ones(2, 8, 4, 4, device=META)), ValueError, "residual is on meta"
    ),
    "groups": (set_arg("groups", 2), NotImplementedError, "groups=2"),
}


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


def fake_image_folder(root: Path, classes: tuple[str, ...] = ("cat", "dog", "eel")) -> Path:
    """Write ``root/{train,val}/<class>/{0,1}.png``: two random 20x28 RGB images per class and split."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for i in range(2):
                pixels = rng.integers(0, 256, size=(20, 28, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for a torch.distributed rendezvous)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
