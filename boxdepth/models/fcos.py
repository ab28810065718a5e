"""FCOS head, location grid, target assignment and inference decoding (SPEC §1).

Shapes: B images, K classes, P controller (dynamic mask head) parameters, L levels
(P3-P7, strides 8..128), M = sum over levels of H_l * W_l locations. Every per-location
tensor is ordered level-major, then row-major within a level (the order of
`compute_locations` and of `flatten_levels`).

- `FCOSHead(features)` -> dict of per-level lists: "cls_logits" (B, K, H, W),
  "bbox_reg" (B, 4, H, W) = relu(scale_l(x)) in units of the level's stride, order
  (l, t, r, b), starting near `box_init_distance` (see FCOSHead); "ctrness" (B, 1, H, W) and "controller" (B, P, H, W) (or None when
  P = 0) both read the box tower.
- `compute_locations` -> per level (H*W, 2) pixel (x, y) centres of the grid cells.
- `FCOSTargetAssigner(locations, targets)` -> "labels" (B, M) with K = background,
  "reg_targets" (B, M, 4) ltrb / stride (0 for background), "gt_inds" (B, M) index
  into that image's targets, -1 for background.
- `decode_detections(...)` -> per image dict "boxes" (D, 4) XYXY, "scores" (D,) =
  sqrt(sigmoid(cls) * sigmoid(ctr)), "labels", "locations" (D, 2), "fpn_levels" (D,),
  "params" (D, P).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from boxdepth.models import fast_conv
from boxdepth.models.fast_conv import conv3x3
from boxdepth.models.norm import get_norm
from boxdepth.ops.boxes import batched_nms

INF = float("inf")


class Scale(nn.Module):
    """One learnable scalar multiplier (one per FPN level for the box regression)."""

    def __init__(self, init_value: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def _tower(in_channels: int, num_convs: int, norm: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(num_convs):
        layers += [nn.Conv2d(in_channels, in_channels, 3, padding=1, bias=True),
                   get_norm(norm, in_channels), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class FCOSHead(nn.Module):
    """Shared cls/box towers over all levels; centerness and controller on the box tower.

    `box_init_distance` is the initial bias of the box regression, so every location
    starts predicting a box that reaches that many strides to each side. AdelaiDet starts
    from bias 0, i.e. boxes of size ~0: there 1 - GIoU is flat (its gradient scales with
    the predicted size) and exactly flat once relu clamps both sides of a pair (l and r,
    or t and b), and nothing brings such a location back. Measured on real photos with
    the demo's small head: 66 % of the positives started clamped and box regression
    never learned on one data set. 0 restores AdelaiDet's init.
    """

    def __init__(self, in_channels: int, num_classes: int, *, num_convs: int = 4, norm: str = "GN",
                 prior_prob: float = 0.01, num_levels: int = 5, num_controller_params: int = 0,
                 box_init_distance: float = 1.0):
        super().__init__()
        self.num_classes = num_classes
        self.cls_tower = _tower(in_channels, num_convs, norm)
        self.bbox_tower = _tower(in_channels, num_convs, norm)
        self.cls_logits = nn.Conv2d(in_channels, num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.ctrness = nn.Conv2d(in_channels, 1, 3, padding=1)
        self.scales = nn.ModuleList(Scale(1.0) for _ in range(num_levels))
        self.controller = (nn.Conv2d(in_channels, num_controller_params, 3, padding=1)
                           if num_controller_params > 0 else None)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.constant_(m.bias, 0)
        # focal-loss prior: every location starts as background with probability 1 - p
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))
        nn.init.constant_(self.bbox_pred.bias, float(box_init_distance))

    def forward(self, features: list[torch.Tensor]) -> dict[str, list[torch.Tensor] | None]:
        if len(features) != len(self.scales):
            raise ValueError(f"FCOSHead: got {len(features)} feature levels, built for {len(self.scales)}")
        out: dict[str, list] = {"cls_logits": [], "bbox_reg": [], "ctrness": [], "controller": []}
        weight, bias, splits = self._box_outputs()
        for level, x in enumerate(features):
            cls_t = self.cls_tower(x)
            box_t = self.bbox_tower(x)
            out["cls_logits"].append(self.cls_logits(cls_t))
            reg, ctr, *controller = torch.split(conv3x3(box_t, weight, bias, self.box_outputs_winograd),
                                                splits, dim=1)
            out["bbox_reg"].append(torch.relu(self.scales[level](reg)))
            out["ctrness"].append(ctr)
            out["controller"] += controller
        if self.controller is None:
            out["controller"] = None
        return out

    # min_pixels for the fused box-output conv's Winograd path (models/fast_conv.py); None: F.conv2d
    box_outputs_winograd: int | None = None

    def enable_winograd(self, *, min_channels: int | None = None, min_pixels: int | None = None) -> bool:
        """The fused box-output conv's share of `model.winograd` (its weight is assembled
        in each forward, so fast_conv.winograd_convs cannot swap it); True if it is wide enough."""
        _, _, splits = self._box_outputs()
        wide = fast_conv.wide_enough(self.bbox_pred.in_channels, sum(splits), min_channels)
        min_pixels = fast_conv.MIN_PIXELS if min_pixels is None else min_pixels
        self.box_outputs_winograd = int(min_pixels) if wide else None
        return wide

    def fused_output_convs(self) -> list[nn.Conv2d]:
        """The box tower's output convs, run as one (`_box_outputs`): their own forwards never run."""
        return [self.bbox_pred, self.ctrness] + ([self.controller] if self.controller is not None else [])

    def _box_outputs(self) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """bbox_pred, ctrness and controller as one convolution over the box tower (their
        weights concatenated, the output split back): the same per-channel sums, but the
        4- and 1-channel 3x3 convolutions each cost about as much as a 30-channel one on
        the CPU (memory-bound); one 238-channel conv instead of 233 + 4 + 1 measured
        412 vs 508 ms forward + backward at 64x88 (benchmarks/README.md, issue 25)."""
        convs = self.fused_output_convs()
        return (torch.cat([c.weight for c in convs]), torch.cat([c.bias for c in convs]),
                [c.out_channels for c in convs])


