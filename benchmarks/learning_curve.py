"""Learning curve on the embedded synthetic set: mask AP against the training budget.

A loss ablation means something only where the model has converged (a model far from
convergence ranks losses by how fast they act). This trains each variant at each budget
as its own run, with the demo config's schedule scaled to the budget (LR decays at 72 % and
92 %, warm-up 20 % capped at the config's, pairwise ramp 40 %, distillation from 72 %), and
finds the plateau: the first budget whose doubling gains less than `--plateau` mask AP.

    python benchmarks/learning_curve.py --out runs/curve [--budgets 250 500 1000 2000]
        [--variants boxinst mask_supervised] [--seeds 1] [--train 300 --val 100 --size 256x192]
        [--set key=value ...] [--json benchmarks/results/learning_curve_<date>.json]

Runs live in OUT/b<budget>/<variant>_seed<S>/ and are reused when finished (an interrupted
curve continues). Writes the JSON (rows, mean/std per variant and budget, the plateau, the
command, the environment) and a PNG plot beside it (mask AP, log-2 budget axis, error bars =
std over seeds). Every figure comes from a run of this script: nothing is extrapolated.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import statistics
import sys
from pathlib import Path

import torch

from boxdepth import demo
from boxdepth.demo import scaled_schedule
from boxdepth.fileio import atomic_write_json
from boxdepth.viz.chart import line_chart
from boxdepth.viz.draw import save_png


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize_curve(rows: list[dict], plateau_gain: float) -> dict:
    """{variant: {"budgets": [...], "mask_AP_mean", "mask_AP_std", "box_AP_mean", "plateau_at"}}."""
    out = {}
    for variant in dict.fromkeys(r["variant"] for r in rows):
        budgets = sorted({r["budget"] for r in rows if r["variant"] == variant})
        stats = {"budgets": budgets, "mask_AP_mean": [], "mask_AP_std": [], "box_AP_mean": []}
        for b in budgets:
            sel = [r for r in rows if r["variant"] == variant and r["budget"] == b]
            m, s = _mean_std([100 * r["segm"]["AP"] for r in sel])
            stats["mask_AP_mean"].append(round(m, 2))
            stats["mask_AP_std"].append(round(s, 2))
            stats["box_AP_mean"].append(round(_mean_std([100 * r["bbox"]["AP"] for r in sel])[0], 2))
        ap = stats["mask_AP_mean"]
        stats["plateau_at"] = next((b for b, b2, m, m2 in zip(budgets, budgets[1:], ap, ap[1:])
                                    if b2 == 2 * b and m2 - m < plateau_gain), None)
        out[variant] = stats
    return out


def plot_curve(summary: dict, path: Path, title: str = "synthetic set: mask AP vs training budget") -> None:
    series = {f"{v} mask AP": list(zip(st["budgets"], st["mask_AP_mean"], st["mask_AP_std"]))
              for v, st in summary.items()}
    save_png(path, line_chart(series, title=title,
                              xlabel="iterations (batch of the config)", ylabel="mask AP",
                              log_x=True))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--budgets", type=int, nargs="+", default=[250, 500, 1000, 2000])
    ap.add_argument("--variants", nargs="+", default=["boxinst", "mask_supervised"],
                    choices=sorted(demo.VARIANTS))
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--train", type=int, default=300)
    ap.add_argument("--val", type=int, default=100)
    ap.add_argument("--size", default="256x192", help="WxH of the synthetic images")
    ap.add_argument("--plateau", type=float, default=1.0, help="mask AP gained over a doubling")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    w, h = (int(v) for v in a.size.split("x"))
    data = {**demo.DEMO_DATA, "n_train": a.train, "n_val": a.val, "size": (w, h)}
    data_dir, _ = demo.prepare_demo_data(a.out, data, progress=not a.quiet)
    rows = []
    for budget in a.budgets:
        for variant in a.variants:
            for seed in range(a.seeds):
                rows += [dict(r, budget=budget) for r in demo.train_and_evaluate(
                    variant, data_dir, a.out / f"b{budget}", seed, scaled_schedule(budget) + a.set,
                    not a.quiet) if r["variant"] == variant]
    summary = summarize_curve(rows, a.plateau)
    path = a.json or Path("benchmarks/results") / f"learning_curve_{datetime.date.today()}.json"
    atomic_write_json(path, {"command": shlex.join([sys.executable, *sys.argv]), "rows": rows,
                             "summary": summary, "data": {**data, "size": list(data["size"])},
                             "environment": {"torch": torch.__version__,
                                             "threads": torch.get_num_threads(),
                                             "machine": platform.processor() or platform.machine(),
                                             "MALLOC_ARENA_MAX": os.environ.get("MALLOC_ARENA_MAX"),
                                             "LD_PRELOAD": os.environ.get("LD_PRELOAD")}})
    plot_curve(summary, path.with_suffix(".png"))
    for variant, st in summary.items():
        curve = ", ".join(f"{b}: {m:.1f}±{s:.1f}"
                          for b, m, s in zip(st["budgets"], st["mask_AP_mean"], st["mask_AP_std"]))
        print(f"{variant:16s} mask AP by budget {curve}; plateau at {st['plateau_at']}")
    print(f"wrote {path} and {path.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
