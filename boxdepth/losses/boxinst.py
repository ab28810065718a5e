"""BoxInst box-supervised mask losses and box-mask targets (SPEC §2).

Shapes (N instances, K = kernel_size**2 - 1 neighbours, masks at stride 4):
    dice_loss(x (N,...), target (N,...))                          -> (N,)
    projection_loss(mask_probs (N,1,H,W), box_masks (N,1,H,W))    -> scalar
    pairwise_neg_log_same(mask_logits (N,1,H,W), k, d)            -> (N,K,H,W)
    pairwise_loss(neg_log_same (N,K,H,W), weights (N,K|1,H,W))    -> scalar
    boxes_to_stride_masks(boxes (N,4), canvas_hw (Hp,Wp), stride) -> (N,1,Hp/s,Wp/s)
    bottom_pixels_mask(image_sizes [(h,w)]*B, original_heights [B], canvas_hw,
                       bottom_pixels_removed, stride)            -> (B,Hp/s,Wp/s)

Stride sampling: a full-canvas mask is sampled at ``mask[s//2::s, s//2::s]``
(``mask[2::4, 2::4]`` for s = 4), the centres of the stride-4 cells, as
AdelaiDet's ``add_bitmasks_from_boxes``.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from boxdepth.ops.pairwise import unfold_wo_center

DICE_EPS = 1e-5  # SPEC §2: dice = 1 - 2*sum(p*t) / (sum(p^2) + sum(t^2) + 1e-5)


def dice_loss(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-instance dice loss over all non-batch dims -> (N,)."""
    n = x.size(0)
    x = x.reshape(n, -1)
    target = target.reshape(n, -1).to(dtype=x.dtype)
    inter = (x * target).sum(dim=1)
    union = (x * x).sum(dim=1) + (target * target).sum(dim=1) + DICE_EPS
    return 1.0 - 2.0 * inter / union


def projection_loss(mask_probs: torch.Tensor, box_masks: torch.Tensor) -> torch.Tensor:
    """BoxInst projection term: dice of the y- and x-projections, mean over instances.

    ``max`` over y gives the mask's horizontal extent, which must match the
    box's; likewise ``max`` over x. N = 0 gives a graph-keeping zero.
    """
    if mask_probs.shape != box_masks.shape or mask_probs.dim() != 4:
        raise ValueError(
            "boxdepth/losses/boxinst.py: projection_loss needs mask_probs and box_masks of "
            f"equal shape (N,1,H,W), got {tuple(mask_probs.shape)} and {tuple(box_masks.shape)}"
        )
    if mask_probs.size(0) == 0:
        return mask_probs.sum() * 0.0
    box_masks = box_masks.to(dtype=mask_probs.dtype)
    loss_y = dice_loss(mask_probs.amax(dim=2), box_masks.amax(dim=2))
    loss_x = dice_loss(mask_probs.amax(dim=3), box_masks.amax(dim=3))
    return (loss_x + loss_y).mean()


def pairwise_neg_log_same(mask_logits: torch.Tensor, kernel_size: int,
                          dilation: int) -> torch.Tensor:
    """``-log P(same)`` for each pixel and neighbour (Eq. 5) -> (N,K,H,W).

    P(same) = p_i p_j + (1-p_i)(1-p_j) with p = sigmoid(z); in log space
    ``logaddexp(logsig(z_i)+logsig(z_j), logsig(-z_i)+logsig(-z_j))`` stays
    finite (and so do its gradients) for saturated logits. Computed in
    float32 even under autocast. Neighbours off the canvas read log-prob 0;
    the pair weights must mask them out (the similarity maps do).
    """
    if mask_logits.dim() != 4 or mask_logits.size(1) != 1:
        raise ValueError(
            "boxdepth/losses/boxinst.py: pairwise_neg_log_same needs mask logits (N,1,H,W), "
            f"got {tuple(mask_logits.shape)}"
        )
    z = mask_logits.float()
    log_fg = F.logsigmoid(z)
    log_bg = F.logsigmoid(-z)
    neighbours = unfold_wo_center(torch.cat((log_fg, log_bg), dim=1), kernel_size, dilation)
    log_fg_nb, log_bg_nb = neighbours[:, 0], neighbours[:, 1]
    log_same = torch.logaddexp(log_fg + log_fg_nb, log_bg + log_bg_nb)
    return -log_same


