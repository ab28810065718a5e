"""Real RGB-D: does depth help box supervision on real photos? The OSD benchmark.

    python benchmarks/osd.py --out runs/osd --curve 75 150 300     # the learning curve first
    python benchmarks/osd.py --out runs/osd --budget B [--seeds 3] [--jobs 2] [--threads 1]
        [--rows ...] [--set key=value ...] [--json benchmarks/results/osd_<date>.json]
        [--readme README.md] [--collect] [--panel]
    python benchmarks/osd.py --from-json benchmarks/results/osd_<date>.json --readme README.md

Data: `../shared/data/osd-rgbd` (107 real Kinect tabletop frames, read in place, never
copied; --osd elsewhere). Training reads `learn.json`'s boxes only (OUT/data_<src>/train.json
is learn.json with every `segmentation` removed, so no box-supervised row can read a mask);
`mask_supervised` alone reads learn.json's masks; every row is scored on `test.json`.
Depth, one data folder per source (OUT/data_<src>/{images, depth, *.json}, links to the
shared files and to OUT/depth_<src>):
  - sensor: the Kinect depth (`boxdepth depth --from-sensor depth_mm/`), exact up to noise;
  - pydnet: PyDNet++ monocular pseudo depth (`boxdepth depth --model FILE.tflite
    --polarity depth`), the paper's setting; or --pydnet-depth DIR made beforehand.
A row is a demo variant (boxdepth.demo.VARIANTS: the same overrides as the synthetic
Table 3) with its depth source as a suffix: `boxinst+dg@sensor`, `boxinst+dg@pydnet`; rows
that read no depth have none. OSD_SETTINGS sets the input size for these 640x480 frames.

The runs reuse benchmarks/table3.py: its worker pool (--jobs processes of --threads torch
threads, finished runs reused, interrupted ones resumed), its layout
OUT/b<budget>/<row>_seed<S>/, its per-row Welch verdict against BoxInst and its README
block (between `<!-- osd:begin -->` and `<!-- osd:end -->`). Added here: the learning curve
(--curve: boxinst at several budgets, seed 0, JSON + PNG), a per-scene breakdown (mask AP
on each scene group of test.json, from the runs' saved detections) and a panel of test
frames (--panel). Without the OSD folder the script stops with a clear message.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import learning_curve  # noqa: E402  (benchmarks/ is not a package)
import table3  # noqa: E402

from boxdepth import demo  # noqa: E402
from boxdepth.fileio import atomic_write_json, atomic_write_text  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OSD = ROOT.parent / "shared" / "data" / "osd-rgbd"
PYDNET = ROOT.parent / "shared" / "models" / "pydnet" / "optimized_pydnet++.tflite"
MARKERS = ("<!-- osd:begin -->", "<!-- osd:end -->")
SOURCES = ("sensor", "pydnet")
# 640x480 frames at short side 256-320 (test 288): objects keep 40-200 px while a run
# costs minutes, not an hour, on one thread. The teacher reads the original photo at the
# top of the student's range, like the paper's 800 over 640-800.
OSD_SETTINGS = ["input.min_size_train=[256,272,288,304,320]", "input.max_size_train=427",
                "input.min_size_test=288", "input.max_size_test=384",
                "distill.teacher_size=320", "distill.teacher_max_size=427"]
NO_DEPTH_ROWS = ["boxinst", "box_as_mask", "mask_supervised", "boxinst+distill_iou"]
DEPTH_VARIANTS = ["boxinst+dg", "boxinst+cons+dg", "distill_match"]
# our two depth terms (issue 23, 4): the depth-edge pair term, and depth-cleaned pseudo
# masks on the DG head + depth-aware distillation row
# (their combinations, demo.COMBINED_VARIANTS, run with --rows but are not default rows: the
# edge term alone is below BoxInst with both depth sources, README "Real RGB-D", and their
# 12 runs, ~6 h of one core here, would only ask whether the DG head rescues it)
DESIGNED_VARIANTS = ["boxinst+edge", "boxinst+dg+distill_clean"]
# test.json scene groups by frame number (data README): boxes 0-15, stacked 16-23, ...
SCENES = (("boxes", 0, 15), ("stacked", 16, 23), ("occluded", 24, 30), ("cylinders", 31, 42),
          ("mixed", 43, 54), ("cluttered", 55, 65))


def default_rows() -> list[str]:
    """Every row of the issue: no-depth rows once, each depth row once per source."""
    depth = [v for v in DEPTH_VARIANTS + DESIGNED_VARIANTS if v in demo.VARIANTS]
    return NO_DEPTH_ROWS + [f"{v}@{s}" for v in depth for s in SOURCES]


def split_row(row: str) -> tuple[str, str | None]:
    """"boxinst+dg@pydnet" -> ("boxinst+dg", "pydnet"); "boxinst" -> ("boxinst", None).
    Only a known source counts as a suffix ("boxinst+cons+dg@tau0.3" is a variant)."""
    variant, _, source = row.rpartition("@")
    if variant and source in SOURCES:
        return variant, source
    return row, None


def check_row(row: str) -> None:
    variant, source = split_row(row)
    if variant not in demo.VARIANTS and variant not in demo.DERIVED:
        raise SystemExit(f"unknown row {row!r}: {variant!r} is not a demo variant")
    reads_depth = any(o.startswith("data.depth_root") for o in demo.VARIANTS.get(variant, []))
    if reads_depth != (source is not None):
        raise SystemExit(f"row {row!r}: " + (f"{variant} reads depth: name its source, "
                                             f"{variant}@sensor or {variant}@pydnet"
                                             if reads_depth else f"{variant} reads no depth: drop '@{source}'"))


def scene_of(file_name: str) -> str | None:
    m = re.fullmatch(r"test(\d+)\.png", Path(file_name).name)
    if m is None:
        return None
    k = int(m.group(1))
    return next((name for name, lo, hi in SCENES if lo <= k <= hi), None)


def _link(link: Path, target: Path) -> None:
    if link.is_symlink() or link.exists():
        if link.is_symlink() and Path(os.readlink(link)) == target:
            return
        link.unlink()
    link.symlink_to(target)


def _make_depth(osd: Path, out: Path, source: str, a: argparse.Namespace) -> Path:
    """OUT/depth_<source> (resumable: `boxdepth depth` skips the maps already written)."""
    if source == "pydnet" and a.pydnet_depth:
        return a.pydnet_depth.resolve()
    depth = out / f"depth_{source}"
    if source == "sensor":
        how = ["--from-sensor", str(osd / "depth_mm")]
    else:
        if not a.pydnet_model.is_file():
            raise SystemExit(f"{a.pydnet_model}: no PyDNet++ model; give --pydnet-model or --pydnet-depth")
        how = ["--model", str(a.pydnet_model), "--polarity", "depth"]
    cmd = [sys.executable, "-m", "boxdepth.cli", "depth", str(osd / "images"), "--out", str(depth), *how]
    if subprocess.run(cmd).returncode:
        raise SystemExit(f"[osd] depth for {source} failed: {shlex.join(cmd)}")
    return depth


def prepare_data(osd: Path, out: Path, sources: list[str], a: argparse.Namespace) -> dict[str, Path]:
    """OUT/data_<source>/ for each source: images -> OSD images, depth -> its depth tree,
    train.json = learn.json without masks, train_masks.json -> learn.json, val.json -> test.json."""
    for name in ("images", "depth_mm", "learn.json", "test.json"):
        if not (osd / name).exists():
            raise SystemExit(f"{osd / name} is missing: the OSD benchmark needs ../shared/data/osd-rgbd "
                             f"(give --osd DIR)")
    learn = json.loads((osd / "learn.json").read_text())
    boxes = {**learn, "annotations": [{k: v for k, v in ann.items() if k != "segmentation"}
                                      for ann in learn["annotations"]]}
    dirs = {}
    for source in sources:
        d = out / f"data_{source}"
        d.mkdir(parents=True, exist_ok=True)
        atomic_write_text(d / "train.json", json.dumps(boxes))
        _link(d / "images", (osd / "images").resolve())
        _link(d / "train_masks.json", (osd / "learn.json").resolve())
        _link(d / "val.json", (osd / "test.json").resolve())
        _link(d / "depth", _make_depth(osd, out, source, a))
        dirs[source] = d
    return dirs


def run_one(out: Path, budget: int, row: str, seed: int, extra: list[str]) -> None:
    """Worker: train (or resume) and score one row; its rows go to <run>/rows.json."""
    variant, source = split_row(row)
    data_dir = out / f"data_{source or 'sensor'}"  # a no-depth row reads no depth
    rows = demo.train_and_evaluate(variant, data_dir, out / f"b{budget}", seed,
                                   demo.scaled_schedule(budget) + OSD_SETTINGS + extra,
                                   progress=False, run_name=row)
    atomic_write_json(table3._rows_path(out, budget, row, seed), rows)


def per_scene(out: Path, budget: int, rows: list[str], seeds: int, test_json: Path) -> dict:
    """{row: {scene: {"mask_AP_mean", "mask_AP_std", "n"}}} from the runs' saved detections."""
    from boxdepth.engine.evaluate import evaluate_coco

    gt = json.loads(test_json.read_text())
    ids = {name: [im["id"] for im in gt["images"] if scene_of(im["file_name"]) == name]
           for name, _, _ in SCENES}
    ids = {name: i for name, i in ids.items() if i}  # no frame of that scene: no AP, not NaN
    table: dict[str, dict] = {}
    for row in rows:
        per: dict[str, list[float]] = {}
        for seed in range(seeds):
            res = _results_path(out, budget, row, seed)
            if not res.exists():
                continue
            dets = json.loads(res.read_text())
            for name, img_ids in ids.items():
                m = evaluate_coco(gt, dets, ("segm",), img_ids=img_ids)
                per.setdefault(name, []).append(100 * m["segm"]["AP"])
        table[row] = {name: {"mask_AP_mean": round(statistics.fmean(v), 2),
                             "mask_AP_std": round(statistics.stdev(v), 2) if len(v) > 1 else None,
                             "n": len(v)} for name, v in per.items()}
    return table


