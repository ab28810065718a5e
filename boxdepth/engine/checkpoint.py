"""Checkpoints: written atomically, read with `torch.load(weights_only=True)`.

A training checkpoint is a dict with keys `model`, `optimizer`, `scheduler`,
`iteration` (number of finished iterations), `scaler` (AMP grad scaler or None),
`config` (the resolved config as a plain dict), optionally `teacher` and `rng`.
`model` is always the bare module's state dict (no DDP `module.` prefix).
"""
from __future__ import annotations

import errno
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from boxdepth.fileio import atomic_path

_CKPT_RE = re.compile(r"model_(\d+)\.pth$")


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        try:
            torch.save(state, tmp)
        except RuntimeError as e:  # torch's zip writer turns a failed write (ENOSPC) into this
            if "write" not in str(e):
                raise
            reason = "no space left on device" if _disk_full(path.parent) else "the write failed"
            raise OSError(errno.EIO, f"cannot write checkpoint: {reason}", str(path)) from None
    return path


def _disk_full(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free < 16 * 2**20
    except OSError:
        return False


def torch_load_plain(path: Path, map_location: str | torch.device = "cpu", *,
                     what: str = "checkpoint") -> Any:
    """`torch.load(weights_only=True)`, whose failures become one ValueError naming the file
    and saying what is wrong with it. Torch's own message is not passed on: for a file with
    Python objects in it, it advises `weights_only=False`, i.e. running the file's code."""
    if path.is_file() and path.stat().st_size == 0:
        raise ValueError(f"{path} is empty: not a {what}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch and pickle raise many types for foreign or damaged files
        text = str(e)
    if "Unsupported global" in text:  # a pickle naming a class or function to call
        raise ValueError(f"{path} is not a plain {what}: it holds Python objects besides tensors "
                         f"and plain data, and boxdepth never loads those (they can run code)")
    if "zip archive" in text:
        raise ValueError(f"{path} is not a {what}, or it is truncated or damaged "
                         f"(its zip directory cannot be read)")
    raise ValueError(f"{path} is not a {what} (not a file torch.save wrote)")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    ckpt = torch_load_plain(path, map_location)
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
