"""Pictures of predictions and diagnostics, with Pillow and numpy only.

Array conventions:
    image     uint8 (H, W, 3) RGB
    masks     bool  (K, H, W)  instance masks at the image size
    boxes     float (K, 4)     absolute XYXY pixels; a box covers x in [x1, x2), y in [y1, y2)
    d01       float (H, W)     pseudo / predicted depth in [0, 1], larger = nearer (SPEC §0)
    affinity  float (H, W)     a similarity in [0, 1] (e.g. the mean colour or depth
                               affinity S_c / S_d of a pixel to its neighbours)

Colour maps are 256-entry lookup tables: ``turbo`` (Google's Turbo, Apache-2.0, rebuilt
from every 8th entry of the published 256-entry table by linear interpolation, within
3/255 of the original) and ``gray``. Turbo runs violet -> blue -> green -> yellow -> red,
so a larger (nearer) depth is warmer. Values that are NaN/inf or outside `valid` are
drawn in `invalid_color` (black by default).
"""
from __future__ import annotations

import colorsys
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from boxdepth.fileio import atomic_save

_TURBO_ANCHORS = np.array([
    (48, 18, 59), (57, 42, 115), (64, 64, 162), (68, 86, 199),
    (70, 107, 227), (70, 128, 246), (66, 148, 255), (55, 168, 250),
    (40, 188, 235), (28, 205, 216), (24, 221, 194), (31, 233, 175),
    (50, 242, 152), (78, 249, 125), (109, 254, 98), (139, 255, 75),
    (164, 252, 60), (185, 246, 53), (205, 236, 52), (223, 223, 55),
    (238, 207, 58), (248, 190, 57), (253, 172, 52), (254, 150, 43),
    (251, 126, 33), (244, 102, 23), (235, 80, 14), (223, 63, 8),
    (208, 47, 5), (190, 33, 2), (169, 22, 1), (146, 11, 1),
    (122, 4, 3)], dtype=np.float64)
_TURBO_ANCHOR_INDEX = np.array(list(range(0, 256, 8)) + [255], dtype=np.float64)


def _turbo_lut() -> np.ndarray:
    x = np.arange(256, dtype=np.float64)
    lut = np.stack([np.interp(x, _TURBO_ANCHOR_INDEX, _TURBO_ANCHORS[:, c]) for c in range(3)], 1)
    return np.round(lut).astype(np.uint8)


COLORMAPS: dict[str, np.ndarray] = {
    "turbo": _turbo_lut(),
    "gray": np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1),
}


def apply_colormap(values: np.ndarray, cmap: str = "turbo", *, vmin: float = 0.0,
                   vmax: float = 1.0, valid: np.ndarray | None = None,
                   invalid_color: Sequence[int] = (0, 0, 0)) -> np.ndarray:
    """(H, W) floats -> uint8 (H, W, 3): [vmin, vmax] maps linearly onto the table
    (values outside are clipped); non-finite values and pixels outside `valid` get
    `invalid_color`."""
    if cmap not in COLORMAPS:
        raise ValueError(f"unknown colour map {cmap!r}; choose one of {sorted(COLORMAPS)}")
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2:
        raise ValueError(f"apply_colormap expects a (H, W) map, got shape {v.shape}")
    if not vmax > vmin:
        raise ValueError(f"apply_colormap needs vmax > vmin, got [{vmin}, {vmax}]")
    ok = np.isfinite(v)
    if valid is not None:
        ok &= np.asarray(valid, dtype=bool)
    t = np.clip((np.where(ok, v, vmin) - vmin) / (vmax - vmin), 0.0, 1.0)
    out = COLORMAPS[cmap][np.round(t * 255).astype(np.intp)]
    out[~ok] = np.asarray(invalid_color, dtype=np.uint8)
    return out


def colorize_depth(d01: np.ndarray, valid: np.ndarray | None = None,
                   cmap: str = "turbo") -> np.ndarray:
    """Depth in [0, 1] (larger = nearer) -> uint8 (H, W, 3); nearer is warmer,
    invalid pixels are black."""
    return apply_colormap(d01, cmap, valid=valid)


