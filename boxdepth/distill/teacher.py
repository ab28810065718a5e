"""Teacher inputs at a fixed scale and teacher predictions on the student's canvas (SPEC §3).

The teacher sees the original photo (as decoded, before the student's resize) at a fixed
short side `teacher_size` (800, long side <= `max_size`), with the student's flip and no
photometric change (the pipeline has none), while the student trains at 640-800. In
training `raw_images` is the batch's `originals` (SelfDistiller passes them); without
them the student's own resized image is up-sampled instead, which loses whatever the
student's downscale removed. Its predictions are mapped back onto the student's padded
canvas so that matching (distill/matcher.py) and the reliable dice loss
(losses/distill.py) work in the student's frame.

    teacher_inputs(images, *, sizes=None, flipped=None, teacher_size=800, max_size=1333,
                   size_divisibility=32)
        images: padded uint8 batch (B, 3, Hp, Wp) with its real regions `sizes` [(h, w)]
                (the student's images, already flipped), or a list of B uint8 (3, H, W)
                images (e.g. the originals) that `flipped` [bool] mirrors first.
        -> {"images" uint8 (B, 3, Ht, Wt), "image_mask" bool (B, Ht, Wt), "sizes" [(ht, wt)]}
    teacher_predictions(teacher_model, student_batch, *, teacher_size=800, max_size=1333,
                        topk=100, mask_stride=4, raw_images=None)
        (the teacher's batch is padded to the model's size_divisibility, input.size_divisibility)
        student_batch: {"images" (B, 3, Hs, Ws) uint8, "image_mask" (B, Hs, Ws),
                        "targets": [{"size": (hs, ws), "flipped": bool,
                                     "orig_size": (H0, W0) optional, ...}]}
        raw_images: None or B uint8 (3, H0, W0), the un-flipped originals of the
                    student's images (checked against targets' orig_size when given)
        -> per image {"boxes" (P, 4) XYXY on the student canvas, "scores" (P,),
                      "labels" (P,), "masks" (P, Hs/4, Ws/4) float probabilities}
    detections_to_student(det, *, teacher_size_hw, student_size_hw, student_canvas_hw,
                          mask_stride=4, topk=100) -> one image's dict as above
    resample_stride_masks(masks (P, Ht/s, Wt/s), src_size_hw, dst_size_hw, dst_canvas_hw,
                          stride=4) -> (P, Hs/s, Ws/s)

Geometry. Real image regions correspond corner to corner: teacher (ht, wt) <-> student
(hs, ws), scale (ws/wt, hs/ht). That holds whether the teacher's image is resized from
the student's or from the original, since the student's image is itself the whole
original resized (and flipped: a flip commutes with the resize), never cropped. A
stride-s map value at index r belongs to canvas pixel s*r + s//2 (aligned_bilinear's
convention and the box masks' [2::4] sampling). For each student stride-s cell inside
the student's image, `resample_stride_masks` takes the teacher canvas position that the
chain "aligned_bilinear upsampling to the teacher canvas, crop to (ht, wt), bilinear
resize (align_corners=False, edge-clamped) to (hs, ws), sample at [s//2::s]" reads, and
evaluates the teacher's piecewise-linear up-sampled map there directly, as one separable
linear interpolation. The result equals the chain's (the up-sampled map's knots sit on
integer pixels, so the chain's second interpolation between two neighbouring pixels is
exact), but no full-resolution mask is ever built (100 masks at 800 x 1333 would take
400 MB). Cells in the student's padding get 0. Boxes are clipped to the teacher's image
and scaled.
"""
from __future__ import annotations

import torch
from torch import nn

from boxdepth.data.transforms import resize_sample, shortest_edge_shape
from boxdepth.models.condinst import canvas_divisibility
from boxdepth.ops.boxes import clip_boxes


def _source_images(images, sizes, flipped) -> list[torch.Tensor]:
    """The un-padded (3, h, w) uint8 images the teacher input is resized from."""
    if torch.is_tensor(images) and images.dim() == 4:
        if sizes is None or len(sizes) != images.shape[0]:
            raise ValueError("boxdepth/distill/teacher.py: a padded batch needs `sizes`, one (h, w) "
                             f"per image; got {None if sizes is None else len(sizes)} for "
                             f"{images.shape[0]} images")
        if flipped is not None:
            raise ValueError("boxdepth/distill/teacher.py: a padded student batch is already flipped; "
                             "pass `flipped` only with a list of raw images")
        return [images[i, :, :int(h), :int(w)] for i, (h, w) in enumerate(sizes)]
    images = list(images)
    flipped = [False] * len(images) if flipped is None else list(flipped)
    if len(flipped) != len(images):
        raise ValueError(f"boxdepth/distill/teacher.py: {len(flipped)} flipped flags for "
                         f"{len(images)} images")
    out = []
    for img, flip in zip(images, flipped):
        if img.dim() != 3 or img.shape[0] != 3:
            raise ValueError(f"boxdepth/distill/teacher.py: raw images must be (3, H, W), got {tuple(img.shape)}")
        out.append(img.flip(-1) if flip else img)
    return out


