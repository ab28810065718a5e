"""Normalisation layers by name, and FrozenBatchNorm2d (SPEC §1: backbones use FrozenBN).

`get_norm(name, channels)` maps a config string to a module acting on (B, C, H, W):
"BN" -> nn.BatchNorm2d, "SyncBN" -> nn.SyncBatchNorm, "GN" -> nn.GroupNorm(32, C),
"FrozenBN" -> FrozenBatchNorm2d, "" / None -> nn.Identity.

FrozenBatchNorm2d is BatchNorm2d with fixed statistics and affine parameters: its four
tensors (weight, bias, running_mean, running_var) are buffers, so an optimiser never
sees them and `model.train()` never updates them. It loads BatchNorm2d state dicts
(num_batches_tracked is dropped).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

GN_GROUPS = 32  # GroupNorm(32) as in FCOS/CondInst (SPEC §1)
NORM_NAMES = ("BN", "SyncBN", "GN", "FrozenBN", "")


class FrozenBatchNorm2d(nn.Module):
    """y = (x - running_mean) / sqrt(running_var + eps) * weight + bias, all fixed.

    running_var starts at 1 - eps (as in detectron2) so that a freshly built layer, or
    one loaded from an affine-only (Caffe2 AffineChannel) checkpoint that carries no
    statistics, is exactly `x * weight + bias`.
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    def scale_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, shift), each (C,): the layer is y = x * scale + shift."""
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        return scale, self.bias - self.running_mean * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale, shift = self.scale_shift()
        # one fused pass (shift + x * scale): on the CPU these maps are the largest tensors
        # of the frozen stages, and a separate mul and add read and wrote each one twice
        return torch.addcmul(shift.view(1, -1, 1, 1).to(x.dtype), x, scale.view(1, -1, 1, 1).to(x.dtype))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # BatchNorm2d checkpoints carry a step counter that has no meaning here.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"

    @classmethod
    def convert_frozen_batchnorm(cls, module: nn.Module) -> nn.Module:
        """Return `module` with every BatchNorm2d/SyncBatchNorm replaced by a frozen copy.

        A BN module passed directly is returned converted; otherwise children are
        replaced in place and `module` itself is returned.
        """
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            frozen = cls(module.num_features, eps=module.eps)
            if module.affine:
                frozen.weight.copy_(module.weight.detach())
                frozen.bias.copy_(module.bias.detach())
            if module.track_running_stats:
                frozen.running_mean.copy_(module.running_mean)
                frozen.running_var.copy_(module.running_var)
            return frozen
        for name, child in module.named_children():
            new_child = cls.convert_frozen_batchnorm(child)
            if new_child is not child:
                setattr(module, name, new_child)
        return module


def fold_frozen_bn(weight: torch.Tensor, bias: torch.Tensor | None, bn: FrozenBatchNorm2d
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """A conv's (weight, bias) with a following FrozenBatchNorm2d folded in:
    bn(conv(x)) = conv'(x) with weight * scale per output channel, bias * scale + shift."""
    scale, shift = bn.scale_shift()
    return (weight * scale.view(-1, 1, 1, 1).to(weight.dtype),
            shift if bias is None else shift + bias * scale)


def conv_norm(conv: nn.Conv2d, norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """norm(conv(x)); one convolution with the norm folded into its weights and bias where
    both are fixed (a frozen conv followed by FrozenBatchNorm2d): the frozen stages' maps
    are the largest of the network, and a separate norm pass reads and writes each once
    more. The fold changes the result by float rounding only."""
    if not (isinstance(norm, FrozenBatchNorm2d) and not conv.weight.requires_grad
            and (conv.bias is None or not conv.bias.requires_grad)):
        return norm(conv(x))
    weight, bias = fold_frozen_bn(conv.weight, conv.bias, norm)
    return F.conv2d(x, weight, bias.to(weight.dtype), conv.stride, conv.padding, conv.dilation, conv.groups)


def get_norm(name: str | None, channels: int, *, eps: float = 1e-5) -> nn.Module:
    """Normalisation module for `channels` feature maps, by config name (NORM_NAMES)."""
    if not name:
        return nn.Identity()
    if name == "BN":
        return nn.BatchNorm2d(channels, eps=eps)
    if name == "SyncBN":
        return nn.SyncBatchNorm(channels, eps=eps)
    if name == "FrozenBN":
        return FrozenBatchNorm2d(channels, eps=eps)
    if name == "GN":
        if channels % GN_GROUPS:
            raise ValueError(f"norm 'GN' uses {GN_GROUPS} groups and needs a channel count divisible "
                             f"by {GN_GROUPS}; got {channels} channels")
        return nn.GroupNorm(GN_GROUPS, channels, eps=eps)
    raise ValueError(f"unknown norm {name!r}; expected one of {NORM_NAMES}")


def freeze_module(module: nn.Module) -> nn.Module:
    """Stop all learning in `module`: no gradients, BN statistics frozen (returns it)."""
    for p in module.parameters():
        p.requires_grad_(False)
    return FrozenBatchNorm2d.convert_frozen_batchnorm(module)