def colorize_affinity(aff: np.ndarray, valid: np.ndarray | None = None,
                      cmap: str = "gray") -> np.ndarray:
    """Affinity in [0, 1] -> uint8 (H, W, 3); 0 black, 1 white with the default map."""
    return apply_colormap(aff, cmap, valid=valid)


def instance_colors(n: int) -> np.ndarray:
    """`n` distinct saturated colours, uint8 (n, 3): hues spaced by the golden ratio so
    neighbouring indices differ strongly however many there are."""
    hues = (0.12 + np.arange(n) * 0.618033988749895) % 1.0
    rgb = [colorsys.hsv_to_rgb(h, 0.8 if i % 2 else 0.65, 0.95) for i, h in enumerate(hues)]
    return np.round(np.array(rgb, dtype=np.float64).reshape(n, 3) * 255).astype(np.uint8)


def load_font(size: int) -> ImageFont.ImageFont:
    """Pillow's built-in font at `size` px (Pillow >= 10.1), else its fixed bitmap font."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # older Pillow: no scalable default font
        return ImageFont.load_default()


def _text_size(font, text: str) -> tuple[int, int]:
    x0, y0, x1, y1 = font.getbbox(text)
    return int(x1), int(y1)


def _caption(k: int, labels, scores) -> str | None:
    parts = []
    if labels is not None:
        parts.append(str(labels[k]))
    if scores is not None:
        parts.append(f"{float(scores[k]):.2f}")
    return " ".join(parts) if parts else None


def _blend_masks(out: np.ndarray, masks: np.ndarray, colors: np.ndarray, alpha: float,
                 outline: bool) -> None:
    """Blend each mask's colour into `out` in place; the last drawn lies on top."""
    for k in reversed(range(masks.shape[0])):  # instance 0 (usually the best) on top
        rows, cols = np.flatnonzero(masks[k].any(1)), np.flatnonzero(masks[k].any(0))
        if len(rows) == 0:
            continue
        # work on the mask's tight bounding box: outside it the mask is all zero
        win = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        m, region = masks[k][win], out[win]
        color = colors[k].astype(np.float32)
        for top in range(0, m.shape[0], 256):  # strips: float copies of a 12 MP window are 150 MB
            part, pm = region[top:top + 256], m[top:top + 256]
            blend = part.astype(np.float32) * (1.0 - alpha) + alpha * color
            np.copyto(part, np.rint(blend).astype(np.uint8), where=pm[:, :, None])
        if outline:  # a solid rim keeps touching instances apart
            region[m & ~ndimage.binary_erosion(m, border_value=0)] = colors[k]


def blend_mask(out: np.ndarray, mask: np.ndarray, color, alpha: float = 0.5,
               outline: bool = True) -> None:
    """Blend one bool (H, W) mask into `out` in place as `overlay_instances` does. Called for
    instances K-1, ..., 0 it gives overlay_instances' pixels without K masks in memory."""
    _blend_masks(out, np.asarray(mask, dtype=bool)[None], np.asarray(color, dtype=np.uint8)[None],
                 float(alpha), outline)


def _draw_caption(draw: ImageDraw.ImageDraw, font, text: str, box, color, hw) -> None:
    h, w = hw
    tw, th = _text_size(font, text)
    x = int(np.clip(np.floor(box[0]), 0, max(w - tw - 2, 0)))
    top = int(np.floor(box[1]))
    y = top - th - 2 if top - th - 2 >= 0 else max(top, 0)  # above the box when it fits
    y = min(y, max(h - th - 2, 0))
    fg = (0, 0, 0) if (0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]) > 140 else (255, 255, 255)
    draw.rectangle([x, y, x + tw + 1, y + th + 1], fill=tuple(int(v) for v in color))
    draw.text((x + 1, y + 1), text, fill=fg, font=font)


def overlay_font_size(h: int, w: int) -> int:
    """Caption size for an (h, w) overlay: 1/36 of the short side on large images; below
    360 px it shrinks with the image (1/14, 10 px at most), so that a label does not cover
    a small image's objects, down to 7 px, the smallest the default font stays legible at."""
    short = min(h, w)
    return max(round(short / 36), min(10, round(short / 14)), 7)


