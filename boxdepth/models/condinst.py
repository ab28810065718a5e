"""CondInst / BoxInst with the optional DG-MaskHead (SPEC §1, Eq. 1).

forward(images uint8 (B, 3, Hp, Wp) RGB, image_mask bool (B, Hp, Wp) or None,
targets=None). Hp, Wp must be multiples of 32 (the padded canvas; collates pad to
`size_divisibility`, input.size_divisibility, a multiple of 32); normalisation
(flip to BGR if input_format == "BGR", then (x - mean) / std, padding set to 0) happens
here.

Training (targets: list of {"boxes": (G, 4) XYXY on the canvas, "labels": (G,)})
returns, with M locations per image and K classes:
  cls_logits (B*M, K), bbox_reg (B*M, 4), ctrness (B*M,), labels (B*M,) (K = bg),
  reg_targets (B*M, 4)  -- image-major, then level-major, then row-major
  mask_feats (B, C_mask, Hp/8, Wp/8)
  proposals: im_inds (N,), gt_inds (N,) index into targets[im_ind], locations (N, 2),
    fpn_levels (N,), scores (N,) (detached ranking score), mask_logits (N, 1, Hp/4, Wp/4),
    depth_logits (N, 1, Hp/4, Wp/4) or None.
Inference returns per image {"boxes" (D, 4) XYXY on the canvas, "scores" (D,) =
sqrt(sigmoid(cls) * sigmoid(ctr)), "labels" (D,), "mask_probs" (D, 1, Hp/4, Wp/4),
"depth_probs" (D, 1, Hp/4, Wp/4) or None}; `postprocess_detections` maps one to the
original image.
"""
from __future__ import annotations

import torch
from torch import nn

from boxdepth.models.fcos import compute_locations, decode_detections, flatten_levels
from boxdepth.models.fast_conv import winograd_convs
from boxdepth.models.layout import check_channels_last_train, trainable_convs_nchw
from boxdepth.models.paste import MaskPaster
from boxdepth.ops.boxes import clip_boxes

# The padded canvas must be a multiple of P5's stride: the mask branch adds P4 and P5,
# up-sampled by exact integer factors 2 and 4, onto P3 (models/mask_branch.py), which a
# canvas of 16k + 16 pixels breaks. `input.size_divisibility` may be any multiple of it.
SIZE_DIVISIBILITY = 32


def check_size_divisibility(value) -> int:
    """`input.size_divisibility` as an int; a ValueError naming the key unless it is a
    positive multiple of SIZE_DIVISIBILITY (16 would leave P5 a fraction of P3's grid)."""
    v = int(value)
    if v < SIZE_DIVISIBILITY or v % SIZE_DIVISIBILITY:
        raise ValueError(f"input.size_divisibility={value}: must be a multiple of {SIZE_DIVISIBILITY}, "
                         f"the largest stride the mask branch fuses (P5); e.g. "
                         f"input.size_divisibility={SIZE_DIVISIBILITY}")
    return v


def canvas_divisibility(model) -> int:
    """What to pad `model`'s input batches to: its `size_divisibility` (a ModelEMA or DDP
    wrapper is looked through; a stand-in without one gets SIZE_DIVISIBILITY)."""
    inner = getattr(model, "module", model)
    return int(getattr(inner, "size_divisibility", SIZE_DIVISIBILITY))


