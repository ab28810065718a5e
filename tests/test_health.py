"""Training health checks: a planted dead term gives exactly one warning, a healthy run none."""
from __future__ import annotations

import logging
import math

import pytest
import torch

from boxdepth.engine import trainer as trainer_mod
from boxdepth.engine.health import TrainingHealth, regression_stats
from boxdepth.engine.logging import read_metrics
from boxdepth.engine.trainer import train
from tests.conftest import tiny_config

HEALTHY_STEP = {"pos_per_image": 12.0, "box_degenerate": 0.0}


def _feed(health: TrainingHealth, periods: list[dict], step=HEALTHY_STEP) -> list[dict]:
    out = []
    for i, logged in enumerate(periods):
        health.observe_step(step)
        out += health.observe_period(i + 1, logged)
    return out


def test_constant_term_warns_once_naming_it():
    h = TrainingHealth(num_periods=3)
    periods = [{"loss_fcos_cls": 1.0 - 0.1 * i, "loss_prj": 0.4} for i in range(6)]
    warnings = _feed(h, periods)
    assert [(w["check"], w["term"], w["iteration"]) for w in warnings] == [("constant_loss", "loss_prj", 3)]
    assert "loss_prj stayed at 0.4000" in warnings[0]["message"]


def test_moving_and_zero_terms_do_not_warn():
    h = TrainingHealth(num_periods=3)
    # pairwise is 0 by design at the start of its warm-up ramp; cls moves by >= 1e-3
    periods = [{"loss_fcos_cls": 1.0 - 0.001 * i, "loss_pairwise": 0.0} for i in range(5)]
    assert _feed(h, periods) == []


def test_a_term_that_appears_later_is_watched_from_then_on():
    h = TrainingHealth(num_periods=2)
    periods = [{"loss_a": 1.0 - 0.1 * i} for i in range(3)] + [{"loss_a": 0.5, "loss_distill": 0.3}] * 2
    assert [w["term"] for w in _feed(h, periods)] == ["loss_distill"]


def test_no_positives_and_dead_regression():
    empty = {"pos_per_image": 0.0, "box_degenerate": math.nan}
    warnings = _feed(TrainingHealth(num_periods=2), [{"loss_fcos_loc": 0.0}] * 2, step=empty)
    assert [w["check"] for w in warnings] == ["no_positives"]
    dead = {"pos_per_image": 9.0, "box_degenerate": 1.0}
    warnings = _feed(TrainingHealth(num_periods=2), [{"loss_fcos_loc": 1.0}] * 4, step=dead)
    # the specific cause, not also "loss_fcos_loc is constant"
    assert [w["check"] for w in warnings] == ["dead_regression"]
    assert "model.fcos.box_init_distance" in warnings[0]["message"]


def test_regression_stats_counts_degenerate_positives():
    outputs = {"labels": torch.tensor([0, 1, 3, 3, 2]), "mask_feats": torch.zeros(2, 1, 1, 1),
               "bbox_reg": torch.tensor([[1.0, 1, 1, 1], [0, 1, 0, 2], [0, 0, 0, 0],
                                         [0, 0, 0, 0], [1, 0, 2, 0]])}
    stats = regression_stats(outputs, num_classes=3)
    assert stats == {"pos_per_image": 1.5, "box_degenerate": pytest.approx(2 / 3)}


def _warnings(run_dir) -> list[dict]:
    return [w for r in read_metrics(run_dir / "metrics.jsonl") for w in r.get("health_warnings", [])]


def test_healthy_run_has_no_warning(tiny_synth, tmp_path, caplog):
    cfg = tiny_config(tiny_synth, "solver.max_iter=6", "log.health_periods=5")
    with caplog.at_level(logging.WARNING, logger="boxdepth"):
        train(cfg, tmp_path / "run", progress=False)
    assert _warnings(tmp_path / "run") == []
    assert "training health" not in caplog.text


def test_planted_dead_term_gives_exactly_one_warning(tiny_synth, tmp_path, monkeypatch, caplog):
    real_build = trainer_mod.build_criterion

    def with_dead_term(cfg):
        crit = real_build(cfg)
        forward = crit.forward

        def dead(outputs, batch, iteration):
            return {**forward(outputs, batch, iteration), "loss_dead": torch.tensor(0.25)}
        crit.forward = dead
        return crit

    monkeypatch.setattr(trainer_mod, "build_criterion", with_dead_term)
    cfg = tiny_config(tiny_synth, "solver.max_iter=6", "log.health_periods=5")
    with caplog.at_level(logging.WARNING, logger="boxdepth"):
        train(cfg, tmp_path / "run", progress=False)
    warnings = _warnings(tmp_path / "run")
    assert [(w["check"], w["term"], w["iteration"]) for w in warnings] == [("constant_loss", "loss_dead", 5)]
    assert caplog.text.count("training health") == 1 and "loss_dead" in caplog.text


def test_dead_box_regression_is_named(tiny_synth, tmp_path):
    # a negative initial bias clamps every side: the state the zero init fell into on real photos
    cfg = tiny_config(tiny_synth, "solver.max_iter=5", "log.health_periods=5",
                      "model.fcos.box_init_distance=-5")
    train(cfg, tmp_path / "run", progress=False)
    warnings = _warnings(tmp_path / "run")
    assert [(w["check"], w["term"]) for w in warnings] == [("dead_regression", "loss_fcos_loc")]
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert all(r["box_degenerate"] == 1.0 and r["loss_fcos_loc"] == pytest.approx(1.0) for r in rows)
