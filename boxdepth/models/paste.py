"""Mask probabilities on the canvas -> masks at the original image size, one detection at a time.

The dynamic mask head gives, per detection, probabilities on the padded canvas at the
mask stride s: `mask_probs` float (D, 1, Hp/s, Wp/s) (and `depth_probs` of the same shape
with a DG-MaskHead). A detection's full-resolution map is: upsample by s (aligned_bilinear),
crop to the resized image (h, w), bilinear to the original (H0, W0). Masks threshold it.

`MaskPaster(mask_probs, depth_probs, mask_stride=, input_hw=, orig_hw=, threshold=)`:
    len(p)        D
    p.mask(k)     bool (H0, W0)      detection k's mask
    p.depth(k)    float32 (H0, W0)   its instance depth (None without depth_probs)
    p.masks()     bool (D, H0, W0)   all masks, filled one detection at a time
    p.depths()    float32 (D, H0, W0) or None
    p.take(order) a paster over the detections `order` (a permutation or subset)

Why one at a time: pasting every detection at once in float32 holds D x H0 x W0 x 4 bytes
(2.9 GB for 27 detections on a 12 MP photo); here the float map of one detection is the
only full-size float buffer, and a caller that needs one mask at a time (boxdepth predict)
never holds D full-size masks. The values are those of the batched paste bit for bit:
bilinear interpolation treats every (N, C) plane alone (tests/test_paste.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from boxdepth.ops.pairwise import aligned_bilinear


def paste_probs(probs: torch.Tensor, mask_stride: int, input_hw, orig_hw) -> torch.Tensor:
    """(N, 1, Hp/s, Wp/s) -> float32 (N, H0, W0): upsample, crop to `input_hw`, resize."""
    up = aligned_bilinear(probs.float(), mask_stride)[:, :, :input_hw[0], :input_hw[1]]
    return F.interpolate(up, size=tuple(orig_hw), mode="bilinear", align_corners=False)[:, 0]


class MaskPaster:
    """Per-detection pasting of one image's mask (and depth) probabilities: module docstring."""

    def __init__(self, mask_probs: torch.Tensor, depth_probs: torch.Tensor | None, *,
                 mask_stride: int, input_hw, orig_hw, threshold: float):
        self.mask_probs, self.depth_probs = mask_probs, depth_probs
        self.mask_stride = int(mask_stride)
        self.input_hw = tuple(int(v) for v in input_hw)
        self.orig_hw = tuple(int(v) for v in orig_hw)
        self.threshold = float(threshold)

    def __len__(self) -> int:
        return int(self.mask_probs.shape[0])

    @property
    def has_depth(self) -> bool:
        return self.depth_probs is not None

    def take(self, order) -> "MaskPaster":
        depth = None if self.depth_probs is None else self.depth_probs[order]
        return MaskPaster(self.mask_probs[order], depth, mask_stride=self.mask_stride,
                          input_hw=self.input_hw, orig_hw=self.orig_hw, threshold=self.threshold)

    def _paste(self, probs: torch.Tensor, k: int) -> torch.Tensor:
        return paste_probs(probs[k:k + 1], self.mask_stride, self.input_hw, self.orig_hw)[0]

    def mask(self, k: int) -> torch.Tensor:
        return self._paste(self.mask_probs, k) > self.threshold

    def depth(self, k: int) -> torch.Tensor | None:
        return None if self.depth_probs is None else self._paste(self.depth_probs, k)

    def masks(self) -> torch.Tensor:
        out = torch.empty((len(self), *self.orig_hw), dtype=torch.bool, device=self.mask_probs.device)
        for k in range(len(self)):
            out[k] = self.mask(k)
        return out

    def depths(self) -> torch.Tensor | None:
        if self.depth_probs is None:
            return None
        out = torch.empty((len(self), *self.orig_hw), dtype=torch.float32, device=self.depth_probs.device)
        for k in range(len(self)):
            out[k] = self._paste(self.depth_probs, k)
        return out
