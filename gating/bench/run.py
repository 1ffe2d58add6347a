"""``run_bench``: count (any device) and time (CUDA) every model and batch of a :class:`BenchConfig`, write one JSON.

The JSON (written atomically with :func:`gating.io.atomic_write_json`):

* ``benchmark``: ``"gating bench"``; ``environment``: device name (GPU name
  or ``"cpu"``), torch / triton / python / CUDA versions;
  ``parameters``: every setting (:meth:`BenchConfig.to_dict`, dtype and
  device resolved);
* ``timing``: ``None`` when not on CUDA, with ``timing_skipped`` saying why;
  on CUDA ``{"device_peaks": ..., "quantiles": ..., "forms": [...]}``;
* ``records``: one per (model, batch): ``model``, ``batch``, ``setup`` (how
  the gates were set, pruning), ``counts`` (:func:`gating.bench.counts.count_batch`),
  ``roofline`` (:func:`gating.bench.speed.roofline`, CUDA only, else
  ``None``) and ``timing`` (:func:`gating.bench.speed.time_batch`, CUDA only,
  else ``None``).
"""

from __future__ import annotations

import platform
import re
import time
from pathlib import Path
from typing import Any

import torch

from ..io import atomic_write_json
from .config import BenchConfig
from .counts import count_batch
from .subjects import bench_input, prepare
from .timing import QUANTILES

__all__ = ["TIMING_NEEDS_CUDA", "default_out", "device_name", "run_bench"]

TIMING_NEEDS_CUDA = "timing needs CUDA (torch.cuda.is_available() is False or --device is cpu): counted only"
"""Why a bench off CUDA has no timing: printed once and recorded as ``timing_skipped``."""


def device_name(config: BenchConfig) -> str:
    """The GPU's name on CUDA, else ``"cpu"``."""
    return torch.cuda.get_device_name(torch.device(config.device)) if config.cuda else "cpu"


def default_out(config: BenchConfig) -> Path:
    """``benchmarks/results/bench_<device>.json``, the device name lower-cased with ``_`` for other characters."""
    slug = re.sub(r"[^a-z0-9]+", "_", device_name(config).lower()).strip("_")
    return Path("benchmarks") / "results" / f"bench_{slug}.json"


def _environment(config: BenchConfig) -> dict[str, Any]:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "device": device_name(config), "torch": torch.__version__, "triton": triton_version,
        "python": platform.python_version(), "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if config.cuda else None,
    }  # fmt: skip


def _line(model: str, batch: int, counts: dict[str, Any], timing: dict[str, Any] | None) -> str:
    """The printed summary of one record."""
    text = (f"{model} b{batch}: executed MACs {counts['macs_executed'] / counts['macs_dense']:.3f}x of dense "
            f"({counts['macs_reduction']:.2f}x fewer), bytes {counts['bytes_reduction']:.2f}x fewer")
    if timing is not None:
        built = timing["built"]
        if "ms" in built:
            text += f"; built {built['ms']['median']:.3f} ms ({built['images_per_s']:.0f} images/s)"
        if timing["speedup_over_cudnn"] is not None:
            text += f", {timing['speedup_over_cudnn']:.2f}x cuDNN eager (ideal {timing['ideal_speedup']:.2f}x)"
    return text


def run_bench(config: BenchConfig) -> dict[str, Any]:
    """Run the bench of the module docstring, write its JSON to ``config.out`` (default :func:`default_out`)
    and return it; prints one line per record (and, off CUDA, one line that timing needs CUDA).

    Raises:
        gating.bench.BenchSetupError: a setting a model cannot take.
        gating.io.ModelFileError: an unusable ``config.saved``.
    """
    started = time.perf_counter()
    out = config.out or default_out(config)
    dtype, device = config.torch_dtype, torch.device(config.device)
    result: dict[str, Any] = {"benchmark": "gating bench", "environment": _environment(config),
                              "parameters": config.to_dict() | {"out": str(out)}, "timing": None,
                              "timing_skipped": None, "records": []}
    peaks = None
    if config.cuda:
        from .speed import FORMS, device_peaks

        peaks = device_peaks(config)
        result["timing"] = {"device_peaks": peaks.to_dict(), "quantiles": QUANTILES, "forms": list(FORMS)}
    else:
        print(f"gating bench: {TIMING_NEEDS_CUDA}")
        result["timing_skipped"] = TIMING_NEEDS_CUDA
    names: list[str | None] = [None] if config.saved is not None else list(config.models)
    for name in names:
        subject = prepare(config, name)
        forms = None
        if config.cuda:  # built from the float32 model: folding runs in float32, rounded once to the dtype
            from .speed import model_forms

            forms = model_forms(subject, config)
        subject.gated.to(dtype)  # counted in the bench dtype's element sizes
        subject.dense.to(dtype)
        for batch in config.batches:
            x = bench_input(batch, subject.in_channels, config.image_size, config.seed).to(device, dtype)
            counts = count_batch(subject, x)
            record: dict[str, Any] = {"model": subject.name, "batch": batch, "setup": subject.setup,
                                      "counts": counts, "roofline": None, "timing": None}
            if forms is not None:
                from .speed import roofline, time_batch

                record["roofline"] = roofline(counts, peaks)
                record["timing"] = time_batch(forms, x, config, counts)
            print(_line(subject.name, batch, counts, record["timing"]), flush=True)
            result["records"].append(record)
        del subject, forms
        if config.cuda:
            torch.cuda.empty_cache()
    result["wall_s"] = round(time.perf_counter() - started, 1)
    atomic_write_json(result, out)
    print(f"wrote {out}")
    return result
