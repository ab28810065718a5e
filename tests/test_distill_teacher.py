"""Teacher inputs at the fixed teacher scale and the mapping of its predictions back."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from boxdepth.data.transforms import collate_batch, resize_sample, shortest_edge_shape
from boxdepth.distill.teacher import (detections_to_student, resample_stride_masks, teacher_inputs,
                                      teacher_predictions)
from boxdepth.losses.boxinst import boxes_to_stride_masks
from boxdepth.ops.boxes import box_iou
from boxdepth.ops.pairwise import aligned_bilinear


def _chain(masks, src_hw, dst_hw, dst_canvas, s=4):
    """The long way: upsample the teacher canvas, crop, resize to the student image, pad, sample."""
    up = aligned_bilinear(masks[:, None], s)[:, :, :src_hw[0], :src_hw[1]]
    resized = F.interpolate(up, size=dst_hw, mode="bilinear", align_corners=False)
    canvas = torch.zeros(masks.shape[0], 1, *dst_canvas)
    canvas[:, :, :dst_hw[0], :dst_hw[1]] = resized
    return canvas[:, 0, s // 2::s, s // 2::s]


@pytest.mark.parametrize("src,src_canvas,dst,dst_canvas", [
    ((80, 107), (96, 128), (48, 64), (64, 64)),     # teacher larger (the usual case)
    ((40, 30), (64, 32), (64, 48), (64, 64)),       # teacher smaller
    ((48, 64), (64, 64), (48, 64), (64, 96)),       # same size, wider student canvas
    ((40, 60), (64, 64), (52, 36), (64, 64)),       # different scales along y and x
])
def test_resample_matches_the_full_resolution_chain(src, src_canvas, dst, dst_canvas):
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(3, src_canvas[0] // 4, src_canvas[1] // 4, generator=g)
    got = resample_stride_masks(masks, src, dst, dst_canvas)
    assert got.shape == (3, dst_canvas[0] // 4, dst_canvas[1] // 4)
    torch.testing.assert_close(got, _chain(masks, src, dst, dst_canvas), atol=1e-5, rtol=0)
    # cells whose centre lies in the student's padding are zero
    rows = torch.arange(dst_canvas[0] // 4) * 4 + 2 >= dst[0]
    cols = torch.arange(dst_canvas[1] // 4) * 4 + 2 >= dst[1]
    assert torch.all(got[:, rows] == 0) and torch.all(got[:, :, cols] == 0)


def test_resample_identity_when_sizes_match():
    masks = torch.rand(2, 12, 16)
    got = resample_stride_masks(masks, (48, 64), (48, 64), (48, 64))
    assert torch.equal(got, masks)
    with pytest.raises(ValueError, match="do not fit"):
        resample_stride_masks(masks, (60, 64), (48, 64), (48, 64))


def _rect_image(h, w, x0, y0, x1, y1):
    img = torch.zeros(3, h, w, dtype=torch.uint8)
    img[:, y0:y1, x0:x1] = 255
    return img


class RectTeacher(nn.Module):
    """Stand-in for CondInst inference: finds the bright rectangle of each image and
    returns its box (pixel edges) and its stride-4 mask on the teacher's canvas, plus two
    decoys (a lower- and a higher-scored one) to exercise top-k."""

    def __init__(self):
        super().__init__()
        self.seen = []
        self.eval()

    def forward(self, images, image_mask):
        self.seen.append((images.clone(), image_mask.clone()))
        out = []
        for img in images:
            on = img[0] > 127
            ys, xs = on.any(dim=1).nonzero()[:, 0], on.any(dim=0).nonzero()[:, 0]
            box = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)
            mask = on[2::4, 2::4].float()[None, None]
            decoy = torch.tensor([[0.0, 0.0, 8.0, 8.0]])
            out.append({"boxes": torch.cat([decoy, box, decoy]), "scores": torch.tensor([0.2, 0.9, 0.1]),
                        "labels": torch.tensor([1, 0, 1]),
                        "mask_probs": torch.cat([torch.zeros_like(mask), mask, torch.zeros_like(mask)])})
        return out


def _student_batch():
    samples = [{"image": _rect_image(48, 64, 16, 8, 40, 32), "flipped": False},
               {"image": _rect_image(40, 56, 4, 12, 28, 36), "flipped": True}]
    batch = collate_batch([dict(s, size=tuple(s["image"].shape[-2:])) for s in samples])
    return batch, [(16, 8, 40, 32), (4, 12, 28, 36)]


def test_teacher_inputs_resize_each_real_region():
    batch, _ = _student_batch()
    sizes = [t["size"] for t in batch["targets"]]
    t_in = teacher_inputs(batch["images"], sizes=sizes, teacher_size=80, max_size=120)
    want = [shortest_edge_shape(48, 64, 80, 120), shortest_edge_shape(40, 56, 80, 120)]
    assert t_in["sizes"] == want == [(80, 107), (80, 112)]
    assert t_in["images"].shape == (2, 3, 96, 128) and t_in["images"].dtype == torch.uint8
    for i, (h, w) in enumerate(want):
        src = batch["images"][i, :, :sizes[i][0], :sizes[i][1]]
        assert torch.equal(t_in["images"][i, :, :h, :w], resize_sample({"image": src}, (h, w))["image"])
        assert t_in["image_mask"][i, :h, :w].all() and t_in["image_mask"][i].sum() == h * w
    # raw (un-flipped) images with flip flags give the flipped teacher input
    raw = [batch["images"][0, :, :48, :64].flip(-1), batch["images"][1, :, :40, :56]]
    t_raw = teacher_inputs(raw, flipped=[True, False], teacher_size=80, max_size=120)
    assert torch.equal(t_raw["images"], t_in["images"])
    with pytest.raises(ValueError, match="sizes"):
        teacher_inputs(batch["images"], teacher_size=80)
    with pytest.raises(ValueError, match="already flipped"):
        teacher_inputs(batch["images"], sizes=sizes, flipped=[True, True])


def test_teacher_predictions_map_back_to_student_canvas():
    batch, rects = _student_batch()
    teacher = RectTeacher()
    preds = teacher_predictions(teacher, batch, teacher_size=80, max_size=1333, topk=2)
    assert teacher.seen[0][0].shape[-2:] == (96, 128)  # the teacher ran at its own scale
    canvas = batch["images"].shape[-2:]
    for pred, rect, (h, w) in zip(preds, rects, [t["size"] for t in batch["targets"]]):
        assert pred["boxes"].shape == (2, 4) and pred["masks"].shape == (2, canvas[0] // 4, canvas[1] // 4)
        assert pred["scores"].tolist() == pytest.approx([0.9, 0.2]) and pred["labels"].tolist() == [0, 1]
        # the box comes back where the rectangle is, up to the resize's 1-pixel blur
        assert torch.allclose(pred["boxes"][0], torch.tensor(rect, dtype=torch.float32), atol=1.0)
        want = boxes_to_stride_masks(torch.tensor([rect], dtype=torch.float32) - torch.tensor([0, 0, 1, 1]),
                                     canvas)[0, 0]
        got = pred["masks"][0]
        # cells well inside / outside the rectangle are exact; only boundary cells interpolate
        inner = F.max_pool2d(1 - want[None, None], 3, 1, 1)[0, 0] == 0
        outer = F.max_pool2d(want[None, None], 3, 1, 1)[0, 0] == 0
        assert torch.all(got[inner] == 1) and torch.all(got[outer] == 0)
        assert box_iou(pred["boxes"][:1], torch.tensor([rect], dtype=torch.float32)).item() > 0.9
        assert ((got > 0.5) == (want > 0)).float().mean() > 0.9
        rows, cols = torch.arange(got.shape[0]) * 4 + 2 >= h, torch.arange(got.shape[1]) * 4 + 2 >= w
        assert torch.all(got[rows] == 0) and torch.all(got[:, cols] == 0)


def test_teacher_predictions_from_raw_images_and_eval_check():
    batch, _ = _student_batch()
    raw = [batch["images"][0, :, :48, :64], batch["images"][1, :, :40, :56].flip(-1)]  # originals
    a = teacher_predictions(RectTeacher(), batch, teacher_size=80)
    b = teacher_predictions(RectTeacher(), batch, teacher_size=80, raw_images=raw)
    for pa, pb in zip(a, b):
        torch.testing.assert_close(pa["boxes"], pb["boxes"])
        torch.testing.assert_close(pa["masks"], pb["masks"])
    with pytest.raises(ValueError, match="training mode"):
        teacher_predictions(RectTeacher().train(), batch, teacher_size=80)


def test_detections_to_student_scales_and_clips_boxes():
    det = {"boxes": torch.tensor([[-5.0, 10.0, 50.0, 120.0]]), "scores": torch.tensor([0.5]),
           "labels": torch.tensor([2]), "mask_probs": torch.zeros(1, 1, 32, 16)}
    out = detections_to_student(det, teacher_size_hw=(100, 50), student_size_hw=(50, 40),
                                student_canvas_hw=(64, 64))
    torch.testing.assert_close(out["boxes"], torch.tensor([[0.0, 5.0, 40.0, 50.0]]))
    assert out["masks"].shape == (1, 16, 16)


def test_distillation_pipeline_on_a_tiny_condinst():
    """ModelEMA -> teacher_predictions -> matcher -> pseudo targets -> reliable dice -> EMA
    update, wired as the trainer will, on a real (tiny, random) CondInst."""
    from boxdepth.config import load_config
    from boxdepth.distill.ema import ModelEMA
    from boxdepth.distill.matcher import DepthAwareHungarianMatcher
    from boxdepth.losses.depth import depth_similarity
    from boxdepth.losses.distill import pseudo_targets_for_proposals, reliable_dice_loss
    from boxdepth.models.build import build_model

    torch.manual_seed(0)
    cfg = load_config(None, ["model.backbone.name=small", "model.backbone.width=8", "model.fpn.out_channels=32",
                             "model.fcos.num_classes=2", "model.mask_branch.channels=16", "model.depth_head=true",
                             "model.fcos.inference_th=0.0", "model.fcos.post_nms_topk=20"])
    student = build_model(cfg)
    teacher = ModelEMA(student, decay=0.5)
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (2, 3, 64, 96), dtype=torch.uint8, generator=g)
    image_mask = torch.zeros(2, 64, 96, dtype=torch.bool)
    image_mask[0], image_mask[1, :48, :80] = True, True
    targets = [{"boxes": torch.tensor([[4.0, 6, 50, 40], [30, 10, 90, 60]]), "labels": torch.tensor([0, 1]),
                "size": (64, 96)},
               {"boxes": torch.tensor([[10.0, 8, 40, 44]]), "labels": torch.tensor([1]), "size": (48, 80)}]
    batch = {"images": images, "image_mask": image_mask, "targets": targets}
    student.train()
    teacher.train()  # as the trainer's model.train() would: the teacher must stay in eval
    preds = teacher_predictions(teacher, batch, teacher_size=80, max_size=1333, topk=10)
    assert all(len(p["boxes"]) == 10 and p["masks"].shape == (10, 16, 24) for p in preds)

    d01 = F.avg_pool2d(torch.rand(2, 1, 64, 96, generator=g), 4)
    sim = depth_similarity(255.0 * d01, image_mask[:, 2::4, 2::4], 3, 2, 0.5)
    matcher = DepthAwareHungarianMatcher(alpha=0.8, beta=0.2, tau_d=0.5)
    matches = [matcher(t["boxes"], p["boxes"], p["scores"], p["masks"], sim[i])
               for i, (t, p) in enumerate(zip(targets, preds))]
    assert [len(m["gt_inds"]) for m in matches] == [2, 1]

    out = student(images, image_mask, targets)
    props = out["proposals"]
    t_masks, s_match, has = pseudo_targets_for_proposals(props["im_inds"], props["gt_inds"], matches,
                                                         [p["masks"] for p in preds])
    assert has.all()
    boxes = torch.cat([t["boxes"] for t in targets])
    offsets = torch.tensor([0, 2])
    box_masks = boxes_to_stride_masks(boxes, (64, 96))[offsets[props["im_inds"]] + props["gt_inds"]]
    loss, stats = reliable_dice_loss(props["mask_logits"].sigmoid(), t_masks, box_masks, s_match,
                                     tau_m=-1.0, weight=4.0, has_match=has)
    assert stats["distill_reliable"] == len(s_match) > 0 and loss.item() > 0
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.mask_branch.parameters())
    assert all(p.grad is None for p in teacher.parameters())

    before = teacher.module.mask_branch.state_dict()
    before = {k: v.clone() for k, v in before.items()}
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.01)
    teacher.update(student)
    after = teacher.module.mask_branch.state_dict()
    changed = [k for k in before if before[k].is_floating_point() and not torch.equal(before[k], after[k])]
    assert changed


def test_no_detections_give_empty_outputs():
    det = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long),
           "mask_probs": torch.zeros(0, 1, 32, 16)}
    out = detections_to_student(det, teacher_size_hw=(100, 50), student_size_hw=(50, 40),
                                student_canvas_hw=(64, 64))
    assert out["boxes"].shape == (0, 4) and out["masks"].shape == (0, 16, 16) and out["scores"].shape == (0,)


class CaptureTeacher(nn.Module):
    """Records the teacher's input batch; predicts one whole-image instance per image."""

    def __init__(self):
        super().__init__()
        self.seen = []
        self.eval()

    def forward(self, images, image_mask):
        self.seen.append(images.clone())
        out = []
        for m in image_mask:
            h, w = int(m.any(dim=1).sum()), int(m.any(dim=0).sum())
            out.append({"boxes": torch.tensor([[0.0, 0.0, w, h]]), "scores": torch.tensor([0.9]),
                        "labels": torch.tensor([0]), "mask_probs": m[2::4, 2::4].float()[None, None]})
        return out


