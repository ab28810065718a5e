"""`boxdepth demo`: the main job on the embedded synthetic RGB-D dataset.

1. Generate (or reuse) the synthetic dataset under ``<out>/data``.
2. Train each variant with the same budget (config `synth_boxinst` + the variant's
   overrides) in ``<out>/<variant>_seed<S>/``; an interrupted demo picks up where it
   stopped (each run resumes from its last checkpoint). On a multi-core CPU the runs go
   side by side, one worker process each with its share of the cores and its output in
   ``<out>/<variant>_seed<S>.log`` (engine/parallel_runs.py; `--jobs 1`: one after the other).
3. Evaluate on the val split (bbox and segm AP), also scoring the BoxInst model's detected
   boxes filled as masks (`box_as_mask`), the reference a real mask must beat.
4. Print one table, write ``<out>/results.json`` and ``<out>/panel.png``.

results.json: {"command": str, "seconds": float, "train_seconds_total": float, "machine":
{cpu_model, cpu_count, torch, torch_threads, ...} (engine/machine.py), "config": {"base": {...}, "variants":
{name: [overrides]}}, "rows": [{"variant", "seed", "bbox": {AP..APl}, "segm": {...}}],
"summary": {variant: {"n", "bbox_AP_mean", "bbox_AP_std", "segm_AP_mean", ...}}}.
"""
from __future__ import annotations

import json
import shlex
import statistics
import sys
import time
from pathlib import Path

from boxdepth.demo_timing import DISTILL_COST_PRIOR, DemoClock, run_timing  # noqa: F401 (re-exported)
from boxdepth.engine.machine import machine_info
from boxdepth.fileio import atomic_write_json, atomic_write_text

DEMO_DATA = dict(n_train=300, n_val=100, size=(256, 192), seed=0, camouflage=0.3, depth_error=1.0)
DEMO_CONFIG = "synth_boxinst"
# variant -> config overrides ({data}: the dataset folder; {exact}: the same images with
# exact depth, `boxdepth synth --depth-error 0`). Same budget for all.
_DEPTH = "data.depth_root={data}/depth"
_FULL = [_DEPTH, "model.depth_head=true", "loss.depth_consistency.weight=1.0"]
VARIANTS: dict[str, list[str]] = {
    "boxinst": [],
    # Table 3a: the depth-consistency loss (Eqs. 3-4), the DG head with L_depth (Eqs. 1-2), both
    "boxinst+cons": [_DEPTH, "loss.depth_consistency.weight=1.0"],
    "boxinst+dg": [_DEPTH, "model.depth_head=true", "loss.depth_consistency.weight=0.0"],
    "boxinst+cons+dg": _FULL,
    # Table 3c: self-distillation from distill.start_iter, IoU-only vs depth-aware matching
    "distill_iou": [*_FULL, "distill.enabled=true", "distill.match=iou"],
    "distill_match": [*_FULL, "distill.enabled=true", "distill.match=depth"],
    "mask_supervised": ["loss.mode=mask", "data.train_json={data}/train_masks.json"],
}
# Table 3b: tau_d of L_cons on the both row; and the depth rows again on exact depth, to
# tell the method from our pseudo-depth degradation
VARIANTS.update({f"boxinst+cons+dg@tau{t}": [*_FULL, f"loss.depth_consistency.tau={t}"]
                 for t in ("0.3", "0.7")})
VARIANTS.update({f"{n}@exact": [o.replace("{data}/depth", "{exact}/depth") for o in VARIANTS[n]]
                 for n in ("boxinst+cons", "boxinst+dg", "boxinst+cons+dg", "distill_match")})
# Fidelity audit (benchmarks/README.md): the paper's other readings of L_cons, on the both row
VARIANTS.update({f"boxinst+cons+dg@{name}": [*_FULL, f"loss.depth_consistency.{o}"] for name, o in (
    ("kappa1", "kappa=1"),                # Eq. 3's kappa on SPEC's d255 scale
    ("d01", "kappa=0.0039216"),           # Eq. 3 on d in [0, 1] as Eq. 2 reads it (1/255 on d255)
    ("shared", "pairs=shared"),           # one normaliser over colour and depth pairs
    ("nobox", "inside_box=false"))})      # Eq. 4 has no box restriction