def overlay_instances(image: np.ndarray, masks: np.ndarray | None, boxes: np.ndarray | None,
                      labels: Sequence[str] | None = None, scores: Sequence[float] | None = None,
                      alpha: float = 0.5, *, colors: np.ndarray | None = None,
                      mask_outline: bool = True, line_width: int | None = None,
                      font_size: int | None = None) -> np.ndarray:
    """Draw K instances on a copy of `image`: translucent masks (with a solid rim),
    box outlines and "label score" captions in a distinct colour per instance.

    Pixels outside every mask, box outline and caption are left unchanged. Line width
    and font size default to a fraction of the image size.
    """
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"overlay_instances expects uint8 (H, W, 3), got {img.dtype} {img.shape}")
    h, w = img.shape[:2]
    n = masks.shape[0] if masks is not None else (len(boxes) if boxes is not None else 0)
    if masks is not None and tuple(masks.shape[1:]) != (h, w):
        raise ValueError(f"masks of shape {tuple(masks.shape)} do not match the image {h}x{w}")
    if boxes is not None and len(boxes) != n:
        raise ValueError(f"{len(boxes)} boxes for {n} masks")
    colors = instance_colors(n) if colors is None else np.asarray(colors, dtype=np.uint8)
    out = img.copy()
    if masks is not None and n:
        _blend_masks(out, np.asarray(masks, dtype=bool), colors, float(alpha), mask_outline)
    if boxes is None and labels is None and scores is None:
        return out
    lw = line_width or max(1, round(min(h, w) / 320))
    font = load_font(font_size or overlay_font_size(h, w))
    pil = Image.fromarray(out)
    draw = ImageDraw.Draw(pil)
    order = list(reversed(range(n)))
    if boxes is not None:
        for k in order:
            x1, y1, x2, y2 = (float(v) for v in boxes[k])
            rect = [round(x1), round(y1), max(round(x2) - 1, round(x1)), max(round(y2) - 1, round(y1))]
            draw.rectangle(rect, outline=tuple(int(c) for c in colors[k]), width=lw)
    for k in order:
        text = _caption(k, labels, scores)
        if text:
            box = boxes[k] if boxes is not None else _mask_box(masks[k])
            _draw_caption(draw, font, text, box, colors[k], (h, w))
    return np.asarray(pil).copy()


def _mask_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return (0.0, 0.0, 0.0, 0.0)
    return (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))


def _as_rgb(tile: np.ndarray) -> np.ndarray:
    t = np.asarray(tile)
    if t.dtype == bool:
        t = t.astype(np.uint8) * 255
    if t.dtype != np.uint8:
        raise ValueError(f"panel tiles must be uint8 or bool images, got {t.dtype} "
                         f"(colourise float maps first, e.g. with colorize_depth)")
    if t.ndim == 2:
        t = np.repeat(t[:, :, None], 3, axis=2)
    if t.ndim != 3 or t.shape[2] != 3 or t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"panel tiles must be (H, W) or (H, W, 3), got shape {t.shape}")
    return t


def _resize_to_height(tile: np.ndarray, height: int) -> np.ndarray:
    h, w = tile.shape[:2]
    if h == height:
        return tile
    new_w = max(1, round(w * height / h))
    return np.asarray(Image.fromarray(tile).resize((new_w, height), Image.BILINEAR))


def _title_grid(titles, tiles) -> list[list[str | None]]:
    """Titles per column (one per column, over the first row) or per tile (row-major)."""
    n_cols = max(len(r) for r in tiles)
    n_tiles = sum(len(r) for r in tiles)
    grid: list[list[str | None]] = [[None] * len(r) for r in tiles]
    if titles is None:
        return grid
    titles = list(titles)
    if len(titles) == n_tiles:
        it = iter(titles)
        return [[next(it) for _ in r] for r in tiles]
    if len(titles) == n_cols:
        grid[0] = [titles[c] if c < len(titles) else None for c in range(len(tiles[0]))]
        return grid
    raise ValueError(f"{len(titles)} titles for a panel of {n_cols} columns and {n_tiles} tiles "
                     f"(give one per column or one per tile)")


