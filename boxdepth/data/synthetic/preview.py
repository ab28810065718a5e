"""Preview grid of the synthetic dataset: per row, image | colour-mapped pseudo depth |
instance masks overlaid with their boxes. Input scenes are dicts with `image` uint8
(H, W, 3), `depth01` float (H, W) in [0, 1] and `labels` int (H, W), -1 = background."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from boxdepth.data.rle import mask_to_xywh
from boxdepth.fileio import atomic_save

# turbo-like anchors: dark blue (far) -> red (near)
_CMAP = np.array([[48, 18, 59], [70, 117, 237], [27, 208, 213], [164, 252, 60],
                  [251, 185, 56], [228, 70, 12], [122, 4, 3]], np.float64)
_PALETTE = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200],
                     [245, 130, 48], [145, 30, 180], [70, 240, 240], [240, 50, 230],
                     [210, 245, 60], [250, 190, 212], [0, 128, 128], [170, 110, 40]],
                    np.float64)


def colour_map(d01: np.ndarray) -> np.ndarray:
    t = np.clip(d01, 0, 1) * (len(_CMAP) - 1)
    grid = np.arange(len(_CMAP))
    return np.stack([np.interp(t, grid, _CMAP[:, c]) for c in range(3)], -1).astype(np.uint8)


def overlay(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    out = image.astype(np.float64)
    for k in range(int(labels.max()) + 1):
        mask = labels == k
        if not mask.any():
            continue
        colour = _PALETTE[k % len(_PALETTE)]
        out[mask] = 0.45 * out[mask] + 0.55 * colour
        x, y, w, h = (int(v) for v in mask_to_xywh(mask))
        out[y, x:x + w] = out[y + h - 1, x:x + w] = colour
        out[y:y + h, x] = out[y:y + h, x + w - 1] = colour
    return out.astype(np.uint8)


def save_preview(path: str | Path, scenes: list[dict]) -> None:
    rows = [np.concatenate([s["image"], colour_map(s["depth01"]),
                            overlay(s["image"], s["labels"])], axis=1) for s in scenes]
    sep = np.full((2, rows[0].shape[1], 3), 255, np.uint8)
    grid = np.concatenate([r for row in rows for r in (row, sep)][:-1], axis=0)
    img = Image.fromarray(grid)
    atomic_save(path, lambda p: img.save(p, format="PNG"))
