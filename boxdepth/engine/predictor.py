"""`Predictor`: a trained checkpoint as a function of one image (detectron2's DefaultPredictor).

    from boxdepth import Predictor
    p = Predictor("runs/mine/model_final.pth", device="cpu")
    out = p("photo.jpg")        # a path, a uint8 (H, W, 3) RGB numpy array or a PIL image

`out`, numpy, D detections sorted by score (descending), at the original image size:
    "boxes"         float32 (D, 4)    XYXY pixels
    "scores"        float32 (D,)      sqrt(sigmoid(cls) * sigmoid(ctr))
    "classes"       int64 (D,)        contiguous class index into `p.class_names`
    "category_ids"  int64 (D,)        the dataset's category id of each (`p.cat_ids[classes]`)
    "masks"         bool (D, H, W)
    "depth"         float32 (D, H, W) predicted instance depth (in [0, 1], larger = nearer)
                    of a DG-MaskHead model (model.depth_head); None otherwise
Every detection the model keeps (score > model.fcos.inference_th); `score_thresh` drops
those below it. The model config is the checkpoint's (engine/ckpt_config.py: `config`
and `overrides` as for `boxdepth predict --config/--set`); weights: the EMA teacher when
the checkpoint has one and eval.model=teacher. Attributes: model (eval mode), cfg,
device, cat_ids, class_names, transform.

`boxdepth predict` runs the same code: `detect_image` (the network, boxes, and a paster
that gives one full-size mask at a time) is what both call; `predict_image` adds the
(D, H, W) masks this API returns.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from boxdepth.data.image_io import load_image_rgb
from boxdepth.data.transforms import TestTransform, collate_batch
from boxdepth.engine.dist import resolve_device
from boxdepth.models.condinst import canvas_divisibility, postprocess_detections


def categories_of(meta: dict, num_classes: int, weights) -> tuple[list[int], list[str]]:
    cat_ids = [int(c) for c in meta.get("cat_ids") or range(num_classes)]
    names = [str(n) for n in meta.get("class_names") or [f"class_{i}" for i in range(num_classes)]]
    if len(cat_ids) != num_classes or len(names) != num_classes:
        raise ValueError(f"{weights}: meta has {len(cat_ids)} cat_ids and {len(names)} class "
                         f"names but the model predicts {num_classes} classes")
    return cat_ids, names


@torch.no_grad()
def detect_image(model: torch.nn.Module, image: np.ndarray, transform, device, *,
                 with_depth: bool = True) -> dict:
    """uint8 (H0, W0, 3) -> {"boxes" (D, 4) XYXY at the original size, "scores" (D,),
    "labels" (D,)} as numpy, sorted by score (descending), and "paster": a
    models.paste.MaskPaster in the same order, which gives one full-size mask (and depth)
    at a time. Its depth is None without a DG head or `with_depth`."""
    h0, w0 = image.shape[:2]
    sample = transform({"image": torch.from_numpy(image).permute(2, 0, 1).contiguous(),
                        "boxes": torch.zeros((0, 4))})
    batch = collate_batch([sample], canvas_divisibility(model))
    det = model(batch["images"].to(device), batch["image_mask"].to(device))[0]
    if not with_depth:  # upsampling D depth maps to the original size is not free
        det = {**det, "depth_probs": None}
    out = postprocess_detections(det, tuple(sample["image"].shape[-2:]), (h0, w0),
                                 model.mask_threshold, mask_stride=model.mask_out_stride, paste=False)
    order = torch.argsort(out["scores"], descending=True, stable=True)
    res = {k: out[k][order].cpu().numpy() for k in ("boxes", "scores", "labels")}
    return {**res, "paster": out["paster"].take(order)}


@torch.no_grad()
def predict_image(model: torch.nn.Module, image: np.ndarray, transform, device, *,
                  with_depth: bool = True) -> dict:
    """uint8 (H0, W0, 3) -> numpy {"boxes" (D, 4) XYXY, "scores" (D,), "labels" (D,),
    "masks" bool (D, H0, W0), "depth" float32 (D, H0, W0) or None} at the original size,
    sorted by score (descending). "depth" is None without a DG head or `with_depth`."""
    det = detect_image(model, image, transform, device, with_depth=with_depth)
    paster = det.pop("paster")
    depth = paster.depths()
    return {**det, "masks": paster.masks().cpu().numpy(),
            "depth": None if depth is None else depth.cpu().numpy()}


def as_rgb_array(image) -> np.ndarray:
    """A path, a PIL image or a numpy array -> uint8 (H, W, 3) RGB."""
    if isinstance(image, (str, Path)):
        return load_image_rgb(image)
    if hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image
        return np.array(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"Predictor: expected an image path, a PIL image or a uint8 (H, W, 3) RGB "
                         f"array, got {arr.dtype} {arr.shape}")
    # torch.from_numpy warns on read-only arrays (np.asarray of a PIL image is one)
    return arr if arr.flags.writeable else arr.copy()


class Predictor:
    """A checkpoint, loaded once, called on single images: see the module docstring."""

    def __init__(self, weights: str | Path, *, device: str = "auto", config: str | Path | None = None,
                 overrides: Sequence[str] = (), score_thresh: float = 0.0):
        from boxdepth.engine.checkpoint import load_checkpoint
        from boxdepth.engine.ckpt_config import inference_config
        from boxdepth.engine.inference import load_trained_model

        if not 0.0 <= float(score_thresh) <= 1.0:
            raise ValueError(f"score_thresh must be in [0, 1], got {score_thresh}")
        self.weights, self.score_thresh = Path(weights), float(score_thresh)
        self.device = resolve_device(device)
        ckpt = load_checkpoint(weights)
        cfg = inference_config(weights, config, overrides, ckpt=ckpt)
        self.model, self.cfg, self.meta = load_trained_model(weights, self.device, cfg, ckpt=ckpt)
        self.cat_ids, self.class_names = categories_of(self.meta, int(self.model.num_classes), weights)
        self.transform = TestTransform(self.cfg.input.min_size_test, self.cfg.input.max_size_test)

    @property
    def has_depth(self) -> bool:
        return bool(self.model.mask_head.depth_head)

    def detect(self, image, *, with_depth: bool = True) -> dict:
        """`detect_image` on `image` (any form `__call__` takes): masks one at a time."""
        return detect_image(self.model, as_rgb_array(image), self.transform, self.device,
                            with_depth=with_depth)

    def __call__(self, image) -> dict:
        det = self.detect(image)
        n = int((det["scores"] >= self.score_thresh).sum())  # sorted by score: the first n
        paster = det["paster"].take(torch.arange(n))
        depth = paster.depths()
        classes = det["labels"][:n].astype(np.int64)
        return {"boxes": det["boxes"][:n].astype(np.float32),
                "scores": det["scores"][:n].astype(np.float32), "classes": classes,
                "category_ids": np.asarray(self.cat_ids, dtype=np.int64)[classes],
                "masks": paster.masks().cpu().numpy(),
                "depth": None if depth is None else depth.cpu().numpy()}
