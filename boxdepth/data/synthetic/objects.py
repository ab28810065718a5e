"""Annotated objects of the synthetic RGB-D scenes: classes, random specs, shapes, relief.

An object is a screen-space shape (disc, box, triangle, ring) with a smooth 3D relief: a
dome, a tilted plane, a ridge, a torus section, or a cuboid whose top face recedes. Its
metric depth is ``z_ref - standoff - thickness * profile`` with ``profile`` in
[p0, 1] (p0 > 0), where ``z_ref`` is the depth of the surface it stands on (the floor at
the bottom of its silhouette) or hangs in front of (the back wall). So every object is
nearer than what lies behind it, with the smallest step (``p0 * thickness``, a few cm)
at the floor contact, as for real objects on a table.

`rasterize(spec)` returns a window: ``row0, col0`` (top-left, may be outside the image),
``mask`` bool (h, w), ``depth`` float (h, w) metres, ``u, v`` float (h, w) texture
coordinates in pixels.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from boxdepth.data.synthetic.texture import Texture, object_texture

CATEGORIES = [
    {"id": 1, "name": "disc", "supercategory": "shape"},
    {"id": 2, "name": "box", "supercategory": "shape"},
    {"id": 3, "name": "triangle", "supercategory": "shape"},
    {"id": 4, "name": "ring", "supercategory": "shape"},
]
_ASPECT = {1: (0.75, 1.25), 2: (0.5, 1.8), 3: (0.7, 1.3), 4: (0.55, 1.05)}
_MAX_ANGLE = {1: np.pi, 2: 0.5, 3: 0.6, 4: 0.35}


@dataclass
class ObjectSpec:
    category_id: int
    x: float            # anchor column (pixels): the silhouette's centre column
    y: float            # anchor row: contact row (floor objects) or centre row (wall)
    on_floor: bool
    z_ref: float        # depth (m) of the supporting surface at the anchor
    standoff: float     # m in front of z_ref (wall objects hang off the wall)
    thickness: float    # m of relief
    half_w: float       # pixels, before rotation
    half_h: float
    angle: float
    texture: Texture
    camouflaged: bool
    camo_shift: tuple[float, float]
    gloss: float
    shape: dict = field(default_factory=dict)

    @property
    def z_front(self) -> float:
        return self.z_ref - self.standoff - self.thickness


def sample_object(rng: np.random.Generator, *, anchor: tuple[int, int], z_ref: float,
                  on_floor: bool, focal: float, max_half: float,
                  camouflage: float) -> ObjectSpec:
    """Draw one object standing at pixel `anchor` (x, y). The number of draws from `rng`
    does not depend on `camouflage`, so changing it only changes textures."""
    cid = int(rng.integers(1, len(CATEGORIES) + 1))
    size_m = rng.uniform(0.07, 0.3)
    half_w = min(focal * size_m / 2 / z_ref, max_half)
    half_h = half_w * rng.uniform(*_ASPECT[cid])
    angle = rng.uniform(-_MAX_ANGLE[cid], _MAX_ANGLE[cid])
    shape = {"p0": rng.uniform(0.25, 0.5), "tilt": rng.uniform(-1, 1, 2) * 0.5,
             "inner": rng.uniform(0.4, 0.7), "apex": rng.uniform(-0.6, 0.6),
             "cuboid": bool(rng.random() < 0.6), "top": rng.uniform(0.25, 0.6),
             "skew": rng.uniform(-0.5, 0.5), "ridge": bool(rng.random() < 0.5),
             "yaw": rng.choice([-1.0, 1.0]) * rng.uniform(0.05, 0.15)}
    if cid == 2 and shape["cuboid"]:
        angle = 0.0
    texture = object_texture(rng, 2 * max(half_w, half_h))
    camouflaged = bool(rng.random() < camouflage)
    side = 1.0 if rng.random() < 0.5 else -1.0
    shift = (side * rng.uniform(0.8, 1.4) * 2 * half_w, rng.uniform(-0.3, 0.3) * 2 * half_h)
    return ObjectSpec(
        category_id=cid, x=float(anchor[0]), y=float(anchor[1]), on_floor=on_floor,
        z_ref=float(z_ref), standoff=0.0 if on_floor else rng.uniform(0.04, 0.2),
        thickness=size_m * rng.uniform(0.3, 0.8), half_w=half_w, half_h=half_h,
        angle=angle, texture=texture, camouflaged=camouflaged, camo_shift=shift,
        gloss=float(rng.uniform(0, 0.5) if rng.random() < 0.4 else 0.0), shape=shape)


def _dome(r2: np.ndarray) -> np.ndarray:
    return np.sqrt(np.clip(1.0 - r2, 0.0, 1.0))


def _triangle(u, v, apex: float):
    """Inside test and normalised distance to the nearest edge for the triangle
    (-1, 1), (1, 1), (apex, -1) in (u, v) units."""
    pts = np.array([[-1.0, 1.0], [1.0, 1.0], [apex, -1.0]])
    dists = []
    for i in range(3):
        (x0, y0), (x1, y1) = pts[i], pts[(i + 1) % 3]
        nx, ny = y1 - y0, x0 - x1           # inward normal for this winding
        norm = np.hypot(nx, ny)
        dists.append(((u - x0) * nx + (v - y0) * ny) / norm)
    d = np.minimum(np.minimum(dists[0], dists[1]), dists[2])
    return d >= 0, np.clip(d / 0.55, 0.0, 1.0)


def _profile(spec: ObjectSpec, u: np.ndarray, v: np.ndarray):
    """Mask and relief in [0, 1] in normalised shape coordinates (v grows downwards)."""
    s, cid = spec.shape, spec.category_id
    tilt = 0.5 + 0.5 * (s["tilt"][0] * u + s["tilt"][1] * v)
    if cid == 1:
        r2 = u * u + v * v
        return r2 <= 1.0, _dome(r2)
    if cid == 2 and not s["cuboid"]:
        return (np.abs(u) <= 1) & (np.abs(v) <= 1), np.clip(tilt, 0, 1)
    if cid == 2:
        top = s["top"]
        front = (np.abs(u) <= 1) & (np.abs(v) <= 1)
        ut = u + s["skew"] * (-1.0 - v) / top          # top face is a parallelogram
        upper = (v < -1) & (v >= -1 - top) & (np.abs(ut) <= 1)
        # the front face is turned slightly (yaw); the top face recedes to the back edge
        face = 0.85 + s["yaw"] * np.clip(u, -1, 1)
        rel = np.where(upper, face * np.clip(1.0 - (-1.0 - v) / top, 0, 1), face)
        return front | upper, rel
    if cid == 3:
        inside, ridge = _triangle(u, v, s["apex"])
        return inside, ridge if s["ridge"] else np.clip(tilt, 0, 1)
    r = np.sqrt(u * u + v * v)
    inner = s["inner"]
    mid, half = (1 + inner) / 2, (1 - inner) / 2
    return (r <= 1.0) & (r >= inner), _dome(((r - mid) / half) ** 2)


def _local_mask(spec: ObjectSpec, dx: np.ndarray, dy: np.ndarray):
    c, s = np.cos(spec.angle), np.sin(spec.angle)
    a = (c * dx + s * dy) / spec.half_w
    b = (-s * dx + c * dy) / spec.half_h
    mask, rel = _profile(spec, a, b)
    return mask, rel, a * spec.half_w, b * spec.half_h


def rasterize(spec: ObjectSpec) -> dict:
    """Window of the object: mask, metric depth and texture coordinates (see module doc)."""
    ext = 1.0 + (spec.shape["top"] if spec.category_id == 2 else 0.0)
    rad = int(np.ceil(max(spec.half_w, spec.half_h) * ext * 1.45)) + 2
    offs = np.arange(-rad, rad + 1, dtype=np.float64)
    fx = spec.x - np.floor(spec.x)
    fy = spec.y - np.floor(spec.y)
    dx = (offs + 0.5 - fx)[None, :]
    dy = (offs + 0.5 - fy)[:, None]
    mask, rel, u, v = _local_mask(spec, dx, dy)
    rows = np.flatnonzero(mask.any(axis=1))
    col0 = int(np.floor(spec.x)) - rad
    if spec.on_floor and rows.size:
        # the silhouette's lowest row sits on the contact row
        row0 = int(np.floor(spec.y)) - int(rows[-1])
    else:
        row0 = int(np.floor(spec.y)) - rad
    p0 = spec.shape["p0"]
    profile = p0 + (1.0 - p0) * rel
    depth = spec.z_ref - spec.standoff - spec.thickness * profile
    return {"row0": row0, "col0": col0, "mask": mask, "depth": depth,
            "u": np.broadcast_to(u, mask.shape), "v": np.broadcast_to(v, mask.shape)}


def shading(depth: np.ndarray, focal: float, light: np.ndarray, gloss: float,
            ambient: float = 0.45):
    """Lambert shade (1 for a surface facing the camera) and a specular term, from the
    normals of a metric depth window. `light` is a unit vector in camera coordinates
    (x right, y down, z forward) pointing towards the light."""
    gy, gx = np.gradient(depth)
    sx = np.clip(gx * focal / depth, -6, 6)
    sy = np.clip(gy * focal / depth, -6, 6)
    norm = np.sqrt(sx * sx + sy * sy + 1.0)
    ndotl = (sx * light[0] + sy * light[1] - light[2]) / norm
    front = max(-light[2], 1e-3)
    shade = ambient + (1 - ambient) * np.clip(ndotl, 0, None) / front
    half = light + np.array([0.0, 0.0, -1.0])
    half = half / np.linalg.norm(half)
    ndoth = np.clip((sx * half[0] + sy * half[1] - half[2]) / norm, 0, 1)
    return shade.astype(np.float32), (gloss * ndoth ** 40).astype(np.float32)
