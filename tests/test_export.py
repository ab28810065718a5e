"""`boxdepth export` + the runner: exported graphs match PyTorch on real photos, and the
runner's COCO results (hence mask AP) equal PyTorch inference's."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from boxdepth.cli import main
from boxdepth.config import load_config
from boxdepth.data.build import build_dataset
from boxdepth.data.image_io import load_image_rgb
from boxdepth.data.transforms import TestTransform, collate_batch
from boxdepth.engine.inference import evaluate_model, load_trained_model
from boxdepth.engine.predict import run_predict
from boxdepth.export.exporter import export_model
from boxdepth.export.graph import output_names
from boxdepth.export.runner import ExportedModel, run_exported_predict
from boxdepth.models.build import build_model
from tests.conftest import SHARED_DATA, save_untrained_checkpoint, tiny_config

PHOTOS = sorted((SHARED_DATA / "voc3-coco" / "JPEGImages").glob("*.jpg"))[:2] + \
    sorted((SHARED_DATA / "tabletop-rgbd").glob("*-color.png"))[:1]
TINY = ["model.backbone.name=small", "model.backbone.norm=BN", "model.backbone.freeze_at=0",
        "model.fpn.out_channels=32", "model.fcos.num_convs=1",
        "model.fcos.norm=BN",  # GN(32) refuses P7's single value per group on small inputs
        "model.mask_branch.channels=32", "model.mask_branch.num_convs=1",
        "input.min_size_test=96", "input.max_size_test=160", "model.fcos.post_nms_topk=20"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    cfg = load_config(None, TINY + ["model.fcos.num_classes=3", "model.depth_head=true"])
    return save_untrained_checkpoint(tmp_path_factory.mktemp("exp") / "tiny.pth", cfg, [1, 5, 9],
                                     ["a", "b", "c"])


def _batch(path: Path, min_size: int, max_size: int) -> dict:
    img = torch.from_numpy(load_image_rgb(path)).permute(2, 0, 1).contiguous()
    sample = TestTransform(min_size, max_size)({"image": img, "boxes": torch.zeros(0, 4)})
    return collate_batch([sample], 32)


def _max_rel_diff(got, ref) -> float:
    return max(float((g - r).abs().max()) / max(1.0, float(r.abs().max())) for g, r in zip(got, ref))


def _export(ckpt_path, tmp_path, fmt, **kw) -> Path:
    out = tmp_path / ("m.onnx" if fmt == "onnx" else "m.pt")
    export_model(ckpt_path, out, fmt=fmt, **kw)
    return out


def _need(fmt):
    if fmt == "onnx":
        pytest.importorskip("onnx")
        pytest.importorskip("onnxruntime")


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_dynamic_export_matches_pytorch_on_real_photos(ckpt, tmp_path, fmt):
    _need(fmt)
    model, _, _ = load_trained_model(ckpt)
    exported = ExportedModel(_export(ckpt, tmp_path, fmt, dynamic=True))
    canvases = set()
    for path in PHOTOS:  # landscape VOC photos and a tabletop frame: several canvases
        batch = _batch(path, 96, 160)
        canvases.add(tuple(batch["images"].shape[-2:]))
        with torch.no_grad():
            head_out, mask_feats = model.dense(batch["images"], batch["image_mask"])
        ref = [t for k in ("cls_logits", "bbox_reg", "ctrness", "controller") for t in head_out[k]]
        got = exported.raw(batch["images"], batch["image_mask"])
        assert len(got) == len(output_names(5)) == len(ref) + 1
        assert [tuple(g.shape) for g in got] == [tuple(r.shape) for r in ref + [mask_feats]]
        assert float(ref[0].abs().max()) > 1.0  # not a trivially small output
        assert _max_rel_diff(got, ref + [mask_feats]) < 1e-4, path
    assert len(canvases) >= 2


def test_lite0_demo_network_exports_dynamically(tmp_path):
    """The demo's backbone ('SAME' padding) traced at one canvas runs right at another."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    torch.manual_seed(0)
    cfg = load_config("synth_boxinst", ["model.fcos.num_classes=2"])
    model = build_model(cfg, load_backbone_weights=False).eval()
    ckpt_path = tmp_path / "lite0.pth"
    torch.save({"model": model.state_dict(), "config": cfg.to_dict()}, ckpt_path)
    for fmt in ("onnx", "torchscript"):
        exported = ExportedModel(_export(ckpt_path, tmp_path, fmt, dynamic=True, size_hw=(192, 256)))
        batch = _batch(PHOTOS[0], 224, 400)  # 224x331 -> canvas 224x352, not the traced 192x256
        with torch.no_grad():
            head_out, mask_feats = model.dense(batch["images"], batch["image_mask"])
        ref = [t for k in ("cls_logits", "bbox_reg", "ctrness", "controller") for t in head_out[k]]
        assert _max_rel_diff(exported.raw(batch["images"], batch["image_mask"]), ref + [mask_feats]) < 1e-4


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_fixed_size_export_pads_smaller_and_refuses_larger(ckpt, tmp_path, fmt):
    _need(fmt)
    exported = ExportedModel(_export(ckpt, tmp_path, fmt, size_hw=(128, 160)))
    assert exported.fixed_size == (128, 160)
    small = torch.zeros(1, 3, 96, 128, dtype=torch.uint8)
    assert exported.raw(small, torch.ones(1, 96, 128, dtype=torch.bool))[0].shape[-2:] == (16, 20)
    with pytest.raises(ValueError, match=r"fixed 128x160 canvas.*160x160"):
        exported.raw(torch.zeros(1, 3, 160, 160, dtype=torch.uint8), torch.ones(1, 160, 160, dtype=torch.bool))


