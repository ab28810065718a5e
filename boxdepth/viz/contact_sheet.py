"""A contact sheet: a grid of crops, each with its box and mask drawn and a caption below
(`boxdepth qa`'s worst annotations).

    crop_tile(image uint8 (H, W, 3), mask bool (H, W) or None, box XYXY (4,), *,
              tile=128, margin=0.25, color=(255, 64, 64)) -> uint8 (tile, tile, 3)
        the box plus `margin` of its size on each side (at least 8 px), cut from the
        image (grey outside it), the mask blended in `color` with a solid rim, the box
        outlined in white, scaled to fit a tile x tile square (aspect kept, letterboxed)
    contact_sheet(tiles [uint8 (t, t, 3)], captions [[str] lines], *, columns=6,
                  lines=3, font_size=11) -> uint8 (H, W, 3)
        tiles row-major, each caption under its tile, word-wrapped to the tile's width
        (a word wider than the tile is broken); nothing is cut: every cell is as tall as
        the most wrapped lines of any caption, and at least `lines` lines
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from boxdepth.viz.draw import _text_size, load_font, overlay_instances

_OUTSIDE = 96  # grey where the crop window leaves the image
_PAD = 4


def crop_tile(image: np.ndarray, mask: np.ndarray | None, box, *, tile: int = 128, margin: float = 0.25,
              color: Sequence[int] = (255, 64, 64)) -> np.ndarray:
    """One annotation, cropped and drawn (module doc)."""
    img = np.asarray(image)
    h, w = img.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box)
    mx, my = max((x2 - x1) * margin, 8.0), max((y2 - y1) * margin, 8.0)
    cx1, cy1 = int(math.floor(x1 - mx)), int(math.floor(y1 - my))
    cx2, cy2 = max(int(math.ceil(x2 + mx)), cx1 + 1), max(int(math.ceil(y2 + my)), cy1 + 1)
    crop = np.full((cy2 - cy1, cx2 - cx1, 3), _OUTSIDE, np.uint8)
    sx1, sy1, sx2, sy2 = max(cx1, 0), max(cy1, 0), min(cx2, w), min(cy2, h)
    crop_mask = np.zeros(crop.shape[:2], bool)
    if sx2 > sx1 and sy2 > sy1:
        crop[sy1 - cy1:sy2 - cy1, sx1 - cx1:sx2 - cx1] = img[sy1:sy2, sx1:sx2]
        if mask is not None:
            crop_mask[sy1 - cy1:sy2 - cy1, sx1 - cx1:sx2 - cx1] = np.asarray(mask, bool)[sy1:sy2, sx1:sx2]
    scale = tile / max(crop.shape[:2])
    nh, nw = max(1, round(crop.shape[0] * scale)), max(1, round(crop.shape[1] * scale))
    small = np.asarray(Image.fromarray(crop).resize((nw, nh), Image.BILINEAR))
    small_mask = np.asarray(Image.fromarray(crop_mask).resize((nw, nh), Image.NEAREST))
    sbox = np.array([[(x1 - cx1) * scale, (y1 - cy1) * scale, (x2 - cx1) * scale, (y2 - cy1) * scale]])
    drawn = overlay_instances(small, small_mask[None], None, colors=np.array([color], np.uint8))
    pil = Image.fromarray(drawn)
    bx1, by1, bx2, by2 = (round(float(v)) for v in sbox[0])
    ImageDraw.Draw(pil).rectangle([bx1, by1, max(bx2 - 1, bx1), max(by2 - 1, by1)], outline=(255, 255, 255))
    out = np.full((tile, tile, 3), _OUTSIDE, np.uint8)
    oy, ox = (tile - nh) // 2, (tile - nw) // 2
    out[oy:oy + nh, ox:ox + nw] = np.asarray(pil)
    return out


def wrap_text(font, text: str, width: int) -> list[str]:
    """`text` as lines no wider than `width` px: greedy on words, a too-wide word broken."""
    lines: list[str] = []
    for word in str(text).split():
        if lines and _text_size(font, f"{lines[-1]} {word}")[0] <= width:
            lines[-1] = f"{lines[-1]} {word}"
            continue
        while _text_size(font, word)[0] > width and len(word) > 1:
            cut = len(word) - 1
            while cut > 1 and _text_size(font, word[:cut])[0] > width:
                cut -= 1
            lines.append(word[:cut])
            word = word[cut:]
        lines.append(word)
    return lines


def contact_sheet(tiles: list[np.ndarray], captions: list[list[str]], *, columns: int = 6, lines: int = 3,
                  font_size: int = 11) -> np.ndarray:
    """Grid of equally sized tiles with captions (module doc)."""
    if not tiles:
        raise ValueError("contact_sheet needs at least one tile")
    if len(captions) != len(tiles):
        raise ValueError(f"contact_sheet: {len(captions)} captions for {len(tiles)} tiles")
    th, tw = tiles[0].shape[:2]
    if any(t.shape != tiles[0].shape for t in tiles):
        raise ValueError("contact_sheet: every tile must have the same shape")
    font = load_font(font_size)
    line_h = _text_size(font, "Ag")[1] + 2
    wrapped = [[w for text in caption for w in wrap_text(font, text, tw)] for caption in captions]
    cols = max(1, min(int(columns), len(tiles)))
    rows = math.ceil(len(tiles) / cols)
    cell_h = th + max([lines] + [len(w) for w in wrapped]) * line_h + _PAD
    sheet = Image.new("RGB", (_PAD + cols * (tw + _PAD), _PAD + rows * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, (tile, caption) in enumerate(zip(tiles, wrapped)):
        x, y = _PAD + (i % cols) * (tw + _PAD), _PAD + (i // cols) * cell_h
        sheet.paste(Image.fromarray(np.asarray(tile, np.uint8)), (x, y))
        for j, text in enumerate(caption):
            draw.text((x, y + th + 1 + j * line_h), text, fill=(0, 0, 0), font=font)
    return np.asarray(sheet).copy()
