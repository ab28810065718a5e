"""`boxdepth depth`: generate the pseudo-depth tree for an image tree (SPEC §0, §4).

    generate_depth(images_root, out_root, model_dir=... | from_sensor=..., ...) -> summary

Images: every file under IMAGES_ROOT with suffix jpg/jpeg/png/bmp/tif/tiff/webp (any
case, recursive, sorted; the output tree, the sensor tree and hidden files excluded), or
with `coco_json` exactly the json's ``images[].file_name`` (relative to IMAGES_ROOT,
normalised as training normalises them). Image ``rel`` gets the depth map
``depth_path_for(out_root, rel)``: 16-bit PNG at the image's original size (as
``load_image_rgb`` decodes it: EXIF-upright), values = normalised inverse depth.

Model path (`model_dir`): a folder or cached repo id, see `boxdepth.depth.hf`; a .onnx or
.tflite file, see `boxdepth.depth.exported` (one image per call, on the CPU). Batches are
formed only from images whose processed tensors have the same shape (images are bucketed
by processed size), so there is no batch padding and an image's depth does not depend on
its batch mates.
Sensor path (`from_sensor`): see `boxdepth.depth.sensor`.

Resumable: an image whose depth PNG exists is skipped unless `overwrite`; every file is
written atomically. An unreadable image stops the run with an error naming it, after the
images already decoded have been finished and saved. ``out_root/meta.json`` records the
source; a run into a root made from a different source is refused unless `overwrite`.

Summary keys: mode ('model' | 'sensor'), source, model_type (None for sensor), images,
written, skipped_existing, forward_passes (model only, else 0), device, out_root, seconds.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from boxdepth.data.coco_records import read_coco_json, safe_relative_path
from boxdepth.data.depth_io import (META_NAME, depth_path_for, normalize_inverse_depth,
                                    read_depth_meta, save_depth_png, write_depth_meta)
from boxdepth.data.image_io import IMAGE_EXTENSIONS, load_image_rgb
from boxdepth.depth.sensor import find_sensor_depth, is_depth_image_name, sensor_depth01
from boxdepth.fileio import refuse_overwriting_inputs

log = logging.getLogger("boxdepth")

# Upper bound on decoded-but-not-yet-run images across all size buckets: with many
# distinct processed sizes the fullest bucket is run early instead of growing memory.
_MAX_PENDING_BATCHES = 4


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def list_images(images_root: Path, exclude: tuple[Path, ...] = ()) -> list[str]:
    """Relative '/'-separated paths of the image files under `images_root`, sorted."""
    root = images_root.resolve()
    skip = tuple(p.resolve() for p in exclude)
    names = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")
                       and not any(_inside(here / d, s) for s in skip)]
        for f in filenames:
            if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_EXTENSIONS:
                names.append((here / f).relative_to(root).as_posix())
    return sorted(names)


def coco_file_names(coco_json: str | Path, images_root: Path) -> list[str]:
    """The json's image file names (normalised, de-duplicated); all must exist."""
    data = read_coco_json(Path(coco_json))
    images = data.get("images")
    if not isinstance(images, list):
        raise ValueError(f"{coco_json}: missing the 'images' list")
    names = []
    for k, img in enumerate(images):
        if not isinstance(img, dict):
            raise ValueError(f"{coco_json}: images[{k}] is not an object")
        names.append(safe_relative_path(img.get("file_name"), img.get("id"), str(coco_json)))
    names = list(dict.fromkeys(names))
    missing = [n for n in names if not (images_root / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{coco_json}: {len(missing)} of {len(names)} images not found "
                                f"under {images_root}, e.g. {images_root / missing[0]}")
    return names


def _plan(names: list[str], out_root: Path, overwrite: bool) -> list[tuple[str, Path]]:
    """(rel, depth path) of the images still to do; two images sharing a map is an error."""
    owner: dict[Path, str] = {}
    todo = []
    for rel in names:
        out = depth_path_for(out_root, rel)
        if out in owner:
            raise ValueError(f"images {owner[out]} and {rel} would share the depth map {out} "
                             f"(same path apart from the suffix); rename one of them")
        owner[out] = rel
        if overwrite or not out.is_file():
            todo.append((rel, out))
    return todo


def _check_out_root(out_root: Path, source: str, overwrite: bool, *,
                    same: dict | None = None) -> None:
    """Refuse an output folder that holds depth from another source (one that is an input
    was refused by generate_depth, before any model loaded).

    `same`: further meta.json keys that must match too (an exported model's hash,
    polarity and preprocessing), so that one folder never mixes two kinds of maps.
    """
    meta = read_depth_meta(out_root)
    if meta is None or overwrite:
        return
    if meta.get("source") != source:
        raise ValueError(f"{out_root / META_NAME}: this folder holds depth from "
                         f"{meta.get('source')!r}, not {source!r}; choose another output folder "
                         f"or overwrite it")
    for key, value in (same or {}).items():
        if meta.get(key) != value:
            raise ValueError(f"{out_root / META_NAME}: this folder holds depth made with {key} "
                             f"{meta.get(key)!r}, not {value!r}; choose another output folder "
                             f"or overwrite it")


@dataclass
class _Pending:
    pixel_values: object  # torch.Tensor (3, h, w)
    window: tuple | None
    size: tuple[int, int]
    out_path: Path


class _BucketRunner:
    """Groups preprocessed images by tensor shape and runs full buckets as batches."""

    def __init__(self, estimator, batch_size: int, bar):
        self.estimator, self.batch_size, self.bar = estimator, batch_size, bar
        self.buckets: dict[tuple, list[_Pending]] = {}
        self.forward_passes = 0

    def add(self, item: _Pending) -> None:
        shape = tuple(item.pixel_values.shape)
        bucket = self.buckets.setdefault(shape, [])
        bucket.append(item)
        if len(bucket) >= self.batch_size:
            self.run(shape)
        elif sum(map(len, self.buckets.values())) > _MAX_PENDING_BATCHES * self.batch_size:
            self.run(max(self.buckets, key=lambda s: len(self.buckets[s])))

    def run(self, shape: tuple) -> None:
        import torch
        items = self.buckets.pop(shape)
        batch = torch.stack([it.pixel_values for it in items])
        maps = self.estimator.predict_inverse_depth(batch, [it.window for it in items],
                                                    [it.size for it in items])
        for it, inv in zip(items, maps):
            save_depth_png(it.out_path, normalize_inverse_depth(inv))
        self.forward_passes += 1
        self.bar.update(len(items))

    def flush(self) -> None:
        for shape in list(self.buckets):
            self.run(shape)


def _run_model(estimator, todo, images_root: Path, batch_size: int, bar) -> int:
    runner = _BucketRunner(estimator, batch_size, bar)
    for rel, out_path in todo:
        try:
            rgb = load_image_rgb(images_root / rel)
            pixel_values, window = estimator.preprocess(rgb)
        except Exception:
            runner.flush()  # finish what was decoded before stopping on the bad image
            raise
        runner.add(_Pending(pixel_values, window, rgb.shape[:2], out_path))
    runner.flush()
    return runner.forward_passes


def _load_estimator(model, device: str, exported) -> tuple[object, dict, dict | None]:
    """(estimator, meta.json extras, keys a resumed run must match) for a model source."""
    from boxdepth.depth.exported import exported_format
    if exported_format(model) is not None:
        from boxdepth.depth.exported import load_exported_model
        estimator = load_exported_model(model, options=exported)
        if device not in ("auto", "cpu"):
            log.info(f"exported models run on the CPU (--device {device} is not used)")
        identity = estimator.identity()
        meta = dict(identity, model_type=estimator.model_type, model_output=estimator.output_kind,
                    resize="output resized bilinearly to the original image size",
                    depth_to_inverse=("none (disparity)" if estimator.polarity == "disparity"
                                      else "1 / max(d, 1e-3 * p99(d))"))
        return estimator, meta, identity
    if exported is not None and exported.given():
        raise ValueError(f"--{', --'.join(k.replace('_', '-') for k in exported.given())} "
                         f"apply only to .onnx/.tflite models, not to {model}")
    from boxdepth.depth.hf import load_depth_model
    estimator = load_depth_model(model, device=device)
    meta = dict(model_type=estimator.model_type, model_output=estimator.output_kind,
                image_processor=type(estimator.processor).__name__,
                resize="predicted_depth resized bilinearly to the original image size")
    return estimator, meta, None


def _generate_from_model(images_root, out_root, names, model, batch_size, device,
                         progress, overwrite, exported) -> dict:
    estimator, meta, identity = _load_estimator(model, device, exported)
    _check_out_root(out_root, estimator.source, overwrite, same=identity)
    todo = _plan(names, out_root, overwrite)
    write_depth_meta(out_root, source=estimator.source, inverse_depth=True, **meta)
    batch_size = min(batch_size, getattr(estimator, "max_batch", batch_size))
    with tqdm(total=len(todo), desc="depth", unit="img", disable=not progress) as bar:
        passes = _run_model(estimator, todo, images_root, batch_size, bar)
    return {"mode": "model", "source": estimator.source, "model_type": estimator.model_type,
            "images": len(names), "written": len(todo), "skipped_existing": len(names) - len(todo),
            "forward_passes": passes, "device": str(estimator.device)}


def _generate_from_sensor(images_root, out_root, names, sensor_root, progress, overwrite) -> dict:
    _check_out_root(out_root, "sensor", overwrite)
    pairs = [(rel, find_sensor_depth(images_root, sensor_root, rel)) for rel in names]
    todo = dict(_plan(names, out_root, overwrite))
    write_depth_meta(out_root, source="sensor", sensor_root=str(sensor_root.resolve()),
                     sensor_units="millimetres, 0 = no reading", inverse_depth=True,
                     hole_filling="nearest valid pixel (scipy distance_transform_edt)",
                     percentiles_over="valid readings only")
    with tqdm(total=len(todo), desc="depth", unit="img", disable=not progress) as bar:
        for rel, depth_file in pairs:
            if rel not in todo:
                continue
            image_path = images_root / rel
            size = load_image_rgb(image_path).shape[:2]
            save_depth_png(todo[rel], sensor_depth01(depth_file, size, image_path))
            bar.update(1)
    return {"mode": "sensor", "source": "sensor", "model_type": None, "images": len(names),
            "written": len(todo), "skipped_existing": len(names) - len(todo),
            "forward_passes": 0, "device": "cpu"}


def _image_names(images_root: Path, out_root: Path, coco_json, sensor_root) -> list[str]:
    if coco_json is not None:
        return coco_file_names(coco_json, images_root)
    exclude = (out_root,) + ((sensor_root,) if sensor_root is not None else ())
    names = list_images(images_root, exclude=exclude)
    if sensor_root is not None and sensor_root.resolve() == images_root.resolve():
        names = [n for n in names if not is_depth_image_name(n)]
    if not names:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {images_root}")
    return names


def generate_depth(images_root, out_root, *, model_dir=None, from_sensor=None, coco_json=None,
                   batch_size: int = 4, device: str = "auto", progress: bool = True,
                   overwrite: bool = False, exported=None) -> dict:
    """Write one pseudo-depth PNG per image under `out_root`; returns the summary dict.

    `exported`: `boxdepth.depth.exported.ExportedOptions` for a .onnx/.tflite `model_dir`.
    """
    if (model_dir is None) == (from_sensor is None):
        raise ValueError("give exactly one depth source: model_dir (a saved depth model) or "
                         "from_sensor (a folder of sensor depth images)")
    if from_sensor is not None and exported is not None and exported.given():
        raise ValueError("--polarity/--input-size/--layout/--scale/--mean/--std/--output apply "
                         "only to .onnx/.tflite models, not to --from-sensor")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    images_root, out_root = Path(images_root), Path(out_root)
    refuse_overwriting_inputs({"--out": out_root}, {"IMAGES_ROOT": images_root, "--model": model_dir,
                                                    "--from-sensor": from_sensor, "--json": coco_json})
    if not images_root.is_dir():
        raise FileNotFoundError(f"image folder not found: {images_root}")
    sensor_root = Path(from_sensor) if from_sensor is not None else None
    if sensor_root is not None and not sensor_root.is_dir():
        raise FileNotFoundError(f"sensor depth folder not found: {sensor_root}")
    start = time.perf_counter()
    names = _image_names(images_root, out_root, coco_json, sensor_root)
    if sensor_root is not None:
        summary = _generate_from_sensor(images_root, out_root, names, sensor_root, progress,
                                        overwrite)
    else:
        summary = _generate_from_model(images_root, out_root, names, model_dir, int(batch_size),
                                       device, progress, overwrite, exported)
    summary.update(out_root=str(out_root), seconds=round(time.perf_counter() - start, 3))
    return summary
