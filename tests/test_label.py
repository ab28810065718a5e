"""`boxdepth label`: the matching / clipping rules on hand-built predictions, then the whole
json round trip with a tiny model (fields kept, failures named, atomic output)."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from boxdepth.cli import main
from boxdepth.config import load_config, save_config
from boxdepth.distill.matcher import DepthAwareHungarianMatcher
from boxdepth.engine.inference import boxes_to_full_masks
from boxdepth.label import run as label_run
from boxdepth.label.assign import assign_predictions, label_masks, label_match_scores
from boxdepth.label.model_masks import label_batch, stride_depth_similarity
from boxdepth.label.run import label_options, run_label
from boxdepth.models.build import build_model

# the canvas is the image (size 64 = its short side, 64 x 96 is a multiple of 32): the
# fake model's boxes and stride-4 masks are in image pixels / cells
H, W = 64, 96
GT = np.array([[8, 8, 40, 40],      # A: P0's box, P0's mask spills right of it
               [50, 10, 90, 50],    # B: P1's box, shifted a little
               [10, 44, 30, 60]],   # C: no prediction anywhere near
              np.float32)
OPTS = {"size": 64, "max_size": 128, "mask_stride": 4}


class FakeModel(torch.nn.Module):
    """Returns fixed detections on the 64 x 96 canvas (stride-4 mask probabilities)."""

    def __init__(self, boxes, scores, probs):
        super().__init__()
        self.boxes, self.scores, self.probs = boxes, scores, probs
        self.calls = 0
        self.eval()

    def forward(self, images, image_mask):
        self.calls += 1
        assert tuple(images.shape[-2:]) == (H, W)
        n = len(self.scores)
        return [{"boxes": self.boxes.clone(), "scores": self.scores.clone(),
                 "labels": torch.zeros(n, dtype=torch.long), "mask_probs": self.probs.clone(),
                 "depth_probs": None} for _ in range(images.shape[0])]


def _fake_model() -> FakeModel:
    probs = torch.zeros(2, 1, H // 4, W // 4)
    probs[0, 0, 2:10, 2:16] = 0.9    # x 8..64: past A's right edge (40)
    probs[1, 0, 4:11, 14:21] = 0.8   # x 56..84, y 16..44: inside B
    return FakeModel(torch.tensor([[8., 8., 40., 40.], [52., 12., 88., 48.]]),
                     torch.tensor([0.9, 0.6]), probs)


def test_scores_without_depth_are_trainings_s_match():
    """An image without depth: the distiller matches by box IoU alone (its iou_matcher), so
    label does too, whatever the prediction's own score (issue 24 item 9)."""
    from boxdepth.distill.distiller import SelfDistiller

    gt, pred = torch.from_numpy(GT).float(), torch.tensor([[8., 8., 40., 40.], [52., 12., 88., 48.]])
    s = label_match_scores(gt, pred, torch.tensor([0.9, 0.6]), alpha=0.8)
    ref, _ = SelfDistiller().iou_matcher.match_scores(gt, pred, torch.tensor([0.9, 0.6]))
    assert torch.equal(s["s_match"], ref) and torch.equal(s["s_match"], s["iou"])
    assert s["s_match"][0, 0] == pytest.approx(1.0)


def test_scores_with_depth_are_trainings_s_match():
    torch.manual_seed(0)
    gt, pred = torch.from_numpy(GT), torch.tensor([[8., 8., 40., 40.], [52., 12., 88., 48.]])
    masks, sim = torch.rand(2, 16, 24), torch.rand(8, 16, 24)
    ours = label_match_scores(gt, pred, torch.tensor([0.9, 0.6]), masks, sim, alpha=0.8, beta=0.2)
    ref, _ = DepthAwareHungarianMatcher(alpha=0.8, beta=0.2).match_scores(gt, pred, torch.ones(2), masks, sim)
    assert torch.allclose(ours["s_match"], ref)


