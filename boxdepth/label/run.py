"""`boxdepth label`: a model's mask for every box of a COCO json, written as a new json.

    run_label(model, *, json_path, images_root, out_path, depth_root=None, batch_size=4,
              device="cpu", progress=True, **label_batch options) -> summary dict
    label_options(cfg) -> the label_batch options of a config (keyword dict)

Output: the input json, copied exactly (ids, extra keys, images, categories, crowd
annotations), in which every non-crowd annotation of a readable image gets
    segmentation  COCO RLE {"size": [H, W], "counts": str} of its label mask
    area          the mask's pixel count
    mask_score    S_match of the box's model prediction, in [0, 1] (0 for a box fill)
    mask_source   "model", or "box" when no prediction matched: the box itself filled.
Annotations that cannot be labelled keep their segmentation and area as they were and
get only a mask_source: "missing_image" (the image file is missing, undecodable or not
the size the json says; it is named in a warning and the run goes on) or "invalid_box"
(a box training would drop too: outside the image or thinner than `min_box_size`).

The output is written once at the end, atomically (temp file + rename): an interrupted
or failed run leaves an existing output untouched. Meanwhile each labelled image goes to
a journal beside it (`<out>.partial.jsonl`, `label.progress`) that `resume=True` takes
up again; a finished run deletes it. Images with pseudo depth (a map at
`depth_root/<file_name with .png>`) are matched depth-aware; an image whose map is
missing or unreadable is matched by box IoU (training's S_match without depth), with a warning.

summary: {"images", "resumed_images", "labelled_images", "annotations", "model", "box", "missing_image",
"invalid_box", "crowd", "depth_images", "missing_images" [paths], "out", "seconds"}.
"""
from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

from tqdm import tqdm

from boxdepth.data.coco_records import clip_xywh, parse_coco, read_coco_json
from boxdepth.data.depth_io import depth_path_for, load_depth_png
from boxdepth.data.image_io import BadImageError, load_image_rgb
from boxdepth.data.rle import mask_to_rle, rle_area
from boxdepth.fileio import atomic_write_json, refuse_overwriting_inputs
from boxdepth.label.model_masks import label_batch
from boxdepth.label.progress import LabelJournal, job_fingerprint

log = logging.getLogger("boxdepth")


def label_options(cfg) -> dict:
    """label_batch's keywords from a config: the teacher's test scale and training's matcher."""
    d, b = cfg.distill, cfg.loss.boxinst
    return {"size": int(d.teacher_size), "max_size": int(d.teacher_max_size),
            "mask_stride": int(cfg.model.mask_head.mask_out_stride),
            "mask_threshold": float(cfg.model.mask_threshold), "alpha": float(d.alpha),
            "beta": float(d.beta), "tau_d": float(d.tau_d),
            "kappa": float(cfg.loss.depth_consistency.kappa), "kernel_size": int(b.pairwise_size),
            "dilation": int(b.pairwise_dilation)}


def annotation_plan(data: dict, *, where: str, min_box_size: float = 1.0):
    """Validate the json (errors name it) -> (records, {image_id: [annotation index of each
    record box, in order]}, [indices of invalid boxes], number of crowd annotations)."""
    parsed = parse_coco(data, where=where, mode="box", min_box_size=min_box_size)
    sizes = {r["image_id"]: (r["height"], r["width"]) for r in parsed.records}
    kept: dict[int, list[int]] = {iid: [] for iid in sizes}
    invalid, crowd = [], 0
    for k, ann in enumerate(data.get("annotations") or []):
        if ann.get("iscrowd", 0):
            crowd += 1
            continue
        h, w = sizes[ann["image_id"]]
        reason, _ = clip_xywh([float(v) for v in ann["bbox"]], h, w, min_box_size)
        (invalid if reason else kept[ann["image_id"]]).append(k)
    for r in parsed.records:  # the same rule as parse_coco's, so the counts must agree
        if len(kept[r["image_id"]]) != len(r["boxes"]):
            raise RuntimeError(f"{where}: image id {r['image_id']}: {len(kept[r['image_id']])} "
                               f"annotations to label but {len(r['boxes'])} boxes kept")
    return parsed.records, kept, invalid, crowd


def _load_item(rec: dict, images_root: Path, depth_root: Path | None) -> tuple[dict | None, str | None]:
    """(item for label_batch, None) or (None, why the image was skipped)."""
    path = images_root / rec["file_name"]
    try:
        image = load_image_rgb(path)
    except (FileNotFoundError, BadImageError) as e:
        return None, str(e)
    if image.shape[:2] != (rec["height"], rec["width"]):
        return None, (f"image {path} is {image.shape[1]}x{image.shape[0]} but the json says "
                      f"{rec['width']}x{rec['height']} (width x height)")
    d01 = None
    if depth_root is not None:
        dpath = depth_path_for(depth_root, rec["file_name"])
        try:
            d01 = load_depth_png(dpath)
        except (FileNotFoundError, ValueError) as e:
            log.warning("label: no usable pseudo depth for %s (%s); matching by box IoU", path, e)
        if d01 is not None and d01.shape != image.shape[:2]:
            log.warning("label: depth %s is %s, image %s is %s; matching by box IoU",
                        dpath, d01.shape, path, image.shape[:2])
            d01 = None
    return {"image": image, "d01": d01, "boxes": rec["boxes"]}, None


