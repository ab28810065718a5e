"""`build_model(cfg)`: the one place that reads the config to assemble CondInst (SPEC §1).

Keys read: model.backbone.{name, norm, freeze_at, weights, width, channels_last,
channels_last_train}, model.fpn.out_channels,
model.fcos.*, model.mask_branch.*, model.mask_head.*, model.depth_head,
model.mask_threshold, model.winograd, input.{pixel_mean, pixel_std, format, size_divisibility}.
"""
from __future__ import annotations

from boxdepth.models.backbones import build_backbone
from boxdepth.models.condinst import CondInst
from boxdepth.models.dynamic_head import DynamicMaskHead
from boxdepth.models.fcos import FCOSHead, FCOSTargetAssigner
from boxdepth.models.fpn import FPN
from boxdepth.models.mask_branch import MaskBranch


def build_mask_head(cfg) -> DynamicMaskHead:
    """The dynamic mask head alone (it has no weights: the controller predicts them); the
    exported-model runner builds it from the config saved in the exported file."""
    m, mh = cfg.model, cfg.model.mask_head
    return DynamicMaskHead(in_channels=m.mask_branch.out_channels, channels=mh.channels,
                           num_layers=mh.num_layers, sizes_of_interest=tuple(mh.sizes_of_interest),
                           depth_head=bool(m.depth_head), mask_out_stride=mh.mask_out_stride)


def build_model(cfg, *, load_backbone_weights: bool = True) -> CondInst:
    """CondInst from `cfg`; `load_backbone_weights=False` when a trained checkpoint follows."""
    m = cfg.model
    if m.fcos.num_classes is None:
        raise ValueError("model.fcos.num_classes is not set (training fills it in from the json)")
    bb, fc, mb, mh = m.backbone, m.fcos, m.mask_branch, m.mask_head
    backbone = build_backbone(bb.name, norm=bb.norm, freeze_at=bb.freeze_at, weights=bb.weights, width=bb.width,
                              load_weights=load_backbone_weights)
    fpn = FPN(backbone.out_channels, out_channels=m.fpn.out_channels)
    mask_head = build_mask_head(cfg)
    head = FCOSHead(m.fpn.out_channels, fc.num_classes, num_convs=fc.num_convs, norm=fc.norm,
                    prior_prob=fc.prior_prob, num_levels=len(fc.strides),
                    num_controller_params=mask_head.num_params,
                    box_init_distance=fc.box_init_distance)
    mask_branch = MaskBranch(m.fpn.out_channels, channels=mb.channels, num_convs=mb.num_convs,
                             out_channels=mb.out_channels, norm=mb.norm)
    assigner = FCOSTargetAssigner(list(fc.strides), num_classes=fc.num_classes,
                                  sizes_of_interest=list(fc.sizes_of_interest),
                                  center_sample_radius=fc.center_sample_radius)
    return CondInst(backbone, fpn, head, mask_branch, mask_head, assigner, num_classes=fc.num_classes,
                    pixel_mean=list(cfg.input.pixel_mean), pixel_std=list(cfg.input.pixel_std),
                    input_format=cfg.input.format, strides=list(fc.strides),
                    topk_proposals_per_im=mh.topk_proposals_per_im, inference_th=fc.inference_th,
                    pre_nms_topk=fc.pre_nms_topk, nms_th=fc.nms_th, post_nms_topk=fc.post_nms_topk,
                    mask_threshold=m.mask_threshold, channels_last_backbone=bool(bb.channels_last),
                    channels_last_train=bb.channels_last_train,
                    size_divisibility=cfg.input.size_divisibility, winograd=bool(m.winograd))