def test_assignment_refuses_pairs_below_min_iou():
    iou = torch.tensor([[0.9, 0.0], [0.1, 0.05]])
    a = assign_predictions(iou.clone(), iou, min_iou=0.3)
    assert a["pred_of_gt"].tolist() == [0, -1] and a["score"].tolist() == pytest.approx([0.9, 0.0])


def test_label_masks_clip_to_box_and_fall_back_to_the_box():
    boxes = torch.from_numpy(GT)
    matched = torch.ones(3, H, W, dtype=torch.bool)
    matched[1] = False  # B's match is empty inside its box
    out = label_masks(boxes, matched, torch.tensor([0, 1, -1]), torch.tensor([0.9, 0.7, 0.0]))
    fill = boxes_to_full_masks(boxes, (H, W))
    assert torch.equal(out["masks"], fill)  # A clipped to its box; B and C box fills
    assert out["source"] == ["model", "box", "box"]
    assert out["score"].tolist() == pytest.approx([0.9, 0.0, 0.0])


def test_label_batch_hand_built_predictions():
    model = _fake_model()
    image = np.full((H, W, 3), 90, np.uint8)
    res = label_batch(model, [{"image": image, "d01": None, "boxes": GT}], **OPTS)[0]
    assert res["source"] == ["model", "model", "box"] and not res["depth_match"]
    assert float(res["score"][0]) == pytest.approx(1.0)  # no depth: S_match is the box IoU
    masks = res["masks"].numpy()
    fill = boxes_to_full_masks(torch.from_numpy(GT), (H, W)).numpy()
    assert not (masks & ~fill).any()  # never outside the box
    assert masks[0, 10:38, 10:38].all() and not masks[0, :, 40:].any()  # clipped at A's right edge
    assert masks[2].sum() == 20 * 16  # C: the box filled
    assert masks[1].sum() < fill[1].sum()  # B: the model's mask, not the box


def test_label_batch_depth_changes_the_score_not_the_rule():
    model = _fake_model()
    image = np.full((H, W, 3), 90, np.uint8)
    d01 = np.tile(np.linspace(0, 1, W, dtype=np.float32), (H, 1))
    res = label_batch(model, [{"image": image, "d01": d01, "boxes": GT}], **OPTS)[0]
    assert res["depth_match"] and res["source"] == ["model", "model", "box"]
    assert 0.0 <= float(res["score"][0]) <= 1.0
    sim = stride_depth_similarity(torch.from_numpy(d01)[None, None], torch.ones(1, H, W, dtype=torch.bool),
                                  stride=4, kernel_size=3, dilation=2, kappa=0.5)
    assert sim.shape == (1, 8, 16, 24)


# --- the json round trip --------------------------------------------------------------

def _dataset(tmp_path: Path) -> tuple[Path, Path, dict]:
    root = tmp_path / "images"
    root.mkdir()
    rng = np.random.RandomState(0)
    for name in ("a.png", "b.png", "d.png"):
        Image.fromarray(rng.randint(0, 255, (H, W, 3)).astype(np.uint8)).save(root / name)
    (root / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")  # corrupt
    data = {"info": {"note": "kept"}, "licenses": [{"id": 3}],
            "categories": [{"id": 7, "name": "thing", "extra": 1}, {"id": 9, "name": "other"}],
            "images": [{"id": 10, "file_name": "a.png", "height": H, "width": W, "flickr": "x"},
                       {"id": 11, "file_name": "b.png", "height": H, "width": W},
                       {"id": 12, "file_name": "c.png", "height": H, "width": W},
                       {"id": 13, "file_name": "missing.png", "height": H, "width": W},
                       {"id": 14, "file_name": "d.png", "height": H, "width": W}],
            "annotations": [
                {"id": 100, "image_id": 10, "category_id": 7, "bbox": [8, 8, 32, 32], "iscrowd": 0,
                 "custom": {"keep": True}},
                {"id": 105, "image_id": 10, "category_id": 9, "bbox": [50, 10, 40, 40]},
                {"id": 101, "image_id": 10, "category_id": 7, "bbox": [0, 0, 90, 60], "iscrowd": 1,
                 "segmentation": {"size": [H, W], "counts": [0, H * W]}, "area": 5400},
                {"id": 102, "image_id": 11, "category_id": 9, "bbox": [10, 44, 20, 16],
                 "segmentation": [[10, 44, 30, 44, 30, 60]], "area": 160},
                {"id": 103, "image_id": 12, "category_id": 7, "bbox": [8, 8, 32, 32],
                 "segmentation": [[8, 8, 40, 8, 40, 40]], "area": 512},
                {"id": 104, "image_id": 13, "category_id": 7, "bbox": [8, 8, 32, 32]},
                {"id": 106, "image_id": 11, "category_id": 7, "bbox": [5, 5, 0.2, 30]},
                {"id": 107, "image_id": 14, "category_id": 9, "bbox": [60, 20, 20, 20]}]}
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps(data))
    return path, root, data