# Designed variants (issue 9 part 5, not the paper's): colour pairs gated by depth agreement
# in place of L_cons's own pairs (loss.depth_consistency.pairs=gated), and the full method
# with that gate or with the DG head and self-distillation but no L_cons
_GATED = "loss.depth_consistency.pairs=gated"
VARIANTS.update({
    "boxinst+gated": [*VARIANTS["boxinst+cons"], _GATED],
    "boxinst+gated+dg": [*_FULL, _GATED],
    "distill_match+gated": [*VARIANTS["distill_match"], _GATED],
    "boxinst+dg+distill_match": [_DEPTH, "model.depth_head=true", "loss.depth_consistency.weight=0.0",
                                 "distill.enabled=true", "distill.match=depth"],
    # its control without any depth: does the gain need depth, or is it self-distillation?
    "boxinst+distill_iou": ["distill.enabled=true", "distill.match=iou"],
})
# Designed depth terms (issue 23, not the paper's), without L_cons: the depth-edge pair term
# (loss.depth_edge, losses/depth_edge.py) that tells a mask to stop at a depth jump, and
# teacher pseudo masks cleaned of pixels far in depth (distill.depth_clean,
# distill/depth_clean.py) on the DG head + depth-aware distillation row
_EDGE = "loss.depth_edge.weight=1.0"
_CLEAN = "distill.depth_clean.enabled=true"
VARIANTS.update({
    "boxinst+edge": [_DEPTH, "loss.depth_consistency.weight=0.0", _EDGE],
    "boxinst+dg+edge": [*VARIANTS["boxinst+dg"], _EDGE],
    "boxinst+dg+distill_clean": [*VARIANTS["boxinst+dg+distill_match"], _CLEAN],
    "boxinst+dg+edge+distill_clean": [*VARIANTS["boxinst+dg+distill_match"], _EDGE, _CLEAN],
})
# the designed terms' combinations with the DG head: run by name only, in neither the full
# Table 3 nor osd.py's default rows (the edge term alone is below BoxInst on real photos)
COMBINED_VARIANTS = ["boxinst+dg+edge", "boxinst+dg+edge+distill_clean"]
FULL_METHOD = "distill_match"  # the paper's full method: L_cons + DG head + self-distillation
# `boxdepth demo` (a newcomer's first quarter hour): BoxInst and the full method, side by
# side on a multi-core CPU. The mask-supervised upper bound (`--variants ... mask_supervised`)
# would make it a third run: 22.5 min on the slow host of 2026-12-07 with three in a row
DEFAULT_VARIANTS = ["boxinst", FULL_METHOD]
DEFAULT_SEEDS = 1
# the quick demo's budget: the most that keeps `make demo` within 15 minutes on the slower
# host CPU our 2-core VM lands on (500 took 19 min 43 s there, 13 min on the faster one);
# BoxInst is then well past box-filling (20.8 vs 11.0 mask AP at 300 in one run, 23.3 at 500
# on the learning curve) but not converged: Table 3 (`--full`, FULL_BUDGET) is the comparison
QUICK_BUDGET = 300
# `boxdepth demo --full`: Table 3a/3b/3c, the audit's readings and the exact-depth rows at
# FULL_BUDGET, 3 seeds
FULL_VARIANTS = ["boxinst", "boxinst+cons", "boxinst+dg", "boxinst+cons+dg", "boxinst+cons+dg@tau0.3",
                 "boxinst+cons+dg@tau0.7", "boxinst+cons+dg@kappa1", "boxinst+cons+dg@d01",
                 "boxinst+cons+dg@shared", "boxinst+cons+dg@nobox", "distill_iou", "distill_match",
                 "mask_supervised",
                 "boxinst+cons@exact", "boxinst+dg@exact", "boxinst+cons+dg@exact", "distill_match@exact",
                 "boxinst+gated", "boxinst+gated+dg", "boxinst+dg+distill_match", "distill_match+gated",
                 "boxinst+distill_iou", "boxinst+edge", "boxinst+dg+distill_clean"]
FULL_SEEDS = 3
FULL_BUDGET = 1000
# rows computed from another variant's model: name -> (source variant, evaluation option)
DERIVED = {"box_as_mask": "boxinst"}
METRIC_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def scaled_schedule(budget: int, base_warmup: int = 50) -> list[str]:
    """The demo config's schedule (250 iterations) at another budget: LR decays at 72 % and
    92 %, warm-up 20 % capped at the config's, pairwise ramp 40 %, distillation from 72 %."""
    steps = [round(0.72 * budget), round(0.92 * budget)]
    return [f"solver.max_iter={budget}", f"solver.steps=[{steps[0]},{steps[1]}]",
            f"solver.warmup_iters={min(base_warmup, round(0.2 * budget))}",
            f"loss.boxinst.warmup_iters={round(0.4 * budget)}", f"distill.start_iter={steps[0]}",
            f"solver.checkpoint_period={max(budget // 5, 1)}"]