def _results_path(out: Path, budget: int, row: str, seed: int) -> Path:
    """A run's saved test detections; a derived row's are in its source run's folder."""
    variant, _ = split_row(row)
    if variant in demo.DERIVED:
        return demo.run_dir_of(out / f"b{budget}", demo.DERIVED[variant], seed) / f"{variant}_results.json"
    return demo.run_dir_of(out / f"b{budget}", row, seed) / "results.json"


def mask_quality(out: Path, budget: int, rows: list[str], seeds: int, test_json: Path,
                 reference: str) -> dict:
    """{row: mean ± std over seeds of the box-matched mask IoU and box recall, and the
    Welch verdict of the mask IoU against `reference`} (engine.mask_quality)."""
    from boxdepth.engine.mask_quality import matched_mask_quality

    gt = json.loads(test_json.read_text())
    per_seed = []  # rows shaped like table3's so that table3.compare() gives the verdict
    for row in rows:
        for seed in range(seeds):
            res = _results_path(out, budget, row, seed)
            if res.exists():
                q = matched_mask_quality(gt, res)
                per_seed.append({"variant": row, "seed": seed, "matched": q["matched"],
                                 "segm": {"AP": q["mask_iou"] or 0.0}})
    table = {}
    for row in rows:
        got = [r for r in per_seed if r["variant"] == row]
        if not got:
            continue
        iou = [100 * r["segm"]["AP"] for r in got]
        rec = [100 * r["matched"] for r in got]
        table[row] = {"mask_iou_mean": round(statistics.fmean(iou), 2),
                      "mask_iou_std": round(statistics.stdev(iou), 2) if len(iou) > 1 else None,
                      "matched_mean": round(statistics.fmean(rec), 2), "n": len(got),
                      "vs_reference": table3.compare(per_seed, row, reference)}
    return table


