"""The `boxdepth` command line's arguments: one parser function per verb.

`parse_cli(argv)` -> argparse.Namespace with `command` (the verb), `debug` and the verb's
options; `key=value` overrides land in `overrides` (a list). Which function runs a verb is
`boxdepth.cli.COMMANDS[command]`: this module knows the arguments, not the library.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from boxdepth import __version__

DESCRIPTION = "boxdepth: box-supervised instance segmentation with pseudo depth"
CONFIG_HELP = ("optional YAML config; the model config comes from the checkpoint, CONFIG adds only "
               "data paths, device and eval.* and any disagreement is printed")


def _parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 256x192, got {text!r}") from None
    if w < 32 or h < 32:
        raise argparse.ArgumentTypeError(f"size {text} is too small (at least 32x32)")
    return w, h


def _parse_hw(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like HxW, e.g. 192x256, got {text!r}") from None
    return h, w


def _parse_rgb(text: str) -> tuple[float, float, float]:
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        vals = ()
    if len(vals) != 3:
        raise argparse.ArgumentTypeError(f"expected R,G,B numbers, e.g. 0.485,0.456,0.406, "
                                         f"got {text!r}")
    return vals


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="boxdepth", description=DESCRIPTION)
    p.add_argument("--version", action="version", version=f"boxdepth {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for add in (_add_synth, _add_inspect, _add_train, _add_eval, _add_predict, _add_depth, _add_viz,
                _add_export, _add_convert, _add_demo, _add_label, _add_qa):  # the order of --help
        add(sub)
    return p


def _add_synth(sub) -> None:
    s = sub.add_parser("synth", help="generate the embedded synthetic RGB-D dataset")
    s.add_argument("--out", required=True, type=Path, help="output folder")
    s.add_argument("--train", type=int, default=300, help="training images (default 300)")
    s.add_argument("--val", type=int, default=100, help="validation images (default 100)")
    s.add_argument("--size", type=_parse_size, default=(256, 192), help="WxH (default 256x192)")
    s.add_argument("--seed", type=int, default=0,
                   help="random seed: the same seed gives the same dataset (default 0)")
    s.add_argument("--camouflage", type=float, default=0.3,
                   help="fraction of objects coloured like their surroundings (default 0.3)")
    s.add_argument("--depth-error", type=float, default=1.0,
                   help="pseudo-depth degradation level; 0 = exact (default 1.0)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_inspect(sub) -> None:
    s = sub.add_parser("inspect", help="load a COCO dataset as training would and summarise it")
    s.add_argument("--json", required=True, type=Path, help="COCO annotation file")
    s.add_argument("--images", required=True, type=Path, help="image root")
    s.add_argument("--depth", type=Path, default=None, help="pseudo-depth root (optional)")
    s.add_argument("--skip-bad-images", action="store_true",
                   help="list unreadable images as skipped instead of stopping at the first")
    s.add_argument("--allow-missing-depth", action="store_true",
                   help="count images without a depth map instead of stopping at the first")


def _add_train(sub) -> None:
    s = sub.add_parser("train", help="train a model (plain python or under torchrun)")
    s.add_argument("config", help="YAML config (path or packaged name, e.g. synth_boxinst)")
    s.add_argument("overrides", nargs="*", help="key=value config overrides")
    s.add_argument("--out", required=True, type=Path, help="run directory")
    s.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    s.add_argument("--overwrite", action="store_true",
                   help="--out holds an earlier run: delete its files (config, checkpoints, "
                        "metrics, tb/) and start again")
    s.add_argument("--no-eval", action="store_true", help="skip the evaluation at the end")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.add_argument("--overfit", type=int, default=0, metavar="N",
                   help="check the set-up first: train on N training images until box AP on them "
                        "reaches --overfit-ap (exit 0) or --overfit-iters run out (exit 1)")
    s.add_argument("--overfit-ap", type=float, default=50.0, help="box AP to reach (default 50)")
    s.add_argument("--overfit-iters", type=int, default=300, help="iteration budget (default 300)")


def _add_eval(sub) -> None:
    s = sub.add_parser("eval", help="evaluate a checkpoint, or score a COCO results file",
                       description="boxdepth eval [CONFIG] --weights CKPT [key=value ...] | "
                                   "boxdepth eval --gt GT.json --results DETS.json [--out metrics.json]")
    s.add_argument("config", nargs="?", help=CONFIG_HELP)
    s.add_argument("overrides", nargs="*", help="key=value config overrides")
    s.add_argument("--weights", type=Path, help="checkpoint to evaluate")
    s.add_argument("--gt", type=Path, help="ground-truth COCO json (with masks for segm AP)")
    s.add_argument("--results", type=Path, help="COCO results json")
    s.add_argument("--out", type=Path, default=None,
                   help="metrics file to write (with CONFIG: default <checkpoint folder>/metrics.json, "
                        "detections beside it)")


def _add_predict(sub) -> None:
    s = sub.add_parser("predict", help="run a checkpoint on images: COCO results, overlays, masks")
    s.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    s.add_argument("--weights", required=True, type=Path, help="checkpoint")
    s.add_argument("--out", required=True, type=Path, help="output folder")
    s.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    s.add_argument("--score-thresh", type=float, default=0.3,
                   help="minimum score for overlays and mask PNGs (results.json keeps all)")
    s.add_argument("--save-depth", action="store_true",
                   help="also save predicted instance depth (DG-MaskHead models)")
    s.add_argument("--config", default=None, help=CONFIG_HELP)
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override applied over the checkpoint's config (repeatable)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_depth(sub) -> None:
    s = sub.add_parser("depth", help="make pseudo depth once: a local HF depth model, an exported "
                                      ".onnx/.tflite model or a depth camera")
    s.add_argument("images_root", type=Path, help="image tree (the one training reads)")
    s.add_argument("--out", required=True, type=Path, help="depth root (mirrors the image tree)")
    s.add_argument("--model", type=str, default=None,
                   help="local Hugging Face depth model folder (DPT, Depth Anything) or an "
                        "exported .onnx/.tflite file; never downloads")
    s.add_argument("--from-sensor", type=Path, default=None,
                   help="depth-camera images (uint16 mm, 0 = no reading) to convert instead")
    e = s.add_argument_group("exported models (.onnx/.tflite; what the file states wins)")
    e.add_argument("--polarity", choices=("disparity", "depth"), default=None,
                   help="required: disparity = output larger when nearer (MiDaS/DPT), "
                        "depth = larger when farther (PyDNet++)")
    e.add_argument("--input-size", type=_parse_hw, default=None, metavar="HxW",
                   help="input size when the model's is dynamic")
    e.add_argument("--layout", choices=("nchw", "nhwc"), default=None,
                   help="when the input shape does not tell")
    e.add_argument("--scale", type=float, default=None,
                   help="input = (pixel * scale - mean) / std; default 1/255, i.e. [0, 1]")
    e.add_argument("--mean", type=_parse_rgb, default=None, metavar="R,G,B", help="default 0,0,0")
    e.add_argument("--std", type=_parse_rgb, default=None, metavar="R,G,B", help="default 1,1,1")
    e.add_argument("--output", default=None, metavar="NAME|INDEX",
                   help="which model output is the depth map (default: the first)")
    s.add_argument("--json", type=Path, default=None, help="only the images of this COCO json")
    s.add_argument("--batch-size", type=int, default=4, help="images per forward pass (default 4)")
    s.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    s.add_argument("--overwrite", action="store_true", help="recompute maps that already exist")
    s.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_viz(sub) -> None:
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
    s.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (for --weights)")
    s.add_argument("--score-thresh", type=float, default=0.3,
                   help="minimum score of the predicted masks shown (default 0.3)")
    s.add_argument("--max-images", type=int, default=8,
                   help="panels for at most this many of the inputs (default 8)")
    s.add_argument("--kappa", type=float, default=0.5, help="S_d = exp(-kappa |d255_i - d255_j|)")
    s.add_argument("--tau", type=float, default=0.5, help="active depth pairs: S_d > tau")
    s.add_argument("--short-side", type=int, default=None,
                   help="resize first, as training does (affinities depend on scale)")
    s.add_argument("--affinity", choices=("active", "mean"), default="active",
                   help="show the fraction of active pairs, or the mean similarity")
    s.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_export(sub) -> None:
    s = sub.add_parser("export", help="export the network to ONNX or TorchScript (post-processing "
                                      "stays in boxdepth.export.runner)")
    s.add_argument("config", nargs="?", help=CONFIG_HELP)
    s.add_argument("overrides", nargs="*", help="key=value config overrides")
    s.add_argument("--weights", required=True, type=Path, help="checkpoint")
    s.add_argument("--format", required=True, choices=("onnx", "torchscript"),
                   help="onnx (onnxruntime, other runtimes) or torchscript (torch.jit.load)")
    s.add_argument("--out", required=True, type=Path, help="file to write (.onnx / .pt)")
    s.add_argument("--size", type=_parse_hw, default=None, metavar="HxW",
                   help="padded input canvas, height x width, multiples of 32 (needed without "
                        "--dynamic; with it, only the trace example)")
    s.add_argument("--dynamic", action="store_true", help="any batch size and canvas (multiples of 32)")


def _add_convert(sub) -> None:
    s = sub.add_parser("convert", help="convert a dataset's own labels to COCO json (cityscapes)")
    s.add_argument("dataset", choices=("cityscapes",), help="source dataset format")
    s.add_argument("gtfine_root", type=Path, help="Cityscapes gtFine folder (holding train/ and val/)")
    s.add_argument("--out", required=True, type=Path, help="folder for train.json (boxes) and val.json (masks)")
    s.add_argument("--images", type=Path, default=None, metavar="LEFTIMG8BIT_ROOT",
                   help="check that every image exists under this leftImg8bit folder")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _add_demo(sub) -> None:
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
    s.add_argument("--jobs", type=_positive_int, default=None, metavar="N",
                   help="runs trained at once, the CPU cores shared out between them (default: "
                        "one per core on a CPU, one at a time on a GPU; 1: one after the other)")
    s.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_label(sub) -> None:
    s = sub.add_parser("label", help="model masks for the boxes of a COCO json (-> a labelled json)")
    s.add_argument("config", nargs="?", help=CONFIG_HELP + " (distill.teacher_size is the scale)")
    s.add_argument("overrides", nargs="*", help="key=value config overrides")
    s.add_argument("--weights", required=True, type=Path, help="checkpoint")
    s.add_argument("--json", required=True, type=Path, help="COCO json with the boxes")
    s.add_argument("--images", required=True, type=Path, help="image root of the json's file_names")
    s.add_argument("--depth", type=Path, default=None, help="pseudo-depth root: depth-aware S_match")
    s.add_argument("--out", required=True, type=Path, help="labelled COCO json to write")
    s.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N (default: the config's)")
    s.add_argument("--batch-size", type=int, default=4, help="images per forward pass (default 4)")
    s.add_argument("--min-iou", type=float, default=0.3,
                   help="least box IoU of a box and the prediction that labels it (default 0.3)")
    s.add_argument("--resume", action="store_true",
                   help="take up the images a stopped run already labelled (<out>.partial.jsonl)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_qa(sub) -> None:
    s = sub.add_parser("qa", help="rank the annotations of a labelled json most likely wrong")
    s.add_argument("--json", required=True, type=Path, help="labelled COCO json (boxdepth label)")
    s.add_argument("--images", required=True, type=Path, help="image root (for the contact sheet)")
    s.add_argument("--out", required=True, type=Path, help="folder for qa.csv, qa.json, qa_contact.png")
    s.add_argument("--top", type=int, default=24, help="crops on the contact sheet (default 24)")


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
