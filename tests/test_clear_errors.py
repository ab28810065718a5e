"""Clear errors, not tracebacks (issue 24, item 4): each failure is one line on stderr
naming the file or key, and a non-zero exit."""
from __future__ import annotations

import errno
import json
import os
import shutil
import warnings

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from boxdepth.cli import main
from boxdepth.data.coco_records import CocoFormatError, parse_coco
from boxdepth.engine.checkpoint import load_checkpoint, save_checkpoint
from tests.conftest import save_untrained_checkpoint, tiny_config


def _one_line(capsys, *names) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for n in names:
        assert n in err, (n, err)
    return err


@pytest.fixture()
def data(tiny_synth, tmp_path):
    """A writable copy of the tiny synthetic set."""
    return shutil.copytree(tiny_synth, tmp_path / "data", ignore=shutil.ignore_patterns("depth_gt"))


def _config(tmp_path, data, *overrides):
    path = tmp_path / "tiny.yaml"
    cfg = tiny_config(data, *overrides)
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    return path


def test_out_of_the_wrong_kind(data, tmp_path, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    assert main(["qa", "--json", str(data / "train.json"), "--images", str(data / "images"),
                 "--out", str(a_file)]) == 2
    _one_line(capsys, str(a_file), "not a folder")
    assert main(["label", "synth_boxinst", "--weights", "w.pth", "--json", str(data / "train.json"),
                 "--images", str(data / "images"), "--out", str(tmp_path)]) == 2
    _one_line(capsys, str(tmp_path), "is a folder")
    assert a_file.read_text() == "mine"


def test_empty_random_and_pickled_pth_name_the_file(tmp_path, capsys):
    class Evil:
        def __reduce__(self):
            return (print, ("ran code",))

    empty, rand, evil = tmp_path / "empty.pth", tmp_path / "rand.pth", tmp_path / "evil.pth"
    empty.write_bytes(b"")
    rand.write_bytes(np.random.default_rng(0).bytes(4096))
    torch.save({"model": Evil()}, evil)
    for path, words in ((empty, "is empty"), (rand, "is not a checkpoint"), (evil, "never loads")):
        with pytest.raises(ValueError) as e:
            load_checkpoint(path)
        assert str(path) in str(e.value) and words in str(e.value)
        assert "weights_only" not in str(e.value)
    assert main(["export", "synth_boxinst", "--weights", str(rand), "--format", "torchscript",
                 "--out", str(tmp_path / "m.pt")]) == 2
    err = _one_line(capsys, str(rand), "not a checkpoint")
    assert "weights_only" not in err


def test_duplicate_annotation_ids_are_an_error(data):
    coco = json.loads((data / "train.json").read_text())
    coco["annotations"][1]["id"] = coco["annotations"][0]["id"]
    with pytest.raises(CocoFormatError, match=f"duplicate annotation id {coco['annotations'][0]['id']}"):
        parse_coco(coco, where="train.json")


def test_training_json_without_annotations_fails_before_training(data, tmp_path, capsys):
    coco = json.loads((data / "train.json").read_text())
    coco["annotations"] = []
    (data / "train.json").write_text(json.dumps(coco))
    run = tmp_path / "run"
    assert main(["train", str(_config(tmp_path, data)), "--out", str(run), "--quiet"]) == 2
    _one_line(capsys, "train.json", "no box to train on")
    assert not (run / "config.yaml").exists() and not (run / "metrics.jsonl").exists()


def test_8bit_depth_png_warns_about_256_levels(tmp_path, caplog):
    from boxdepth.data.depth_io import load_depth_png

    path = tmp_path / "d8" / "a.png"
    path.parent.mkdir()
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(path)
    with caplog.at_level("WARNING", logger="boxdepth"):
        d = load_depth_png(path)
        load_depth_png(path)
    assert d.dtype == np.float32 and d.max() == pytest.approx(63 / 255)
    assert caplog.text.count("is an 8-bit PNG") == 1 and "256 depth levels" in caplog.text and str(path) in caplog.text


def test_out_of_range_options(data, tmp_path, capsys):
    assert main(["qa", "--json", str(data / "train.json"), "--images", str(data / "images"),
                 "--out", str(tmp_path / "qa"), "--top", "-3"]) == 2
    _one_line(capsys, "--top", "-3")
    cfg = tiny_config(data, "model.fcos.num_classes=4", "device=cpu")
    ckpt = save_untrained_checkpoint(tmp_path / "tiny.pth", cfg, [1, 2, 3, 4], list("abcd"))
    assert main(["label", str(_config(tmp_path, data, "model.fcos.num_classes=4")), "--weights",
                 str(ckpt), "--json", str(data / "train.json"), "--images", str(data / "images"),
                 "--out", str(tmp_path / "l.json"), "--min-iou", "5", "--device", "cpu"]) == 2
    _one_line(capsys, "--min-iou", "5")
    assert not (tmp_path / "l.json").exists()


@pytest.mark.parametrize("change, words", [
    (lambda c: c["annotations"][0].update(bbox=[float("nan"), 1.0, 5.0, 5.0]), "malformed bbox"),
    (lambda c: c["images"][0].update(file_name="../../outside.png"), "escapes the image root"),
])
def test_qa_bad_json_is_one_line(data, tmp_path, capsys, change, words):
    coco = json.loads((data / "train.json").read_text())
    change(coco)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(coco))
    assert main(["qa", "--json", str(bad), "--images", str(data / "images"), "--out",
                 str(tmp_path / "qa")]) == 2
    _one_line(capsys, str(bad), words)


