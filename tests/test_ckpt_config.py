"""Checkpoints carry their config (issue 24 item 5): eval, label, export and predict take the
model config from the checkpoint; a CONFIG only adds run keys, and disagreements are printed."""
import json
import logging

import pytest
import yaml

from boxdepth.cli import main
from boxdepth.config import load_config
from boxdepth.engine.ckpt_config import inference_config
from boxdepth.engine.predict import run_predict
from tests.conftest import save_untrained_checkpoint
from tests.test_predict import TINY, _write_image

# config B: what a user might pass by mistake, e.g. the packaged config instead of the run's
DISAGREE = {"model": {"fcos": {"post_nms_topk": 3, "inference_th": 0.3}},
            "input": {"min_size_test": 96}, "solver": {"max_iter": 7}}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):  # config A: post_nms_topk 12, inference_th 0, min_size_test 64
    cfg = load_config(None, TINY + ["device=cpu"])
    return save_untrained_checkpoint(tmp_path_factory.mktemp("cc") / "a.pth", cfg, [1, 5, 9],
                                     ["a", "b", "c"])


@pytest.fixture()
def config_b(tmp_path):
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump({**DISAGREE, "data": {"val_json": "val_b.json"}}))
    return path


def _disagreement(text: str) -> bool:
    return all(s in text for s in ("disagrees", "model.fcos.post_nms_topk: checkpoint 12, b.yaml 3",
                                   "model.fcos.inference_th: checkpoint 0.0, b.yaml 0.3",
                                   "input.min_size_test: checkpoint 64, b.yaml 96"))


def test_the_model_config_comes_from_the_checkpoint(ckpt, config_b, caplog):
    with caplog.at_level(logging.INFO, logger="boxdepth"):
        cfg = inference_config(ckpt, config_b)
    assert cfg.model.fcos.post_nms_topk == 12 and cfg.model.fcos.inference_th == 0.0
    assert cfg.input.min_size_test == 64
    assert cfg.data.val_json == "val_b.json"  # a run key: the file's
    assert _disagreement(caplog.text)
    assert "solver.max_iter" not in caplog.text  # training only: not compared
    assert "from b.yaml: data.val_json = 'val_b.json' (checkpoint: None)" in caplog.text
    # key=value overrides may change a model key on purpose, and say so
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="boxdepth"):
        cfg = inference_config(ckpt, None, ["model.fcos.post_nms_topk=2"])
    assert cfg.model.fcos.post_nms_topk == 2
    assert "override: model.fcos.post_nms_topk = 2 (checkpoint: 12)" in caplog.text
    assert "disagrees" not in caplog.text


def test_a_checkpoint_without_config_needs_one(ckpt, tmp_path, caplog):
    import torch

    bare = tmp_path / "bare.pth"
    torch.save({"model": torch.load(ckpt, weights_only=True)["model"]}, bare)
    with pytest.raises(ValueError, match="holds no config"):
        inference_config(bare)
    cfg_file = tmp_path / "a.yaml"
    cfg_file.write_text(yaml.safe_dump(load_config(None, TINY).to_dict()))
    with caplog.at_level(logging.WARNING, logger="boxdepth"):
        assert inference_config(bare, cfg_file).model.fcos.post_nms_topk == 12
    assert "older checkpoint" in caplog.text


def test_export_with_a_disagreeing_config_uses_the_checkpoints(ckpt, config_b, tmp_path, caplog):
    from boxdepth.export.runner import ExportedModel

    out = tmp_path / "m.pt"
    with caplog.at_level(logging.INFO, logger="boxdepth"):
        assert main(["export", str(config_b), "--weights", str(ckpt), "--format", "torchscript",
                     "--out", str(out), "--dynamic"]) == 0
    meta = ExportedModel(out).metadata["config"]
    assert meta["model"]["fcos"]["post_nms_topk"] == 12 and meta["input"]["min_size_test"] == 64
    assert _disagreement(caplog.text)
    # CONFIG is optional: the checkpoint alone is enough
    assert main(["export", "--weights", str(ckpt), "--format", "torchscript", "--out",
                 str(tmp_path / "n.pt"), "--dynamic"]) == 0


def test_predict_with_a_disagreeing_config_gives_the_checkpoints_detections(ckpt, config_b, tmp_path,
                                                                          caplog):
    _write_image(tmp_path / "in" / "x.png", 80, 100, 4)
    ref = run_predict(ckpt, [str(tmp_path / "in")], tmp_path / "ref", device="cpu", progress=False)
    with caplog.at_level(logging.INFO, logger="boxdepth"):
        got = run_predict(ckpt, [str(tmp_path / "in")], tmp_path / "got", device="cpu",
                          progress=False, config=config_b)
    assert got["detections"] == ref["detections"] > 3  # B would keep 3
    assert _disagreement(caplog.text)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="boxdepth"):
        assert main(["predict", str(tmp_path / "in"), "--weights", str(ckpt), "--out",
                     str(tmp_path / "cli"), "--config", str(config_b), "--device", "cpu", "--quiet"]) == 0
    assert len(json.loads((tmp_path / "cli" / "results.json").read_text())) == ref["detections"]
    assert _disagreement(caplog.text)


def test_eval_takes_the_checkpoints_config_and_overrides_without_config(tiny_synth, tmp_path, caplog):
    from tests.conftest import tiny_config

    cfg = tiny_config(tiny_synth, "model.fcos.num_classes=3", "model.fcos.post_nms_topk=12",
                      "device=cpu")
    weights = save_untrained_checkpoint(tmp_path / "t.pth", cfg, [1, 2, 3], ["a", "b", "c"])
    cfg_file = tmp_path / "b.yaml"
    cfg_file.write_text(yaml.safe_dump(DISAGREE))
    out = tmp_path / "ev" / "metrics.json"
    with caplog.at_level(logging.INFO, logger="boxdepth"):
        assert main(["eval", str(cfg_file), "--weights", str(weights), "--out", str(out)]) == 0
    assert "post_nms_topk: checkpoint 12, b.yaml 3" in caplog.text
    dets = json.loads((tmp_path / "ev" / "results.json").read_text())
    per_image = [sum(d["image_id"] == i for d in dets) for i in {d["image_id"] for d in dets}]
    assert max(per_image) > 3  # the checkpoint's 12, not b.yaml's 3
    # no CONFIG, a key=value override right after the options (parsed as the optional CONFIG)
    out2 = tmp_path / "ev2" / "metrics.json"
    assert main(["eval", "--weights", str(weights), "model.fcos.post_nms_topk=2", "--out", str(out2)]) == 0
    dets = json.loads((tmp_path / "ev2" / "results.json").read_text())
    assert max(sum(d["image_id"] == i for d in dets) for i in {d["image_id"] for d in dets}) <= 2
