"""FCOS detection losses (SPEC §2).

Inputs are flattened over images and locations (M here = B * locations):
cls_logits (M, K), box_reg (M, 4) predicted (l, t, r, b) / stride, ctrness (M,) logits,
labels (M,) with K = background, reg_targets (M, 4) (l, t, r, b) / stride.

  loss_fcos_cls = sum focal(cls_logits, one-hot labels) / num_pos
  loss_fcos_loc = sum ctr_target * (1 - GIoU(pred, target)) / sum ctr_target  (positives)
  loss_fcos_ctr = sum BCE(ctrness, ctr_target) / num_pos                    (positives)

Under DDP the normalisers are the global sums divided by the world size (the per-rank
average, because DDP averages gradients), clamped to >= 1 (num_pos) and >= 1e-6 (the
centerness sum), as in FCOS/AdelaiDet. With no positives the three losses are zeros
that still carry a graph to every head output.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def reduce_mean(value: float, device: torch.device) -> float:
    """Sum of `value` over DDP ranks / world size; `value` itself when not distributed."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return float(value)
    t = torch.tensor(float(value), device=device)
    dist.all_reduce(t)
    return t.item() / dist.get_world_size()


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25,
                       gamma: float = 2.0) -> torch.Tensor:
    """Sum over all elements of alpha_t * (1 - p_t)^gamma * BCE (RetinaNet); alpha < 0 = off."""
    logits, targets = logits.float(), targets.float()
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.sum()


def centerness_target(reg_targets: torch.Tensor) -> torch.Tensor:
    """(N, 4) ltrb -> (N,) sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b))."""
    lr = reg_targets[:, [0, 2]]
    tb = reg_targets[:, [1, 3]]
    ratio = (lr.min(dim=1).values / lr.max(dim=1).values) * (tb.min(dim=1).values / tb.max(dim=1).values)
    return ratio.sqrt()


def giou_loss_ltrb(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """(N,) 1 - GIoU of boxes given as distances (l, t, r, b) from the same point."""
    pred, target = pred.float(), target.float()
    pl, pt, pr, pb = pred.unbind(1)
    tl, tt, tr, tb = target.unbind(1)
    pred_area = (pl + pr) * (pt + pb)
    target_area = (tl + tr) * (tt + tb)
    inter = (torch.min(pl, tl) + torch.min(pr, tr)) * (torch.min(pt, tt) + torch.min(pb, tb))
    union = pred_area + target_area - inter
    enclose = (torch.max(pl, tl) + torch.max(pr, tr)) * (torch.max(pt, tt) + torch.max(pb, tb))
    iou = inter / union.clamp(min=eps)
    giou = iou - (enclose - union) / enclose.clamp(min=eps)
    return 1 - giou


def fcos_losses(cls_logits: torch.Tensor, box_reg: torch.Tensor, ctrness: torch.Tensor,
                labels: torch.Tensor, reg_targets: torch.Tensor, *, num_classes: int,
                focal_alpha: float = 0.25, focal_gamma: float = 2.0) -> dict[str, torch.Tensor]:
    if cls_logits.shape[1] != num_classes:
        raise ValueError(f"fcos_losses: cls_logits have {cls_logits.shape[1]} classes, num_classes={num_classes}")
    labels = labels.reshape(-1)
    ctrness = ctrness.reshape(-1)
    pos = (labels >= 0) & (labels < num_classes)
    num_pos = max(reduce_mean(pos.sum().item(), cls_logits.device), 1.0)
    onehot = torch.zeros_like(cls_logits, dtype=torch.float32)
    onehot[pos, labels[pos]] = 1.0
    loss_cls = sigmoid_focal_loss(cls_logits, onehot, focal_alpha, focal_gamma) / num_pos
    if not bool(pos.any()):
        # still join the graph so no head parameter is left without a gradient
        zero = box_reg.float().sum() * 0
        return {"loss_fcos_cls": loss_cls, "loss_fcos_loc": zero,
                "loss_fcos_ctr": ctrness.float().sum() * 0}
    ctr_t = centerness_target(reg_targets[pos].float())
    ctr_sum = max(reduce_mean(ctr_t.sum().item(), cls_logits.device), 1e-6)
    loss_loc = (giou_loss_ltrb(box_reg[pos], reg_targets[pos]) * ctr_t).sum() / ctr_sum
    loss_ctr = F.binary_cross_entropy_with_logits(ctrness[pos].float(), ctr_t, reduction="sum") / num_pos
    return {"loss_fcos_cls": loss_cls, "loss_fcos_loc": loss_loc, "loss_fcos_ctr": loss_ctr}


def fcos_losses_from_outputs(outputs: dict, *, num_classes: int, focal_alpha: float = 0.25,
                             focal_gamma: float = 2.0) -> dict[str, torch.Tensor]:
    """`fcos_losses` on the training dict of `CondInst.forward` (keys cls_logits, bbox_reg,
    ctrness, labels, reg_targets)."""
    return fcos_losses(outputs["cls_logits"], outputs["bbox_reg"], outputs["ctrness"], outputs["labels"],
                       outputs["reg_targets"], num_classes=num_classes, focal_alpha=focal_alpha,
                       focal_gamma=focal_gamma)
