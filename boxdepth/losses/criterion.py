"""`CondInstCriterion`: all training losses from the network's outputs (SPEC §2, Eq. 6).

Inputs: `outputs` of `CondInst.forward` in training (see models/condinst.py) and the
collated `batch` (data/transforms.py: images uint8 (B,3,Hp,Wp), image_mask (B,Hp,Wp),
depth (B,1,Hp,Wp) d01 or None, has_depth (B,), targets with boxes/labels/masks/size/
orig_size). Returns a dict of weighted scalar losses:
    loss_fcos_cls, loss_fcos_loc, loss_fcos_ctr          FCOS
    loss_prj, loss_pairwise                              BoxInst (loss.mode=box)
    loss_depth (Eq. 2), loss_cons (Eqs. 3-4)             when depth is given and switched on
    loss_depth_edge                                      ours, off by default (losses/depth_edge.py)
    loss_mask                                            dice to GT masks (loss.mode=mask)
How loss_cons and loss_pairwise share their pairs is `cons_pairs`
(loss.depth_consistency.pairs, losses/depth.py PAIR_MODES): `separate` (SPEC §2) computes
them apart; the joint modes (`depth.joint_pair_losses`) on one set of pairs, and only
when L_cons is on and the batch has depth (else the colour term is computed alone, as
`separate`). A term weighted 0 has no pairs (shared / complement then keep every depth
pair). `gated` reports loss_cons = 0 (the key stays for logging): there cons_weight > 0
only switches the depth gate on.
All mask terms live at the mask output stride (4): box masks, the image average-pooled
for the Lab colour similarity and the pseudo depth average-pooled for d01 / d255.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from boxdepth.losses.boxinst import (bottom_pixels_mask, boxes_to_stride_masks, dice_loss,
                                     pairwise_loss, pairwise_neg_log_same, projection_loss)
from boxdepth.losses.depth import (PAIR_MODES, depth_consistency_loss, depth_pair_weights,
                                   depth_similarity, instance_depth_loss, joint_pair_losses)
from boxdepth.losses.depth_edge import (EDGE_FORMS, depth_edge_loss, depth_edge_weights,
                                        pairwise_neg_log_apart)
from boxdepth.losses.fcos import fcos_losses_from_outputs
from boxdepth.ops.pairwise import box_windows, color_similarity, gather_windows, rgb_to_lab


def proposal_gt_index(props: dict, targets: list[dict]) -> torch.Tensor:
    """Index of each proposal's GT in the concatenation of all images' boxes (N,)."""
    counts = torch.tensor([len(t["boxes"]) for t in targets], device=props["im_inds"].device)
    offsets = torch.cumsum(counts, 0) - counts
    return offsets[props["im_inds"]] + props["gt_inds"]


class CondInstCriterion(nn.Module):
    def __init__(self, *, num_classes: int, mode: str = "box", focal_alpha: float = 0.25,
                 focal_gamma: float = 2.0, mask_out_stride: int = 4,
                 projection_weight: float = 1.0, pairwise_weight: float = 1.0,
                 pairwise_size: int = 3, pairwise_dilation: int = 2,
                 pairwise_color_thresh: float = 0.3, warmup_iters: int = 10000,
                 bottom_pixels_removed: float = 10, depth_weight: float = 1.0,
                 cons_weight: float = 1.0, cons_tau: float = 0.5, cons_kappa: float = 0.5,
                 cons_inside_box: bool = True, cons_pairs: str = "separate",
                 edge_weight: float = 0.0, edge_threshold: float = 0.1, edge_form: str = "different"):
        super().__init__()
        if mode not in ("box", "mask"):
            raise ValueError(f"loss.mode must be 'box' or 'mask', got {mode!r}")
        if cons_pairs not in PAIR_MODES:
            raise ValueError(f"loss.depth_consistency.pairs must be one of "
                             f"{', '.join(PAIR_MODES)}, got {cons_pairs!r}")
        if edge_form not in EDGE_FORMS:
            raise ValueError(f"loss.depth_edge.form must be one of {', '.join(EDGE_FORMS)}, "
                             f"got {edge_form!r}")
        self.num_classes, self.mode = num_classes, mode
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        self.stride = mask_out_stride
        self.projection_weight, self.pairwise_weight = projection_weight, pairwise_weight
        self.k, self.dilation = pairwise_size, pairwise_dilation
        self.color_thresh, self.warmup_iters = pairwise_color_thresh, warmup_iters
        self.bottom_pixels_removed = bottom_pixels_removed
        self.depth_weight, self.cons_weight = depth_weight, cons_weight
        self.cons_tau, self.cons_kappa, self.cons_inside_box = cons_tau, cons_kappa, cons_inside_box
        self.cons_pairs = cons_pairs
        self.edge_weight, self.edge_threshold, self.edge_form = edge_weight, edge_threshold, edge_form

    def warmup(self, iteration: int) -> float:
        """Linear ramp 0 -> 1 of the pairwise and consistency weights (SPEC §2)."""
        return min(float(iteration) / self.warmup_iters, 1.0) if self.warmup_iters > 0 else 1.0

    def forward(self, outputs: dict, batch: dict, iteration: int) -> dict[str, torch.Tensor]:
        losses = fcos_losses_from_outputs(outputs, num_classes=self.num_classes,
                                          focal_alpha=self.focal_alpha, focal_gamma=self.focal_gamma)
        props = outputs["proposals"]
        logits = props["mask_logits"].float()
        # keeps the mask branch in the graph when a batch has no proposal (DDP needs every grad)
        anchor = outputs["mask_feats"].float().sum() * 0
        flat_gt = proposal_gt_index(props, batch["targets"])
        hp, wp = batch["images"].shape[-2:]
        if self.mode == "mask":
            gt = torch.cat([t["masks"] for t in batch["targets"]])[flat_gt]
            s0 = self.stride // 2
            gt = gt[:, None, s0::self.stride, s0::self.stride].float()
            losses["loss_mask"] = dice_loss(logits.sigmoid(), gt).sum() / max(len(gt), 1) + anchor
            return losses
        all_boxes = torch.cat([t["boxes"] for t in batch["targets"]])
        box_masks = boxes_to_stride_masks(all_boxes, (hp, wp), self.stride)[flat_gt]
        losses["loss_prj"] = self.projection_weight * projection_loss(logits.sigmoid(), box_masks) + anchor
        valid = bottom_pixels_mask([t["size"] for t in batch["targets"]],
                                   [t["orig_size"][0] for t in batch["targets"]], (hp, wp),
                                   self.bottom_pixels_removed, stride=self.stride,
                                   device=logits.device)
        # pairwise terms only see centres inside the box: compute them on box windows
        win = box_windows(box_masks, margin=self.dilation * (self.k // 2))
        box_win = gather_windows(box_masks, win[0], win[1]) * win[2]
        neg_log_same = pairwise_neg_log_same(gather_windows(logits, win[0], win[1]), self.k,
                                             self.dilation)
        warm = self.warmup(iteration)
        active = None  # colour pairs [S_c >= thr] (B,K,h,w) of the images
        if self.pairwise_weight > 0:
            lab = rgb_to_lab(F.avg_pool2d(batch["images"].float(), self.stride, self.stride))
            active = (color_similarity(lab, valid, self.k, self.dilation) >= self.color_thresh)
        with_depth = batch.get("depth") is not None
        # a joint mode computes loss_pairwise together with loss_cons (in _depth_losses)
        joint = with_depth and self.cons_weight > 0 and self.cons_pairs != "separate"
        if active is not None and not joint:
            weights = gather_windows(active, win[0], win[1], props["im_inds"]) * box_win
            losses["loss_pairwise"] = self.pairwise_weight * warm * pairwise_loss(neg_log_same, weights)
        if with_depth:
            losses.update(self._depth_losses(props, batch, box_masks, valid, neg_log_same, warm,
                                             win, box_win, active, joint))
        return losses

    def _depth_losses(self, props, batch, box_masks, valid, neg_log_same, warm, win,
                      box_win, active, joint: bool) -> dict:
        """loss_depth, loss_cons and, when `joint` (a joint pairs mode, decided by the
        caller), loss_pairwise; `active` is the colour pairs (B,K,h,w) or None (colour
        term off)."""
        d01 = F.avg_pool2d(batch["depth"].float(), self.stride, self.stride)
        has = batch["has_depth"].to(d01.device).float()
        inst_has = has[props["im_inds"]][:, None, None, None]  # images without depth add nothing
        out = {}
        depth_logits = props.get("depth_logits")
        if depth_logits is not None and self.depth_weight > 0:
            out["loss_depth"] = self.depth_weight * instance_depth_loss(
                depth_logits.float().sigmoid(), d01[props["im_inds"]], box_masks * inst_has)
        if self.cons_weight > 0:
            sim = depth_similarity(255.0 * d01, valid, self.k, self.dilation, self.cons_kappa)
            if self.cons_inside_box:
                def per_inst(maps):  # image maps (B,C,h,w) -> the instances' box windows
                    return gather_windows(maps, win[0], win[1], props["im_inds"])
                nls, box = neg_log_same, box_win
            else:  # pairs anywhere in the image: the full maps are needed
                def per_inst(maps):
                    return maps[props["im_inds"]]
                nls = pairwise_neg_log_same(props["mask_logits"].float(), self.k, self.dilation)
                box = box_masks
            sim, centre = per_inst(sim), per_inst(valid[:, None]) * inst_has
            if not joint:
                out["loss_cons"] = self.cons_weight * warm * depth_consistency_loss(
                    nls, sim, box * inst_has, self.cons_tau, inside_box=self.cons_inside_box,
                    image_mask=centre)
            else:  # the colour pairs on L_cons's pairs (full maps with inside_box=False)
                colour = None if active is None else per_inst(active) * box
                out.update(self._joint_pair_losses(nls, colour, sim, box * inst_has, centre,
                                                   inst_has, warm))
        if self.edge_weight > 0:
            out["loss_depth_edge"] = self.edge_weight * warm * self._depth_edge_loss(
                props, d01, valid, inst_has, win, box_win)
        return out

    def _depth_edge_loss(self, props, d01, valid, inst_has, win, box_win) -> torch.Tensor:
        """Our depth-edge term (losses/depth_edge.py) on the instances' box windows; the edge
        weights come from the full maps so that pairs reaching off the canvas stay 0."""
        edges = depth_edge_weights(d01, valid, self.k, self.dilation, self.edge_threshold)
        edges = gather_windows(edges, win[0], win[1], props["im_inds"])
        centres = box_win * gather_windows(valid[:, None], win[0], win[1], props["im_inds"]) * inst_has
        nla = pairwise_neg_log_apart(gather_windows(props["mask_logits"].float(), win[0], win[1]),
                                     self.k, self.dilation, self.edge_form)
        return depth_edge_loss(nla, edges, centres)

    def _joint_pair_losses(self, nls, colour, sim, boxes, centre, inst_has, warm) -> dict:
        """loss_pairwise (if the colour term is on) and loss_cons of a joint pairs mode.

        nls, sim (N,K,h,w); colour (N,K,h,w) w_c or None; boxes, centre (N,1,h,w) with the
        instances without depth zeroed; inst_has (N,1,1,1) 1 where the image has depth.
        """
        if self.cons_pairs == "gated":
            # the gate is depth agreement only: the colour term keeps its own centre rule
            # (AdelaiDet's: pairs into removed rows drop, from them stay), and an image
            # without depth keeps all its colour pairs
            depth_w = (sim > self.cons_tau) | (inst_has == 0)
        else:
            depth_w = depth_pair_weights(sim, boxes, self.cons_tau, self.cons_inside_box,
                                         centre, dtype=nls.dtype)
        colour_loss, cons_loss = joint_pair_losses(self.cons_pairs, nls, colour, depth_w)
        out = {"loss_cons": self.cons_weight * warm * cons_loss}
        if colour is not None:
            out["loss_pairwise"] = self.pairwise_weight * warm * colour_loss
        return out
