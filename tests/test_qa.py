"""`boxdepth qa`: planted defects are flagged and ranked first; report files and contact
sheet are written, atomically."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from boxdepth.cli import main
from boxdepth.data.rle import mask_to_rle, rle_area
from boxdepth.label.qa import FLAGS, qa_rows
from boxdepth.label.qa_report import run_qa
from boxdepth.viz.contact_sheet import contact_sheet, crop_tile

H, W = 120, 160


def _ann(aid, image_id, box, fill=0.7, score=0.95, source="model", cat=1):
    """An annotation whose mask fills the left `fill` share of its box."""
    x, y, w, h = box
    m = np.zeros((H, W), np.uint8)
    m[y:y + h, x:x + int(round(w * fill))] = 1
    rle = mask_to_rle(m)
    return {"id": aid, "image_id": image_id, "category_id": cat, "bbox": [x, y, w, h], "iscrowd": 0,
            "segmentation": rle, "area": rle_area(rle), "mask_score": score, "mask_source": source}


def _data() -> dict:
    anns = [_ann(1, 0, (20, 20, 40, 40), 0.70), _ann(2, 0, (80, 30, 40, 50), 0.72),
            _ann(3, 1, (10, 15, 50, 40), 0.68), _ann(4, 1, (90, 40, 40, 40), 0.71),
            _ann(5, 1, (91, 41, 40, 39), 0.70),                      # planted duplicate of 4
            _ann(6, 2, (30, 30, 50, 50), 0.0),                        # planted empty mask
            _ann(7, 2, (100, 20, 40, 40), 0.69, score=0.2),           # low score
            _ann(8, 2, (0, 60, 40, 40), 0.70),                        # touches the edge
            _ann(9, 0, (130, 90, 10, 10), 0.70),                      # tiny
            _ann(10, 1, (20, 70, 60, 40), 0.70, score=0.0, source="box"),
            {"id": 11, "image_id": 0, "category_id": 1, "bbox": [0, 0, 160, 120], "iscrowd": 1}]
    return {"images": [{"id": i, "file_name": f"im{i}.png", "height": H, "width": W} for i in range(3)],
            "categories": [{"id": 1, "name": "thing"}], "annotations": anns}


def _by_id(rows):
    return {r["annotation_id"]: r for r in rows}


def test_planted_duplicate_and_empty_mask_are_flagged_and_ranked_first():
    rows, stats = qa_rows(_data())
    r = _by_id(rows)
    assert 11 not in r and len(rows) == 10  # crowd left out
    assert r[4]["duplicate"] and r[5]["duplicate"] and "annotation 4" in r[5]["duplicate"]
    assert r[6]["empty_mask"] and r[6]["fill"] == 0.0 and r[6]["fill_outlier"]
    assert r[7]["low_score"].startswith("mask_score 0.20") and not r[7]["fill_outlier"]
    assert r[8]["edge"] and not r[1]["edge"]
    assert r[9]["tiny"] and not r[1]["tiny"]
    assert r[10]["low_score"] == "no model mask: the box filled"
    clean = [1, 2, 3]
    assert all(not r[k]["reasons"] for k in clean)
    assert rows[0]["annotation_id"] == 6  # the empty mask is the worst
    top5 = {x["annotation_id"] for x in rows[:5]}
    assert {6, 4, 5, 7, 10} == top5
    assert [x["rank"] for x in rows] == list(range(1, 11))
    assert stats[1]["n"] == 10 and stats[1]["median"] == pytest.approx(0.70, abs=0.02)


def test_fill_outlier_uses_the_class_median_and_mad():
    data = _data()
    data["annotations"].append(_ann(12, 0, (60, 60, 40, 40), 0.2))  # fills far less than usual
    r = _by_id(qa_rows(data)[0])
    assert r[12]["fill_outlier"] and r[12]["fill_z"] < -3.5
    assert not r[1]["fill_outlier"]


def _write_images(root: Path, names) -> None:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(0)
    for name in names:
        Image.fromarray(rng.randint(0, 255, (H, W, 3)).astype(np.uint8)).save(root / name)


def test_run_qa_writes_report_and_contact_sheet(tmp_path):
    path = tmp_path / "labelled.json"
    path.write_text(json.dumps(_data()))
    _write_images(tmp_path / "images", ["im0.png", "im1.png"])  # im2.png missing: a note tile
    out = tmp_path / "qa"
    s = run_qa(path, tmp_path / "images", out, top=8)
    assert s["annotations"] == 10 and s["top"] == 8 and s["counts"]["duplicate"] == 2
    with open(out / "qa.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["rank"]) for r in rows] == list(range(1, 11)) and rows[0]["annotation_id"] == "6"
    assert set(FLAGS) <= set(rows[0]) and rows[0]["empty_mask"] == "empty mask"
    report = json.loads((out / "qa.json").read_text())
    assert report["rows"][0]["annotation_id"] == 6 and report["counts"]["empty_mask"] == 1
    sheet = np.asarray(Image.open(out / "qa_contact.png"))
    assert sheet.ndim == 3 and sheet.shape[1] > 6 * 128


def test_contact_sheet_write_failure_leaves_the_old_sheet(tmp_path, monkeypatch):
    path = tmp_path / "labelled.json"
    path.write_text(json.dumps(_data()))
    _write_images(tmp_path / "images", ["im0.png", "im1.png", "im2.png"])
    out = tmp_path / "qa"
    out.mkdir()
    (out / "qa_contact.png").write_bytes(b"old sheet")

    def broken_save(self, fp, *a, **k):
        Path(fp).write_bytes(b"half a png")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError):
        run_qa(path, tmp_path / "images", out, top=4)
    assert (out / "qa_contact.png").read_bytes() == b"old sheet"
    assert sorted(p.name for p in out.iterdir()) == ["qa.csv", "qa.json", "qa_contact.png"]


def test_crop_tile_draws_box_and_mask_and_handles_the_border():
    image = np.zeros((H, W, 3), np.uint8)
    mask = np.zeros((H, W), bool)
    mask[0:20, 0:10] = True
    tile = crop_tile(image, mask, (0, 0, 20, 20), tile=64)
    assert tile.shape == (64, 64, 3)
    assert (tile == 96).all(axis=2).any()  # the part of the window outside the image is grey
    assert (tile[..., 0] > 100).any()      # the mask is blended in red
    sheet = contact_sheet([tile] * 3, [["a", "b"], ["c"], []], columns=2, lines=2)
    assert sheet.shape[1] == 4 + 2 * (64 + 4)


def test_cli_qa(tmp_path, capsys):
    path = tmp_path / "labelled.json"
    path.write_text(json.dumps(_data()))
    _write_images(tmp_path / "images", ["im0.png", "im1.png", "im2.png"])
    assert main(["qa", "--json", str(path), "--images", str(tmp_path / "images"), "--out",
                 str(tmp_path / "qa"), "--top", "3"]) == 0
    text = capsys.readouterr().out
    assert "qa: 10 annotation(s)" in text and "qa_contact.png" in text
    assert main(["qa", "--json", str(tmp_path / "nope.json"), "--images", str(tmp_path),
                 "--out", str(tmp_path / "qa2")]) == 2
    assert "nope.json" in capsys.readouterr().err
