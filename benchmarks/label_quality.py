"""How good are `boxdepth label`'s masks, and does `boxdepth qa` find the bad ones?

On the embedded synthetic set (its val.json has the true masks):
  1. generate the set (`--data DIR` reuses one), train the demo's model (config
     synth_boxinst, `--max-iter` iterations; `--weights CKPT` reuses a checkpoint),
  2. strip the val masks to make the box input, run `label` on it with the pseudo depth
     (depth-aware S_match) and without (box IoU),
  3. score each labelled mask against the true mask (mask IoU), and the box filled as a
     mask (the figure a mask labeller must beat); Spearman rho between mask_score and the
     true IoU; run `qa` on the depth-aware labels and measure its top-k precision at
     finding masks with true IoU < 0.5 (against that share over all boxes).
  4. `--train-split`: the same on the train split (its masks in train_masks.json), the
     split on which qa's rank weights were chosen; val is the held-out check.
  5. `--voc DIR`: label a COCO folder with polygons (images in DIR/JPEGImages, json
     DIR/annotations.json) with the same model, score it the same way, run `qa` and copy
     its contact sheet to benchmarks/results/label_quality_voc_contact_<date>.png.

    python benchmarks/label_quality.py [--work runs/label_bench] [--data DIR] [--weights CKPT]
        [--max-iter 250] [--device cpu] [--train-split] [--voc ../shared/data/voc3-coco] [--out FILE]

Prints the numbers and writes benchmarks/results/label_quality_<date>.json (or --out)
with the command, the environment and every figure.
"""
from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (benchmarks/ is a folder of scripts, not a package)

from boxdepth.data.rle import segmentation_to_mask  # noqa: E402
from boxdepth.fileio import atomic_write_json  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BAD_IOU = 0.5  # a label mask with true IoU below this counts as wrong
TOP_K = (10, 25, 50)


def prepare_data(work: Path, data: Path | None) -> Path:
    from boxdepth.data.synthetic import generate_synthetic_dataset

    if data is not None:
        return data
    data = work / "data"
    if not (data / "val.json").is_file():
        generate_synthetic_dataset(data, n_train=300, n_val=100, size=(256, 192), seed=0, progress=False)
    return data


def train_model(work: Path, data: Path, max_iter: int, device: str) -> Path:
    """The demo's boxinst variant, its schedule scaled to `max_iter` iterations."""
    from boxdepth.config import load_config
    from boxdepth.engine.trainer import train

    steps = [int(max_iter * 0.72), int(max_iter * 0.92)]
    cfg = load_config("synth_boxinst", [
        f"data.train_json={data / 'train.json'}", f"data.image_root={data / 'images'}",
        f"solver.max_iter={max_iter}", f"solver.steps=[{steps[0]},{steps[1]}]",
        f"solver.warmup_iters={min(50, max(max_iter // 5, 1))}", f"device={device}"])
    return train(cfg, work / "run", resume=True, progress=True)


def box_input(val_json: Path, out: Path) -> Path:
    data = json.loads(val_json.read_text())
    for a in data["annotations"]:
        a.pop("segmentation", None)
        a.pop("area", None)
    atomic_write_json(out, data, indent=None)
    return out


def score_labels(gt: dict, labelled: dict) -> list[dict]:
    """Per non-crowd GT annotation: true IoU of the label mask and of the box filled."""
    sizes = {im["id"]: (im["height"], im["width"]) for im in gt["images"]}
    out_by_id = {a["id"]: a for a in labelled["annotations"]}
    rows = []
    for a in gt["annotations"]:
        if a.get("iscrowd", 0):
            continue
        h, w = sizes[a["image_id"]]
        g = segmentation_to_mask(a["segmentation"], h, w).astype(bool)
        lab = out_by_id[a["id"]]
        m = segmentation_to_mask(lab["segmentation"], h, w).astype(bool) if "segmentation" in lab \
            else np.zeros_like(g)
        x, y, bw, bh = a["bbox"]
        ys, xs = np.arange(h)[:, None] + 0.5, np.arange(w)[None, :] + 0.5
        box = (xs >= x) & (xs < x + bw) & (ys >= y) & (ys < y + bh)
        iou = lambda p: float((p & g).sum() / max((p | g).sum(), 1))  # noqa: E731
        rows.append({"id": a["id"], "iou": iou(m), "box_iou": iou(box), "mask_score": lab.get("mask_score"),
                     "mask_source": lab.get("mask_source")})
    return rows


def summarize_labels(rows: list[dict]) -> dict:
    ok = [r for r in rows if r["mask_score"] is not None]
    model = [r for r in ok if r["mask_source"] == "model"]
    rho = lambda rs: float(spearmanr([r["mask_score"] for r in rs], [r["iou"] for r in rs])[0]) \
        if len(rs) > 2 else None  # noqa: E731
    return {"boxes": len(rows), "model_masks": len(model), "box_fills": len(ok) - len(model),
            "mean_iou_labels": float(np.mean([r["iou"] for r in rows])),
            "mean_iou_box_as_mask": float(np.mean([r["box_iou"] for r in rows])),
            "share_iou_below_0.5_labels": float(np.mean([r["iou"] < BAD_IOU for r in rows])),
            "spearman_score_vs_iou": rho(ok), "spearman_score_vs_iou_model_masks_only": rho(model)}


