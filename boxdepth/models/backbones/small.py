"""A narrow from-scratch ResNet-style backbone for CPU training on the small datasets.

Stem: two 3x3 stride-2 convs (3 -> w -> w, stride 4), then one ResNet BasicBlock per
stage: res2 (w, stride 4), res3 (2w, stride 8), res4 (4w, stride 16), res5 (8w,
stride 32), with w = `width` (default 32: 32-64-128-256 channels, about 1.2 M
parameters).

forward(x: (B, 3, H, W) normalised float) -> {"res3": (B, 2w, H/8, W/8),
"res4": (B, 4w, H/16, W/16), "res5": (B, 8w, H/32, W/32)}; `out_channels` gives
{"res3": 2w, "res4": 4w, "res5": 8w}.

There are no pretrained weights, so it is meant to be trained with norm "BN" or "GN"
(GN needs w divisible by 32) and nothing frozen.
"""
from __future__ import annotations

from torch import nn

from boxdepth.models.backbones.resnet import BasicBlock, conv3x3
from boxdepth.models.norm import freeze_module, get_norm


class SmallBackbone(nn.Module):
    def __init__(self, *, width: int = 32, norm: str = "BN", freeze_at: int = 0):
        super().__init__()
        if width < 1:
            raise ValueError(f"small backbone width must be >= 1, got {width}")
        if not 0 <= freeze_at <= 5:
            raise ValueError(f"freeze_at must be in 0..5, got {freeze_at}")
        w = width
        self.stem = nn.Sequential(
            conv3x3(3, w, stride=2), get_norm(norm, w), nn.ReLU(inplace=True),
            conv3x3(w, w, stride=2), get_norm(norm, w), nn.ReLU(inplace=True),
        )
        self.res2 = BasicBlock(w, w, norm=norm)
        self.res3 = BasicBlock(w, 2 * w, stride=2, norm=norm)
        self.res4 = BasicBlock(2 * w, 4 * w, stride=2, norm=norm)
        self.res5 = BasicBlock(4 * w, 8 * w, stride=2, norm=norm)
        self.out_channels = {"res3": 2 * w, "res4": 4 * w, "res5": 8 * w}
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        stages = ("stem", "res2", "res3", "res4", "res5")
        for name in stages[:freeze_at]:
            setattr(self, name, freeze_module(getattr(self, name)))

    def forward(self, x):
        x = self.res2(self.stem(x))
        res3 = self.res3(x)
        res4 = self.res4(res3)
        res5 = self.res5(res4)
        return {"res3": res3, "res4": res4, "res5": res5}
