"""Table 3 at the converged budget on the embedded synthetic set, over several seeds, with a
verdict per row: is its difference to BoxInst beyond the seed spread?

    python benchmarks/table3.py --out runs/table3 [--budget 1000] [--seeds 3] [--jobs 4]
        [--threads 1] [--variants ...] [--set key=value ...]
        [--json benchmarks/results/table3_<date>.json] [--readme README.md]
    python benchmarks/table3.py --from-json benchmarks/results/table3_<date>.json --readme README.md

Each (variant, seed) is one run of `boxdepth.demo.train_and_evaluate` (the demo's variants,
config and data, the schedule scaled to --budget) in OUT/b<budget>/<variant>_seed<S>/, the
layout of benchmarks/learning_curve.py, so the two share runs. The runs go to --jobs worker
processes of --threads torch threads each (a run's numbers depend on its thread count, not
on what else runs beside it); a finished run is reused (its rows.json), an interrupted one
resumes. The JSON holds every row, mean ± sample std per variant, and per variant the
difference to --reference in mask AP: Delta, its standard error sqrt(s_a^2/n_a + s_b^2/n_b),
Welch's t-test p (scipy), the mean ± std of the per-seed differences (same seed = same
initialisation and data order), and `beyond_spread` = Welch p < 0.05. --collect trains
nothing and tables the runs finished so far (the others listed under "missing"). --readme rewrites the
table between the markers `<!-- table3:begin -->` and `<!-- table3:end -->` of that file.
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
import time
from pathlib import Path
from typing import IO

from boxdepth import demo
from boxdepth.fileio import atomic_write_json, atomic_write_text

MARKERS = ("<!-- table3:begin -->", "<!-- table3:end -->")
ALPHA = 0.05


def run_one(out: Path, budget: int, variant: str, seed: int, extra: list[str]) -> None:
    """Worker: train (or resume) and evaluate one run; its rows go to <run>/rows.json."""
    data_dir = out / "data"
    rows = demo.train_and_evaluate(variant, data_dir, out / f"b{budget}", seed,
                                   demo.scaled_schedule(budget) + extra, progress=False)
    atomic_write_json(demo.run_dir_of(out / f"b{budget}", variant, seed) / "rows.json", rows)


def _rows_path(out: Path, budget: int, variant: str, seed: int) -> Path:
    return demo.run_dir_of(out / f"b{budget}", variant, seed) / "rows.json"


def _log_path(out: Path, budget: int, variant: str, seed: int) -> Path:
    """<run>.log beside the run folder (not with_suffix: "@tau0.3_seed0" has a dot of its own)."""
    run = demo.run_dir_of(out / f"b{budget}", variant, seed)
    return run.parent / f"{run.name}.log"


def _finished(path: Path) -> bool:
    final = path.parent / "model_final.pth"
    return path.exists() and final.exists() and path.stat().st_mtime >= final.stat().st_mtime


def load_imports(paths: list[Path], budget: int) -> dict[tuple[str, int], list[dict]]:
    """Rows measured earlier, keyed (variant, seed): a table3 JSON's rows ("variant", "seed")
    or a seed-0 JSON's rows ("row", "run_dir" ending in b<budget>/<variant>_seed<S>). Only a
    row named like a demo variant at this budget counts (so no --set reading sneaks in)."""
    out: dict[tuple[str, int], list[dict]] = {}
    for path in paths:
        for r in json.loads(path.read_text())["rows"]:
            if "variant" in r:
                variant, seed = r["variant"], int(r["seed"])
            else:
                run = Path(r.get("run_dir", ""))
                variant, _, s = run.name.rpartition("_seed")
                if r.get("row") != variant or run.parent.name != f"b{budget}" or not s.isdigit():
                    continue
                seed = int(s)
            source = demo.DERIVED.get(variant, variant)  # box_as_mask belongs to boxinst's run
            if source in demo.VARIANTS:
                row = {k: v for k, v in r.items() if k not in ("row", "note")}
                out.setdefault((source, seed), []).append({  # a row imported twice keeps its origin
                    **row, "variant": variant, "seed": seed, "source": r.get("source", str(path))})
    return out


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min"


def run_jobs(a: argparse.Namespace, jobs: list[tuple[str, int]], script: str = __file__) -> None:
    """Run the unfinished (variant, seed) jobs in --jobs subprocesses of `script` (which takes
    `--out --budget --run VARIANT SEED --set ...`, as this file and osd.py do); one progress
    line per finished job with the elapsed time and an ETA (mean wall time of the jobs so far)."""
    # a job is (variant, seed) at --budget, or (variant, seed, budget) (osd.py's learning curve)
    jobs = [(*j, a.budget) if len(j) == 2 else tuple(j) for j in jobs]
    todo = [j for j in jobs if not _finished(_rows_path(a.out, j[2], j[0], j[1])) and j[:2] not in a.imported]
    print(f"[table3] {len(jobs) - len(todo)} of {len(jobs)} runs finished already; "
          f"{len(todo)} to run, {a.jobs} at a time, {a.threads} thread(s) each")
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "MKL_NUM_THREADS": str(a.threads)}
    running: dict[subprocess.Popen, tuple[str, int, float, Path, IO[str]]] = {}
    t0, done, failed, walls = time.time(), 0, [], []
    while todo or running:
        while todo and len(running) < a.jobs:
            variant, seed, budget = todo.pop(0)
            log = _log_path(a.out, budget, variant, seed)
            log.parent.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, script, "--out", str(a.out), "--budget", str(budget),
                   "--run", variant, str(seed), "--set", *a.set]
            fh = log.open("w")
            try:
                proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
            except BaseException:
                fh.close()
                raise
            running[proc] = (variant, seed, time.time(), log, fh)
        time.sleep(2)
        for proc in [p for p in running if p.poll() is not None]:
            variant, seed, start, log, fh = running.pop(proc)
            fh.close()
            done += 1
            if proc.returncode:
                failed.append(f"{variant} seed {seed} (exit {proc.returncode}, log {log})")
            walls.append(time.time() - start)
            left = len(todo) + len(running)
            eta = statistics.fmean(walls) * left / a.jobs  # the jobs left, a.jobs at a time
            print(f"[table3] {done}/{done + left} {variant} seed {seed}: {walls[-1]:.0f} s"
                  f"{' FAILED' if proc.returncode else ''}; elapsed {_minutes(time.time() - t0)}, "
                  f"ETA {_minutes(eta)}", flush=True)
    if failed:
        raise SystemExit("[table3] runs failed: " + "; ".join(failed))


def compare(rows: list[dict], variant: str, reference: str) -> dict | None:
    """Mask AP difference of `variant` to `reference` (percent points, see the docstring)."""
    from scipy import stats

    a = {r["seed"]: 100 * r["segm"]["AP"] for r in rows if r["variant"] == variant}
    b = {r["seed"]: 100 * r["segm"]["AP"] for r in rows if r["variant"] == reference}
    if variant == reference or len(a) < 2 or len(b) < 2:
        return None
    delta = statistics.fmean(a.values()) - statistics.fmean(b.values())
    se = (statistics.variance(a.values()) / len(a) + statistics.variance(b.values()) / len(b)) ** 0.5
    p = float(stats.ttest_ind(list(a.values()), list(b.values()), equal_var=False).pvalue) if se > 0 else 0.0
    paired = [a[s] - b[s] for s in sorted(a.keys() & b.keys())]
    return {"delta": round(delta, 4), "se": round(se, 4), "welch_p": round(p, 4),
            "paired_delta_mean": round(statistics.fmean(paired), 4) if paired else None,
            "paired_delta_std": round(statistics.stdev(paired), 4) if len(paired) > 1 else None,
            "beyond_spread": p < ALPHA, "seeds": len(a), "reference_seeds": len(b)}


def verdict_text(c: dict) -> str:
    """compare()'s result as a table cell: "+1.2 ± 0.4, p = 0.030: **better**"."""
    word = ("**better**" if c["delta"] > 0 else "**worse**") if c["beyond_spread"] else "within spread"
    p = "p < 0.001" if c["welch_p"] < 0.001 else f"p = {c['welch_p']:.3f}"
    return f"{c['delta']:+.1f} ± {c['se']:.1f}, {p}: {word}"


