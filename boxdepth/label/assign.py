"""Which model prediction labels which GT box, and the box-clipped label masks.

Pure tensor code (no files, no model), so the rules can be tested on hand-built
predictions. Per image, G GT boxes and P model predictions in one frame:

    label_match_scores(gt_boxes (G, 4) XYXY, pred_boxes (P, 4) XYXY, pred_scores (P,),
                       pred_masks (P, h, w) soft or None, depth_sim (K, h, w) or None,
                       *, alpha=0.8, beta=0.2, tau_d=0.5)
        -> {"s_match" (G, P) float in [0, 1], "iou" (G, P) float}
    assign_predictions(s_match (G, P), iou (G, P), *, min_iou=0.3)
        -> {"pred_of_gt" (G,) long (-1: no prediction), "score" (G,) float (0 where -1)}
    label_masks(gt_boxes (G, 4) XYXY, matched_masks bool (G, H, W), pred_of_gt (G,),
                score (G,))
        -> {"masks" bool (G, H, W), "score" (G,) float, "source" [G x "model" | "box"]}

S_match is training's, computed by the same matcher (SPEC §3, Eq. 9,
`distill.matcher.DepthAwareHungarianMatcher.match_scores`): with pseudo depth
alpha * IoU(gt box, pred box) + beta * S_dcons(pred mask) + (1 - alpha - beta) * S_pred;
without depth the box IoU alone, as the distiller matches an image without depth (its
IoU-mode matcher, Table 3c). Matching is class-agnostic, as in training: the GT box
names the object, the model only draws its outline.

The one-to-one assignment maximises the summed S_match with the matcher's Hungarian
solver. Pairs whose box IoU is below `min_iou` are not allowed: the Hungarian solver
pairs every GT with some prediction while there are enough of them, even with one on
another object. A GT without an allowed pair, or whose matched mask is empty inside its
box, is labelled with its box filled (source "box", score 0). Every label mask is the
matched mask clipped to the GT box (pixel centres inside the box, the rule of
`engine.inference.boxes_to_full_masks`), so a mask never leaves its box.
"""
from __future__ import annotations

import torch

from boxdepth.distill.matcher import DepthAwareHungarianMatcher, maximum_assignment
from boxdepth.engine.inference import boxes_to_full_masks
from boxdepth.ops.boxes import box_iou

_FORBIDDEN = -1.0  # S_match of a pair below min_iou: the solver takes it only when forced


def label_match_scores(gt_boxes: torch.Tensor, pred_boxes: torch.Tensor, pred_scores: torch.Tensor,
                       pred_masks: torch.Tensor | None = None, depth_sim: torch.Tensor | None = None,
                       *, alpha: float = 0.8, beta: float = 0.2, tau_d: float = 0.5) -> dict:
    """S_match and box IoU of every GT x prediction pair (module doc)."""
    gt, pred = gt_boxes.float().reshape(-1, 4), pred_boxes.float().reshape(-1, 4)
    if pred_scores.shape != (len(pred),):
        raise ValueError(f"label_match_scores: pred_scores must be ({len(pred)},), got "
                         f"{tuple(pred_scores.shape)}")
    iou = box_iou(gt, pred)
    if depth_sim is not None and pred_masks is None:
        raise ValueError("label_match_scores: depth-aware S_match needs pred_masks")
    # the distiller's two matchers (distill/distiller.py): depth-aware, or IoU for an image without depth
    matcher = DepthAwareHungarianMatcher(alpha=alpha, beta=beta, tau_d=tau_d,
                                         mode="iou" if depth_sim is None else "depth")
    s_match, _ = matcher.match_scores(gt, pred, pred_scores, pred_masks, depth_sim)
    return {"s_match": s_match.clamp(0.0, 1.0), "iou": iou}


def assign_predictions(s_match: torch.Tensor, iou: torch.Tensor, *, min_iou: float = 0.3) -> dict:
    """One prediction per GT at most, maximising the summed S_match over allowed pairs."""
    if s_match.shape != iou.shape or s_match.dim() != 2:
        raise ValueError(f"assign_predictions: s_match and iou must share one (G, P) shape, got "
                         f"{tuple(s_match.shape)} and {tuple(iou.shape)}")
    g = s_match.shape[0]
    pred_of_gt = torch.full((g,), -1, dtype=torch.long)
    score = torch.zeros(g, dtype=torch.float32)
    allowed = (iou >= min_iou).cpu()
    gains = torch.where(allowed, s_match.float().cpu(), torch.full_like(s_match.float().cpu(), _FORBIDDEN))
    rows, cols = maximum_assignment(gains.numpy())
    for r, c in zip(rows.tolist(), cols.tolist()):
        if allowed[r, c]:
            pred_of_gt[r], score[r] = c, float(gains[r, c])
    return {"pred_of_gt": pred_of_gt, "score": score}


def label_masks(gt_boxes: torch.Tensor, matched_masks: torch.Tensor, pred_of_gt: torch.Tensor,
                score: torch.Tensor) -> dict:
    """Clip each GT's matched mask (row g of `matched_masks`, ignored where pred_of_gt is -1)
    to its box; the box itself where there is no match or the clipped mask is empty."""
    boxes = gt_boxes.float().reshape(-1, 4)
    if matched_masks.dim() != 3 or len(matched_masks) != len(boxes) or len(pred_of_gt) != len(boxes):
        raise ValueError(f"label_masks: need one (H, W) mask and one pred index per GT box; got "
                         f"masks {tuple(matched_masks.shape)}, {len(pred_of_gt)} indices, "
                         f"{len(boxes)} boxes")
    box_fill = boxes_to_full_masks(boxes.to(matched_masks.device), tuple(matched_masks.shape[-2:]))
    clipped = matched_masks.bool() & box_fill
    use_model = (pred_of_gt.to(clipped.device) >= 0) & clipped.flatten(1).any(dim=1)
    masks = torch.where(use_model[:, None, None], clipped, box_fill)
    out_score = torch.where(use_model.cpu(), score.float().cpu(), torch.zeros(len(boxes)))
    return {"masks": masks, "score": out_score,
            "source": ["model" if u else "box" for u in use_model.tolist()]}
