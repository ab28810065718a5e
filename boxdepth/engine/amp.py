"""Mixed precision for training (`solver.amp`, default false = fp32 everywhere).

`solver.amp: true` runs the forward pass and the losses under `torch.autocast`:
  CPU   bfloat16, no GradScaler (bf16 has float32's exponent range: gradients cannot
        underflow the way fp16's do)
  CUDA  float16 + `torch.amp.GradScaler` (built in engine/trainer.build_training)
Autocast only lowers the ops on torch's autocast list (convolutions, matmuls, ...); the
parameters, optimizer state and EMA teacher stay float32. Kept in float32 on purpose:
  - every loss (losses/*.py call .float() on their inputs: focal/GIoU/BCE, dice,
    projection, the log-space pairwise term, depth terms, reliable dice);
  - the Lab conversion (ops/pairwise.rgb_to_lab): its einsum would otherwise run in bf16
    and move Lab values by ~0.5, the scale of the colour-similarity threshold's margin;
  - the dynamic mask head (models/dynamic_head.py): its logits feed the pairwise term
    through neighbour *differences*, which bf16's 8-bit mantissa would quantise; it is a
    few 1x1 convolutions on 8 channels, so fp32 costs nothing measurable;
  - the matcher's S_dcons sums (distill/matcher.py, a matmul over all pixels compared with
    tau_m = 0.8).
Those regions use ops/precision.float32_region.
Inference (`boxdepth eval`, `predict`, the end-of-training evaluation) always runs in
float32: `solver.amp` is a training setting and the reported AP must not depend on it.
"""
from __future__ import annotations

import contextlib

import torch

AMP_DTYPES = {"cpu": torch.bfloat16, "cuda": torch.float16}


def amp_dtype(device: torch.device | str, enabled: bool) -> torch.dtype | None:
    """The autocast dtype for `device` when AMP is `enabled`, else None."""
    if not enabled:
        return None
    kind = torch.device(device).type
    if kind not in AMP_DTYPES:
        raise ValueError(f"solver.amp=true is supported on cpu and cuda, not on {kind}")
    return AMP_DTYPES[kind]


def cpu_bf16_warning(device: torch.device | str, enabled: bool, flags: set[str] | None = None) -> str | None:
    """A warning when bf16 autocast would run on a CPU without native bf16 (no avx512_bf16
    or AMX in /proc/cpuinfo, or `flags`): oneDNN then emulates it through float32, measured
    14x slower on the demo preset and 36x on R-50 (benchmarks/README, "bf16 on the CPU")."""
    from boxdepth.engine.machine import BF16_FLAGS, cpu_flags

    if amp_dtype(device, enabled) != torch.bfloat16:
        return None
    flags = cpu_flags() if flags is None else flags
    if flags is None or any(f in flags for f in BF16_FLAGS):
        return None
    return ("solver.amp=true on a CPU without native bfloat16 (no avx512_bf16 or amx_bf16 in "
            "/proc/cpuinfo): bf16 is emulated and a training step is several times slower than "
            "float32 (14-36x measured, benchmarks/README 'bf16 on the CPU'); use solver.amp=false")


def autocast(device: torch.device | str, enabled: bool):
    """`torch.autocast` with `amp_dtype`'s dtype; a no-op context when not enabled."""
    dtype = amp_dtype(device, enabled)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)
