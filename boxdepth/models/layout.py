"""Memory layout of the backbone's convolutions (config `model.backbone.channels_last`,
`model.backbone.channels_last_train`).

NHWC (channels_last) makes oneDNN's *forward* convolutions faster on the CPU (inference,
the frozen stages), but on AVX2 hosts its NHWC weight-gradient kernel is about twice as
slow as the blocked NCHW one (a 256-channel 3x3 conv at 64x88, 1 thread: backward 486
vs 227 ms; benchmarks/README.md, issue 25). `trainable_convs_nchw(backbone)` therefore
keeps the weights of the convolutions that train in NCHW and, while autograd records
(training), hands them their input in NCHW too, so their forward and backward take the
NCHW path; the frozen stages stay NHWC. Under `torch.no_grad` (inference, the EMA
teacher, evaluation) the input stays NHWC and torch runs those convs NHWC as before.
Same numbers either way, to float rounding. The layout changes cost copies (R-50 at 512,
2 threads: backbone + FPN forward 1.09 s with `frozen`, 0.78 s with `all`); since the
wide 3x3 convs run by Winograd (model.winograd, models/fast_conv.py) the default is
`all` (whole step 4.94 vs 5.23 s at 512, 12.9 vs 13.1 s at 800; benchmarks/README.md).
"""
from __future__ import annotations

import torch
from torch import nn

CHANNELS_LAST_TRAIN = ("frozen", "all")


def _nchw_input_while_training(module: nn.Module, args: tuple):
    x = args[0]
    if torch.is_grad_enabled() and not x.is_contiguous():
        return (x.contiguous(), *args[1:])
    return None


def trainable_convs_nchw(module: nn.Module) -> int:
    """NCHW weights and, while gradients are recorded, NCHW input for every Conv2d of
    `module` whose weight trains; returns how many convs it changed."""
    n = 0
    for m in module.modules():
        if isinstance(m, nn.Conv2d) and m.weight.requires_grad:
            m.weight.data = m.weight.data.contiguous()
            m.register_forward_pre_hook(_nchw_input_while_training)
            n += 1
    return n


def check_channels_last_train(value) -> str:
    if value not in CHANNELS_LAST_TRAIN:
        raise ValueError(f"model.backbone.channels_last_train={value!r}: expected one of "
                         f"{', '.join(CHANNELS_LAST_TRAIN)} (frozen: NHWC for the frozen stages only "
                         f"while training; all: the whole backbone NHWC)")
    return value