def _decode(seg) -> np.ndarray:
    return mask_utils.decode({"size": seg["size"], "counts": seg["counts"].encode()}).astype(bool)


def test_run_label_keeps_everything_and_names_bad_images(tmp_path, caplog):
    json_path, root, data = _dataset(tmp_path)
    out_path = tmp_path / "labelled.json"
    summary = run_label(_fake_model(), json_path=json_path, images_root=root, out_path=out_path,
                        batch_size=2, progress=False, **OPTS)
    out = json.loads(out_path.read_text())
    assert {k: v for k, v in out.items() if k != "annotations"} == \
        {k: v for k, v in data.items() if k != "annotations"}
    assert [a["id"] for a in out["annotations"]] == [a["id"] for a in data["annotations"]]
    by_id = {a["id"]: a for a in out["annotations"]}
    src = {a["id"]: a for a in data["annotations"]}
    assert by_id[101] == src[101]  # crowd untouched
    for k in (103, 104):  # corrupt / missing image: as they were, flagged
        assert {kk: v for kk, v in by_id[k].items() if kk != "mask_source"} == src[k]
        assert by_id[k]["mask_source"] == "missing_image"
    assert by_id[106]["mask_source"] == "invalid_box" and "segmentation" not in by_id[106]
    assert by_id[100]["custom"] == {"keep": True} and by_id[100]["mask_source"] == "model"
    assert by_id[100]["mask_score"] == pytest.approx(1.0)  # no depth: the box IoU
    assert by_id[102]["mask_source"] == "box" and by_id[102]["mask_score"] == 0.0
    for k in (100, 105, 102, 107):
        a = by_id[k]
        m = _decode(a["segmentation"])
        x, y, w, h = a["bbox"]
        fill = boxes_to_full_masks(torch.tensor([[x, y, x + w, y + h]]), (H, W))[0].numpy()
        assert a["area"] == int(m.sum()) > 0 and not (m & ~fill).any()
        assert 0.0 <= a["mask_score"] <= 1.0
    assert by_id[102]["area"] == 20 * 16  # the box filled, area recomputed
    text = caplog.text
    assert "c.png" in text and "missing.png" in text
    assert summary["missing_image"] == 2 and len(summary["missing_images"]) == 2
    assert summary["model"] + summary["box"] == 4 and summary["crowd"] == 1 and summary["invalid_box"] == 1


def _fail_on_the_second_batch(tmp_path, monkeypatch):
    json_path, root, _ = _dataset(tmp_path)
    out_path = tmp_path / "labelled.json"
    out_path.write_text("previous good output")
    real, calls = label_run.label_batch, []

    def failing(model, items, **kw):
        calls.append(len(items))
        if len(calls) == 2:
            raise RuntimeError("out of memory, say")
        return real(model, items, **kw)

    monkeypatch.setattr(label_run, "label_batch", failing)
    with pytest.raises(RuntimeError):
        run_label(_fake_model(), json_path=json_path, images_root=root, out_path=out_path,
                  batch_size=1, progress=False, **OPTS)
    assert out_path.read_text() == "previous good output"
    journal = tmp_path / "labelled.json.partial.jsonl"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["boxes.json", "images", "labelled.json",
                                                          journal.name]
    return json_path, root, out_path


