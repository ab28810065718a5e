"""Neighbour-pair tensors and colour ops for the BoxInst pairwise terms (SPEC §1-2).

Shapes (K = kernel_size * kernel_size - 1 neighbours):
    unfold_wo_center(x (N,C,H,W), kernel_size, dilation)  -> (N,C,K,H,W)
    rgb_to_lab(rgb (N,3,H,W), RGB in 0..255)               -> (N,3,H,W) CIE-Lab
    color_similarity(lab (N,3,H,W), image_mask (N,H,W) | (N,1,H,W), k, d)
                                                           -> (N,K,H,W)
    aligned_bilinear(x (N,C,H,W), factor)                  -> (N,C,H*f,W*f)

Neighbour ``k`` of pixel (y, x) is the k-th offset of the dilated
``kernel_size x kernel_size`` window in row-major order with the centre
removed (for 3x3, dilation 2: (-2,-2), (-2,0), (-2,2), (0,-2), (0,2), (2,-2),
(2,0), (2,2) as (dy, dx)). Neighbours outside the tensor read 0 (zero
padding), as AdelaiDet's ``unfold_wo_center``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from boxdepth.ops.precision import float32_region

# sRGB (D65) -> XYZ, the matrix skimage.color uses (IEC 61966-2-1 with
# skimage's rounding), and the D65 2-degree reference white.
_XYZ_FROM_RGB = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
_D65_WHITE = (0.95047, 1.0, 1.08883)


def unfold_wo_center(x: torch.Tensor, kernel_size: int, dilation: int) -> torch.Tensor:
    """Dilated neighbours of every pixel without the centre -> (N,C,k*k-1,H,W)."""
    if x.dim() != 4:
        raise ValueError(
            f"boxdepth/ops/pairwise.py: unfold_wo_center needs (N,C,H,W), got {tuple(x.shape)}"
        )
    if kernel_size % 2 != 1 or kernel_size < 3:
        raise ValueError(
            f"boxdepth/ops/pairwise.py: kernel_size must be odd and >= 3, got {kernel_size}"
        )
    h, w = x.shape[-2:]
    # "same" padding: the dilated window reaches dilation*(k//2) pixels out. Shifted slices
    # of the padded map give the same values and order as F.unfold, without unfold's
    # im2col/col2im and the copy that dropping the centre column would need (this sits
    # on the hot path of every pairwise loss).
    padding = dilation * (kernel_size // 2)
    padded = F.pad(x, (padding, padding, padding, padding))
    centre = kernel_size // 2
    shifts = [padded[:, :, i * dilation:i * dilation + h, j * dilation:j * dilation + w]
              for i in range(kernel_size) for j in range(kernel_size)
              if (i, j) != (centre, centre)]
    return torch.stack(shifts, dim=2)


def _srgb_to_linear(v: torch.Tensor) -> torch.Tensor:
    return torch.where(v > 0.04045, ((v + 0.055) / 1.055).clamp(min=0) ** 2.4, v / 12.92)


def _lab_f(t: torch.Tensor) -> torch.Tensor:
    # clamp keeps pow's gradient finite on the branch torch.where discards
    return torch.where(t > 0.008856, t.clamp(min=0.008856) ** (1.0 / 3.0), 7.787 * t + 16.0 / 116.0)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB (N,3,H,W) floats in 0..255 -> CIE-Lab (N,3,H,W), D65 / 2 degrees.

    Same formulas and constants as ``skimage.color.rgb2lab`` so the colour
    similarity matches BoxInst, but on the tensor's own device. Computed in
    float32 (float64 input stays float64).
    """
    if rgb.dim() != 4 or rgb.size(1) != 3:
        raise ValueError(
            f"boxdepth/ops/pairwise.py: rgb_to_lab needs (N,3,H,W) RGB, got {tuple(rgb.shape)}"
        )
    # at least float32: half precision cannot hold Lab to the 1e-3 we test
    dtype = torch.float64 if rgb.dtype == torch.float64 else torch.float32
    lin = _srgb_to_linear(rgb.to(dtype) / 255.0)
    m = torch.tensor(_XYZ_FROM_RGB, dtype=dtype, device=rgb.device)
    white = torch.tensor(_D65_WHITE, dtype=dtype, device=rgb.device)
    # outside autocast: under bf16 AMP the einsum would round XYZ to 3 significant digits
    with float32_region(rgb.device):
        xyz = torch.einsum("ij,njhw->nihw", m, lin) / white.view(1, 3, 1, 1)
    f = _lab_f(xyz)
    fx, fy, fz = f[:, 0], f[:, 1], f[:, 2]
    return torch.stack((116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)), dim=1)


