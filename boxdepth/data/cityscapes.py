"""Cityscapes gtFine polygons -> COCO json (SPEC §5): the 8 instance classes.

Input: GTFINE_ROOT/<split>/<city>/<city>_<seq>_<frame>_gtFine_polygons.json for the splits
"train" and "val" (whichever exist; the test split has no labels), each
{"imgHeight", "imgWidth", "objects": [{"label", "polygon": [[x, y], ...], "deleted"?}]}.

Output (written atomically): OUT/train.json (boxes only, no "segmentation": what
box-supervised training reads) and OUT/val.json (boxes + RLE masks for evaluation), COCO
dicts with
  images       {"id", "file_name" = "<split>/<city>/<stem>_leftImg8bit.png" (relative to
               the leftImg8bit root), "height", "width"}
  annotations  {"id", "image_id", "category_id", "bbox" XYWH of the visible mask, "area"
               (visible pixels), "iscrowd", ["segmentation" RLE, val only]}
  categories   {"id" = the Cityscapes label id (as cityscapesScripts and mmdetection's
               converter), "name"} for person 24, rider 25, car 26, truck 27, bus 28,
               train 31, motorcycle 32, bicycle 33.

Rasterisation follows cityscapesScripts' json2instanceImg: every polygon of the file is
drawn in file order with PIL's polygon fill, later ones over earlier ones, including the
classes that are not converted (road, building, ...), so an instance keeps only its
visible pixels and masks never overlap. "<class>group" labels (e.g. "cargroup") are crowd
regions: iscrowd=1 (training ignores them). Objects with "deleted" set are skipped, other
labels are not converted (they only occlude), instances with no visible pixel are dropped.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from boxdepth.fileio import atomic_write_json, refuse_overwriting_inputs

CITYSCAPES_THING_CLASSES = {"person": 24, "rider": 25, "car": 26, "truck": 27, "bus": 28,
                            "train": 31, "motorcycle": 32, "bicycle": 33}
SPLITS = {"train": False, "val": True}  # split -> with masks
POLYGON_SUFFIX = "_gtFine_polygons.json"


def read_polygon_file(path: Path) -> dict:
    """Load and check one gtFine polygons json; errors name the file and the problem."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read: {e}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid json: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a json object with imgHeight, imgWidth, objects")
    for key in ("imgHeight", "imgWidth", "objects"):
        if key not in data:
            raise ValueError(f"{path}: missing key {key!r}")
    if not isinstance(data["objects"], list):
        raise ValueError(f"{path}: 'objects' must be a list")
    for i, obj in enumerate(data["objects"]):
        poly = obj.get("polygon") if isinstance(obj, dict) else None
        if not isinstance(obj, dict) or "label" not in obj or not isinstance(poly, list) or \
                not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in poly):
            raise ValueError(f"{path}: object {i} needs a 'label' and a 'polygon' of [x, y] points")
    return data


def instance_label(label: str) -> tuple[str | None, bool]:
    """(converted class name or None, is crowd) of a gtFine label."""
    if label in CITYSCAPES_THING_CLASSES:
        return label, False
    if label.endswith("group") and label[:-len("group")] in CITYSCAPES_THING_CLASSES:
        return label[:-len("group")], True
    return None, False