def select_training_proposals(im_inds: torch.Tensor, gt_inds: torch.Tensor, scores: torch.Tensor,
                              topk_per_im: int) -> torch.Tensor:
    """Indices of the kept positives (SPEC §1 "Training proposals").

    Per image, the n_gt boxes that own at least one positive location (as AdelaiDet:
    a box without positives cannot get a proposal) each keep their
    max(topk_per_im // n_gt, 1) highest-`scores` positives. topk_per_im < 0 keeps all.
    """
    if topk_per_im < 0:
        return torch.arange(len(im_inds), device=im_inds.device)
    keep = []
    for im in im_inds.unique():
        in_im = (im_inds == im).nonzero(as_tuple=True)[0]
        gts = gt_inds[in_im].unique()
        per_gt = max(topk_per_im // len(gts), 1)
        for g in gts:
            idx = in_im[gt_inds[in_im] == g]
            if len(idx) > per_gt:
                idx = idx[scores[idx].topk(per_gt).indices]
            keep.append(idx)
    return torch.cat(keep) if keep else im_inds.new_zeros(0)


class CondInst(nn.Module):
    def __init__(self, backbone: nn.Module, fpn: nn.Module, fcos_head: nn.Module, mask_branch: nn.Module,
                 mask_head: nn.Module, target_assigner, *, num_classes: int, pixel_mean, pixel_std,
                 input_format: str = "RGB", strides=(8, 16, 32, 64, 128), topk_proposals_per_im: int = 64,
                 inference_th: float = 0.05, pre_nms_topk: int = 1000, nms_th: float = 0.6,
                 post_nms_topk: int = 100, mask_threshold: float = 0.5,
                 channels_last_backbone: bool = False, channels_last_train: str = "all",
                 size_divisibility: int = SIZE_DIVISIBILITY, winograd: bool = False):
        super().__init__()
        if input_format not in ("RGB", "BGR"):
            raise ValueError(f"CondInst: input_format must be RGB or BGR, got {input_format!r}")
        self.backbone, self.fpn, self.fcos_head = backbone, fpn, fcos_head
        self.mask_branch, self.mask_head = mask_branch, mask_head
        self.target_assigner = target_assigner
        self.num_classes = num_classes
        self.input_format = input_format
        self.strides = [int(s) for s in strides]
        self.topk_proposals_per_im = topk_proposals_per_im
        self.inference_th, self.pre_nms_topk = inference_th, pre_nms_topk
        self.nms_th, self.post_nms_topk = nms_th, post_nms_topk
        self.mask_threshold = mask_threshold
        # what inference, the teacher and `label` pad their batches to (input.size_divisibility)
        self.size_divisibility = check_size_divisibility(size_divisibility)
        # NHWC convolutions in the backbone: its large early maps run ~25 % faster that way
        # on the CPU (oneDNN) and suit tensor cores on CUDA; its outputs go back to NCHW so
        # the rest of the network and every loss see the layout they were written for
        # (while training, "frozen" keeps the convs that train NCHW: models/layout.py)
        self.channels_last_backbone = channels_last_backbone
        if channels_last_backbone:
            self.backbone.to(memory_format=torch.channels_last)
            if check_channels_last_train(channels_last_train) == "frozen":
                trainable_convs_nchw(self.backbone)
        # wide 3x3 convs by Winograd F(2x2, 3x3) on the CPU (models/fast_conv.py); float rounding only
        fused = tuple(getattr(fcos_head, "fused_output_convs", list)())
        self.winograd_convs = winograd_convs(self, skip=fused) if winograd else 0
        if winograd and hasattr(fcos_head, "enable_winograd"):
            self.winograd_convs += int(fcos_head.enable_winograd())
        self.mask_feat_stride = getattr(mask_branch, "out_stride", 8)
        self.mask_out_stride = mask_head.mask_out_stride
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(1, 3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(1, 3, 1, 1), False)

    def normalize(self, images: torch.Tensor, image_mask: torch.Tensor | None) -> torch.Tensor:
        x = images.to(self.pixel_mean.device, torch.float32)
        if self.input_format == "BGR":
            x = x.flip(1)
        x = (x - self.pixel_mean) / self.pixel_std
        if image_mask is not None:
            # zero padding after normalisation, as detectron2 pads the normalised tensor
            x = x * image_mask.to(x.device)[:, None].to(x.dtype)
        return x

    def forward(self, images: torch.Tensor, image_mask: torch.Tensor | None = None, targets=None):
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"CondInst: images must be (B, 3, H, W), got {tuple(images.shape)}")
        hp, wp = images.shape[-2:]
        if hp % SIZE_DIVISIBILITY or wp % SIZE_DIVISIBILITY:
            raise ValueError(f"CondInst: padded image size {hp}x{wp} is not a multiple of {SIZE_DIVISIBILITY}")
        head_out, mask_feats = self.dense(images, image_mask)
        locations = compute_locations([m.shape[-2:] for m in head_out["cls_logits"]], self.strides,
                                      mask_feats.device)
        if targets is not None:
            return self.forward_train(head_out, mask_feats, locations, targets)
        return self.forward_inference(head_out, mask_feats, locations, (hp, wp))

    def dense(self, images: torch.Tensor, image_mask: torch.Tensor | None) -> tuple[dict, torch.Tensor]:
        """The traceable part (what `boxdepth export` exports): FCOSHead's per-level output
        lists and mask_feats (B, C_mask, Hp/8, Wp/8); no data-dependent control flow."""
        x = self.normalize(images, image_mask)
        if self.channels_last_backbone:
            feats = self.backbone(x.contiguous(memory_format=torch.channels_last))
            feats = self.fpn({k: v.contiguous() for k, v in feats.items()})
        else:
            feats = self.fpn(self.backbone(x))
        return self.fcos_head(feats), self.mask_branch(feats[:3])

    def forward_train(self, head_out: dict, mask_feats: torch.Tensor, locations: list[torch.Tensor],
                      targets: list[dict]) -> dict:
        if len(targets) != mask_feats.shape[0]:
            raise ValueError(f"CondInst: {len(targets)} targets for {mask_feats.shape[0]} images")
        assigned = self.target_assigner(locations, targets)
        cls = flatten_levels(head_out["cls_logits"])
        b, m, k = cls.shape
        out = {"cls_logits": cls.reshape(b * m, k),
               "bbox_reg": flatten_levels(head_out["bbox_reg"]).reshape(b * m, 4),
               "ctrness": flatten_levels(head_out["ctrness"]).reshape(b * m),
               "labels": assigned["labels"].reshape(b * m),
               "reg_targets": assigned["reg_targets"].reshape(b * m, 4),
               "mask_feats": mask_feats}
        params = flatten_levels(head_out["controller"]).reshape(b * m, -1)
        pos = (out["labels"] != self.num_classes).nonzero(as_tuple=True)[0]
        levels = torch.cat([torch.full((len(l),), i, dtype=torch.long, device=pos.device)
                            for i, l in enumerate(locations)])
        with torch.no_grad():
            scores = out["cls_logits"][pos].sigmoid().max(dim=1).values * out["ctrness"][pos].sigmoid()
        im_inds, loc_inds = pos // m, pos % m
        gt_inds = assigned["gt_inds"].reshape(b * m)[pos]
        keep = select_training_proposals(im_inds, gt_inds, scores, self.topk_proposals_per_im)
        pos, im_inds, loc_inds = pos[keep], im_inds[keep], loc_inds[keep]
        prop = {"im_inds": im_inds, "gt_inds": gt_inds[keep], "locations": torch.cat(locations)[loc_inds],
                "fpn_levels": levels[loc_inds], "scores": scores[keep]}
        prop.update(self.mask_head(mask_feats, self.mask_feat_stride, prop["im_inds"], prop["locations"],
                                   prop["fpn_levels"], params[pos]))
        out["proposals"] = prop
        return out

    def forward_inference(self, head_out: dict, mask_feats: torch.Tensor, locations: list[torch.Tensor],
                          canvas_hw: tuple[int, int]) -> list[dict]:
        return dense_to_detections(head_out, mask_feats, locations, self.mask_head, strides=self.strides,
                                   mask_feat_stride=self.mask_feat_stride, canvas_hw=canvas_hw,
                                   inference_th=self.inference_th, pre_nms_topk=self.pre_nms_topk,
                                   nms_th=self.nms_th, post_nms_topk=self.post_nms_topk)

    def postprocess(self, det: dict, input_size_hw, orig_size_hw) -> dict:
        return postprocess_detections(det, input_size_hw, orig_size_hw, self.mask_threshold,
                                      mask_stride=self.mask_out_stride)


