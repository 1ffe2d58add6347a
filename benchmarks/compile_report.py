"""What the compiler makes of the conv kernels for Hopper (sm_90), without a GPU.

    python -m benchmarks.compile_report [--models r50] [--batches 64 8] [--gate-group 16] [--gate-block 1]
                                        [--shapes NAME...] [--channel-sparse] [--dense-candidates [--sm-count N]]
                                        [--out FILE]

For every layer shape of the chosen models and batch, the project's own launch
functions (:func:`kernels.conv2d.conv2d`, :func:`kernels.gated_conv2d.gated_conv2d`,
default schedule; with ``--channel-sparse`` also
:func:`kernels.channel_sparse_conv2d.channel_sparse_conv2d`, keeping half of
the input and output channels; with ``--dense-candidates`` only the dense launch, once per
candidate tiling of :func:`kernels.conv_tuning.candidates` for the shape, split-K variants
included for a device of ``--sm-count`` SMs) are called on ``meta`` tensors with each Triton kernel's
launch replaced by a capture: the launch arguments go through Triton's own
argument binder (the same specialisation a CUDA launch gets: divisibility by
16, ints equal to 1) and are compiled for ``cuda:90``. Each distinct compiled
kernel is then measured with the tools Triton ships (``ptxas -v``,
``cuobjdump -sass``):

* ``registers``, ``spill_bytes`` (stores + loads), ``shared_bytes``;
* ``wgmma_n``: the N widths of the warpgroup MMAs (``wgmma.mma_async ...m64nN``;
  empty when the dots became ``mma.sync`` (``mma_sync``) instead);
* ``loads_16B``: 16-byte global loads (``LDGSTS``/``LDG`` ``.128``);
  ``loads_16bit_in_loops``: scalar 16-bit global loads inside a loop body;
* ``loops``: per backward-branch loop of the SASS, its instruction count and
  mix (tensor-core MMAs, global loads, async copies, integer ALU).

Every record names the launch it came from (model, shape, batch, kernel,
tiling constexprs). Results JSON (default
``benchmarks/results/compile_report_sm90.json``) with the Triton and torch
versions. Needs Triton's NVIDIA backend (bundled with the Linux wheel); no
GPU, and not under ``TRITON_INTERPRET=1`` (refused: the interpreter replaces
the kernels the report compiles).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from kernels import GateSpec

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_ARCH = 90
SM90_SHARED_BYTES = 227 * 1024  # opt-in shared memory of one block on H100/H200
LOOP_OPS = {
    "mma": r"\bHGMMA\b|\bHMMA\b",
    "global_loads": r"\bLDG\b",
    "async_copies": r"\bLDGSTS\b",
    "integer_alu": r"\b(?:IMAD|IADD3|LOP3|ISETP|SEL|SHF|LEA|IABS|IMNMX)\b",
}


def _triton() -> Any:
    """Triton, refusing the interpreter: the report compiles the kernels that a CUDA launch would."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("the compile report needs the real Triton compiler: unset TRITON_INTERPRET")
    import triton

    return triton


@contextlib.contextmanager
def captured_launches() -> Iterator[list[dict[str, Any]]]:
    """Within the block, Triton launches of the conv kernels compile for sm_90 instead of running.

    Yields the list each launch appends ``{"kernel", "compiled", "constexprs", "grid"}`` to.
    """
    triton = _triton()
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    conv_module = sys.modules["kernels.conv2d"]
    gated_module = sys.modules["kernels.gated_conv2d"]
    conditional_module = sys.modules["kernels.gated_conditional"]
    sparse_module = sys.modules["kernels.channel_sparse_conv2d"]
    compaction_module = sys.modules["kernels.compaction_kernels"]
    target = GPUTarget("cuda", TARGET_ARCH, 32)
    backend = make_backend(target)
    launches: list[dict[str, Any]] = []
    jitted = [
        conv_module._conv2d_kernel, conv_module._split_k_epilogue_kernel, gated_module._gated_conv2d_kernel,
        conditional_module._gated_conditional_kernel, sparse_module._channel_sparse_conv2d_kernel,
        compaction_module._count_kernel, compaction_module._scatter_kernel,
    ]

    def capture(fn: Any) -> Any:
        def run(*args: Any, grid: Any, warmup: bool, **kwargs: Any) -> None:
            kwargs.setdefault("debug", False)
            binder = create_function_from_signature(fn.signature, fn.params, backend)
            bound, specialization, options = binder(*args, **kwargs)
            options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
            source = ASTSource(fn, signature, constexprs, attrs)
            compiled = triton.compile(source, target=target, options=options.__dict__)
            named = {fn.arg_names[key[0]]: getattr(value, "value", value) for key, value in constexprs.items()}
            launches.append({"kernel": fn.__name__, "compiled": compiled, "constexprs": named, "grid": grid})

        return run

    saved = [(fn, fn.__dict__.get("run")) for fn in jitted]
    supported = {m: m.require_kernel_support for m in (conv_module, gated_module, sparse_module)}
    try:
        for fn in jitted:
            fn.run = capture(fn)
        for module in supported:
            module.require_kernel_support = lambda x: None  # meta tensors stand in for CUDA ones
        yield launches
    finally:
        for fn, run in saved:
            if run is None:
                del fn.run
            else:
                fn.run = run
        for module, check in supported.items():
            module.require_kernel_support = check


