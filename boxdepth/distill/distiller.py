"""`SelfDistiller`: the distillation term of Eq. 11 for one training batch (SPEC §3).

teacher predictions (top-100 at the teacher's scale, mapped back to the student's
canvas) -> per-image depth-aware Hungarian matching against the GT boxes (Eqs. 7-9) ->
each student proposal of GT g is supervised by the mask of g's matched teacher
prediction, when that match is reliable (S_match > tau_m), with the reliable dice loss
(Eq. 10). Images without pseudo depth are matched by IoU alone.

forward(teacher, outputs, batch) -> (losses {"loss_distill": scalar},
    stats {"distill_gt", "distill_matched", "distill_reliable", "distill_s_match",
           "distill_s_dcons", "distill_clean_removed" with depth_clean}) where `outputs` is
CondInst's training dict and `batch` the collated batch (images, image_mask, depth or
None, has_depth, targets, originals).

The teacher reads `batch["originals"]` (B uint8 (3, H0, W0), the decoded images, which
the trainer's loader keeps when distill.enabled), mirrored like the student's and resized
to teacher_size: the paper's larger teacher input (Table 3c) only adds detail when it is
made from the photo, not from the student's smaller copy. A batch without originals
(hand-built, e.g. benchmarks/train_step.py) falls back to up-sampling the student's image.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from boxdepth.distill.depth_clean import depth_clean_teacher_targets
from boxdepth.distill.matcher import DepthAwareHungarianMatcher
from boxdepth.distill.teacher import teacher_predictions
from boxdepth.losses.distill import pseudo_targets_for_proposals, reliable_dice_loss
from boxdepth.losses.step_maps import step_maps, stride_depth_similarity


class SelfDistiller(nn.Module):
    def __init__(self, *, teacher_size: int = 800, teacher_max_size: int = 1333, match: str = "depth",
                 alpha: float = 0.8, beta: float = 0.2, tau_d: float = 0.5, tau_m: float = 0.8,
                 dice_weight: float = 4.0, kernel_size: int = 3, dilation: int = 2,
                 kappa: float = 0.5, mask_out_stride: int = 4, topk: int = 100,
                 depth_clean: bool = False, clean_tolerance: float = 0.2, clean_mad_scale: float = 3.0):
        super().__init__()
        if match not in ("depth", "iou"):
            raise ValueError(f"distill.match must be 'depth' or 'iou', got {match!r}")
        self.teacher_size, self.teacher_max_size, self.topk = teacher_size, teacher_max_size, topk
        self.matcher = DepthAwareHungarianMatcher(alpha=alpha, beta=beta, tau_d=tau_d, mode=match)
        self.iou_matcher = DepthAwareHungarianMatcher(alpha=1.0, beta=0.0, tau_d=tau_d, mode="iou")
        self.tau_m, self.dice_weight = tau_m, dice_weight
        self.k, self.dilation, self.kappa, self.stride = kernel_size, dilation, kappa, mask_out_stride
        self.depth_clean, self.clean_tolerance, self.clean_mad_scale = depth_clean, clean_tolerance, clean_mad_scale

    def _depth_sim(self, batch: dict) -> torch.Tensor | None:
        if self.matcher.mode != "depth" or batch.get("depth") is None:
            return None
        return stride_depth_similarity(batch["depth"], batch["image_mask"], stride=self.stride,
                                       kernel_size=self.k, dilation=self.dilation, kappa=self.kappa)

    def match(self, preds: list[dict], batch: dict) -> list[dict]:
        sim = self._depth_sim(batch)
        has_depth = batch.get("has_depth")
        matches = []
        for i, (t, p) in enumerate(zip(batch["targets"], preds)):
            item = {"gt_boxes": t["boxes"], "pred_boxes": p["boxes"], "pred_scores": p["scores"],
                    "pred_masks": p["masks"]}
            if sim is not None and (has_depth is None or bool(has_depth[i])):
                matches.append(self.matcher(**item, depth_sim=sim[i]))
            else:
                matches.append(self.iou_matcher(**item))
        return matches

    def forward(self, teacher: nn.Module, outputs: dict, batch: dict):
        preds = teacher_predictions(teacher, batch, teacher_size=self.teacher_size,
                                    max_size=self.teacher_max_size, topk=self.topk,
                                    mask_stride=self.stride, raw_images=batch.get("originals"))
        matches = self.match(preds, batch)
        props = outputs["proposals"]
        t_masks, s_match, has = pseudo_targets_for_proposals(
            props["im_inds"], props["gt_inds"], matches, [p["masks"] for p in preds])
        # the criterion's box masks of this step (losses/step_maps.py)
        box_masks = step_maps(outputs, batch, self.stride).box_masks
        if self.depth_clean:  # ours: pseudo masks lose pixels far in depth (distill/depth_clean.py)
            t_masks, removed = depth_clean_teacher_targets(
                t_masks, box_masks, batch.get("depth"), batch.get("has_depth"), props["im_inds"],
                stride=self.stride, tolerance=self.clean_tolerance, mad_scale=self.clean_mad_scale)
        loss, stats = reliable_dice_loss(props["mask_logits"].float().sigmoid(), t_masks, box_masks,
                                         s_match, tau_m=self.tau_m, weight=self.dice_weight,
                                         has_match=has)
        out_stats = self.match_stats(matches, sum(len(t["boxes"]) for t in batch["targets"]), stats)
        if self.depth_clean:
            out_stats["distill_clean_removed"] = removed
        return {"loss_distill": loss}, out_stats

    def match_stats(self, matches: list[dict], num_gt: int, loss_stats: dict) -> dict:
        """Per-GT counts (GT boxes, matched, reliable) and mean S_match / S_dcons of the batch;
        the loss's own per-proposal counts are kept with a `_proposals` suffix."""
        s_match = torch.cat([m["s_match"].float().cpu() for m in matches]) if matches else torch.zeros(0)
        s_dcons = torch.cat([m["s_dcons"].float().cpu() for m in matches]) if matches else torch.zeros(0)
        s_dcons = s_dcons[torch.isfinite(s_dcons)]
        return {"distill_gt": float(num_gt), "distill_matched": float(len(s_match)),
                "distill_reliable": float((s_match > self.tau_m).sum()),
                "distill_s_match": float(s_match.mean()) if len(s_match) else math.nan,
                "distill_s_dcons": float(s_dcons.mean()) if len(s_dcons) else math.nan,
                "distill_reliable_proposals": loss_stats["distill_reliable"]}
