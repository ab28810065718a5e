"""COCO box dataset and image decoding: hand-built json + images in tmp_path."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from boxdepth.config import load_config
from boxdepth.data.build import build_dataset
from boxdepth.data.coco import (CocoBoxDataset, CocoFormatError, DepthSizeMismatchError,
                                ImageSizeMismatchError)
from boxdepth.data.depth_io import depth_path_for, save_depth_png
from boxdepth.data.image_io import BadImageError, load_image_rgb
from boxdepth.data.transforms import TestTransform, TrainTransform, collate_batch

VOC3 = Path(__file__).resolve().parents[2] / "shared" / "data" / "voc3-coco"


def write_coco(tmp: Path, images, annotations, categories=None, name="train.json") -> Path:
    """images: (id, file_name, h, w); annotations: dicts merged over defaults."""
    cats = categories if categories is not None else [{"id": 1, "name": "thing"}]
    anns = [dict({"id": k + 1, "image_id": 0, "category_id": cats[0]["id"],
                  "bbox": [1, 1, 4, 4], "iscrowd": 0}, **a) for k, a in enumerate(annotations)]
    data = {"images": [{"id": i, "file_name": f, "height": h, "width": w}
                       for i, f, h, w in images],
            "annotations": anns, "categories": cats}
    path = tmp / name
    path.write_text(json.dumps(data))
    return path


def save_rgb(path: Path, h: int, w: int, value=(10, 20, 30)) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((h, w, 3), np.uint8)
    arr[...] = value
    Image.fromarray(arr).save(path)
    return arr


# ---- image decoding -------------------------------------------------------------------

def test_grayscale_rgba_palette_cmyk_become_rgb(tmp_path):
    Image.fromarray(np.full((3, 5), 77, np.uint8), "L").save(tmp_path / "g.png")
    rgba = np.zeros((3, 5, 4), np.uint8)
    rgba[...] = (200, 100, 50, 0)  # fully transparent: alpha is dropped, colour kept
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    pal = Image.new("P", (5, 3))
    pal.putpalette([0, 0, 0, 250, 128, 3] + [0] * 762)
    pal.putpixel((2, 1), 1)
    pal.save(tmp_path / "p.png")
    cmyk = Image.new("CMYK", (5, 3), (255, 0, 0, 0))  # pure cyan ink
    cmyk.save(tmp_path / "c.jpg", quality=100)

    g = load_image_rgb(tmp_path / "g.png")
    assert g.shape == (3, 5, 3) and g.dtype == np.uint8 and (g == 77).all()
    a = load_image_rgb(tmp_path / "a.png")
    assert (a.reshape(-1, 3) == [200, 100, 50]).all()
    p = load_image_rgb(tmp_path / "p.png")
    assert p[1, 2].tolist() == [250, 128, 3] and p[0, 0].tolist() == [0, 0, 0]
    c = load_image_rgb(tmp_path / "c.jpg")
    assert c.shape == (3, 5, 3)
    assert np.abs(c.astype(int) - [0, 255, 255]).max() <= 3


def test_16bit_grey_scaled_by_shift(tmp_path):
    raw = np.array([[0, 255, 256], [0x1234, 0x8000, 65535]], np.uint16)
    Image.fromarray(raw).save(tmp_path / "d16.png")
    assert Image.open(tmp_path / "d16.png").mode.startswith("I")
    out = load_image_rgb(tmp_path / "d16.png")
    expected = np.array([[0, 0, 1], [0x12, 0x80, 255]], np.uint8)
    assert out.shape == (2, 3, 3)
    for ch in range(3):
        np.testing.assert_array_equal(out[..., ch], expected)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_exif_orientation_applied(tmp_path, suffix):
    # Stored 8 (H) x 16 (W), left half bright; orientation 6 = display rotated 90° CW,
    # so the displayed image is 16 x 8 with the bright half on top.
    arr = np.zeros((8, 16, 3), np.uint8)
    arr[:, :8] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(arr).save(tmp_path / f"r{suffix}", exif=exif)
    out = load_image_rgb(tmp_path / f"r{suffix}")
    assert out.shape == (16, 8, 3)
    assert out[:7].min() > 200 and out[9:].max() < 50


def test_missing_and_corrupt_images_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        load_image_rgb(tmp_path / "nope.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"this is not a jpeg")
    with pytest.raises(BadImageError, match="bad.jpg"):
        load_image_rgb(tmp_path / "bad.jpg")
    save_rgb(tmp_path / "trunc.png", 64, 64)
    data = (tmp_path / "trunc.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(BadImageError, match="trunc.png"):
        load_image_rgb(tmp_path / "trunc.png")


# ---- json parsing ---------------------------------------------------------------------

def test_box_mode_never_reads_garbage_segmentation(tmp_path):
    save_rgb(tmp_path / "img" / "a.png", 20, 30)
    anns = [{"bbox": [2, 3, 10, 5], "segmentation": "garbage"},
            {"bbox": [0, 0, 4, 4], "segmentation": {"x": [{"y": None}, 3], "counts": {}}},
            {"bbox": [5, 5, 5, 5]}]  # segmentation absent altogether
    js = write_coco(tmp_path, [(0, "a.png", 20, 30)], anns)
    ds = CocoBoxDataset(js, tmp_path / "img")
    s = ds[0]
    assert s["boxes"].tolist() == [[2, 3, 12, 8], [0, 0, 4, 4], [5, 5, 10, 10]]
    assert s["labels"].dtype == torch.int64 and s["boxes"].dtype == torch.float32
    assert s["image"].dtype == torch.uint8 and s["image"].shape == (3, 20, 30)
    assert s["image"][:, 0, 0].tolist() == [10, 20, 30]
    assert s["depth"] is None and s["has_depth"] is False and "masks" not in s
    assert s["image_id"] == 0 and s["orig_size"] == (20, 30) and s["size"] == (20, 30)
    # the same file in mask mode: the absent segmentation fails at construction, the
    # garbage one when decoded
    with pytest.raises(CocoFormatError, match="annotation 3: mode 'mask' needs"):
        CocoBoxDataset(js, tmp_path / "img", mode="mask")
    js1 = write_coco(tmp_path, [(0, "a.png", 20, 30)], anns[:1], name="g.json")
    with pytest.raises(CocoFormatError, match=r"g\.json: annotation 1: cannot decode"):
        CocoBoxDataset(js1, tmp_path / "img", mode="mask")[0]


def test_mask_mode_decodes_polygons(tmp_path):
    save_rgb(tmp_path / "a.png", 20, 30)
    poly = [[2, 3, 12, 3, 12, 8, 2, 8]]
    js = write_coco(tmp_path, [(0, "a.png", 20, 30)],
                    [{"bbox": [2, 3, 10, 5], "segmentation": poly}])
    s = CocoBoxDataset(js, tmp_path, mode="mask")[0]
    assert s["masks"].shape == (1, 20, 30) and s["masks"].dtype == torch.uint8
    ys, xs = np.nonzero(s["masks"][0].numpy())
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (2, 11, 3, 7)
    js2 = write_coco(tmp_path, [(0, "a.png", 20, 30)], [{"bbox": [2, 3, 10, 5]}], name="b.json")
    with pytest.raises(CocoFormatError, match="b.json.*annotation 1.*segmentation"):
        CocoBoxDataset(js2, tmp_path, mode="mask")


@pytest.mark.parametrize("file_name", ["../x.jpg", "a/../../x.jpg", "/etc/x.jpg",
                                       "C:\\data\\x.jpg"])
def test_file_name_escaping_root_is_refused(tmp_path, file_name):
    js = write_coco(tmp_path, [(7, "ok.png", 4, 4), (42, file_name, 4, 4)], [])
    with pytest.raises(CocoFormatError) as e:
        CocoBoxDataset(js, tmp_path)
    assert "image id 42" in str(e.value) and file_name in str(e.value).replace("\\\\", "\\")


def test_inner_dotdot_that_stays_inside_is_fine(tmp_path):
    save_rgb(tmp_path / "b.png", 4, 4)
    js = write_coco(tmp_path, [(0, "a/../b.png", 4, 4)], [])
    ds = CocoBoxDataset(js, tmp_path)
    assert ds[0]["file_name"] == "b.png"


@pytest.mark.parametrize("bbox, problem", [([1, 2, 3], "malformed bbox"),
                                           ("1,2,3,4", "malformed bbox"),
                                           ([1, 2, float("nan"), 4], "malformed bbox"),
                                           ([1, 2, -3, 4], "negative")])
def test_malformed_bbox_names_json_and_annotation(tmp_path, bbox, problem):
    js = write_coco(tmp_path, [(0, "a.png", 9, 9)], [{}, {"id": 77, "bbox": bbox}])
    with pytest.raises(CocoFormatError) as e:
        CocoBoxDataset(js, tmp_path)
    msg = str(e.value)
    assert str(js) in msg and "annotation 77" in msg and problem in msg


def test_unknown_category_names_json_and_annotation(tmp_path):
    js = write_coco(tmp_path, [(0, "a.png", 9, 9)], [{"id": 5, "category_id": 3}])
    with pytest.raises(CocoFormatError, match=r"train\.json.*annotation 5.*category_id 3"):
        CocoBoxDataset(js, tmp_path)


def test_non_contiguous_category_ids_map_and_back(tmp_path):
    save_rgb(tmp_path / "a.png", 10, 10)
    cats = [{"id": 9, "name": "nine"}, {"id": 0, "name": "zero"}, {"id": 5, "name": "five"}]
    anns = [{"category_id": 9}, {"category_id": 0}, {"category_id": 5}, {"category_id": 9}]
    ds = CocoBoxDataset(write_coco(tmp_path, [(0, "a.png", 10, 10)], anns, cats), tmp_path)
    assert ds.cat_ids == [0, 5, 9] and ds.class_names == ["zero", "five", "nine"]
    assert ds.cat_id_to_contiguous == {0: 0, 5: 1, 9: 2}
    labels = ds[0]["labels"].tolist()
    assert labels == [2, 0, 1, 2]
    assert [ds.cat_ids[k] for k in labels] == [9, 0, 5, 9]


def test_degenerate_outside_crowd_reported_in_one_line(tmp_path, caplog):
    save_rgb(tmp_path / "a.png", 20, 30)
    anns = [{"bbox": [2, 2, 5, 5]},              # kept
            {"bbox": [25, 15, 10, 10]},          # kept, clipped to [25,15,30,20]
            {"bbox": [3, 3, 0.5, 6]},            # degenerate (w < 1)
            {"bbox": [28, 2, 1.5, 0]},           # degenerate (h = 0)
            {"bbox": [-10, 0, 10.5, 5]},         # clipped to 0.5 wide -> degenerate
            {"bbox": [40, 2, 5, 5]},             # outside (x >= W)
            {"bbox": [2, 2, 8, 8], "iscrowd": 1}]
    js = write_coco(tmp_path, [(3, "a.png", 20, 30), (4, "b.png", 20, 30)],
                    [dict(a, image_id=3) for a in anns])
    with caplog.at_level(logging.INFO, logger="boxdepth"):
        ds = CocoBoxDataset(js, tmp_path)
    line = ("train.json: 2 images, 2 boxes kept; dropped 3 degenerate, 1 outside image; "
            "ignored 1 crowd; 1 images without boxes")
    assert ds.summary_line == line
    assert [r.getMessage() for r in caplog.records if r.name == "boxdepth"] == [line]
    assert ds.summary["dropped_degenerate"] == 3 and ds.summary["dropped_outside"] == 1
    assert sorted(d["annotation_id"] for d in ds.dropped) == [3, 4, 5, 6]
    s = ds[0]
    assert s["boxes"].tolist() == [[2, 2, 7, 7], [25, 15, 30, 20]]
    assert s["ignore_boxes"].tolist() == [[2, 2, 10, 10]]


# ---- image, depth and skipping --------------------------------------------------------

def test_missing_image_names_file_and_size_mismatch(tmp_path):
    save_rgb(tmp_path / "small.png", 10, 12)
    js = write_coco(tmp_path, [(0, "sub/missing.png", 10, 12), (1, "small.png", 11, 12)], [])
    ds = CocoBoxDataset(js, tmp_path)
    with pytest.raises(FileNotFoundError, match=r"sub/missing\.png"):
        ds[0]
    with pytest.raises(ImageSizeMismatchError, match=r"small\.png.*image id 1"):
        ds[1]


def test_skip_bad_images_counts_and_returns_next_good(tmp_path):
    save_rgb(tmp_path / "good0.png", 8, 8, (1, 1, 1))
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG garbage")
    save_rgb(tmp_path / "good3.png", 8, 8, (3, 3, 3))
    imgs = [(0, "good0.png", 8, 8), (1, "missing.png", 8, 8), (2, "corrupt.png", 8, 8),
            (3, "good3.png", 8, 8)]
    js = write_coco(tmp_path, imgs, [])
    with pytest.raises(FileNotFoundError):
        CocoBoxDataset(js, tmp_path)[1]
    ds = CocoBoxDataset(js, tmp_path, skip_bad_images=True)
    ids = [ds[i]["image_id"] for i in range(len(ds))]
    assert ids == [0, 3, 3, 3] and ds.num_skipped == 2
    assert set(ds.skipped_images) == {1, 2}
    loader = torch.utils.data.DataLoader(
        CocoBoxDataset(js, tmp_path, skip_bad_images=True), batch_size=2,
        collate_fn=collate_batch)
    batches = list(loader)
    skipped = sum((b["skipped"] for b in batches), [])
    assert sorted(Path(p).name for p in skipped) == ["corrupt.png", "missing.png"]
    assert sum(b["images"].shape[0] for b in batches) == 4


def test_all_images_bad_is_an_error(tmp_path):
    js = write_coco(tmp_path, [(0, "x.png", 8, 8)], [])
    with pytest.raises(RuntimeError, match="all 1 images"):
        CocoBoxDataset(js, tmp_path, skip_bad_images=True)[0]


def test_depth_loaded_missing_and_mismatched(tmp_path):
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        save_rgb(tmp_path / "img" / name, 6, 8)
    droot = tmp_path / "depth"
    d = np.linspace(0, 1, 48, dtype=np.float32).reshape(6, 8)
    save_depth_png(depth_path_for(droot, "a.jpg"), d)
    save_depth_png(depth_path_for(droot, "c.jpg"), np.zeros((6, 9), np.float32))
    js = write_coco(tmp_path, [(0, "a.jpg", 6, 8), (1, "b.jpg", 6, 8), (2, "c.jpg", 6, 8)], [])
    ds = CocoBoxDataset(js, tmp_path / "img", depth_root=droot)
    s = ds[0]
    assert s["has_depth"] is True and s["depth"].shape == (1, 6, 8)
    assert s["depth"].dtype == torch.float32
    np.testing.assert_allclose(s["depth"][0].numpy(), d, atol=1e-4)
    with pytest.raises(FileNotFoundError, match=r"b\.jpg.*image id 1.*b\.png"):
        ds[1]
    with pytest.raises(DepthSizeMismatchError, match=r"depth.*c\.png.*img.*c\.jpg"):
        ds[2]
    ds2 = CocoBoxDataset(js, tmp_path / "img", depth_root=droot, allow_missing_depth=True)
    s1 = ds2[1]
    assert s1["has_depth"] is False and s1["depth"].shape == (1, 6, 8)
    assert float(s1["depth"].abs().sum()) == 0.0
    with pytest.raises(DepthSizeMismatchError):
        ds2[2]


def test_exif_rotated_image_in_dataset(tmp_path):
    arr = np.zeros((8, 16, 3), np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(arr).save(tmp_path / "r.png", exif=exif)
    js = write_coco(tmp_path, [(0, "r.png", 16, 8)], [{"bbox": [1, 10, 4, 4]}])
    s = CocoBoxDataset(js, tmp_path)[0]
    assert s["image"].shape == (3, 16, 8) and s["orig_size"] == (16, 8)


def test_transforms_applied_in_dataset(tmp_path):
    save_rgb(tmp_path / "a.png", 20, 40)
    save_depth_png(depth_path_for(tmp_path / "d", "a.png"), np.full((20, 40), 0.5))
    js = write_coco(tmp_path, [(0, "a.png", 20, 40)], [{"bbox": [4, 2, 10, 6]}])
    gen = torch.Generator().manual_seed(0)
    ds = CocoBoxDataset(js, tmp_path, depth_root=tmp_path / "d",
                        transforms=TrainTransform([40], 1000, 1.0, generator=gen))
    s = ds[0]
    assert s["size"] == (40, 80) and s["orig_size"] == (20, 40) and s["flipped"] is True
    assert s["depth"].shape == (1, 40, 80)
    assert s["boxes"].tolist() == [[80 - 28, 4, 80 - 8, 16]]


# ---- config and real data -------------------------------------------------------------

def test_build_dataset_from_config(tmp_path):
    save_rgb(tmp_path / "tr" / "a.png", 10, 20)
    save_rgb(tmp_path / "va" / "a.png", 10, 20)
    tr = write_coco(tmp_path, [(0, "a.png", 10, 20)], [{"segmentation": "junk"}])
    va = write_coco(tmp_path, [(0, "a.png", 10, 20)], [{"segmentation": "junk"}], name="v.json")
    cfg = load_config(overrides=[f"data.train_json={tr}", f"data.val_json={va}",
                                 f"data.image_root={tmp_path / 'tr'}",
                                 "input.min_size_train=[30]", "input.min_size_test=40"])
    gen = torch.Generator()
    train = build_dataset(cfg, "train", is_train=True, generator=gen)
    assert train.mode == "box" and isinstance(train.transforms, TrainTransform)
    assert train[0]["size"] == (30, 60)
    flips = []
    for seed in (0, 0, 1, 1, 2, 2, 3, 3):  # the generator alone decides the flip
        gen.manual_seed(seed)
        flips.append(train[0]["flipped"])
    assert flips[0::2] == flips[1::2] and len(set(flips)) == 2
    val = build_dataset(cfg, "val", is_train=False)
    assert val.image_root == tmp_path / "tr" and isinstance(val.transforms, TestTransform)
    assert val[0]["size"] == (40, 80) and val[0]["flipped"] is False
    cfg.data.val_image_root = str(tmp_path / "va")
    assert build_dataset(cfg, "val", is_train=False).image_root == tmp_path / "va"
    cfg.loss.mode = "mask"
    with pytest.raises(CocoFormatError):  # mask mode really reads the junk segmentation
        build_dataset(cfg, "train")[0]
    cfg.data.train_json = None
    with pytest.raises(ValueError, match="data.train_json"):
        build_dataset(cfg, "train")


def _voc3_box_only(tmp_path: Path) -> Path:
    data = json.loads((VOC3 / "annotations.json").read_text())
    for ann in data["annotations"]:
        ann.pop("segmentation", None)
        ann.pop("area", None)
    path = tmp_path / "voc3_boxes.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.skipif(not VOC3.exists(), reason="shared sample data not present")
def test_real_voc3_box_only(tmp_path):
    ds = CocoBoxDataset(_voc3_box_only(tmp_path), VOC3, mode="box")
    assert len(ds) == 3 and ds.summary["boxes_kept"] == 12
    assert ds.num_classes == 21 and ds.class_names[0] == "_background_"
    samples = [ds[i] for i in range(3)]
    assert sum(len(s["labels"]) for s in samples) == 12
    first = samples[0]
    assert first["image_id"] == 0 and first["file_name"] == "JPEGImages/2011_000003.jpg"
    with Image.open(VOC3 / first["file_name"]) as im:
        assert first["orig_size"] == (im.height, im.width)
    # annotation 0: bbox [191, 107, 123, 221], category 15 (person) -> label 15
    assert first["boxes"][0].tolist() == [191.0, 107.0, 314.0, 328.0]
    assert first["labels"][0].item() == 15 and ds.class_names[15] == "person"
