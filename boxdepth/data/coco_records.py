"""COCO json validation and per-image records for `CocoBoxDataset` (SPEC §5).

`parse_coco(data, where, mode, min_box_size)` returns a `ParsedCoco`:
    cat_ids      list[int]   contiguous label -> COCO category id (ids sorted)
    class_names  list[str]
    records      list[dict]  one per image, json order:
        image_id int, file_name str (relative, '/'-separated, normalised),
        height int, width int,
        boxes float32 (N, 4) XYXY clipped to the image, labels int64 (N,),
        ann_ids list[int], ignore_boxes float32 (M, 4) (crowd, clipped),
        segmentations list (N,)  -- mask mode only; box mode never touches them
    summary      dict: json, images, boxes_kept, dropped_degenerate, dropped_outside,
                 ignored_crowd, images_without_boxes
    dropped      list of {annotation_id, image_id, file_name, bbox, reason}

Every error is a `CocoFormatError` naming the json (`where`), the image or annotation
id and the problem.
"""
from __future__ import annotations

import json
import math
import pickle
import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath

import numpy as np


class CocoFormatError(ValueError):
    pass


def read_coco_json(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"COCO json not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CocoFormatError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise CocoFormatError(f"{path}: top level must be an object, got {type(data).__name__}")
    return data


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def safe_relative_path(file_name, image_id, where: str) -> str:
    """`file_name` normalised to a '/'-separated path that stays inside the image root."""
    if not isinstance(file_name, str) or not file_name.strip():
        raise CocoFormatError(f"{where}: image id {image_id}: file_name must be a non-empty "
                              f"string, got {file_name!r}")
    posix = file_name.replace("\\", "/")
    if (posix.startswith("/") or re.match(r"^[A-Za-z]:", posix)
            or PureWindowsPath(file_name).is_absolute() or Path(file_name).is_absolute()):
        raise CocoFormatError(f"{where}: image id {image_id}: file_name {file_name!r} is an "
                              f"absolute path; it must be relative to the image root")
    norm = posixpath.normpath(posix)
    if norm == ".." or norm.startswith("../"):
        raise CocoFormatError(f"{where}: image id {image_id}: file_name {file_name!r} "
                              f"escapes the image root")
    return norm


def _list_field(data: dict, key: str, where: str, required: bool = True) -> list:
    if key not in data:
        if required:
            raise CocoFormatError(f"{where}: missing the '{key}' list")
        return []
    value = data[key]
    if not isinstance(value, list):
        raise CocoFormatError(f"{where}: '{key}' must be a list, got {type(value).__name__}")
    return value


def _parse_categories(data: dict, where: str) -> tuple[list[int], list[str]]:
    names: dict[int, str] = {}
    for k, cat in enumerate(_list_field(data, "categories", where)):
        if not isinstance(cat, dict) or not _is_int(cat.get("id")):
            raise CocoFormatError(f"{where}: categories[{k}] needs an integer 'id', got {cat!r}")
        if cat["id"] in names:
            raise CocoFormatError(f"{where}: duplicate category id {cat['id']}")
        names[cat["id"]] = str(cat.get("name", cat["id"]))
    if not names:
        raise CocoFormatError(f"{where}: 'categories' is empty")
    cat_ids = sorted(names)
    return cat_ids, [names[c] for c in cat_ids]


def _parse_images(data: dict, where: str) -> list[dict]:
    images, seen = [], set()
    for k, img in enumerate(_list_field(data, "images", where)):
        if not isinstance(img, dict) or not _is_int(img.get("id")):
            raise CocoFormatError(f"{where}: images[{k}] needs an integer 'id'")
        iid = img["id"]
        if iid in seen:
            raise CocoFormatError(f"{where}: duplicate image id {iid}")
        seen.add(iid)
        h, w = img.get("height"), img.get("width")
        if not (_is_int(h) and _is_int(w) and h > 0 and w > 0):
            raise CocoFormatError(f"{where}: image id {iid}: 'height' and 'width' must be "
                                  f"positive integers, got height={h!r} width={w!r}")
        images.append({"image_id": iid, "height": h, "width": w,
                       "file_name": safe_relative_path(img.get("file_name"), iid, where)})
    return images


def _check_bbox(ann: dict, ann_id, where: str) -> tuple[float, float, float, float]:
    bbox = ann.get("bbox")
    if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4
            and all(_is_number(v) for v in bbox)):
        raise CocoFormatError(f"{where}: annotation {ann_id}: malformed bbox {bbox!r}; "
                              f"expected [x, y, width, height] with 4 finite numbers")
    x, y, w, h = (float(v) for v in bbox)
    if w < 0 or h < 0:
        raise CocoFormatError(f"{where}: annotation {ann_id}: malformed bbox {bbox!r}; "
                              f"width and height must not be negative")
    return x, y, w, h


