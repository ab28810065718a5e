"""Flags of the annotations of a labelled COCO json most likely wrong (numpy only).

    qa_rows(data, *, low_score=0.5, fill_z=3.5, mad_floor=0.02, dup_iou=0.9, edge_px=1.0,
            tiny_area=256.0) -> (rows ranked worst first, class_fill {category_id: {"median",
            "mad", "n"}})

`data` is a COCO dict as `boxdepth label` writes it. One row per non-crowd annotation:
    rank (1 = worst), rank_score, annotation_index, annotation_id, image_id, category_id,
    bbox [x, y, w, h], mask_source, mask_score (None if absent), mask_area (None without a
    segmentation), fill (mask area / box area, None without a mask), fill_z,
    and one reason column per flag, "" when the flag is off:
    low_score     mask_score < low_score, or no model mask (mask_source "box": the box
                  filled; "missing_image"/"invalid_box"/none: nothing labelled it)
    fill_outlier  robust z-score of the fill vs the class's median / MAD over |fill_z|:
                  z = 0.6745 (fill - median) / max(MAD, mad_floor), classes with >= 3 masks
    empty_mask    a segmentation with no pixel
    duplicate     box IoU > dup_iou with another box of the same class and image
    edge          the box touches the image border (within edge_px): likely truncated
    tiny          box area < tiny_area px

rank_score = (1 - mask_score, or 1 without a model score) + min(max(0, -z) / fill_z, 3)
[under-fill, continuous: whether flagged or not] + min(z / fill_z, 2) / 2 [over-fill, only
when flagged] + 2 [empty] + 1 [duplicate] + 0.05 [edge] + 0.05 [tiny]. The under-fill
term is there because on the synthetic set a mask that fills its box less than its class
usually does is the best single sign of a broken mask (it was chosen on the train
split's true masks and checked on val: benchmarks/README.md); the mask score orders the
rest, a definite defect (empty, duplicate) outranks a low score, the weak hints (edge,
tiny) only break ties. Ties keep json order.
"""
from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from boxdepth.data.rle import segmentation_area

FLAGS = ("low_score", "fill_outlier", "empty_mask", "duplicate", "edge", "tiny")
_MAD_TO_SIGMA = 0.6745  # MAD of a normal distribution is 0.6745 sigma


