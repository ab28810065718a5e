"""`boxdepth predict`: run a trained model on image files; write COCO results and pictures.

Inputs are files, folders (every image inside, recursively, sorted; hidden files and
anything under `out_dir` skipped) or glob patterns (``**`` allowed). Image extensions:
jpg, jpeg, png, bmp, tif, tiff, webp (any case); a file named explicitly is read
whatever its extension. Image ids are 0, 1, ... in input order.

Outputs under `out_dir` (every file written atomically):
    results.json   COCO results list with every detection the model returns, i.e. all
                   with score**2 = sigmoid(cls) * sigmoid(ctr) above the model's
                   `model.fcos.inference_th`; `score_thresh` does NOT filter it, so the
                   file can be scored with `boxdepth eval` like any results file.
    images.json    {"images": [{"id", "file_name" (the input path), "width", "height"}],
                    "categories": [{"id", "name"}]} relating image/category ids to files.
    overlays/<name>.png              the image with detections >= score_thresh drawn.
    masks/<name>/<k>_<class>_<score>.png   binary mask (0/255) of each such detection.
    depth/<name>/<k>.png             with save_depth and a DG-head model: the predicted
                                     instance depth times its mask, 16-bit (depth_io).
    predict_manifest.jsonl           every file above, recorded before it is written:
                                     a new run into the folder first deletes them, and
                                     refuses if predict's places hold anything else
                                     (predict_outputs.py).
`<name>` is the file stem, suffixed with `_<image id>` when several inputs share it
(case-insensitively). `k` (3 digits, zero padded, so names sort) is the detection's rank
within its image: the order of the image's entries in results.json (scores descending).
Detection runs through engine/predictor.py, the Python API's `Predictor`.
"""
from __future__ import annotations

import glob
import logging
import re
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from boxdepth.data.depth_io import save_depth_png
from boxdepth.data.image_io import IMAGE_EXTENSIONS, BadImageError, load_image_rgb
from boxdepth.data.results import instances_to_coco_results, write_coco_results
from boxdepth.data.rle import mask_to_rle
from boxdepth.engine.predict_outputs import ManifestWriter, clear_previous_outputs
from boxdepth.engine.predictor import Predictor, categories_of, detect_image, predict_image  # noqa: F401
from boxdepth.fileio import atomic_write_json
from boxdepth.viz.draw import blend_mask, instance_colors, overlay_instances, save_png

log = logging.getLogger("boxdepth")