def prepare_demo_data(out_dir: Path, data: dict | None = None, progress: bool = True,
                      name: str = "data") -> tuple[Path, dict]:
    """Generate (or reuse) the demo dataset (`data`: generator arguments, default
    DEMO_DATA) in <out_dir>/<name>; returns (data_dir, summary)."""
    from boxdepth.data.synthetic import generate_synthetic_dataset

    data = data or DEMO_DATA
    data_dir = Path(out_dir) / name
    stamp = data_dir / "demo_settings.json"
    wanted = json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in data.items()},
                        sort_keys=True)
    if stamp.exists() and stamp.read_text() == wanted and (data_dir / "summary.json").exists():
        return data_dir, json.loads((data_dir / "summary.json").read_text())
    summary = generate_synthetic_dataset(data_dir, **data, progress=progress)
    atomic_write_text(stamp, wanted)
    return data_dir, summary


def data_overrides(data_dir: Path) -> list[str]:
    """Paths of the demo dataset; variants that use pseudo depth add data.depth_root."""
    return [f"data.train_json={data_dir / 'train.json'}", f"data.val_json={data_dir / 'val.json'}",
            f"data.image_root={data_dir / 'images'}"]


def run_dir_of(out_dir: Path, name: str, seed: int) -> Path:
    """The folder of one demo run."""
    return Path(out_dir) / f"{name}_seed{seed}"


def exact_depth_dir(data_dir: Path) -> Path:
    """Where the exact-depth copy of the demo data lives (beside `data_dir`)."""
    return data_dir.parent / f"{data_dir.name}_exact"


def variant_config(name: str, data_dir: Path, seed: int, extra: list[str] = ()):
    from boxdepth.config import load_config

    overrides = [o.format(data=data_dir, exact=exact_depth_dir(data_dir)) for o in VARIANTS[name]]
    return load_config(DEMO_CONFIG, data_overrides(data_dir) + overrides + [f"seed={seed}", *extra])


def _check_same_config(run_dir: Path, cfg) -> None:
    """Refuse to resume a run made with other settings (it would mix two budgets). Keys the
    run never read do not count (engine/run_dir.config_differences)."""
    from boxdepth.engine.run_dir import config_differences, format_differences, stored_config

    saved = stored_config(run_dir)
    differ = config_differences(saved, cfg.to_dict()) if saved is not None else []
    if differ:
        raise ValueError(f"{run_dir} holds a run with other settings ({format_differences(differ)}); "
                         f"remove it or use another --out")


def train_and_evaluate(name: str, data_dir: Path, out_dir: Path, seed: int, extra: list[str],
                       progress: bool, run_name: str | None = None) -> list[dict]:
    """Train one variant (resuming if interrupted) and return its result rows. `run_name`
    (default `name`) names the run folder and the rows: the same variant on two data sets
    (benchmarks/osd.py's "boxinst+dg@sensor", "boxinst+dg@pydnet") needs two."""
    from boxdepth.data.build import build_dataset
    from boxdepth.engine.inference import evaluate_model, load_trained_model
    from boxdepth.engine.dist import resolve_device
    from boxdepth.engine.trainer import train

    cfg = variant_config(name, data_dir, seed, extra)
    run_dir = run_dir_of(out_dir, run_name or name, seed)
    ds_classes = len(json.loads((data_dir / "train.json").read_text())["categories"])
    cfg.model.fcos.num_classes = ds_classes
    _check_same_config(run_dir, cfg)
    print(f"[demo] {name} (seed {seed}): training {cfg.solver.max_iter} iterations -> {run_dir}")
    final = train(cfg, run_dir, resume=True, progress=progress)
    device = resolve_device(cfg.device)
    model, cfg, _ = load_trained_model(final, device, cfg)
    val = build_dataset(cfg, "val", is_train=False)
    timing = run_timing(run_dir, cfg.distill.start_iter if cfg.distill.enabled else None)
    rows = [{"variant": run_name or name, "seed": seed, **timing,
             **evaluate_model(model, val, cfg.data.val_json, device,
                              metrics_path=run_dir / "metrics.json", progress=progress)}]
    for derived, source in DERIVED.items():
        if source == name:
            rows.append({"variant": derived, "seed": seed, **evaluate_model(
                model, val, cfg.data.val_json, device, metrics_path=run_dir / f"{derived}_metrics.json",
                box_as_mask=True, progress=progress)})
    return rows


