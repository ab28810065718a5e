"""The COCO detection-results format: build, validate, read and write it.

One results entry (a dict) per detection::

    {"image_id": int,                 # a GT image id (0 allowed)
     "category_id": int,              # a GT category id (need not start at 1)
     "bbox": [x, y, w, h],            # floats, absolute pixels at the original image size
     "score": float,
     "segmentation": {"size": [H, W], "counts": str}}   # compressed RLE, optional

`instances_to_coco_results` turns one image's detections into such entries:
boxes (N, 4) XYXY absolute, scores (N,), contiguous labels (N,) in [0, len(cat_ids)),
masks bool (N, H, W) at the original image size or None. Inputs may be torch tensors
(any device) or numpy arrays.

`load_coco_results` / `validate_coco_results` raise ValueError naming the source file,
the entry index and the problem; with a GT they also check image ids, category ids and
mask sizes against it. `load_coco_gt` reads a GT json (path or already-loaded dict).
"""
from __future__ import annotations

import json
import numbers
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from boxdepth.data.rle import mask_to_rle
from boxdepth.fileio import atomic_write_text

REQUIRED_KEYS = ("image_id", "category_id", "bbox", "score")


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, possibly on an accelerator
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _check_instance_shapes(boxes, scores, labels, masks) -> None:
    n = boxes.shape[0] if boxes.ndim == 2 else -1
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4), got {tuple(boxes.shape)}")
    if scores.shape != (n,) or labels.shape != (n,):
        raise ValueError(f"scores and labels must have shape ({n},), got "
                         f"{tuple(scores.shape)} and {tuple(labels.shape)}")
    if masks is not None and (masks.ndim != 3 or masks.shape[0] != n):
        raise ValueError(f"masks must have shape ({n}, H, W), got {tuple(masks.shape)}")


def instances_to_coco_results(image_id: int, boxes_xyxy, scores, labels, masks=None, *,
                              cat_ids: Sequence[int]) -> list[dict]:
    """One image's detections -> COCO results entries (json-ready builtins only).

    `cat_ids[label]` is the COCO category id of contiguous label `label`. Boxes are
    rounded to 2 decimals (sub-pixel precision beyond that does not change IoU).
    """
    boxes = _to_numpy(boxes_xyxy).astype(np.float64)
    if boxes.size == 0:  # an image without detections may come as shape (0,) or (0, 4)
        boxes = boxes.reshape(0, 4)
    scores = _to_numpy(scores).astype(np.float64).reshape(-1)
    labels = _to_numpy(labels).astype(np.int64).reshape(-1)
    masks = None if masks is None else _to_numpy(masks).astype(bool)
    _check_instance_shapes(boxes, scores, labels, masks)
    if labels.size and (labels.min() < 0 or labels.max() >= len(cat_ids)):
        raise ValueError(f"labels must lie in [0, {len(cat_ids)}) to index cat_ids, "
                         f"got range [{labels.min()}, {labels.max()}]")
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    results = []
    for i in range(boxes.shape[0]):
        entry = {"image_id": int(image_id),
                 "category_id": int(cat_ids[int(labels[i])]),
                 "bbox": [round(float(v), 2) for v in xywh[i]],
                 "score": float(scores[i])}
        if masks is not None:
            entry["segmentation"] = mask_to_rle(masks[i])
        results.append(entry)
    return results


def _read_json(path: str | os.PathLike, what: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} file not found")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: {what} file is not valid JSON ({e})") from None


def load_coco_gt(gt: str | os.PathLike | dict) -> dict:
    """A COCO GT dataset dict (loaded from `gt` if it is a path), with its keys checked."""
    source = "<gt dict>" if isinstance(gt, dict) else str(gt)
    data = gt if isinstance(gt, dict) else _read_json(gt, "COCO ground-truth")
    if not isinstance(data, dict):
        raise ValueError(f"{source}: COCO ground truth must be a JSON object with "
                         f"'images', 'annotations' and 'categories', got {type(data).__name__}")
    missing = [k for k in ("images", "annotations", "categories") if k not in data]
    if missing:
        raise ValueError(f"{source}: COCO ground truth lacks key(s) {missing}")
    return data


