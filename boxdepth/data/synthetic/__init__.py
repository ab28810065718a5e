"""Embedded synthetic RGB-D instance dataset: the default data of the tool's main job.

Each image is a room or table top (floor/table plane receding to a back wall, sometimes a
side wall) seen by a pitched pinhole camera, with flat background clutter that is NOT
annotated (posters, rugs, stains, skirting, light pools, contact shadows) and 2-8
textured 3D objects of 4 classes (disc, box, triangle, ring) composited far-to-near
through a z-buffer over metric depth (`scene.py`, `objects.py`).

Knobs of `generate_synthetic_dataset`:
  camouflage   fraction of objects (default 0.3) coloured/textured like their
               surroundings: a shifted copy of the image around them, so colour alone
               cannot separate them. The default is a MIX; 1.0 makes every object
               camouflaged, 0.0 none. Changing it changes textures only, not geometry.
  depth_error  scale of the pseudo-depth degradation (default 1.0; 0 = exact inverse
               ground-truth depth, normalised). The pseudo depth mimics a monocular
               predictor: inverse depth, blurred boundaries (sigma = e * max(H, W) / 128
               px), a random gamma, a low-frequency multiplicative and additive error
               field, texture copying from the image and pixel noise, then the per-image
               robust normalisation of SPEC §0. It is imperfect on purpose.
  min_objects, max_objects   objects drawn per image (uniform). Objects whose visible
               area is below 30 px are REMOVED from the scene (not kept as unannotated
               clutter) and the scene is recomposited, so every object pixel is annotated.

Layout written under `out_dir` (file names relative to `out_dir/images`):
  images/{train,val}/NNNNNN.png   RGB uint8
  depth_gt/{train,val}/NNNNNN.png metric depth, uint16 millimetres (+ meta.json)
  depth/{train,val}/NNNNNN.png    pseudo inverse depth, uint16 = d01 * 65535 (+ meta.json)
  train.json  COCO, boxes only (no `segmentation`; `area` = box area): what training reads
  train_masks.json  the same images with RLE masks, ONLY for the fully supervised upper
              bound (`loss.mode=mask`) that the demo compares against
  val.json    COCO with RLE `segmentation`; `area` = mask area
  preview.png, summary.json, README.txt
Every `bbox` is the tight box of the instance's visible mask. Annotations carry an extra
boolean `camouflaged`. Image and annotation ids start at 1 in each file. Output is a
pure function of the arguments (one `np.random.default_rng([seed, split, index, k])`
stream per image), so two runs write byte-identical files.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from boxdepth.data.depth_io import (depth_path_for, normalize_inverse_depth, save_depth_png,
                                    write_depth_meta)
from boxdepth.data.rle import mask_to_rle, mask_to_xywh
from boxdepth.data.synthetic.objects import CATEGORIES
from boxdepth.data.synthetic.preview import save_preview
from boxdepth.data.synthetic.scene import render_scene
from boxdepth.data.synthetic.texture import value_noise
from boxdepth.fileio import atomic_save, atomic_write_json, atomic_write_text

SPLITS = ("train", "val")
MIN_VISIBLE_AREA = 30
PREVIEW_IMAGES = 4


def pseudo_depth(depth_m: np.ndarray, image: np.ndarray, rng: np.random.Generator,
                 depth_error: float) -> np.ndarray:
    """Degrade metric depth (H, W) like a monocular predictor -> d01 float32 (H, W)."""
    h, w = depth_m.shape
    inv = 1.0 / np.maximum(depth_m.astype(np.float64), 1e-3)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    size = max(h, w)
    # draw everything whatever depth_error is, so the streams stay aligned
    gain_field = value_noise(rng, size / 2.5)(xx, yy)
    offset_field = value_noise(rng, size / 3.0)(xx, yy)
    gamma = float(np.exp(0.25 * rng.standard_normal()))
    pixel_noise = rng.standard_normal((h, w))
    e = float(depth_error)
    if e <= 0:
        return normalize_inverse_depth(inv)
    lo, hi = np.percentile(inv, [1.0, 99.0])
    x = (inv - lo) / max(hi - lo, 1e-9)
    # predictors smear depth edges over a few pixels (low output resolution, big kernels)
    x = ndimage.gaussian_filter(x, sigma=e * size / 128.0)
    # relative depth is only roughly affine in inverse depth, and drifts across the image
    x = np.clip(x, 0.0, None) ** (gamma ** e)
    x = x * np.exp(0.15 * e * gain_field) + 0.04 * e * offset_field
    # texture copying: strong image edges leak into the prediction
    lum = image.astype(np.float64).mean(axis=2) / 255.0
    high = lum - ndimage.gaussian_filter(lum, 2.0)
    x = x + 0.01 * e * high / (high.std() + 1e-6) + 0.008 * e * pixel_noise
    return normalize_inverse_depth(x)


def synthesize_image(seed: int, split_index: int, image_index: int, *, size=(256, 192),
                     camouflage: float = 0.3, depth_error: float = 1.0, min_objects: int = 2,
                     max_objects: int = 8) -> dict:
    """One image of the dataset exactly as `generate_synthetic_dataset` writes it: the
    `render_scene` dict (image, depth_m, labels, objects) plus `depth01`."""
    width, height = size
    scene = render_scene(np.random.default_rng([seed, split_index, image_index, 0]),
                         width=width, height=height, camouflage=camouflage,
                         min_objects=min_objects, max_objects=max_objects,
                         min_area=MIN_VISIBLE_AREA)
    scene["depth01"] = pseudo_depth(scene["depth_m"], scene["image"],
                                    np.random.default_rng([seed, split_index, image_index, 1]),
                                    depth_error)
    return scene


def instance_annotations(scene: dict, image_id: int, first_id: int, with_masks: bool):
    """COCO annotations of one scene; `bbox` is the tight box of each visible mask."""
    anns = []
    for k, obj in enumerate(scene["objects"]):
        mask = scene["labels"] == k
        box = mask_to_xywh(mask)
        ann = {"id": first_id + k, "image_id": image_id, "category_id": obj["category_id"],
               "bbox": box, "area": float(box[2] * box[3]), "iscrowd": 0,
               "camouflaged": obj["camouflaged"]}
        if with_masks:
            ann["segmentation"] = mask_to_rle(mask)
            ann["area"] = float(mask.sum())
        anns.append(ann)
    return anns


def _box_only(ann: dict) -> dict:
    """The box-supervision view of an annotation: no mask, `area` = box area."""
    out = {k: v for k, v in ann.items() if k != "segmentation"}
    out["area"] = float(ann["bbox"][2] * ann["bbox"][3])
    return out


def _write_scene(out: Path, file_name: str, scene: dict) -> None:
    image = Image.fromarray(scene["image"])
    atomic_save(out / "images" / file_name, lambda p: image.save(p, format="PNG"))
    mm = np.clip(np.round(scene["depth_m"].astype(np.float64) * 1000.0), 1, 65535)
    gt = Image.fromarray(mm.astype(np.uint16))
    atomic_save(depth_path_for(out / "depth_gt", file_name),
                lambda p: gt.save(p, format="PNG"))
    save_depth_png(depth_path_for(out / "depth", file_name), scene["depth01"])


def _check_args(n_train, n_val, size, camouflage, depth_error, min_objects, max_objects):
    if n_train < 0 or n_val < 0:
        raise ValueError(f"image counts must be >= 0, got train={n_train} val={n_val}")
    if len(size) != 2 or min(size) < 32:
        raise ValueError(f"size must be (width, height) with both >= 32, got {size}")
    if not 0.0 <= camouflage <= 1.0:
        raise ValueError(f"camouflage is a fraction in [0, 1], got {camouflage}")
    if depth_error < 0:
        raise ValueError(f"depth_error must be >= 0, got {depth_error}")
    if not 1 <= min_objects <= max_objects:
        raise ValueError(f"need 1 <= min_objects <= max_objects, got {min_objects}, "
                         f"{max_objects}")


def _split_stats(images, anns) -> dict:
    names = {c["id"]: c["name"] for c in CATEGORIES}
    per_class = {c["name"]: 0 for c in CATEGORIES}
    for a in anns:
        per_class[names[a["category_id"]]] += 1
    return {"images": len(images), "instances": len(anns), "per_class": per_class,
            "camouflaged_instances": sum(bool(a["camouflaged"]) for a in anns)}


def _coco(split: str, images: list, anns: list, knobs: dict) -> dict:
    return {"info": {"description": f"boxdepth synthetic RGB-D dataset, {split} split",
                     "version": "1", "generator": "boxdepth.data.synthetic", **knobs},
            "licenses": [], "images": images, "annotations": anns,
            "categories": [dict(c) for c in CATEGORIES]}


def _generate_split(out: Path, split_index: int, count: int, knobs: dict, bar,
                    keep: list) -> tuple[list, list]:
    split = SPLITS[split_index]
    width, height = knobs["size"]
    images, anns = [], []
    for i in range(count):
        scene = synthesize_image(
            knobs["seed"], split_index, i, size=(width, height),
            camouflage=knobs["camouflage"], depth_error=knobs["depth_error"],
            min_objects=knobs["min_objects"], max_objects=knobs["max_objects"])
        file_name = f"{split}/{i:06d}.png"
        _write_scene(out, file_name, scene)
        images.append({"id": i + 1, "file_name": file_name, "width": width, "height": height})
        anns += instance_annotations(scene, i + 1, len(anns) + 1, with_masks=True)
        if split == "train" and len(keep) < PREVIEW_IMAGES:
            keep.append(scene)
        bar.update(1)
    return images, anns


def generate_synthetic_dataset(out_dir, *, n_train: int = 300, n_val: int = 100,
                               size=(256, 192), seed: int = 0, camouflage: float = 0.3,
                               depth_error: float = 1.0, min_objects: int = 2,
                               max_objects: int = 8, preview: bool = True,
                               progress: bool = True) -> dict:
    """Write the dataset (layout in the module docstring); returns the summary dict
    (knobs, per-split counts of images/instances per class, relative file paths) with
    `out_dir` added."""
    from tqdm import tqdm

    _check_args(n_train, n_val, size, camouflage, depth_error, min_objects, max_objects)
    out = Path(out_dir)
    knobs = {"seed": int(seed), "size": [int(size[0]), int(size[1])],
             "camouflage": float(camouflage), "depth_error": float(depth_error),
             "min_objects": int(min_objects), "max_objects": int(max_objects),
             "min_visible_area": MIN_VISIBLE_AREA}
    summary = {"knobs": knobs, "categories": [c["name"] for c in CATEGORIES], "splits": {},
               "files": {"images": "images", "depth": "depth", "depth_gt": "depth_gt",
                         "train": "train.json", "train_masks": "train_masks.json",
                         "val": "val.json"}}
    shown: list = []
    with tqdm(total=n_train + n_val, desc="synth", unit="img", disable=not progress) as bar:
        for split_index, count in enumerate((n_train, n_val)):
            split = SPLITS[split_index]
            images, anns = _generate_split(out, split_index, count, knobs, bar, shown)
            if split == "train":
                atomic_write_json(out / "train_masks.json", _coco(split, images, anns, knobs),
                                  indent=None)
                anns = [_box_only(a) for a in anns]
            atomic_write_json(out / f"{split}.json", _coco(split, images, anns, knobs),
                              indent=None)
            summary["splits"][split] = _split_stats(images, anns)
    _write_meta(out, knobs)
    if preview and shown:
        save_preview(out / "preview.png", shown)
        summary["files"]["preview"] = "preview.png"
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "README.txt", _readme(summary))
    return {**summary, "out_dir": str(out)}


def _write_meta(out: Path, knobs: dict) -> None:
    write_depth_meta(out / "depth", source="synthetic-pseudo", **knobs,
                     degradation="inverse GT depth, boundary blur, gamma, low-frequency "
                                 "gain/offset fields, texture copying, pixel noise "
                                 "(all scaled by depth_error)")
    atomic_write_json(out / "depth_gt" / "meta.json", {
        "source": "synthetic-gt", "inverse_depth": False, "units": "mm",
        "encoding": "uint16 png, value = metric depth in millimetres (camera z)", **knobs})


def format_summary(summary: dict) -> str:
    """Human-readable lines for the CLI and README.txt."""
    k = summary["knobs"]
    lines = [f"synthetic RGB-D dataset: size {k['size'][0]}x{k['size'][1]}, seed {k['seed']}, "
             f"camouflage {k['camouflage']:g}, depth_error {k['depth_error']:g}, "
             f"{k['min_objects']}-{k['max_objects']} objects per image"]
    for split, s in summary["splits"].items():
        per = ", ".join(f"{n} {c}" for c, n in s["per_class"].items())
        lines.append(f"  {split}: {s['images']} images, {s['instances']} instances "
                     f"({per}; {s['camouflaged_instances']} camouflaged)")
    if "out_dir" in summary:
        lines.append(f"  written to {summary['out_dir']}")
    return "\n".join(lines)


def _readme(summary: dict) -> str:
    doc = (__doc__ or "").split("Knobs of", 1)[-1]
    return format_summary(summary) + "\n\nKnobs of" + doc
