"""Periodic evaluation during training (engine/periodic_eval.py, issue 24 item 7)."""
from __future__ import annotations

import math

import pytest
import torch

from boxdepth.engine.checkpoint import load_checkpoint
from boxdepth.engine.logging import MetricsWriter, read_metrics
from boxdepth.engine.periodic_eval import PeriodicEvaluator, parse_best_metric
from tests.conftest import tiny_config


def test_tiny_run_logs_eval_rows_and_keeps_the_best(tiny_synth, tmp_path):
    from boxdepth.engine.trainer import train

    cfg = tiny_config(tiny_synth, "eval.period=2", "eval.best_metric=bbox/AP")
    train(cfg, tmp_path / "run", progress=False)
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    evals = [r for r in rows if "eval/bbox/AP" in r]
    assert [r["iter"] for r in evals] == [2, 4]
    assert all("eval/segm/AP" in r and "loss_fcos_cls" not in r for r in evals)
    assert len([r for r in rows if "time_step" in r]) == 4  # the loss rows are unchanged

    best_rows = [r for r in evals if r.get("best") == "eval/bbox/AP"]
    assert best_rows and best_rows[0]["iter"] == 2  # the first evaluation is the best so far
    best_iter = best_rows[-1]["iter"]
    assert best_rows[-1]["eval/bbox/AP"] == max(r["eval/bbox/AP"] for r in evals)
    best = load_checkpoint(tmp_path / "run" / "model_best.pth")
    assert best["iteration"] == best_iter
    same = tmp_path / "run" / ("model_final.pth" if best_iter == 4 else f"model_{best_iter:07d}.pth")
    ref = load_checkpoint(same)["model"]
    assert all(torch.equal(best["model"][k], ref[k]) for k in ref)


class _Writer(MetricsWriter):
    def __init__(self):
        self.rows = []

    def write(self, iteration, scalars):
        self.rows.append({"iter": iteration, **scalars})


def _fake_scores(values):
    it = iter(values)
    return lambda model: {"bbox": {"AP": 0.5}, "segm": {"AP": next(it)}}


def test_best_follows_the_configured_metric_and_skips_nan(tiny_synth, tmp_path, monkeypatch):
    cfg = tiny_config(tiny_synth, "eval.period=3")
    writer = _Writer()
    ev = PeriodicEvaluator(cfg, tmp_path, writer=writer, device=torch.device("cpu"))
    monkeypatch.setattr(ev, "_score", _fake_scores([0.1, math.nan, 0.3, 0.2]))
    saved = []
    for done in range(1, 13):
        ev(done, model=None, state=lambda d=done: saved.append(d) or {"iteration": d})
    assert [r["iter"] for r in writer.rows] == [3, 6, 9, 12]  # only every eval.period
    assert [r.get("best") for r in writer.rows] == ["eval/segm/AP", None, "eval/segm/AP", None]
    assert saved == [3, 9]
    assert torch.load(tmp_path / "model_best.pth", weights_only=True)["iteration"] == 9


def test_teacher_is_judged_once_it_exists(tiny_synth, tmp_path, monkeypatch):
    cfg = tiny_config(tiny_synth, "eval.period=1")
    writer = _Writer()
    ev = PeriodicEvaluator(cfg, tmp_path, writer=writer, device=torch.device("cpu"))
    monkeypatch.setattr(ev, "_score", lambda model: {"segm": {"AP": 0.9 if model == "s" else 0.2}})
    teacher = type("EMA", (), {"module": "t"})()
    row = ev(1, model="s", teacher=teacher)
    assert row["eval/segm/AP"] == 0.9 and row["eval_teacher/segm/AP"] == 0.2
    assert row["best"] == "eval_teacher/segm/AP"  # eval.model=teacher: the teacher's value counts


def test_resume_reads_the_best_so_far(tiny_synth, tmp_path):
    (tmp_path / "metrics.jsonl").write_text(
        '{"iter": 2, "eval/segm/AP": 0.4, "best": "eval/segm/AP"}\n{"iter": 4, "eval/segm/AP": 0.3}\n')
    ev = PeriodicEvaluator(tiny_config(tiny_synth, "eval.period=2"), tmp_path, writer=_Writer(),
                           device=torch.device("cpu"))
    assert ev.best == 0.4


def test_bad_settings_are_named(tiny_synth, tmp_path):
    assert parse_best_metric("bbox/AP50") == ("bbox", "AP50")
    for bad in ("segm", "mask/AP", "segm/mAP"):
        with pytest.raises(ValueError, match="eval.best_metric"):
            parse_best_metric(bad)
    cfg = tiny_config(tiny_synth, "eval.period=2", "data.val_json=null")
    with pytest.raises(ValueError, match="data.val_json"):
        PeriodicEvaluator(cfg, tmp_path, writer=_Writer(), device=torch.device("cpu"))
    off = tiny_config(tiny_synth, "data.val_json=null")  # eval.period=0 needs nothing
    assert PeriodicEvaluator(off, tmp_path, writer=_Writer(), device=torch.device("cpu"))(5, model=None) is None


def test_demo_timing_ignores_eval_rows(tmp_path):
    from boxdepth.demo import run_timing

    (tmp_path / "metrics.jsonl").write_text(
        '{"iter": 10, "time_data": 0.1, "time_step": 1.0}\n{"iter": 10, "eval/segm/AP": 0.2}\n')
    assert run_timing(tmp_path)["train_seconds"] == 11.0
