"""Mask quality on matched detections: how good the masks are where the boxes are found.

Mask AP mixes two things: whether an object is detected (box recall, score ranking) and
how well its mask fits. A mask loss can only change the second, and on a small benchmark
the first varies from seed to seed enough to hide it. `matched_mask_quality(gt, results)`
separates them::

    {"mask_iou": mean mask IoU over the matched GT objects (0-1, None if none matched),
     "matched": matched GT objects / GT objects (box recall at the threshold),
     "n_gt": number of GT objects, "n_matched": number matched}

Matching is by **box** IoU, never by mask, so the mask being scored does not decide
whether it is scored: per image and category, detections in descending score order each
take the unmatched GT object of highest box IoU >= `iou_threshold` (COCO's greedy rule).
Crowd GT objects and GT objects without a mask are left out. `gt` is a COCO dict (or a
path), `results` COCO results with RLE or polygon `segmentation` (or a path).
"""
from __future__ import annotations

import os
from collections import defaultdict

from boxdepth.engine.evaluate import has_mask, indexed_coco, load_gt_and_results


def _greedy_box_match(dets: list[dict], gts: list[dict], iou_threshold: float) -> list[tuple[dict, dict]]:
    from pycocotools import mask as mask_utils

    dets = sorted(dets, key=lambda d: -d["score"])
    ious = mask_utils.iou([d["bbox"] for d in dets], [g["bbox"] for g in gts], [0] * len(gts))
    taken: set[int] = set()
    pairs = []
    for i, det in enumerate(dets):
        best, best_iou = None, iou_threshold
        for j in range(len(gts)):
            if j not in taken and ious[i][j] >= best_iou:
                best, best_iou = j, ious[i][j]
        if best is not None:
            taken.add(best)
            pairs.append((det, gts[best]))
    return pairs


def matched_mask_quality(gt: dict | str | os.PathLike, results: list[dict] | str | os.PathLike,
                         iou_threshold: float = 0.5) -> dict:
    """Mean mask IoU of box-matched detections and the box recall (see the module doc)."""
    from pycocotools import mask as mask_utils

    source = "results" if isinstance(results, list) else os.fspath(results)
    gt, results = load_gt_and_results(gt, results)
    if any("segmentation" not in r for r in results):
        raise ValueError(f"{source}: every result needs a 'segmentation' (mask) for mask quality; "
                         "box-only results have no mask to score")
    coco_gt, coco_dt = indexed_coco(gt, results)
    by_key: dict[tuple, list[dict]] = defaultdict(list)
    for d in coco_dt.dataset["annotations"]:
        by_key[d["image_id"], d["category_id"]].append(d)
    gts_by_key: dict[tuple, list[dict]] = defaultdict(list)
    for g in coco_gt.dataset["annotations"]:
        if not g.get("iscrowd") and has_mask(g):
            gts_by_key[g["image_id"], g["category_id"]].append(g)
    n_gt = sum(len(v) for v in gts_by_key.values())
    ious = []
    for key, gts in gts_by_key.items():
        if not by_key.get(key):
            continue
        for det, g in _greedy_box_match(by_key[key], gts, iou_threshold):
            ious.append(float(mask_utils.iou([coco_dt.annToRLE(det)], [coco_gt.annToRLE(g)], [0])[0][0]))
    return {"mask_iou": round(sum(ious) / len(ious), 6) if ious else None,
            "matched": round(len(ious) / n_gt, 6) if n_gt else None,
            "n_gt": n_gt, "n_matched": len(ious)}