def dense_to_detections(head_out: dict, mask_feats: torch.Tensor, locations: list[torch.Tensor],
                        mask_head: nn.Module, *, strides: list[int], mask_feat_stride: int,
                        canvas_hw: tuple[int, int], inference_th: float, pre_nms_topk: int,
                        nms_th: float, post_nms_topk: int) -> list[dict]:
    """The inference dicts (module docstring) from the dense network outputs: FCOSHead's
    per-level lists and mask_feats (B, C_mask, Hp/8, Wp/8). Shared by `CondInst` and the
    exported-model runner (boxdepth/export/runner.py), which computes the dense outputs in
    onnxruntime or TorchScript; the dynamic mask head has no weights of its own."""
    results = []
    for i in range(mask_feats.shape[0]):
        det = decode_detections(head_out, locations, strides, i, inference_th=inference_th,
                                pre_nms_topk=pre_nms_topk, nms_th=nms_th,
                                post_nms_topk=post_nms_topk, canvas_hw=canvas_hw)
        # one image at a time bounds the grouped-conv input to post_nms_topk instances
        im_inds = torch.zeros(len(det["boxes"]), dtype=torch.long, device=mask_feats.device)
        heads = mask_head(mask_feats[i:i + 1], mask_feat_stride, im_inds, det["locations"],
                          det["fpn_levels"], det["params"])
        depth = heads["depth_logits"]
        results.append({"boxes": det["boxes"], "scores": det["scores"], "labels": det["labels"],
                        "mask_probs": heads["mask_logits"].sigmoid(),
                        "depth_probs": depth.sigmoid() if depth is not None else None})
    return results


