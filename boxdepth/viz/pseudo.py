"""The self-distillation pseudo masks of one image, made as training makes them (SPEC §3),
drawn for `boxdepth viz --weights CKPT --gt GT.json`.

    pseudo_masks(model, cfg, image, d01, gt_boxes, device) -> {
        "masks"    bool (G, H, W)   each GT's pseudo mask (all False without a match),
        "s_match"  float64 (G,)     S_match of each GT's pair, NaN without a match,
        "reliable" bool (G,)        S_match > distill.tau_m (the pairs Eq. 10 trains on),
        "depth_match" bool          the pairs were scored with S_dcons (else IoU only)}
    pseudo_mask_tile(model, cfg, image, d01, gt_boxes, device, *, model_name="teacher")
        -> (tile uint8 (H, W, 3), title str,
            info {"gt", "matched", "reliable" (ints), "s_match" [float] of the matched GTs})
    load_gt_records(json_path, *, min_box_size=1.0)
        -> {file_name: {"boxes" float32 (G, 4) XYXY, "height", "width"}}
    GtPseudoMasks(gt_json, model, cfg, device, model_name).tile(image, d01, rel, path)
        -> (tile, title) for `run_viz`: the pseudo masks of the json's image `rel` (its
           file_name), or a note tile when the json has no such image; appends to
           .drawn [{"image", **info}] or .not_in_gt [image path]
with image uint8 (H, W, 3), d01 float (H, W) in [0, 1] or None and gt_boxes (G, 4) XYXY
in the image's pixels.

One image, no flip, the steps of `SelfDistiller.forward`: the image (+ depth) and its GT
boxes go through TestTransform(input.min_size_test, input.max_size_test) and
collate_batch into a one-image student batch that keeps the image as its `originals`;
`teacher_predictions` runs `model` on that original at distill.teacher_size (the
teacher's input in training) and maps its top predictions onto the student's canvas;
the SelfDistiller that `build_distiller` makes from `cfg` matches GT boxes x
predictions, depth-aware when the image has depth, by IoU alone otherwise. A matched
GT's pseudo mask is (teacher mask > 0.5) x its box mask at the mask stride s, as the
reliable dice loss takes it (losses/distill.py); each stride cell is shown as the s x s
block of the resized image it stands for, resized (nearest) to the original size.

Colours: reliable pairs green, unreliable ones (S_match <= tau_m) orange, both with
"S 0.87" captions; GT boxes without a match (more GT boxes than predictions) grey
outlines only. The best pairs are drawn on top.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from boxdepth.data.coco_records import parse_coco, read_coco_json
from boxdepth.data.transforms import TestTransform, collate_batch
from boxdepth.distill.build import build_distiller
from boxdepth.distill.teacher import teacher_predictions
from boxdepth.engine.trainer import batch_to_device
from boxdepth.losses.boxinst import boxes_to_stride_masks
from boxdepth.losses.distill import pseudo_masks_in_boxes
from boxdepth.viz.draw import note_tile, overlay_instances

RELIABLE_COLOR = (40, 200, 40)
UNRELIABLE_COLOR = (255, 128, 0)
UNMATCHED_COLOR = (170, 170, 170)


def load_gt_records(json_path, *, min_box_size: float = 1.0) -> dict[str, dict]:
    """Boxes of every image of a COCO json, read as training reads them (crowd and
    degenerate boxes left out); errors name the json."""
    path = Path(json_path)
    parsed = parse_coco(read_coco_json(path), where=str(path), mode="box",
                        min_box_size=min_box_size)
    return {r["file_name"]: {"boxes": r["boxes"], "height": r["height"], "width": r["width"]}
            for r in parsed.records}


def student_batch(image: np.ndarray, d01, gt_boxes, *, min_size: int, max_size: int,
                  size_divisibility: int = 32) -> dict:
    """A collated one-image batch as the training loader makes it with distillation on
    (the image kept as its original), without the flip."""
    boxes = torch.as_tensor(np.asarray(gt_boxes, np.float32).reshape(-1, 4))
    decoded = torch.tensor(np.asarray(image, np.uint8)).permute(2, 0, 1).contiguous()
    sample = {"image": decoded,
              "boxes": boxes, "labels": torch.zeros(len(boxes), dtype=torch.long),
              "depth": None if d01 is None else torch.tensor(np.asarray(d01, np.float32))[None],
              "flipped": False}
    sample = TestTransform(min_size, max_size)(sample)
    sample.update(has_depth=d01 is not None, orig_size=tuple(image.shape[:2]),
                  size=tuple(int(s) for s in sample["image"].shape[-2:]), original=decoded)
    return collate_batch([sample], size_divisibility)


def _nearest_index(n_out: int, n_in: int) -> np.ndarray:
    """Source index of each output index for a nearest-exact resize n_in -> n_out."""
    return np.minimum(np.floor((np.arange(n_out) + 0.5) * n_in / n_out).astype(np.int64), n_in - 1)


def stride_cells_to_image(cells: np.ndarray, stride: int, size_hw, orig_hw) -> np.ndarray:
    """Stride-s canvas maps (K, Hp/s, Wp/s) -> (K, H0, W0): each cell an s x s block of the
    resized (h, w) image, which is then resized (nearest-exact) to (H0, W0)."""
    (h, w), (h0, w0) = size_hw, orig_hw
    rows = _nearest_index(h0, h) // stride
    cols = _nearest_index(w0, w) // stride
    return cells[:, rows][:, :, cols]


@torch.no_grad()
def pseudo_masks(model, cfg, image: np.ndarray, d01, gt_boxes, device) -> dict:
    """The pseudo mask and S_match of each GT box (module docstring)."""
    if d01 is not None and np.shape(d01) != image.shape[:2]:
        raise ValueError(f"pseudo_masks: depth of shape {np.shape(d01)} does not match the "
                         f"image {image.shape[:2]}")
    distiller = build_distiller(cfg)
    batch = batch_to_device(student_batch(
        image, d01, gt_boxes, min_size=cfg.input.min_size_test, max_size=cfg.input.max_size_test,
        size_divisibility=cfg.input.size_divisibility), device)
    g, s = len(batch["targets"][0]["boxes"]), distiller.stride
    hc, wc = (int(v) // s for v in batch["images"].shape[-2:])
    cells = np.zeros((g, hc, wc), bool)
    s_match = np.full(g, np.nan)
    if g:
        preds = teacher_predictions(model, batch, teacher_size=cfg.distill.teacher_size,
                                    max_size=cfg.distill.teacher_max_size,
                                    topk=cfg.model.fcos.post_nms_topk,
                                    mask_stride=cfg.model.mask_head.mask_out_stride,
                                    raw_images=batch["originals"])
        match = distiller.match(preds, batch)[0]
        gi, pi = match["gt_inds"].cpu(), match["pred_inds"].cpu()
        box_masks = boxes_to_stride_masks(batch["targets"][0]["boxes"].cpu().float(),
                                          batch["images"].shape[-2:], s)[:, 0]
        cells[gi.numpy()] = pseudo_masks_in_boxes(preds[0]["masks"].cpu()[pi], box_masks[gi]).numpy()
        s_match[gi.numpy()] = match["s_match"].cpu().double().numpy()
    size = batch["targets"][0]["size"]
    return {"masks": stride_cells_to_image(cells, s, size, image.shape[:2]),
            "s_match": s_match, "reliable": np.nan_to_num(s_match, nan=-np.inf) > distiller.tau_m,
            "depth_match": distiller.matcher.mode == "depth" and d01 is not None}


def pseudo_mask_tile(model, cfg, image: np.ndarray, d01, gt_boxes, device, *,
                     model_name: str = "teacher") -> tuple[np.ndarray, str, dict]:
    """The image with each GT's pseudo mask drawn (module docstring), its title and counts."""
    boxes = np.asarray(gt_boxes, np.float32).reshape(-1, 4)
    pm = pseudo_masks(model, cfg, image, d01, boxes, device)
    s, rel = pm["s_match"], pm["reliable"]
    matched = ~np.isnan(s)
    # best pairs first (drawn on top), GT boxes without a match last
    order = sorted(range(len(boxes)), key=lambda k: (not matched[k], -np.nan_to_num(s[k])))
    colors = np.array([RELIABLE_COLOR if rel[k] else UNRELIABLE_COLOR if matched[k]
                       else UNMATCHED_COLOR for k in order], np.uint8).reshape(-1, 3)
    captions = [f"S {s[k]:.2f}" if matched[k] else "" for k in order]
    tile = overlay_instances(image, pm["masks"][order], boxes[order], captions, colors=colors)
    tau_m = float(cfg.distill.tau_m)
    how = "" if pm["depth_match"] else ", IoU match"
    title = (f"pseudo masks ({model_name}{how}, S_match>{tau_m:g}): {int(rel.sum())} reliable / "
             f"{int(matched.sum())} matched / {len(boxes)} GT")
    info = {"gt": len(boxes), "matched": int(matched.sum()), "reliable": int(rel.sum()),
            "s_match": [float(v) for v in s[matched]]}
    return tile, title, info


