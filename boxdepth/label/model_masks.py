"""Model predictions for the GT boxes of a batch of images -> one label mask per box.

    label_batch(model, items, *, size, max_size, mask_stride=4, mask_threshold=0.5,
                alpha=0.8, beta=0.2, tau_d=0.5, kappa=0.5, kernel_size=3, dilation=2,
                min_iou=0.3, device="cpu")
        items: [{"image" uint8 (H0, W0, 3), "d01" float32 (H0, W0) in [0, 1] or None,
                 "boxes" float32 (G, 4) XYXY in the image's pixels}]
        -> per item {"masks" bool (G, H0, W0), "score" float (G,) in [0, 1],
                     "source" [G x "model" | "box"], "depth_match" bool}

The images go through the test transform at `size` / `max_size` (the config's
distill.teacher_size: the scale at which training's teacher drew the pseudo masks) and
one padded batch, as training's teacher batch. Matching happens on that canvas with
the model's masks at the mask stride, as in training (`label.assign`): S_dcons from
the pseudo depth pooled by the stride (Eq. 3's S_d at the d255 scale), the box IoU alone
for an image without depth. The batch is padded to the model's `size_divisibility`
(input.size_divisibility). Only the matched predictions' masks are then up-sampled to the
original image size (`postprocess_detections`, threshold `mask_threshold`) and clipped
to their boxes, so a full-size mask is never built for an unmatched prediction.
"""
from __future__ import annotations

import numpy as np
import torch

from boxdepth.data.transforms import TestTransform, collate_batch
from boxdepth.label.assign import assign_predictions, label_masks, label_match_scores
from boxdepth.losses.step_maps import stride_depth_similarity
from boxdepth.models.condinst import canvas_divisibility, postprocess_detections

_PER_DET_KEYS = ("boxes", "scores", "labels", "mask_probs", "depth_probs")


def _sample(item: dict, transform) -> dict:
    image = np.asarray(item["image"], np.uint8)
    d01 = item.get("d01")
    if d01 is not None and np.shape(d01) != image.shape[:2]:
        raise ValueError(f"label_batch: depth of shape {np.shape(d01)} does not match the image "
                         f"{image.shape[:2]}")
    boxes = torch.as_tensor(np.asarray(item["boxes"], np.float32).reshape(-1, 4))
    sample = transform({"image": torch.from_numpy(image).permute(2, 0, 1).contiguous(), "boxes": boxes,
                        "labels": torch.zeros(len(boxes), dtype=torch.long),
                        "depth": None if d01 is None else torch.from_numpy(np.asarray(d01, np.float32))[None],
                        "flipped": False})
    sample.update(has_depth=d01 is not None, orig_size=tuple(image.shape[:2]),
                  size=tuple(int(s) for s in sample["image"].shape[-2:]))
    return sample


def _sorted_detections(det: dict, size_hw) -> dict:
    """Detections by decreasing score (the matcher's tie rule assumes it), without the ones
    whose box is empty once clipped to the image (postprocess_detections drops those)."""
    h, w = size_hw
    b = det["boxes"].float()
    nonempty = (b[:, 2].clamp(0, w) > b[:, 0].clamp(0, w)) & (b[:, 3].clamp(0, h) > b[:, 1].clamp(0, h))
    order = det["scores"].argsort(descending=True, stable=True)
    order = order[nonempty[order]]
    return {k: (det[k][order] if det.get(k) is not None else None) for k in _PER_DET_KEYS}


def _label_one(det: dict, target: dict, sim, valid_cells, orig_boxes, opts: dict) -> dict:
    det = _sorted_detections(det, target["size"])
    stride = opts["mask_stride"]
    masks_stride = det["mask_probs"][:, 0].float() * valid_cells[None].float()
    scores = label_match_scores(target["boxes"], det["boxes"], det["scores"], masks_stride, sim,
                                alpha=opts["alpha"], beta=opts["beta"], tau_d=opts["tau_d"])
    a = assign_predictions(scores["s_match"], scores["iou"], min_iou=opts["min_iou"])
    h0, w0 = target["orig_size"]
    matched = torch.zeros((len(orig_boxes), h0, w0), dtype=torch.bool)
    sel = (a["pred_of_gt"] >= 0).nonzero(as_tuple=True)[0]
    if len(sel):
        picked = a["pred_of_gt"][sel].to(det["boxes"].device)
        sub = {k: (v[picked] if v is not None else None) for k, v in det.items()}
        sub["depth_probs"] = None  # the label needs the mask only
        full = postprocess_detections(sub, target["size"], (h0, w0), opts["mask_threshold"],
                                      mask_stride=stride)["masks"]
        matched[sel] = full.cpu()
    out = label_masks(torch.as_tensor(orig_boxes).float(), matched, a["pred_of_gt"], a["score"])
    return {**out, "depth_match": sim is not None}


@torch.no_grad()
def label_batch(model, items: list[dict], *, size: int, max_size: int, mask_stride: int = 4,
                mask_threshold: float = 0.5, alpha: float = 0.8, beta: float = 0.2, tau_d: float = 0.5,
                kappa: float = 0.5, kernel_size: int = 3, dilation: int = 2, min_iou: float = 0.3,
                device="cpu") -> list[dict]:
    """Label every GT box of every item (module doc)."""
    if not items:
        return []
    if model.training:
        raise ValueError("label_batch: the model is in training mode; call .eval() first")
    transform = TestTransform(size, max_size)
    batch = collate_batch([_sample(it, transform) for it in items], canvas_divisibility(model))
    images, image_mask = batch["images"].to(device), batch["image_mask"].to(device)
    dets = model(images, image_mask)
    s0 = mask_stride // 2
    valid = image_mask[:, s0::mask_stride, s0::mask_stride]
    sims = None
    if batch["depth"] is not None:
        sims = stride_depth_similarity(batch["depth"].to(device), image_mask, stride=mask_stride,
                                       kernel_size=kernel_size, dilation=dilation, kappa=kappa)
    opts = {"mask_stride": mask_stride, "mask_threshold": mask_threshold, "alpha": alpha,
            "beta": beta, "tau_d": tau_d, "min_iou": min_iou}
    out = []
    for i, (det, target, item) in enumerate(zip(dets, batch["targets"], items)):
        target = {**target, "boxes": target["boxes"].to(device)}
        sim = sims[i] if sims is not None and bool(batch["has_depth"][i]) else None
        out.append(_label_one(det, target, sim, valid[i], np.asarray(item["boxes"], np.float32).reshape(-1, 4),
                              opts))
    return out