def rasterise_instances(data: dict) -> tuple[np.ndarray, list[dict]]:
    """Draw every (not deleted) object in file order, later over earlier.

    Returns (index map int32 (H, W): 1 + position in the returned list of the object that
    owns the pixel, 0 = none; the drawn objects, each {"label", "name", "crowd"})."""
    h, w = int(data["imgHeight"]), int(data["imgWidth"])
    canvas = Image.new("I", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    drawn = []
    for obj in data["objects"]:
        if obj.get("deleted"):
            continue
        name, crowd = instance_label(str(obj["label"]))
        drawn.append({"label": str(obj["label"]), "name": name, "crowd": crowd})
        draw.polygon([(float(x), float(y)) for x, y in obj["polygon"]], fill=len(drawn))
    return np.asarray(canvas, dtype=np.int32), drawn


def image_annotations(data: dict, image_id: int, next_ann_id: int, with_masks: bool,
                      counts: Counter) -> list[dict]:
    """COCO annotations of one image (module docstring); `counts` gathers the summary."""
    index_map, drawn = rasterise_instances(data)
    anns = []
    for k, obj in enumerate(drawn, start=1):
        if obj["name"] is None:
            counts["not_converted"] += 1
            continue
        mask = index_map == k
        if not mask.any():
            counts["fully_occluded"] += 1
            continue
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        ann = {"id": next_ann_id + len(anns), "image_id": image_id,
               "category_id": CITYSCAPES_THING_CLASSES[obj["name"]],
               "bbox": [float(v) for v in mask_utils.toBbox(rle)], "area": float(mask_utils.area(rle)),
               "iscrowd": int(obj["crowd"])}
        if with_masks:
            ann["segmentation"] = {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}
        anns.append(ann)
        counts["crowd" if obj["crowd"] else obj["name"]] += 1
    return anns


def convert_split(gtfine_root: Path, split: str, images_root: Path | None) -> tuple[dict, dict]:
    """One split -> (COCO dict, summary {"images", "instances" per class, "crowd", ...})."""
    files = sorted((gtfine_root / split).glob(f"*/*{POLYGON_SUFFIX}"))
    if not files:
        raise FileNotFoundError(f"{gtfine_root / split}: no <city>/*{POLYGON_SUFFIX} files")
    images, annotations, counts = [], [], Counter()
    for image_id, path in enumerate(files):
        data = read_polygon_file(path)
        stem = path.name[:-len(POLYGON_SUFFIX)]
        file_name = f"{split}/{path.parent.name}/{stem}_leftImg8bit.png"
        if images_root is not None and not (images_root / file_name).is_file():
            raise FileNotFoundError(f"{images_root / file_name}: image of {path} not found")
        images.append({"id": image_id, "file_name": file_name, "height": int(data["imgHeight"]),
                       "width": int(data["imgWidth"])})
        annotations += image_annotations(data, image_id, len(annotations) + 1, SPLITS[split], counts)
    categories = [{"id": i, "name": n} for n, i in CITYSCAPES_THING_CLASSES.items()]
    summary = {"images": len(images), "annotations": len(annotations),
               "instances": {n: counts[n] for n in CITYSCAPES_THING_CLASSES}, "crowd": counts["crowd"],
               "not_converted": counts["not_converted"], "fully_occluded": counts["fully_occluded"]}
    return {"images": images, "annotations": annotations, "categories": categories}, summary


def convert_cityscapes(gtfine_root: str | Path, out_dir: str | Path, *,
                       images_root: str | Path | None = None) -> dict:
    """Convert the train and val splits found under `gtfine_root` into `out_dir`
    (train.json, val.json). With `images_root` (leftImg8bit) every image must exist there.
    Returns {split: summary dict + "json": path written}."""
    root, out = Path(gtfine_root), Path(out_dir)
    refuse_overwriting_inputs({"--out": out, **{f"--out ({s}.json)": out / f"{s}.json" for s in SPLITS}},
                              {"GTFINE_ROOT": root, "--images": images_root})
    if not root.is_dir():
        raise FileNotFoundError(f"gtFine folder not found: {root}")
    images = Path(images_root) if images_root is not None else None
    if images is not None and not images.is_dir():
        raise FileNotFoundError(f"leftImg8bit folder not found: {images}")
    splits = [s for s in SPLITS if (root / s).is_dir()]
    if not splits:
        raise FileNotFoundError(f"{root}: neither train/ nor val/ found (expected the gtFine root)")
    converted = {split: convert_split(root, split, images) for split in splits}
    report = {}
    for split, (coco, summary) in converted.items():  # write only once everything converted
        atomic_write_json(out / f"{split}.json", coco, indent=None)
        report[split] = {**summary, "json": str(out / f"{split}.json")}
    return report


def format_cityscapes_summary(report: dict) -> str:
    lines = []
    for split, s in report.items():
        per_class = ", ".join(f"{n} {c}" for n, c in s["instances"].items())
        lines.append(f"{split}: {s['images']} images, {s['annotations']} annotations -> {s['json']}\n"
                     f"  {per_class}; crowd {s['crowd']}; fully occluded dropped {s['fully_occluded']}; "
                     f"other labels {s['not_converted']}")
    return "\n".join(lines)
