"""`MaskLossInputs`: what every box-supervised mask term of one step reads (SPEC §2).

All maps at the mask output stride s (4); N proposals, B images, K neighbours, and the
proposals' box windows (Sh, Sw) of `ops.pairwise.box_windows` (the box plus the pair
reach, where every pairwise term of a centre inside the box lives):
    logits        (N,1,H,W)   float32 mask logits z
    probs         (N,1,H,W)   sigmoid(z)
    im_inds       (N,)        image of each proposal
    box_masks     (N,1,H,W)   each proposal's GT box (StepMaps, shared with the distiller)
    valid         (B,H,W)     on the image and above BoxInst's removed bottom rows
    windows       (ys (N,Sh), xs (N,Sw), inside (N,1,Sh,Sw))
    box_win       (N,1,Sh,Sw) box mask on the windows (0 outside the window's own extent)
    neg_log_same  (N,K,Sh,Sw) -log P(same) of Eq. 5 on the windows
    warm          float       warm-up factor of the pair terms
    d01           (B,1,H,W)   pooled pseudo depth, or None when the batch has none
    inst_has      (N,1,1,1)   1 where the proposal's image has depth, or None
    anchor        scalar 0    keeps the mask branch in the graph without proposals (DDP)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from boxdepth.losses.boxinst import bottom_pixels_mask, pairwise_neg_log_same
from boxdepth.losses.step_maps import step_maps
from boxdepth.ops.pairwise import box_windows, gather_windows


@dataclass(frozen=True)
class MaskLossInputs:
    logits: torch.Tensor
    probs: torch.Tensor
    im_inds: torch.Tensor
    box_masks: torch.Tensor
    valid: torch.Tensor
    windows: tuple
    box_win: torch.Tensor
    neg_log_same: torch.Tensor
    warm: float
    images: torch.Tensor
    d01: torch.Tensor | None
    inst_has: torch.Tensor | None
    depth_logits: torch.Tensor | None
    anchor: torch.Tensor

    def per_window(self, maps: torch.Tensor) -> torch.Tensor:
        """Image maps (B,C,H,W) -> each proposal's box window (N,C,Sh,Sw)."""
        return gather_windows(maps, self.windows[0], self.windows[1], self.im_inds)


def mask_loss_inputs(outputs: dict, batch: dict, *, stride: int, kernel_size: int,
                     dilation: int, bottom_pixels_removed: float, warm: float) -> MaskLossInputs:
    props, targets = outputs["proposals"], batch["targets"]
    logits = props["mask_logits"].float()
    # sigmoid before the window gather: autograd sums the gradients reaching `logits` in
    # the order their consumers were made, and the loss values must stay bit-for-bit
    probs = logits.sigmoid()
    hp, wp = batch["images"].shape[-2:]
    maps = step_maps(outputs, batch, stride)
    valid = bottom_pixels_mask([t["size"] for t in targets], [t["orig_size"][0] for t in targets],
                               (hp, wp), bottom_pixels_removed, stride=stride, device=logits.device)
    # pairwise terms only see centres inside the box: compute them on box windows
    windows = box_windows(maps.box_masks, margin=dilation * (kernel_size // 2))
    box_win = gather_windows(maps.box_masks, windows[0], windows[1]) * windows[2]
    neg_log_same = pairwise_neg_log_same(gather_windows(logits, windows[0], windows[1]),
                                         kernel_size, dilation)
    inst_has = None
    if maps.d01 is not None:  # images without depth add nothing to the depth terms
        has = batch["has_depth"].to(maps.d01.device).float()
        inst_has = has[props["im_inds"]][:, None, None, None]
    return MaskLossInputs(
        logits=logits, probs=probs, im_inds=props["im_inds"], box_masks=maps.box_masks,
        valid=valid, windows=windows, box_win=box_win, neg_log_same=neg_log_same, warm=warm,
        images=batch["images"], d01=maps.d01, inst_has=inst_has,
        depth_logits=props.get("depth_logits"),
        # keeps the mask branch in the graph when a batch has no proposal (DDP needs every grad)
        anchor=outputs["mask_feats"].float().sum() * 0)