def _is_image_name(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def _inside(p: Path, folder: Path | None) -> bool:
    return folder is not None and folder in p.resolve().parents


def _expand_one(text: str, exclude: Path | None) -> list[Path]:
    p = Path(text)
    if p.is_dir():
        found = sorted((f for f in p.rglob("*") if f.is_file() and _is_image_name(f)
                        and not _inside(f, exclude)), key=str)
        if not found:
            raise FileNotFoundError(f"no images in folder {text} (looked for "
                                    f"{', '.join(IMAGE_EXTENSIONS)}, recursively)")
        return found
    if p.is_file():
        return [p]
    if any(c in text for c in "*?["):
        found = []
        for m in sorted(glob.glob(text, recursive=True)):
            mp = Path(m)
            if mp.is_dir():
                found += _expand_one(m, exclude)
            elif mp.is_file() and _is_image_name(mp) and not _inside(mp, exclude):
                found.append(mp)
        if not found:
            raise FileNotFoundError(f"no images match the pattern {text}")
        return found
    raise FileNotFoundError(f"input not found: {text} (not a file, folder or glob pattern)")


def collect_images(inputs: Iterable[str], exclude: str | Path | None = None) -> list[Path]:
    """Expand files / folders / globs into image paths, in input order, without repeats.
    Files under `exclude` (the output folder) are never taken from folders or globs."""
    excl = Path(exclude).resolve() if exclude is not None else None
    paths, seen = [], set()
    for text in inputs:
        for p in _expand_one(str(text), excl):
            key = p.resolve()
            if key not in seen:
                seen.add(key)
                paths.append(p)
    if not paths:
        raise FileNotFoundError("no input images given")
    return paths


def output_names(paths: Sequence[Path]) -> list[str]:
    """Unique per-image output names: the stem, plus `_<index>` where stems collide
    (case-insensitively, as on Windows / macOS file systems)."""
    counts = Counter(p.stem.lower() for p in paths)
    used, names = set(), []
    for i, p in enumerate(paths):
        name = p.stem if counts[p.stem.lower()] == 1 else f"{p.stem}_{i}"
        while name.lower() in used:
            name = f"{name}_{i}"
        used.add(name.lower())
        names.append(name)
    return names


def check_image_headers(paths: Sequence[Path]) -> None:
    """Fail before any work if a file is not an image at all (full decoding comes later)."""
    for p in paths:
        try:
            with Image.open(p):  # parses the header only
                pass
        except FileNotFoundError:
            raise FileNotFoundError(f"image file not found: {p}") from None
        except Exception as e:  # Pillow raises many types for non-images
            raise BadImageError(f"cannot read image {p}: {type(e).__name__}: {e}") from None


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def image_files(name: str, det: dict, class_names: Sequence[str], score_thresh: float,
                save_depth: bool) -> dict:
    """The files of one image, relative to the output folder: {"overlay": path, "masks":
    [path of shown detection k], "depth": [the same for depth, or empty]}."""
    shown = int((det["scores"] >= score_thresh).sum())  # 0 .. S-1: scores are sorted
    masks = [f"masks/{name}/{k:03d}_{_safe(class_names[int(det['labels'][k])])}_"
             f"{det['scores'][k]:.3f}.png" for k in range(shown)]
    depth = [f"depth/{name}/{k:03d}.png" for k in range(shown)] \
        if save_depth and det["paster"].has_depth else []
    return {"overlay": f"overlays/{name}.png", "masks": masks, "depth": depth}


def write_image_outputs(out_dir: Path, image: np.ndarray, det: dict, files: dict, *, image_id: int,
                        cat_ids: Sequence[int], class_names: Sequence[str]) -> list[dict]:
    """One image's COCO results entries, and its overlay, mask PNGs and depth PNGs as
    `files` (image_files) names them; returns the entries.

    `det` is `detect_image`'s: masks come one at a time from its paster, so memory holds
    one full-size mask at a time, not D."""
    paster = det["paster"]
    entries = instances_to_coco_results(image_id, det["boxes"], det["scores"], det["labels"], None,
                                        cat_ids=cat_ids)
    shown = np.arange(len(files["masks"]))
    colors, canvas = instance_colors(len(shown)), image.copy()
    # last to first: each mask is blended as it comes and detection 0 ends on top, as in
    # overlay_instances, while only one full-size mask is in memory
    for k in reversed(range(len(entries))):
        mask = paster.mask(k).cpu().numpy()
        entries[k]["segmentation"] = mask_to_rle(mask)
        if k >= len(shown):
            continue
        save_png(out_dir / files["masks"][k], mask)
        blend_mask(canvas, mask, colors[k])
        if files["depth"]:
            depth = paster.depth(k).cpu().numpy()
            save_depth_png(out_dir / files["depth"][k], np.where(mask, depth, 0.0))
    labels = [class_names[int(det["labels"][k])] for k in shown]
    overlay = overlay_instances(canvas, None, det["boxes"][shown], labels, det["scores"][shown])
    save_png(out_dir / files["overlay"], overlay)
    return entries


def run_predict(weights, inputs: list[str], out_dir, *, device="auto", score_thresh=0.3,
                save_depth=False, max_images=None, progress=True, cfg_overrides=(), config=None) -> dict:
    """Predict on `inputs` and write the outputs listed in the module docstring. The model
    config is the checkpoint's; `config` (a CONFIG file) and `cfg_overrides` (key=value)
    change it as engine/ckpt_config.inference_config says.

    Returns {"images", "detections" (in results.json), "shown" (>= score_thresh),
    "out_dir", "results", "images_json", "overlays", "masks", "depth" (None unless
    written), "device"}.
    """
    _check_score_thresh(score_thresh)
    paths = input_paths(inputs, out_dir, max_images)  # bad inputs fail before the model loads
    # the Python API's Predictor: one loading path, one detection path (detect_image)
    p = Predictor(weights, device=device, config=config, overrides=list(cfg_overrides))
    if save_depth and not p.has_depth:
        log.warning("predict: --save-depth ignored, %s has no DG-MaskHead (depth_head: false)",
                    weights)
    return predict_paths(p.model, paths, out_dir, transform=p.transform, cat_ids=p.cat_ids,
                         class_names=p.class_names, device=p.device, score_thresh=score_thresh,
                         save_depth=save_depth, progress=progress)


def _check_score_thresh(score_thresh) -> None:
    if not 0.0 <= float(score_thresh) <= 1.0:
        raise ValueError(f"score_thresh must be in [0, 1], got {score_thresh}")


def input_paths(inputs: Iterable[str], out_dir, max_images=None) -> list[Path]:
    """`collect_images` (outputs under `out_dir` excluded), the first `max_images`, headers checked."""
    paths = collect_images(inputs, exclude=out_dir)
    if max_images is not None:
        paths = paths[:max(int(max_images), 0)]
    check_image_headers(paths)
    return paths


def predict_paths(model, paths: Sequence[Path], out_dir, *, transform, cat_ids, class_names, device,
                  score_thresh=0.3, save_depth=False, progress=True) -> dict:
    """`run_predict` with a loaded model (a CondInst, or anything that answers like one in
    eval mode: boxdepth.export.runner.ExportedModel) on `input_paths`' images. The files
    of an earlier run in `out_dir` are deleted first (predict_outputs.py)."""
    _check_score_thresh(score_thresh)
    out_dir = Path(out_dir)
    names = output_names(paths)
    clear_previous_outputs(out_dir)  # refuses before any work if it cannot
    results, images, shown, any_depth = [], [], 0, False
    with ManifestWriter(out_dir) as manifest:
        for image_id, (path, name) in enumerate(tqdm(list(zip(paths, names)), desc="predict",
                                                    disable=not progress, dynamic_ncols=True)):
            image = load_image_rgb(path)
            det = detect_image(model, image, transform, device, with_depth=save_depth)
            files = image_files(name, det, class_names, score_thresh, save_depth)
            manifest.record([files["overlay"], *files["masks"], *files["depth"]])
            results += write_image_outputs(out_dir, image, det, files, image_id=image_id,
                                           cat_ids=cat_ids, class_names=class_names)
            shown += len(files["masks"])
            images.append({"id": image_id, "file_name": str(path),
                           "width": int(image.shape[1]), "height": int(image.shape[0])})
            any_depth |= bool(files["depth"])
        manifest.record(["results.json", "images.json"])
        write_coco_results(out_dir / "results.json", results)
        categories = [{"id": c, "name": n} for c, n in zip(cat_ids, class_names)]
        atomic_write_json(out_dir / "images.json", {"images": images, "categories": categories})
    return {"images": len(paths), "detections": len(results), "shown": shown,
            "score_thresh": float(score_thresh), "out_dir": str(out_dir),
            "results": str(out_dir / "results.json"), "images_json": str(out_dir / "images.json"),
            "overlays": str(out_dir / "overlays"), "masks": str(out_dir / "masks"),
            "depth": str(out_dir / "depth") if any_depth else None, "device": str(device)}


def format_predict_summary(summary: dict) -> str:
    """Lines for the command line."""
    lines = [f"predicted {summary['images']} image(s) on {summary['device']}: "
             f"{summary['detections']} detection(s) in results.json, {summary['shown']} with "
             f"score >= {summary['score_thresh']:g} drawn",
             f"  results : {summary['results']}", f"  images  : {summary['images_json']}",
             f"  overlays: {summary['overlays']}", f"  masks   : {summary['masks']}"]
    if summary.get("depth"):
        lines.append(f"  depth   : {summary['depth']}")
    return "\n".join(lines)
