"""`NonPaperPairs`: loss_pairwise and loss_cons for the pair options that are not SPEC §2.

The paper's path (CondInstCriterion.loss_pairwise / loss_cons) is `pairs=separate` with
`inside_box=true`. This strategy takes both terms over for the others:
    loss.depth_consistency.pairs     shared | complement | gated (losses/depth.py
                                     PAIR_MODES, `joint_pair_losses`): L_cons and the colour
                                     term on one set of pairs, only when L_cons is on and the
                                     batch has depth (else the colour term is the paper's);
    loss.depth_consistency.inside_box=false: L_cons's pairs anywhere on the image, so its
                                     maps are the full (N,K,H,W) canvases, not box windows.
A term weighted 0 has no pairs (shared / complement then keep every depth pair). `gated`
reports loss_cons = 0 (the key stays for logging): there cons_weight > 0 only switches
the depth gate on.

Both methods take the owning criterion (weights, tau, kappa, kernel) and the step's
MaskLossInputs (losses/mask_inputs.py) and return a dict of weighted losses.
"""
from __future__ import annotations

from boxdepth.losses.boxinst import pairwise_neg_log_same
from boxdepth.losses.depth import (PAIR_MODES, depth_consistency_loss, depth_pair_weights,
                                   depth_similarity, joint_pair_losses)


class NonPaperPairs:
    def __init__(self, *, pairs: str, inside_box: bool):
        if pairs not in PAIR_MODES:
            raise ValueError(f"loss.depth_consistency.pairs must be one of "
                             f"{', '.join(PAIR_MODES)}, got {pairs!r}")
        self.pairs, self.inside_box = pairs, inside_box

    def joint(self, crit, m) -> bool:
        """Whether this step computes the colour term together with L_cons."""
        return m.d01 is not None and crit.cons_weight > 0 and self.pairs != "separate"

    def loss_pairwise(self, crit, m) -> dict:
        # a joint step computes loss_pairwise in loss_cons, on L_cons's pairs
        return {} if self.joint(crit, m) else crit.loss_pairwise(m)

    def loss_cons(self, crit, m) -> dict:
        if m.d01 is None or crit.cons_weight <= 0:
            return {}
        sim = depth_similarity(255.0 * m.d01, m.valid, crit.k, crit.dilation, crit.cons_kappa)
        if self.inside_box:
            per_inst, nls, box = m.per_window, m.neg_log_same, m.box_win
        else:  # pairs anywhere in the image: the full maps are needed
            def per_inst(maps):
                return maps[m.im_inds]
            nls, box = pairwise_neg_log_same(m.logits, crit.k, crit.dilation), m.box_masks
        sim, centre = per_inst(sim), per_inst(m.valid[:, None]) * m.inst_has
        if not self.joint(crit, m):
            return {"loss_cons": crit.cons_weight * m.warm * depth_consistency_loss(
                nls, sim, box * m.inst_has, crit.cons_tau, inside_box=self.inside_box,
                image_mask=centre)}
        colour = None  # the colour pairs on L_cons's pairs (full maps with inside_box=False)
        if crit.pairwise_weight > 0:
            colour = per_inst(crit.colour_pairs(m)) * box
        return self._joint(crit, m, nls, colour, sim, box * m.inst_has, centre)

    def _joint(self, crit, m, nls, colour, sim, boxes, centre) -> dict:
        """nls, sim (N,K,h,w); colour (N,K,h,w) w_c or None; boxes, centre (N,1,h,w) with
        the instances without depth zeroed."""
        if self.pairs == "gated":
            # the gate is depth agreement only: the colour term keeps its own centre rule
            # (AdelaiDet's: pairs into removed rows drop, from them stay), and an image
            # without depth keeps all its colour pairs
            depth_w = (sim > crit.cons_tau) | (m.inst_has == 0)
        else:
            depth_w = depth_pair_weights(sim, boxes, crit.cons_tau, self.inside_box, centre,
                                         dtype=nls.dtype)
        colour_loss, cons_loss = joint_pair_losses(self.pairs, nls, colour, depth_w)
        out = {"loss_cons": crit.cons_weight * m.warm * cons_loss}
        if colour is not None:
            out["loss_pairwise"] = crit.pairwise_weight * m.warm * colour_loss
        return out