def compute_locations(feature_sizes: list[tuple[int, int]], strides: list[int],
                      device: torch.device | str = "cpu") -> list[torch.Tensor]:
    """Per level (H*W, 2) float (x, y) = (j*s + s//2, i*s + s//2), row-major."""
    out = []
    for (h, w), s in zip(feature_sizes, strides):
        ys = torch.arange(h, dtype=torch.float32, device=device) * s + s // 2
        xs = torch.arange(w, dtype=torch.float32, device=device) * s + s // 2
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        out.append(torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1))
    return out


def flatten_levels(maps: list[torch.Tensor]) -> torch.Tensor:
    """[(B, C, H_l, W_l)] -> (B, M, C), level-major then row-major."""
    return torch.cat([m.permute(0, 2, 3, 1).reshape(m.shape[0], -1, m.shape[1]) for m in maps], dim=1)


class FCOSTargetAssigner:
    """FCOS positives: centre-sampled, scale-ranged, ties to the smallest-area box.

    A location on level l is a candidate for box g when it lies inside the box's centre
    region (box centre +- radius * stride_l, clipped to the box) and the largest of its
    four distances to the box sides lies in [lo_l, hi_l] (edges [0, 64, 128, 256, 512,
    inf] by default; both ends inclusive as in FCOS). Among candidate boxes the one with
    the smallest area wins.
    """

    def __init__(self, strides: list[int], *, num_classes: int,
                 sizes_of_interest: list[float] = (64, 128, 256, 512),
                 center_sample_radius: float = 1.5):
        if len(sizes_of_interest) != len(strides) - 1:
            raise ValueError(f"FCOSTargetAssigner: {len(strides)} strides need {len(strides) - 1} "
                             f"sizes_of_interest, got {list(sizes_of_interest)}")
        self.strides = [int(s) for s in strides]
        self.num_classes = num_classes
        edges = [0.0] + [float(s) for s in sizes_of_interest] + [INF]
        self.size_ranges = list(zip(edges[:-1], edges[1:]))
        self.radius = float(center_sample_radius)

    def __call__(self, locations: list[torch.Tensor], targets: list[dict]) -> dict[str, torch.Tensor]:
        if len(locations) != len(self.strides):
            raise ValueError(f"FCOSTargetAssigner: {len(locations)} levels of locations, "
                             f"{len(self.strides)} strides")
        locs = torch.cat(locations, dim=0)
        per_level = [torch.tensor([v], device=locs.device).expand(len(l))
                     for l, v in zip(locations, self.strides)]
        stride = torch.cat(per_level).float()
        lo = torch.cat([torch.full((len(l),), r[0], device=locs.device) for l, r in
                        zip(locations, self.size_ranges)])
        hi = torch.cat([torch.full((len(l),), r[1], device=locs.device) for l, r in
                        zip(locations, self.size_ranges)])
        outs = [self.assign_image(locs, stride, lo, hi, t["boxes"], t["labels"]) for t in targets]
        return {k: torch.stack([o[k] for o in outs]) for k in outs[0]}

    def assign_image(self, locs, stride, lo, hi, boxes, labels) -> dict[str, torch.Tensor]:
        """One image: locs (M, 2), stride/lo/hi (M,), boxes (G, 4) XYXY, labels (G,)."""
        m = len(locs)
        boxes = boxes.to(locs.device, torch.float32).reshape(-1, 4)
        if len(boxes) == 0:
            return {"labels": torch.full((m,), self.num_classes, dtype=torch.long, device=locs.device),
                    "reg_targets": locs.new_zeros(m, 4),
                    "gt_inds": torch.full((m,), -1, dtype=torch.long, device=locs.device)}
        xs, ys = locs[:, 0:1], locs[:, 1:2]
        reg = torch.stack([xs - boxes[:, 0], ys - boxes[:, 1], boxes[:, 2] - xs, boxes[:, 3] - ys], dim=2)
        rad = (stride * self.radius)[:, None]
        cx = (boxes[:, 0] + boxes[:, 2]) / 2
        cy = (boxes[:, 1] + boxes[:, 3]) / 2
        # centre region clipped to the box, so "in the centre region" implies "in the box"
        x0 = torch.maximum(cx - rad, boxes[:, 0])
        y0 = torch.maximum(cy - rad, boxes[:, 1])
        x1 = torch.minimum(cx + rad, boxes[:, 2])
        y1 = torch.minimum(cy + rad, boxes[:, 3])
        in_centre = (xs > x0) & (xs < x1) & (ys > y0) & (ys < y1)
        max_reg = reg.max(dim=2).values
        in_level = (max_reg >= lo[:, None]) & (max_reg <= hi[:, None])
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        cost = torch.where(in_centre & in_level, area[None, :].expand(m, -1), torch.full_like(max_reg, INF))
        min_area, inds = cost.min(dim=1)
        pos = torch.isfinite(min_area)
        reg = reg[torch.arange(m, device=locs.device), inds] / stride[:, None]
        return {"labels": torch.where(pos, labels.to(locs.device).long()[inds], self.num_classes),
                "reg_targets": torch.where(pos[:, None], reg, torch.zeros_like(reg)),
                "gt_inds": torch.where(pos, inds, torch.full_like(inds, -1))}


