"""`boxdepth` command line: thin verbs over the library.

Each verb parses its arguments, calls one library function and prints what it made.
Expected failures (bad files, bad configs) end with one clear line on stderr and exit
status 2; `--debug` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from boxdepth import __version__

log = logging.getLogger("boxdepth")


def _parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 256x192, got {text!r}") from None
    if w < 32 or h < 32:
        raise argparse.ArgumentTypeError(f"size {text} is too small (at least 32x32)")
    return w, h


def cmd_synth(args: argparse.Namespace) -> int:
    from boxdepth.data.synthetic import format_summary, generate_synthetic_dataset

    summary = generate_synthetic_dataset(
        args.out, n_train=args.train, n_val=args.val, size=args.size, seed=args.seed,
        camouflage=args.camouflage, depth_error=args.depth_error, progress=not args.quiet)
    print(format_summary(summary))
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from boxdepth.data.inspect import format_inspect_report, inspect_dataset

    report = inspect_dataset(args.json, args.images, args.depth,
                             skip_bad_images=args.skip_bad_images,
                             allow_missing_depth=args.allow_missing_depth)
    print(format_inspect_report(report))
    return 1 if report["errors"] else 0


def cmd_train(args: argparse.Namespace) -> int:
    from boxdepth.config import load_config
    from boxdepth.engine import dist
    from boxdepth.engine.trainer import train

    cfg = load_config(args.config, args.overrides)
    if args.overfit:
        from boxdepth.engine.overfit import format_overfit_report, run_overfit
        report = run_overfit(cfg, args.out, num_images=args.overfit, target_ap=args.overfit_ap,
                             max_iter=args.overfit_iters, progress=not args.quiet)
        print(format_overfit_report(report))
        print(f"wrote {Path(args.out) / 'overfit.json'}")
        return 0 if report["passed"] else 1
    final = train(cfg, args.out, resume=args.resume, progress=not args.quiet)
    if dist.is_main_process():
        print(f"wrote {final}")
    if cfg.data.val_json and not args.no_eval:
        _evaluate_checkpoint(final, cfg, Path(args.out) / "metrics.json", quiet=args.quiet)
    dist.cleanup()
    return 0


def _evaluate_checkpoint(weights: Path, cfg, metrics_path: Path, quiet: bool = False) -> dict:
    from boxdepth.data.build import build_dataset
    from boxdepth.engine import dist
    from boxdepth.engine.evaluate import format_metrics_table
    from boxdepth.engine.inference import evaluate_model, load_trained_model

    device = dist.init_distributed(cfg.device)
    model, cfg, _ = load_trained_model(weights, device, cfg)
    dataset = build_dataset(cfg, "val", is_train=False)
    metrics = evaluate_model(model, dataset, cfg.data.val_json, device, metrics_path=metrics_path,
                             progress=not quiet)
    if dist.is_main_process():
        print(format_metrics_table(metrics))
        print(f"wrote {metrics_path}")
    return metrics


def cmd_eval(args: argparse.Namespace) -> int:
    from boxdepth.engine.evaluate import format_metrics_table, run_eval_files

    if args.config is not None:
        if not args.weights:
            raise ValueError("boxdepth eval CONFIG needs --weights CKPT")
        from boxdepth.config import load_config
        cfg = load_config(args.config, args.overrides)
        # default: beside the checkpoint, as training's own evaluation writes them
        _evaluate_checkpoint(Path(args.weights), cfg, args.out or Path(args.weights).parent / "metrics.json")
        return 0
    if not (args.gt and args.results):
        raise ValueError("give either CONFIG --weights CKPT, or --gt GT.json --results DETS.json")
    metrics = run_eval_files(args.gt, args.results, args.out)
    print(format_metrics_table(metrics))
    if args.out:
        print(f"wrote {args.out}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from boxdepth.engine.predict import format_predict_summary, run_predict

    summary = run_predict(args.weights, args.inputs, args.out, device=args.device,
                          score_thresh=args.score_thresh, save_depth=args.save_depth,
                          progress=not args.quiet, cfg_overrides=args.overrides)
    print(format_predict_summary(summary))
    return 0


def cmd_depth(args: argparse.Namespace) -> int:
    from boxdepth.depth.generate import generate_depth

    if (args.model is None) == (args.from_sensor is None):
        raise ValueError("give exactly one of --model MODEL_DIR or --from-sensor SENSOR_DEPTH_ROOT")
    summary = generate_depth(args.images_root, args.out, model_dir=args.model,
                             from_sensor=args.from_sensor, coco_json=args.json,
                             batch_size=args.batch_size, device=args.device,
                             progress=not args.quiet, overwrite=args.overwrite)
    print(f"{summary['written']} depth maps written, {summary['skipped_existing']} already there "
          f"({summary['source']}) -> {summary['out_root']} in {summary['seconds']:.1f} s")
    return 0


def cmd_viz(args: argparse.Namespace) -> int:
    from boxdepth.viz.panels import format_viz_summary, run_viz

    summary = run_viz(args.inputs, args.out, depth_root=args.depth, images_root=args.images_root,
                      weights=args.weights, gt=args.gt, device=args.device,
                      score_thresh=args.score_thresh,
                      max_images=args.max_images, kappa=args.kappa, tau=args.tau,
                      short_side=args.short_side, affinity=args.affinity, progress=not args.quiet)
    print(format_viz_summary(summary))
    return 0


def _parse_hw(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like HxW, e.g. 192x256, got {text!r}") from None
    return h, w


def cmd_export(args: argparse.Namespace) -> int:
    from boxdepth.config import load_config
    from boxdepth.export.exporter import export_model

    cfg = load_config(args.config, args.overrides)
    meta = export_model(args.weights, args.out, fmt=args.format, cfg=cfg, size_hw=args.size,
                        dynamic=args.dynamic)
    shape = "dynamic (any multiple of 32)" if meta["dynamic"] else "x".join(map(str, meta["input_size"]))
    print(f"wrote {args.out} ({meta['format']}, input canvas {shape}, {meta['meta']['weights_loaded']} "
          f"weights); run it with: python -m boxdepth.export.runner {args.out} IMAGES... --out DIR")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from boxdepth.data.cityscapes import convert_cityscapes, format_cityscapes_summary

    report = convert_cityscapes(args.gtfine_root, args.out, images_root=args.images)
    print(format_cityscapes_summary(report))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from boxdepth.demo import run_demo

    out = args.out or Path("runs/demo-full" if args.full else "runs/demo")
    run_demo(out_dir=out, seeds=args.seeds, variants=args.variants, extra=args.overrides,
             progress=not args.quiet, full=args.full)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="boxdepth", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"boxdepth {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("synth", help="generate the embedded synthetic RGB-D dataset")
    s.add_argument("--out", required=True, type=Path, help="output folder")
    s.add_argument("--train", type=int, default=300, help="training images (default 300)")
    s.add_argument("--val", type=int, default=100, help="validation images (default 100)")
    s.add_argument("--size", type=_parse_size, default=(256, 192), help="WxH (default 256x192)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--camouflage", type=float, default=0.3,
                   help="fraction of objects coloured like their surroundings (default 0.3)")
    s.add_argument("--depth-error", type=float, default=1.0,
                   help="pseudo-depth degradation level; 0 = exact (default 1.0)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_synth)

    s = sub.add_parser("inspect", help="load a COCO dataset as training would and summarise it")
    s.add_argument("--json", required=True, type=Path, help="COCO annotation file")
    s.add_argument("--images", required=True, type=Path, help="image root")
    s.add_argument("--depth", type=Path, default=None, help="pseudo-depth root (optional)")
    s.add_argument("--skip-bad-images", action="store_true")
    s.add_argument("--allow-missing-depth", action="store_true")
    s.set_defaults(func=cmd_inspect)

    s = sub.add_parser("train", help="train a model (plain python or under torchrun)")
    s.add_argument("config", help="YAML config (path or packaged name, e.g. synth_boxinst)")
    s.add_argument("overrides", nargs="*", help="key=value config overrides")
    s.add_argument("--out", required=True, type=Path, help="run directory")
    s.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    s.add_argument("--no-eval", action="store_true", help="skip the evaluation at the end")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.add_argument("--overfit", type=int, default=0, metavar="N",
                   help="check the set-up first: train on N training images until box AP on them "
                        "reaches --overfit-ap (exit 0) or --overfit-iters run out (exit 1)")
    s.add_argument("--overfit-ap", type=float, default=50.0, help="box AP to reach (default 50)")
    s.add_argument("--overfit-iters", type=int, default=300, help="iteration budget (default 300)")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("eval", help="evaluate a checkpoint, or score a COCO results file",
                       description="boxdepth eval CONFIG --weights CKPT [key=value ...] | "
                                   "boxdepth eval --gt GT.json --results DETS.json [--out metrics.json]")
    s.add_argument("config", nargs="?", help="YAML config of the model to evaluate")
    s.add_argument("overrides", nargs="*", help="key=value config overrides")
    s.add_argument("--weights", type=Path, help="checkpoint (with CONFIG)")
    s.add_argument("--gt", type=Path, help="ground-truth COCO json (with masks for segm AP)")
    s.add_argument("--results", type=Path, help="COCO results json")
    s.add_argument("--out", type=Path, default=None,
                   help="metrics file to write (with CONFIG: default <checkpoint folder>/metrics.json, "
                        "detections beside it)")
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("predict", help="run a checkpoint on images: COCO results, overlays, masks")
    s.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    s.add_argument("--weights", required=True, type=Path, help="checkpoint")
    s.add_argument("--out", required=True, type=Path, help="output folder")
    s.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    s.add_argument("--score-thresh", type=float, default=0.3,
                   help="minimum score for overlays and mask PNGs (results.json keeps all)")
    s.add_argument("--save-depth", action="store_true",
                   help="also save predicted instance depth (DG-MaskHead models)")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override applied over the checkpoint's config (repeatable)")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_predict)

    s = sub.add_parser("depth", help="make pseudo depth once: a local HF depth model or a depth camera")
    s.add_argument("images_root", type=Path, help="image tree (the one training reads)")
    s.add_argument("--out", required=True, type=Path, help="depth root (mirrors the image tree)")
    s.add_argument("--model", type=str, default=None,
                   help="local Hugging Face depth model folder (DPT, Depth Anything); never downloads")
    s.add_argument("--from-sensor", type=Path, default=None,
                   help="depth-camera images (uint16 mm, 0 = no reading) to convert instead")
    s.add_argument("--json", type=Path, default=None, help="only the images of this COCO json")
    s.add_argument("--batch-size", type=int, default=4)
    s.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    s.add_argument("--overwrite", action="store_true", help="recompute maps that already exist")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_depth)

    s = sub.add_parser("viz", help="panels: image | pseudo depth | colour and depth affinity | "
                                   "predicted masks | predicted instance depth | pseudo masks")
    s.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    s.add_argument("--out", required=True, type=Path, help="output folder")
    s.add_argument("--depth", type=Path, default=None, help="pseudo-depth root")
    s.add_argument("--images-root", type=Path, default=None,
                   help="root the depth tree mirrors (default: the inputs' common folder)")
    s.add_argument("--weights", type=Path, default=None, help="checkpoint: adds the prediction tiles")
    s.add_argument("--gt", type=Path, default=None, metavar="GT.json",
                   help="COCO json with boxes: with --weights, adds the distillation pseudo-mask "
                        "tile (file_names relative to the images root)")
    s.add_argument("--device", default="auto")
    s.add_argument("--score-thresh", type=float, default=0.3)
    s.add_argument("--max-images", type=int, default=8)
    s.add_argument("--kappa", type=float, default=0.5, help="S_d = exp(-kappa |d255_i - d255_j|)")
    s.add_argument("--tau", type=float, default=0.5, help="active depth pairs: S_d > tau")
    s.add_argument("--short-side", type=int, default=None,
                   help="resize first, as training does (affinities depend on scale)")
    s.add_argument("--affinity", choices=("active", "mean"), default="active",
                   help="show the fraction of active pairs, or the mean similarity")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_viz)

    s = sub.add_parser("export", help="export the network to ONNX or TorchScript (post-processing "
                                      "stays in boxdepth.export.runner)")
    s.add_argument("config", help="YAML config of the model (path or packaged name)")
    s.add_argument("overrides", nargs="*", help="key=value config overrides")
    s.add_argument("--weights", required=True, type=Path, help="checkpoint")
    s.add_argument("--format", required=True, choices=("onnx", "torchscript"))
    s.add_argument("--out", required=True, type=Path, help="file to write (.onnx / .pt)")
    s.add_argument("--size", type=_parse_hw, default=None, metavar="HxW",
                   help="padded input canvas, height x width, multiples of 32 (needed without "
                        "--dynamic; with it, only the trace example)")
    s.add_argument("--dynamic", action="store_true", help="any batch size and canvas (multiples of 32)")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("convert", help="convert a dataset's own labels to COCO json (cityscapes)")
    s.add_argument("dataset", choices=("cityscapes",))
    s.add_argument("gtfine_root", type=Path, help="Cityscapes gtFine folder (holding train/ and val/)")
    s.add_argument("--out", required=True, type=Path, help="folder for train.json (boxes) and val.json (masks)")
    s.add_argument("--images", type=Path, default=None, metavar="LEFTIMG8BIT_ROOT",
                   help="check that every image exists under this leftImg8bit folder")
    s.set_defaults(func=cmd_convert)

    s = sub.add_parser("demo", help="the main job on the embedded synthetic dataset")
    s.add_argument("--out", type=Path, default=None,
                   help="run folder (default runs/demo, with --full runs/demo-full)")
    from boxdepth.demo import DEFAULT_SEEDS, DEFAULT_VARIANTS, FULL_BUDGET, FULL_SEEDS, VARIANTS

    s.add_argument("--full", action="store_true",
                   help=f"the complete Table 3 (Table 3a/3b/3c and exact-depth rows) at {FULL_BUDGET} "
                        f"iterations, {FULL_SEEDS} seeds: hours on a CPU, see the README")
    s.add_argument("--seeds", type=int, default=None,
                   help=f"repeat every variant with seeds 0..N-1 (default {DEFAULT_SEEDS}, "
                        f"--full {FULL_SEEDS})")
    s.add_argument("--variants", nargs="+", default=None, choices=list(VARIANTS), metavar="VARIANT",
                   help=f"variants to train (default, in table order: {' '.join(DEFAULT_VARIANTS)}; "
                        f"all: {' '.join(VARIANTS)})")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every variant, e.g. --set solver.max_iter=200")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.set_defaults(func=cmd_demo)
    add_label_qa_parsers(sub)
    return p


def cmd_label(args: argparse.Namespace) -> int:
    from boxdepth.config import load_config
    from boxdepth.engine.dist import resolve_device
    from boxdepth.engine.inference import load_trained_model
    from boxdepth.label.run import format_label_summary, label_options, run_label

    cfg = load_config(args.config, args.overrides)
    device = resolve_device(args.device or cfg.device)
    model, cfg, _ = load_trained_model(args.weights, device, cfg)
    summary = run_label(model, json_path=args.json, images_root=args.images, out_path=args.out,
                        depth_root=args.depth, batch_size=args.batch_size, device=device,
                        progress=not args.quiet, min_box_size=cfg.data.min_box_size,
                        min_iou=args.min_iou, resume=args.resume, weights=args.weights,
                        **label_options(cfg))
    print(format_label_summary(summary))
    return 0


def cmd_qa(args: argparse.Namespace) -> int:
    from boxdepth.label.qa_report import format_qa_summary, run_qa

    print(format_qa_summary(run_qa(args.json, args.images, args.out, top=args.top)))
    return 0


def add_label_qa_parsers(sub) -> None:
    s = sub.add_parser("label", help="model masks for the boxes of a COCO json (-> a labelled json)")
    s.add_argument("config", help="YAML config of the model (its distill.teacher_size is the scale)")
    s.add_argument("overrides", nargs="*", help="key=value config overrides")
    s.add_argument("--weights", required=True, type=Path, help="checkpoint")
    s.add_argument("--json", required=True, type=Path, help="COCO json with the boxes")
    s.add_argument("--images", required=True, type=Path, help="image root of the json's file_names")
    s.add_argument("--depth", type=Path, default=None, help="pseudo-depth root: depth-aware S_match")
    s.add_argument("--out", required=True, type=Path, help="labelled COCO json to write")
    s.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N (default: the config's)")
    s.add_argument("--batch-size", type=int, default=4)
    s.add_argument("--min-iou", type=float, default=0.3,
                   help="least box IoU of a box and the prediction that labels it (default 0.3)")
    s.add_argument("--resume", action="store_true",
                   help="take up the images a stopped run already labelled (<out>.partial.jsonl)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_label)

    s = sub.add_parser("qa", help="rank the annotations of a labelled json most likely wrong")
    s.add_argument("--json", required=True, type=Path, help="labelled COCO json (boxdepth label)")
    s.add_argument("--images", required=True, type=Path, help="image root (for the contact sheet)")
    s.add_argument("--out", required=True, type=Path, help="folder for qa.csv, qa.json, qa_contact.png")
    s.add_argument("--top", type=int, default=24, help="crops on the contact sheet (default 24)")
    s.set_defaults(func=cmd_qa)


def parse_cli(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse argv; `key=value` overrides may also follow options (`train CFG --out D k=v`),
    which argparse alone refuses once an option has ended the positional run."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        takes_overrides = isinstance(getattr(args, "overrides", None), list) and \
            args.command in ("train", "eval", "export", "label")
        stray = [e for e in extra if not (takes_overrides and "=" in e and not e.startswith("-"))]
        if stray:
            parser.error(f"unrecognized arguments: {' '.join(stray)}")
        args.overrides = [*args.overrides, *extra]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_cli(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from boxdepth.config import ConfigError

    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError, ConfigError, PermissionError) as e:
        if args.debug:
            raise
        print(f"boxdepth {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"boxdepth {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
