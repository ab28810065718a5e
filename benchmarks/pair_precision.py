"""How precise are the pairs the pairwise losses train on? (the L_cons investigation)

For every GT box of the first N images of a COCO json with masks (e.g. the demo's
val.json), at the losses' resolution (stride 4, 3x3 neighbours, dilation 2, SPEC §2), it
counts the neighbour pairs whose centre lies in the box, which of them are ACTIVE for the
colour term ([S_c >= 0.3]) and for the depth term ([S_d > tau] at several kappa, on the
pseudo depth and, when `depth_gt/` (uint16 mm) exists, on exact inverse depth), and how
many active pairs cross the GT mask edge (one end object, the other not): such pairs pull
object and background to one label. Pairs whose neighbour lies outside the box are
reported apart: they are the ones that can drag a mask past its box.

    python benchmarks/pair_precision.py runs/demo/data [--images 60] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from boxdepth.data.depth_io import depth_path_for, load_depth_png, normalize_inverse_depth
from boxdepth.data.image_io import load_image_rgb
from boxdepth.data.rle import segmentation_to_mask
from boxdepth.losses.depth import depth_similarity
from boxdepth.ops.pairwise import color_similarity, rgb_to_lab, unfold_wo_center

KAPPAS = (0.5, 0.2, 0.1, 0.05)


def _pool(a: np.ndarray) -> torch.Tensor:
    return F.avg_pool2d(torch.from_numpy(np.asarray(a, np.float32)).permute(2, 0, 1)[None], 4, 4)


def _similarities(data: Path, im: dict, tau: float) -> dict[str, torch.Tensor]:
    img = load_image_rgb(data / "images" / im["file_name"])
    h, w = img.shape[:2]
    ones = torch.ones(1, h // 4, w // 4)
    active = {"colour S_c>=0.3": color_similarity(rgb_to_lab(_pool(img)), ones, 3, 2) >= 0.3}
    depths = {"pseudo": load_depth_png(depth_path_for(data / "depth", im["file_name"]))}
    gt_path = depth_path_for(data / "depth_gt", im["file_name"])
    if gt_path.exists():
        mm = np.array(Image.open(gt_path)).astype(np.float64)
        depths["exact"] = normalize_inverse_depth(1.0 / np.maximum(mm / 1000.0, 1e-3))
    for src, d01 in depths.items():
        d255 = _pool(d01[..., None]) * 255.0
        for kappa in KAPPAS:
            active[f"{src} depth kappa {kappa}"] = depth_similarity(d255, ones, 3, 2, kappa) > tau
    return active


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", type=Path, help="dataset folder (images/, depth/, val.json with masks)")
    p.add_argument("--split-json", default="val.json")
    p.add_argument("--images", type=int, default=60)
    p.add_argument("--tau", type=float, default=0.5)
    p.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = p.parse_args(argv)
    coco = json.loads((args.data / args.split_json).read_text())
    counts: dict[str, list[float]] = {}
    total = np.zeros(4)  # pairs, crossing, neighbour outside box, crossing & outside
    for im in coco["images"][:args.images]:
        active = _similarities(args.data, im, args.tau)
        for a in (a for a in coco["annotations"] if a["image_id"] == im["id"]):
            m = segmentation_to_mask(a["segmentation"], im["height"], im["width"]).astype(np.float32)
            x, y, bw, bh = a["bbox"]
            box = np.zeros_like(m)
            box[int(y):int(np.ceil(y + bh)), int(x):int(np.ceil(x + bw))] = 1
            ms, bs = (torch.from_numpy(t[2::4, 2::4].copy())[None, None] for t in (m, box))
            valid = bs * unfold_wo_center(torch.ones_like(ms), 3, 2)[:, 0]
            cross = (unfold_wo_center(ms, 3, 2)[:, 0] != ms).float() * valid
            outside = (1 - unfold_wo_center(bs, 3, 2)[:, 0]) * valid
            total += [valid.sum(), cross.sum(), outside.sum(), (cross * outside).sum()]
            for name, act in active.items():
                act = act[..., :ms.shape[-2], :ms.shape[-1]].float() * valid
                c = counts.setdefault(name, [0.0] * 4)
                for i, t in enumerate((act, act * cross, act * outside, act * cross * outside)):
                    c[i] += float(t.sum())
    result = {"data": str(args.data), "images": min(args.images, len(coco["images"])),
              "pairs": total[0], "crossing": total[1] / total[0],
              "box_border_pairs": total[2] / total[0], "box_border_crossing": total[3] / total[2],
              "active": {n: {"active": c[0] / total[0], "crossing_among_active": c[1] / max(c[0], 1),
                             "box_border_active": c[2] / max(total[2], 1),
                             "box_border_crossing_among_active": c[3] / max(c[2], 1)}
                         for n, c in counts.items()}}
    print(f"{result['pairs']:.0f} pairs with the centre in a GT box ({result['images']} images); "
          f"{result['crossing']:.1%} cross the mask edge; at the box border (neighbour outside "
          f"the box) {result['box_border_crossing']:.1%} do")
    print(f"{'pairs':30s} {'active':>7s} {'crossing':>9s} {'border active':>14s} {'border crossing':>16s}")
    for n, r in result["active"].items():
        print(f"{n:30s} {r['active']:7.1%} {r['crossing_among_active']:9.2%} "
              f"{r['box_border_active']:14.1%} {r['box_border_crossing_among_active']:16.2%}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=float))
    return result


if __name__ == "__main__":
    main()
