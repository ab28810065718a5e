"""The foundation's acceptance lines, through the `boxdepth` command line."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from boxdepth.cli import main
from boxdepth.data.rle import segmentation_to_mask
from tests.conftest import SHARED_DATA


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def synth20(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "D"
    assert main(["synth", "--out", str(out), "--train", "20", "--val", "10", "--seed", "0",
                 "--quiet"]) == 0
    return out


def test_synth_writes_the_promised_files(synth20):
    for rel in ("images/train", "images/val", "depth_gt", "depth/meta.json", "train.json",
                "val.json", "preview.png"):
        assert (synth20 / rel).exists(), rel
    train = json.loads((synth20 / "train.json").read_text())
    assert len(train["images"]) == 20 and all("segmentation" not in a for a in train["annotations"])
    assert len(list((synth20 / "depth" / "train").glob("*.png"))) == 20


def test_synth_val_loads_in_pycocotools_with_tight_boxes(synth20):
    from pycocotools.coco import COCO
    coco = COCO(str(synth20 / "val.json"))
    assert len(coco.getImgIds()) == 10
    for ann in coco.dataset["annotations"]:
        im = coco.imgs[ann["image_id"]]
        mask = segmentation_to_mask(ann["segmentation"], im["height"], im["width"])
        ys, xs = np.nonzero(mask)
        tight = [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
        assert ann["bbox"] == [float(v) for v in tight]


def test_synth_is_byte_identical_for_a_seed(synth20, tmp_path):
    again = tmp_path / "D"
    assert main(["synth", "--out", str(again), "--train", "20", "--val", "10", "--seed", "0",
                 "--quiet"]) == 0
    assert _digest(again) == _digest(synth20)


def test_eval_of_gt_masks_as_detections_is_perfect(synth20, tmp_path, capsys):
    val = json.loads((synth20 / "val.json").read_text())
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
             "score": 1.0, "segmentation": a["segmentation"]} for a in val["annotations"]]
    (tmp_path / "R.json").write_text(json.dumps(dets))
    out = tmp_path / "metrics.json"
    assert main(["eval", "--gt", str(synth20 / "val.json"), "--results", str(tmp_path / "R.json"),
                 "--out", str(out)]) == 0
    metrics = json.loads(out.read_text())
    for kind in ("bbox", "segm"):
        assert set(metrics[kind]) >= {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert metrics["segm"]["AP"] == 1.0 and metrics["bbox"]["AP"] == 1.0
    assert "segm" in capsys.readouterr().out


def test_eval_bad_results_file_is_a_clear_error(synth20, tmp_path, capsys):
    bad = tmp_path / "R.json"
    bad.write_text("{not json")
    assert main(["eval", "--gt", str(synth20 / "val.json"), "--results", str(bad)]) == 2
    assert str(bad) in capsys.readouterr().err


def _tiny_coco(tmp_path: Path, file_name: str) -> Path:
    from PIL import Image
    (tmp_path / "imgs").mkdir(exist_ok=True)
    Image.new("RGB", (32, 24), (10, 20, 30)).save(tmp_path / "imgs" / "ok.png")
    coco = {"images": [{"id": 7, "file_name": file_name, "width": 32, "height": 24}],
            "annotations": [{"id": 1, "image_id": 7, "category_id": 1, "bbox": [2, 2, 10, 10],
                             "iscrowd": 0}],
            "categories": [{"id": 1, "name": "thing"}]}
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(coco))
    return path


def test_inspect_refuses_a_path_escaping_the_root(tmp_path, capsys):
    ann = _tiny_coco(tmp_path, "../x.jpg")
    assert main(["inspect", "--json", str(ann), "--images", str(tmp_path / "imgs")]) != 0
    assert "../x.jpg" in capsys.readouterr().err


def test_inspect_names_a_missing_image(tmp_path, capsys):
    ann = _tiny_coco(tmp_path, "missing.png")
    assert main(["inspect", "--json", str(ann), "--images", str(tmp_path / "imgs")]) != 0
    captured = capsys.readouterr()
    assert "missing.png" in captured.out + captured.err


def test_inspect_ok_dataset_exits_zero(tmp_path, capsys):
    ann = _tiny_coco(tmp_path, "ok.png")
    assert main(["inspect", "--json", str(ann), "--images", str(tmp_path / "imgs")]) == 0
    assert "OK" in capsys.readouterr().out


@pytest.mark.skipif(not (SHARED_DATA / "voc3-coco").exists(), reason="../shared/data absent")
def test_inspect_on_real_voc_photos(tmp_path, capsys):
    src = json.loads((SHARED_DATA / "voc3-coco" / "annotations.json").read_text())
    for a in src["annotations"]:
        a.pop("segmentation", None)
    ann = tmp_path / "boxes.json"
    ann.write_text(json.dumps(src))
    assert main(["inspect", "--json", str(ann), "--images", str(SHARED_DATA / "voc3-coco")]) == 0
    out = capsys.readouterr().out
    assert "3 in json, 3 loaded" in out and "12 in" in out


def test_unknown_config_key_is_a_clear_error(capsys, tmp_path):
    assert main(["train", "synth_boxinst", "solver.max_iters=3", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "solver.max_iters" in err and "solver.max_iter" in err


def test_overrides_may_follow_options(capsys, tmp_path):
    """`boxdepth train CFG --out D key=value` is how people type it; argparse alone refuses it."""
    from boxdepth.cli import parse_cli

    args = parse_cli(["train", "synth_boxinst", "seed=1", "--out", str(tmp_path), "--quiet",
                      "solver.max_iter=3", "loss.depth_consistency.kappa=0.1"])
    assert args.overrides == ["seed=1", "solver.max_iter=3", "loss.depth_consistency.kappa=0.1"]
    assert args.quiet and args.out == tmp_path
    assert main(["train", "synth_boxinst", "--out", str(tmp_path), "solver.max_iters=3"]) == 2
    assert "solver.max_iter" in capsys.readouterr().err  # the stray key reached the config check
    for argv in (["train", "synth_boxinst", "--out", str(tmp_path), "--bogus"],
                 ["synth", "--out", str(tmp_path), "seed=1"]):
        with pytest.raises(SystemExit):
            parse_cli(argv)
        assert "unrecognized arguments" in capsys.readouterr().err


def test_train_eval_predict_smoke(tmp_path, capsys):
    """CPU smoke test of the verbs: train a few iterations, evaluate the checkpoint with a
    config, predict on real RGB-D photos."""
    from boxdepth.data.synthetic import generate_synthetic_dataset
    from tests.conftest import TINY_MODEL

    data = tmp_path / "data"
    generate_synthetic_dataset(data, n_train=4, n_val=2, size=(96, 64), seed=5, preview=False,
                               progress=False)
    common = [f"data.train_json={data / 'train.json'}", f"data.val_json={data / 'val.json'}",
              f"data.image_root={data / 'images'}", "data.num_workers=0", *TINY_MODEL,
              "input.min_size_train=[64]", "input.max_size_train=128", "input.min_size_test=64",
              "input.max_size_test=128", "solver.ims_per_batch=2", "solver.max_iter=2",
              "solver.warmup_iters=1", "log.tensorboard=false"]
    run = tmp_path / "run"
    assert main(["train", "synth_boxinst", *common, "--out", str(run), "--quiet"]) == 0
    trained = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").unlink()
    assert main(["eval", "synth_boxinst", *common, "--weights", str(run / "model_final.pth")]) == 0
    again = json.loads((run / "metrics.json").read_text())
    for kind in ("bbox", "segm"):
        assert set(again[kind]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
        assert again[kind] == trained[kind]  # same weights, same numbers
    # --out names the metrics file; the run's own files are left alone
    before = {p.name: p.read_bytes() for p in run.glob("*.json")}
    other = tmp_path / "elsewhere" / "student.json"
    other.parent.mkdir()
    assert main(["eval", "synth_boxinst", *common, "eval.model=student", "--weights",
                 str(run / "model_final.pth"), "--out", str(other)]) == 0
    assert json.loads(other.read_text()) == trained
    assert isinstance(json.loads((other.parent / "student_results.json").read_text()), list)
    assert {p.name: p.read_bytes() for p in run.glob("*.json")} == before
    photos = SHARED_DATA / "tabletop-rgbd"
    inputs = [str(photos / "*-color.png")] if photos.exists() else [str(data / "images" / "val")]
    out = tmp_path / "pred"
    assert main(["predict", *inputs, "--weights", str(run / "model_final.pth"), "--out", str(out),
                 "--score-thresh", "0.0", "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert isinstance(results, list)
    overlays = sorted((out / "overlays").glob("*.png"))
    assert len(overlays) == (9 if photos.exists() else 2)
    assert any((out / "masks").rglob("*.png")) == bool(results)


def test_every_verb_of_the_parser_has_a_command():
    import argparse

    from boxdepth.cli import COMMANDS, build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert sorted(sub.choices) == sorted(COMMANDS)
