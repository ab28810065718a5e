"""`boxdepth viz --gt`: the self-distillation pseudo-mask tile. Clipping to the GT box,
the reliable / unreliable / unmatched split and the student-batch geometry against
hand-made teacher predictions; the real matchers against hand-computed S_match; the
command end to end on a tiny model."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from boxdepth.viz import pseudo as viz_pseudo
from boxdepth.cli import main
from boxdepth.config import load_config
from boxdepth.data.depth_io import depth_path_for, load_depth_png
from boxdepth.distill.distiller import SelfDistiller
from boxdepth.engine.inference import load_trained_model
from boxdepth.models.build import build_model
from boxdepth.viz.draw import NOTE_BG, title_strip_height
from boxdepth.viz.panels import panel_font_size, run_viz
from boxdepth.viz.pseudo import (RELIABLE_COLOR, UNMATCHED_COLOR, UNRELIABLE_COLOR,
                                 pseudo_mask_tile, student_batch)

from tests.conftest import TINY_MODEL

GREY = 100
# original image 128 x 192, test size 64 -> scale 0.5: student canvas 64 x 96, stride-4
# cells 16 x 24, each cell = 8 x 8 original pixels
GT = np.array([[16, 16, 80, 96],      # A: cells x 2..9, y 2..11 (centres 4c+2 in [8, 40] / [8, 48])
               [112, 16, 176, 96],    # B: cells x 14..21, y 2..11
               [40, 104, 120, 124]],  # C: left without a match
              np.float32)


def _blend(color) -> np.ndarray:
    return np.rint(GREY * 0.5 + 0.5 * np.array(color, np.float64)).astype(np.uint8)


def _cfg(*overrides):
    return load_config(None, ["input.min_size_test=64", "input.max_size_test=128", *overrides])


def _teacher_masks() -> torch.Tensor:
    m = torch.zeros(2, 16, 24)
    m[0, 4:9, 5:13] = 0.9   # A's teacher mask spills right of A's box (cells 10..12)
    m[0, 9:12, 2:5] = 0.4   # inside A's box but not > 0.5: not pseudo mask
    m[1, 3:11, 15:21] = 0.7
    return m


def test_pseudo_masks_clipped_and_split_by_s_match(monkeypatch):
    seen = {}

    def fake_teacher(model, batch, **kw):
        seen.update(model=model, batch=batch, kw=kw)
        return [{"boxes": torch.zeros(2, 4), "scores": torch.ones(2), "labels": torch.zeros(2),
                 "masks": _teacher_masks()}]

    def fake_match(self, preds, batch):
        seen["tau_m"] = self.tau_m
        return [{"gt_inds": torch.tensor([0, 1]), "pred_inds": torch.tensor([0, 1]),
                 "s_match": torch.tensor([0.9, 0.5]), "s_dcons": torch.full((2,), float("nan"))}]

    monkeypatch.setattr(viz_pseudo, "teacher_predictions", fake_teacher)
    monkeypatch.setattr(SelfDistiller, "match", fake_match)
    cfg = _cfg("model.fcos.post_nms_topk=7", "distill.teacher_size=100")
    image = np.full((128, 192, 3), GREY, np.uint8)
    model = object()
    tile, title, info = pseudo_mask_tile(model, cfg, image, None, GT, "cpu")

    # the student batch and the teacher's arguments are training's
    assert seen["model"] is model and seen["tau_m"] == 0.8
    raw = seen["kw"].pop("raw_images")
    assert seen["kw"] == {"teacher_size": 100, "max_size": 1333, "topk": 7, "mask_stride": 4}
    # the teacher reads the original image, as training's teacher does, not the student's copy
    assert len(raw) == 1 and torch.equal(raw[0], torch.from_numpy(image).permute(2, 0, 1))
    batch = seen["batch"]
    assert tuple(batch["images"].shape) == (1, 3, 64, 96) and batch["depth"] is None
    assert torch.allclose(batch["targets"][0]["boxes"], torch.from_numpy(GT) / 2)
    assert not bool(batch["has_depth"][0]) and batch["targets"][0]["flipped"] is False

    assert info == {"gt": 3, "matched": 2, "reliable": 1, "s_match": pytest.approx([0.9, 0.5])}
    assert title == "pseudo masks (teacher, IoU match, S_match>0.8): 1 reliable / 2 matched / 3 GT"
    green, orange = _blend(RELIABLE_COLOR), _blend(UNRELIABLE_COLOR)
    # A: teacher cells y 4..8, x 5..9 after clipping -> pixels y 32..71, x 40..79
    assert (tile[33:71, 41:79] == green).all()
    assert (tile[32, 40:80] == RELIABLE_COLOR).all()  # the mask's rim
    assert (tile[32:72, 80:104] == GREY).all()         # the spill, clipped away
    assert (tile[73:95, 17:40] == GREY).all()          # teacher prob 0.4: no pseudo mask
    # B: unreliable, cells y 3..10, x 15..20 -> pixels y 24..87, x 120..167
    assert (tile[25:87, 121:167] == orange).all()
    assert (tile[50, 112] == UNRELIABLE_COLOR).all()   # B's box outline (x = 112)
    # C: a grey box outline, nothing inside
    assert (tile[104, 41:119] == UNMATCHED_COLOR).all()
    assert (tile[105:123, 41:119] == GREY).all()
    assert (tile[50, 16] == RELIABLE_COLOR).all()      # A's box outline


@pytest.mark.parametrize("with_depth", [False, True])
def test_real_matcher_scores(monkeypatch, with_depth):
    """IoU-only without depth; 0.8 IoU + 0.2 S_dcons with it (flat depth: S_dcons = 1)."""
    def fake_teacher(model, batch, **kw):
        # in the student frame (scale 0.5): IoU with A = 32*20 / (32*40) = 0.5, with B 1.0
        boxes = torch.tensor([[56.0, 8, 88, 48], [8, 8, 40, 28]])
        return [{"boxes": boxes, "scores": torch.tensor([0.9, 0.8]), "labels": torch.zeros(2),
                 "masks": _teacher_masks().flip(0)}]

    monkeypatch.setattr(viz_pseudo, "teacher_predictions", fake_teacher)
    image = np.full((128, 192, 3), GREY, np.uint8)
    d01 = np.full((128, 192), 0.5, np.float32) if with_depth else None
    _, title, info = pseudo_mask_tile(None, _cfg(), image, d01, GT[:2], "cpu", model_name="student")
    expected = [0.8 * 0.5 + 0.2, 1.0] if with_depth else [0.5, 1.0]
    assert info["s_match"] == pytest.approx(expected, abs=1e-5)
    assert info["reliable"] == 1 and info["matched"] == 2
    assert ("IoU match" in title) == (not with_depth) and title.startswith("pseudo masks (student")


def test_no_gt_boxes_draws_the_image(monkeypatch):
    monkeypatch.setattr(viz_pseudo, "teacher_predictions", lambda *a, **k: pytest.fail("ran"))
    image = np.random.RandomState(0).randint(0, 256, (40, 50, 3)).astype(np.uint8)
    tile, _, info = pseudo_mask_tile(None, _cfg(), image, None, np.zeros((0, 4)), "cpu")
    assert np.array_equal(tile, image) and info == {"gt": 0, "matched": 0, "reliable": 0,
                                                    "s_match": []}


# ----------------------------------------------------------------------------- end to end
def _make_ckpt(path: Path, data: Path, teacher: bool) -> Path:
    torch.manual_seed(0)
    n = len(json.loads((data / "train.json").read_text())["categories"])
    cfg = load_config(None, TINY_MODEL + [
        f"model.fcos.num_classes={n}", "input.min_size_test=64", "input.max_size_test=128",
        "model.fcos.inference_th=0.0", "model.fcos.post_nms_topk=5",
        "distill.teacher_size=80", "distill.teacher_max_size=160"])
    model = build_model(cfg)
    with torch.no_grad():  # an untrained model whose boxes have some size
        model.fcos_head.cls_logits.weight.mul_(200.0)
        model.fcos_head.cls_logits.bias.zero_()
        model.fcos_head.bbox_pred.bias.fill_(1.0)
    state = model.state_dict()
    torch.save({"model": state, "config": cfg.to_dict(), "meta": {},
                "teacher": {k: v.clone() for k, v in state.items()} if teacher else None}, path)
    return path


def _last_tile(panel_path: str, n_tiles: int, hw=(64, 96)) -> np.ndarray:
    """The last tile of a one-row titled panel (make_panel's layout, pad 4)."""
    panel = np.asarray(Image.open(panel_path).convert("RGB"))
    h, w = hw
    top, x = 4 + title_strip_height(panel_font_size(w)), 4 + (n_tiles - 1) * (w + 4)
    assert panel.shape[:2] == (top + h + 4, 4 + n_tiles * (w + 4))
    return panel[top:top + h, x:x + w]


def _json_boxes(data: Path) -> dict[str, int]:
    """Non-crowd annotations per file_name, counted straight from the json."""
    d = json.loads((data / "train.json").read_text())
    names = {im["id"]: im["file_name"] for im in d["images"]}
    count = dict.fromkeys(names.values(), 0)
    for a in d["annotations"]:
        count[names[a["image_id"]]] += 0 if a.get("iscrowd") else 1
    return count


def test_cli_draws_the_pseudo_mask_tile(tiny_synth, tmp_path, capsys):
    ckpt = _make_ckpt(tmp_path / "t.pth", tiny_synth, teacher=True)
    out = tmp_path / "viz"
    assert main(["viz", str(tiny_synth / "images" / "train"), "--images-root",
                 str(tiny_synth / "images"), "--depth", str(tiny_synth / "depth"),
                 "--weights", str(ckpt), "--gt", str(tiny_synth / "train.json"), "--out", str(out),
                 "--max-images", "2", "--device", "cpu", "--quiet"]) == 0
    assert "pseudo masks:" in capsys.readouterr().out
    summary = run_viz([str(tiny_synth / "images" / "train")], tmp_path / "viz2",
                      images_root=tiny_synth / "images", depth_root=tiny_synth / "depth",
                      weights=ckpt, gt=tiny_synth / "train.json", device="cpu", max_images=2,
                      progress=False)
    assert len(summary["tiles"]) == 7 and summary["not_in_gt"] == []
    assert summary["tiles"][-1].startswith("pseudo masks (teacher, S_match>0.8): ")
    model, cfg, _ = load_trained_model(ckpt)
    boxes = _json_boxes(tiny_synth)
    records = viz_pseudo.load_gt_records(tiny_synth / "train.json")
    assert len(summary["pseudo_masks"]) == 2
    for info, panel in zip(summary["pseudo_masks"], summary["panels"]):
        rel = Path(info["image"]).relative_to(tiny_synth / "images").as_posix()
        image = np.asarray(Image.open(info["image"]).convert("RGB"))
        d01 = load_depth_png(depth_path_for(tiny_synth / "depth", rel))
        batch = student_batch(image, d01, records[rel]["boxes"], min_size=64, max_size=128)
        n_pred = len(viz_pseudo.teacher_predictions(model, batch, teacher_size=80, max_size=160,
                                                    topk=5)[0]["boxes"])
        assert info["gt"] == boxes[rel] > 0 and 0 < n_pred <= 5
        assert info["matched"] == min(info["gt"], n_pred) == len(info["s_match"])
        assert info["reliable"] == sum(s > 0.8 for s in info["s_match"])
        # same picture with the parts put together by hand
        tile = pseudo_mask_tile(model, cfg, image, d01, records[rel]["boxes"], "cpu")[0]
        assert np.array_equal(_last_tile(panel, 7), tile)
        assert np.array_equal(_last_tile(str(out / Path(panel).name), 7), tile)


def test_gt_errors_and_images_missing_from_the_json(tiny_synth, tmp_path, capsys):
    train = tiny_synth / "images" / "train"
    assert main(["viz", str(train), "--gt", str(tiny_synth / "train.json"),
                 "--out", str(tmp_path / "a")]) == 2
    assert "--weights" in capsys.readouterr().err
    ckpt = _make_ckpt(tmp_path / "s.pth", tiny_synth, teacher=False)
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    assert main(["viz", str(train), "--weights", str(ckpt), "--gt", str(bad), "--device", "cpu",
                 "--out", str(tmp_path / "b"), "--quiet"]) == 2
    assert str(bad) in capsys.readouterr().err
    d = json.loads((tiny_synth / "train.json").read_text())  # without the first image
    first = d["images"][0]
    d["images"] = d["images"][1:]
    d["annotations"] = [a for a in d["annotations"] if a["image_id"] != first["id"]]
    part = tmp_path / "part.json"
    part.write_text(json.dumps(d))
    summary = run_viz([str(train)], tmp_path / "c", images_root=tiny_synth / "images",
                      weights=ckpt, gt=part, device="cpu", max_images=2, progress=False)
    missing = tiny_synth / "images" / first["file_name"]
    assert summary["not_in_gt"] == [str(missing)] and len(summary["pseudo_masks"]) == 1
    assert summary["tiles"][-1].startswith("pseudo masks (student, no teacher, IoU")
    note = _last_tile(summary["panels"][0], 7)
    assert (note == np.array(NOTE_BG, np.uint8)).all(axis=2).mean() > 0.8
