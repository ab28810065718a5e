"""`build_distiller(cfg)`: the only place the distillation config is read (SPEC §3)."""
from __future__ import annotations

from boxdepth.distill.distiller import SelfDistiller


def build_distiller(cfg) -> SelfDistiller:
    """The SelfDistiller of `cfg` (whether or not `distill.enabled` asks training for one)."""
    d, b = cfg.distill, cfg.loss.boxinst
    return SelfDistiller(teacher_size=d.teacher_size, teacher_max_size=d.teacher_max_size,
                         match=d.match, alpha=d.alpha, beta=d.beta, tau_d=d.tau_d, tau_m=d.tau_m,
                         dice_weight=d.dice_weight, kernel_size=b.pairwise_size,
                         dilation=b.pairwise_dilation, kappa=cfg.loss.depth_consistency.kappa,
                         mask_out_stride=cfg.model.mask_head.mask_out_stride,
                         topk=cfg.model.fcos.post_nms_topk, depth_clean=d.depth_clean.enabled,
                         clean_tolerance=d.depth_clean.tolerance, clean_mad_scale=d.depth_clean.mad_scale)
