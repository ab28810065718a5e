"""`build_criterion(cfg)`: the only place the loss config is read."""
from __future__ import annotations

from boxdepth.losses.criterion import CondInstCriterion


def build_criterion(cfg) -> CondInstCriterion:
    b, d, c, e = cfg.loss.boxinst, cfg.loss.depth, cfg.loss.depth_consistency, cfg.loss.depth_edge
    return CondInstCriterion(
        num_classes=cfg.model.fcos.num_classes, mode=cfg.loss.mode,
        focal_alpha=cfg.model.fcos.focal_alpha, focal_gamma=cfg.model.fcos.focal_gamma,
        mask_out_stride=cfg.model.mask_head.mask_out_stride,
        projection_weight=b.projection_weight, pairwise_weight=b.pairwise_weight,
        pairwise_size=b.pairwise_size, pairwise_dilation=b.pairwise_dilation,
        pairwise_color_thresh=b.pairwise_color_thresh, warmup_iters=b.warmup_iters,
        bottom_pixels_removed=b.bottom_pixels_removed, depth_weight=d.weight,
        cons_weight=c.weight, cons_tau=c.tau, cons_kappa=c.kappa, cons_inside_box=c.inside_box,
        cons_pairs=c.pairs, edge_weight=e.weight, edge_threshold=e.threshold, edge_form=e.form)
