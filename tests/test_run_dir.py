"""Run folders cannot mix (issue 24, item 1): engine/run_dir.py as `train` uses it."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from boxdepth.cli import main
from boxdepth.engine.checkpoint import load_checkpoint
from boxdepth.engine.logging import read_metrics
from boxdepth.engine.run_dir import RunFolderError, config_differences
from boxdepth.engine.trainer import train
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def finished_run(tiny_synth, tmp_path_factory):
    run = tmp_path_factory.mktemp("finished") / "run"
    train(tiny_config(tiny_synth), run, progress=False)
    return run


@pytest.fixture()
def run4(finished_run, tmp_path):
    """A copy of a finished 4-iteration run (checkpoints at 2 and final), metrics rows 1..4."""
    return Path(shutil.copytree(finished_run, tmp_path / "run"))


def _iters(run):
    return [r["iter"] for r in read_metrics(run / "metrics.jsonl")]


def test_train_into_a_folder_holding_a_run_stops(run4, tiny_synth):
    before = (run4 / "metrics.jsonl").read_bytes()
    with pytest.raises(RunFolderError) as e:
        train(tiny_config(tiny_synth), run4, progress=False)
    msg = str(e.value)
    assert "--resume" in msg and "--out" in msg and "--overwrite" in msg
    assert (run4 / "metrics.jsonl").read_bytes() == before


def test_cli_refuses_a_run_folder_and_a_file_as_out(run4, tiny_synth, tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config(tiny_synth).to_dict()))
    assert main(["train", str(config), "--out", str(run4), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already holds a training run" in err
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    assert main(["train", str(config), "--out", str(a_file), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(a_file) in err and "not a folder" in err
    assert a_file.read_text() == "mine"


def test_overwrite_deletes_only_the_runs_own_files(run4, tiny_synth):
    (run4 / "notes.txt").write_text("mine")
    train(tiny_config(tiny_synth, "solver.max_iter=1"), run4, overwrite=True, progress=False)
    assert _iters(run4) == [1]
    assert not (run4 / "model_0000002.pth").exists()
    assert load_checkpoint(run4 / "model_final.pth")["iteration"] == 1
    assert (run4 / "notes.txt").read_text() == "mine"


def test_failed_resume_does_not_rewrite_config_yaml(run4, tiny_synth):
    before = (run4 / "config.yaml").read_bytes()
    with pytest.raises(RunFolderError) as e:
        train(tiny_config(tiny_synth, "model.depth_head=true", "solver.max_iter=6"), run4,
              resume=True, progress=False)
    assert "model.depth_head" in str(e.value)
    assert (run4 / "config.yaml").read_bytes() == before


def test_resume_drops_metrics_rows_past_the_checkpoint(run4, tiny_synth, caplog):
    # killed after logging iterations 3-4 but before model_final.pth was written
    (run4 / "model_final.pth").unlink()
    with caplog.at_level("INFO", logger="boxdepth"):
        train(tiny_config(tiny_synth), run4, resume=True, progress=False)
    assert _iters(run4) == [1, 2, 3, 4]
    assert "dropped 2 row(s)" in caplog.text


def test_temp_files_of_a_killed_write_are_removed(run4, tiny_synth):
    temp = run4 / ".model_0000006.pth.tmp-k1ll3d.pth"
    temp.write_bytes(b"half a checkpoint")
    mine = run4 / ".notes.tmp-keep"
    mine.write_text("not ours")
    train(tiny_config(tiny_synth, "solver.max_iter=6"), run4, resume=True, progress=False)
    assert not temp.exists() and mine.exists()
    assert _iters(run4) == [1, 2, 3, 4, 5, 6]


def test_truncated_newest_checkpoint_falls_back_and_says_so(run4, tiny_synth, caplog):
    final = run4 / "model_final.pth"
    final.write_bytes(final.read_bytes()[: final.stat().st_size // 2])
    with caplog.at_level("INFO", logger="boxdepth"):
        train(tiny_config(tiny_synth), run4, resume=True, progress=False)
    assert "model_final.pth" in caplog.text and "model_0000002.pth" in caplog.text
    assert "resuming from model_0000002.pth" in caplog.text
    assert load_checkpoint(final)["iteration"] == 4
    assert _iters(run4) == [1, 2, 3, 4]


def test_config_differences_names_keys_and_ignores_unread_ones():
    from boxdepth.config import load_config

    a = load_config(None, ["model.fcos.num_classes=3"]).to_dict()
    b = load_config(None, ["solver.base_lr=0.02", "distill.tau_m=0.5"]).to_dict()
    assert config_differences(a, b) == [("solver.base_lr", 0.01, 0.02)]
    c = load_config(None, ["distill.enabled=true"]).to_dict()
    assert ("distill.enabled", False, True) in config_differences(a, c)
