"""The R-50 training step of two git revisions side by side: `train_step.py` of each.

Each revision is exported with `git archive` into a temporary folder (as compare_step.py
does) and `benchmarks/train_step.py --preset PRESET --sizes S` runs from that folder with
only that tree on PYTHONPATH, alternating base and head for every size, `--rounds` times
(round 0: base 512, head 512, base 800, head 800; round 1: the same ...), so machine drift
hits both alike. Every run is a fresh process with the same environment (threads via
`--threads`; allocator and OpenMP variables as set in the calling shell, recorded).

Which script times a revision: its *own* `benchmarks/train_step.py` when the revision has
one (7535ba5 does), so each side is measured by the code of its day; a revision without
one is timed by the head's script with the base's package on PYTHONPATH. The JSON says
which (`scripts`).

    python benchmarks/compare_train_step.py --base 7535ba5 [--head HEAD] [--preset r50]
        [--sizes 512 800] [--rounds 5] [--iters 5] [--warmup 1] [--threads 2]
        [--set KEY=VALUE ...] [--work DIR] [--out benchmarks/results/compare_train_step_<date>.json]

A run's step time is train_step.py's median training step (`train.total.median`); per
revision and size the median over rounds is taken; `ratio_<size>` = head / base. The JSON
holds the command, both commits, the scripts used, every run and the environment.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (benchmarks/ is a folder of scripts, not a package)
from compare_step import REPO, check_import, export_revision  # noqa: E402

SCRIPT = "benchmarks/train_step.py"
NAMES = ("base", "head")


def has_own_script(commit: str) -> bool:
    """Whether `commit` has its own benchmarks/train_step.py."""
    return subprocess.run(["git", "cat-file", "-e", f"{commit}:{SCRIPT}"], cwd=REPO,
                          capture_output=True).returncode == 0


def plan(sizes: list[int], rounds: int) -> list[tuple[int, int, str]]:
    """(round, size, revision) in the order they run: base and head alternate per size."""
    return [(r, s, name) for r in range(rounds) for s in sizes for name in NAMES]


def train_step_command(script: Path, a, size: int, out: Path) -> list[str]:
    cmd = [sys.executable, str(script), "--device", "cpu", "--preset", a.preset, "--sizes", str(size),
           "--iters", str(a.iters), "--warmup", str(a.warmup), "--out", str(out)]
    if a.threads:
        cmd += ["--threads", str(a.threads)]
    for kv in a.set:
        cmd += ["--set", kv]
    return cmd


def run_once(tree: Path, script: Path, a, size: int, out: Path) -> dict:
    """One train_step.py run of `tree`'s package; returns its step-time summary."""
    cmd = train_step_command(script, a, size, out)
    # cwd = the tree and only the tree on PYTHONPATH: its own boxdepth is the one imported
    proc = subprocess.run(cmd, env=dict(os.environ, PYTHONPATH=str(tree)), cwd=tree,
                          capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{shlex.join(cmd)} failed in {tree}:\n{proc.stderr[-3000:]}")
    result = json.loads(out.read_text())["results"][0]
    train = result["train"]
    return {"step_s": train["total"]["median"], "step_s_all": train["total"],
            "images_per_s": train["images_per_s"], "groups_median_s": {
                k: v["median"] for k, v in train["groups"].items()},
            "cpu_contention": result["setting"].get("cpu_contention"), "losses": train.get("losses")}


def assemble(a, commits: dict, scripts: dict, runs: dict, command: str, env: dict) -> dict:
    """The JSON: per-revision, per-size medians over rounds and ratio_<size> = head / base."""
    med = {name: {str(s): statistics.median(r["step_s"] for r in runs[name] if r["size"] == s)
                  for s in a.sizes if any(r["size"] == s for r in runs[name])} for name in NAMES}
    ratios = {s: med["head"][s] / med["base"][s] for s in med["base"] if s in med["head"]}
    out = {"benchmark": "compare_train_step", "command": command,
           "args": {k: (v if isinstance(v, (int, float, list, type(None))) else str(v))
                    for k, v in vars(a).items()},
           "base_commit": commits["base"], "head_commit": commits["head"], "commits": commits,
           "scripts": scripts, "runs": runs, "median_step_s": med, "ratios": ratios, "env": env}
    out.update({f"ratio_{s}": r for s, r in ratios.items()})
    return out


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="base revision, e.g. 7535ba5")
    ap.add_argument("--head", default="HEAD")
    ap.add_argument("--preset", default="r50", help="train_step.py --preset (default r50)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 800], help="short sides (default 512 800)")
    ap.add_argument("--rounds", type=int, default=5,
                    help="alternating rounds (default 5: one revision's runs spread 10-20 %% between processes here)")
    ap.add_argument("--iters", type=int, default=5, help="timed iterations per run (default 5)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: train_step.py's)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for both revisions (use keys both know)")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    if min(a.rounds, a.iters) < 1 or a.warmup < 0:
        ap.error("--rounds and --iters must be >= 1, --warmup >= 0")
    return a


def main(argv=None) -> dict:
    a = parse_args(argv)
    command = shlex.join([sys.executable, *(sys.argv if argv is None else [__file__, *argv])])
    work = (a.work or Path(tempfile.mkdtemp(prefix="compare_train_step_"))).resolve()
    commits = {name: export_revision(rev, work / name) for name, rev in (("base", a.base), ("head", a.head))}
    for name in NAMES:
        check_import(work / name)
    scripts, script_paths = {}, {}
    for name in NAMES:
        own = has_own_script(commits[name])
        scripts[name] = "own" if own else "head's (the revision has no benchmarks/train_step.py)"
        script_paths[name] = work / (name if own else "head") / SCRIPT
    runs = {name: [] for name in NAMES}
    for r, size, name in plan(a.sizes, a.rounds):
        res = run_once(work / name, script_paths[name], a, size, work / f"run_{name}_{size}_{r}.json")
        runs[name].append({"round": r, "size": size, **res})
        print(f"round {r} {size} {name:4s} {commits[name][:10]}: {res['step_s'] * 1000:.0f} ms/iter", flush=True)
    from boxdepth.fileio import atomic_write_json
    import torch
    out = assemble(a, commits, scripts, runs, command, common.environment(torch.device("cpu"), REPO))
    for s, ratio in out["ratios"].items():
        print(f"{s}: base {out['median_step_s']['base'][s] * 1000:.0f} ms, head "
              f"{out['median_step_s']['head'][s] * 1000:.0f} ms; head/base = {ratio:.3f}")
    path = a.out or REPO / "benchmarks" / "results" / f"compare_train_step_{datetime.date.today()}.json"
    atomic_write_json(path, out)
    print(f"wrote {path}")
    return out


if __name__ == "__main__":
    main()