def test_failure_mid_way_leaves_the_existing_output(tmp_path, monkeypatch):
    _fail_on_the_second_batch(tmp_path, monkeypatch)


def test_resume_takes_up_the_labelled_images(tmp_path, monkeypatch):
    json_path, root, out_path = _fail_on_the_second_batch(tmp_path, monkeypatch)
    monkeypatch.undo()
    with open(tmp_path / "labelled.json.partial.jsonl", "a") as f:
        f.write('{"image_id": 11, "labels": [{"ind')  # a line cut short by the crash
    model = _fake_model()
    s = run_label(model, json_path=json_path, images_root=root, out_path=out_path, batch_size=1,
                  progress=False, resume=True, **OPTS)
    assert s["resumed_images"] == 1 and model.calls == 2  # image 10 from the journal; 11 and 14 run
    assert not (tmp_path / "labelled.json.partial.jsonl").exists()
    fresh = tmp_path / "fresh.json"
    run_label(_fake_model(), json_path=json_path, images_root=root, out_path=fresh, batch_size=1,
              progress=False, **OPTS)
    assert json.loads(out_path.read_text()) == json.loads(fresh.read_text())
    assert s["model"] + s["box"] == 4


def test_bad_json_is_named(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"categories": [{"id": 1}], "images": [],
                               "annotations": [{"id": 1, "image_id": 5, "category_id": 1, "bbox": [0, 0, 1, 1]}]}))
    with pytest.raises(ValueError, match="bad.json"):
        run_label(_fake_model(), json_path=bad, images_root=tmp_path, out_path=tmp_path / "o.json",
                  progress=False, **OPTS)


TINY = ["model.backbone.name=small", "model.backbone.norm=BN", "model.backbone.freeze_at=0",
        "model.fpn.out_channels=32", "model.fcos.num_classes=2", "model.fcos.num_convs=1",
        "model.fcos.norm=BN", "model.mask_branch.channels=32", "model.mask_branch.num_convs=1",
        "input.min_size_test=64", "input.max_size_test=128", "model.fcos.inference_th=0.0",
        "model.fcos.post_nms_topk=12", "distill.teacher_size=64", "distill.teacher_max_size=128",
        "device=cpu"]


def test_cli_label_with_a_tiny_checkpoint(tmp_path, capsys):
    torch.manual_seed(0)
    cfg = load_config(None, TINY)
    model = build_model(cfg)
    with torch.no_grad():  # boxes with some size, so that some match
        model.fcos_head.bbox_pred.bias.fill_(2.0)
    ckpt = tmp_path / "tiny.pth"
    torch.save({"model": model.state_dict(), "config": cfg.to_dict(),
                "meta": {"cat_ids": [7, 9], "class_names": ["thing", "other"]}}, ckpt)
    save_config(cfg, tmp_path / "tiny.yaml")
    assert label_options(cfg)["size"] == 64
    json_path, root, data = _dataset(tmp_path)
    out_path = tmp_path / "out" / "labelled.json"
    rc = main(["label", str(tmp_path / "tiny.yaml"), "--weights", str(ckpt), "--json", str(json_path),
               "--images", str(root), "--out", str(out_path), "--quiet", "--device", "cpu"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "labelled 4 box(es)" in text and str(out_path) in text
    out = json.loads(out_path.read_text())
    labelled = [a for a in out["annotations"] if a.get("mask_source") in ("model", "box")]
    assert len(labelled) == 4
    for a in labelled:
        assert a["area"] == int(_decode(a["segmentation"]).sum()) and 0 <= a["mask_score"] <= 1
