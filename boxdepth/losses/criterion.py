"""`CondInstCriterion`: all training losses from the network's outputs (SPEC §2, Eq. 6).

Inputs: `outputs` of `CondInst.forward` in training (see models/condinst.py) and the
collated `batch` (data/transforms.py: images uint8 (B,3,Hp,Wp), image_mask (B,Hp,Wp),
depth (B,1,Hp,Wp) d01 or None, has_depth (B,), targets with boxes/labels/masks/size/
orig_size). Returns a dict of weighted scalar losses, in this order:
    loss_fcos_cls, loss_fcos_loc, loss_fcos_ctr          FCOS
    loss_prj, loss_pairwise                              BoxInst (loss.mode=box)
    loss_depth (Eq. 2), loss_cons (Eqs. 3-4)             when depth is given and switched on
    loss_depth_edge                                      ours, off by default (losses/depth_edge.py)
    loss_mask                                            dice to GT masks (loss.mode=mask)

Read `forward` and the `loss_*` methods top to bottom: they are SPEC §2. `loss_map` names
the term that computes each key. Two things that are not the paper's replace or extend
it there, and nowhere else:
- `loss.depth_consistency.pairs` other than `separate`, or `inside_box=false`:
  loss_pairwise and loss_cons come from `NonPaperPairs` (losses/pair_modes.py);
- `loss.depth_edge.weight > 0`: loss_depth_edge from `DepthEdgeTerm` (losses/depth_edge.py).
All mask terms live at the mask output stride (4): box masks, the image average-pooled
for the Lab colour similarity and the pseudo depth average-pooled for d01 / d255
(MaskLossInputs, losses/mask_inputs.py).
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from boxdepth.losses.boxinst import dice_loss, pairwise_loss, projection_loss
from boxdepth.losses.depth import (PAIR_MODES, depth_consistency_loss, depth_similarity,
                                   instance_depth_loss)
from boxdepth.losses.depth_edge import DepthEdgeTerm
from boxdepth.losses.fcos import fcos_losses_from_outputs
from boxdepth.losses.mask_inputs import MaskLossInputs, mask_loss_inputs
from boxdepth.losses.pair_modes import NonPaperPairs
from boxdepth.losses.step_maps import proposal_gt_index
from boxdepth.ops.pairwise import color_similarity, rgb_to_lab

__all__ = ["CondInstCriterion", "proposal_gt_index"]


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
        # the options that are not the paper's, each behind its own object (None: paper)
        paper_pairs = cons_pairs == PAIR_MODES[0] and cons_inside_box
        self.pair_mode = None if paper_pairs else NonPaperPairs(pairs=cons_pairs,
                                                                inside_box=cons_inside_box)
        self.depth_edge = DepthEdgeTerm(weight=edge_weight, threshold=edge_threshold,
                                        form=edge_form, kernel_size=pairwise_size,
                                        dilation=pairwise_dilation)
        if edge_weight <= 0:
            self.depth_edge = None

    def warmup(self, iteration: int) -> float:
        """Linear ramp 0 -> 1 of the pairwise and consistency weights (SPEC §2)."""
        return min(float(iteration) / self.warmup_iters, 1.0) if self.warmup_iters > 0 else 1.0

    def loss_map(self) -> dict:
        """Loss key -> the term computing it from MaskLossInputs (each returns a dict, empty
        when the term is off for this step), in the order the keys are returned."""
        terms = {"loss_prj": self.loss_projection, "loss_pairwise": self.loss_pairwise,
                 "loss_depth": self.loss_depth, "loss_cons": self.loss_cons}
        if self.pair_mode is not None:
            terms["loss_pairwise"] = partial(self.pair_mode.loss_pairwise, self)
            terms["loss_cons"] = partial(self.pair_mode.loss_cons, self)
        if self.depth_edge is not None:
            terms["loss_depth_edge"] = self.depth_edge
        return terms

    def forward(self, outputs: dict, batch: dict, iteration: int) -> dict[str, torch.Tensor]:
        losses = fcos_losses_from_outputs(outputs, num_classes=self.num_classes,
                                          focal_alpha=self.focal_alpha, focal_gamma=self.focal_gamma)
        if self.mode == "mask":
            losses["loss_mask"] = self.loss_mask(outputs, batch)
            return losses
        m = mask_loss_inputs(outputs, batch, stride=self.stride, kernel_size=self.k,
                             dilation=self.dilation, bottom_pixels_removed=self.bottom_pixels_removed,
                             warm=self.warmup(iteration))
        for term in self.loss_map().values():
            losses.update(term(m))
        return losses

    def loss_projection(self, m: MaskLossInputs) -> dict:
        """BoxInst's projection term: dice of the x and y max-projections of P and B."""
        return {"loss_prj": self.projection_weight * projection_loss(m.probs, m.box_masks) + m.anchor}

    def colour_pairs(self, m: MaskLossInputs) -> torch.Tensor:
        """[S_c >= thr] (B,K,H,W) of the images' Lab colour, neighbours off `valid` dropped."""
        lab = rgb_to_lab(F.avg_pool2d(m.images.float(), self.stride, self.stride))
        return color_similarity(lab, m.valid, self.k, self.dilation) >= self.color_thresh

    def loss_pairwise(self, m: MaskLossInputs) -> dict:
        """BoxInst's colour pairwise term, centres inside the box."""
        if self.pairwise_weight <= 0:
            return {}
        weights = m.per_window(self.colour_pairs(m)) * m.box_win
        return {"loss_pairwise": self.pairwise_weight * m.warm * pairwise_loss(m.neg_log_same, weights)}

    def loss_depth(self, m: MaskLossInputs) -> dict:
        """Eq. 2: P_depth against d01 inside the box; images without depth add nothing."""
        if m.d01 is None or m.depth_logits is None or self.depth_weight <= 0:
            return {}
        return {"loss_depth": self.depth_weight * instance_depth_loss(
            m.depth_logits.float().sigmoid(), m.d01[m.im_inds], m.box_masks * m.inst_has)}

    def loss_cons(self, m: MaskLossInputs) -> dict:
        """Eqs. 3-4: -log P(same) over the pairs whose depth agrees, centres inside the box."""
        if m.d01 is None or self.cons_weight <= 0:
            return {}
        sim = depth_similarity(255.0 * m.d01, m.valid, self.k, self.dilation, self.cons_kappa)
        centre = m.per_window(m.valid[:, None]) * m.inst_has
        return {"loss_cons": self.cons_weight * m.warm * depth_consistency_loss(
            m.neg_log_same, m.per_window(sim), m.box_win * m.inst_has, self.cons_tau,
            inside_box=True, image_mask=centre)}

    def loss_mask(self, outputs: dict, batch: dict) -> torch.Tensor:
        """Fully supervised mode: dice to the GT masks sampled at the mask stride."""
        props = outputs["proposals"]
        logits = props["mask_logits"].float()
        anchor = outputs["mask_feats"].float().sum() * 0
        gt = torch.cat([t["masks"] for t in batch["targets"]])[proposal_gt_index(props, batch["targets"])]
        s0 = self.stride // 2
        gt = gt[:, None, s0::self.stride, s0::self.stride].float()
        return dice_loss(logits.sigmoid(), gt).sum() / max(len(gt), 1) + anchor