class GtPseudoMasks:
    """The boxes of a COCO json and the model that makes their pseudo masks (`run_viz`)."""

    def __init__(self, gt_json, model, cfg, device, model_name: str = "teacher"):
        self.gt_json, self.model, self.cfg, self.device = Path(gt_json), model, cfg, device
        self.records = load_gt_records(gt_json, min_box_size=cfg.data.min_box_size)
        self.model_name = model_name  # load_trained_model's meta["weights_loaded"]
        self.drawn: list[dict] = []
        self.not_in_gt: list[str] = []

    def tile(self, image: np.ndarray, d01, rel: str, path) -> tuple[np.ndarray, str]:

        rec, name = self.records.get(rel), self.gt_json.name
        if rec is None:
            self.not_in_gt.append(str(path))
            note = (f"no pseudo masks: {rel} is not in {name} (its file_names must be relative "
                    f"to the images root)")
            return note_tile(image.shape[:2], note), f"pseudo masks: not in {name}"
        if (rec["height"], rec["width"]) != tuple(image.shape[:2]):
            raise ValueError(f"{self.gt_json}: {rel} is {rec['width']}x{rec['height']} there but "
                             f"the image {path} is {image.shape[1]}x{image.shape[0]} (width x height)")
        tile, title, info = pseudo_mask_tile(self.model, self.cfg, image, d01, rec["boxes"],
                                             self.device, model_name=self.model_name)
        self.drawn.append({"image": str(path), **info})
        return tile, title
