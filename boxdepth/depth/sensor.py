"""Pseudo depth from a depth camera (SPEC §4, sensor branch).

A sensor depth image is one channel, metric depth in millimetres (uint16 PNG as RGB-D
cameras write it), 0 = no reading. It becomes a stored map (SPEC §0) by:
  1. missing pixels (0, negative or non-finite) take the value of the nearest valid
     pixel (Euclidean, ``scipy.ndimage.distance_transform_edt(return_indices=True)``);
  2. inverse depth ``1 / mm`` (larger = nearer, like DPT's output);
  3. ``normalize_inverse_depth`` with the 1st-99th percentiles taken over the *valid*
     readings only, so filled holes do not shift the range.

Pairing of a colour image (relative path ``rel`` under IMAGES_ROOT) with its depth image
under SENSOR_ROOT, first match wins:
  a. (only when the two roots differ) the same relative path, ``SENSOR_ROOT/rel``, or
     the same path with suffix ``.png``;
  b. a colour stem ending in ``-color`` / ``_color`` pairs with the stem ending in
     ``-depth`` / ``_depth`` in the same relative folder (suffix ``.png``, or the
     colour file's own suffix), e.g. ``image_0000-color.png`` -> ``image_0000-depth.png``.
When IMAGES_ROOT and SENSOR_ROOT are the same folder (colour and depth side by side),
files whose stem ends in ``-depth`` / ``_depth`` are depth images, not colour images.

Arrays: depth_mm float64 (H, W); valid bool (H, W); depth01 float32 (H, W) in [0, 1].
"""
from __future__ import annotations

from pathlib import Path, PurePosixPath

import numpy as np
from scipy.ndimage import distance_transform_edt

from boxdepth.data.depth_io import normalize_inverse_depth, read_single_channel

COLOR_DEPTH_SUFFIXES = (("-color", "-depth"), ("_color", "_depth"))


def is_depth_image_name(rel: str) -> bool:
    """True for a file named like the depth half of a side-by-side pair."""
    stem = PurePosixPath(rel).stem
    return any(stem.endswith(d) for _, d in COLOR_DEPTH_SUFFIXES)


def _candidates(images_root: Path, sensor_root: Path, rel: str) -> list[Path]:
    rel_path = PurePosixPath(rel)
    found: list[Path] = []
    if images_root.resolve() != sensor_root.resolve():
        found += [sensor_root.joinpath(*rel_path.parts),
                  sensor_root.joinpath(*rel_path.with_suffix(".png").parts)]
    for color, depth in COLOR_DEPTH_SUFFIXES:
        if rel_path.stem.endswith(color):
            base = rel_path.stem[: -len(color)] + depth
            for suffix in (".png", rel_path.suffix):
                found.append(sensor_root.joinpath(*rel_path.with_name(base + suffix).parts))
    return list(dict.fromkeys(found))  # de-duplicated, order kept


def find_sensor_depth(images_root: str | Path, sensor_root: str | Path, rel: str) -> Path:
    """Depth image paired with colour image `rel` (see the module docstring)."""
    images_root, sensor_root = Path(images_root), Path(sensor_root)
    candidates = _candidates(images_root, sensor_root, rel)
    for path in candidates:
        if path.is_file():
            return path
    if not candidates:
        raise FileNotFoundError(
            f"no sensor depth for image {images_root / rel}: colour and depth share the folder "
            f"{sensor_root}, so colour images must be named *-color.* (or *_color.*) with "
            f"*-depth.png (or *_depth.png) beside them")
    looked = ", ".join(str(p) for p in candidates)
    raise FileNotFoundError(f"no sensor depth for image {images_root / rel} (looked for {looked})")


def read_sensor_depth(path: str | Path) -> np.ndarray:
    """Single-channel depth image -> float64 (H, W) in its own units (mm). Names the file."""
    arr = read_single_channel(path, "sensor depth (16-bit PNG in mm)")
    return arr.astype(np.float64)


def fill_missing_nearest(depth_mm: np.ndarray, where: str = "sensor depth"
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Fill missing readings from the nearest valid pixel -> (filled (H, W), valid (H, W))."""
    valid = np.isfinite(depth_mm) & (depth_mm > 0)
    if not valid.any():
        raise ValueError(f"{where} has no valid reading (every pixel is 0 / missing)")
    if valid.all():
        return depth_mm.copy(), valid
    rows, cols = distance_transform_edt(~valid, return_distances=False, return_indices=True)
    return depth_mm[rows, cols], valid


def sensor_depth01(depth_path: str | Path, image_size: tuple[int, int],
                   image_path: str | Path | None = None) -> np.ndarray:
    """Sensor depth file -> stored-map values float32 (H, W) in [0, 1], larger = nearer."""
    depth_mm = read_sensor_depth(depth_path)
    if depth_mm.shape != tuple(image_size):
        raise ValueError(f"sensor depth {depth_path} is {depth_mm.shape[1]}x{depth_mm.shape[0]} "
                         f"but its colour image {image_path} is {image_size[1]}x{image_size[0]} "
                         f"(width x height); they must be the same size")
    filled, valid = fill_missing_nearest(depth_mm, where=f"sensor depth {depth_path}")
    return normalize_inverse_depth(1.0 / filled, valid=valid)
