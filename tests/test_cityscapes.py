"""`boxdepth convert cityscapes`: a hand-made gtFine tree with hand-computed boxes and masks."""
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from boxdepth.cli import main
from boxdepth.data.cityscapes import convert_cityscapes


def _rect(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


# Drawn in this order (40x30 image). PIL fills a polygon with its boundary, so the car
# rectangle (2..12, 2..12) owns 11 x 11 pixels before anything covers it.
VAL_OBJECTS = [
    {"label": "road", "polygon": _rect(0, 20, 39, 29)},       # not converted
    {"label": "truck", "polygon": _rect(3, 3, 5, 5)},         # later covered by the car
    {"label": "car", "polygon": _rect(2, 2, 12, 12)},
    {"label": "person", "polygon": _rect(8, 8, 16, 18)},      # occludes the car's corner
    {"label": "cargroup", "polygon": _rect(20, 2, 30, 8)},    # crowd
    {"label": "pole", "polygon": _rect(14, 10, 16, 18)},      # not converted, occludes the person
    {"label": "bicycle", "polygon": _rect(30, 20, 35, 25), "deleted": 1},
]
TRAIN_OBJECTS = [
    {"label": "rider", "polygon": _rect(1, 1, 4, 9)},
    {"label": "motorcycle", "polygon": _rect(0, 6, 6, 12)},   # covers the rider's rows 6..9
    {"label": "persongroup", "polygon": _rect(10, 0, 19, 4)},
    {"label": "sky", "polygon": _rect(0, 0, 3, 2)},           # covers rider pixels x 1..3, y 1..2
]


def _write(root: Path, split: str, city: str, stem: str, objects, h=30, w=40) -> None:
    path = root / split / city / f"{stem}_gtFine_polygons.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"imgHeight": h, "imgWidth": w, "objects": objects}))


@pytest.fixture()
def gtfine(tmp_path) -> Path:
    root = tmp_path / "gtFine"
    _write(root, "val", "lindau", "lindau_000000_000019", VAL_OBJECTS)
    _write(root, "train", "aachen", "aachen_000000_000019", TRAIN_OBJECTS, h=20, w=24)
    return root


def _mask(ann, h, w):
    return mask_utils.decode(ann["segmentation"]).astype(bool).reshape(h, w)


def _box_mask(x0, y0, x1, y1, h=30, w=40):
    m = np.zeros((h, w), bool)
    m[y0:y1 + 1, x0:x1 + 1] = True
    return m


def test_val_boxes_masks_crowd_and_occlusion(gtfine, tmp_path):
    report = convert_cityscapes(gtfine, tmp_path / "out")
    val = json.loads((tmp_path / "out" / "val.json").read_text())
    assert val["images"] == [{"id": 0, "file_name": "val/lindau/lindau_000000_000019_leftImg8bit.png",
                              "height": 30, "width": 40}]
    assert {c["name"]: c["id"] for c in val["categories"]} == {
        "person": 24, "rider": 25, "car": 26, "truck": 27, "bus": 28, "train": 31,
        "motorcycle": 32, "bicycle": 33}
    anns = val["annotations"]
    # truck fully covered, road/pole not converted, bicycle deleted: car, person, cargroup
    assert [(a["category_id"], a["iscrowd"]) for a in anns] == [(26, 0), (24, 0), (26, 1)]
    car, person, group = anns
    car_mask = _box_mask(2, 2, 12, 12) & ~_box_mask(8, 8, 16, 18)
    person_mask = _box_mask(8, 8, 16, 18) & ~_box_mask(14, 10, 16, 18)
    assert car["area"] == 121 - 25 == car_mask.sum()
    assert person["area"] == 99 - 27 == person_mask.sum()
    assert group["area"] == 11 * 7
    assert (_mask(car, 30, 40) == car_mask).all() and (_mask(person, 30, 40) == person_mask).all()
    assert car["bbox"] == [2, 2, 11, 11] and person["bbox"] == [8, 8, 9, 11]
    assert group["bbox"] == [20, 2, 11, 7]
    assert not (_mask(car, 30, 40) & _mask(person, 30, 40)).any()
    assert len({a["id"] for a in anns}) == 3
    assert report["val"]["fully_occluded"] == 1 and report["val"]["crowd"] == 1
    assert report["val"]["not_converted"] == 2


def test_train_has_boxes_only(gtfine, tmp_path):
    convert_cityscapes(gtfine, tmp_path / "out")
    train = json.loads((tmp_path / "out" / "train.json").read_text())
    assert train["images"][0]["file_name"] == "train/aachen/aachen_000000_000019_leftImg8bit.png"
    anns = train["annotations"]
    assert all("segmentation" not in a for a in anns)
    rider, moto, group = anns
    # rider x 1..4, y 1..9 minus the motorcycle (y >= 6) and the sky (x <= 3, y <= 2)
    assert rider["bbox"] == [1, 1, 4, 5] and rider["area"] == 4 * 5 - 3 * 2
    assert moto["bbox"] == [0, 6, 7, 7] and moto["area"] == 49
    assert group["iscrowd"] == 1 and group["category_id"] == 24 and group["bbox"] == [10, 0, 10, 5]


def test_cli_convert_and_images_check(gtfine, tmp_path, capsys):
    images = tmp_path / "leftImg8bit"
    assert main(["convert", "cityscapes", str(gtfine), "--out", str(tmp_path / "o"),
                 "--images", str(images)]) == 2
    assert "leftImg8bit" in capsys.readouterr().err
    (images / "val" / "lindau").mkdir(parents=True)
    (images / "val" / "lindau" / "lindau_000000_000019_leftImg8bit.png").write_bytes(b"x")
    assert main(["convert", "cityscapes", str(gtfine), "--out", str(tmp_path / "o"),
                 "--images", str(images)]) == 2
    err = capsys.readouterr().err
    assert "aachen_000000_000019_leftImg8bit.png" in err and not (tmp_path / "o").exists()
    assert main(["convert", "cityscapes", str(gtfine), "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "val: 1 images, 3 annotations" in out and "car 1" in out


@pytest.mark.parametrize("content,problem", [
    ("{not json", "not valid json"),
    (json.dumps({"imgHeight": 4, "objects": []}), "imgWidth"),
    (json.dumps({"imgHeight": 4, "imgWidth": 4, "objects": [{"label": "car"}]}), "object 0"),
])
def test_bad_polygon_file_is_named(gtfine, tmp_path, content, problem):
    bad = gtfine / "val" / "lindau" / "lindau_000000_000020_gtFine_polygons.json"
    bad.write_text(content)
    with pytest.raises(ValueError, match=problem) as e:
        convert_cityscapes(gtfine, tmp_path / "out")
    assert str(bad) in str(e.value)
    assert not (tmp_path / "out" / "train.json").exists()  # nothing written on failure


def test_missing_folders_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        convert_cityscapes(tmp_path / "nowhere", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="neither train/ nor val/"):
        convert_cityscapes(tmp_path / "empty", tmp_path / "out")
    (tmp_path / "empty" / "val").mkdir()
    with pytest.raises(FileNotFoundError, match="gtFine_polygons.json"):
        convert_cityscapes(tmp_path / "empty", tmp_path / "out")


def test_cityscapes_config_has_the_paper_schedule():
    from boxdepth.config import load_config
    from boxdepth.models.build import build_model

    cfg = load_config("cityscapes_r50", ["model.backbone.name=resnet18"])
    s = cfg.solver
    assert (s.ims_per_batch, s.max_iter, list(s.steps)) == (8, 24000, [18000])
    assert cfg.distill.enabled and cfg.distill.start_iter == 19000
    assert cfg.model.fcos.num_classes == 8 and cfg.model.depth_head
    assert build_model(cfg).num_classes == 8
