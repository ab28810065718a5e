"""Pseudo-depth storage (SPEC §0).

One 16-bit PNG per image under a depth root that mirrors the image tree:
``<depth_root>/<image relative path with suffix .png>``. Values are relative *inverse*
depth (larger = nearer), normalised per image to [0, 1] and scaled to 0..65535.
``<depth_root>/meta.json`` records the source, the normalisation and the convention.

Arrays: ``depth01`` is float32 (H, W) in [0, 1] at the image's original size.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

from boxdepth.fileio import atomic_save, atomic_write_json

logger = logging.getLogger("boxdepth")

META_NAME = "meta.json"
DEPTH_SCALE = 65535.0


def depth_path_for(depth_root: str | Path, file_name: str) -> Path:
    """Path of the depth map for image `file_name` (relative to the image root)."""
    rel = PurePosixPath(file_name.replace("\\", "/")).with_suffix(".png")
    return Path(depth_root).joinpath(*rel.parts)


def normalize_inverse_depth(inv_depth: np.ndarray, valid: np.ndarray | None = None,
                            low_pct: float = 1.0, high_pct: float = 99.0) -> np.ndarray:
    """Robust per-image min/max normalisation of inverse depth to [0, 1] (clipped).

    `valid` (bool, same shape) selects the pixels used for the percentiles.
    A constant map becomes all zeros rather than NaN.
    """
    inv = np.asarray(inv_depth, dtype=np.float64)
    sample = inv[valid] if valid is not None else inv.reshape(-1)
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return np.zeros(inv.shape, np.float32)
    lo, hi = np.percentile(sample, [low_pct, high_pct])
    if not hi > lo:
        return np.zeros(inv.shape, np.float32)
    out = np.clip((inv - lo) / (hi - lo), 0.0, 1.0)
    out[~np.isfinite(out)] = 0.0
    return out.astype(np.float32)


def encode_depth_png(depth01: np.ndarray) -> Image.Image:
    d = np.clip(np.nan_to_num(np.asarray(depth01, np.float64)), 0.0, 1.0)
    return Image.fromarray(np.round(d * DEPTH_SCALE).astype(np.uint16))


def save_depth_png(path: str | Path, depth01: np.ndarray) -> None:
    """Write a (H, W) float map in [0, 1] as a 16-bit PNG, atomically."""
    img = encode_depth_png(depth01)
    atomic_save(path, lambda p: img.save(p, format="PNG"))


def read_single_channel(path: str | Path, what: str = "depth file") -> np.ndarray:
    """Decode a one-channel image (8/16-bit or float) as stored; errors name the file."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            arr = np.asarray(im)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path}") from None
    except Exception as e:  # PIL raises many types for corrupt files
        raise ValueError(f"cannot read {what} {path}: {type(e).__name__}: {e}") from None
    if arr.ndim != 2 or arr.dtype.kind not in "uif":
        raise ValueError(f"{what} {path} has shape {arr.shape} and dtype {arr.dtype}; "
                         f"expected one channel")
    return arr


_WARNED_8BIT: set[Path] = set()


def _warn_8bit(path: Path) -> None:
    """Once per folder (per process): 8-bit maps are read, but coarsely."""
    if path.parent in _WARNED_8BIT:
        return
    _WARNED_8BIT.add(path.parent)
    logger.warning(f"depth file {path} is an 8-bit PNG: only 256 depth levels (the stored "
                   f"format is 16-bit, 65536 levels), too coarse for the depth terms on a "
                   f"smooth surface; write 16-bit PNGs (`boxdepth depth` does). Other 8-bit "
                   f"files in {path.parent} are not named")


def load_depth_png(path: str | Path) -> np.ndarray:
    """Read a stored depth PNG -> float32 (H, W) in [0, 1]. Errors name the file."""
    arr = read_single_channel(path, "depth file")
    if arr.dtype == np.uint8:
        _warn_8bit(Path(path))
        return arr.astype(np.float32) / 255.0
    return arr.astype(np.float32) / DEPTH_SCALE


def write_depth_meta(depth_root: str | Path, source: str, **extra: Any) -> dict:
    """Record how the maps under `depth_root` were made (SPEC §0)."""
    meta = {
        "source": source,
        "inverse_depth": True,
        "normalisation": {"method": "percentile_minmax", "low_pct": 1.0, "high_pct": 99.0,
                          "clipped": True},
        "encoding": "uint16 png, value = round(d01 * 65535)",
    }
    meta.update(extra)
    atomic_write_json(Path(depth_root) / META_NAME, meta)
    return meta


def read_depth_meta(depth_root: str | Path) -> dict | None:
    p = Path(depth_root) / META_NAME
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}: not valid JSON ({e})") from None
