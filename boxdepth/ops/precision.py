"""`float32_region(device)`: a context with autocast switched off, for the few places that
must stay float32 under `solver.amp` (see engine/amp.py for which and why). Devices
without autocast (e.g. "meta") get a no-op context."""
from __future__ import annotations

import contextlib

import torch


def float32_region(device: torch.device | str):
    kind = torch.device(device).type
    if not torch.amp.is_autocast_available(kind):
        return contextlib.nullcontext()
    return torch.autocast(kind, enabled=False)


def at_least_float32(t: torch.Tensor) -> torch.Tensor:
    """Half / bfloat16 -> float32; float32 and float64 unchanged."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t
