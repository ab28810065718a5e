"""Captions are readable at any size (issue 24 item 11): contact-sheet captions wrap to the
tile instead of being cut, and overlay labels scale with small images."""
from __future__ import annotations

import numpy as np

import boxdepth.viz.draw as draw_module
from boxdepth.viz.contact_sheet import contact_sheet, wrap_text
from boxdepth.viz.draw import _text_size, load_font, overlay_font_size, overlay_instances


def test_wrap_text_keeps_every_character_within_the_width():
    font = load_font(11)
    text = "file: images/train/a_very_long_file_name_000123.png IoU 0.41 S_dcons 0.55"
    lines = wrap_text(font, text, 64)
    assert len(lines) > 2
    assert "".join(lines).replace(" ", "") == text.replace(" ", "")
    assert all(_text_size(font, line)[0] <= 64 for line in lines)


def test_contact_sheet_grows_to_hold_long_captions():
    tile = np.zeros((64, 64, 3), np.uint8)
    short = contact_sheet([tile] * 2, [["a"], ["b"]], columns=2, lines=2)
    long = contact_sheet([tile] * 2, [["a"], ["a caption far wider than one tile of 64 px"]],
                         columns=2, lines=2)
    assert long.shape[1] == short.shape[1] and long.shape[0] > short.shape[0]


def test_overlay_labels_scale_with_small_images(monkeypatch):
    assert overlay_font_size(96, 128) < 10 and overlay_font_size(64, 64) == 7
    assert overlay_font_size(192, 256) == 10 and overlay_font_size(800, 1000) == 22
    sizes = []
    monkeypatch.setattr(draw_module, "load_font", lambda size: sizes.append(size) or load_font(size))
    overlay_instances(np.zeros((96, 128, 3), np.uint8), None, np.array([[10.0, 30, 60, 80]]), ["box"])
    assert sizes == [overlay_font_size(96, 128)]
