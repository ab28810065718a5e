"""ResNet-18/34/50/101 backbones (SPEC §1) with torchvision-compatible state-dict keys.

Architecture and parameter names follow torchvision's ResNet v1.5 (stride of a
Bottleneck in its 3x3 conv): conv1, bn1, layer1..layer4, blocks with conv1/bn1,
conv2/bn2[, conv3/bn3] and downsample.0 (1x1 conv) / downsample.1 (norm). There is no
classifier: `fc.*` in a checkpoint is ignored by `weights.load_backbone_weights`.

Stage names follow detectron2: stem (conv1+bn1+maxpool, stride 4), res2 = layer1
(stride 4), res3 = layer2 (8), res4 = layer3 (16), res5 = layer4 (32).

forward(x: (B, 3, H, W) normalised float) -> {"res3": (B, C3, H/8, W/8),
"res4": (B, C4, H/16, W/16), "res5": (B, C5, H/32, W/32)} (exact for H, W multiples of
32), with `out_channels` = {"res3": C3, "res4": C4, "res5": C5}:
128/256/512 for ResNet-18/34, 512/1024/2048 for ResNet-50/101.

Input normalisation depends on the weights: torchvision weights expect RGB with
ImageNet mean/std; detectron2 MSRA (Caffe2) weights expect BGR 0..255 minus
[103.53, 116.28, 123.675] with std 1 (config input.format=BGR, SPEC §0).
"""
from __future__ import annotations

from torch import nn

from boxdepth.models.norm import conv_norm, freeze_module, get_norm

OUT_FEATURES = ("res3", "res4", "res5")


def conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34); stride in the first."""

    expansion = 1

    def __init__(self, in_ch: int, planes: int, *, stride: int = 1, norm: str = "BN"):
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1 = conv3x3(in_ch, planes, stride)
        self.bn1 = get_norm(norm, planes)
        self.conv2 = conv3x3(planes, out_ch)
        self.bn2 = get_norm(norm, out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = make_downsample(in_ch, out_ch, stride=stride, norm=norm)

    def forward(self, x):
        out = self.relu(conv_norm(self.conv1, self.bn1, x))
        return _residual(self.relu, conv_norm(self.conv2, self.bn2, out), _shortcut(self.downsample, x))


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (carries the stride, torchvision v1.5) -> 1x1 with 4x expansion."""

    expansion = 4

    def __init__(self, in_ch: int, planes: int, *, stride: int = 1, norm: str = "BN"):
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1 = conv1x1(in_ch, planes)
        self.bn1 = get_norm(norm, planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = get_norm(norm, planes)
        self.conv3 = conv1x1(planes, out_ch)
        self.bn3 = get_norm(norm, out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = make_downsample(in_ch, out_ch, stride=stride, norm=norm)

    def forward(self, x):
        out = self.relu(conv_norm(self.conv1, self.bn1, x))
        out = self.relu(conv_norm(self.conv2, self.bn2, out))
        return _residual(self.relu, conv_norm(self.conv3, self.bn3, out), _shortcut(self.downsample, x))


def _shortcut(downsample: nn.Module | None, x):
    return x if downsample is None else conv_norm(downsample[0], downsample[1], x)


def _residual(relu: nn.Module, out, identity):
    # in place where no gradient flows (frozen stages, inference): no extra full-size map
    return relu(out.add_(identity) if not (out.requires_grad or identity.requires_grad) else out + identity)


def make_downsample(in_ch: int, out_ch: int, *, stride: int, norm: str) -> nn.Module | None:
    """Projection shortcut (1x1 conv + norm) when the shape changes, else None."""
    if stride == 1 and in_ch == out_ch:
        return None
    return nn.Sequential(conv1x1(in_ch, out_ch, stride), get_norm(norm, out_ch))


# name -> (block type, blocks per stage)
RESNET_SPECS = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
}


class ResNet(nn.Module):
    """ResNet trunk returning res3/res4/res5 (see module docstring).

    Args:
        block: BasicBlock or Bottleneck.
        layers: number of blocks in layer1..layer4.
        norm: normalisation name for every norm layer (see `get_norm`).
        freeze_at: 0 trains everything; k >= 1 freezes the stem and res2..res_k
            (1: stem, 2: stem + res2, ... 5: everything). Frozen stages get no
            gradients and their BatchNorms become FrozenBatchNorm2d.
    """

    def __init__(self, *, block: type, layers: tuple[int, ...], norm: str = "FrozenBN",
                 freeze_at: int = 2):
        super().__init__()
        if not 0 <= freeze_at <= 5:
            raise ValueError(f"freeze_at must be in 0..5 (0: nothing, 1: stem, 2: stem + res2, ...), "
                             f"got {freeze_at}")
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = get_norm(norm, 64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_ch = 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers)):
            stage = self._make_layer(block, in_ch, planes, n, stride=1 if i == 0 else 2, norm=norm)
            self.add_module(f"layer{i + 1}", stage)
            in_ch = planes * block.expansion
        self.out_channels = {f"res{i + 2}": 64 * 2 ** i * block.expansion for i in (1, 2, 3)}
        self._init_weights()
        self.freeze(freeze_at)

    @staticmethod
    def _make_layer(block, in_ch, planes, n, *, stride, norm) -> nn.Sequential:
        blocks = [block(in_ch, planes, stride=stride, norm=norm)]
        blocks += [block(planes * block.expansion, planes, norm=norm) for _ in range(n - 1)]
        return nn.Sequential(*blocks)

    def _init_weights(self) -> None:
        # torchvision's initialisation, so a from-scratch model matches it.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def freeze(self, freeze_at: int) -> None:
        """Freeze the stem (freeze_at >= 1) and res2..res_{freeze_at} (SPEC §1)."""
        if freeze_at >= 1:
            freeze_module(self.conv1)
            self.bn1 = freeze_module(self.bn1)
        for k in range(2, freeze_at + 1):
            freeze_module(getattr(self, f"layer{k - 1}"))

    def forward(self, x):
        x = self.maxpool(self.relu(conv_norm(self.conv1, self.bn1, x)))
        x = self.layer1(x)
        res3 = self.layer2(x)
        res4 = self.layer3(res3)
        res5 = self.layer4(res4)
        return {"res3": res3, "res4": res4, "res5": res5}


def build_resnet(name: str, *, norm: str = "FrozenBN", freeze_at: int = 2) -> ResNet:
    if name not in RESNET_SPECS:
        raise ValueError(f"unknown ResNet {name!r}; expected one of {sorted(RESNET_SPECS)}")
    block, layers = RESNET_SPECS[name]
    return ResNet(block=block, layers=layers, norm=norm, freeze_at=freeze_at)
