"""Procedural textures for the synthetic RGB-D generator (`boxdepth.data.synthetic`).

A texture is a callable ``paint(u, v) -> float32 (*u.shape, 3)`` in [0, 1]; `u`, `v` are
coordinate arrays of one shape, in pixels (objects) or metres (room surfaces). Every random
choice is drawn when the texture is made, so painting is a pure function of (u, v).

Makers: `object_texture` (stripes, checker, dots, noise blend, gradient, solid),
`floor_texture` (planks, tiles, carpet, cloth check), `wall_texture` (paint, wallpaper
stripes or dots, plaster), `patch_texture` (clutter such as posters, rugs, stains).
"""
from __future__ import annotations

import colorsys
from typing import Callable

import numpy as np

Texture = Callable[[np.ndarray, np.ndarray], np.ndarray]
Noise = Callable[[np.ndarray, np.ndarray], np.ndarray]


def hsv_colour(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0),
                                        min(max(v, 0.0), 1.0)), np.float32)


def random_colour(rng: np.random.Generator, sat=(0.15, 0.9), val=(0.2, 0.95)) -> np.ndarray:
    return hsv_colour(rng.random(), rng.uniform(*sat), rng.uniform(*val))


def related_colour(rng: np.random.Generator, c: np.ndarray) -> np.ndarray:
    """A second colour for a two-tone pattern: a lighter/darker shade or a new hue."""
    if rng.random() < 0.5:
        shade = c * rng.uniform(0.45, 0.75) + rng.uniform(0.0, 0.25)
        return np.clip(shade, 0, 1).astype(np.float32)
    return random_colour(rng)