def clip_xywh(xywh, height: int, width: int, min_box_size: float):
    """(reason, xyxy): reason is None (kept), 'outside' or 'degenerate'."""
    x, y, w, h = xywh
    x1, y1 = min(max(x, 0.0), width), min(max(y, 0.0), height)
    x2, y2 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
    xyxy = [x1, y1, x2, y2]
    if w > 0 and h > 0 and (x >= width or y >= height or x + w <= 0 or y + h <= 0):
        return "outside", xyxy
    if x2 - x1 < min_box_size or y2 - y1 < min_box_size:
        return "degenerate", xyxy
    return None, xyxy


@dataclass
class ParsedCoco:
    cat_ids: list[int]
    class_names: list[str]
    records: list[dict]
    summary: dict
    dropped: list[dict] = field(default_factory=list)


def _check_annotation(ann, k: int, img_by_id: dict, cat_map: dict, where: str, seen_ids: set):
    if not isinstance(ann, dict):
        raise CocoFormatError(f"{where}: annotations[{k}] must be an object")
    ann_id = ann.get("id", f"#{k}")
    if "id" in ann:  # outputs (label, qa, evaluation) refer to annotations by id
        key = repr(ann_id)  # hashable whatever the json holds
        if key in seen_ids:
            raise CocoFormatError(f"{where}: duplicate annotation id {ann_id!r} "
                                  f"(annotations[{k}] and an earlier one)")
        seen_ids.add(key)
    if not _is_int(ann.get("image_id")) or ann["image_id"] not in img_by_id:
        raise CocoFormatError(f"{where}: annotation {ann_id}: image_id "
                              f"{ann.get('image_id')!r} is not in 'images'")
    cat = ann.get("category_id")
    if not _is_int(cat) or cat not in cat_map:
        raise CocoFormatError(f"{where}: annotation {ann_id}: category_id {cat!r} is not in "
                              f"'categories' (ids {sorted(cat_map)[:20]})")
    return ann_id, _check_bbox(ann, ann_id, where)


def _new_record(img: dict) -> dict:
    return dict(img, boxes=[], labels=[], ann_ids=[], ignore_boxes=[], segmentations=[])


def _finish_record(rec: dict, mode: str) -> dict:
    rec["boxes"] = np.asarray(rec["boxes"], np.float32).reshape(-1, 4)
    rec["labels"] = np.asarray(rec["labels"], np.int64).reshape(-1)
    rec["ignore_boxes"] = np.asarray(rec["ignore_boxes"], np.float32).reshape(-1, 4)
    if mode != "mask":
        del rec["segmentations"]
    return rec


def parse_coco(data: dict, *, where: str, mode: str = "box",
               min_box_size: float = 1.0) -> ParsedCoco:
    cat_ids, class_names = _parse_categories(data, where)
    cat_map = {c: i for i, c in enumerate(cat_ids)}
    images = _parse_images(data, where)
    recs = {img["image_id"]: _new_record(img) for img in images}
    counts = {"degenerate": 0, "outside": 0, "crowd": 0}
    dropped, seen_ids = [], set()
    for k, ann in enumerate(_list_field(data, "annotations", where, required=False)):
        ann_id, xywh = _check_annotation(ann, k, recs, cat_map, where, seen_ids)
        rec = recs[ann["image_id"]]
        reason, xyxy = clip_xywh(xywh, rec["height"], rec["width"], min_box_size)
        if ann.get("iscrowd", 0):
            counts["crowd"] += 1
            if xyxy[2] > xyxy[0] and xyxy[3] > xyxy[1]:
                rec["ignore_boxes"].append(xyxy)
            continue
        if reason is not None:
            counts[reason] += 1
            dropped.append({"annotation_id": ann_id, "image_id": rec["image_id"],
                            "file_name": rec["file_name"], "bbox": list(xywh),
                            "reason": reason})
            continue
        if mode == "mask":
            if "segmentation" not in ann:
                raise CocoFormatError(f"{where}: annotation {ann_id}: mode 'mask' needs a "
                                      f"'segmentation'")
            rec["segmentations"].append(ann["segmentation"])
        rec["boxes"].append(xyxy)
        rec["labels"].append(cat_map[ann["category_id"]])
        rec["ann_ids"].append(ann_id)
    records = [_finish_record(recs[img["image_id"]], mode) for img in images]
    summary = {"json": where, "images": len(records),
               "boxes_kept": int(sum(len(r["labels"]) for r in records)),
               "dropped_degenerate": counts["degenerate"], "dropped_outside": counts["outside"],
               "ignored_crowd": counts["crowd"],
               "images_without_boxes": sum(1 for r in records if len(r["labels"]) == 0)}
    return ParsedCoco(cat_ids, class_names, records, summary, dropped)


class PackedList:
    """Records pickled into one numpy buffer. DataLoader workers fork the dataset; a list
    of Python objects would be copied page by page as reference counts change."""

    def __init__(self, items: list):
        blobs = [pickle.dumps(x, protocol=pickle.HIGHEST_PROTOCOL) for x in items]
        self._ends = np.cumsum([len(b) for b in blobs], dtype=np.int64)
        self._buf = np.frombuffer(b"".join(blobs), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, index: int):
        start = int(self._ends[index - 1]) if index > 0 else 0
        return pickle.loads(self._buf[start:int(self._ends[index])].tobytes())