def teacher_inputs(images, *, sizes=None, flipped=None, teacher_size: int = 800, max_size: int = 1333,
                   size_divisibility: int = 32) -> dict:
    """The teacher's padded batch (see module doc)."""
    resized = []
    for img in _source_images(images, sizes, flipped):
        h, w = img.shape[-2:]
        size = shortest_edge_shape(int(h), int(w), int(teacher_size), int(max_size))
        resized.append(resize_sample({"image": img}, size)["image"])
    if not resized:
        raise ValueError("boxdepth/distill/teacher.py: teacher_inputs got no images")
    div = max(int(size_divisibility), 1)
    hp = -(-max(r.shape[1] for r in resized) // div) * div
    wp = -(-max(r.shape[2] for r in resized) // div) * div
    # padded here rather than by collate_batch: stays on the images' device (the GPU in training)
    device = resized[0].device
    out = torch.zeros((len(resized), 3, hp, wp), dtype=torch.uint8, device=device)
    image_mask = torch.zeros((len(resized), hp, wp), dtype=torch.bool, device=device)
    for i, r in enumerate(resized):
        out[i, :, :r.shape[1], :r.shape[2]] = r
        image_mask[i, :r.shape[1], :r.shape[2]] = True
    return {"images": out, "image_mask": image_mask,
            "sizes": [(int(r.shape[1]), int(r.shape[2])) for r in resized]}


def _axis_weights(n_dst: int, dst_len: int, src_len: int, src_cells: int, stride: int, device):
    """For each destination stride cell: the two source cells, the weight of the second and
    whether the cell lies in the destination image (one axis)."""
    pix = torch.arange(n_dst, device=device, dtype=torch.float64) * stride + stride // 2
    # bilinear resize dst_len -> src_len with align_corners=False (clamped like F.interpolate)
    src_pix = ((pix + 0.5) * (src_len / dst_len) - 0.5).clamp(0, src_len - 1)
    # aligned_bilinear: source pixel s*i + s//2 holds cell i, replicated beyond the end cells
    cell = ((src_pix - stride // 2) / stride).clamp(0, src_cells - 1)
    lo = cell.floor().long().clamp(max=src_cells - 1)
    hi = (lo + 1).clamp(max=src_cells - 1)
    frac = (cell - lo.double()).float()
    return lo, hi, frac, pix < dst_len


def resample_stride_masks(masks: torch.Tensor, src_size_hw, dst_size_hw, dst_canvas_hw,
                          stride: int = 4) -> torch.Tensor:
    """Teacher stride-s maps (P, Ht/s, Wt/s) -> student stride-s canvas (P, Hs/s, Ws/s)."""
    if masks.dim() != 3:
        raise ValueError(f"boxdepth/distill/teacher.py: masks must be (P, h, w), got {tuple(masks.shape)}")
    (ht, wt), (hs, ws) = (tuple(int(v) for v in s) for s in (src_size_hw, dst_size_hw))
    hc, wc = (int(v) // stride for v in dst_canvas_hw)
    if ht > masks.shape[1] * stride or wt > masks.shape[2] * stride or hs > hc * stride or ws > wc * stride:
        raise ValueError(f"boxdepth/distill/teacher.py: image sizes {ht}x{wt} -> {hs}x{ws} do not fit "
                         f"the canvases {masks.shape[1] * stride}x{masks.shape[2] * stride} -> "
                         f"{hc * stride}x{wc * stride}")
    y0, y1, fy, in_y = _axis_weights(hc, hs, ht, masks.shape[1], stride, masks.device)
    x0, x1, fx, in_x = _axis_weights(wc, ws, wt, masks.shape[2], stride, masks.device)
    m = masks.float()
    rows = m[:, y0] * (1 - fy)[None, :, None] + m[:, y1] * fy[None, :, None]  # (P, hc, Wt/s)
    out = rows[:, :, x0] * (1 - fx)[None, None, :] + rows[:, :, x1] * fx[None, None, :]
    return out * (in_y[:, None] & in_x[None, :]).to(out.dtype)


def detections_to_student(det: dict, *, teacher_size_hw, student_size_hw, student_canvas_hw,
                          mask_stride: int = 4, topk: int = 100) -> dict:
    """One image's teacher inference dict (CondInst.forward_inference) -> student frame."""
    (ht, wt), (hs, ws) = (tuple(int(v) for v in s) for s in (teacher_size_hw, student_size_hw))
    scores = det["scores"].float()
    keep = scores.argsort(descending=True, stable=True)[:topk]
    boxes = clip_boxes(det["boxes"][keep].float(), (ht, wt))
    boxes = torch.stack([boxes[:, 0] * (ws / wt), boxes[:, 1] * (hs / ht),
                         boxes[:, 2] * (ws / wt), boxes[:, 3] * (hs / ht)], dim=1)
    probs = det["mask_probs"][keep]
    masks = resample_stride_masks(probs[:, 0] if probs.dim() == 4 else probs, (ht, wt), (hs, ws),
                                  student_canvas_hw, mask_stride)
    return {"boxes": boxes, "scores": scores[keep], "labels": det["labels"][keep], "masks": masks}


def _student_sizes(student_batch: dict) -> list[tuple[int, int]]:
    targets = student_batch.get("targets")
    if targets is not None and all("size" in t for t in targets):
        return [tuple(int(v) for v in t["size"]) for t in targets]
    mask = student_batch.get("image_mask")
    if mask is None:
        raise ValueError("boxdepth/distill/teacher.py: the student batch needs targets[i]['size'] or "
                         "an image_mask to know each image's real region")
    return [(int(m.any(dim=1).sum()), int(m.any(dim=0).sum())) for m in mask]


def _check_raw_images(raw_images, targets: list[dict]) -> None:
    """One original per student image, of the size it was decoded at: the corner-to-corner
    mapping back is only right for the student's own original."""
    if len(raw_images) != len(targets):
        raise ValueError(f"boxdepth/distill/teacher.py: {len(raw_images)} raw images for "
                         f"{len(targets)} student images")
    for i, (img, t) in enumerate(zip(raw_images, targets)):
        orig = tuple(int(v) for v in t.get("orig_size", img.shape[-2:]))
        if tuple(int(v) for v in img.shape[-2:]) != orig:
            raise ValueError(f"boxdepth/distill/teacher.py: raw image {i} is {tuple(img.shape[-2:])} "
                             f"but its student image was resized from {tuple(t['orig_size'])}")


@torch.no_grad()
def teacher_predictions(teacher_model: nn.Module, student_batch: dict, *, teacher_size: int = 800,
                        max_size: int = 1333, topk: int = 100, mask_stride: int = 4,
                        raw_images=None) -> list[dict]:
    """Run the (eval-mode) teacher at its fixed scale; predictions on the student's canvas.

    `raw_images`: optional list of the original (3, H0, W0) uint8 images; they are flipped
    like the student's (targets[i]["flipped"]) and resized from there instead of
    up-sampling the student's smaller image.
    """
    if teacher_model.training:
        raise ValueError("boxdepth/distill/teacher.py: the teacher model is in training mode; pass the "
                         "ModelEMA (always eval) or call .eval() on it")
    images = student_batch["images"]
    sizes = _student_sizes(student_batch)
    div = canvas_divisibility(teacher_model)  # input.size_divisibility, as the student's batches
    if raw_images is None:
        t_in = teacher_inputs(images, sizes=sizes, teacher_size=teacher_size, max_size=max_size,
                              size_divisibility=div)
    else:
        _check_raw_images(raw_images, student_batch["targets"])
        flipped = [bool(t.get("flipped", False)) for t in student_batch["targets"]]
        t_in = teacher_inputs(raw_images, flipped=flipped, teacher_size=teacher_size, max_size=max_size,
                              size_divisibility=div)
    device = images.device
    dets = teacher_model(t_in["images"].to(device), t_in["image_mask"].to(device))
    canvas = tuple(int(v) for v in images.shape[-2:])
    return [detections_to_student(d, teacher_size_hw=t_hw, student_size_hw=s_hw, student_canvas_hw=canvas,
                                  mask_stride=mask_stride, topk=topk)
            for d, t_hw, s_hw in zip(dets, t_in["sizes"], sizes)]