def value_noise(rng: np.random.Generator, cell: float, cells: int = 32) -> Noise:
    """Smooth tiling value noise with features about `cell` units wide: a random grid
    interpolated with a C1 smoothstep (plain numpy gathers; `map_coordinates` was the
    bottleneck). Rescaled to about unit variance."""
    grid = (rng.standard_normal((cells, cells)) * 1.45).astype(np.float32).ravel()
    scale = np.float32(1.0 / cell)

    def noise(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        a = np.asarray(u, np.float32) * scale
        b = np.asarray(v, np.float32) * scale
        a0, b0 = np.floor(a), np.floor(b)
        ta, tb = a - a0, b - b0
        ta, tb = ta * ta * (3 - 2 * ta), tb * tb * (3 - 2 * tb)
        i0, j0 = a0.astype(np.int32) % cells, b0.astype(np.int32) % cells
        i1, r1 = (i0 + 1) % cells, ((j0 + 1) % cells) * cells
        r0 = j0 * cells
        g00, g01 = grid.take(r0 + i0), grid.take(r0 + i1)
        g10, g11 = grid.take(r1 + i0), grid.take(r1 + i1)
        top = g00 + (g01 - g00) * ta
        return top + (g10 + (g11 - g10) * ta - top) * tb
    return noise


def fbm(rng: np.random.Generator, cell: float) -> Noise:
    """Two octaves of value noise (hides the grid of a single octave)."""
    n1, n2 = value_noise(rng, cell), value_noise(rng, cell / 2.3)
    return lambda u, v: (n1(u, v) + 0.5 * n2(u, v)) / 1.118


def _mix(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    return a * (1.0 - t[..., None]) + b * t[..., None]


def _rotate(u, v, angle: float):
    c, s = np.cos(angle), np.sin(angle)
    return c * u + s * v, -s * u + c * v


def _soft_square(phase: np.ndarray, sharp: float) -> np.ndarray:
    """0/1 square wave of a phase in cycles with smoothed edges (limits aliasing)."""
    return 0.5 + 0.5 * np.tanh(sharp * np.sin(2 * np.pi * phase))


def _with_grain(rng: np.random.Generator, paint: Texture, cell: float,
                amount: float) -> Texture:
    grain = fbm(rng, cell)

    def painted(u, v):
        return np.clip(paint(u, v) * (1.0 + amount * grain(u, v))[..., None], 0.0, 1.0)
    return painted


def object_texture(rng: np.random.Generator, size_px: float) -> Texture:
    """A random surface pattern for an object about `size_px` pixels across."""
    c1 = random_colour(rng)
    c2 = related_colour(rng, c1)
    kind = rng.choice(["solid", "stripes", "checker", "dots", "noise", "gradient"],
                      p=[0.2, 0.2, 0.15, 0.1, 0.2, 0.15])
    period = size_px * rng.uniform(0.12, 0.45)
    angle = rng.uniform(0, np.pi)
    if kind == "solid":
        paint = lambda u, v: np.broadcast_to(c1, np.shape(u) + (3,)).astype(np.float32)
    elif kind == "stripes":
        paint = lambda u, v: _mix(c1, c2, _soft_square(_rotate(u, v, angle)[0] / period, 3.0))
    elif kind == "checker":
        def paint(u, v):
            a, b = _rotate(u, v, angle)
            sa, sb = _soft_square(a / period, 3.0), _soft_square(b / period, 3.0)
            return _mix(c1, c2, sa * sb + (1 - sa) * (1 - sb))
    elif kind == "dots":
        radius = period * rng.uniform(0.2, 0.4)
        def paint(u, v):
            a, b = _rotate(u, v, angle)
            da, db = (a / period) % 1.0 - 0.5, (b / period) % 1.0 - 0.5
            r = np.hypot(da, db) * period
            return _mix(c1, c2, np.clip(radius - r + 0.5, 0.0, 1.0))
    elif kind == "noise":
        n = fbm(rng, period)
        paint = lambda u, v: _mix(c1, c2, 1 / (1 + np.exp(-2.5 * n(u, v))))
    else:  # gradient
        paint = lambda u, v: _mix(c1, c2, np.clip(0.5 + _rotate(u, v, angle)[0] / size_px, 0, 1))
    return _with_grain(rng, paint, size_px * 0.08, rng.uniform(0.02, 0.1))


def _planks(rng: np.random.Generator) -> Texture:
    base = hsv_colour(rng.uniform(0.04, 0.11), rng.uniform(0.35, 0.7), rng.uniform(0.3, 0.75))
    width, length = rng.uniform(0.08, 0.22), rng.uniform(0.6, 2.0)
    shades = rng.uniform(0.8, 1.15, 97).astype(np.float32)
    offsets = rng.uniform(0, length, 97)
    grain = value_noise(rng, 0.02)
    angle = rng.choice([0.0, np.pi / 2])

    def paint(x, z):
        a, b = _rotate(x, z, angle)
        col = np.floor(a / width).astype(np.int64)
        row = np.floor((b + offsets[col % 97]) / length).astype(np.int64)
        shade = shades[(col * 31 + row * 7) % 97]
        seam = np.minimum((a / width) % 1.0, ((b + offsets[col % 97]) / length) % 1.0)
        seam = np.where(np.minimum(seam, 1 - seam) < 0.03, 0.7, 1.0)
        g = 1.0 + 0.12 * grain(a * 6.0, b * 0.4)
        return base * (shade * seam * g)[..., None]
    return paint


def _tiles(rng: np.random.Generator) -> Texture:
    c1 = random_colour(rng, (0.0, 0.4), (0.5, 0.95))
    grout = random_colour(rng, (0, 0.2), (0.3, 0.8))
    size = rng.uniform(0.15, 0.45)
    shades = rng.uniform(0.9, 1.08, 53).astype(np.float32)

    def paint(x, z):
        i, j = np.floor(x / size).astype(np.int64), np.floor(z / size).astype(np.int64)
        fx, fz = (x / size) % 1.0, (z / size) % 1.0
        edge = np.minimum(np.minimum(fx, 1 - fx), np.minimum(fz, 1 - fz)) * size
        t = np.clip(edge / 0.006 - 0.5, 0.0, 1.0)
        return _mix(grout, c1 * shades[(i * 17 + j * 5) % 53][..., None], t)
    return paint


def floor_texture(rng: np.random.Generator) -> Texture:
    """A table top or floor, painted in metric world coordinates (x, z) on the plane."""
    kind = rng.choice(["planks", "tiles", "carpet", "cloth"], p=[0.4, 0.2, 0.25, 0.15])
    if kind == "planks":
        paint = _planks(rng)
    elif kind == "tiles":
        paint = _tiles(rng)
    elif kind == "carpet":
        c1 = random_colour(rng, (0.1, 0.6), (0.2, 0.7))
        c2 = related_colour(rng, c1)
        n = fbm(rng, rng.uniform(0.05, 0.3))
        paint = lambda x, z: _mix(c1, c2, 1 / (1 + np.exp(-2.0 * n(x, z))))
    else:
        c1, c2 = random_colour(rng, (0.2, 0.8)), hsv_colour(0, 0, rng.uniform(0.8, 0.95))
        period = rng.uniform(0.06, 0.18)
        paint = lambda x, z: _mix(c2, c1, 0.5 * _soft_square(x / period, 2.0)
                                  + 0.5 * _soft_square(z / period, 2.0))
    return _with_grain(rng, paint, 0.01, rng.uniform(0.03, 0.12))


def wall_texture(rng: np.random.Generator) -> Texture:
    """A wall, painted in metric wall coordinates (horizontal, vertical)."""
    c1 = random_colour(rng, (0.0, 0.45), (0.45, 0.95))
    kind = rng.choice(["paint", "stripes", "dots", "plaster"], p=[0.35, 0.25, 0.15, 0.25])
    if kind == "paint":
        paint = lambda a, b: np.broadcast_to(c1, np.shape(a) + (3,)).astype(np.float32)
    elif kind == "stripes":
        c2, period = related_colour(rng, c1), rng.uniform(0.05, 0.3)
        paint = lambda a, b: _mix(c1, c2, _soft_square(a / period, 2.0))
    elif kind == "dots":
        c2, period = related_colour(rng, c1), rng.uniform(0.08, 0.25)
        def paint(a, b):
            r = np.hypot((a / period) % 1.0 - 0.5, (b / period) % 1.0 - 0.5)
            return _mix(c1, c2, np.clip((0.25 - r) * 12.0, 0.0, 1.0))
    else:
        c2, n = related_colour(rng, c1) * 0.3 + c1 * 0.7, fbm(rng, rng.uniform(0.05, 0.4))
        paint = lambda a, b: _mix(c1, c2, np.clip(0.5 + 0.5 * n(a, b), 0, 1))
    return _with_grain(rng, paint, 0.02, rng.uniform(0.02, 0.08))


def patch_texture(rng: np.random.Generator, scale: float) -> Texture:
    """Flat clutter (poster, rug, stain): any pattern, `scale` in the caller's units."""
    return object_texture(rng, scale)
