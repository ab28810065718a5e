"""benchmarks/learning_curve.py: schedule scaling, plateau rule, and a tiny end-to-end run."""
import importlib.util
import json
from pathlib import Path

import pytest

from tests.conftest import TINY_MODEL

REPO = Path(__file__).resolve().parents[1]


def _load():
    path = REPO / "benchmarks" / "learning_curve.py"
    spec = importlib.util.spec_from_file_location("learning_curve", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(variant, budget, mask_ap, box_ap=30.0):
    return {"variant": variant, "budget": budget, "segm": {"AP": mask_ap / 100},
            "bbox": {"AP": box_ap / 100}}


def test_schedule_scales_the_demo_config():
    lc = _load()
    assert lc.scaled_schedule(250)[:5] == ["solver.max_iter=250", "solver.steps=[180,230]",
                                           "solver.warmup_iters=50", "loss.boxinst.warmup_iters=100",
                                           "distill.start_iter=180"]
    assert "solver.warmup_iters=20" in lc.scaled_schedule(100)


def test_plateau_is_the_first_doubling_that_gains_less_than_the_bound():
    lc = _load()
    rows = [_row("a", 250, 19.0), _row("a", 500, 23.0), _row("a", 1000, 24.5), _row("a", 2000, 24.9),
            _row("b", 250, 10.0), _row("b", 250, 12.0), _row("b", 500, 20.0)]
    s = lc.summarize_curve(rows, plateau_gain=1.0)
    assert s["a"]["plateau_at"] == 1000 and s["a"]["mask_AP_mean"] == [19.0, 23.0, 24.5, 24.9]
    assert s["b"]["plateau_at"] is None and s["b"]["mask_AP_mean"] == [11.0, 20.0]
    assert s["b"]["mask_AP_std"][0] == pytest.approx(1.41, abs=0.01)
    assert lc.summarize_curve(rows, plateau_gain=5.0)["a"]["plateau_at"] == 250


@pytest.mark.slow
def test_tiny_curve_writes_json_and_plot(tmp_path):
    lc = _load()
    out_json = tmp_path / "curve.json"
    sets = TINY_MODEL + ["data.num_workers=0", "input.min_size_train=[64]", "input.max_size_train=128",
                         "input.min_size_test=64", "input.max_size_test=128", "solver.ims_per_batch=2",
                         "log.period=1", "log.tensorboard=false", "log.health_periods=0"]
    assert lc.main(["--out", str(tmp_path / "runs"), "--budgets", "2", "4", "--train", "4", "--val", "2",
                    "--size", "96x64", "--json", str(out_json), "--quiet", "--set", *sets]) == 0
    result = json.loads(out_json.read_text())
    assert [(r["variant"], r["budget"]) for r in result["rows"]] == [
        ("boxinst", 2), ("mask_supervised", 2), ("boxinst", 4), ("mask_supervised", 4)]
    assert result["summary"]["boxinst"]["budgets"] == [2, 4]
    assert out_json.with_suffix(".png").stat().st_size > 1000
