"""benchmarks/compare_step.py: period parsing, the import check, and a tiny two-revision run.
No timing value is asserted."""
import importlib.util
import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import TINY_MODEL

REPO = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("compare_step", REPO / "benchmarks" / "compare_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_step_time_drops_the_warmup_period(tmp_path):
    cs = _load()
    p = tmp_path / "metrics.jsonl"
    p.write_text("".join(json.dumps({"iter": i, "time_step": t}) + "\n"
                         for i, t in [(5, 9.0), (10, 1.0), (15, 3.0), (20, 2.0)]))
    assert cs.step_time(p) == (2.0, [9.0, 1.0, 3.0, 2.0])
    p.write_text(json.dumps({"iter": 5, "time_step": 1.0}) + "\n")
    with pytest.raises(RuntimeError, match="fewer than 2 logged periods"):
        cs.step_time(p)


def test_check_import_refuses_a_tree_without_its_own_package(tmp_path):
    cs = _load()
    (tmp_path / "empty").mkdir()
    # no boxdepth/ in the tree: python finds the installed one elsewhere, which must be refused
    with pytest.raises((RuntimeError, subprocess.CalledProcessError)):
        cs.check_import(tmp_path / "empty")


@pytest.mark.slow
def test_tiny_comparison_of_head_with_itself(tmp_path):
    if subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True).returncode:
        pytest.skip("not a git checkout")
    from boxdepth.data.synthetic import generate_synthetic_dataset
    generate_synthetic_dataset(tmp_path / "data", n_train=4, n_val=1, size=(96, 64), seed=0,
                               preview=False, progress=False)
    cs = _load()
    sets = TINY_MODEL + ["data.num_workers=0", "input.min_size_train=[64]", "input.max_size_train=128",
                         "solver.ims_per_batch=2", "log.tensorboard=false", "log.health_periods=0",
                         "model.depth_head=true"]
    out = tmp_path / "cmp.json"
    assert cs.main(["--base", "HEAD", "--head", "HEAD", "--iters", "4", "--period", "2", "--rounds", "1",
                    "--data", str(tmp_path / "data"), "--work", str(tmp_path / "work"),
                    "--out", str(out), "--set", *sets]) == 0
    res = json.loads(out.read_text())
    assert res["commits"]["base"] == res["commits"]["head"]
    assert [len(v) for v in res["runs"].values()] == [1, 1]
    assert res["head_over_base"] == pytest.approx(res["median_step_s"]["head"] / res["median_step_s"]["base"])
    assert {"torch", "allocator_env", "git"} <= set(res["env"])
