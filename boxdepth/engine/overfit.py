"""`boxdepth train CONFIG --overfit N`: can this set-up learn N of your images by heart?

Before a long run on your own data: train the config on N images of its training json
(the first N by image id that have a non-crowd box) with nothing that stops memorising
(no flip, one input size = the test size, constant learning rate after warm-up), and
evaluate box AP on those same images every `eval_period` iterations until it reaches
`target_ap` or `max_iter` is spent. A pipeline that cannot fit a handful of images
(boxes in the wrong place, wrong classes, a loss that does nothing) shows it here in
minutes instead of after a day. Writes into `out_dir`:

    overfit_train.json   the N images and their annotations (boxes only)
    overfit.json         {"passed", "target_box_ap", "images", "curve": [{"iter",
                         "box_ap", "loss_fcos_loc", ...}], "health_warnings": [...]}
    model_final.pth, metrics.jsonl, config.yaml   the run (engine/trainer.py)
"""
from __future__ import annotations

import copy
import logging
import warnings
from pathlib import Path

from boxdepth.config import Config, apply_override, load_config
from boxdepth.data.coco_records import read_coco_json
from boxdepth.fileio import atomic_write_json

log = logging.getLogger("boxdepth")


def overfit_subset(train_json: str | Path, num_images: int) -> dict:
    """The first `num_images` images (by id) with a non-crowd box, boxes only."""
    data = read_coco_json(Path(train_json))
    has_box = {a["image_id"] for a in data.get("annotations", []) if not a.get("iscrowd", 0)}
    images = sorted((im for im in data.get("images", []) if im.get("id") in has_box),
                    key=lambda im: im["id"])[:num_images]
    if not images:
        raise ValueError(f"{train_json}: no image with a non-crowd box to overfit on")
    keep = {im["id"] for im in images}
    anns = [{k: v for k, v in a.items() if k != "segmentation"}
            for a in data["annotations"] if a["image_id"] in keep]
    return {"images": images, "annotations": anns, "categories": data.get("categories", [])}


def _overrides(cfg: Config, subset_json: Path, max_iter: int) -> dict:
    return {"data.train_json": str(subset_json), "data.val_json": str(subset_json),
            "data.val_image_root": cfg.data.val_image_root or cfg.data.image_root,
            "input.flip_prob": 0.0, "input.min_size_train": [cfg.input.min_size_test],
            "input.max_size_train": cfg.input.max_size_test, "solver.steps": [],
            "solver.warmup_iters": min(int(cfg.solver.warmup_iters), max_iter // 4),
            "solver.max_iter": max_iter, "solver.checkpoint_period": 0, "distill.enabled": False}


def run_overfit(cfg: Config, out_dir: str | Path, *, num_images: int = 8, target_ap: float = 50.0,
                max_iter: int = 300, eval_period: int = 50, progress: bool = True) -> dict:
    """Train/evaluate in rounds of `eval_period` iterations; returns the overfit.json dict."""
    from boxdepth.data.build import build_dataset
    from boxdepth.engine.dist import resolve_device
    from boxdepth.engine.inference import evaluate_model, load_trained_model
    from boxdepth.engine.logging import read_metrics
    from boxdepth.engine.trainer import train

    out_dir = Path(out_dir)
    if (out_dir / "metrics.jsonl").exists() or (out_dir / "model_final.pth").exists():
        raise FileExistsError(f"{out_dir} already holds a training run; give --overfit a new --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    subset = overfit_subset(cfg.data.train_json, num_images)
    subset_json = out_dir / "overfit_train.json"
    atomic_write_json(subset_json, subset)
    report = {"passed": False, "target_box_ap": target_ap, "images": len(subset["images"]),
              "boxes": len(subset["annotations"]), "curve": [], "health_warnings": []}
    done = 0
    while done < max_iter:
        done = min(done + eval_period, max_iter)
        run_cfg = _with_overrides(cfg, _overrides(cfg, subset_json, done))
        final = train(run_cfg, out_dir, resume=done > eval_period, progress=progress)
        model, run_cfg, _ = load_trained_model(final, resolve_device(run_cfg.device), run_cfg)
        with warnings.catch_warnings():  # the subset is boxes only: no segm AP, by design
            warnings.filterwarnings("ignore", message="skipping segm evaluation")
            metrics = evaluate_model(model, build_dataset(run_cfg, "val", is_train=False),
                                     subset_json, next(model.parameters()).device, progress=False)
        rows = read_metrics(out_dir / "metrics.jsonl")
        point = {"iter": done, "box_ap": round(100 * metrics["bbox"]["AP"], 2),
                 **{k: round(rows[-1][k], 4) for k in ("loss_fcos_cls", "loss_fcos_loc")
                    if rows and k in rows[-1]}}
        report["curve"].append(point)
        warned = {(w["check"], w["term"]): w for r in reversed(rows) for w in r.get("health_warnings", [])}
        report["health_warnings"] = list(warned.values())
        log.info(f"overfit: iteration {done}: box AP {point['box_ap']:.1f} on the "
                 f"{report['images']} training images (target {target_ap:g})")
        if point["box_ap"] >= target_ap:
            report["passed"] = True
            break
    atomic_write_json(out_dir / "overfit.json", report)
    return report


def _with_overrides(cfg: Config, values: dict) -> Config:
    schema = load_config(None, ())
    merged = copy.deepcopy(cfg.to_dict() if isinstance(cfg, Config) else dict(cfg))
    for key, value in values.items():
        apply_override(merged, key, value, schema)
    return Config(merged)


def format_overfit_report(report: dict) -> str:
    curve = ", ".join(f"{p['iter']}: {p['box_ap']:.1f}" for p in report["curve"])
    head = (f"overfit on {report['images']} images ({report['boxes']} boxes): box AP by "
            f"iteration {curve}")
    if report["passed"]:
        return f"{head}\nPASSED: reached box AP {report['target_box_ap']:g} on the training images."
    lines = [head, f"FAILED: box AP stayed below {report['target_box_ap']:g} on the images it "
                   f"trained on. Something in the set-up keeps the model from learning: check "
                   f"the boxes with `boxdepth inspect`, the learning rate and the loss terms "
                   f"in metrics.jsonl."]
    lines += [f"  {w['message']}" for w in report["health_warnings"]]
    return "\n".join(lines)