def title_strip_height(font_size: int = 14) -> int:
    """Height in px of the title strip that `make_panel` puts above a titled row."""
    return _text_size(load_font(font_size), "Ag")[1] + 4


def _fit_text(font, text: str, width: int) -> str:
    if _text_size(font, text)[0] <= width:
        return text
    while text and _text_size(font, text + "...")[0] > width:
        text = text[:-1]
    return text + "..." if text else ""


def make_panel(tiles: list[list[np.ndarray]], titles: list[str] | None = None, pad: int = 4, *,
               height: int | None = None, font_size: int = 14,
               background: Sequence[int] = (255, 255, 255)) -> np.ndarray:
    """Grid of tiles (rows of images) -> one uint8 (H, W, 3) picture.

    Every tile is resized (aspect kept) to `height` (default: the first tile's height);
    rows are laid out left-aligned with `pad` px around and between tiles. Panel size:
    width = max over rows of (pad + sum(tile_w + pad)), height = pad + sum over rows of
    (strip + height + pad), where strip = `title_strip_height(font_size)` for a row with a
    title and 0 otherwise. Tiles: uint8 (H, W, 3), uint8 (H, W) grey or bool masks.
    """
    if not tiles or any(len(r) == 0 for r in tiles):
        raise ValueError("make_panel needs at least one tile in every row")
    rgb = [[_as_rgb(t) for t in row] for row in tiles]
    th = int(height or rgb[0][0].shape[0])
    rows = [[_resize_to_height(t, th) for t in row] for row in rgb]
    grid = _title_grid(titles, rows)
    strip = title_strip_height(font_size)
    strips = [strip if any(t for t in g) else 0 for g in grid]
    width = max(pad + sum(t.shape[1] + pad for t in row) for row in rows)
    total_h = pad + sum(s + th + pad for s in strips)
    canvas = np.empty((total_h, width, 3), np.uint8)
    canvas[:] = np.asarray(background, dtype=np.uint8)
    pil = Image.fromarray(canvas)
    draw, font = ImageDraw.Draw(pil), load_font(font_size)
    y = pad
    for row, names, s in zip(rows, grid, strips):
        x = pad
        for tile, name in zip(row, names):
            if name:
                draw.text((x, y + 1), _fit_text(font, str(name), tile.shape[1]),
                          fill=(0, 0, 0) if sum(background) > 384 else (255, 255, 255), font=font)
            pil.paste(Image.fromarray(tile), (x, y + s))
            x += tile.shape[1] + pad
        y += s + th + pad
    return np.asarray(pil).copy()


def save_png(path: str | Path, array: np.ndarray) -> None:
    """Write uint8 (H, W), (H, W, 3), (H, W, 4), uint16 (H, W) or bool (H, W) (as 0/255)
    as a PNG, atomically."""
    a = np.asarray(array)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    ok = (a.dtype == np.uint8 and (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4)))) or \
         (a.dtype == np.uint16 and a.ndim == 2)
    if not ok:
        raise ValueError(f"save_png({path}): unsupported array {a.dtype} {a.shape}")
    img = Image.fromarray(np.ascontiguousarray(a))
    atomic_save(path, lambda p: img.save(p, format="PNG"))


NOTE_BG = (48, 48, 48)  # background of a tile that says why there is no picture


def note_tile(hw: tuple[int, int], text: str) -> np.ndarray:
    """A dark (H, W, 3) tile with `text` centred, word-wrapped to the width."""
    h, w = hw
    tile = Image.new("RGB", (w, h), NOTE_BG)
    draw = ImageDraw.Draw(tile)
    font = load_font(max(8, min(24, w // 14, h // 6)))
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(lines[-1] + " " + word, font=font) <= w - 8:
            lines[-1] += " " + word
        else:
            lines.append(word)
    line_h = font.getbbox("Ag")[3] + 2
    y = max(0, (h - line_h * len(lines)) // 2)
    for line in lines:
        x = max(0, (w - int(draw.textlength(line, font=font))) // 2)
        draw.text((x, y), line, fill=(230, 230, 230), font=font)
        y += line_h
    return np.asarray(tile).copy()
