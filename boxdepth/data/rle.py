"""COCO mask encodings (pycocotools underneath).

`mask_to_rle(mask)`: bool/uint8 (H, W) -> {"size": [H, W], "counts": str} (utf-8 counts,
as the COCO results format and json need). `segmentation_to_mask(seg, h, w)` accepts
polygons, uncompressed RLE or compressed RLE and returns uint8 (H, W) in {0, 1};
`segmentation_area(seg, h, w)` is its pixel count without decoding the mask.
"""
from __future__ import annotations

import numpy as np


def _mask_api():
    # pycocotools carries a C extension: import it only when masks are really needed.
    from pycocotools import mask as mask_utils
    return mask_utils


def mask_to_rle(mask: np.ndarray) -> dict:
    m = np.asfortranarray(np.asarray(mask, dtype=np.uint8))
    rle = _mask_api().encode(m)
    counts = rle["counts"]
    return {"size": [int(s) for s in rle["size"]],
            "counts": counts.decode("utf-8") if isinstance(counts, bytes) else counts}


def rle_area(rle: dict) -> int:
    r = dict(rle)
    if isinstance(r["counts"], str):
        r["counts"] = r["counts"].encode("utf-8")
    return int(_mask_api().area(r))


def _to_compressed_rle(seg, height: int, width: int) -> dict | None:
    """Any COCO segmentation -> pycocotools' compressed RLE (None for an empty polygon list)."""
    mu = _mask_api()
    if isinstance(seg, list):
        return mu.merge(mu.frPyObjects(seg, height, width)) if seg else None
    if isinstance(seg, dict) and isinstance(seg.get("counts"), list):
        return mu.frPyObjects(seg, height, width)
    if isinstance(seg, dict) and "counts" in seg:
        rle = dict(seg)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("utf-8")
        return rle
    raise ValueError(f"unsupported segmentation of type {type(seg).__name__}")


def segmentation_to_mask(seg, height: int, width: int) -> np.ndarray:
    rle = _to_compressed_rle(seg, height, width)
    if rle is None:
        return np.zeros((height, width), np.uint8)
    return _mask_api().decode(rle).astype(np.uint8)


def segmentation_area(seg, height: int, width: int) -> int:
    rle = _to_compressed_rle(seg, height, width)
    return 0 if rle is None else int(_mask_api().area(rle))


def mask_to_xywh(mask: np.ndarray) -> list[float]:
    """Tight COCO box [x, y, w, h] of a binary mask (pixel edges), [0,0,0,0] if empty."""
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return [0.0, 0.0, 0.0, 0.0]
    x0, y0 = float(xs.min()), float(ys.min())
    return [x0, y0, float(xs.max()) + 1.0 - x0, float(ys.max()) + 1.0 - y0]
