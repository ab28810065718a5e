"""Dataset check: the report must see what training would see."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from boxdepth.data.coco import CocoFormatError
from boxdepth.data.depth_io import depth_path_for, save_depth_png, write_depth_meta
from boxdepth.data.inspect import format_inspect_report, inspect_dataset

VOC3 = Path(__file__).resolve().parents[2] / "shared" / "data" / "voc3-coco"


def _write(tmp: Path, images, anns, cats) -> Path:
    data = {"images": [{"id": i, "file_name": f, "height": h, "width": w}
                       for i, f, h, w in images],
            "annotations": [dict({"id": k, "iscrowd": 0}, **a) for k, a in enumerate(anns)],
            "categories": cats}
    path = tmp / "ds.json"
    path.write_text(json.dumps(data))
    return path


def _png(path: Path, h: int, w: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(path)


@pytest.fixture
def messy(tmp_path):
    """4 images: ok (with depth), ok (no depth file), missing image, depth of wrong size."""
    root, droot = tmp_path / "img", tmp_path / "depth"
    _png(root / "a.png", 10, 20)
    _png(root / "b.png", 14, 12)
    _png(root / "d.png", 10, 20)
    save_depth_png(depth_path_for(droot, "a.png"), np.zeros((10, 20)))
    save_depth_png(depth_path_for(droot, "gone.png"), np.zeros((10, 20)))
    save_depth_png(depth_path_for(droot, "d.png"), np.zeros((20, 10)))
    write_depth_meta(droot, source="unit-test")
    cats = [{"id": 3, "name": "cat"}, {"id": 8, "name": "dog"}]
    anns = [{"image_id": 0, "category_id": 3, "bbox": [1, 1, 5, 5]},
            {"image_id": 0, "category_id": 8, "bbox": [2, 2, 5, 5]},
            {"image_id": 1, "category_id": 8, "bbox": [0, 0, 3, 3]},
            {"image_id": 1, "category_id": 8, "bbox": [0, 0, 0.2, 3]},   # degenerate
            {"image_id": 1, "category_id": 3, "bbox": [0, 0, 9, 9], "iscrowd": 1}]
    js = _write(tmp_path, [(0, "a.png", 10, 20), (1, "b.png", 14, 12),
                           (2, "gone.png", 10, 20), (3, "d.png", 10, 20)], anns, cats)
    return js, root, droot


def test_messy_dataset_report(messy):
    js, root, droot = messy
    r = inspect_dataset(js, root, droot)
    assert r["num_images"] == 4 and r["num_images_ok"] == 1
    assert r["instances_per_class"] == {"cat": 1, "dog": 2} and r["num_instances"] == 3
    assert r["dropped"] == {"degenerate": 1, "outside": 0} and r["ignored"] == {"crowd": 1}
    assert [b["annotation_id"] for b in r["dropped_boxes"]] == [3]
    errors = "\n".join(r["errors"])
    assert len(r["errors"]) == 3
    assert "gone.png" in errors and "b.png" in errors and "d.png" in errors
    assert r["depth"]["with_depth"] == 1 and r["depth"]["total"] == 4
    assert [Path(p).name for p in r["depth"]["missing"]] == ["b.png"]
    assert len(r["depth"]["size_mismatch"]) == 1 and "d.png" in r["depth"]["size_mismatch"][0]
    assert r["depth"]["meta"]["source"] == "unit-test"
    assert r["image_size"] == {"min_w": 20, "max_w": 20, "min_h": 10, "max_h": 10}
    text = format_inspect_report(r)
    assert "FAILED: 3 errors" in text and "gone.png" in text and "1/4 images" in text


def test_skip_and_allow_missing_turn_errors_into_counts(messy):
    js, root, droot = messy
    r = inspect_dataset(js, root, droot, skip_bad_images=True, allow_missing_depth=True)
    assert [Path(s["file"]).name for s in r["skipped"]] == ["gone.png"]
    assert len(r["errors"]) == 1 and "d.png" in r["errors"][0]  # size mismatch stays fatal
    assert r["num_images_ok"] == 2 and r["depth"]["with_depth"] == 1
    assert r["image_size"] == {"min_w": 12, "max_w": 20, "min_h": 10, "max_h": 14}


def test_construction_errors_propagate(tmp_path):
    js = _write(tmp_path, [(0, "a.png", 4, 4)], [{"image_id": 0, "category_id": 99,
                                                   "bbox": [0, 0, 1, 1]}],
                [{"id": 1, "name": "x"}])
    with pytest.raises(CocoFormatError, match="category_id 99"):
        inspect_dataset(js, tmp_path)


@pytest.mark.skipif(not VOC3.exists(), reason="shared sample data not present")
def test_real_voc3_report(tmp_path):
    data = json.loads((VOC3 / "annotations.json").read_text())
    for ann in data["annotations"]:
        del ann["segmentation"]
    js = tmp_path / "voc3_boxes.json"
    js.write_text(json.dumps(data))
    r = inspect_dataset(js, VOC3)
    assert r["errors"] == [] and r["num_images"] == 3 and r["num_images_ok"] == 3
    assert r["num_instances"] == 12
    expected = {}
    for ann in data["annotations"]:
        name = next(c["name"] for c in data["categories"] if c["id"] == ann["category_id"])
        expected[name] = expected.get(name, 0) + 1
    assert {k: v for k, v in r["instances_per_class"].items() if v} == expected
    sizes = []
    for im in data["images"]:
        with Image.open(VOC3 / im["file_name"]) as pil:
            sizes.append(pil.size)
    ws, hs = [w for w, _ in sizes], [h for _, h in sizes]
    assert r["image_size"] == {"min_w": min(ws), "max_w": max(ws),
                               "min_h": min(hs), "max_h": max(hs)}
    assert r["depth_root"] is None and r["depth"]["with_depth"] == 0
    text = format_inspect_report(r)
    assert "3 images, 12 boxes kept" in text and text.rstrip().endswith("OK")


def test_cli_inspect_prints_its_summary_once_with_a_progress_bar_and_its_own_flag(messy, capsys, caplog):
    import logging

    from boxdepth.cli import main

    js, root, droot = messy
    with caplog.at_level(logging.INFO, logger="boxdepth"):
        rc = main(["inspect", "--json", str(js), "--images", str(root), "--depth", str(droot)])
    out, err = capsys.readouterr()
    assert rc == 1
    assert (out + err + caplog.text).count("boxes kept") == 1
    assert "--allow-missing-depth" in out and "data.allow_missing_depth" not in out
    assert "inspect: 100%" in err  # tqdm's bar on stderr
