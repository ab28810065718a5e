"""A COCO-style box data set with the properties that once left box regression dead
(issue: real photos, COCO's non-contiguous category ids, dozens of classes, images
without any box, boxes covering much of the image), made in the test with no download: a background cut
from one photo with rectangles cut from others pasted on (the real photos of
../shared/data when given, else textured noise)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

# COCO's 80 ids: 1..90 with gaps
COCO_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    base = rng.integers(0, 256, 3)
    cells = rng.normal(0, 40, (max(h // 8, 1), max(w // 8, 1), 3))
    noise = np.kron(cells, np.ones((8, 8, 1)))[:h, :w]
    noise = np.pad(noise, ((0, h - noise.shape[0]), (0, w - noise.shape[1]), (0, 0)), mode="edge")
    return np.clip(base + noise + rng.normal(0, 10, (h, w, 3)), 0, 255).astype(np.uint8)


def _crop(rng: np.random.Generator, photos: list[np.ndarray], h: int, w: int) -> np.ndarray:
    if not photos:
        return _texture(rng, h, w)
    src = photos[rng.integers(len(photos))]
    sh, sw = src.shape[:2]
    ch, cw = int(rng.uniform(0.3, 1.0) * sh), int(rng.uniform(0.3, 1.0) * sw)
    y, x = int(rng.integers(0, sh - ch + 1)), int(rng.integers(0, sw - cw + 1))
    return np.asarray(Image.fromarray(src[y:y + ch, x:x + cw]).resize((w, h), Image.BILINEAR))


def make_coco_style(out: Path, *, photos: list[Path] = (), n_images: int = 24, n_classes: int = 40,
                    size=(160, 120), empty=(3, 11, 17), seed: int = 0) -> Path:
    """Writes out/images/*.png and out/boxes.json; returns the json's path."""
    rng = np.random.default_rng(seed)
    photos = [np.asarray(Image.open(p).convert("RGB")) for p in photos]
    w, h = size
    cat_ids = sorted(rng.choice(COCO_IDS, n_classes, replace=False).tolist())
    (out / "images").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(n_images):
        img = _crop(rng, photos, h, w).copy()
        n_obj = 0 if i in empty else int(rng.integers(2, 9))
        for _ in range(n_obj):
            large = rng.random() < 0.4
            bw = int(rng.uniform(0.5, 0.95) * w) if large else int(rng.uniform(0.1, 0.4) * w)
            bh = int(rng.uniform(0.5, 0.95) * h) if large else int(rng.uniform(0.1, 0.4) * h)
            x0, y0 = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
            img[y0:y0 + bh, x0:x0 + bw] = _crop(rng, photos, bh, bw)
            anns.append({"id": len(anns) + 101, "image_id": 1000 + i, "iscrowd": 0,
                         "category_id": int(rng.choice(cat_ids)),
                         "bbox": [float(x0), float(y0), float(bw), float(bh)], "area": float(bw * bh)})
        name = f"{i:03d}.png"
        Image.fromarray(img).save(out / "images" / name)
        images.append({"id": 1000 + i, "file_name": name, "width": w, "height": h})
    cats = [{"id": c, "name": f"class_{c}"} for c in cat_ids]
    path = out / "boxes.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path