def _count(pattern: str, text: str) -> int:
    return len(re.findall(pattern, text))


def sass_loops(sass: str) -> list[dict[str, int]]:
    """Backward-branch loops of a ``cuobjdump -sass`` listing: instruction count and :data:`LOOP_OPS` mix."""
    lines = [(int(m.group(1), 16), m.group(2)) for m in re.finditer(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", sass)]
    index = {address: i for i, (address, _) in enumerate(lines)}
    loops = []
    for i, (address, text) in enumerate(lines):
        branch = re.search(r"\bBRA\b.*?(0x[0-9a-f]+)", text)
        if branch and int(branch.group(1), 16) < address and int(branch.group(1), 16) in index:
            body = "\n".join(t for _, t in lines[index[int(branch.group(1), 16)] : i + 1])
            loop = {"instructions": body.count("\n") + 1}
            loop |= {name: _count(pattern, body) for name, pattern in LOOP_OPS.items()}
            loop["loads_16bit"] = _count(r"\bLDG\.E(?:\.\w+)*\.(?:U16|S16)\b", body)
            loops.append(loop)
    return loops


def analyse(compiled: Any, workdir: Path) -> dict[str, Any]:
    """Registers, spills, shared memory, MMA widths, load widths and loops of one compiled kernel."""
    triton = _triton()
    tools = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    ptx = compiled.asm["ptx"]
    target = re.search(r"\.target\s+(\S+)", ptx)
    arch = target.group(1) if target else f"sm_{TARGET_ARCH}a"
    ptx_path, cubin_path = workdir / "kernel.ptx", workdir / "kernel.cubin"
    ptx_path.write_text(ptx)
    cubin_path.write_bytes(compiled.asm["cubin"])
    log = subprocess.run(
        [str(tools / "ptxas"), "-v", f"--gpu-name={arch}", str(ptx_path), "-o", str(workdir / "kernel.o")],
        capture_output=True, text=True, check=True,
    ).stderr  # fmt: skip
    sass = subprocess.run(
        [str(tools / "cuobjdump"), "-sass", str(cubin_path)], capture_output=True, text=True, check=True
    ).stdout

    def number(pattern: str) -> int:
        found = re.search(pattern, log)
        return int(found.group(1)) if found else 0

    loops = sass_loops(sass)
    return {
        "registers": number(r"Used (\d+) registers"),
        "spill_bytes": number(r"(\d+) bytes spill stores") + number(r"(\d+) bytes spill loads"),
        "shared_bytes": compiled.metadata.shared,
        "num_warps": compiled.metadata.num_warps,
        "num_stages": compiled.metadata.num_stages,
        "wgmma_n": sorted({int(n) for n in re.findall(r"wgmma\.mma_async\S*\.m64n(\d+)k", ptx)}),
        "mma_sync": _count(r"\bmma\.sync", ptx),
        "loads_16B": _count(r"\bLDGSTS\.E(?:\.\w+)*\.128\b|\bLDG\.E(?:\.\w+)*\.128\b", sass),
        "loads_16bit_in_loops": sum(loop["loads_16bit"] for loop in loops),
        "loops": loops,
    }


def layer_launches(
    shape: Any, batch: int, gate_group: int, base_fraction: float, gate_block: int = 1, channel_sparse: bool = False,
    dense_candidates: bool = False, sm_count: int | None = None,
) -> list[dict[str, Any]]:
    """Compile what one dense and one gated call of ``shape`` at ``batch`` launch (meta tensors, bfloat16).

    With ``channel_sparse``, also one channel-sparse call (half of the input
    and output channels kept; the compiled code does not depend on which).
    With ``dense_candidates``, only dense calls: one per candidate tiling
    (:func:`kernels.conv_tuning.candidates` for ``sm_count`` SMs and sm_90's
    227 KiB of shared memory a block).
    """
    import kernels
    from kernels._validation import validate_conv
    from kernels.channel_sparse_conv2d import channel_sparse_conv2d
    from kernels.conv2d import conv2d
    from kernels.conv_tuning import candidates
    from kernels.gated_conv2d import gated_conv2d

    meta = {"device": "meta", "dtype": torch.bfloat16}
    x = torch.empty(batch, shape.in_channels, shape.height, shape.width, **meta)
    x = x.contiguous(memory_format=torch.channels_last)
    weight = kernels.pack_weight(torch.empty(shape.out_channels, shape.in_channels, shape.kernel, shape.kernel, **meta))
    vector = torch.empty(shape.out_channels, device="meta")
    geometry = {"stride": shape.stride, "padding": shape.padding, "scale": vector, "shift": vector, "relu": True}
    if dense_candidates:
        geom = validate_conv(
            x, weight.unpack(), stride=shape.stride, padding=shape.padding, dilation=shape.dilation, scale=None,
            shift=None, residual=None,
        )
        with captured_launches() as launches:
            for tiling in candidates(geom, x.dtype, sm_count, SM90_SHARED_BYTES):
                conv2d(x, weight, tiling=tiling, **geometry)
        return launches
    with captured_launches() as launches:
        conv2d(x, weight, **geometry)
        gated_conv2d(x, weight, vector, vector, gate_group=gate_group, base_fraction=base_fraction,
                     gate_block=gate_block, **geometry)
        if channel_sparse:
            out_mask = torch.empty(batch, shape.out_channels, dtype=torch.bool, device="meta")
            in_mask = torch.empty(batch, shape.in_channels, dtype=torch.bool, device="meta")
            channel_sparse_conv2d(x, weight, out_mask, in_mask, **geometry)
    return launches


def report(
    models: list[str], batches: list[int], gate_group: int, base_fraction: float, shapes: list[str] | None = None,
    gate_block: int = 1, channel_sparse: bool = False, dense_candidates: bool = False, sm_count: int | None = None,
) -> list[dict[str, Any]]:
    """One record per distinct compiled kernel, naming every (model, shape, batch) launch that uses it.

    ``shapes``: only these layer names (``benchmarks.shapes``), if given;
    ``channel_sparse``: also the channel-sparse kernel; ``dense_candidates``,
    ``sm_count``: only the dense kernel's candidate tilings (:func:`layer_launches`).
    """
    from .shapes import model_shapes

    records: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            for shape in model_shapes(model):
                if shapes and shape.name not in shapes:
                    continue
                for batch in batches:
                    launched = layer_launches(
                        shape, batch, gate_group, base_fraction, gate_block, channel_sparse, dense_candidates, sm_count
                    )
                    for launch in launched:
                        key = launch["compiled"].hash
                        if key not in records:
                            tiling = {k: v for k, v in launch["constexprs"].items() if k.isupper()}
                            records[key] = {"kernel": launch["kernel"], "constexprs": tiling, "launches": []}
                            records[key] |= analyse(launch["compiled"], Path(tmp))
                            print(_line(records[key]), flush=True)
                        records[key]["launches"].append(f"{shape.name} b{batch}")
    return list(records.values())


def _line(record: dict[str, Any]) -> str:
    c = record["constexprs"]
    keys = ("BLOCK_M", "BLOCK_C", "BLOCK_C") if "BLOCK_C" in c else ("BLOCK_M", "BLOCK_N", "BLOCK_K")
    tiles = "x".join(str(c.get(k, "-")) for k in keys)
    loops = "/".join(f"{loop['integer_alu']}/{loop['instructions']}" for loop in record["loops"])
    return (
        f"{record['kernel']:<28}{tiles:>12} w{record['num_warps']}s{record['num_stages']}"
        f"{record['registers']:>6} regs{record['spill_bytes']:>6} B spill"
        f"{record['shared_bytes']:>8} B smem  wgmma n{record['wgmma_n'] or '-'}  mma.sync {record['mma_sync']}"
        f"  16B loads {record['loads_16B']}  16-bit loads in loops {record['loads_16bit_in_loops']}"
        f"  loop int/all {loops or '-'}"
    )


def main(argv: list[str] | None = None) -> int:
    from .shapes import MODELS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=["r50"], help="default: %(default)s")
    parser.add_argument("--batches", nargs="+", type=int, default=[64, 8], help="default: %(default)s")
    parser.add_argument("--gate-group", type=int, default=GateSpec.gate_group, help="default: %(default)s")
    parser.add_argument("--gate-block", type=int, default=1, help="default: %(default)s")
    parser.add_argument("--base-fraction", type=float, default=0.25, help="default: %(default)s")
    parser.add_argument("--shapes", nargs="+", help="only these layers, e.g. r50.layer1.0.conv2 (default: all)")
    parser.add_argument("--channel-sparse", action="store_true", help="also the channel-sparse kernel")
    parser.add_argument(
        "--dense-candidates", action="store_true", help="only the dense kernel, once per candidate tiling"
    )
    parser.add_argument("--sm-count", type=int, help="with --dense-candidates: add split-K variants for this many SMs")
    parser.add_argument("--out", type=Path, default=RESULTS / "compile_report_sm90.json", help="default: %(default)s")
    args = parser.parse_args(argv)
    try:
        triton = _triton()
    except RuntimeError as exc:
        parser.error(str(exc))
    records = report(
        args.models, args.batches, args.gate_group, args.base_fraction, args.shapes, args.gate_block,
        args.channel_sparse, args.dense_candidates, args.sm_count,
    )
    payload = {
        "benchmark": "compile_report",
        "target": f"cuda:{TARGET_ARCH}",
        "environment": {"torch": torch.__version__, "triton": triton.__version__},
        "parameters": vars(args) | {"out": str(args.out)},
        "kernels": records,
    }
    from gating.io import atomic_write_json

    atomic_write_json(payload, args.out)
    print(f"wrote {args.out} ({len(records)} distinct kernels)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
