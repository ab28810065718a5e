"""Pictures: overlay pixels, colour maps, panel layout, PNG writing."""
import colorsys

import numpy as np
import pytest
from PIL import Image

from boxdepth.viz.draw import (COLORMAPS, colorize_affinity, colorize_depth, instance_colors,
                          make_panel, overlay_instances, save_png, title_strip_height)


def _image(h=60, w=80, seed=0):
    return np.random.RandomState(seed).randint(0, 256, (h, w, 3)).astype(np.uint8)


def _blend(img, color, alpha):
    return np.rint(img.astype(np.float64) * (1 - alpha) + alpha * np.asarray(color, np.float64))


def test_overlay_masks_only_changes_mask_pixels():
    img = _image()
    masks = np.zeros((2, 60, 80), bool)
    masks[0, 10:30, 10:40] = True
    masks[1, 20:50, 30:70] = True
    colors = np.array([[255, 0, 0], [0, 0, 255]], np.uint8)
    out = overlay_instances(img, masks, None, colors=colors, alpha=0.4)
    assert out.dtype == np.uint8 and out.shape == img.shape
    outside = ~masks.any(0)
    assert np.array_equal(out[outside], img[outside])
    assert np.array_equal(img, _image())  # the input is not modified
    # interior of instance 1 only; the overlap shows instance 0 on top of instance 1
    assert np.abs(out[40, 60].astype(int) - _blend(img[40, 60], colors[1], 0.4)).max() <= 1
    under = _blend(img[25, 35], colors[1], 0.4)
    assert np.abs(out[25, 35].astype(int) - _blend(under, colors[0], 0.4)).max() <= 1
    # the rim of a mask is drawn in the solid colour
    assert np.array_equal(out[10, 20], colors[0]) and np.array_equal(out[49, 50], colors[1])
    plain = overlay_instances(img, masks, None, colors=colors, alpha=0.4, mask_outline=False)
    assert np.abs(plain[10, 20].astype(int) - _blend(img[10, 20], colors[0], 0.4)).max() <= 1


def test_overlay_boxes_draw_only_outlines():
    img = _image()
    boxes = np.array([[10.0, 12.0, 50.0, 40.0]])
    out = overlay_instances(img, np.zeros((1, 60, 80), bool), boxes, line_width=2)
    changed = np.any(out != img, axis=2)
    ys, xs = np.nonzero(changed)
    assert changed.any()
    assert xs.min() == 10 and xs.max() == 49 and ys.min() == 12 and ys.max() == 39
    assert not changed[14:38, 12:48].any()  # inside the 2 px outline nothing changes
    color = instance_colors(1)[0]
    assert np.array_equal(out[12, 30], color) and np.array_equal(out[25, 49], color)


def test_overlay_captions_stay_near_their_box():
    img = _image(120, 160)
    boxes = np.array([[60.0, 50.0, 120.0, 100.0]])
    out = overlay_instances(img, None, boxes, ["cup"], [0.87])
    changed = np.any(out != img, axis=2)
    ys, xs = np.nonzero(changed)
    assert ys.min() < 50  # caption sits above the box
    assert xs.min() >= 60 and ys.max() <= 99 and xs.max() <= 159
    no_text = overlay_instances(img, None, boxes)
    assert changed.sum() > np.any(no_text != img, axis=2).sum()
    assert np.array_equal(overlay_instances(img, np.zeros((0, 120, 160), bool), np.zeros((0, 4))), img)


def test_overlay_rejects_bad_shapes():
    with pytest.raises(ValueError, match="match the image"):
        overlay_instances(_image(), np.zeros((1, 10, 10), bool), None)
    with pytest.raises(ValueError, match="uint8"):
        overlay_instances(_image().astype(np.float32), None, None)


def test_instance_colors_distinct():
    c = instance_colors(20).astype(int)
    d = np.abs(c[:, None] - c[None]).sum(-1)
    assert c.shape == (20, 3) and d[~np.eye(20, dtype=bool)].min() > 0
    assert np.abs(c[1:] - c[:-1]).sum(-1).min() > 100  # neighbours differ strongly


