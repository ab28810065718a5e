"""CondInst mask branch (SPEC §1): shared mask features at stride 8.

Input: [P3, P4, P5] (B, C_in, H/8|16|32, W/8|16|32). Each level -> 3x3 conv `channels`
+ norm + ReLU; P4/P5 are upsampled to P3 with aligned_bilinear and summed; then
`num_convs` x (3x3 conv + norm + ReLU) and a 1x1 conv to `out_channels` (C_mask = 16).
Output: (B, out_channels, H/8, W/8). Convs are kaiming-uniform (a=1) like AdelaiDet's
conv_with_kaiming_uniform; a conv followed by a norm has no bias.
"""
from __future__ import annotations

import torch
from torch import nn

from boxdepth.models.norm import get_norm
from boxdepth.ops.pairwise import aligned_bilinear


def _conv_block(in_ch: int, out_ch: int, norm: str) -> nn.Sequential:
    conv = nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=not norm)
    nn.init.kaiming_uniform_(conv.weight, a=1)
    if conv.bias is not None:
        nn.init.constant_(conv.bias, 0)
    return nn.Sequential(conv, get_norm(norm, out_ch), nn.ReLU(inplace=True))


class MaskBranch(nn.Module):
    out_stride = 8

    def __init__(self, in_channels: int, channels: int = 128, num_convs: int = 4,
                 out_channels: int = 16, norm: str = "BN", num_levels: int = 3):
        super().__init__()
        self.out_channels = out_channels
        self.refine = nn.ModuleList(_conv_block(in_channels, channels, norm) for _ in range(num_levels))
        tower = [_conv_block(channels, channels, norm) for _ in range(num_convs)]
        self.tower = nn.Sequential(*tower, nn.Conv2d(channels, out_channels, 1))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        if len(features) < len(self.refine):
            raise ValueError(f"MaskBranch: needs {len(self.refine)} levels (P3..), got {len(features)}")
        x = self.refine[0](features[0])
        for refine, feat in zip(self.refine[1:], features[1:len(self.refine)]):
            y = refine(feat)
            factor = x.shape[-2] // y.shape[-2]
            if y.shape[-2] * factor != x.shape[-2] or y.shape[-1] * factor != x.shape[-1]:
                raise ValueError(f"MaskBranch: level of size {tuple(y.shape[-2:])} does not divide P3 "
                                 f"{tuple(x.shape[-2:])}; pad inputs to a multiple of 32")
            x = x + aligned_bilinear(y, factor)
        return self.tower(x)
