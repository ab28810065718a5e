"""benchmarks/osd.py: row names and depth sources, scene groups, the data folders (boxes only
for box-supervised rows), a clear stop without the OSD folder, and a tiny end-to-end table
on a hand-made OSD-like folder (two frames to learn from, two test frames in two scenes)."""
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import TINY_MODEL

REPO = Path(__file__).resolve().parents[1]


def _load():
    sys.path.insert(0, str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location("osd", REPO / "benchmarks" / "osd.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rows_name_their_depth_source_and_only_depth_rows_have_one():
    osd = _load()
    assert osd.split_row("boxinst+dg@pydnet") == ("boxinst+dg", "pydnet")
    assert osd.split_row("boxinst") == ("boxinst", None)
    # "@tau0.3" is part of a demo variant's name, not a depth source
    assert osd.split_row("boxinst+cons+dg@tau0.3@sensor") == ("boxinst+cons+dg@tau0.3", "sensor")
    assert osd.split_row("boxinst+cons+dg@tau0.3") == ("boxinst+cons+dg@tau0.3", None)
    osd.check_row("boxinst+dg@sensor")
    osd.check_row("box_as_mask")
    with pytest.raises(SystemExit, match="name its source"):
        osd.check_row("boxinst+dg")
    with pytest.raises(SystemExit, match="reads no depth"):
        osd.check_row("boxinst@pydnet")
    with pytest.raises(SystemExit, match="not a demo variant"):
        osd.check_row("nonsense@sensor")
    rows = osd.default_rows()
    assert rows[:4] == ["boxinst", "box_as_mask", "mask_supervised", "boxinst+distill_iou"]
    for v in ("boxinst+dg", "boxinst+cons+dg", "distill_match"):
        assert f"{v}@sensor" in rows and f"{v}@pydnet" in rows
    for v in osd.DESIGNED_VARIANTS:
        assert f"{v}@sensor" in rows and f"{v}@pydnet" in rows
    for v in osd.demo.COMBINED_VARIANTS:  # runnable by name, not in the default table
        assert f"{v}@pydnet" not in rows
        osd.check_row(f"{v}@pydnet")
    for row in rows:
        osd.check_row(row)


def test_scene_groups_follow_the_data_readme():
    osd = _load()
    assert [osd.scene_of(f"test{k}.png") for k in (0, 15, 16, 23, 24, 31, 43, 55, 64)] == [
        "boxes", "boxes", "stacked", "stacked", "occluded", "cylinders", "mixed", "cluttered", "cluttered"]
    assert osd.scene_of("learn3.png") is None and osd.scene_of("test99.png") is None


def _fake_osd(root: Path) -> Path:
    """An osd-rgbd-like folder: learn0/1 and test0 (boxes) / test20 (stacked), 96x64 frames
    with one bright square each, uint16 millimetre depth (square nearer), RLE-free polygons."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "depth_mm").mkdir()
    split = {"learn": ["learn0.png", "learn1.png"], "test": ["test0.png", "test20.png"]}
    for name, files in split.items():
        images, anns = [], []
        for k, f in enumerate(files):
            img = rng.integers(0, 80, (64, 96, 3), dtype=np.uint8)
            x, y = 20 + 10 * k, 16
            img[y:y + 30, x:x + 40] = 220
            Image.fromarray(img).save(root / "images" / f)
            depth = np.full((64, 96), 1500, np.uint16)
            depth[y:y + 30, x:x + 40] = 900
            depth[:4] = 0  # no reading
            Image.fromarray(depth).save(root / "depth_mm" / f)
            iid = len(images) + (0 if name == "learn" else 10)
            images.append({"id": iid, "file_name": f, "width": 96, "height": 64})
            poly = [x, y, x + 40, y, x + 40, y + 30, x, y + 30]
            anns.append({"id": 100 + iid, "image_id": iid, "category_id": 1, "iscrowd": 0,
                         "bbox": [x, y, 40, 30], "area": 1200, "segmentation": [poly]})
        (root / f"{name}.json").write_text(json.dumps({
            "images": images, "annotations": anns, "categories": [{"id": 1, "name": "object"}]}))
    return root


def test_data_folders_hold_boxes_only_and_link_the_shared_files(tmp_path):
    osd = _load()
    fake = _fake_osd(tmp_path / "osd")
    a = osd.argparse.Namespace(pydnet_depth=None, pydnet_model=tmp_path / "none.tflite")
    dirs = osd.prepare_data(fake, tmp_path / "out", ["sensor"], a)
    d = dirs["sensor"]
    train = json.loads((d / "train.json").read_text())
    assert len(train["annotations"]) == 2 and all("segmentation" not in x for x in train["annotations"])
    assert (d / "train_masks.json").resolve() == (fake / "learn.json").resolve()
    assert (d / "val.json").resolve() == (fake / "test.json").resolve()
    depth = np.asarray(Image.open(d / "depth" / "learn0.png"))
    assert depth.shape == (64, 96) and depth[20, 30] > depth[50, 5]  # inverse depth: nearer is larger
    osd.prepare_data(fake, tmp_path / "out", ["sensor"], a)  # again: links and files reused
    with pytest.raises(SystemExit, match="no PyDNet"):
        osd.prepare_data(fake, tmp_path / "out", ["pydnet"], a)


def test_without_the_osd_folder_it_stops_and_says_which(tmp_path):
    osd = _load()
    with pytest.raises(SystemExit, match="needs ../shared/data/osd-rgbd"):
        osd.main(["--out", str(tmp_path / "o"), "--osd", str(tmp_path / "absent"), "--rows", "boxinst"])


@pytest.mark.slow
def test_tiny_osd_table_trains_rows_per_source_and_breaks_down_by_scene(tmp_path, capsys):
    osd = _load()
    fake = _fake_osd(tmp_path / "osd")
    sets = TINY_MODEL + ["data.num_workers=0", "input.min_size_train=[64]", "input.max_size_train=128",
                         "input.min_size_test=64", "input.max_size_test=128", "solver.ims_per_batch=2",
                         "log.period=1", "log.tensorboard=false", "log.health_periods=0"]
    readme = tmp_path / "README.md"
    readme.write_text(f"a\n{osd.MARKERS[0]}\nold\n{osd.MARKERS[1]}\nb\n")
    args = ["--out", str(tmp_path / "runs"), "--osd", str(fake), "--budget", "2", "--seeds", "1",
            "--rows", "boxinst", "box_as_mask", "boxinst+dg@sensor", "--json", str(tmp_path / "o.json"),
            "--readme", str(readme), "--set", *sets]
    assert osd.main(args) == 0
    result = json.loads((tmp_path / "o.json").read_text())
    assert sorted(r["variant"] for r in result["rows"]) == ["box_as_mask", "boxinst", "boxinst+dg@sensor"]
    assert result["best_depth_row"] == "boxinst+dg@sensor" and result["missing"] == []
    assert set(result["scenes"]["boxinst"]) == {"boxes", "stacked"}
    run = tmp_path / "runs" / "b2" / "boxinst+dg@sensor_seed0"
    cfg = (run / "config.yaml").read_text()
    assert str(tmp_path / "runs" / "data_sensor" / "depth") in cfg and "model_final.pth" in str(
        list(run.iterdir()))
    text = readme.read_text()
    assert "\nold\n" not in text and "| `boxinst+dg@sensor` |" in text
    assert "| row | boxes | stacked |" in text  # the per-scene table, scenes present only
    assert set(result["mask_quality"]) == {"boxinst", "box_as_mask", "boxinst+dg@sensor"}
    assert "| row | mask IoU on matched objects |" in text
    assert "2 to run" in capsys.readouterr().out  # boxinst (box_as_mask is its model) and the dg row


def test_mask_quality_reads_each_runs_detections_and_compares_to_boxinst(tmp_path):
    """Box-matched mask IoU per row over seeds, from hand-made results.json files: a GT
    square; boxinst's masks cover half of it (IoU 0.5) or 3/4 (0.75), the other row's all."""
    from boxdepth.data.rle import mask_to_rle

    osd = _load()
    sq = np.zeros((40, 40), np.uint8)
    sq[10:30, 10:30] = 1
    gt = {"images": [{"id": 1, "height": 40, "width": 40, "file_name": "learn/OSD-0.png"}],
          "categories": [{"id": 1, "name": "object"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 400.0,
                           "bbox": [10.0, 10.0, 20.0, 20.0], "segmentation": mask_to_rle(sq)}]}
    (tmp_path / "test.json").write_text(json.dumps(gt))

    def write(row, seed, width):
        m = np.zeros_like(sq)
        m[10:30, 10:10 + width] = 1
        run = tmp_path / "b5" / f"{row}_seed{seed}"
        run.mkdir(parents=True)
        (run / "results.json").write_text(json.dumps([{"image_id": 1, "category_id": 1, "score": 0.9,
                                                       "bbox": [10.0, 10.0, 20.0, 20.0],
                                                       "segmentation": mask_to_rle(m)}]))
    write("boxinst", 0, 10)
    write("boxinst", 1, 15)
    write("boxinst+dg@pydnet", 0, 20)
    write("boxinst+dg@pydnet", 1, 20)
    q = osd.mask_quality(tmp_path, 5, ["boxinst", "boxinst+dg@pydnet", "mask_supervised"], 3,
                         tmp_path / "test.json", "boxinst")
    assert set(q) == {"boxinst", "boxinst+dg@pydnet"}  # no run of mask_supervised: no row
    assert q["boxinst"]["mask_iou_mean"] == pytest.approx(62.5) and q["boxinst"]["n"] == 2
    assert q["boxinst+dg@pydnet"]["mask_iou_mean"] == pytest.approx(100.0)
    assert q["boxinst+dg@pydnet"]["matched_mean"] == pytest.approx(100.0)
    assert q["boxinst+dg@pydnet"]["vs_reference"]["delta"] == pytest.approx(37.5)
    table = osd.quality_table(q, "boxinst")
    assert "| `boxinst` | 62.5 ± 17.7 | 100.0 % | reference | 2 |" in table
