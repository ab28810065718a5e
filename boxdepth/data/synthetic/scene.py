"""One synthetic RGB-D scene: a room (table/floor plane, back wall, maybe a side wall)
seen by a pitched pinhole camera, flat background clutter, and 3D objects composited
far-to-near through a z-buffer over metric depth.

`render_scene(rng, width=, height=, camouflage=, min_objects=, max_objects=, min_area=)`
returns a dict:
  image      uint8 (H, W, 3) RGB
  depth_m    float32 (H, W) metric depth (m, camera z) of the visible surface
  labels     int32 (H, W): index into `objects` of the visible object, -1 = background
  objects    list of dicts {category_id, camouflaged, on_floor, z_front}
Objects whose visible area is below `min_area` pixels are removed from the scene (not
kept as unannotated clutter) and the scene is recomposited, so every object pixel in the
image belongs to an annotated instance. Background clutter (posters, rugs, stains,
skirting, light pools, cast shadows) is flat: it changes colour but never depth.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from boxdepth.data.synthetic import texture as tex
from boxdepth.data.synthetic.objects import ObjectSpec, rasterize, sample_object, shading

FLOOR, BACK_WALL, SIDE_WALL = 0, 1, 2


@dataclass(frozen=True)
class Camera:
    width: int
    height: int
    focal: float     # pixels
    pitch: float     # radians, positive looks down
    height_m: float  # camera height above the floor/table plane

    def rays(self):
        """Per-pixel ray (dx, y_world, z_world) with camera-frame z = 1, shapes (1, W),
        (H, 1), (H, 1); world axes: x right, y down (gravity), z forward (level)."""
        dx = (np.arange(self.width) + 0.5 - self.width / 2) / self.focal
        dy = (np.arange(self.height) + 0.5 - self.height / 2) / self.focal
        c, s = np.cos(self.pitch), np.sin(self.pitch)
        return dx[None, :], (dy * c + s)[:, None], (-dy * s + c)[:, None]


def _room_planes(cam: Camera, wall_z: float, side_x: float | None):
    """Depth of each plane along each ray (inf where the ray misses it), plane ids,
    visible depth and the world point (x, y, z) of the visible surface."""
    dx, yw, zw = cam.rays()
    shape = (cam.height, cam.width)
    with np.errstate(divide="ignore"):
        floor = np.broadcast_to(np.where(yw > 1e-6, cam.height_m / yw, np.inf), shape)
        wall = np.broadcast_to(np.where(zw > 1e-6, wall_z / zw, np.inf), shape)
        side = np.full(shape, np.inf)
        if side_x is not None:
            side = np.broadcast_to(np.where(dx * side_x > 1e-6, side_x / dx, np.inf), shape)
    stack = np.stack([floor, wall, side])
    plane = np.argmin(stack, axis=0)
    depth = np.take_along_axis(stack, plane[None], 0)[0]
    depth = np.minimum(depth, 50.0)   # a level camera can see far along the floor
    world = (depth * dx, depth * yw, depth * zw)
    return np.ascontiguousarray(floor), plane, depth, world


def _paint_planes(rng, plane, world, cam: Camera):
    x, y, z = world
    rgb = np.zeros(plane.shape + (3,), np.float32)
    floor_tex, wall_tex = tex.floor_texture(rng), tex.wall_texture(rng)
    side_tex = tex.wall_texture(rng) if rng.random() < 0.5 else wall_tex
    skirt_h, skirt_c = rng.uniform(0.0, 0.12), tex.random_colour(rng, (0, 0.3), (0.3, 1.0))
    for pid, paint, (a, b) in ((FLOOR, floor_tex, (x, z)), (BACK_WALL, wall_tex, (x, y)),
                               (SIDE_WALL, side_tex, (z, y))):
        sel = plane == pid
        if sel.any():
            rgb[sel] = paint(a[sel], b[sel])
    skirting = (plane != FLOOR) & (y > cam.height_m - skirt_h)
    rgb[skirting] = skirt_c
    return rgb


def _paint_clutter(rng, rgb, plane, world, cam: Camera):
    """Flat posters on the back wall and rugs/stains on the floor: colour, no depth."""
    x, y, z = world
    for _ in range(int(rng.integers(0, 4))):
        w, h = rng.uniform(0.15, 0.7), rng.uniform(0.15, 0.7)
        px, py = rng.uniform(-2.0, 2.0), cam.height_m - rng.uniform(0.4, 1.6)
        paint, frame = tex.patch_texture(rng, max(w, h)), rng.uniform(0.0, 0.04)
        frame_c = tex.random_colour(rng, (0, 0.5), (0.05, 0.9))
        inside = (plane == BACK_WALL) & (np.abs(x - px) < w / 2) & (np.abs(y - py) < h / 2)
        core = inside & (np.abs(x - px) < w / 2 - frame) & (np.abs(y - py) < h / 2 - frame)
        rgb[inside] = frame_c
        if core.any():
            rgb[core] = paint(x[core] - px, y[core] - py)
    on_floor = plane == FLOOR
    fz = z[on_floor]
    for _ in range(int(rng.integers(0, 4))):
        if fz.size == 0:
            break
        cz = rng.uniform(fz.min(), min(fz.max(), fz.min() + 3.0))
        cx = rng.uniform(-1.0, 1.0) * cz * cam.width / cam.focal / 2
        rx, rz = rng.uniform(0.05, 0.6), rng.uniform(0.05, 0.6)
        blob = tex.fbm(rng, max(rx, rz) * 0.5)
        r2 = ((x - cx) / rx) ** 2 + ((z - cz) / rz) ** 2
        sel = on_floor & (r2 < 1.6)
        if not sel.any():
            continue
        edge = 1.0 - r2[sel] + 0.35 * blob(x[sel], z[sel])
        alpha = np.clip(edge * 6.0, 0, 1) * rng.uniform(0.5, 1.0)
        colour = tex.patch_texture(rng, max(rx, rz))(x[sel] - cx, z[sel] - cz)
        rgb[sel] = rgb[sel] * (1 - alpha[:, None]) + colour * alpha[:, None]


def _room_light(rng, rgb, world):
    """A light pool from a lamp above the scene, plus ambient light."""
    x, y, z = world
    lamp = np.array([rng.uniform(-1.5, 1.5), -rng.uniform(0.5, 1.5), rng.uniform(0.5, 3.0)])
    dist2 = (x - lamp[0]) ** 2 + (y - lamp[1]) ** 2 + (z - lamp[2]) ** 2
    light = rng.uniform(0.45, 0.7) + rng.uniform(0.3, 0.8) / (1.0 + dist2 / rng.uniform(1, 6))
    light = light.astype(np.float32)
    rgb *= light[..., None]
    return light


def _antialias(rgb: np.ndarray, world) -> np.ndarray:
    """Blend towards a blurred copy where one pixel covers several mm of surface: far,
    grazing floor texture would otherwise alias into moire."""
    rows = np.sqrt(sum(np.gradient(c, axis=0) ** 2 for c in world))
    cols = np.sqrt(sum(np.gradient(c, axis=1) ** 2 for c in world))
    t = np.clip((np.maximum(rows, cols) - 0.005) / 0.015, 0.0, 1.0).astype(np.float32)
    soft = ndimage.gaussian_filter(rgb, sigma=(1.2, 1.2, 0))
    return rgb + (soft - rgb) * t[..., None]


def render_room(rng: np.random.Generator, width: int, height: int) -> dict:
    cam = Camera(width=width, height=height, focal=width * rng.uniform(0.8, 1.15),
                 pitch=np.deg2rad(rng.uniform(0.0, 42.0)), height_m=rng.uniform(0.35, 0.9))
    wall_z = rng.uniform(1.4, 3.5)
    side_x = rng.choice([-1.0, 1.0]) * rng.uniform(0.6, 1.6) if rng.random() < 0.4 else None
    floor_depth, plane, depth, world = _room_planes(cam, wall_z, side_x)
    rgb = _paint_planes(rng, plane, world, cam)
    _paint_clutter(rng, rgb, plane, world, cam)
    rgb = _antialias(rgb, world)
    light_field = _room_light(rng, rgb, world)
    light = np.array([rng.uniform(-0.6, 0.6), -rng.uniform(0.5, 1.0), -rng.uniform(0.4, 0.9)])
    return {"camera": cam, "rgb": rgb, "depth": depth.astype(np.float64), "plane": plane,
            "floor_depth": floor_depth, "light_field": light_field,
            "light": light / np.linalg.norm(light)}


def _anchor(rng, room, on_floor: bool, previous: list[ObjectSpec]):
    """A pixel on the floor (contact point) or on the back wall, often near an earlier
    object so that objects overlap and occlude each other."""
    h, w = room["plane"].shape
    target = FLOOR if on_floor else BACK_WALL
    if previous and rng.random() < 0.5:
        p = previous[int(rng.integers(len(previous)))]
        x = p.x + rng.choice([-1, 1]) * rng.uniform(0.4, 1.6) * 2 * p.half_w
        y = p.y + rng.uniform(-0.6, 0.6) * 2 * p.half_h
        xi, yi = int(np.clip(x, 0, w - 1)), int(np.clip(y, 0, h - 1))
        if room["plane"][yi, xi] == target:
            return xi, yi
    idx = np.flatnonzero(room["plane"].reshape(-1) == target)
    if idx.size == 0:
        return None
    yi, xi = divmod(int(idx[rng.integers(idx.size)]), w)
    return xi, yi


def sample_objects(rng, room, n: int, camouflage: float,
                   previous: list[ObjectSpec] | None = None) -> list[ObjectSpec]:
    cam: Camera = room["camera"]
    specs = list(previous or [])
    for _ in range(n):
        on_floor = bool(rng.random() < 0.85)
        anchor = _anchor(rng, room, on_floor, specs) or _anchor(rng, room, not on_floor, specs)
        if anchor is None:
            break
        on_floor = room["plane"][anchor[1], anchor[0]] == FLOOR
        z_ref = room["floor_depth"][anchor[1], anchor[0]] if on_floor else \
            room["depth"][anchor[1], anchor[0]]
        specs.append(sample_object(rng, anchor=anchor, z_ref=float(z_ref), on_floor=on_floor,
                                   focal=cam.focal, max_half=0.3 * cam.width,
                                   camouflage=camouflage))
    return specs


def _reflect(idx: np.ndarray, n: int) -> np.ndarray:
    m = idx % (2 * n)
    return np.where(m >= n, 2 * n - 1 - m, m)


def _cast_shadow(rgb, labels, plane, spec: ObjectSpec, light: np.ndarray) -> None:
    """Soft contact shadow on the floor (a colour edge without a depth edge)."""
    h, w = labels.shape
    cx = spec.x - light[0] * spec.half_w * 0.8
    cy = spec.y - 0.15 * spec.half_h
    rx, ry = 1.2 * spec.half_w + 1, 0.35 * spec.half_h + 1
    y0, y1 = max(int(cy - 2 * ry), 0), min(int(cy + 2 * ry) + 1, h)
    x0, x1 = max(int(cx - 2 * rx), 0), min(int(cx + 2 * rx) + 1, w)
    if y0 >= y1 or x0 >= x1:
        return
    yy = (np.arange(y0, y1) + 0.5 - cy)[:, None] / ry
    xx = (np.arange(x0, x1) + 0.5 - cx)[None, :] / rx
    amount = 0.5 * np.exp(-(xx * xx + yy * yy))
    amount = amount * ((labels[y0:y1, x0:x1] < 0) & (plane[y0:y1, x0:x1] == FLOOR))
    rgb[y0:y1, x0:x1] *= (1.0 - amount)[..., None].astype(np.float32)


def _draw(room, spec: ObjectSpec, k: int, rgb, depth, labels) -> None:
    cam: Camera = room["camera"]
    r = rasterize(spec)
    wh, ww = r["mask"].shape
    r0, c0 = r["row0"], r["col0"]
    y0, y1 = max(r0, 0), min(r0 + wh, cam.height)
    x0, x1 = max(c0, 0), min(c0 + ww, cam.width)
    if y0 >= y1 or x0 >= x1:
        return
    if spec.on_floor and rgb is not None:
        _cast_shadow(rgb, labels, room["plane"], spec, room["light"])
    win = (slice(y0 - r0, y1 - r0), slice(x0 - c0, x1 - c0))
    vis = r["mask"][win] & (r["depth"][win] < depth[y0:y1, x0:x1])
    depth[y0:y1, x0:x1][vis] = r["depth"][win][vis]
    labels[y0:y1, x0:x1][vis] = k
    if rgb is None or not vis.any():
        return
    shade, spec_term = shading(r["depth"], cam.focal, room["light"], spec.gloss)
    shade, spec_term = shade[win], spec_term[win]
    if spec.camouflaged:
        # colour and texture of the surroundings: a shifted copy of what is already there
        sy = _reflect(np.arange(y0, y1) + int(round(spec.camo_shift[1])), cam.height)
        sx = _reflect(np.arange(x0, x1) + int(round(spec.camo_shift[0])), cam.width)
        base = rgb[np.ix_(sy, sx)]
        shade = 1.0 + 0.5 * (shade - 1.0)
    else:
        base = spec.texture(r["u"][win], r["v"][win]) * room["light_field"][y0:y1, x0:x1, None]
    colour = base * shade[..., None] + spec_term[..., None]
    rgb[y0:y1, x0:x1][vis] = colour[vis]


def composite(room: dict, specs: list[ObjectSpec], colour: bool = True):
    """Draw objects far to near over the room; returns rgb float (None unless `colour`),
    depth (m), labels."""
    rgb = room["rgb"].copy() if colour else None
    depth = room["depth"].copy()
    labels = np.full(depth.shape, -1, np.int32)
    for k in sorted(range(len(specs)), key=lambda i: -specs[i].z_front):
        _draw(room, specs[k], k, rgb, depth, labels)
    return rgb, depth, labels


def _finish(rng, rgb: np.ndarray) -> np.ndarray:
    """Camera effects: uneven light, vignetting, white balance, lens blur, sensor noise."""
    h, w = rgb.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    illum = 1.0 + 0.12 * tex.value_noise(rng, max(h, w) / 2.0)(xx, yy)
    r2 = ((xx - w / 2) ** 2 + (yy - h / 2) ** 2) / ((w / 2) ** 2 + (h / 2) ** 2)
    gain = illum * (1.0 - rng.uniform(0.1, 0.35) * r2) * rng.uniform(0.85, 1.15)
    img = rgb * gain[..., None] * (1.0 + rng.uniform(-0.08, 0.08, 3)).astype(np.float32)
    sigma = rng.uniform(0.35, 0.75)
    img = ndimage.gaussian_filter(img, sigma=(sigma, sigma, 0))
    img = img + rng.normal(0.0, rng.uniform(0.004, 0.02), img.shape)
    return np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


def render_scene(rng: np.random.Generator, *, width: int, height: int, camouflage: float,
                 min_objects: int, max_objects: int, min_area: int = 30) -> dict:
    """Render one scene (see the module docstring for the returned keys)."""
    room = render_room(rng, width, height)
    n = int(rng.integers(min_objects, max_objects + 1))
    specs = sample_objects(rng, room, n, camouflage)
    for attempt in range(6):   # top up when too many objects ended up hidden
        _, _, labels = composite(room, specs, colour=False)
        areas = np.bincount(labels.ravel() + 1, minlength=len(specs) + 1)[1:]
        keep = [s for s, a in zip(specs, areas) if a >= min_area]
        if len(keep) >= min_objects or attempt == 5:
            break
        specs = sample_objects(rng, room, min_objects - len(keep), camouflage, previous=keep)
    specs = keep
    # dropping objects only uncovers others, so no kept object falls under min_area
    rgb, depth, labels = composite(room, specs)
    objects = [{"category_id": s.category_id, "camouflaged": s.camouflaged,
                "on_floor": bool(s.on_floor), "z_front": float(s.z_front)} for s in specs]
    return {"image": _finish(rng, rgb), "depth_m": depth.astype(np.float32),
            "labels": labels, "objects": objects}
