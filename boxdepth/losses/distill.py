"""Reliable dice loss of the self-distillation stage (Eq. 10, SPEC §3).

Each student proposal of GT g (the CondInst proposals carry `im_inds`, `gt_inds`) is
supervised by the pseudo mask of the teacher prediction matched to GT g, when that
match is reliable (S_match > tau_m). All masks at the mask output stride (4), h x w on
the student's padded canvas; N student proposals:

    pseudo_targets_for_proposals(prop_im_inds (N,), prop_gt_inds (N,),
                                 matches_per_image [B x matcher dict],
                                 teacher_masks_per_image [B x (P_b, h, w)])
        -> teacher_masks (N, 1, h, w) soft (0 where unmatched), s_match (N,) (0 where
           unmatched), has_match (N,) bool
    reliable_dice_loss(student_mask_probs (N, 1, h, w), teacher_masks (N, 1, h, w),
                       gt_box_masks (N, 1, h, w), s_match (N,), tau_m=0.8, weight=4.0,
                       has_match=None (N,) bool)
        -> (loss scalar, stats {"distill_matched", "distill_reliable", "distill_s_match"})

Pseudo mask = (teacher mask > 0.5) * GT box mask (the teacher mask clipped to the GT
box). L_m_dice = gamma * mean over reliable proposals of dice(P_mask, pseudo), with
`losses.boxinst.dice_loss`; Eq. 10 writes a sum, SPEC §3 pins the mean so gamma = 4
keeps Table 3d's meaning whatever the number of proposals.
"""
from __future__ import annotations

import torch

from boxdepth.losses.boxinst import dice_loss

PSEUDO_MASK_THRESHOLD = 0.5  # SPEC §3: pseudo mask = teacher mask > 0.5


def pseudo_masks_in_boxes(teacher_masks: torch.Tensor, gt_box_masks: torch.Tensor) -> torch.Tensor:
    """The pseudo mask: (teacher mask > 0.5) clipped to the GT box mask -> bool, same shape."""
    return (teacher_masks > PSEUDO_MASK_THRESHOLD) & (gt_box_masks > 0)


def pseudo_targets_for_proposals(prop_im_inds: torch.Tensor, prop_gt_inds: torch.Tensor,
                                 matches_per_image: list[dict], teacher_masks_per_image: list[torch.Tensor]):
    """Teacher mask, S_match and a has-match flag for every student proposal (see module doc)."""
    if len(matches_per_image) != len(teacher_masks_per_image):
        raise ValueError(f"boxdepth/losses/distill.py: {len(matches_per_image)} match dicts for "
                         f"{len(teacher_masks_per_image)} images of teacher masks")
    if prop_im_inds.shape != prop_gt_inds.shape or prop_im_inds.dim() != 1:
        raise ValueError("boxdepth/losses/distill.py: prop_im_inds and prop_gt_inds must both be (N,), "
                         f"got {tuple(prop_im_inds.shape)} and {tuple(prop_gt_inds.shape)}")
    shapes = {tuple(m.shape[-2:]) for m in teacher_masks_per_image}
    if len(shapes) != 1:
        raise ValueError(f"boxdepth/losses/distill.py: teacher masks of all images must share one "
                         f"canvas (h, w), got {sorted(shapes)}")
    h, w = shapes.pop()
    n, device = len(prop_im_inds), prop_im_inds.device
    masks = torch.zeros(n, 1, h, w, dtype=torch.float32, device=device)
    s_match = torch.zeros(n, dtype=torch.float32, device=device)
    has_match = torch.zeros(n, dtype=torch.bool, device=device)
    for b, (match, t_masks) in enumerate(zip(matches_per_image, teacher_masks_per_image)):
        sel = (prop_im_inds == b).nonzero(as_tuple=True)[0]
        if len(sel) == 0 or len(match["gt_inds"]) == 0:
            continue
        gt_inds, pred_inds = match["gt_inds"].to(device), match["pred_inds"].to(device)
        size = int(max(int(gt_inds.max()), int(prop_gt_inds[sel].max())) + 1)
        # GT index -> matched prediction (-1: none) and its S_match
        pred_of_gt = torch.full((size,), -1, dtype=torch.long, device=device)
        pred_of_gt[gt_inds] = pred_inds
        score_of_gt = torch.zeros(size, dtype=torch.float32, device=device)
        score_of_gt[gt_inds] = match["s_match"].to(device, torch.float32)
        pred = pred_of_gt[prop_gt_inds[sel]]
        ok = pred >= 0
        dst = sel[ok]
        masks[dst, 0] = t_masks.to(device, torch.float32)[pred[ok]]
        s_match[dst] = score_of_gt[prop_gt_inds[dst]]
        has_match[dst] = True
    return masks, s_match, has_match


def reliable_dice_loss(student_mask_probs: torch.Tensor, teacher_masks: torch.Tensor,
                       gt_box_masks: torch.Tensor, s_match: torch.Tensor, tau_m: float = 0.8,
                       weight: float = 4.0, has_match: torch.Tensor | None = None):
    """Eq. 10 -> (loss, stats); a zero that keeps `student_mask_probs` in the graph when
    no proposal is reliable."""
    if not (student_mask_probs.shape == teacher_masks.shape == gt_box_masks.shape) \
            or student_mask_probs.dim() != 4:
        raise ValueError("boxdepth/losses/distill.py: student_mask_probs, teacher_masks and "
                         "gt_box_masks must share one (N,1,h,w) shape, got "
                         f"{tuple(student_mask_probs.shape)}, {tuple(teacher_masks.shape)} and "
                         f"{tuple(gt_box_masks.shape)}")
    n = student_mask_probs.shape[0]
    if s_match.shape != (n,) or (has_match is not None and has_match.shape != (n,)):
        raise ValueError(f"boxdepth/losses/distill.py: s_match and has_match must be ({n},), got "
                         f"{tuple(s_match.shape)} and "
                         f"{None if has_match is None else tuple(has_match.shape)}")
    probs = student_mask_probs.float()
    matched = torch.ones(n, dtype=torch.bool, device=probs.device) if has_match is None \
        else has_match.to(probs.device)
    s_match = s_match.to(probs.device, torch.float32)
    reliable = matched & (s_match > tau_m)
    pseudo = pseudo_masks_in_boxes(teacher_masks.to(probs.device), gt_box_masks.to(probs.device)).float()
    per_inst = dice_loss(probs, pseudo) if n else probs.new_zeros(0)
    # masked mean: no data-dependent indexing, and an in-graph zero when nothing is reliable
    rel = reliable.float()
    loss = weight * (per_inst * rel).sum() / rel.sum().clamp(min=1.0) + probs.sum() * 0.0
    n_matched = int(matched.sum())
    stats = {"distill_matched": float(n_matched), "distill_reliable": float(rel.sum()),
             "distill_s_match": float(s_match[matched].mean()) if n_matched else 0.0}
    return loss, stats