def pairwise_loss(neg_log_same: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean ``sum(nls * w) / max(sum(w), 1)`` over all pairs -> scalar.

    ``weights`` broadcasts to ``neg_log_same`` (e.g. a (N,1,H,W) box mask
    counts once per neighbour), as BoxInst's ``(S_c >= thr) * box_mask``.
    """
    w = weights.to(dtype=neg_log_same.dtype).expand_as(neg_log_same)
    return (neg_log_same * w).sum() / w.sum().clamp(min=1.0)


def _stride_positions(length: int, stride: int, device) -> torch.Tensor:
    """Canvas pixel indices kept by ``[stride//2::stride]`` -> (length // stride,)."""
    return torch.arange(stride // 2, length, stride, device=device)


def _check_canvas(canvas_hw, stride: int, where: str):
    hp, wp = int(canvas_hw[0]), int(canvas_hw[1])
    if stride < 1 or hp % stride or wp % stride:
        raise ValueError(
            f"boxdepth/losses/boxinst.py: {where}: canvas {hp}x{wp} must be divisible by "
            f"stride {stride} (pad the batch to a multiple of 32)"
        )
    return hp, wp


def boxes_to_stride_masks(boxes: torch.Tensor, canvas_hw, stride: int = 4) -> torch.Tensor:
    """Rasterise XYXY boxes on the padded canvas and sample at ``[s//2::s]``.

    Pixel (y, x) (integer indices on the full canvas) is inside a box iff
    ``floor(x1) <= x <= floor(x2)`` and ``floor(y1) <= y <= floor(y2)``:
    AdelaiDet's ``mask[int(y1):int(y2 + 1), int(x1):int(x2 + 1)] = 1`` for
    non-negative boxes (so an integer x2 includes column x2). Boxes are
    expected clipped to the image; parts off the canvas are simply dropped.

    Returns (N,1,Hp//stride,Wp//stride) float32 on ``boxes.device``.
    """
    if boxes.dim() != 2 or boxes.size(-1) != 4:
        raise ValueError(
            f"boxdepth/losses/boxinst.py: boxes must be (N,4) XYXY, got {tuple(boxes.shape)}"
        )
    hp, wp = _check_canvas(canvas_hw, stride, "boxes_to_stride_masks")
    ys = _stride_positions(hp, stride, boxes.device)
    xs = _stride_positions(wp, stride, boxes.device)
    lo = torch.floor(boxes[:, :2])  # (N,2) x1, y1
    hi = torch.floor(boxes[:, 2:])  # (N,2) x2, y2
    in_x = (xs[None] >= lo[:, 0:1]) & (xs[None] <= hi[:, 0:1])  # (N,Ws)
    in_y = (ys[None] >= lo[:, 1:2]) & (ys[None] <= hi[:, 1:2])  # (N,Hs)
    masks = in_y[:, :, None] & in_x[:, None, :]
    return masks[:, None].to(torch.float32)


def bottom_pixels_mask(image_sizes: Sequence, original_heights: Sequence, canvas_hw,
                       bottom_pixels_removed: float, stride: int = 1,
                       device=None) -> torch.Tensor:
    """Per-image validity mask with BoxInst's bottom rows removed -> (B,Hp//s,Wp//s).

    1 inside image b's resized area ``[0,h_b) x [0,w_b)`` on the padded canvas
    except its bottom ``int(bottom_pixels_removed * h_b / original_h_b)``
    rows (COCO boxes there are often wrong; BoxInst drops them from the
    pairwise terms), 0 elsewhere. Sampled at ``[s//2::s]`` like the box masks.
    """
    if len(image_sizes) != len(original_heights):
        raise ValueError(
            "boxdepth/losses/boxinst.py: bottom_pixels_mask needs one original height per "
            f"image, got {len(image_sizes)} sizes and {len(original_heights)} heights"
        )
    hp, wp = _check_canvas(canvas_hw, stride, "bottom_pixels_mask")
    removed = [int(bottom_pixels_removed * float(h) / float(oh))
               for (h, _), oh in zip(image_sizes, original_heights)]
    last_row = torch.tensor([int(h) - r for (h, _), r in zip(image_sizes, removed)],
                            dtype=torch.long, device=device)  # rows >= this are masked out
    widths = torch.tensor([int(w) for _, w in image_sizes], dtype=torch.long, device=device)
    ys = _stride_positions(hp, stride, device)
    xs = _stride_positions(wp, stride, device)
    valid = (ys[None, :, None] < last_row[:, None, None]) \
        & (xs[None, None, :] < widths[:, None, None])
    return valid.to(torch.float32)