def _check_entry(entry: Any, i: int, source: str) -> None:
    if not isinstance(entry, dict):
        raise ValueError(f"{source}: results entry {i} is a {type(entry).__name__}, "
                         f"expected an object")
    missing = [k for k in REQUIRED_KEYS if k not in entry]
    if missing:
        raise ValueError(f"{source}: results entry {i} is missing {missing} "
                         f"(each entry needs {list(REQUIRED_KEYS)})")
    for key in ("image_id", "category_id"):
        if not isinstance(entry[key], numbers.Integral) or isinstance(entry[key], bool):
            raise ValueError(f"{source}: results entry {i} has {key} {entry[key]!r}, "
                             f"expected an integer")
    bbox = entry["bbox"]
    if (not isinstance(bbox, (list, tuple)) or len(bbox) != 4
            or not all(isinstance(v, numbers.Real) for v in bbox)):
        raise ValueError(f"{source}: results entry {i} has bbox {bbox!r}, "
                         f"expected 4 numbers [x, y, w, h]")
    if not isinstance(entry["score"], numbers.Real):
        raise ValueError(f"{source}: results entry {i} has non-numeric score "
                         f"{entry['score']!r}")


def _check_against_gt(entry: dict, i: int, source: str, sizes: dict, cat_ids: set) -> None:
    image_id, cat_id = entry["image_id"], entry["category_id"]
    if image_id not in sizes:
        raise ValueError(f"{source}: results entry {i} has image_id {image_id!r}, "
                         f"which is not an image of the ground truth")
    if cat_id not in cat_ids:
        raise ValueError(f"{source}: results entry {i} has category_id {cat_id!r}, "
                         f"which is not a category of the ground truth "
                         f"(known: {sorted(cat_ids)})")
    seg = entry.get("segmentation")
    if seg is None:
        return
    if not isinstance(seg, dict) or "counts" not in seg or "size" not in seg:
        raise ValueError(f"{source}: results entry {i} has a segmentation that is not "
                         f"a compressed RLE {{'size', 'counts'}}")
    if [int(s) for s in seg["size"]] != list(sizes[image_id]):
        raise ValueError(f"{source}: results entry {i} has a segmentation of size "
                         f"{list(seg['size'])} but image {image_id} is "
                         f"{list(sizes[image_id])} (H, W); masks must be at the "
                         f"original image size")


def validate_coco_results(results: Any, gt: dict | None = None, *,
                          source: str = "<results>") -> list[dict]:
    """Check a loaded results list (and, with `gt`, its ids and mask sizes); return it."""
    if not isinstance(results, list):
        hint = (" (this looks like a COCO ground-truth file)"
                if isinstance(results, dict) and "annotations" in results else "")
        raise ValueError(f"{source}: COCO results must be a JSON list of detections, "
                         f"got {type(results).__name__}{hint}")
    sizes, cat_ids = None, None
    if gt is not None:
        sizes = {img["id"]: (int(img["height"]), int(img["width"])) for img in gt["images"]}
        cat_ids = {c["id"] for c in gt["categories"]}
    for i, entry in enumerate(results):
        _check_entry(entry, i, source)
        if sizes is not None:
            _check_against_gt(entry, i, source, sizes, cat_ids)
    return results


def load_coco_results(path: str | os.PathLike, gt: str | os.PathLike | dict | None = None
                      ) -> list[dict]:
    """Read and validate a COCO results json; `gt` (path or dict) enables id/size checks."""
    results = _read_json(path, "COCO results")
    gt_data = None if gt is None else load_coco_gt(gt)
    return validate_coco_results(results, gt_data, source=str(path))


def write_coco_results(path: str | os.PathLike, results: list[dict]) -> None:
    """Atomically write a results list as compact json (NaN/inf are refused)."""
    text = json.dumps(results, separators=(",", ":"), allow_nan=False)
    atomic_write_text(path, text + "\n")
