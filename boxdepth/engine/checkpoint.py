"""Checkpoints: written atomically, read with `torch.load(weights_only=True)`.

A training checkpoint is a dict with keys `model`, `optimizer`, `scheduler`,
`iteration` (number of finished iterations), `scaler` (AMP grad scaler or None),
`config` (the resolved config as a plain dict), optionally `teacher` and `rng`.
`model` is always the bare module's state dict (no DDP `module.` prefix).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from boxdepth.fileio import atomic_path

_CKPT_RE = re.compile(r"model_(\d+)\.pth$")


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # corrupt file, pickle with arbitrary objects, ...
        raise ValueError(f"cannot read checkpoint {path}: {e}") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise ValueError(f"{path} is not a boxdepth checkpoint (no 'model' entry)")
    return ckpt


def checkpoints_newest_first(run_dir: str | Path) -> list[Path]:
    """`model_final.pth`, then the `model_<iter>.pth` of a run directory, newest first."""
    run_dir = Path(run_dir)
    numbered = sorted(((int(m.group(1)), p) for p in run_dir.glob("model_*.pth")
                       if (m := _CKPT_RE.search(p.name))), reverse=True)
    final = run_dir / "model_final.pth"
    return ([final] if final.exists() else []) + [p for _, p in numbered]


def last_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest `model_<iter>.pth` (or `model_final.pth`) in a run directory."""
    found = checkpoints_newest_first(run_dir)
    return found[0] if found else None


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model
