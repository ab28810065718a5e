"""benchmarks/mask_shape.py and benchmarks/pair_precision.py (the L_cons investigation's
measurements) against hand-computed cases."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

REPO = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rle(mask):
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


def test_mask_shape_hand_case():
    ms = _load("mask_shape")
    gt_mask = np.zeros((40, 40), bool)
    gt_mask[10:20, 10:15] = True                       # left half of the 10x10 box
    pred = np.zeros((40, 40), bool)
    pred[10:20, 10:25] = True                          # the whole box + 5 columns outside it
    gt = {"images": [{"id": 1, "height": 40, "width": 40}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 10, 10, 10],
                           "segmentation": _rle(gt_mask)}]}
    dets = [{"image_id": 1, "category_id": 3, "bbox": [10, 10, 10, 10], "score": 0.9,
             "segmentation": _rle(pred)},
            {"image_id": 1, "category_id": 3, "bbox": [30, 30, 5, 5], "score": 0.99,  # box IoU 0
             "segmentation": _rle(np.ones((40, 40), bool))},
            {"image_id": 1, "category_id": 4, "bbox": [10, 10, 10, 10], "score": 0.99,  # other class
             "segmentation": _rle(np.ones((40, 40), bool))}]
    r = ms.mask_shape(gt, dets)
    assert r["instances"] == 1 and r["of"] == 1
    assert r["fill"] == pytest.approx(1.0) and r["gt_fill"] == pytest.approx(0.5)
    assert r["outside"] == pytest.approx(0.5) and r["fg_bg"] == pytest.approx(1.0)
    assert r["miss"] == pytest.approx(0.0) and r["iou"] == pytest.approx(50 / 150)


def test_pair_precision_counts_every_in_box_pair(tiny_synth, tmp_path):
    pp = _load("pair_precision")
    out = tmp_path / "pp.json"
    r = pp.main([str(tiny_synth), "--images", "2", "--json", str(out)])
    assert json.loads(out.read_text())["pairs"] == r["pairs"]
    # independent count: 8 dilated neighbours of every stride-4 cell inside a box, minus those
    # falling off the stride-4 grid
    val = json.loads((tiny_synth / "val.json").read_text())
    expected = 0
    for im in val["images"][:2]:
        gh, gw = (im["height"] - 2 + 3) // 4, (im["width"] - 2 + 3) // 4
        for a in (a for a in val["annotations"] if a["image_id"] == im["id"]):
            x, y, w, h = a["bbox"]
            box = np.zeros((im["height"], im["width"]), bool)
            box[int(y):int(np.ceil(y + h)), int(x):int(np.ceil(x + w))] = True
            for i, j in zip(*np.nonzero(box[2::4, 2::4])):
                expected += sum(0 <= i + di < gh and 0 <= j + dj < gw
                                for di in (-2, 0, 2) for dj in (-2, 0, 2) if (di, dj) != (0, 0))
    assert r["pairs"] == expected
    for name, row in r["active"].items():
        assert 0.0 <= row["active"] <= 1.0 and 0.0 <= row["crossing_among_active"] <= 1.0, name
    assert {"colour S_c>=0.3", "pseudo depth kappa 0.5", "exact depth kappa 0.5"} <= set(r["active"])
