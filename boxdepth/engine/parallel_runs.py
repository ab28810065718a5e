"""Several independent trainings at once on a multi-core CPU (`boxdepth demo --jobs N`).

A CPU training step does not scale linearly with threads: on the demo's config a step took
1.85-1.92 s with one thread and 1.11-1.31 s with two (2-core VM, 2026-12-07), so two runs
side by side with one thread each finish sooner than the same two one after the other with
two threads. `worker_plan` picks how many runs go at once and how many threads each gets;
`run_parallel` starts each run in a fresh (spawned) process, shows one progress bar per run
fed from the run's `metrics.jsonl` (the trainer logs it every `log.period` iterations), and
returns each task's result in the order of the tasks.

A task is a `Task(label, fn, kwargs, run_dir, total)`: `fn(**kwargs)` runs in a fresh
interpreter (`python -m boxdepth.engine.parallel_runs`) with its stdout/stderr appended to
`log` (default `<run_dir>.log`); `fn` must be a module-level function and its arguments and
return value picklable. A worker that fails stops the others (their runs resume from their last
checkpoint) and raises `RuntimeError` naming the run and its log, with the log's last lines.
"""
from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

POLL_S = 1.0
LOG_TAIL_LINES = 15


@dataclass
class Task:
    label: str
    fn: Callable[..., Any]
    kwargs: dict
    run_dir: Path
    total: int                       # training iterations, for the progress bar
    log: Path | None = None          # default <run_dir>.log

    def log_path(self) -> Path:
        return Path(self.log) if self.log else Path(str(self.run_dir) + ".log")


def thread_budget() -> int:
    """The cores a run may use: torch's thread count, which follows OMP_NUM_THREADS and
    otherwise the physical cores this process may run on; one run at a time would get them all."""
    import torch

    return max(1, torch.get_num_threads())


def worker_plan(n_runs: int, device, jobs: int | None = None, cores: int | None = None) -> tuple[int, int]:
    """(runs at once, threads per run) for `device` ("cpu", "cuda:0" or a torch.device). Auto
    (`jobs=None`): one run at a time on a GPU or on one core, else up to one run per core with
    the cores shared out; `jobs=1` is the old sequential behaviour (every thread to one run)."""
    cores = cores or thread_budget()
    on_cpu = getattr(device, "type", str(device).split(":")[0]) == "cpu"
    if jobs is None:
        jobs = min(n_runs, cores) if on_cpu and cores >= 2 else 1
    jobs = max(1, min(jobs, max(n_runs, 1)))
    return jobs, max(1, cores // jobs)


def _worker(task_path: str) -> int:
    """`python -m boxdepth.engine.parallel_runs TASK.pkl`: run one task in this process (its
    output already goes to the run's log); the return value goes to the task's result path,
    atomically. A fresh interpreter, not a multiprocessing child: nothing of the caller's
    __main__ is imported again."""
    with open(task_path, "rb") as f:
        paths, payload = pickle.load(f)
    sys.path[:0] = [p for p in paths if p not in sys.path]  # as multiprocessing's spawn does
    fn, kwargs, threads, result_path = pickle.loads(payload)
    import torch

    torch.set_num_threads(threads)
    result = fn(**kwargs)
    tmp = result_path + ".tmp"
    with open(tmp, "wb") as f:
        pickle.dump(result, f)
    os.replace(tmp, result_path)
    return 0


def _start(task: Task, task_path: Path, result_path: Path, threads: int) -> subprocess.Popen:
    with open(task_path, "wb") as f:
        pickle.dump((list(sys.path), pickle.dumps((task.fn, task.kwargs, threads, str(result_path)))), f)
    task.log_path().parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}  # OpenMP's pool sized from the start
    with open(task.log_path(), "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "boxdepth.engine.parallel_runs", str(task_path)],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)


def _last_iter(run_dir: Path) -> int:
    """The last training iteration the run has logged (0 before its first log)."""
    from boxdepth.engine.logging import read_metrics

    try:
        rows = read_metrics(Path(run_dir) / "metrics.jsonl")
    except OSError:
        return 0
    windows = [r for r in rows if "time_step" in r]  # training windows, not evaluation rows
    return int(windows[-1]["iter"]) if windows else 0


def _tail(path: Path, n: int = LOG_TAIL_LINES) -> str:
    try:
        lines = path.read_text(errors="replace").replace("\r", "\n").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join([line for line in lines if line.strip()][-n:])


def run_parallel(tasks: list[Task], jobs: int, threads: int, progress: bool = True) -> list[Any]:
    """Run the tasks `jobs` at a time, `threads` torch threads each; results in task order."""
    from tqdm import tqdm

    tmp = Path(tempfile.mkdtemp(prefix="boxdepth-runs-"))
    result_paths = [tmp / f"result_{i}.pkl" for i in range(len(tasks))]
    bars = {i: tqdm(total=t.total, desc=t.label, position=i, leave=True, disable=not progress,
                    unit="it", dynamic_ncols=True) for i, t in enumerate(tasks)}
    waiting, running, results = list(range(len(tasks))), {}, {}
    try:
        while waiting or running:
            while waiting and len(running) < jobs:
                i = waiting.pop(0)
                running[i] = _start(tasks[i], tmp / f"task_{i}.pkl", result_paths[i], threads)
            time.sleep(POLL_S)
            for i, p in list(running.items()):
                bar = bars[i]
                bar.update(max(0, min(_last_iter(tasks[i].run_dir), bar.total) - bar.n))
                if p.poll() is None:
                    continue
                del running[i]
                if p.returncode != 0 or not result_paths[i].exists():
                    raise RuntimeError(f"{tasks[i].label}: the run failed (exit code {p.returncode}); "
                                       f"its log {tasks[i].log_path()} ends with:\n"
                                       f"{_tail(tasks[i].log_path())}")
                bar.update(bar.total - bar.n)
                bar.set_postfix_str("done")
                with open(result_paths[i], "rb") as f:
                    results[i] = pickle.load(f)
    finally:
        for p in running.values():  # a failure or Ctrl-C: the others resume from a checkpoint
            p.terminate()
        for p in running.values():
            p.wait()
        for bar in bars.values():
            bar.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return [results[i] for i in range(len(tasks))]


if __name__ == "__main__":
    raise SystemExit(_worker(sys.argv[1]))
