"""engine/parallel_runs: several trainings at once, one worker process each."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from boxdepth.engine.parallel_runs import Task, _last_iter, run_parallel, worker_plan


def fake_run(run_dir: str, iters: int, value: int, fail: bool = False) -> dict:
    """Stands in for a training: logs iterations like the trainer, returns a picklable row."""
    import torch

    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    print(f"training {run.name}", flush=True)
    with open(run / "metrics.jsonl", "a") as f:
        for it in range(1, iters + 1):
            f.write(json.dumps({"iter": it, "loss": 1.0, "time_data": 0.0, "time_step": 0.01}) + "\n")
    if fail:
        raise ValueError(f"bad input in {run.name}")
    return {"value": value, "threads": torch.get_num_threads()}


def sleep_run(run_dir: str, seconds: float) -> None:
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    (Path(run_dir) / "started").write_text("1")
    time.sleep(seconds)
    (Path(run_dir) / "finished").write_text("1")


def test_worker_plan_shares_the_cores_and_keeps_gpus_sequential():
    assert worker_plan(2, "cpu", cores=2) == (2, 1)
    assert worker_plan(3, "cpu", cores=16) == (3, 5)
    assert worker_plan(3, "cpu", cores=2) == (2, 1)
    assert worker_plan(1, "cpu", cores=8) == (1, 8)
    assert worker_plan(3, "cpu", cores=1) == (1, 1)
    assert worker_plan(3, "cuda", cores=16) == (1, 16)
    assert worker_plan(2, torch.device("cpu"), cores=2) == (2, 1)      # as resolve_device returns it
    assert worker_plan(2, torch.device("cuda", 0), cores=2) == (1, 2)
    assert worker_plan(3, "cpu", jobs=1, cores=2) == (1, 2)      # --jobs 1: one after the other
    assert worker_plan(2, "cpu", jobs=8, cores=4) == (2, 2)      # never more workers than runs


def test_last_iter_reads_training_windows_only(tmp_path):
    assert _last_iter(tmp_path) == 0  # no metrics yet
    (tmp_path / "metrics.jsonl").write_text(
        json.dumps({"iter": 10, "time_step": 1.0}) + "\n" + json.dumps({"iter": 20, "time_step": 1.0}) + "\n"
        + json.dumps({"iter": 20, "segm": {"AP": 0.1}}) + "\n" + '{"iter": 3')  # eval row, torn line
    assert _last_iter(tmp_path) == 20


def test_run_parallel_returns_results_in_task_order_with_logs(tmp_path):
    tasks = [Task(label=f"run{k}", fn=fake_run, kwargs=dict(run_dir=str(tmp_path / f"run{k}"), iters=k + 2,
                                                              value=10 * k),
                  run_dir=tmp_path / f"run{k}", total=k + 2) for k in range(3)]
    results = run_parallel(tasks, jobs=2, threads=1, progress=False)
    assert [r["value"] for r in results] == [0, 10, 20]
    assert all(r["threads"] == 1 for r in results)  # each worker got its share of threads
    for k in range(3):
        assert "training run" in (tmp_path / f"run{k}.log").read_text()
        assert _last_iter(tmp_path / f"run{k}") == k + 2


def test_run_parallel_failure_names_the_run_and_its_log_and_stops_the_others(tmp_path):
    slow = tmp_path / "slow"
    tasks = [Task(label="slow", fn=sleep_run, kwargs=dict(run_dir=str(slow), seconds=60),
                  run_dir=slow, total=1),
             Task(label="broken", fn=fake_run, kwargs=dict(run_dir=str(tmp_path / "broken"), iters=1, value=0,
                                                            fail=True),
                  run_dir=tmp_path / "broken", total=1)]
    t0 = time.time()
    with pytest.raises(RuntimeError) as err:
        run_parallel(tasks, jobs=2, threads=1, progress=False)
    msg = str(err.value)
    assert "broken" in msg and str(tmp_path / "broken.log") in msg
    assert "ValueError: bad input in broken" in msg  # the log's last lines come with it
    assert time.time() - t0 < 50  # the slow run was stopped, not waited for
    assert not (slow / "finished").exists()


def test_thread_budget_follows_torch_threads_so_omp_num_threads_limits_them():
    from boxdepth.engine.parallel_runs import thread_budget

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert thread_budget() == 1
        assert worker_plan(2, "cpu") == (1, 1)  # one core: one run at a time
    finally:
        torch.set_num_threads(before)
