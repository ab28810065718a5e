"""Depth-aware Hungarian matching of GT boxes to teacher predictions (Eqs. 7-9, SPEC §3).

Per image, with G GT boxes, P teacher predictions and K neighbours per pixel (all on
the student's canvas; masks and depth similarity at the mask stride 4, h x w):

    depth_consistency_score(masks (P, h, w) soft in [0, 1], depth_sim (K, h, w), tau_d)
                                                                         -> (P,)
    DepthAwareHungarianMatcher(alpha=0.8, beta=0.2, tau_d=0.5, mode="depth")(
        gt_boxes (G, 4) XYXY, pred_boxes (P, 4) XYXY, pred_scores (P,),
        pred_masks (P, h, w) soft, depth_sim (K, h, w) or None)
        -> {"gt_inds" (M,) long, "pred_inds" (M,) long, "s_match" (M,) float,
            "s_dcons" (M,) float}            M = min(G, P), sorted by gt index

`depth_sim` is Eq. 3's S_d for each pixel and its K neighbours, as
`losses.depth.depth_similarity(255 * d01, image_mask, k, dilation, kappa)[b]`
(neighbours off the image have S_d = 0).

Eq. 8, S_dcons(m) = sum [S_d > tau_d] * m * S_d / sum m * S_d, sums over every pixel i
and each of its neighbours j. The mask factor is the soft mask at the pair's centre
pixel, m_i, and not a pairwise product m_i * m_j: the paper's Eq. 8 has exactly one
P_mask^T factor per (pixel, neighbour) term, and its text defines the score as "the
ratio of regions with depth consistency greater than tau_d", i.e. the S_d-weighted
share of the mask's neighbour pairs that are depth-consistent. A mask inside one
depth-smooth region scores 1; a mask spreading over a depth edge collects inconsistent
pairs (S_d <= tau_d) and scores lower. Because pairs are weighted by S_d, pairs across
a very sharp edge (S_d ~ 0) weigh little: the score reacts to moderate depth steps,
the ones the depth consistency loss also ignores. A mask with zero weight everywhere
scores 0.

Eq. 9, S_match = alpha * IoU(gt, pred) + beta * S_dcons(pred) + (1 - alpha - beta) *
S_pred (the teacher's score; weight 0 with the paper's alpha = 0.8, beta = 0.2).
mode "iou" is Table 3c's IoU-only matcher: S_match = IoU, depth is never read and
"s_dcons" is NaN (not computed). The assignment maximises the sum of S_match with
`scipy.optimize.linear_sum_assignment`; each GT gets at most one prediction and each
prediction at most one GT. Scores are compared at a 1e-6 resolution and ties go to the
assignment with the smallest sum of prediction indices (the model returns predictions
by decreasing score), so the result is deterministic.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from boxdepth.ops.boxes import box_iou
from boxdepth.ops.precision import float32_region

_SCORE_RESOLUTION = 1e-6  # S_match values closer than this count as ties


def depth_consistency_score(masks: torch.Tensor, depth_sim: torch.Tensor, tau_d: float) -> torch.Tensor:
    """Eq. 8 for each of P soft masks (P, h, w) given S_d (K, h, w) -> (P,) in [0, 1]."""
    if masks.dim() != 3 or depth_sim.dim() != 3 or masks.shape[-2:] != depth_sim.shape[-2:]:
        raise ValueError("boxdepth/distill/matcher.py: depth_consistency_score needs masks (P,h,w) "
                         f"and depth_sim (K,h,w) of equal h,w, got {tuple(masks.shape)} and "
                         f"{tuple(depth_sim.shape)}")
    sim = depth_sim.float()
    # the mask factor is the centre pixel's, so the neighbour sums can be taken first
    consistent = (sim * (sim > tau_d)).sum(dim=0).flatten()  # (h*w,)
    total = sim.sum(dim=0).flatten()
    m = masks.float().flatten(1)
    with float32_region(m.device):  # sums over every pixel: keep fp32 under AMP
        num, den = m @ consistent, m @ total
    return torch.where(den > 0, num / den.clamp(min=torch.finfo(den.dtype).tiny), torch.zeros_like(den))


def maximum_assignment(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of the assignment maximising the summed `scores` (G, P).

    Exact integer costs: scores quantised to _SCORE_RESOLUTION, scaled so that the whole
    tie-breaking term (the summed column indices, < min(G, P) * P) stays below one
    quantum. Rows come back sorted.
    """
    g, p = scores.shape
    if g == 0 or p == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    scale = float(min(g, p) * p + 1)
    quantised = np.round(scores.astype(np.float64) / _SCORE_RESOLUTION)
    gain = quantised * scale - np.arange(p, dtype=np.float64)[None, :]
    rows, cols = linear_sum_assignment(gain, maximize=True)
    return rows.astype(np.int64), cols.astype(np.int64)


