"""`boxdepth train ... --overfit N`: learn N training images by heart, or say it could not."""
from __future__ import annotations

import json

import pytest

from boxdepth.cli import main
from boxdepth.engine.overfit import overfit_subset, run_overfit
from tests.conftest import tiny_config


def test_subset_takes_the_first_images_with_a_box(tmp_path):
    data = {"images": [{"id": i, "file_name": f"{i}.png", "width": 8, "height": 8} for i in (5, 1, 3, 2)],
            "annotations": [
                {"id": 1, "image_id": 3, "category_id": 7, "bbox": [0, 0, 4, 4], "segmentation": [[0, 0, 4, 0, 4, 4]]},
                {"id": 2, "image_id": 1, "category_id": 7, "bbox": [0, 0, 4, 4], "iscrowd": 1},
                {"id": 3, "image_id": 5, "category_id": 9, "bbox": [1, 1, 4, 4]},
                {"id": 4, "image_id": 2, "category_id": 9, "bbox": [1, 1, 4, 4]}],
            "categories": [{"id": 7, "name": "a"}, {"id": 9, "name": "b"}]}
    path = tmp_path / "train.json"
    path.write_text(json.dumps(data))
    subset = overfit_subset(path, 2)
    assert [im["id"] for im in subset["images"]] == [2, 3]       # image 1 has only a crowd box
    assert [a["id"] for a in subset["annotations"]] == [1, 4]
    assert all("segmentation" not in a for a in subset["annotations"])
    assert subset["categories"] == data["categories"]
    with pytest.raises(ValueError, match="no image with a non-crowd box"):
        overfit_subset(path, 0)


def test_overfit_passes_on_a_healthy_setup(tiny_synth, tmp_path):
    # measured with this tiny model: box AP 27.9 after 30 iterations, 46 after 60
    cfg = tiny_config(tiny_synth, "solver.base_lr=0.02", "log.period=5")
    report = run_overfit(cfg, tmp_path / "of", num_images=3, target_ap=15, max_iter=60,
                         eval_period=30, progress=False)
    assert report["passed"] and report["images"] == 3
    assert report["curve"][-1]["box_ap"] >= 15
    assert json.loads((tmp_path / "of" / "overfit.json").read_text()) == report
    with pytest.raises(FileExistsError, match="already holds a training run"):
        run_overfit(cfg, tmp_path / "of", num_images=3, progress=False)


def test_overfit_fails_loudly_when_regression_is_dead(tiny_synth, tmp_path, capsys):
    out = tmp_path / "dead"
    args = ["train", "synth_boxinst", "--out", str(out), "--overfit", "3", "--overfit-iters", "40",
            "--quiet"] + [o for o in _tiny_overrides(tiny_synth)] + [
            "model.fcos.box_init_distance=-5", "log.period=5"]
    assert main(args) == 1
    text = capsys.readouterr().out
    assert "FAILED" in text and "dead_regression" not in text and "zero-width or zero-height" in text
    report = json.loads((out / "overfit.json").read_text())
    assert not report["passed"] and [p["box_ap"] for p in report["curve"]] == [0.0]
    assert [w["check"] for w in report["health_warnings"]] == ["dead_regression"]


def _tiny_overrides(data_dir) -> list[str]:
    cfg = tiny_config(data_dir)
    keys = ["data.train_json", "data.val_json", "data.image_root", "data.num_workers",
            "input.min_size_train", "input.max_size_train", "input.min_size_test",
            "input.max_size_test", "solver.ims_per_batch", "log.tensorboard",
            "model.backbone.name", "model.backbone.norm", "model.backbone.freeze_at",
            "model.backbone.width", "model.fpn.out_channels", "model.fcos.num_convs",
            "model.mask_branch.channels", "model.mask_branch.num_convs", "model.mask_branch.norm",
            "model.mask_head.topk_proposals_per_im"]
    out = []
    for key in keys:
        node = cfg
        for part in key.split("."):
            node = node[part]
        out.append(f"{key}={json.dumps(node) if isinstance(node, list) else node}")
    return out
