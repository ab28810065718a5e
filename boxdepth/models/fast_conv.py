"""Wide 3x3 convolutions by Winograd F(2x2, 3x3) on the CPU (config `model.winograd`).

`winograd_convs(module, min_channels=128, min_pixels=768)` turns every eligible
`nn.Conv2d` of `module` into a `WinogradConv2d` (same parameters, same state dict: only
the class changes, so deep copies such as the EMA teacher keep it). Eligible: 3x3,
stride 1, padding 1, dilation 1, one group, zero padding, at least `min_channels` input
and output channels. At each call it takes the Winograd path (ops/winograd.py) only
where that was measured faster: a float32 CPU tensor with at least `min_pixels` pixels
(H*W), no autocast, not while tracing or exporting; everything else runs `F.conv2d`.

Measured (issue 25, benchmarks/README.md, benchmarks/winograd_bench.py; 2 threads, batch
1, forward + backward): 256 -> 256 channels at 64x88 ~1.5x faster, 512 -> 512 at 25x34
~1.5x, 256 -> 256 at 32x44 ~1.1x; 128 -> 128 at 64x88 even with NCHW oneDNN and faster
than its NHWC path (the backbone's layout); maps under ~768 pixels and 64 channels slower.

`conv3x3(x, weight, bias, min_pixels=None)` is the same dispatch for a 3x3 convolution
whose weight is assembled at run time (FCOSHead's fused box outputs); None = `F.conv2d`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from boxdepth.ops.winograd import winograd_conv3x3

MIN_CHANNELS = 128
MIN_PIXELS = 768


def _winograd_applies(x: torch.Tensor, weight: torch.Tensor, min_pixels: int | None) -> bool:
    return (min_pixels is not None and x.device.type == "cpu" and x.dim() == 4
            and x.dtype == torch.float32 and weight.dtype == torch.float32
            and x.shape[-2] * x.shape[-1] >= min_pixels
            and not torch.is_autocast_enabled("cpu")
            and not torch.jit.is_tracing() and not torch.onnx.is_in_onnx_export())


def conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
            min_pixels: int | None = None) -> torch.Tensor:
    """F.conv2d(x, weight, bias, padding=1), by Winograd where it applies (module doc)."""
    if _winograd_applies(x, weight, min_pixels):
        return winograd_conv3x3(x, weight, bias)
    return F.conv2d(x, weight, bias, padding=1)


class WinogradConv2d(nn.Conv2d):
    """An eligible nn.Conv2d whose forward takes the Winograd path where it applies.
    Made only by `winograd_convs` (class swap), which sets `winograd_min_pixels`."""

    winograd_min_pixels: int = MIN_PIXELS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # eligible() admits only 3x3 / stride 1 / zero padding 1 / one group: F.conv2d(padding=1)
        # is exactly nn.Conv2d's own forward for such a conv
        return conv3x3(x, self.weight, self.bias, self.winograd_min_pixels)


def wide_enough(in_channels: int, out_channels: int, min_channels: int | None = None) -> bool:
    """The channel rule of the Winograd path (default MIN_CHANNELS, both sides)."""
    return min(in_channels, out_channels) >= (MIN_CHANNELS if min_channels is None else min_channels)


def eligible(conv: nn.Module, min_channels: int | None = None) -> bool:
    return (type(conv) is nn.Conv2d and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.padding == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros"
            and wide_enough(conv.in_channels, conv.out_channels, min_channels))


def winograd_convs(module: nn.Module, *, min_channels: int | None = None,
                   min_pixels: int | None = None, skip: tuple[nn.Module, ...] = ()) -> int:
    """Swap every eligible Conv2d of `module` to WinogradConv2d; returns how many. `skip`:
    convs whose forward never runs (only their weights are read, e.g. FCOSHead's fused
    box outputs), left as they are."""
    min_pixels = MIN_PIXELS if min_pixels is None else min_pixels
    skipped = {id(m) for m in skip}
    n = 0
    for m in module.modules():
        if id(m) not in skipped and eligible(m, min_channels):
            m.__class__ = WinogradConv2d
            m.winograd_min_pixels = int(min_pixels)
            n += 1
    return n
