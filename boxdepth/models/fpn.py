"""Feature pyramid for FCOS/CondInst (SPEC §1): P3-P5 top-down from res3-res5, P6/P7 on top.

Input: backbone dict {"res3": (B, C3, H/8, W/8), "res4": (B, C4, H/16, W/16),
"res5": (B, C5, H/32, W/32)}. Output: list [P3, P4, P5, P6, P7] of (B, out_channels, .,.)
at strides 8, 16, 32, 64, 128. P6 = 3x3 stride-2 conv of P5 (the FPN output, as in
FCOS, not of res5); P7 = 3x3 stride-2 conv of relu(P6).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from boxdepth.models.norm import get_norm

FPN_STRIDES = (8, 16, 32, 64, 128)


def c2_xavier_fill(module: nn.Conv2d) -> None:
    """Caffe2 "XavierFill" (= kaiming_uniform with a=1), bias 0: detectron2's FPN init."""
    nn.init.kaiming_uniform_(module.weight, a=1)
    if module.bias is not None:
        nn.init.constant_(module.bias, 0)


def _conv_norm(in_ch: int, out_ch: int, kernel: int, stride: int, norm: str) -> nn.Sequential:
    conv = nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=not norm)
    c2_xavier_fill(conv)
    return nn.Sequential(conv, get_norm(norm, out_ch))


class FPN(nn.Module):
    """P3-P7 pyramid; `strides` = (8, 16, 32, 64, 128)."""

    def __init__(self, in_channels: dict[str, int], out_channels: int = 256,
                 in_features: tuple[str, ...] = ("res3", "res4", "res5"), norm: str = ""):
        super().__init__()
        missing = [f for f in in_features if f not in in_channels]
        if missing:
            raise ValueError(f"FPN: backbone out_channels {dict(in_channels)} lacks {missing}")
        self.in_features = tuple(in_features)
        self.out_channels = out_channels
        self.strides = FPN_STRIDES
        self.lateral = nn.ModuleList(
            _conv_norm(in_channels[f], out_channels, 1, 1, norm) for f in self.in_features)
        self.output = nn.ModuleList(
            _conv_norm(out_channels, out_channels, 3, 1, norm) for _ in self.in_features)
        self.p6 = nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1)
        c2_xavier_fill(self.p6)
        c2_xavier_fill(self.p7)

    def forward(self, features: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        feats = [features[f] for f in self.in_features]
        prev = self.lateral[-1](feats[-1])
        outs = [self.output[-1](prev)]
        for i in range(len(feats) - 2, -1, -1):
            lateral = self.lateral[i](feats[i])
            # size= rather than scale_factor=2 so odd sizes (unpadded inputs) still add up
            top_down = F.interpolate(prev, size=lateral.shape[-2:], mode="nearest")
            prev = lateral + top_down
            outs.insert(0, self.output[i](prev))
        p6 = self.p6(outs[-1])
        p7 = self.p7(F.relu(p6))
        return outs + [p6, p7]