def markdown_table(result: dict) -> str:
    """The README's table: one line per variant, mask AP mean ± std and the verdict."""
    ref = result["reference"]
    lines = ["| variant | box AP | mask AP | mask AP50 | mask AP75 | vs " + ref + " (mask AP) | seeds |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, e in result["summary"].items():
        def cell(k):  # one seed has no spread: no "± 0.0" that would read as a measured one
            sd = f" ± {100 * e[f'{k}_std']:.1f}" if e["n"] > 1 else ""
            return f"{100 * e[f'{k}_mean']:.1f}{sd}"
        diff = (100 * (e["segm_AP_mean"] - result["summary"][ref]["segm_AP_mean"])
                if ref in result["summary"] else None)
        verdict = verdict_cell(name, ref, result["comparisons"].get(name), diff,
                               "one seed" if e["n"] < 2 else f"one {ref} seed")
        lines.append(f"| `{name}` | {cell('bbox_AP')} | {cell('segm_AP')} | {cell('segm_AP50')} | "
                     f"{cell('segm_AP75')} | {verdict} | {e['n']} |")
    imp = result.get("imported") or {}
    if imp.get("runs"):
        lines.append(f"\nTaken from {', '.join(imp['from'])} (the same runs made earlier, "
                     f"not rerun here): {_by_variant(imp['runs'])}.")
    if result.get("missing"):
        n = len(result["missing"])
        lines.append(f"\nNot run yet ({n} run{'s' if n > 1 else ''}): {_by_variant(result['missing'])}.")
    return "\n".join(lines)


def verdict_cell(name: str, reference: str, comparison: dict | None, diff: float | None,
                 few: str | None = None) -> str:
    """A table's "vs reference" cell: the Welch verdict where `compare` had 2 seeds on both
    sides, "reference" on the reference row, else the bare difference `diff` marked as
    having no spread (`few` says why, e.g. "one seed"), or "-" without a reference."""
    if comparison is not None:
        return verdict_text(comparison)
    if name == reference:
        return "reference"
    if diff is not None:
        return f"{diff:+.1f} ({few + ': ' if few else ''}no spread to compare with)"
    return "-"


def _by_variant(runs: list[str]) -> str:
    """["a seed 0", "a seed 1", "b seed 2"] -> "a seeds 0, 1; b seed 2" (one entry per variant)."""
    seeds: dict[str, list[str]] = {}
    for run in runs:
        name, _, seed = run.rpartition(" seed ")
        seeds.setdefault(name, []).append(seed)
    return "; ".join(f"{n} seed{'s' if len(s) > 1 else ''} {', '.join(s)}" for n, s in seeds.items())


def rewrite_readme(readme: Path, table: str, source: str, markers: tuple[str, str] = MARKERS,
                   script: str = "benchmarks/table3.py") -> None:
    text = readme.read_text()
    begin, end = (text.find(m) for m in markers)
    if begin < 0 or end < begin:
        raise SystemExit(f"{readme}: no {markers[0]} ... {markers[1]} block to rewrite")
    block = f"{markers[0]}\n<!-- generated from {source} by {script} -->\n{table}\n"
    atomic_write_text(readme, text[:begin] + block + text[end:])


def gather(a: argparse.Namespace, names: list[str]) -> tuple[list[dict], list[str], list[str]]:
    """(rows of the finished or imported runs, "name seed S" missing, "name seed S" imported)."""
    rows, missing, imported = [], [], []
    for seed in range(a.seeds):
        for name in names:
            path = _rows_path(a.out, a.budget, name, seed)
            if _finished(path):
                rows += json.loads(path.read_text())
            elif (name, seed) in a.imported:
                rows += a.imported[name, seed]
                imported.append(f"{name} seed {seed}")
            else:  # only with --collect: the jobs ran otherwise
                missing.append(f"{name} seed {seed}")
    return rows, missing, imported


def tabulate(rows: list[dict], reference: str) -> dict:
    """{"summary": mean ± std per variant, "comparisons": compare() to `reference` per variant}."""
    order = list(dict.fromkeys(r["variant"] for r in rows))
    summary = demo.summarize(rows)
    return {"summary": {n: summary[n] for n in order},
            "comparisons": {n: compare(rows, n, reference) for n in order}}


def collect(a: argparse.Namespace, names: list[str], data: dict) -> dict:
    rows, missing, imported = gather(a, names)
    return {"what": f"Table 3 at {a.budget} iterations on the embedded synthetic set, "
                    f"{a.seeds} seeds, {a.threads} thread(s) per run",
            "command": a.command, "reference": a.reference,
            "alpha": ALPHA, "budget": a.budget, "seeds": a.seeds, "variants": {n: demo.VARIANTS[n] for n in names},
            "extra": demo.scaled_schedule(a.budget) + a.set,
            "environment": {"threads_per_run": a.threads, "jobs": a.jobs,
                            **{k: os.environ.get(k) for k in ("MALLOC_ARENA_MAX", "LD_PRELOAD")}},
            "data": {**data, "size": list(data["size"])}, "missing": missing,
            "imported": {"runs": imported, "from": [str(p) for p in a.import_rows]}, "rows": rows,
            **tabulate(rows, a.reference)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--budget", type=int, default=demo.FULL_BUDGET)
    ap.add_argument("--seeds", type=int, default=demo.FULL_SEEDS)
    ap.add_argument("--variants", nargs="+", default=demo.FULL_VARIANTS, choices=list(demo.VARIANTS))
    ap.add_argument("--reference", default="boxinst")
    ap.add_argument("--jobs", type=int, default=2, help="runs at once")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--train", type=int, default=demo.DEMO_DATA["n_train"])
    ap.add_argument("--val", type=int, default=demo.DEMO_DATA["n_val"])
    ap.add_argument("--size", default="x".join(map(str, demo.DEMO_DATA["size"])), help="WxH of the images")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--readme", type=Path, default=None)
    ap.add_argument("--collect", action="store_true",
                    help="train nothing: the table of the runs finished so far, the rest listed as missing")
    ap.add_argument("--import-rows", type=Path, nargs="*", default=[], metavar="JSON",
                    help="rows of runs made earlier (same budget, config and threads): those "
                         "(variant, seed) are not rerun and are marked as imported")
    ap.add_argument("--from-json", type=Path, default=None, help="only rewrite --readme from this JSON")
    ap.add_argument("--run", nargs=2, metavar=("VARIANT", "SEED"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    a.command = shlex.join(["python", "benchmarks/table3.py", *(sys.argv[1:] if argv is None else argv)])
    if a.run:
        run_one(a.out, a.budget, a.run[0], int(a.run[1]), a.set)
        return 0
    if a.from_json:
        result = json.loads(a.from_json.read_text())
        path = a.from_json
    else:
        if a.out is None:
            ap.error("--out is required (or --from-json)")
        names = list(dict.fromkeys([a.reference, *a.variants]))
        w, h = (int(v) for v in a.size.split("x"))
        data = {**demo.DEMO_DATA, "n_train": a.train, "n_val": a.val, "size": (w, h)}
        data_dir, _ = demo.prepare_demo_data(a.out, data, progress=False)  # before the workers
        if any("{exact}" in o for n in names for o in demo.VARIANTS[n]):
            demo.prepare_demo_data(a.out, {**data, "depth_error": 0.0}, progress=False,
                                   name=demo.exact_depth_dir(data_dir).name)
        a.imported = load_imports(a.import_rows, a.budget)
        t0 = time.time()
        if not a.collect:
            run_jobs(a, [(n, s) for s in range(a.seeds) for n in names])
        result = collect(a, names, data)
        result["seconds_this_invocation"] = round(time.time() - t0, 1)
        path = a.json or Path("benchmarks/results") / f"table3_{datetime.date.today()}.json"
        atomic_write_json(path, result)
        print(f"wrote {path}" + (f"; not finished, left out: {', '.join(result['missing'])}"
                                 if result["missing"] else ""))
    table = markdown_table(result)
    print(table)
    if a.readme:
        rewrite_readme(a.readme, table, str(path))
        print(f"rewrote the table in {a.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