def _as_mask(image_mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(N,H,W) or (N,1,H,W) bool/float -> (N,1,H,W) in ``like``'s dtype."""
    if image_mask.dim() == 3:
        image_mask = image_mask[:, None]
    n, _, h, w = like.shape
    if image_mask.shape != (n, 1, h, w):
        raise ValueError(
            f"boxdepth/ops/pairwise.py: image_mask must be (N,H,W) or (N,1,H,W) matching "
            f"{(n, h, w)}, got {tuple(image_mask.shape)}"
        )
    return image_mask.to(dtype=like.dtype)


def neighbour_mask(image_mask: torch.Tensor, like: torch.Tensor, kernel_size: int,
                   dilation: int) -> torch.Tensor:
    """The image mask of each pixel's neighbours -> (N,k*k-1,H,W); 0 off the canvas."""
    mask = _as_mask(image_mask, like)
    return unfold_wo_center(mask, kernel_size, dilation)[:, 0]


def color_similarity(lab: torch.Tensor, image_mask: torch.Tensor, kernel_size: int,
                     dilation: int) -> torch.Tensor:
    """BoxInst colour similarity ``S_c = exp(-0.5 * ||Lab_i - Lab_j||_2)`` -> (N,K,H,W).

    Multiplied by the neighbour's image mask so that pairs reaching into the
    padding or the removed bottom rows get similarity 0 (never active).
    """
    if lab.dim() != 4 or lab.size(1) != 3:
        raise ValueError(
            "boxdepth/ops/pairwise.py: color_similarity needs lab (N,3,H,W), "
            f"got {tuple(lab.shape)}"
        )
    neighbours = unfold_wo_center(lab, kernel_size, dilation)
    # sqrt of the per-channel sum, not linalg.vector_norm(dim=1): torch's CPU norm kernel
    # reduces this strided 5-D view ~100x slower (measured 54 ms vs 0.4 ms for a batch of
    # 8 at 56x80, 3x3 dilation 2), which made it the largest loss cost of a demo step
    dist = sum((lab[:, c, None] - neighbours[:, c]).square() for c in range(3)).sqrt()
    return torch.exp(-0.5 * dist) * neighbour_mask(image_mask, lab, kernel_size, dilation)


def aligned_bilinear(tensor: torch.Tensor, factor: int) -> torch.Tensor:
    """Upsample (N,C,H,W) by an integer factor -> (N,C,H*f,W*f), as AdelaiDet.

    Input pixel i sits at the centre of a stride-f cell, i.e. output position
    ``f*i + f//2``; the output equals the input exactly there, is linear in
    between and constant (replicated) beyond the first/last centres.
    """
    if tensor.dim() != 4:
        raise ValueError(
            f"boxdepth/ops/pairwise.py: aligned_bilinear needs (N,C,H,W), got {tuple(tensor.shape)}"
        )
    if int(factor) != factor or factor < 1:
        raise ValueError(f"boxdepth/ops/pairwise.py: factor must be an integer >= 1, got {factor}")
    factor = int(factor)
    if factor == 1:
        return tensor
    h, w = tensor.shape[2:]
    tensor = F.pad(tensor, pad=(0, 1, 0, 1), mode="replicate")
    oh, ow = factor * h + 1, factor * w + 1
    # align_corners=True on the (h+1)-long padded axis puts input i at output f*i.
    tensor = F.interpolate(tensor, size=(oh, ow), mode="bilinear", align_corners=True)
    tensor = F.pad(tensor, pad=(factor // 2, 0, factor // 2, 0), mode="replicate")
    return tensor[:, :, :oh - 1, :ow - 1]


def box_windows(box_masks: torch.Tensor, margin: int):
    """Per-instance crop windows around each box mask, all of one size (Sh, Sw).

    box_masks (N,1,H,W) -> ys (N,Sh) and xs (N,Sw) long pixel indices (clamped to the map)
    and `inside` (N,1,Sh,Sw) float: 1 where the window pixel lies in the instance's own
    box expanded by `margin` (and on the map). With margin = dilation*(k//2), every
    neighbour a pairwise term reads from a centre inside the box is inside the window, so a
    pairwise loss on the windows equals the loss on the full maps (the box mask zeroes
    every other centre) at a fraction of the cost: boxes are usually far smaller than
    the canvas.
    """
    n, _, h, w = box_masks.shape
    dev = box_masks.device

    def extent(any_along: torch.Tensor, size: int):
        idx = torch.arange(size, device=dev)
        first = torch.where(any_along, idx, size).min(dim=1).values
        last = torch.where(any_along, idx, -1).max(dim=1).values
        empty = last < 0
        start = (first - margin).clamp(min=0)
        stop = (last + 1 + margin).clamp(max=size)
        start, stop = torch.where(empty, 0, start), torch.where(empty, 0, stop)
        span = int((stop - start).max()) if n else 0
        pos = start[:, None] + torch.arange(max(span, 1), device=dev)
        return pos.clamp(max=size - 1), pos < stop[:, None]

    rows = box_masks[:, 0] > 0
    ys, ok_y = extent(rows.any(dim=2), h)
    xs, ok_x = extent(rows.any(dim=1), w)
    inside = (ok_y[:, :, None] & ok_x[:, None, :]).to(box_masks.dtype)[:, None]
    return ys, xs, inside


def gather_windows(maps: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor,
                   index: torch.Tensor | None = None) -> torch.Tensor:
    """Crop windows out of maps (M,C,H,W) -> (N,C,Sh,Sw); window n reads map `index[n]`
    (default n)."""
    n = ys.shape[0]
    idx = torch.arange(n, device=maps.device) if index is None else index
    out = maps[idx[:, None, None], :, ys[:, :, None], xs[:, None, :]]  # (N,Sh,Sw,C)
    return out.permute(0, 3, 1, 2)
