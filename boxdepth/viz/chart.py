"""Line charts with Pillow only (matplotlib is not a dependency): learning curves and the like.

    line_chart(series, *, title, xlabel, ylabel, log_x=False, size=(720, 440)) -> uint8 (H, W, 3)
        series: {name: [(x, y), ...]}; y may carry an error as (x, y, err), drawn as a bar.

Axes start at the data's range (padded 5 %); ticks at "nice" round values; a log-2 x axis
(training budgets that double) is labelled at the x values of the data.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from boxdepth.viz.draw import instance_colors, load_font

MARGIN = (70, 40, 30, 56)  # left, top, right, bottom


def _nice_ticks(lo: float, hi: float, n: int = 6) -> list[float]:
    span = max(hi - lo, 1e-9)
    step = 10 ** math.floor(math.log10(span / n))
    for m in (1, 2, 5, 10):
        if span / (m * step) <= n:
            step *= m
            break
    first = math.ceil(lo / step) * step
    return [round(first + i * step, 10) for i in range(int((hi - first) / step) + 1)]


def _bounds(values: list[float], pad: float = 0.05) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    if hi == lo:
        return lo - 1, hi + 1
    return lo - pad * (hi - lo), hi + pad * (hi - lo)


class _Axes:
    def __init__(self, xs, ys, size, log_x):
        self.log_x, (self.w, self.h) = log_x, size
        self.data_x = sorted(set(xs))
        self.xlo, self.xhi = _bounds([self._tx(x) for x in xs])
        self.ylo, self.yhi = _bounds(ys)

    def _tx(self, x: float) -> float:
        return math.log2(x) if self.log_x else x

    def px(self, x: float, y: float) -> tuple[float, float]:
        left, top, right, bottom = MARGIN
        u = (self._tx(x) - self.xlo) / (self.xhi - self.xlo)
        v = (y - self.ylo) / (self.yhi - self.ylo)
        return left + u * (self.w - left - right), self.h - bottom - v * (self.h - top - bottom)

    def xticks(self) -> list[float]:
        if self.log_x:  # budgets: label the values that were run
            return self.data_x if len(self.data_x) <= 10 else \
                [2.0 ** k for k in range(math.ceil(self.xlo), math.floor(self.xhi) + 1)]
        return _nice_ticks(self.xlo, self.xhi)


def _draw_axes(draw: ImageDraw.ImageDraw, ax: _Axes, font, xlabel: str, ylabel: str) -> None:
    left, top, right, bottom = MARGIN
    x0, y0, x1, y1 = left, top, ax.w - right, ax.h - bottom
    draw.rectangle([x0, y0, x1, y1], outline=(90, 90, 90))
    for y in _nice_ticks(ax.ylo, ax.yhi):
        _, py = ax.px(ax.xticks()[0] if ax.xticks() else 1.0, y)
        draw.line([x0, py, x1, py], fill=(225, 225, 225))
        draw.text((x0 - 6, py), f"{y:g}", fill=(40, 40, 40), font=font, anchor="rm")
    for x in ax.xticks():
        px, _ = ax.px(x, ax.ylo)
        draw.line([px, y0, px, y1], fill=(235, 235, 235))
        draw.text((px, y1 + 6), f"{x:g}", fill=(40, 40, 40), font=font, anchor="mt")
    draw.text(((x0 + x1) / 2, ax.h - 8), xlabel, fill=(0, 0, 0), font=font, anchor="mb")
    draw.text((8, top - 14), ylabel, fill=(0, 0, 0), font=font, anchor="lm")


def line_chart(series: dict[str, list[tuple]], *, title: str = "", xlabel: str = "",
               ylabel: str = "", log_x: bool = False, size=(720, 440)) -> np.ndarray:
    points = [p for pts in series.values() for p in pts]
    if not points:
        raise ValueError("line_chart: no points to draw")
    ys = [p[1] for p in points] + [p[1] + s * p[2] for p in points if len(p) > 2 for s in (-1, 1)]
    ax = _Axes([p[0] for p in points], ys, size, log_x)
    img = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(img)
    font = load_font(13)
    _draw_axes(draw, ax, font, xlabel, ylabel)
    if title:
        draw.text((size[0] / 2, 8), title, fill=(0, 0, 0), font=load_font(15), anchor="mt")
    colors = instance_colors(len(series))
    for k, (name, pts) in enumerate(series.items()):
        color = tuple(int(c) for c in colors[k])
        pts = sorted(pts)
        xy = [ax.px(p[0], p[1]) for p in pts]
        if len(xy) > 1:
            draw.line(xy, fill=color, width=2)
        for p, (px, py) in zip(pts, xy):
            if len(p) > 2 and p[2] > 0:
                _, lo = ax.px(p[0], p[1] - p[2])
                _, hi = ax.px(p[0], p[1] + p[2])
                draw.line([px, lo, px, hi], fill=color, width=1)
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=color)
        lx, ly = MARGIN[0] + 10, MARGIN[1] + 8 + 18 * k
        draw.line([lx, ly, lx + 18, ly], fill=color, width=3)
        draw.text((lx + 24, ly), name, fill=(0, 0, 0), font=font, anchor="lm")
    return np.asarray(img).copy()