def test_turbo_matches_published_table_and_gets_warmer():
    lut = COLORMAPS["turbo"].astype(int)
    published = {0: (0.18995, 0.07176, 0.23217), 100: (0.24797, 0.96423, 0.54303),
                 150: (0.85868, 0.88655, 0.21230), 200: (0.95801, 0.39958, 0.08831),
                 230: (0.76476, 0.14374, 0.01041), 255: (0.47960, 0.01583, 0.01055)}
    for i, rgb in published.items():
        assert np.abs(lut[i] - np.round(np.array(rgb) * 255)).max() <= 3, i
    d = colorize_depth(np.linspace(0, 1, 256)[None, :])[0] / 255.0
    hue = np.array([colorsys.rgb_to_hsv(*c)[0] for c in d])
    assert np.all(np.diff(hue) <= 1e-3)  # violet -> blue -> green -> yellow -> red
    assert hue[0] > 0.7 and hue[-1] < 0.05
    assert d[-1, 0] > d[-1, 2] and d[0, 2] > d[0, 0]  # near is red, far is blue/violet


def test_colorize_depth_invalid_and_clipping():
    d = np.array([[0.0, 1.0, np.nan, np.inf], [-0.5, 1.5, 0.5, 0.5]])
    valid = np.ones_like(d, bool)
    valid[1, 3] = False
    c = colorize_depth(d, valid=valid)
    assert c.shape == (2, 4, 3) and c.dtype == np.uint8
    assert np.array_equal(c[0, 2], [0, 0, 0]) and np.array_equal(c[0, 3], [0, 0, 0])
    assert np.array_equal(c[1, 3], [0, 0, 0]) and not np.array_equal(c[1, 2], [0, 0, 0])
    assert np.array_equal(c[1, 0], c[0, 0]) and np.array_equal(c[1, 1], c[0, 1])
    assert np.array_equal(c[1, 2], COLORMAPS["turbo"][128])
    with pytest.raises(ValueError, match="colour map"):
        colorize_depth(d, cmap="jet")


def test_colorize_affinity_grey_ramp():
    a = colorize_affinity(np.array([[0.0, 0.25, 0.5, 1.0, np.nan]]))[0]
    assert np.array_equal(a[:, 0], a[:, 1]) and np.array_equal(a[:, 1], a[:, 2])
    assert a[:4, 0].tolist() == [0, 64, 128, 255] and a[4, 0] == 0
    ramp = colorize_affinity(np.linspace(0, 1, 300)[None])[0, :, 0].astype(int)
    assert np.all(np.diff(ramp) >= 0)


def test_panel_layout_arithmetic():
    t0 = _image(20, 30, 1)
    t1 = _image(10, 10, 2)              # -> 20 x 20
    t2 = _image(40, 20, 3)[:, :, 0]     # grey -> 20 x 10
    t3 = np.zeros((20, 50), bool)       # mask tile
    t3[:, :25] = True
    tiles = [[t0, t1, t2], [t3]]
    p = make_panel(tiles, pad=4)
    assert p.shape == (4 + (20 + 4) * 2, 4 + 30 + 4 + 20 + 4 + 10 + 4, 3)
    assert np.array_equal(p[4:24, 4:34], t0)  # first tile pasted unscaled at (pad, pad)
    assert np.array_equal(p[28:48, 4:29], np.full((20, 25, 3), 255, np.uint8))
    assert np.array_equal(p[28:48, 29:54], np.zeros((20, 25, 3), np.uint8))
    assert (p[0:4] == 255).all() and (p[28:48, 54:] == 255).all()  # background
    s = title_strip_height()
    assert s > 0
    cols = make_panel(tiles, ["image", "depth", "mask"], pad=4)
    assert cols.shape[0] == p.shape[0] + s and cols.shape[1] == p.shape[1]
    assert np.array_equal(cols[4 + s:24 + s, 4:34], t0)
    per_tile = make_panel(tiles, ["a", "b", "c", "d"], pad=4)
    assert per_tile.shape[0] == p.shape[0] + 2 * s
    tall = make_panel(tiles, pad=2, height=40)
    assert tall.shape == (2 + (40 + 2) * 2, 2 + 60 + 2 + 40 + 2 + 20 + 2, 3)
    with pytest.raises(ValueError, match="titles"):
        make_panel(tiles, ["x", "y"])
    with pytest.raises(ValueError, match="uint8"):
        make_panel([[np.zeros((4, 4), np.float32)]])


def test_save_png_roundtrip(tmp_path):
    rgb = _image(7, 9)
    save_png(tmp_path / "a" / "rgb.png", rgb)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a" / "rgb.png")), rgb)
    m = np.zeros((5, 6), bool)
    m[1:3, 2:5] = True
    save_png(tmp_path / "m.png", m)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "m.png")), m.astype(np.uint8) * 255)
    d = np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000
    save_png(tmp_path / "d.png", d)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "d.png")).astype(np.uint16), d)
    with pytest.raises(ValueError, match="bad.png"):
        save_png(tmp_path / "bad.png", np.zeros((3, 3), np.float32))
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["d.png", "m.png", "rgb.png"]
