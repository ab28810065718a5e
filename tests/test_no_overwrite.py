"""Never overwrite an input (issue 24, item 2): every verb refuses an output path that is
one of its inputs, with one line and exit status 2, and leaves the input as it was."""
from __future__ import annotations

import os
import shutil

import pytest
import yaml

from boxdepth.cli import main
from boxdepth.fileio import InputOverwriteError, refuse_overwriting_inputs, same_path
from tests.conftest import save_untrained_checkpoint, tiny_config


def _refused(capsys, argv, *names) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "would overwrite an input" in err, err
    for n in names:
        assert n in err
    return err


@pytest.fixture()
def boxes_json(tiny_synth, tmp_path):
    path = tmp_path / "boxes.json"
    shutil.copy(tiny_synth / "train.json", path)
    return path


@pytest.fixture()
def tiny_ckpt(tiny_synth, tmp_path):
    cfg = tiny_config(tiny_synth, "model.fcos.num_classes=4", "device=cpu")
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    return save_untrained_checkpoint(tmp_path / "tiny.pth", cfg, [1, 2, 3, 4], list("abcd"))


def test_label_json_as_out_refuses_and_keeps_the_json(tiny_synth, boxes_json, tiny_ckpt, capsys):
    before = boxes_json.read_bytes()
    _refused(capsys, ["label", str(tiny_ckpt.parent / "tiny.yaml"), "--weights", str(tiny_ckpt),
                      "--json", str(boxes_json), "--images", str(tiny_synth / "images"),
                      "--out", str(boxes_json), "--quiet", "--device", "cpu"],
             "--out", "--json", str(boxes_json))
    assert boxes_json.read_bytes() == before
    assert not list(boxes_json.parent.glob("*.partial.jsonl"))


def test_qa_output_file_is_the_input_json(tiny_synth, boxes_json, capsys):
    qa_json = boxes_json.parent / "qa.json"
    boxes_json.rename(qa_json)
    before = qa_json.read_bytes()
    _refused(capsys, ["qa", "--json", str(qa_json), "--images", str(tiny_synth / "images"),
                      "--out", str(qa_json.parent)], "qa.json")
    assert qa_json.read_bytes() == before


def test_predict_viz_export_eval_refuse_their_inputs(tiny_synth, tiny_ckpt, tmp_path, capsys):
    photos = tmp_path / "photos"
    shutil.copytree(tiny_synth / "images", photos)
    _refused(capsys, ["predict", str(photos), "--weights", str(tiny_ckpt), "--out", str(photos)],
             "INPUTS")
    # an input folder that predict would write into: --out's overlays/
    overlays = tmp_path / "run" / "overlays"
    shutil.copytree(photos, overlays)
    _refused(capsys, ["predict", str(overlays), "--weights", str(tiny_ckpt), "--out",
                      str(overlays.parent)], "--out (overlays)")
    _refused(capsys, ["viz", str(photos), "--depth", str(tiny_synth / "depth"), "--out", str(photos)])
    before = tiny_ckpt.read_bytes()
    _refused(capsys, ["export", str(tiny_ckpt.parent / "tiny.yaml"), "--weights", str(tiny_ckpt),
                      "--format", "torchscript", "--out", str(tiny_ckpt)], "--weights")
    assert tiny_ckpt.read_bytes() == before
    gt = tiny_synth / "val.json"
    results = tmp_path / "dets.json"
    results.write_text("[]")
    _refused(capsys, ["eval", "--gt", str(gt), "--results", str(results), "--out", str(results)],
             "--results")
    assert results.read_text() == "[]"


def test_convert_and_depth_refuse_their_input_folders(tiny_synth, tmp_path, capsys):
    gtfine = tmp_path / "gtFine"
    (gtfine / "train").mkdir(parents=True)
    _refused(capsys, ["convert", "cityscapes", str(gtfine), "--out", str(gtfine)], "GTFINE_ROOT")
    images = tmp_path / "images"
    shutil.copytree(tiny_synth / "images", images)
    names = sorted(p.name for p in images.iterdir())
    _refused(capsys, ["depth", str(images), "--out", str(images), "--from-sensor",
                      str(tiny_synth / "depth_gt")], "IMAGES_ROOT")
    assert sorted(p.name for p in images.iterdir()) == names


def test_same_path_sees_through_links_and_dots(tmp_path):
    real = tmp_path / "a.json"
    real.write_text("{}")
    link = tmp_path / "link.json"
    os.symlink(real, link)
    assert same_path(link, real) and same_path(tmp_path / "x" / ".." / "a.json", real)
    assert not same_path(tmp_path / "b.json", real)
    with pytest.raises(InputOverwriteError, match="--json"):
        refuse_overwriting_inputs({"--out": link}, {"--json": real, "--images": None})
    refuse_overwriting_inputs({"--out": None}, {"--json": real})
