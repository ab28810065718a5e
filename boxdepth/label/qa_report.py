"""`boxdepth qa`: the ranked report of a labelled json and the contact sheet of the worst.

    run_qa(json_path, images_root, out_dir, *, top=24, **qa_rows thresholds) -> summary
    format_qa_summary(summary) -> str

Writes under `out_dir`, each file atomically:
    qa.csv          one row per non-crowd annotation, worst first: rank, rank_score,
                    annotation_id, image_id, file_name, category_id, category, x, y, w, h,
                    mask_source, mask_score, mask_area, fill, fill_z, one column per flag
                    (its reason, empty when off; `label.qa.FLAGS`) and all reasons joined
    qa.json         {"json", "settings", "class_fill" {category_id: {median, mad, n}},
                     "counts" {flag: n}, "rows": [the csv rows as objects]}
    qa_contact.png  the `top` worst crops with box and mask, captioned with their reasons
                    (a missing image's crop is a note tile)
summary: {"annotations", "flagged", "counts", "csv", "json", "contact_sheet", "top"}.
"""
from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

import numpy as np

from boxdepth.data.coco_records import parse_coco, read_coco_json
from boxdepth.data.image_io import BadImageError, load_image_rgb
from boxdepth.data.rle import segmentation_to_mask
from boxdepth.fileio import atomic_write_json, atomic_write_text, refuse_overwriting_inputs
from boxdepth.label.qa import FLAGS, qa_rows
from boxdepth.viz.contact_sheet import contact_sheet, crop_tile
from boxdepth.viz.draw import note_tile, save_png

OUTPUTS = ("qa.csv", "qa.json", "qa_contact.png")  # what run_qa writes into out_dir

log = logging.getLogger("boxdepth")

CSV_COLUMNS = ("rank", "rank_score", "annotation_id", "image_id", "file_name", "category_id", "category",
               "x", "y", "w", "h", "mask_source", "mask_score", "mask_area", "fill", "fill_z",
               *FLAGS, "reasons")


def _csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        x, y, w, h = r["bbox"]
        fmt = {k: ("" if r.get(k) is None else round(r[k], 4)) for k in ("mask_score", "fill", "fill_z")}
        writer.writerow({**r, **fmt, "x": x, "y": y, "w": w, "h": h,
                         "mask_area": "" if r["mask_area"] is None else r["mask_area"]})
    return buf.getvalue()


def _tile(row: dict, ann: dict, img_info: dict, images_root: Path, cache: dict, tile: int) -> np.ndarray:
    path = images_root / img_info["file_name"]
    if path not in cache:
        try:
            cache.clear()  # rows jump between images: keep one decoded image at a time
            cache[path] = load_image_rgb(path)
        except (FileNotFoundError, BadImageError) as e:
            log.warning("qa: no crop for annotation %s: %s", row["annotation_id"], e)
            return note_tile((tile, tile), f"no image {img_info['file_name']}")
    image = cache[path]
    h, w = image.shape[:2]
    seg = ann.get("segmentation")
    mask = segmentation_to_mask(seg, h, w).astype(bool) if seg is not None and \
        row["mask_source"] not in ("missing_image",) else None
    x, y, bw, bh = row["bbox"]
    return crop_tile(image, mask, (x, y, x + bw, y + bh), tile=tile)


def _caption(row: dict, names: dict) -> list[str]:
    score = "-" if row["mask_score"] is None else f"{row['mask_score']:.2f}"
    head = f"#{row['rank']} ann {row['annotation_id']} {names.get(row['category_id'], row['category_id'])}"
    return [head, f"score {score} ({row['mask_source'] or '?'})"] + \
        [row[f] for f in FLAGS if row[f] and f != "low_score"][:2]


def run_qa(json_path, images_root, out_dir, *, top: int = 24, tile: int = 128, columns: int = 6,
           **thresholds) -> dict:
    """Rank, write the report and the contact sheet (module doc)."""
    json_path, images_root, out_dir = Path(json_path), Path(images_root), Path(out_dir)
    refuse_overwriting_inputs({"--out": out_dir, **{f"--out ({n})": out_dir / n for n in OUTPUTS}},
                              {"--json": json_path, "--images": images_root})
    if int(top) < 0:
        raise ValueError(f"--top must be 0 or more (crops on the contact sheet), got {top}")
    data = read_coco_json(json_path)
    # training's checks: finite boxes, file_names inside the image root, unique ids
    parse_coco(data, where=str(json_path), mode="box")
    try:
        rows, stats = qa_rows(data, **thresholds)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{json_path}: not a COCO json qa can read ({type(e).__name__}: {e})") from None
    images = {img["id"]: img for img in data["images"]}
    names = {c["id"]: str(c.get("name", c["id"])) for c in data.get("categories", [])}
    for r in rows:
        r["file_name"], r["category"] = images[r["image_id"]]["file_name"], names.get(r["category_id"], "")
    counts = {f: sum(1 for r in rows if r[f]) for f in FLAGS}
    atomic_write_text(out_dir / "qa.csv", _csv_text(rows))
    atomic_write_json(out_dir / "qa.json", {"json": str(json_path), "settings": thresholds,
                                            "class_fill": {str(k): v for k, v in stats.items()},
                                            "counts": counts, "rows": rows})
    worst = rows[:max(int(top), 0)]
    sheet = None
    if worst:
        anns, cache = data["annotations"], {}
        tiles = [_tile(r, anns[r["annotation_index"]], images[r["image_id"]], images_root, cache, tile)
                 for r in worst]
        sheet = out_dir / "qa_contact.png"
        save_png(sheet, contact_sheet(tiles, [_caption(r, names) for r in worst], columns=columns,
                                      lines=4))
    return {"annotations": len(rows), "flagged": sum(1 for r in rows if r["reasons"]), "counts": counts,
            "csv": str(out_dir / "qa.csv"), "json": str(out_dir / "qa.json"),
            "contact_sheet": None if sheet is None else str(sheet), "top": len(worst)}


def format_qa_summary(s: dict) -> str:
    """Lines for the command line."""
    flags = ", ".join(f"{k} {v}" for k, v in s["counts"].items())
    lines = [f"qa: {s['annotations']} annotation(s), {s['flagged']} with at least one flag ({flags})",
             f"  report: {s['csv']}", f"          {s['json']}"]
    if s["contact_sheet"]:
        lines.append(f"  worst {s['top']}: {s['contact_sheet']}")
    return "\n".join(lines)