class DepthAwareHungarianMatcher(nn.Module):
    """One-to-one GT <-> teacher prediction assignment by S_match (Eq. 9)."""

    def __init__(self, *, alpha: float = 0.8, beta: float = 0.2, tau_d: float = 0.5, mode: str = "depth"):
        super().__init__()
        if mode not in ("depth", "iou"):
            raise ValueError(f"boxdepth/distill/matcher.py: mode must be 'depth' or 'iou', got {mode!r}")
        if alpha < 0 or beta < 0 or alpha + beta > 1 + 1e-9:
            raise ValueError("boxdepth/distill/matcher.py: need alpha >= 0, beta >= 0 and "
                             f"alpha + beta <= 1 (the S_pred weight is 1 - alpha - beta), "
                             f"got alpha={alpha}, beta={beta}")
        self.alpha, self.beta, self.tau_d, self.mode = float(alpha), float(beta), float(tau_d), mode

    @property
    def pred_score_weight(self) -> float:
        return max(1.0 - self.alpha - self.beta, 0.0)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}, tau_d={self.tau_d}, mode={self.mode!r}"

    def match_scores(self, gt_boxes: torch.Tensor, pred_boxes: torch.Tensor, pred_scores: torch.Tensor,
                     pred_masks: torch.Tensor | None = None, depth_sim: torch.Tensor | None = None):
        """S_match (G, P) and S_dcons (P,) (NaN in iou mode)."""
        iou = box_iou(gt_boxes.float(), pred_boxes.float())
        if self.mode == "iou":
            return iou, torch.full((len(pred_boxes),), math.nan, device=iou.device)
        if pred_masks is None or depth_sim is None:
            raise ValueError("boxdepth/distill/matcher.py: mode 'depth' needs pred_masks and depth_sim "
                             "(use mode 'iou' for an image without pseudo depth)")
        if len(pred_masks) != len(pred_boxes):
            raise ValueError(f"boxdepth/distill/matcher.py: {len(pred_masks)} pred_masks for "
                             f"{len(pred_boxes)} pred_boxes")
        s_dcons = depth_consistency_score(pred_masks, depth_sim.to(pred_masks.device), self.tau_d).to(iou.device)
        s_match = self.alpha * iou + self.beta * s_dcons[None, :]
        if self.pred_score_weight > 0:
            s_match = s_match + self.pred_score_weight * pred_scores.float().to(iou.device)[None, :]
        return s_match, s_dcons

    @torch.no_grad()
    def forward(self, gt_boxes: torch.Tensor, pred_boxes: torch.Tensor, pred_scores: torch.Tensor,
                pred_masks: torch.Tensor | None = None, depth_sim: torch.Tensor | None = None) -> dict:
        _check_inputs(gt_boxes, pred_boxes, pred_scores)
        device = pred_boxes.device
        empty = {"gt_inds": torch.zeros(0, dtype=torch.long, device=device),
                 "pred_inds": torch.zeros(0, dtype=torch.long, device=device),
                 "s_match": torch.zeros(0, dtype=torch.float32, device=device),
                 "s_dcons": torch.zeros(0, dtype=torch.float32, device=device)}
        if len(gt_boxes) == 0 or len(pred_boxes) == 0:
            return empty
        s_match, s_dcons = self.match_scores(gt_boxes.to(device), pred_boxes, pred_scores, pred_masks,
                                             depth_sim)
        rows, cols = maximum_assignment(s_match.cpu().numpy())
        gt_inds = torch.from_numpy(rows).to(device)
        pred_inds = torch.from_numpy(cols).to(device)
        return {"gt_inds": gt_inds, "pred_inds": pred_inds, "s_match": s_match[gt_inds, pred_inds],
                "s_dcons": s_dcons[pred_inds]}


def _check_inputs(gt_boxes: torch.Tensor, pred_boxes: torch.Tensor, pred_scores: torch.Tensor) -> None:
    for name, boxes in (("gt_boxes", gt_boxes), ("pred_boxes", pred_boxes)):
        if boxes.dim() != 2 or boxes.shape[-1] != 4:
            raise ValueError(f"boxdepth/distill/matcher.py: {name} must be (N, 4) XYXY, "
                             f"got {tuple(boxes.shape)}")
    if pred_scores.shape != (len(pred_boxes),):
        raise ValueError(f"boxdepth/distill/matcher.py: pred_scores must be ({len(pred_boxes)},), "
                         f"got {tuple(pred_scores.shape)}")
