"""Run an exported file (boxdepth export) with the Python post-processing around it.

The exported graph gives the dense maps of graph.py. What depends on the data stays here,
in the same code `boxdepth predict` runs (so the COCO results are the same):
decode_detections (score threshold, top-k per level, class-aware NMS, top post_nms_topk),
the dynamic mask head on the kept detections (a grouped 1x1 convolution with one group
per detection; it has no weights of its own, the controller map holds them), and
postprocess_detections (crop, resize to the original image, threshold the masks).

`ExportedModel(path)` loads a .onnx (onnxruntime) or TorchScript file and behaves like a
CondInst in eval mode for inference: `model(images uint8 (B, 3, Hp, Wp), image_mask bool
(B, Hp, Wp))` -> list of per-image dicts ("boxes", "scores", "labels", "mask_probs",
"depth_probs"); `model.raw(images, image_mask)` -> the dense outputs as float32 tensors;
`mask_threshold`, `mask_out_stride`, `num_classes`, `mask_head`, `cfg`, `metadata`. So
`boxdepth.engine.predict.predict_paths` and `boxdepth.engine.inference.evaluate_model`
take it in place of the PyTorch model.

Command line: python -m boxdepth.export.runner MODEL_FILE INPUTS... --out DIR
  [--score-thresh 0.3] [--threads N]  -> the same files as `boxdepth predict`.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from boxdepth.fileio import refuse_overwriting_inputs
from boxdepth.export.exporter import METADATA_KEY, TORCHSCRIPT_EXTRA, SIZE_DIVISIBILITY
from boxdepth.export.graph import split_outputs
from boxdepth.models.build import build_mask_head
from boxdepth.models.condinst import check_size_divisibility, dense_to_detections
from boxdepth.models.fcos import compute_locations
from boxdepth.models.mask_branch import MaskBranch


def _load_onnx(path: Path, threads: int | None):
    try:
        import onnxruntime as ort
    except ImportError:
        raise ValueError(f"{path}: running an ONNX file needs onnxruntime: "
                         "pip install 'boxdepth[export]'") from None
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types
        raise ValueError(f"{path}: not a loadable ONNX model: {e}") from None
    text = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if text is None:
        raise ValueError(f"{path}: ONNX model has no '{METADATA_KEY}' metadata (not made by boxdepth export)")

    def run(images: torch.Tensor, image_mask: torch.Tensor) -> list[torch.Tensor]:
        outs = session.run(None, {"images": images.numpy(), "image_mask": image_mask.numpy()})
        return [torch.from_numpy(np.asarray(o)) for o in outs]
    return run, json.loads(text)


def _load_torchscript(path: Path):
    extra = {TORCHSCRIPT_EXTRA: ""}
    try:
        with warnings.catch_warnings():  # torch deprecates torch.jit; the archive still loads
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as e:  # torch.jit raises RuntimeError and friends
        raise ValueError(f"{path}: not a loadable TorchScript archive: {e}") from None
    if not extra[TORCHSCRIPT_EXTRA]:
        raise ValueError(f"{path}: TorchScript archive has no {TORCHSCRIPT_EXTRA} (not made by boxdepth export)")

    @torch.no_grad()
    def run(images: torch.Tensor, image_mask: torch.Tensor) -> list[torch.Tensor]:
        return list(module(images, image_mask))
    return run, json.loads(extra[TORCHSCRIPT_EXTRA])


class ExportedModel:
    """An exported file plus the post-processing: see the module docstring."""

    training = False

    def __init__(self, path: str | Path, *, threads: int | None = None):
        from boxdepth.config import Config

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"exported model not found: {path}")
        # TorchScript archives are zip files; anything else is tried as ONNX
        self._run, self.metadata = (_load_torchscript(path) if zipfile.is_zipfile(path)
                                    else _load_onnx(path, threads))
        self.path = path
        self.cfg = Config(self.metadata["config"])
        m = self.cfg.model
        self.strides = [int(s) for s in m.fcos.strides]
        self.num_levels = int(self.metadata["num_levels"])
        self.num_classes = int(m.fcos.num_classes)
        self.mask_threshold = float(m.mask_threshold)
        # what predict/eval pad batches for this model to, as for the PyTorch model
        self.size_divisibility = check_size_divisibility(self.cfg.input.size_divisibility)
        self.mask_head = build_mask_head(self.cfg)
        self.mask_out_stride = self.mask_head.mask_out_stride
        self.mask_feat_stride = MaskBranch.out_stride
        self.fixed_size = None if self.metadata["dynamic"] else tuple(self.metadata["input_size"])

    def eval(self) -> "ExportedModel":
        return self

    def train(self, mode: bool = True) -> "ExportedModel":
        if mode:
            raise ValueError(f"{self.path}: an exported model cannot be trained")
        return self

    def _fit_canvas(self, images: torch.Tensor, image_mask: torch.Tensor):
        hp, wp = images.shape[-2:]
        if hp % SIZE_DIVISIBILITY or wp % SIZE_DIVISIBILITY:
            raise ValueError(f"{self.path}: canvas {hp}x{wp} is not a multiple of {SIZE_DIVISIBILITY}")
        if self.fixed_size is None or (hp, wp) == self.fixed_size:
            return images, image_mask
        fh, fw = self.fixed_size
        if hp > fh or wp > fw:
            raise ValueError(f"{self.path}: exported for a fixed {fh}x{fw} canvas; this image needs "
                             f"{hp}x{wp} (export with --dynamic or a larger --size)")
        # zero padding, masked out, as collate_batch pads a batch to its largest image
        return (F.pad(images, (0, fw - wp, 0, fh - hp)),
                F.pad(image_mask, (0, fw - wp, 0, fh - hp)))

    def raw(self, images: torch.Tensor, image_mask: torch.Tensor) -> list[torch.Tensor]:
        """Dense outputs (graph.output_names order) for an already padded batch."""
        images, image_mask = self._fit_canvas(images.cpu().to(torch.uint8), image_mask.cpu().bool())
        return self._run(images.contiguous(), image_mask.contiguous())

    def __call__(self, images: torch.Tensor, image_mask: torch.Tensor | None = None) -> list[dict]:
        if image_mask is None:
            image_mask = torch.ones(images.shape[0], *images.shape[-2:], dtype=torch.bool)
        images, image_mask = self._fit_canvas(images.cpu().to(torch.uint8), image_mask.cpu().bool())
        head_out, mask_feats = split_outputs(self._run(images.contiguous(), image_mask.contiguous()),
                                             self.num_levels)
        fc = self.cfg.model.fcos
        locations = compute_locations([t.shape[-2:] for t in head_out["cls_logits"]], self.strides)
        return dense_to_detections(head_out, mask_feats, locations, self.mask_head, strides=self.strides,
                                   mask_feat_stride=self.mask_feat_stride,
                                   canvas_hw=tuple(images.shape[-2:]), inference_th=fc.inference_th,
                                   pre_nms_topk=fc.pre_nms_topk, nms_th=fc.nms_th,
                                   post_nms_topk=fc.post_nms_topk)


def run_exported_predict(model_file: str | Path, inputs: list[str], out_dir: str | Path, *,
                         score_thresh: float = 0.3, save_depth: bool = False, max_images=None,
                         threads: int | None = None, progress: bool = True) -> dict:
    """`boxdepth predict` with an exported file: the same outputs and summary dict."""
    from boxdepth.data.transforms import TestTransform
    from boxdepth.engine.predict import categories_of, input_paths, predict_paths

    paths = input_paths(inputs, out_dir, max_images)
    model = ExportedModel(model_file, threads=threads)
    meta = model.metadata["meta"]
    cat_ids, class_names = categories_of(meta, model.num_classes, model_file)
    transform = TestTransform(model.cfg.input.min_size_test, model.cfg.input.max_size_test)
    return predict_paths(model, paths, out_dir, transform=transform, cat_ids=cat_ids,
                         class_names=class_names, device=torch.device("cpu"),
                         score_thresh=score_thresh, save_depth=save_depth, progress=progress)


def main(argv: list[str] | None = None) -> int:
    from boxdepth.engine.predict import format_predict_summary

    p = argparse.ArgumentParser(prog="python -m boxdepth.export.runner",
                                description="run a `boxdepth export` file on images (as boxdepth predict)")
    p.add_argument("model", type=Path, help=".onnx or TorchScript file written by boxdepth export")
    p.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    p.add_argument("--out", required=True, type=Path,
                   help="output folder: results.json, overlays, mask PNGs (as boxdepth predict)")
    p.add_argument("--score-thresh", type=float, default=0.3,
                   help="minimum score for overlays and mask PNGs (results.json keeps all)")
    p.add_argument("--save-depth", action="store_true",
                   help="also save predicted instance depth (DG-MaskHead models)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    try:
        from boxdepth.cli import PREDICT_OUTPUTS

        refuse_overwriting_inputs(
            {"--out": args.out, **{f"--out ({n})": args.out / n for n in PREDICT_OUTPUTS}},
            [("FILE", args.model), *(("INPUTS", x) for x in args.inputs)])
        summary = run_exported_predict(args.model, args.inputs, args.out, score_thresh=args.score_thresh,
                                       save_depth=args.save_depth, threads=args.threads,
                                       progress=not args.quiet)
    except (FileNotFoundError, ValueError) as e:
        print(f"boxdepth export runner: error: {e}", file=sys.stderr)
        return 2
    print(format_predict_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