def quality_table(quality: dict, reference: str) -> str:
    lines = ["| row | mask IoU on matched objects | objects matched (box IoU >= 0.5) | vs "
             f"{reference} (mask IoU) | seeds |", "| --- | --- | --- | --- | --- |"]
    for row, e in quality.items():
        sd = f" ± {e['mask_iou_std']:.1f}" if e["mask_iou_std"] is not None else ""
        diff = e["mask_iou_mean"] - quality[reference]["mask_iou_mean"] if reference in quality else None
        verdict = table3.verdict_cell(row, reference, e["vs_reference"], diff)
        lines.append(f"| `{row}` | {e['mask_iou_mean']:.1f}{sd} | {e['matched_mean']:.1f} % | "
                     f"{verdict} | {e['n']} |")
    return "\n".join(lines)


def scene_table(scenes: dict) -> str:
    names = [n for n, _, _ in SCENES if any(n in per for per in scenes.values())]
    lines = ["| row | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
    for row, per in scenes.items():
        cells = []
        for n in names:
            e = per.get(n)
            cells.append("-" if e is None else f"{e['mask_AP_mean']:.1f}"
                         + (f" ± {e['mask_AP_std']:.1f}" if e["mask_AP_std"] is not None else ""))
        lines.append(f"| `{row}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def best_depth_row(result: dict) -> str | None:
    """The depth row (either source) with the highest mean mask AP."""
    rows = {n: e for n, e in result["summary"].items() if split_row(n)[1] is not None}
    return max(rows, key=lambda n: rows[n]["segm_AP_mean"]) if rows else None


def write_panel(out: Path, budget: int, runs: list[str], path: Path) -> Path:
    """One test frame per scene group: ground truth, then each run's masks (seed 0)."""
    from boxdepth.viz.demo_panel import write_demo_panel

    gt = json.loads((out / "data_sensor" / "val.json").read_text())
    first = {}
    for im in gt["images"]:
        first.setdefault(scene_of(im["file_name"]), im)
    chosen = [first[n] for n, _, _ in SCENES if n in first]
    keep = {im["id"] for im in chosen}
    sub = out / "panel_data"
    sub.mkdir(parents=True, exist_ok=True)
    _link(sub / "images", (out / "data_sensor" / "images").resolve())
    atomic_write_text(sub / "val.json", json.dumps({**gt, "images": chosen, "annotations": [
        a for a in gt["annotations"] if a["image_id"] in keep]}))
    made = write_demo_panel(sub, sub, {r: demo.run_dir_of(out / f"b{budget}", r, 0) for r in runs},
                            num_images=len(chosen))
    path.parent.mkdir(parents=True, exist_ok=True)
    os.replace(made, path)
    return path


def run_curve(a: argparse.Namespace) -> dict:
    """BoxInst at each --curve budget (seed 0), two at a time; JSON + PNG beside --json."""
    table3.run_jobs(a, [("boxinst", 0, b) for b in sorted(a.curve, reverse=True)], script=__file__)
    rows = []
    for budget in a.curve:
        path = table3._rows_path(a.out, budget, "boxinst", 0)
        rows += [dict(r, budget=budget) for r in json.loads(path.read_text()) if r["variant"] == "boxinst"]
    summary = learning_curve.summarize_curve(rows, a.plateau)
    path = a.json or Path("benchmarks/results") / f"osd_curve_{datetime.date.today()}.json"
    atomic_write_json(path, {"what": "OSD learning curve: BoxInst mask AP on test.json against the "
                                     "budget (schedule scaled, seed 0)", "command": a.command,
                             "settings": OSD_SETTINGS + a.set, "threads_per_run": a.threads,
                             "rows": rows, "summary": summary})
    learning_curve.plot_curve(summary, path.with_suffix(".png"),
                              title="OSD (real RGB-D): BoxInst mask AP vs training budget")
    for variant, st in summary.items():
        curve = ", ".join(f"{b}: {m:.1f}" for b, m in zip(st["budgets"], st["mask_AP_mean"]))
        print(f"{variant} mask AP by budget {curve}; plateau at {st['plateau_at']}")
    print(f"wrote {path} and {path.with_suffix('.png')}")
    return summary


def collect(a: argparse.Namespace, rows: list[str]) -> dict:
    # a derived row (box_as_mask) is in its source run's rows.json: gather the trained runs
    got, missing, _ = table3.gather(a, list(dict.fromkeys(demo.DERIVED.get(r, r) for r in rows)))
    result = {"what": f"OSD (real RGB-D) at {a.budget} iterations, {a.seeds} seeds, "
                      f"{a.threads} thread(s) per run; trained on learn.json's boxes, "
                      f"mask AP on test.json", "command": a.command, "reference": a.reference,
              "alpha": table3.ALPHA, "budget": a.budget, "seeds": a.seeds,
              "rows_requested": rows, "settings": demo.scaled_schedule(a.budget) + OSD_SETTINGS + a.set,
              "variants": {r: demo.VARIANTS.get(split_row(r)[0], "derived") for r in rows},
              "environment": {"threads_per_run": a.threads, "jobs": a.jobs,
                              **{k: os.environ.get(k) for k in ("MALLOC_ARENA_MAX", "LD_PRELOAD")}},
              "missing": missing, "imported": {}, "rows": got, **table3.tabulate(got, a.reference)}
    best = best_depth_row(result)
    shown = [r for r in dict.fromkeys([a.reference, best, "mask_supervised"]) if r in result["summary"]]
    result["scenes"] = per_scene(a.out, a.budget, shown, a.seeds, a.osd / "test.json")
    result["mask_quality"] = mask_quality(a.out, a.budget, list(result["summary"]), a.seeds,
                                          a.osd / "test.json", a.reference)
    result["best_depth_row"] = best
    return result


def markdown(result: dict) -> str:
    text = table3.markdown_table(result)
    if result.get("scenes"):
        text += ("\n\nMask AP per scene group of test.json (mean ± std over seeds; BoxInst, the best "
                 "depth row, the mask-supervised bound):\n\n" + scene_table(result["scenes"]))
    if result.get("mask_quality"):
        text += ("\n\nMask quality where the box is found (box-matched mask IoU, so that "
                 "detection luck does not hide a mask term; engine/mask_quality.py):\n\n"
                 + quality_table(result["mask_quality"], result["reference"]))
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--osd", type=Path, default=OSD, help="the osd-rgbd folder (read in place)")
    ap.add_argument("--pydnet-model", type=Path, default=PYDNET, help="PyDNet++ .tflite (research-use weights)")
    ap.add_argument("--pydnet-depth", type=Path, default=None,
                    help="a pseudo-depth folder made beforehand from PyDNet++ (skips generating it)")
    ap.add_argument("--budget", type=int, default=150)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--rows", nargs="+", default=None, help="rows to run (default: every row)")
    ap.add_argument("--only-seeds", type=int, nargs="+", default=None, metavar="S",
                    help="train only these seeds (e.g. two queues side by side, --jobs 1 each); "
                         "the table still covers seeds 0..--seeds-1")
    ap.add_argument("--reference", default="boxinst")
    ap.add_argument("--jobs", type=int, default=2, help="runs at once")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    ap.add_argument("--curve", type=int, nargs="+", default=None, metavar="BUDGET",
                    help="only the learning curve: BoxInst (seed 0) at these budgets")
    ap.add_argument("--plateau", type=float, default=1.0, help="curve: mask AP gained over a doubling")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--readme", type=Path, default=None)
    ap.add_argument("--panel", action="store_true", help="also a panel of test frames (PNG beside --json)")
    ap.add_argument("--collect", action="store_true",
                    help="train nothing: the table of the runs finished so far, the rest listed as missing")
    ap.add_argument("--from-json", type=Path, default=None, help="only rewrite --readme from this JSON")
    ap.add_argument("--run", nargs=2, metavar=("ROW", "SEED"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    a.command = shlex.join(["python", "benchmarks/osd.py", *(sys.argv[1:] if argv is None else argv)])
    a.imported = {}
    if a.run:
        run_one(a.out, a.budget, a.run[0], int(a.run[1]), a.set)
        return 0
    if a.from_json:
        result, path = json.loads(a.from_json.read_text()), a.from_json
    else:
        if a.out is None:
            ap.error("--out is required (or --from-json)")
        rows = a.rows or default_rows()
        for row in rows:
            check_row(row)
        sources = sorted({split_row(r)[1] or "sensor" for r in rows} | {"sensor"})
        prepare_data(a.osd, a.out, sources if not a.curve else ["sensor"], a)
        if a.curve:
            run_curve(a)
            return 0
        t0 = time.time()
        if not a.collect:
            seeds = a.only_seeds if a.only_seeds is not None else range(a.seeds)
            jobs = [(r, s) for s in seeds for r in dict.fromkeys([demo.DERIVED.get(r, r) for r in rows])]
            table3.run_jobs(a, jobs, script=__file__)
        result = collect(a, rows)
        result["seconds_this_invocation"] = round(time.time() - t0, 1)
        path = a.json or Path("benchmarks/results") / f"osd_{datetime.date.today()}.json"
        atomic_write_json(path, result)
        if a.panel:
            runs = [r for r in dict.fromkeys([a.reference, result["best_depth_row"], "mask_supervised"])
                    if r and (demo.run_dir_of(a.out / f"b{a.budget}", r, 0) / "model_final.pth").exists()]
            print(f"wrote {write_panel(a.out, a.budget, runs, path.with_name(path.stem + '_panel.png'))}")
        print(f"wrote {path}" + (f"; not finished, left out: {', '.join(result['missing'])}"
                                 if result["missing"] else ""))
    table = markdown(result)
    print(table)
    if a.readme:
        table3.rewrite_readme(a.readme, table, str(path), markers=MARKERS, script="benchmarks/osd.py")
        print(f"rewrote the table in {a.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