def write_depth_panels(out_dir: Path, data_dir: Path, variant: str, num_images: int = 3) -> None:
    """`boxdepth viz` panels (image | pseudo depth | colour / depth affinity | masks | instance
    depth [| pseudo masks of the val boxes, for a distillation variant]) of a few val images
    with the model of a depth variant, in <out>/depth_panels/."""
    from boxdepth.viz.panels import run_viz

    cfg = variant_config(variant, data_dir, 0)
    summary = run_viz([str(data_dir / "images" / "val")], out_dir / "depth_panels",
                      depth_root=data_dir / "depth", images_root=data_dir / "images",
                      weights=run_dir_of(out_dir, variant, 0) / "model_final.pth",
                      gt=data_dir / "val.json" if cfg.distill.enabled else None, device="cpu",
                      score_thresh=0.5, max_images=num_images,
                      kappa=cfg.loss.depth_consistency.kappa, tau=cfg.loss.depth_consistency.tau,
                      progress=False)
    print(f"wrote {len(summary['panels'])} depth panels ({variant}) to {out_dir / 'depth_panels'}")


def summarize(rows: list[dict]) -> dict:
    """Mean and sample standard deviation over seeds for each variant."""
    out: dict[str, dict] = {}
    for name in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == name]
        entry: dict = {"n": len(mine)}
        for kind in ("bbox", "segm"):
            for key in ("AP", "AP50", "AP75"):
                vals = [r[kind][key] for r in mine if kind in r]
                if vals:
                    entry[f"{kind}_{key}_mean"] = statistics.fmean(vals)
                    entry[f"{kind}_{key}_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        for key in ("train_seconds", "s_per_iter_plain", "s_per_iter_distill", "distill_cost_ratio"):
            vals = [r[key] for r in mine if key in r]
            if vals:
                entry[f"{key}_mean"] = statistics.fmean(vals)
                entry[f"{key}_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        out[name] = entry
    return out


def format_table(summary: dict) -> str:
    """One row per variant: box AP, mask AP, mask AP50, mask AP75 (percent; mean ± std)."""
    def cell(e, k):
        m = e.get(f"{k}_mean")
        if m is None:
            return "-"
        return f"{100 * m:5.1f}" + (f" ±{100 * e[f'{k}_std']:.1f}" if e["n"] > 1 else "")
    cols = [("box AP", "bbox_AP"), ("mask AP", "segm_AP"), ("AP50", "segm_AP50"), ("AP75", "segm_AP75")]
    width = max(len(n) for n in summary) + 2
    lines = ["variant".ljust(width) + "".join(c.rjust(13) for c, _ in cols) + "   seeds"]
    for name, e in summary.items():
        lines.append(name.ljust(width) + "".join(cell(e, k).rjust(13) for _, k in cols) + f"   {e['n']}")
    for name, e in summary.items():
        if "distill_cost_ratio_mean" in e:
            lines.append(f"{name}: a distillation iteration costs {e['distill_cost_ratio_mean']:.2f}x "
                         f"a plain one ({e['s_per_iter_distill_mean']:.2f} vs "
                         f"{e['s_per_iter_plain_mean']:.2f} s/iter, median of the run, mean of "
                         f"{e['n']} seed(s))")
    return "\n".join(lines)


def train_plan(plan: list[tuple[str, int]], clock: DemoClock, data_dir: Path, out_dir: Path,
               extra: list[str], progress: bool, jobs: int | None) -> list[dict]:
    """Train and evaluate every (variant, seed) of the plan; rows in plan order. One run at a
    time prints a line with the demo's ETA before each; several at once (a multi-core CPU)
    start the longest first and show one progress bar per run."""
    from boxdepth.engine.dist import resolve_device
    from boxdepth.engine.parallel_runs import Task, run_parallel, worker_plan

    device = resolve_device(clock.configs[plan[0][0]].device)
    jobs, threads = worker_plan(len(plan), device, jobs)
    if jobs == 1:
        rows = []
        for k, (name, seed) in enumerate(plan):
            print(clock.line(k), flush=True)
            trained = not (run_dir_of(out_dir, name, seed) / "model_final.pth").exists()
            t_run = time.time()
            new = train_and_evaluate(name, data_dir, out_dir, seed, extra, progress)
            clock.finished(name, time.time() - t_run, trained, new)
            rows += new
        return rows
    order = sorted(range(len(plan)), key=lambda k: -clock.units(plan[k][0]))  # longest first
    tasks = [Task(label=f"{name} (seed {seed})", fn=train_and_evaluate,
                  kwargs=dict(name=name, data_dir=data_dir, out_dir=out_dir, seed=seed, extra=list(extra),
                              progress=False),
                  run_dir=run_dir_of(out_dir, name, seed), total=int(clock.configs[name].solver.max_iter))
             for name, seed in (plan[k] for k in order)]
    print(f"[demo] {len(plan)} runs, {jobs} at a time with {threads} thread(s) each "
          f"({jobs * threads} cores; --jobs 1 runs them one after the other); each run's log: "
          f"{out_dir}/<variant>_seed<S>.log", flush=True)
    results = run_parallel(tasks, jobs, threads, progress)
    by_plan = dict(zip(order, results))
    return [row for k in range(len(plan)) for row in by_plan[k]]


def run_demo(out_dir: str | Path = "runs/demo", *, seeds: int | None = None, variants: list[str] | None = None,
             extra: list[str] = (), progress: bool = True, data: dict | None = None,
             full: bool = False, jobs: int | None = None) -> dict:
    """The whole demo; returns the results.json content: DEFAULT_VARIANTS x DEFAULT_SEEDS at
    QUICK_BUDGET iterations, or with `full` FULL_VARIANTS x FULL_SEEDS at FULL_BUDGET (the
    config's schedule scaled), unless variants/seeds are given; `extra` overrides follow. `jobs`: runs at once
    (engine/parallel_runs.worker_plan; default: one per CPU core, one at a time on a GPU)."""
    from boxdepth.data.synthetic import format_summary

    t0 = time.time()
    out_dir = Path(out_dir)
    names = list(variants or (FULL_VARIANTS if full else DEFAULT_VARIANTS))
    seeds = seeds or (FULL_SEEDS if full else DEFAULT_SEEDS)
    extra = scaled_schedule(FULL_BUDGET if full else QUICK_BUDGET) + list(extra)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown demo variant(s) {unknown}; choose from {list(VARIANTS)}")
    data_dir, summary = prepare_demo_data(out_dir, data, progress)
    print(format_summary(summary))
    if any("{exact}" in o for n in names for o in VARIANTS[n]):
        prepare_demo_data(out_dir, {**(data or DEMO_DATA), "depth_error": 0.0}, progress,
                          name=exact_depth_dir(data_dir).name)
    plan = [(name, seed) for seed in range(seeds) for name in names]
    clock = DemoClock(plan, {n: variant_config(n, data_dir, 0, extra) for n in names}, t0)
    rows = train_plan(plan, clock, data_dir, out_dir, extra, progress, jobs)
    table = summarize(rows)
    result = {"command": shlex.join(["boxdepth", *sys.argv[1:]]) if sys.argv else "boxdepth demo",
              "seconds": round(time.time() - t0, 1),  # this invocation (finished runs are reused)
              "train_seconds_total": round(sum(r.get("train_seconds", 0.0) for r in rows), 1),
              "machine": machine_info(),  # timings differ between host CPUs: say which one
              "config": {"base": variant_config(names[0], data_dir, 0, extra).to_dict(),
                         "variants": {n: VARIANTS[n] for n in names}, "extra": extra},
              "rows": rows, "summary": table}
    atomic_write_json(out_dir / "results.json", result)
    print(format_table(table))
    from boxdepth.viz.demo_panel import write_demo_panel
    print(f"wrote {write_demo_panel(out_dir, data_dir, {n: run_dir_of(out_dir, n, 0) for n in names})}")
    depth_variants = [n for n in names if any(o.startswith("data.depth_root") for o in VARIANTS[n])]
    if depth_variants:
        write_depth_panels(out_dir, data_dir, depth_variants[-1])
    print(f"wrote {out_dir / 'results.json'} ({result['seconds']:.0f} s; the runs' training "
          f"took {result['train_seconds_total']:.0f} s in all)")
    return result
