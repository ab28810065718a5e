"""Dataset check: load a COCO dataset exactly as training would and report on it.

`inspect_dataset` builds the training dataset class (`CocoBoxDataset`, box mode, no
random transforms) and decodes every image and depth map through the same
`read_image` / `build_sample` calls training uses. Construction errors (bad json, bad
boxes, escaping paths, ...) propagate. Per-image problems are collected instead:

report keys:
    json, image_root, depth_root   str (depth_root None when not given)
    summary_line                   the dataset's one-line box summary
    num_images                     images in the json
    num_images_ok                  images that loaded completely
    num_classes, class_names
    instances_per_class            {class name: kept boxes} in label order
    num_instances                  kept boxes
    dropped                        {"degenerate": n, "outside": n}
    ignored                        {"crowd": n}
    dropped_boxes                  [{annotation_id, image_id, file_name, bbox, reason}]
    images_without_boxes           int
    depth                          {"with_depth", "total", "missing": [paths],
                                    "size_mismatch": [messages], "meta": dict | None}
    image_size                     {"min_w", "max_w", "min_h", "max_h"} or None
    skipped                        [{"file", "reason"}] (skip_bad_images=True only)
    errors                         [messages, each naming its file]; a CLI exits non-zero
                                   when this is non-empty
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

from boxdepth.data.coco import CocoBoxDataset, DepthSizeMismatchError
from boxdepth.data.depth_io import read_depth_meta
from boxdepth.data.image_io import BadImageError


def _class_counts(ds: CocoBoxDataset) -> dict[str, int]:
    counts = [0] * ds.num_classes
    for i in range(len(ds)):
        for label in ds.get_record(i)["labels"].tolist():
            counts[label] += 1
    names = ds.class_names
    keys = [n if names.count(n) == 1 else f"{n} (id {c})" for n, c in zip(names, ds.cat_ids)]
    return dict(zip(keys, counts))


def _empty_report(ds: CocoBoxDataset) -> dict:
    s = ds.summary
    per_class = _class_counts(ds)
    meta = read_depth_meta(ds.depth_root) if ds.depth_root is not None else None
    return {
        "json": str(ds.json_path), "image_root": str(ds.image_root),
        "depth_root": str(ds.depth_root) if ds.depth_root is not None else None,
        "summary_line": ds.summary_line, "num_images": len(ds), "num_images_ok": 0,
        "num_classes": ds.num_classes, "class_names": list(ds.class_names),
        "instances_per_class": per_class, "num_instances": sum(per_class.values()),
        "dropped": {"degenerate": s["dropped_degenerate"], "outside": s["dropped_outside"]},
        "ignored": {"crowd": s["ignored_crowd"]}, "dropped_boxes": list(ds.dropped),
        "images_without_boxes": s["images_without_boxes"],
        "depth": {"with_depth": 0, "total": len(ds), "missing": [], "size_mismatch": [],
                  "meta": meta},
        "image_size": None, "skipped": [], "errors": [],
    }


def _update_size(report: dict, h: int, w: int) -> None:
    r = report["image_size"]
    if r is None:
        report["image_size"] = {"min_w": w, "max_w": w, "min_h": h, "max_h": h}
        return
    r.update(min_w=min(r["min_w"], w), max_w=max(r["max_w"], w),
             min_h=min(r["min_h"], h), max_h=max(r["max_h"], h))


def _check_image(ds: CocoBoxDataset, i: int, report: dict) -> None:
    try:
        image = ds.read_image(i)
    except (FileNotFoundError, BadImageError) as e:
        if ds.skip_bad_images:
            report["skipped"].append({"file": str(ds.image_path(i)), "reason": str(e)})
        else:
            report["errors"].append(str(e))
        return
    try:
        sample = ds.build_sample(i, image)
    except DepthSizeMismatchError as e:
        report["depth"]["size_mismatch"].append(str(e))
        report["errors"].append(str(e))
        return
    except (FileNotFoundError, ValueError) as e:  # missing/corrupt depth, bad segmentation
        if isinstance(e, FileNotFoundError) and ds.depth_root is not None:
            report["depth"]["missing"].append(str(ds.depth_path(i)))
            # the dataset's own hint names the training key; here the flag is inspect's
            e = f"no depth map for image {ds.image_path(i)}: {ds.depth_path(i)} not found " \
                f"(--allow-missing-depth counts it and goes on)"
        report["errors"].append(str(e))
        return
    report["num_images_ok"] += 1
    _update_size(report, *sample["orig_size"])
    if sample["has_depth"]:
        report["depth"]["with_depth"] += 1
    elif ds.depth_root is not None:
        report["depth"]["missing"].append(str(ds.depth_path(i)))


@contextmanager
def _logger_level(level: int):
    log = logging.getLogger("boxdepth")
    old = log.level
    log.setLevel(level)
    try:
        yield
    finally:
        log.setLevel(old)


def inspect_dataset(json_path: str | Path, image_root: str | Path,
                    depth_root: str | Path | None = None, *, skip_bad_images: bool = False,
                    allow_missing_depth: bool = False, min_box_size: float = 1.0,
                    progress: bool = False) -> dict:
    """Report on a dataset (see the module docstring); `progress` shows a tqdm bar."""
    # the report carries the dataset's summary line: no second copy on the logger
    with _logger_level(logging.WARNING):
        ds = CocoBoxDataset(json_path, image_root, depth_root=depth_root, transforms=None,
                            mode="box", skip_bad_images=skip_bad_images,
                            allow_missing_depth=allow_missing_depth, min_box_size=min_box_size)
    report = _empty_report(ds)
    indices = range(len(ds))
    if progress:
        from tqdm import tqdm
        indices = tqdm(indices, desc="inspect", unit="img")
    for i in indices:
        _check_image(ds, i, report)
    return report


def _class_table(per_class: dict[str, int]) -> list[str]:
    width = max([len("class")] + [len(n) for n in per_class])
    lines = [f"  {'class':<{width}}  instances", f"  {'-' * width}  ---------"]
    lines += [f"  {name:<{width}}  {n:>9d}" for name, n in per_class.items()]
    return lines


def _depth_line(report: dict) -> str:
    d = report["depth"]
    if report["depth_root"] is None:
        return "none (no depth root given)"
    source = (d["meta"] or {}).get("source", "unknown; no meta.json")
    return (f"{d['with_depth']}/{d['total']} images (missing {len(d['missing'])}, "
            f"size mismatch {len(d['size_mismatch'])}; source {source})")


def _listing(title: str, items: list[str], limit: int) -> list[str]:
    if not items:
        return []
    lines = [f"{title} ({len(items)}):"] + [f"  {x}" for x in items[:limit]]
    if len(items) > limit:
        lines.append(f"  ... and {len(items) - limit} more")
    return lines


def format_inspect_report(report: dict, limit: int = 20) -> str:
    """Human-readable report; at most `limit` entries of each listing."""
    size = report["image_size"]
    size_text = (f"W {size['min_w']}..{size['max_w']}, H {size['min_h']}..{size['max_h']}"
                 if size else "no image could be read")
    lines = [
        f"json        {report['json']}",
        f"images      {report['num_images']} in json, {report['num_images_ok']} loaded, "
        f"{len(report['skipped'])} skipped (root {report['image_root']})",
        f"image size  {size_text}",
        f"boxes       {report['summary_line']}",
        f"instances   {report['num_instances']} in {report['num_classes']} classes",
        f"depth       {_depth_line(report)}",
        "",
    ]
    lines += _class_table(report["instances_per_class"])
    dropped = [f"annotation {b['annotation_id']} ({b['file_name']}): {b['reason']}, "
               f"bbox {b['bbox']}" for b in report["dropped_boxes"]]
    skipped = [f"{s['reason']}" for s in report["skipped"]]
    for title, items in (("dropped boxes", dropped), ("skipped images", skipped),
                         ("ERRORS", report["errors"])):
        block = _listing(title, items, limit)
        lines += ([""] + block) if block else []
    lines += ["", "OK" if not report["errors"] else f"FAILED: {len(report['errors'])} errors"]
    return "\n".join(lines)
