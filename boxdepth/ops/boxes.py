"""Box geometry and class-aware NMS, pure PyTorch (the box ops the package uses; the FCOS
loss has its own GIoU on (l, t, r, b) distances, losses/fcos.py).

All boxes are absolute XYXY floats ``(x1, y1, x2, y2)`` with ``x2 >= x1`` and
``y2 >= y1`` (SPEC §0).

Shapes:
    box_area(boxes (N,4))                              -> (N,)
    box_iou(a (N,4), b (M,4))                          -> (N,M)
    clip_boxes(boxes (...,4), size_hw (H,W))           -> (...,4)
    batched_nms(boxes (N,4), scores (N,), idxs (N,), iou_threshold)
                                                       -> keep (K,) int64

``batched_nms`` is exact greedy class-aware NMS: boxes are visited by
decreasing score (ties: lower index first, a stable sort as torchvision's CPU
kernel) and a box is suppressed when its IoU with an already kept box of the
same class is strictly greater than ``iou_threshold``. It uses
``torchvision.ops.batched_nms`` when torchvision imports, else the pure-torch
path below.
"""
from __future__ import annotations

import numpy as np
import torch

try:  # optional speed-up only; the project never requires torchvision
    from torchvision.ops import batched_nms as _tv_batched_nms
except Exception:  # noqa: BLE001 - any import failure means "not available"
    _tv_batched_nms = None

# Rows of the pairwise "IoU > threshold" matrix computed at once: bounds the
# temporary (rows x N x 2) corner tensors to ~20 MB each for N ~ 5000.
_NMS_ROW_CHUNK = 512


def _check_boxes(boxes: torch.Tensor, name: str) -> None:
    if boxes.dim() != 2 or boxes.size(-1) != 4:
        raise ValueError(
            f"boxdepth/ops/boxes.py: `{name}` must have shape (N, 4) XYXY, "
            f"got {tuple(boxes.shape)}"
        )


def _safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    # Degenerate (zero-area) box pairs would give 0/0; the smallest normal
    # float of the dtype leaves every real denominator untouched.
    return num / den.clamp(min=torch.finfo(den.dtype).tiny)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Area of XYXY boxes (..., 4) -> (...)."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _inter_union(a: torch.Tensor, b: torch.Tensor):
    """Intersection and union of broadcastable box tensors (..., 4)."""
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(a) + box_area(b) - inter
    return inter, union


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of every box in ``a`` (N,4) with every box in ``b`` (M,4) -> (N,M)."""
    _check_boxes(a, "a")
    _check_boxes(b, "b")
    inter, union = _inter_union(a[:, None, :], b[None, :, :])
    return _safe_div(inter, union)


def clip_boxes(boxes: torch.Tensor, size_hw) -> torch.Tensor:
    """Clip XYXY boxes (...,4) to an image of size ``(H, W)``: x in [0,W], y in [0,H]."""
    h, w = float(size_hw[0]), float(size_hw[1])
    x = boxes[..., 0::2].clamp(min=0.0, max=w)
    y = boxes[..., 1::2].clamp(min=0.0, max=h)
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


def _suppression_matrix(boxes: torch.Tensor, thr: float) -> np.ndarray:
    """Bool (n,n) numpy, upper triangle: IoU(i,j) > thr for j > i (score-sorted boxes)."""
    n = boxes.size(0)
    over = np.zeros((n, n), dtype=bool)
    for start in range(0, n, _NMS_ROW_CHUNK):
        blk = boxes[start:start + _NMS_ROW_CHUNK]
        # only later (lower-score) columns matter to the greedy sweep
        inter, union = _inter_union(blk[:, None, :], boxes[None, start:, :])
        over[start:start + blk.size(0), start:] = (_safe_div(inter, union) > thr).cpu().numpy()
    return over


def _greedy_sweep(over: np.ndarray) -> np.ndarray:
    """Greedy NMS on a score-sorted suppression matrix; returns kept positions."""
    n = over.shape[0]
    removed = np.zeros(n, dtype=bool)
    keep = []
    for i in range(n):
        if removed[i]:
            continue
        keep.append(i)
        removed[i + 1:] |= over[i, i + 1:]
    return np.asarray(keep, dtype=np.int64)


def _pure_torch_batched_nms(boxes, scores, idxs, thr: float) -> torch.Tensor:
    """Greedy NMS run per class on score-sorted boxes.

    Classes never suppress each other, so running each class alone is exact
    and replaces torchvision's coordinate-offset trick (which loses float32
    precision for many classes and breaks for negative coordinates); it also
    shrinks the IoU matrices from N^2 to the sum of n_c^2.
    """
    order = torch.sort(scores, descending=True, stable=True).indices
    sorted_boxes = boxes[order].float()
    sorted_idxs = idxs[order]
    kept = []
    for cls in torch.unique(sorted_idxs).tolist():
        pos = (sorted_idxs == cls).nonzero()[:, 0]
        over = _suppression_matrix(sorted_boxes[pos], thr)
        kept.append(pos[torch.from_numpy(_greedy_sweep(over)).to(pos.device)])
    # positions in the stable score order, so sorting them restores score order
    kept_pos = torch.sort(torch.cat(kept)).values
    return order[kept_pos]


def batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """Class-aware greedy NMS.

    Args:
        boxes: (N,4) XYXY. scores: (N,). idxs: (N,) integer class ids.
        iou_threshold: a box is dropped when IoU > threshold with a kept box
            of the same class.
    Returns:
        (K,) int64 indices into ``boxes``, by decreasing score.
    """
    _check_boxes(boxes, "boxes")
    if scores.shape != boxes.shape[:1] or idxs.shape != boxes.shape[:1]:
        raise ValueError(
            "boxdepth/ops/boxes.py: batched_nms needs scores (N,) and idxs (N,) "
            f"for boxes {tuple(boxes.shape)}, got {tuple(scores.shape)} and "
            f"{tuple(idxs.shape)}"
        )
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    if _tv_batched_nms is not None:
        return _tv_batched_nms(boxes.float(), scores.float(), idxs, float(iou_threshold))
    with torch.no_grad():
        return _pure_torch_batched_nms(boxes, scores, idxs, float(iou_threshold))