def _fine_original(h=64, w=96):
    """1-pixel vertical lines every 3 pixels and a 1-pixel horizontal line: detail that a
    2x downscale blurs away, and left-right asymmetric so a missing flip shows."""
    img = torch.zeros(3, h, w, dtype=torch.uint8)
    img[:, :, ::3] = 255
    img[:, 21, :] = 255
    img[0, :, : w // 3] = 128
    return img


def test_distiller_feeds_the_teacher_the_original_image():
    """SelfDistiller.forward -> teacher_predictions(raw_images=batch["originals"]): the
    teacher's input is the original (flipped like the student) resized to teacher_size,
    not the student's 2x-smaller image up-sampled."""
    from boxdepth.distill.distiller import SelfDistiller
    from boxdepth.data.transforms import hflip_sample

    original = _fine_original()
    samples = []
    for flip in (False, True):
        s = resize_sample({"image": original, "boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]]),
                           "labels": torch.tensor([0]), "flipped": False}, (32, 48))
        s = hflip_sample(s) if flip else s
        samples.append(dict(s, size=(32, 48), orig_size=(64, 96), original=original))
    batch = collate_batch(samples)
    assert batch["targets"][1]["flipped"] is True and len(batch["originals"]) == 2
    hc, wc = (v // 4 for v in batch["images"].shape[-2:])
    outputs = {"proposals": {"im_inds": torch.tensor([0, 1]), "gt_inds": torch.tensor([0, 0]),
                             "mask_logits": torch.zeros(2, 1, hc, wc, requires_grad=True)}}
    teacher = CaptureTeacher()
    losses, _ = SelfDistiller(teacher_size=64, teacher_max_size=1333, match="iou")(teacher, outputs, batch)
    assert torch.isfinite(losses["loss_distill"])

    seen = teacher.seen[0]
    assert seen.shape == (2, 3, 64, 96)  # teacher_size 64 is the original's own size
    assert torch.equal(seen[0], original) and torch.equal(seen[1], original.flip(-1))
    upsampled = teacher_inputs(batch["images"], sizes=[(32, 48)] * 2, teacher_size=64)["images"]
    assert (upsampled.float() - seen.float()).abs().amax() > 60  # the lines are gone there


def test_teacher_predictions_check_raw_images_against_the_student():
    batch, _ = _student_batch()
    raw = [batch["images"][0, :, :48, :64], batch["images"][1, :, :40, :56].flip(-1)]
    with pytest.raises(ValueError, match="raw images for"):
        teacher_predictions(RectTeacher(), batch, teacher_size=80, raw_images=raw[:1])
    batch["targets"][0]["orig_size"] = (96, 128)
    with pytest.raises(ValueError, match="resized from"):
        teacher_predictions(RectTeacher(), batch, teacher_size=80, raw_images=raw)
