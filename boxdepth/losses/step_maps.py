"""Stride-4 maps of one training step, computed once and shared by the criterion and the
distiller (and, for the depth similarity, by `label`).

    step_maps(outputs, batch, stride) -> StepMaps, cached on `outputs` per stride and batch:
        box_masks  (N,1,Hp/s,Wp/s) float 0/1  each proposal's GT box, `mask[s0::s, s0::s]`
        d01        (B,1,Hp/s,Wp/s) float      pseudo depth average-pooled by s, or None
    stride_depth_similarity(depth (B,1,Hp,Wp), image_mask (B,Hp,Wp), stride, k, d, kappa)
        -> S_d (B,K,Hp/s,Wp/s) with the image mask sampled at s (the matcher's S_dcons)
    proposal_gt_index(props, targets) -> (N,) index into the images' concatenated GT boxes

Why only these are shared: the criterion's depth similarity masks the removed bottom rows
(BoxInst's bottom_pixels_removed) and the matcher's does not, so the two S_d maps differ
on purpose and each keeps its own.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from boxdepth.losses.boxinst import boxes_to_stride_masks
from boxdepth.losses.depth import depth_similarity

# the key under which `step_maps` caches its result in the model's training outputs
_CACHE_KEY = "step_maps"


def proposal_gt_index(props: dict, targets: list[dict]) -> torch.Tensor:
    """Index of each proposal's GT in the concatenation of all images' boxes (N,)."""
    counts = torch.tensor([len(t["boxes"]) for t in targets], device=props["im_inds"].device)
    offsets = torch.cumsum(counts, 0) - counts
    return offsets[props["im_inds"]] + props["gt_inds"]


def stride_depth01(depth: torch.Tensor, stride: int) -> torch.Tensor:
    """d01 (B,1,Hp,Wp) -> average-pooled by `stride` (SPEC §2), float32."""
    return F.avg_pool2d(depth.float(), stride, stride)


def stride_depth_similarity(depth: torch.Tensor, image_mask: torch.Tensor, *, stride: int,
                            kernel_size: int, dilation: int, kappa: float) -> torch.Tensor:
    """S_d (B, K, Hp/s, Wp/s) of the pooled pseudo depth (B, 1, Hp, Wp): the matcher's
    S_dcons (Eq. 8) in training and in `label`."""
    s0 = stride // 2
    valid = image_mask[:, s0::stride, s0::stride]
    return depth_similarity(255.0 * stride_depth01(depth, stride), valid, kernel_size, dilation, kappa)


@dataclass(frozen=True)
class StepMaps:
    box_masks: torch.Tensor
    d01: torch.Tensor | None


def step_maps(outputs: dict, batch: dict, stride: int) -> StepMaps:
    """The proposals' box masks and the pooled depth of this step; the first caller
    computes them, later callers with the same proposals dict and the same `batch` object
    (the distiller after the criterion) reuse them. Another batch or proposals dict
    recomputes, as does a batch whose targets or depth were replaced: the cache keeps them
    and compares identity, not contents."""
    cache = outputs.setdefault(_CACHE_KEY, {})
    props, targets, depth = outputs["proposals"], batch["targets"], batch.get("depth")
    key = (batch, props, targets, depth)
    made_from, maps = cache.get(stride, ((), None))
    if len(made_from) != len(key) or any(a is not b for a, b in zip(made_from, key)):
        boxes = torch.cat([t["boxes"] for t in targets])
        box_masks = boxes_to_stride_masks(boxes, batch["images"].shape[-2:], stride)[
            proposal_gt_index(props, targets)]
        maps = StepMaps(box_masks=box_masks,
                        d01=None if depth is None else stride_depth01(depth, stride))
        cache[stride] = (key, maps)
    return maps