def _image_labels(indices: list[int], res: dict) -> list[dict]:
    """The fields each annotation (by its index in the json) gets."""
    masks = res["masks"].cpu().numpy()
    labels = []
    for j, k in enumerate(indices):
        rle = mask_to_rle(masks[j])
        labels.append({"index": k, "segmentation": rle, "area": rle_area(rle),
                       "mask_score": round(float(res["score"][j]), 6), "mask_source": res["source"][j]})
    return labels


def _apply(anns: list, labels: list[dict], counts: dict) -> None:
    for lab in labels:
        anns[lab["index"]].update({k: v for k, v in lab.items() if k != "index"})
        counts[lab["mask_source"]] += 1


def _load_chunk(chunk: list[dict], images_root: Path, depth_root, kept: dict, anns: list, counts: dict,
                missing: list) -> tuple[list[dict], list[int]]:
    """label_batch items and image ids of the readable images; the others are named in a
    warning and their annotations flagged "missing_image"."""
    items, ids = [], []
    for rec in chunk:
        item, why = _load_item(rec, images_root, Path(depth_root) if depth_root else None)
        if item is None:
            log.warning("label: skipping %s: %s", rec["file_name"], why)
            missing.append(str(images_root / rec["file_name"]))
            for k in kept[rec["image_id"]]:
                anns[k]["mask_source"] = "missing_image"
            counts["missing_image"] += len(kept[rec["image_id"]])
            continue
        items.append(item)
        ids.append(rec["image_id"])
    return items, ids


def _check_numbers(*, min_iou: float, batch_size: int) -> None:
    if not 0.0 <= float(min_iou) <= 1.0:  # an IoU; 5 would turn every box into a box fill
        raise ValueError(f"--min-iou must be a box IoU in [0, 1], got {min_iou:g}")
    if int(batch_size) < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}")


def run_label(model, *, json_path, images_root, out_path, depth_root=None, batch_size: int = 4,
              device="cpu", progress: bool = True, min_box_size: float = 1.0, resume: bool = False,
              weights=None, **options) -> dict:
    """Label every box (module doc); returns the summary. `resume` takes up the images a
    stopped run of the same job already labelled (`label.progress`); `weights` only
    identifies the job."""
    t0 = time.perf_counter()
    json_path, images_root, out_path = Path(json_path), Path(images_root), Path(out_path)
    _check_numbers(min_iou=options.get("min_iou", 0.3), batch_size=batch_size)
    refuse_overwriting_inputs({"--out": out_path}, {"--json": json_path, "--images": images_root,
                                                    "--depth": depth_root, "--weights": weights})
    data = read_coco_json(json_path)
    records, kept, invalid, crowd = annotation_plan(data, where=str(json_path), min_box_size=min_box_size)
    out = copy.deepcopy(data)
    anns = out.get("annotations") or []
    for k in invalid:
        anns[k]["mask_source"] = "invalid_box"
    counts = {"model": 0, "box": 0, "missing_image": 0, "depth_images": 0}
    job = {**options, "min_box_size": min_box_size, "depth_root": str(depth_root)}
    journal = LabelJournal(out_path, job_fingerprint(json_path, weights, job), resume=resume)
    for labels in journal.done.values():
        _apply(anns, labels, counts)
    todo = [r for r in records if len(r["boxes"]) and r["image_id"] not in journal.done]
    missing: list[str] = []
    bar = tqdm(total=len(todo), desc="label", disable=not progress, dynamic_ncols=True)
    step = max(int(batch_size), 1)
    try:
        for start in range(0, len(todo), step):
            chunk = todo[start:start + step]
            items, ids = _load_chunk(chunk, images_root, depth_root, kept, anns, counts, missing)
            for res, image_id in zip(label_batch(model, items, device=device, **options), ids):
                labels = _image_labels(kept[image_id], res)
                journal.add(image_id, labels)
                _apply(anns, labels, counts)
                counts["depth_images"] += int(res["depth_match"])
            bar.update(len(chunk))
    finally:
        bar.close()
        journal.close()
    atomic_write_json(out_path, out, indent=None)
    journal.finish()
    return {"images": len(records), "resumed_images": len(journal.done),
            "labelled_images": len(todo) - len(missing) + len(journal.done),
            "annotations": len(anns), **counts, "invalid_box": len(invalid), "crowd": crowd,
            "missing_images": missing, "out": str(out_path),
            "seconds": round(time.perf_counter() - t0, 2)}


def format_label_summary(s: dict) -> str:
    """Lines for the command line."""
    lines = [f"labelled {s['model'] + s['box']} box(es) in {s['labelled_images']} of {s['images']} "
             f"image(s) in {s['seconds']:.1f} s: {s['model']} model mask(s), {s['box']} box fill(s) "
             f"(mask_source 'box'); {s['depth_images']} image(s) matched with pseudo depth",
             f"  untouched: {s['crowd']} crowd, {s['invalid_box']} invalid box(es), "
             f"{s['missing_image']} box(es) of {len(s['missing_images'])} unreadable image(s) "
             f"(mask_source 'missing_image')"]
    lines += [f"    missing/corrupt: {p}" for p in s["missing_images"][:20]]
    lines.append(f"  wrote {s['out']}")
    return "\n".join(lines)