def _box_iou_xywh(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ax2, ay2, bx2, by2 = a[:, 0] + a[:, 2], a[:, 1] + a[:, 3], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    iw = np.clip(np.minimum(ax2[:, None], bx2[None]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(ay2[:, None], by2[None]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def _base_row(k: int, ann: dict, size_hw) -> dict:
    x, y, w, h = (float(v) for v in ann["bbox"])
    seg = ann.get("segmentation")
    area = segmentation_area(seg, *size_hw) if seg is not None else None
    score = ann.get("mask_score")
    return {"annotation_index": k, "annotation_id": ann.get("id"), "image_id": ann["image_id"],
            "category_id": ann["category_id"], "bbox": [x, y, w, h],
            "mask_source": ann.get("mask_source", ""),
            "mask_score": None if score is None else float(score), "mask_area": area,
            "fill": None if area is None or w * h <= 0 else area / (w * h), "fill_z": None,
            **{f: "" for f in FLAGS}}


def class_fill_stats(rows: list[dict], *, mad_floor: float = 0.02) -> dict:
    """{category_id: {"median", "mad", "n"}} over the rows that have a model or box mask."""
    fills = defaultdict(list)
    for r in rows:
        if r["fill"] is not None and r["mask_source"] not in ("missing_image", "invalid_box"):
            fills[r["category_id"]].append(r["fill"])
    out = {}
    for cat, v in fills.items():
        a = np.asarray(v, np.float64)
        med = float(np.median(a))
        out[cat] = {"median": med, "mad": max(float(np.median(np.abs(a - med))), mad_floor), "n": len(a)}
    return out


def _flag_scores_and_fill(rows: list[dict], stats: dict, low_score: float, fill_z: float) -> None:
    for r in rows:
        s, src = r["mask_score"], r["mask_source"]
        if src != "model" or s is None:
            r["low_score"] = {"box": "no model mask: the box filled", "": "no mask_score"}.get(
                src, f"not labelled ({src})")
        elif s < low_score:
            r["low_score"] = f"mask_score {s:.2f} < {low_score:g}"
        st = stats.get(r["category_id"])
        if r["mask_area"] == 0:
            r["empty_mask"] = "empty mask"
        if r["fill"] is None or st is None or st["n"] < 3:
            continue
        r["fill_z"] = _MAD_TO_SIGMA * (r["fill"] - st["median"]) / st["mad"]
        if abs(r["fill_z"]) > fill_z:
            r["fill_outlier"] = f"fill {r['fill']:.2f} vs class median {st['median']:.2f} (z {r['fill_z']:+.1f})"


def _flag_boxes(rows: list[dict], sizes: dict, dup_iou: float, edge_px: float, tiny_area: float) -> None:
    groups = defaultdict(list)
    for r in rows:
        groups[(r["image_id"], r["category_id"])].append(r)
        x, y, w, h = r["bbox"]
        ih, iw = sizes[r["image_id"]]
        if x <= edge_px or y <= edge_px or x + w >= iw - edge_px or y + h >= ih - edge_px:
            r["edge"] = "touches the image edge"
        if w * h < tiny_area:
            r["tiny"] = f"tiny box ({w * h:.0f} px < {tiny_area:g})"
    for group in groups.values():
        if len(group) < 2:
            continue
        iou = _box_iou_xywh(*(np.asarray([r["bbox"] for r in group], np.float64),) * 2)
        np.fill_diagonal(iou, 0.0)
        for i, j in zip(*np.nonzero(iou > dup_iou)):
            other = group[j]["annotation_id"]
            note = f"IoU {iou[i, j]:.2f} with annotation {other}"
            group[i]["duplicate"] = "; ".join(t for t in (group[i]["duplicate"], note) if t)


def rank_score(r: dict, fill_z: float) -> float:
    s = r["mask_score"] if r["mask_source"] == "model" and r["mask_score"] is not None else 0.0
    score = 1.0 - s + 2.0 * bool(r["empty_mask"]) + 1.0 * bool(r["duplicate"])
    z = r["fill_z"] if r["fill_z"] is not None and math.isfinite(r["fill_z"]) else 0.0
    score += min(max(-z, 0.0) / fill_z, 3.0)
    if r["fill_outlier"] and z > 0:
        score += min(z / fill_z, 2.0) / 2.0
    return score + 0.05 * bool(r["edge"]) + 0.05 * bool(r["tiny"])


def qa_rows(data: dict, *, low_score: float = 0.5, fill_z: float = 3.5, mad_floor: float = 0.02,
            dup_iou: float = 0.9, edge_px: float = 1.0, tiny_area: float = 256.0):
    """Flag and rank every non-crowd annotation (module doc)."""
    sizes = {img["id"]: (int(img["height"]), int(img["width"])) for img in data.get("images", [])}
    rows = [_base_row(k, a, sizes[a["image_id"]]) for k, a in enumerate(data.get("annotations") or [])
            if not a.get("iscrowd", 0)]
    stats = class_fill_stats(rows, mad_floor=mad_floor)
    _flag_scores_and_fill(rows, stats, low_score, fill_z)
    _flag_boxes(rows, sizes, dup_iou, edge_px, tiny_area)
    for r in rows:
        r["rank_score"] = round(rank_score(r, fill_z), 6)
        r["reasons"] = "; ".join(r[f] for f in FLAGS if r[f])
    rows.sort(key=lambda r: -r["rank_score"])  # stable: ties keep json order
    for i, r in enumerate(rows):
        r["rank"] = i + 1
        if r["fill_z"] is not None and not math.isfinite(r["fill_z"]):
            r["fill_z"] = None
    return rows, stats