def _by_image(results):
    out = {}
    for r in results:
        out.setdefault(r["image_id"], []).append(r)
    return out


def _assert_same_results(got: list, ref: list):
    assert len(got) == len(ref) > 0
    g, r = _by_image(got), _by_image(ref)
    assert g.keys() == r.keys()
    filled = 0
    for image_id in r:
        a = sorted(g[image_id], key=lambda d: -d["score"])
        b = sorted(r[image_id], key=lambda d: -d["score"])
        assert [d["category_id"] for d in a] == [d["category_id"] for d in b]
        np.testing.assert_allclose([d["score"] for d in a], [d["score"] for d in b], atol=1e-4)
        np.testing.assert_allclose([d["bbox"] for d in a], [d["bbox"] for d in b], atol=1e-2)
        for da, db in zip(a, b):
            ma, mb = (mask_utils.decode(d["segmentation"]).astype(bool) for d in (da, db))
            # a pixel may flip where the probability sits at the threshold
            assert (ma ^ mb).sum() <= 0.01 * max(ma.sum(), mb.sum(), 1)
            filled += int(mb.any())
    assert filled > 0  # some masks are not empty: the comparison means something


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_runner_gives_pytorch_mask_ap_on_synthetic_val(tiny_synth, tmp_path, fmt):
    _need(fmt)
    dataset = build_dataset(tiny_config(tiny_synth), "val", is_train=False)
    # BN: GN(32) refuses P7's single value per group at the tiny test size
    cfg = tiny_config(tiny_synth, "model.backbone.norm=BN", "model.fcos.norm=BN",
                      f"model.fcos.num_classes={dataset.num_classes}", "model.fcos.post_nms_topk=20")
    ckpt_path = save_untrained_checkpoint(tmp_path / "synth.pth", cfg, list(dataset.cat_ids),
                                          list(dataset.class_names))
    model, _, _ = load_trained_model(ckpt_path)
    ref = evaluate_model(model, dataset, cfg.data.val_json, torch.device("cpu"),
                         metrics_path=tmp_path / "ref" / "metrics.json", progress=False)
    exported = ExportedModel(_export(ckpt_path, tmp_path, fmt, dynamic=True))
    got = evaluate_model(exported, dataset, cfg.data.val_json, torch.device("cpu"),
                         metrics_path=tmp_path / "exp" / "metrics.json", progress=False)
    _assert_same_results(json.loads((tmp_path / "exp" / "results.json").read_text()),
                         json.loads((tmp_path / "ref" / "results.json").read_text()))
    assert math.isclose(got["segm"]["AP"], ref["segm"]["AP"], abs_tol=1e-6)
    assert math.isclose(got["bbox"]["AP"], ref["bbox"]["AP"], abs_tol=1e-6)


