"""What a timing was measured on: the record that `boxdepth demo` writes into results.json.

`machine_info()` -> {"cpu_model", "cpu_count", "torch", "torch_threads", "cuda_device",
"allocator_env"}; the CPU model matters because a cloud VM of the same size can land on
another host CPU from one day to the next (2026-12: the same 2-vCPU machine type ran a
training step 1.4-1.5x slower on an "AMD EPYC" host than on an "Intel Xeon" one).
"""
from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

# environment variables that change timings without changing results (allocator, threads,
# devices); benchmarks/common.py records the same list
TIMING_ENV = ("MALLOC_ARENA_MAX", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_MMAP_MAX_",
              "GLIBC_TUNABLES", "BOXDEPTH_MALLOC", "LD_PRELOAD",
              "PYTORCH_CUDA_ALLOC_CONF", "OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT",
              "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES")


def cpu_model() -> str | None:
    """The CPU's model name (Linux /proc/cpuinfo, else platform.processor()), or None."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # CPU instructions that run bfloat16 natively


def cpu_flags(cpuinfo: str | None = None) -> set[str] | None:
    """The CPU's feature flags (Linux /proc/cpuinfo, or its text), None where unknown."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    flags = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags |= set(value.split())
    return flags or None


def machine_info() -> dict:
    """The machine and thread settings of this process (see the module docstring)."""
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "cuda_device": cuda,
            "allocator_env": {k: os.environ.get(k) for k in TIMING_ENV}}
