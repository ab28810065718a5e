"""Dynamic mask head of CondInst/BoxInst with the optional depth layer (DG-MaskHead, Eq. 1).

Per instance n (SPEC §1), on the stride-8 mask features:
  F0 = cat([dx, dy], mask_feats[im_inds[n]])      dx, dy = (loc_n - grid) / soi[level_n]
  F1 = relu(M2(relu(M1(F0))))                     M1: (C+2)->ch, M2: ch->ch, 1x1
  mask logit  z = Mm(F1)                          (BoxInst, depth_head=False)
  depth logit zd = Md(F1), P_depth = sigmoid(zd)  (depth_head=True)
  mask logit  z = Mm(F1) * P_depth                so P_mask = sigmoid(z)   (Eq. 1,
                                                  `depth_guided_mask_logits`)
Both logits are upsampled x(mask_feat_stride / mask_out_stride) with aligned_bilinear.

Parameter vector (per instance, C = 16, ch = 8: 233 without Md, 242 with it): all
weights first, then all biases, layer order [M1, M2, Mm, Md]:
  weights  W1 (ch*(C+2) = 144, row-major (out, in)) | W2 (ch*ch = 64) | Wm (ch = 8) | Wd (ch = 8)
  biases   b1 (ch = 8) | b2 (ch = 8) | bm (1) | bd (1)
So the first 216 entries (W1, W2, Wm) sit where BoxInst has them; with Md the biases
move up by 8 (indices 224..241 instead of 216..232). `num_layers` counts M1, M2, Mm
(depth_head adds Md as an extra output layer reading F1, not a fourth stacked layer).

forward(mask_feats (B, C, H, W), mask_feat_stride, im_inds (N,), locations (N, 2),
fpn_levels (N,), params (N, P)) -> {"mask_logits": (N, 1, H*s, W*s),
"depth_logits": (N, 1, H*s, W*s) or None}, s = mask_feat_stride // mask_out_stride.
All instances run at once as grouped 1x1 convolutions (groups = N).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from boxdepth.models.fcos import compute_locations
from boxdepth.ops.pairwise import aligned_bilinear
from boxdepth.ops.precision import at_least_float32, float32_region


def layer_shapes(in_channels: int, channels: int, num_layers: int, depth_head: bool) -> list[tuple[int, int]]:
    """(in, out) of each dynamic layer in parameter order: M1 .. M_{num_layers-1}, Mm[, Md]."""
    if num_layers < 2:
        raise ValueError(f"DynamicMaskHead: num_layers must be >= 2, got {num_layers}")
    shapes = [(in_channels + 2, channels)] + [(channels, channels)] * (num_layers - 2) + [(channels, 1)]
    return shapes + [(channels, 1)] if depth_head else shapes


def split_params(params: torch.Tensor, shapes: list[tuple[int, int]]):
    """(N, P) -> per layer weight (N*out, in, 1, 1) and bias (N*out,) for a grouped conv."""
    n = params.shape[0]
    w_nums = [i * o for i, o in shapes]
    b_nums = [o for _, o in shapes]
    chunks = torch.split(params, w_nums + b_nums, dim=1)
    weights = [w.reshape(n * o, i, 1, 1) for w, (i, o) in zip(chunks[:len(shapes)], shapes)]
    biases = [b.reshape(n * o) for b, (_, o) in zip(chunks[len(shapes):], shapes)]
    return weights, biases


def depth_guided_mask_logits(mask_logits: torch.Tensor, depth_logits: torch.Tensor) -> torch.Tensor:
    """Eq. 1 of the paper (DG-MaskHead): the mask logit scaled by the instance's predicted
    depth, z = Mm(F1) * sigmoid(Md(F1)); both (N, 1, H, W) at the mask feature stride."""
    return mask_logits * depth_logits.sigmoid()


class DynamicMaskHead(nn.Module):
    def __init__(self, in_channels: int = 16, channels: int = 8, num_layers: int = 3,
                 sizes_of_interest: tuple[float, ...] = (64, 128, 256, 512, 1024),
                 depth_head: bool = False, mask_out_stride: int = 4):
        super().__init__()
        self.in_channels = in_channels
        self.depth_head = depth_head
        self.mask_out_stride = mask_out_stride
        self.shapes = layer_shapes(in_channels, channels, num_layers, depth_head)
        self.num_params = sum(i * o + o for i, o in self.shapes)
        self.register_buffer("sizes_of_interest", torch.tensor(sizes_of_interest, dtype=torch.float32),
                             persistent=False)

    def relative_coords(self, locations, fpn_levels, h, w, stride) -> torch.Tensor:
        """(N, 2, H*W): [dx, dy] = (instance location - grid location) / soi[level]."""
        grid = compute_locations([(h, w)], [stride], locations.device)[0]
        rel = (locations.float()[:, None, :] - grid[None]).permute(0, 2, 1)
        return rel / self.sizes_of_interest[fpn_levels].reshape(-1, 1, 1)

    def forward(self, mask_feats: torch.Tensor, mask_feat_stride: int, im_inds: torch.Tensor,
                locations: torch.Tensor, fpn_levels: torch.Tensor, params: torch.Tensor) -> dict:
        b, c, h, w = mask_feats.shape
        n = len(im_inds)
        if c != self.in_channels:
            raise ValueError(f"DynamicMaskHead: mask_feats have {c} channels, head built for {self.in_channels}")
        if params.shape != (n, self.num_params):
            raise ValueError(f"DynamicMaskHead: params {tuple(params.shape)}, expected ({n}, {self.num_params})")
        if mask_feat_stride % self.mask_out_stride:
            raise ValueError(f"DynamicMaskHead: mask_feat_stride {mask_feat_stride} is not a multiple "
                             f"of mask_out_stride {self.mask_out_stride}")
        factor = mask_feat_stride // self.mask_out_stride
        if n == 0:
            # empty but attached to the graph: `.sum()` downstream is a differentiable zero
            # that reaches the mask branch and the controller (DDP needs every parameter used)
            zero = mask_feats.sum() * 0 + params.sum() * 0
            empty = zero + mask_feats.new_zeros(0, 1, h * factor, w * factor)
            return {"mask_logits": empty, "depth_logits": empty.clone() if self.depth_head else None}
        # float32 even under AMP (engine/amp.py): the logits feed the pairwise term through
        # neighbour differences, which bf16/fp16 would quantise; the head is a few 8-channel
        # 1x1 convs, so this costs nothing measurable
        with float32_region(mask_feats.device):
            return self._run(at_least_float32(mask_feats), mask_feat_stride, im_inds, locations,
                             fpn_levels, at_least_float32(params), factor)

    def _run(self, mask_feats, mask_feat_stride, im_inds, locations, fpn_levels, params, factor) -> dict:
        _, c, h, w = mask_feats.shape
        n = len(im_inds)
        rel = self.relative_coords(locations, fpn_levels, h, w, mask_feat_stride).to(mask_feats.dtype)
        x = torch.cat([rel, mask_feats[im_inds].reshape(n, c, h * w)], dim=1).reshape(1, -1, h, w)
        weights, biases = split_params(params, self.shapes)
        num_stacked = len(self.shapes) - (1 if self.depth_head else 0)
        for i in range(num_stacked - 1):
            x = F.relu(F.conv2d(x, weights[i], biases[i], groups=n))
        mask_logits = F.conv2d(x, weights[num_stacked - 1], biases[num_stacked - 1], groups=n)
        depth_logits = None
        if self.depth_head:
            depth_logits = F.conv2d(x, weights[-1], biases[-1], groups=n)
            mask_logits = depth_guided_mask_logits(mask_logits, depth_logits)
        mask_logits = aligned_bilinear(mask_logits.reshape(n, 1, h, w), factor)
        if depth_logits is not None:
            depth_logits = aligned_bilinear(depth_logits.reshape(n, 1, h, w), factor)
        return {"mask_logits": mask_logits, "depth_logits": depth_logits}