def test_runner_writes_what_predict_writes(ckpt, tmp_path):
    inputs = [str(p) for p in PHOTOS]
    ref = run_predict(ckpt, inputs, tmp_path / "ref", device="cpu", score_thresh=0.0, progress=False)
    exported = _export(ckpt, tmp_path, "torchscript", dynamic=True)
    got = run_exported_predict(exported, inputs, tmp_path / "got", score_thresh=0.0, progress=False)
    assert got["detections"] == ref["detections"] and got["shown"] == ref["shown"]
    _assert_same_results(json.loads(Path(got["results"]).read_text()),
                         json.loads(Path(ref["results"]).read_text()))
    assert json.loads(Path(got["images_json"]).read_text()) == json.loads(Path(ref["images_json"]).read_text())
    assert sorted(p.name for p in (tmp_path / "got" / "overlays").iterdir()) == \
        sorted(p.name for p in (tmp_path / "ref" / "overlays").iterdir())


def test_cli_export_and_errors(ckpt, tmp_path, capsys):
    out = tmp_path / "cli.pt"
    assert main(["export", str(ckpt.parent / "missing.yaml"), "--weights", str(ckpt), "--format",
                 "torchscript", "--out", str(out), "--dynamic"]) == 2
    assert "missing.yaml" in capsys.readouterr().err
    # the checkpoint's own config is used through CONFIG = its saved yaml
    cfg_file = tmp_path / "cfg.yaml"
    from boxdepth.config import save_config
    save_config(load_trained_model(ckpt)[1], cfg_file)
    args = ["export", str(cfg_file), "--weights", str(ckpt), "--format", "torchscript", "--out", str(out)]
    assert main(args) == 2
    assert "--size HxW" in capsys.readouterr().err and not out.exists()
    assert main(args + ["--size", "100x128"]) == 2
    assert "multiples of 32" in capsys.readouterr().err and not out.exists()
    assert main(args + ["--size", "96x128"]) == 0
    assert "96x128" in capsys.readouterr().out
    assert ExportedModel(out).fixed_size == (96, 128)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".cli.pt")] == []  # no temp left


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_runner_names_a_file_that_is_not_an_export(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    pytest.importorskip("onnxruntime")
    with pytest.raises(ValueError, match="bad.onnx"):
        ExportedModel(bad)
    plain = tmp_path / "plain.pt"  # a TorchScript archive, but not made by boxdepth export
    torch.jit.save(torch.jit.script(torch.nn.Identity()), str(plain))
    with pytest.raises(ValueError, match=r"plain\.pt.*boxdepth\.json"):
        ExportedModel(plain)
    with pytest.raises(FileNotFoundError, match="nope.onnx"):
        ExportedModel(tmp_path / "nope.onnx")


def test_runner_command_line(ckpt, tmp_path, capsys):
    from boxdepth.export.runner import main as runner_main

    model_file = _export(ckpt, tmp_path, "torchscript", dynamic=True)
    assert runner_main([str(model_file), str(PHOTOS[0]), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    assert "predicted 1 image(s)" in capsys.readouterr().out
    assert json.loads((tmp_path / "o" / "results.json").read_text())
    assert runner_main([str(tmp_path / "none.pt"), str(PHOTOS[0]), "--out", str(tmp_path / "o2")]) == 2
    assert "none.pt" in capsys.readouterr().err
