"""A COCO-style box data set of real photo content, built offline from the photos that
scikit-image ships (no download): for checks that need real image statistics at COCO-like
scale, e.g. that box regression learns (tests/test_box_regression.py has the small version).

Each 640x480 image is a background cut from one photo with 2-13 objects cut from others
(ellipses or hexagons; 30 % cover 40-95 % of the image side) pasted on, later ones
occluding earlier ones. 71 categories drawn from COCO's non-contiguous ids; images 5 and
77 have no box. Writes OUT/images/*.jpg, OUT/gt.json (RLE masks) and OUT/boxes.json
(boxes only, what box-supervised training reads).

    python benchmarks/photo_coco_set.py OUT [--images 128] [--seed 0]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "retina", "brick",
          "grass", "gravel", "color", "coins", "camera", "motorcycle_left", "moon", "ihc"]
COCO_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
W, H = 640, 480


def load_photos() -> list[Image.Image]:
    import skimage.data

    root = Path(skimage.data.__file__).parent
    out = []
    for name in PHOTOS:
        a = np.asarray(Image.open(next(root.glob(name + ".*"))))
        a = np.stack([a] * 3, -1) if a.ndim == 2 else a[..., :3]
        out.append(Image.fromarray(a.astype(np.uint8)))
    return out


def _paste(rng, canvas, labels, photos, j) -> None:
    big = rng.random() < 0.3
    w = int(rng.uniform(0.4, 0.95) * W) if big else int(rng.uniform(0.05, 0.4) * W)
    h = int(rng.uniform(0.4, 0.95) * H) if big else int(rng.uniform(0.05, 0.4) * H)
    x0, y0 = int(rng.integers(0, W - w + 1)), int(rng.integers(0, H - h + 1))
    patch = np.asarray(photos[rng.integers(len(photos))].resize((w, h)))
    m = Image.new("L", (w, h))
    draw = ImageDraw.Draw(m)
    if rng.random() < 0.5:
        draw.ellipse([0, 0, w - 1, h - 1], fill=1)
    else:
        pts = [(rng.uniform(0, w), rng.uniform(0, h)) for _ in range(6)]
        draw.polygon(sorted(pts, key=lambda p: np.arctan2(p[1] - h / 2, p[0] - w / 2)), fill=1)
    m = np.asarray(m).astype(bool)
    canvas[y0:y0 + h, x0:x0 + w][m] = patch[m]
    labels[y0:y0 + h, x0:x0 + w][m] = j


def _annotations(labels, cats, image_id, first_id) -> list[dict]:
    anns = []
    for j, c in cats.items():
        m = labels == j
        if m.sum() < 20:  # hidden behind later objects
            continue
        ys, xs = np.nonzero(m)
        rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        rle["counts"] = rle["counts"].decode()
        anns.append({"id": first_id + len(anns), "image_id": image_id, "category_id": c,
                     "bbox": [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
                              float(ys.max() - ys.min() + 1)],
                     "area": float(m.sum()), "iscrowd": 0, "segmentation": rle})
    return anns


def build(out: Path, n_images: int = 128, seed: int = 0, n_classes: int = 71) -> dict:
    rng = np.random.default_rng(seed)
    photos = load_photos()
    (out / "images").mkdir(parents=True, exist_ok=True)
    cat_ids = sorted(rng.choice(COCO_IDS, n_classes, replace=False).tolist())
    images, anns = [], []
    for i in range(n_images):
        canvas = np.asarray(photos[rng.integers(len(photos))].resize((W, H))).copy()
        labels = np.zeros((H, W), np.int32)
        k = 0 if i in (5, 77) else int(rng.integers(2, 14))
        cats = {}
        for j in range(1, k + 1):
            _paste(rng, canvas, labels, photos, j)
            cats[j] = int(rng.choice(cat_ids))
        name = f"images/{i:04d}.jpg"
        Image.fromarray(canvas).save(out / name, quality=90)
        images.append({"id": i + 1, "file_name": name, "width": W, "height": H})
        anns += _annotations(labels, cats, i + 1, len(anns) + 1)
    gt = {"images": images, "annotations": anns,
          "categories": [{"id": c, "name": f"class{c}"} for c in cat_ids]}
    (out / "gt.json").write_text(json.dumps(gt))
    boxes = dict(gt, annotations=[{k: v for k, v in a.items() if k != "segmentation"} for a in anns])
    (out / "boxes.json").write_text(json.dumps(boxes))
    return {"images": len(images), "boxes": len(anns), "classes": len(cat_ids)}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(build(a.out, a.images, a.seed))
