"""Training engine: smoke run, resume equivalence, non-finite loss handling."""
from __future__ import annotations

import json

import pytest
import torch

from boxdepth.engine import trainer as trainer_mod
from boxdepth.engine.checkpoint import load_checkpoint
from boxdepth.engine.logging import read_metrics
from boxdepth.engine.trainer import NonFiniteLossError, train
from tests.conftest import tiny_config


def test_train_writes_checkpoints_metrics_and_config(tiny_synth, tmp_path):
    cfg = tiny_config(tiny_synth, depth=True)
    final = train(cfg, tmp_path / "run", progress=False)
    assert final == tmp_path / "run" / "model_final.pth"
    ckpt = load_checkpoint(final)
    assert ckpt["iteration"] == 4
    assert ckpt["meta"]["cat_ids"] == [1, 2, 3, 4]
    assert ckpt["config"]["model"]["fcos"]["num_classes"] == 4   # filled from the json
    assert (tmp_path / "run" / "model_0000002.pth").exists()
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["iter"] for r in rows] == [1, 2, 3, 4]
    for key in ("loss_fcos_cls", "loss_prj", "loss_pairwise", "loss_cons", "lr"):
        assert key in rows[-1]
    assert "config.yaml" in {p.name for p in (tmp_path / "run").iterdir()}
    before = torch.load(tmp_path / "run" / "model_0000002.pth", weights_only=True)["model"]
    changed = [k for k, v in ckpt["model"].items() if v.dtype.is_floating_point
               and not torch.equal(v, before[k])]
    assert changed, "weights did not move between iteration 2 and 4"


def test_resume_continues_exactly(tiny_synth, tmp_path):
    straight = train(tiny_config(tiny_synth), tmp_path / "a", progress=False)
    # stop after 2 iterations, then resume the same run to 4
    train(tiny_config(tiny_synth, "solver.max_iter=2"), tmp_path / "b", progress=False)
    resumed = train(tiny_config(tiny_synth), tmp_path / "b", resume=True, progress=False)
    a, b = load_checkpoint(straight)["model"], load_checkpoint(resumed)["model"]
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)
    rows = read_metrics(tmp_path / "b" / "metrics.jsonl")
    assert [r["iter"] for r in rows] == [1, 2, 3, 4]


def test_resume_without_checkpoint_starts_fresh(tiny_synth, tmp_path, caplog):
    cfg = tiny_config(tiny_synth, "solver.max_iter=1")
    with caplog.at_level("INFO", logger="boxdepth"):
        train(cfg, tmp_path / "fresh", resume=True, progress=False)
    assert "no checkpoint" in caplog.text
    assert load_checkpoint(tmp_path / "fresh" / "model_final.pth")["iteration"] == 1


def test_non_finite_loss_names_term_iteration_and_keeps_checkpoint(tiny_synth, tmp_path, monkeypatch):
    real_build = trainer_mod.build_criterion

    def poisoned(cfg):
        crit = real_build(cfg)
        real_forward = crit.forward

        def forward(outputs, batch, iteration):
            losses = real_forward(outputs, batch, iteration)
            if iteration == 2:
                losses["loss_prj"] = losses["loss_prj"] * float("nan")
            return losses
        crit.forward = forward
        return crit

    monkeypatch.setattr(trainer_mod, "build_criterion", poisoned)
    run = tmp_path / "nan"
    with pytest.raises(NonFiniteLossError) as e:
        train(tiny_config(tiny_synth), run, progress=False)
    msg = str(e.value)
    assert "loss_prj" in msg and "iteration 2" in msg and "model_0000002.pth" in msg
    good = load_checkpoint(run / "model_0000002.pth")
    assert all(torch.isfinite(v).all() for v in good["model"].values() if v.is_floating_point())
    assert not (run / "model_final.pth").exists()


def test_num_classes_mismatch_is_an_error(tiny_synth, tmp_path):
    with pytest.raises(ValueError, match="num_classes=7.*4 categories"):
        train(tiny_config(tiny_synth, "model.fcos.num_classes=7"), tmp_path / "x", progress=False)


def test_mask_mode_trains_with_dice(tiny_synth, tmp_path):
    # the fully supervised upper bound reads GT masks from train_masks.json
    cfg = tiny_config(tiny_synth, "loss.mode=mask", "solver.max_iter=1",
                      f"data.train_json={tiny_synth / 'train_masks.json'}")
    train(cfg, tmp_path / "m", progress=False)
    row = read_metrics(tmp_path / "m" / "metrics.jsonl")[-1]
    assert "loss_mask" in row and "loss_prj" not in row
    assert json.loads(json.dumps(row))["loss_mask"] > 0