def _level_candidates(cls, reg, ctr, params, locs, stride, inference_th, pre_nms_topk):
    """One image, one level: cls (K, H, W), reg (4, H, W), ctr (1, H, W), params (P, H, W)."""
    k = cls.shape[0]
    scores = cls.reshape(k, -1).t().sigmoid() * ctr.reshape(-1, 1).sigmoid()
    cand = scores > inference_th
    s = scores[cand]
    loc_idx, cls_idx = cand.nonzero(as_tuple=True)
    if len(s) > pre_nms_topk:
        s, top = s.topk(pre_nms_topk, sorted=False)
        loc_idx, cls_idx = loc_idx[top], cls_idx[top]
    ltrb = reg.reshape(4, -1).t()[loc_idx] * stride
    xy = locs[loc_idx]
    boxes = torch.cat([xy - ltrb[:, :2], xy + ltrb[:, 2:]], dim=1)
    p = params.reshape(params.shape[0], -1).t()[loc_idx] if params is not None else None
    return boxes, s, cls_idx, xy, p


def decode_detections(head_out: dict, locations: list[torch.Tensor], strides: list[int], image_index: int,
                      *, inference_th: float = 0.05, pre_nms_topk: int = 1000, nms_th: float = 0.6,
                      post_nms_topk: int = 100, canvas_hw: tuple[int, int] | None = None) -> dict:
    """Detections of image `image_index` from `FCOSHead` outputs (SPEC §1 inference).

    Candidates: sigmoid(cls) * sigmoid(ctr) > inference_th, at most pre_nms_topk per
    level; class-aware NMS at nms_th; the post_nms_topk best kept (sorted by score).
    Boxes are clipped to `canvas_hw` (the padded input) when given.
    """
    parts = []
    for lvl, (locs, stride) in enumerate(zip(locations, strides)):
        params = head_out["controller"][lvl][image_index] if head_out["controller"] is not None else None
        b, s, c, xy, p = _level_candidates(
            head_out["cls_logits"][lvl][image_index], head_out["bbox_reg"][lvl][image_index],
            head_out["ctrness"][lvl][image_index], params, locs, stride, inference_th, pre_nms_topk)
        parts.append((b, s, c, xy, torch.full_like(c, lvl), p))
    boxes, scores, labels, xy, levels, params = (
        torch.cat([p[i] for p in parts]) if parts[0][i] is not None else None for i in range(6))
    if canvas_hw is not None:
        boxes = torch.stack([boxes[:, 0].clamp(0, canvas_hw[1]), boxes[:, 1].clamp(0, canvas_hw[0]),
                             boxes[:, 2].clamp(0, canvas_hw[1]), boxes[:, 3].clamp(0, canvas_hw[0])], 1)
    keep = batched_nms(boxes.float(), scores.float(), labels, nms_th)[:post_nms_topk]
    return {"boxes": boxes[keep], "scores": scores[keep].sqrt(), "labels": labels[keep],
            "locations": xy[keep], "fpn_levels": levels[keep],
            "params": params[keep] if params is not None else None}
