"""A training step before and after a change: two git revisions, the real `boxdepth train`.

Each revision is exported with `git archive` into a temporary folder and run as
`python -m boxdepth.cli train CONFIG ...` with that folder first on PYTHONPATH (the
installed dependencies are shared), on the same synthetic data, for `--iters` iterations.
The revisions alternate for `--rounds` rounds (A B A B ...) so that machine drift hits
both alike; a run's step time is the median of its logged periods' mean `time_step`
(metrics.jsonl) after the first period (warm-up). Reports the median over rounds per
revision and the ratio head / base measured in this one invocation.

    python benchmarks/compare_step.py --base 3f9cb40 --head HEAD [--config synth_boxinst]
        [--iters 40] [--period 5] [--rounds 3] [--data DIR] [--set key=value ...]
        [--out benchmarks/results/compare_step_<date>.json]

Without `--data` the demo's synthetic set (300 train images at 256x192) is generated once
under the work folder. `--set` overrides reach both revisions, so use keys that both know.
The JSON records the command, both commits, every run's periods and the allocator and
thread environment (set e.g. OMP_NUM_THREADS or MALLOC_* in the calling shell; they are
passed on to both runs unchanged).
"""
from __future__ import annotations

import argparse
import datetime
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (benchmarks/ is a folder of scripts, not a package)

import torch  # noqa: E402

from boxdepth.engine.logging import read_metrics  # noqa: E402
from boxdepth.fileio import atomic_write_json  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def export_revision(rev: str, dest: Path) -> str:
    """`git archive REV` unpacked into dest; returns the full commit hash."""
    commit = subprocess.run(["git", "rev-parse", rev], cwd=REPO, check=True, capture_output=True,
                            text=True).stdout.strip()
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", commit], cwd=REPO, check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return commit


def step_time(metrics_path: Path) -> tuple[float, list[float]]:
    """Median of the logged periods' mean step time, the first period dropped."""
    periods = [r["time_step"] for r in read_metrics(metrics_path) if "time_step" in r]
    if len(periods) < 2:
        raise RuntimeError(f"{metrics_path}: fewer than 2 logged periods; raise --iters")
    return statistics.median(periods[1:]), periods


def check_import(tree: Path) -> None:
    """Refuse to time the wrong code: the tree's own boxdepth must be the one imported."""
    where = subprocess.run([sys.executable, "-c", "import boxdepth; print(boxdepth.__file__)"],
                           env=dict(os.environ, PYTHONPATH=str(tree)), cwd=tree, check=True,
                           capture_output=True, text=True).stdout.strip()
    if not Path(where).resolve().is_relative_to(tree.resolve()):
        raise RuntimeError(f"{tree}: python imports boxdepth from {where}, not from the tree")


def run_once(tree: Path, args, data: Path, out: Path) -> tuple[float, list[float]]:
    cmd = [sys.executable, "-m", "boxdepth.cli", "train", args.config, "--out", str(out),
           f"data.train_json={data}/train.json", f"data.image_root={data}/images",
           f"data.depth_root={data}/depth", "data.val_json=null", f"solver.max_iter={args.iters}",
           f"log.period={args.period}", f"solver.checkpoint_period={10 * args.iters}", *args.set]
    # cwd = the tree: `python -m` puts the working directory first on sys.path, ahead of
    # PYTHONPATH and of an editable install of the checkout this script lives in
    env = dict(os.environ, PYTHONPATH=str(tree))
    proc = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{shlex.join(cmd)} failed in {tree}:\n{proc.stderr[-3000:]}")
    return step_time(out / "metrics.jsonl")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True)
    ap.add_argument("--head", default="HEAD")
    ap.add_argument("--config", default="synth_boxinst")
    ap.add_argument("--iters", type=int, default=40)
    ap.add_argument("--period", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    work = (a.work or Path(tempfile.mkdtemp(prefix="compare_step_"))).resolve()
    data = a.data.resolve() if a.data else None
    if data is None:
        data = work / "data"
        if not (data / "train.json").exists():
            from boxdepth.data.synthetic import generate_synthetic_dataset
            generate_synthetic_dataset(data, n_train=300, n_val=1, seed=0, progress=False)
    commits = {name: export_revision(rev, work / name) for name, rev in (("base", a.base), ("head", a.head))}
    for name in commits:
        check_import(work / name)
    runs = {"base": [], "head": []}
    for r in range(a.rounds):
        for name in ("base", "head"):
            median, periods = run_once(work / name, a, data, work / f"run_{name}_{r}")
            runs[name].append({"round": r, "step_s": median, "periods_s": periods})
            print(f"round {r} {name:4s} {commits[name][:10]}: {median * 1000:.0f} ms/iter", flush=True)
    med = {n: statistics.median(x["step_s"] for x in v) for n, v in runs.items()}
    ratio = med["head"] / med["base"]
    print(f"median step: base {med['base'] * 1000:.0f} ms, head {med['head'] * 1000:.0f} ms; "
          f"head/base = {ratio:.3f} (speed-up {1 / ratio:.2f}x)")
    out = a.out or REPO / "benchmarks" / "results" / f"compare_step_{datetime.date.today()}.json"
    atomic_write_json(out, {"benchmark": "compare_step", "command": shlex.join([sys.executable, *sys.argv]),
                            "args": {k: str(v) for k, v in vars(a).items()}, "commits": commits,
                            "runs": runs, "median_step_s": med, "head_over_base": ratio,
                            "env": common.environment(torch.device("cpu"), REPO)})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