def test_corrupt_image_in_a_dataloader_worker_is_one_line(data, tmp_path, capsys):
    images = sorted((data / "images").rglob("*.png"))
    for p in images:
        p.write_bytes(b"not a png")
    config = _config(tmp_path, data, "data.num_workers=1")
    assert main(["train", str(config), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = _one_line(capsys, "cannot decode image")
    assert "Original Traceback" not in err and any(str(p) in err for p in images)


def test_full_disk_is_one_line(data, tmp_path, capsys, monkeypatch):
    real_replace = os.replace

    def full(src, dst):
        if str(dst).startswith(str(tmp_path / "qa")):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr("boxdepth.fileio.os.replace", full)
    assert main(["qa", "--json", str(data / "train.json"), "--images", str(data / "images"),
                 "--out", str(tmp_path / "qa")]) == 2
    _one_line(capsys, "no space left on device", "qa.csv")
    assert not [p for p in (tmp_path / "qa").iterdir() if ".tmp-" in p.name]


def test_checkpoint_write_failure_names_the_file(tmp_path, monkeypatch):
    def failing_save(obj, f):
        raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed "
                           "writing file data/0: file write failed")

    monkeypatch.setattr("boxdepth.engine.checkpoint.torch.save", failing_save)
    with pytest.raises(OSError) as e:
        save_checkpoint(tmp_path / "model_0000002.pth", {"model": {}})
    assert "model_0000002.pth" in str(e.value) and "cannot write checkpoint" in str(e.value)
    assert not list(tmp_path.iterdir())


def test_non_finite_loss_stop_is_one_line(data, tmp_path, capsys, monkeypatch):
    from boxdepth.engine import trainer as trainer_mod

    real_build = trainer_mod.build_criterion

    def poisoned(cfg):
        crit = real_build(cfg)
        real_forward = crit.forward
        crit.forward = lambda outputs, batch, iteration: {
            k: v * float("nan") if k == "loss_prj" else v
            for k, v in real_forward(outputs, batch, iteration).items()}
        return crit

    monkeypatch.setattr(trainer_mod, "build_criterion", poisoned)
    assert main(["train", str(_config(tmp_path, data, "solver.max_iter=1")), "--out",
                 str(tmp_path / "run"), "--quiet"]) == 2
    _one_line(capsys, "loss_prj", "not finite", "iteration 0")


def test_decompression_bomb_warning_names_file_and_size(tmp_path, monkeypatch):
    from boxdepth.data.image_io import LargeImageWarning, load_image_rgb

    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((300, 400, 3), np.uint8)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_image_rgb(path)
    assert [w.category for w in caught] == [LargeImageWarning]
    assert str(path) in str(caught[0].message) and "400x300" in str(caught[0].message)