def postprocess_detections(det: dict, input_size_hw, orig_size_hw, mask_threshold: float = 0.5,
                           mask_stride: int = 4, *, paste: bool = True) -> dict:
    """One image's inference dict -> {"boxes" (D', 4) XYXY at the original size, "scores",
    "labels", "masks" bool (D', H0, W0), "depth" float (D', H0, W0) or None}.

    `input_size_hw` is the resized image before padding, `orig_size_hw` the original.
    Boxes are clipped to the image and scaled; detections whose box is empty after
    clipping are dropped (as detectron2's detector_postprocess). With `paste=False` the
    dict holds "paster" (a models.paste.MaskPaster over the kept detections) in place of
    "masks" and "depth", for callers that take one full-size mask at a time.
    """
    h, w = (int(v) for v in input_size_hw)
    h0, w0 = (int(v) for v in orig_size_hw)
    canvas = det["mask_probs"].shape[-2] * mask_stride, det["mask_probs"].shape[-1] * mask_stride
    if h > canvas[0] or w > canvas[1]:
        raise ValueError(f"postprocess_detections: input size {h}x{w} exceeds the canvas {canvas[0]}x{canvas[1]}")
    boxes = clip_boxes(det["boxes"].float(), (h, w))
    boxes = torch.stack([boxes[:, 0] * (w0 / w), boxes[:, 1] * (h0 / h),
                         boxes[:, 2] * (w0 / w), boxes[:, 3] * (h0 / h)], dim=1)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    depth = det.get("depth_probs")
    paster = MaskPaster(det["mask_probs"][keep], None if depth is None else depth[keep],
                        mask_stride=mask_stride, input_hw=(h, w), orig_hw=(h0, w0),
                        threshold=mask_threshold)
    out = {"boxes": boxes[keep], "scores": det["scores"][keep], "labels": det["labels"][keep]}
    if not paste:
        return {**out, "paster": paster}
    return {**out, "masks": paster.masks(), "depth": paster.depths()}
