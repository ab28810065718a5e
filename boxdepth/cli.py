"""`boxdepth` command line: thin verbs over the library.

Each verb parses its arguments, calls one library function and prints what it made.
Expected failures (bad files, bad configs, a full disk; cli_errors.py) end with one clear
line on stderr and exit status 2; `--debug` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from boxdepth.cli_args import build_parser, parse_cli  # noqa: F401  (the public entry points)
from boxdepth.fileio import refuse_overwriting_inputs

# what `predict` writes into --out (engine/predict.py)
PREDICT_OUTPUTS = ("results.json", "images.json", "overlays", "masks", "depth",
                   "predict_manifest.jsonl")

log = logging.getLogger("boxdepth")


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
                             allow_missing_depth=args.allow_missing_depth, progress=True)
    print(format_inspect_report(report))
    return 1 if report["errors"] else 0


def cmd_train(args: argparse.Namespace) -> int:
    from boxdepth.api import train
    from boxdepth.config import load_config
    from boxdepth.engine import dist

    cfg = load_config(args.config, args.overrides)
    if args.overfit:
        from boxdepth.engine.overfit import format_overfit_report, run_overfit
        report = run_overfit(cfg, args.out, num_images=args.overfit, target_ap=args.overfit_ap,
                             max_iter=args.overfit_iters, progress=not args.quiet)
        print(format_overfit_report(report))
        print(f"wrote {Path(args.out) / 'overfit.json'}")
        return 0 if report["passed"] else 1
    # the Python API's train (boxdepth/api.py): the verb adds only the printing
    result = train(cfg, args.out, resume=args.resume, overwrite=args.overwrite,
                   evaluate=not args.no_eval, progress=not args.quiet)
    if dist.is_main_process():
        print(f"wrote {result['weights']}")
        if result["metrics"] is not None:
            _print_metrics(result["metrics"], Path(args.out) / "metrics.json")
    dist.cleanup()
    return 0


def _print_metrics(metrics: dict, metrics_path: Path) -> None:
    from boxdepth.engine.evaluate import format_metrics_table

    print(format_metrics_table(metrics))
    print(f"wrote {metrics_path}")


def _checkpoint_config(args: argparse.Namespace):
    """The config of checkpoint args.weights; CONFIG and key=value only add overrides
    (engine/ckpt_config.py), and disagreements with the checkpoint are printed."""
    from boxdepth.engine.ckpt_config import inference_config

    config, overrides = args.config, list(args.overrides)
    # `eval --weights W key=value`: argparse hands the first override to the optional CONFIG
    if config is not None and "=" in config and not Path(config).exists():
        config, overrides = None, [config, *overrides]
    return inference_config(args.weights, config, overrides)


def cmd_eval(args: argparse.Namespace) -> int:
    from boxdepth.engine.evaluate import format_metrics_table, run_eval_files
    from boxdepth.engine.inference import results_path_for

    if args.config is not None or args.weights:
        if not args.weights:
            raise ValueError("boxdepth eval CONFIG needs --weights CKPT")
        cfg = _checkpoint_config(args)
        if not cfg.data.val_json:
            raise ValueError(f"no data.val_json to evaluate on: {args.weights}'s config has none; "
                             "give data.val_json=VAL.json")
        # default: beside the checkpoint, as training's own evaluation writes them
        out = args.out or Path(args.weights).parent / "metrics.json"
        refuse_overwriting_inputs({"--out": out, "--out (detections)": results_path_for(out)},
                                  {"--weights": args.weights, "data.val_json": cfg.data.val_json})
        from boxdepth.api import evaluate_checkpoint
        from boxdepth.engine import dist

        metrics = evaluate_checkpoint(Path(args.weights), cfg, out)
        if dist.is_main_process():
            _print_metrics(metrics, out)
        return 0
    if not (args.gt and args.results):
        raise ValueError("give either [CONFIG] --weights CKPT, or --gt GT.json --results DETS.json")
    refuse_overwriting_inputs({"--out": args.out}, {"--gt": args.gt, "--results": args.results})
    metrics = run_eval_files(args.gt, args.results, args.out)
    print(format_metrics_table(metrics))
    if args.out:
        print(f"wrote {args.out}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from boxdepth.engine.predict import format_predict_summary, run_predict

    refuse_overwriting_inputs(
        {"--out": args.out, **{f"--out ({n})": args.out / n for n in PREDICT_OUTPUTS}},
        [("--weights", args.weights), *(("INPUTS", x) for x in args.inputs)])
    summary = run_predict(args.weights, args.inputs, args.out, device=args.device,
                          score_thresh=args.score_thresh, save_depth=args.save_depth,
                          progress=not args.quiet, cfg_overrides=args.overrides,
                          config=args.config)
    print(format_predict_summary(summary))
    return 0


def cmd_depth(args: argparse.Namespace) -> int:
    from boxdepth.depth.exported import ExportedOptions
    from boxdepth.depth.generate import generate_depth

    if (args.model is None) == (args.from_sensor is None):
        raise ValueError("give exactly one of --model MODEL_DIR|FILE.onnx|FILE.tflite or "
                         "--from-sensor SENSOR_DEPTH_ROOT")
    exported = ExportedOptions(polarity=args.polarity, input_size=args.input_size,
                               layout=args.layout, scale=args.scale, mean=args.mean, std=args.std,
                               output=args.output)
    summary = generate_depth(args.images_root, args.out, model_dir=args.model,
                             from_sensor=args.from_sensor, coco_json=args.json,
                             batch_size=args.batch_size, device=args.device,
                             progress=not args.quiet, overwrite=args.overwrite, exported=exported)
    print(f"{summary['written']} depth maps written, {summary['skipped_existing']} already there "
          f"({summary['source']}) -> {summary['out_root']} in {summary['seconds']:.1f} s")
    return 0


def cmd_viz(args: argparse.Namespace) -> int:
    from boxdepth.viz.panels import format_viz_summary, run_viz

    refuse_overwriting_inputs({"--out": args.out}, [
        ("--depth", args.depth), ("--images-root", args.images_root), ("--weights", args.weights),
        ("--gt", args.gt), *(("INPUTS", x) for x in args.inputs)])
    summary = run_viz(args.inputs, args.out, depth_root=args.depth, images_root=args.images_root,
                      weights=args.weights, gt=args.gt, device=args.device,
                      score_thresh=args.score_thresh,
                      max_images=args.max_images, kappa=args.kappa, tau=args.tau,
                      short_side=args.short_side, affinity=args.affinity, progress=not args.quiet)
    print(format_viz_summary(summary))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from boxdepth.export.exporter import export_model

    refuse_overwriting_inputs({"--out": args.out}, {"--weights": args.weights})
    cfg = _checkpoint_config(args)
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
             progress=not args.quiet, full=args.full, jobs=args.jobs)
    return 0


def cmd_label(args: argparse.Namespace) -> int:
    from boxdepth.engine.dist import resolve_device
    from boxdepth.engine.inference import load_trained_model
    from boxdepth.label.run import format_label_summary, label_options, run_label

    cfg = _checkpoint_config(args)
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


COMMANDS = {"synth": cmd_synth, "inspect": cmd_inspect, "train": cmd_train, "eval": cmd_eval,
            "predict": cmd_predict, "depth": cmd_depth, "viz": cmd_viz, "export": cmd_export,
            "convert": cmd_convert, "demo": cmd_demo, "label": cmd_label, "qa": cmd_qa}


def main(argv: list[str] | None = None) -> int:
    args = parse_cli(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from boxdepth.cli_errors import EXPECTED_ERRORS, check_out_kind, error_line

    try:
        check_out_kind(args.command, getattr(args, "out", None))
        return int(COMMANDS[args.command](args) or 0)
    except EXPECTED_ERRORS as e:  # ValueError (ConfigError, bad files, ...) and OSError
        if args.debug:
            raise
        print(f"boxdepth {args.command}: error: {error_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"boxdepth {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