def qa_precision(qa_rows: list[dict], truth: list[dict]) -> dict:
    """Share of masks with true IoU < 0.5 among qa's top k, and among the k lowest
    mask_scores (box fills count as 0), for comparison."""
    iou = {r["id"]: r["iou"] for r in truth}
    bad = [iou[r["annotation_id"]] < BAD_IOU for r in qa_rows]
    by_score = sorted(truth, key=lambda r: r["mask_score"] if r["mask_source"] == "model" else 0.0)
    bad_by_score = [r["iou"] < BAD_IOU for r in by_score if r["mask_score"] is not None]
    out = {"base_rate": float(np.mean(bad)) if bad else None}
    for k in TOP_K:
        if len(bad) >= k:
            out[f"precision_at_{k}"] = float(np.mean(bad[:k]))
            out[f"score_only_precision_at_{k}"] = float(np.mean(bad_by_score[:k]))
    return out


def label_and_score(model, cfg, *, gt_json: Path, box_json: Path, images: Path, depth: Path | None,
                    out_json: Path, device, qa_dir: Path | None = None) -> dict:
    from boxdepth.label.qa_report import run_qa
    from boxdepth.label.run import label_options, run_label

    t0 = time.perf_counter()
    summary = run_label(model, json_path=box_json, images_root=images, out_path=out_json,
                        depth_root=depth, device=device, progress=False,
                        min_box_size=cfg.data.min_box_size, **label_options(cfg))
    seconds = time.perf_counter() - t0
    truth = score_labels(json.loads(gt_json.read_text()), json.loads(out_json.read_text()))
    res = {"label_seconds": round(seconds, 1), "depth_images": summary["depth_images"],
           **summarize_labels(truth)}
    if qa_dir is not None:
        qa = run_qa(out_json, images, qa_dir, top=24)
        rows = json.loads(Path(qa["json"]).read_text())["rows"]
        res["qa"] = {"flag_counts": qa["counts"], **qa_precision(rows, truth),
                     "contact_sheet": qa["contact_sheet"]}
    return res


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=REPO / "runs" / "label_bench")
    p.add_argument("--data", type=Path, default=None, help="an existing `boxdepth synth` folder")
    p.add_argument("--weights", type=Path, default=None, help="reuse this checkpoint (no training)")
    p.add_argument("--max-iter", type=int, default=250, help="training iterations (default: the demo's 250)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--voc", type=Path, default=None, help="also label this COCO folder (voc3-coco layout)")
    p.add_argument("--train-split", action="store_true",
                   help="also label and qa the train split (train_masks.json): the split qa's rank "
                        "weights were chosen on")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    import torch
    from boxdepth.engine.inference import load_trained_model

    date = datetime.date.today().isoformat()
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = prepare_data(args.work, args.data)
    weights = args.weights or train_model(args.work, data, args.max_iter, args.device)
    train_s = time.perf_counter() - t0
    model, cfg, meta = load_trained_model(weights, args.device)
    box_json = box_input(data / "val.json", args.work / "val_boxes.json")
    report = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "date": date,
              "weights": str(weights), "weights_loaded": meta.get("weights_loaded"),
              "data": str(data), "prepare_and_train_seconds": round(train_s, 1),
              "environment": common.environment(torch.device(args.device), REPO)}
    for name, depth in (("depth", data / "depth"), ("no_depth", None)):
        report[f"synth_val_{name}"] = label_and_score(
            model, cfg, gt_json=data / "val.json", box_json=box_json, images=data / "images", depth=depth,
            out_json=args.work / f"val_labelled_{name}.json", device=args.device,
            qa_dir=args.work / f"qa_{name}" if name == "depth" else None)
    if args.train_split:
        report["synth_train_depth"] = label_and_score(
            model, cfg, gt_json=data / "train_masks.json",
            box_json=box_input(data / "train_masks.json", args.work / "train_boxes.json"),
            images=data / "images", depth=data / "depth", out_json=args.work / "train_labelled.json",
            device=args.device, qa_dir=args.work / "qa_train")
    if args.voc is not None:
        voc = report["voc"] = label_and_score(
            model, cfg, gt_json=args.voc / "annotations.json", box_json=args.voc / "annotations.json",
            images=args.voc, depth=None, out_json=args.work / "voc_labelled.json", device=args.device,
            qa_dir=args.work / "qa_voc")
        sheet = REPO / "benchmarks" / "results" / f"label_quality_voc_contact_{date}.png"
        shutil.copyfile(voc["qa"]["contact_sheet"], sheet)
        voc["qa"]["contact_sheet"] = str(sheet.relative_to(REPO))
    out = args.out or REPO / "benchmarks" / "results" / f"label_quality_{date}.json"
    atomic_write_json(out, report)
    print(json.dumps({k: v for k, v in report.items() if k != "environment"}, indent=1))
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
