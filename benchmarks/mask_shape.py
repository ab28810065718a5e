"""What shape are a model's masks? (the L_cons investigation)

For every GT instance of a COCO json with masks, take the top-scoring detection of its
class whose box has IoU > 0.5 with the GT box, and measure its mask against the GT box
and mask. Reads the COCO results files that evaluation writes (`<run>/results.json`).

    fill     mask area inside the GT box / box area      (GT masks themselves: gt_fill)
    outside  mask area OUTSIDE the GT box / box area     (masks grown past their box)
    fg_bg    share of the box background (box minus GT mask) called object
    miss     share of the GT mask not covered
    iou      mask IoU with the GT mask

    python benchmarks/mask_shape.py runs/demo/data/val.json runs/demo/boxinst_seed0 ... [--json out.json]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from boxdepth.data.rle import segmentation_to_mask


def _best_detection(dets: list[dict], ann: dict) -> dict | None:
    cands = [d for d in dets if d["category_id"] == ann["category_id"]]
    if not cands:
        return None
    ious = mask_utils.iou([d["bbox"] for d in cands], [ann["bbox"]], [0])[:, 0]
    ok = [d for d, i in zip(cands, ious) if i > 0.5]
    return max(ok, key=lambda d: d["score"]) if ok else None


def mask_shape(gt: dict, results: list[dict]) -> dict:
    by_image: dict[int, list[dict]] = {}
    for d in results:
        by_image.setdefault(d["image_id"], []).append(d)
    sizes = {im["id"]: (im["height"], im["width"]) for im in gt["images"]}
    rows = []
    for a in gt["annotations"]:
        det = _best_detection(by_image.get(a["image_id"], []), a)
        if det is None:
            continue
        h, w = sizes[a["image_id"]]
        m = mask_utils.decode(det["segmentation"]).astype(bool)
        g = segmentation_to_mask(a["segmentation"], h, w).astype(bool)
        x, y, bw, bh = a["bbox"]
        box = np.zeros_like(g)
        box[int(y):int(np.ceil(y + bh)), int(x):int(np.ceil(x + bw))] = True
        area = max(box.sum(), 1)
        rows.append({"fill": (m & box).sum() / area, "gt_fill": g.sum() / area,
                     "outside": (m & ~box).sum() / area,
                     "fg_bg": (m & box & ~g).sum() / max((box & ~g).sum(), 1),
                     "miss": (g & ~m).sum() / max(g.sum(), 1),
                     "iou": (m & g).sum() / max((m | g).sum(), 1)})
    out = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]} if rows else {}
    return {"instances": len(rows), "of": len(gt["annotations"]), **out}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("gt", type=Path, help="COCO json with masks (e.g. val.json)")
    p.add_argument("runs", nargs="+", type=Path, help="run folders holding results.json")
    p.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = p.parse_args(argv)
    gt = json.loads(args.gt.read_text())
    out = {}
    for run in args.runs:
        r = out[str(run)] = mask_shape(gt, json.loads((run / "results.json").read_text()))
        print(f"{run.name:24s} n={r['instances']:4d} " +
              " ".join(f"{k} {r[k]:.3f}" for k in ("fill", "gt_fill", "outside", "fg_bg", "miss", "iou") if k in r))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
