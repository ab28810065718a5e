"""FPN, FCOS head/locations/target assignment/decoding and the FCOS losses."""
import math

import numpy as np
import pytest
import torch

from boxdepth.losses.fcos import centerness_target, fcos_losses, giou_loss_ltrb, sigmoid_focal_loss
from boxdepth.models.fcos import (FCOSHead, FCOSTargetAssigner, compute_locations, decode_detections,
                                  flatten_levels)
from boxdepth.models.fpn import FPN

STRIDES = [8, 16, 32, 64, 128]


def _giou_pairs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Generalized IoU of aligned XYXY pairs (N,): the textbook reference for the loss."""
    inter = ((torch.minimum(a[:, 2:], b[:, 2:]) - torch.maximum(a[:, :2], b[:, :2])).clamp(min=0)).prod(1)
    union = (a[:, 2:] - a[:, :2]).prod(1) + (b[:, 2:] - b[:, :2]).prod(1) - inter
    hull = (torch.maximum(a[:, 2:], b[:, 2:]) - torch.minimum(a[:, :2], b[:, :2])).prod(1)
    return inter / union.clamp(min=1e-38) - (hull - union) / hull.clamp(min=1e-38)


def test_fpn_levels_strides_and_top_block():
    torch.manual_seed(0)
    fpn = FPN({"res3": 8, "res4": 16, "res5": 24}, out_channels=32)
    feats = {"res3": torch.randn(2, 8, 16, 24), "res4": torch.randn(2, 16, 8, 12), "res5": torch.randn(2, 24, 4, 6)}
    outs = fpn(feats)
    assert [tuple(o.shape[-2:]) for o in outs] == [(16, 24), (8, 12), (4, 6), (2, 3), (1, 2)]
    assert all(o.shape[:2] == (2, 32) for o in outs)
    # P6 from the P5 output (FCOS), P7 from relu(P6)
    torch.testing.assert_close(outs[3], fpn.p6(outs[2]))
    torch.testing.assert_close(outs[4], fpn.p7(torch.relu(outs[3])))
    # P5 sees only res5: changing res3 leaves it unchanged, but changes P3
    feats2 = dict(feats, res3=feats["res3"] + 1)
    outs2 = fpn(feats2)
    torch.testing.assert_close(outs2[2], outs[2])
    assert not torch.allclose(outs2[0], outs[0])


def test_fcos_head_shapes_init_and_towers():
    torch.manual_seed(0)
    head = FCOSHead(32, num_classes=3, num_controller_params=233)
    feats = [torch.randn(2, 32, s, s) for s in (8, 4, 2, 1, 1)]
    out = head(feats)
    assert [tuple(t.shape) for t in out["cls_logits"]][:2] == [(2, 3, 8, 8), (2, 3, 4, 4)]
    assert tuple(out["controller"][0].shape) == (2, 233, 8, 8)
    assert all((r >= 0).all() for r in out["bbox_reg"])
    torch.testing.assert_close(head.cls_logits.bias, torch.full((3,), -math.log(99.0)))
    assert torch.all(head.controller.bias == 0) and torch.all(head.ctrness.bias == 0)
    assert abs(head.controller.weight.std().item() - 0.01) < 0.002
    # centerness and controller read the box tower: perturbing the cls tower leaves them alone
    with torch.no_grad():
        head.cls_tower[0].weight.add_(1.0)
    out2 = head(feats)
    torch.testing.assert_close(out2["ctrness"][0], out["ctrness"][0])
    torch.testing.assert_close(out2["controller"][0], out["controller"][0])
    assert not torch.allclose(out2["cls_logits"][0], out["cls_logits"][0])
    # one learnable scale per level, applied before the relu
    with torch.no_grad():
        head.scales[1].scale.fill_(3.0)
    out3 = head(feats)
    torch.testing.assert_close(out3["bbox_reg"][1], 3 * out["bbox_reg"][1])
    torch.testing.assert_close(out3["bbox_reg"][0], out["bbox_reg"][0])


def test_compute_locations_hand_values():
    locs = compute_locations([(2, 3), (1, 2)], [8, 16])
    assert locs[0].tolist() == [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12]]
    assert locs[1].tolist() == [[8, 8], [24, 8]]
    # the same order as flatten_levels: location k of level 0 is pixel (k // W, k % W)
    maps = [torch.arange(6.0).reshape(1, 1, 2, 3), torch.arange(2.0).reshape(1, 1, 1, 2)]
    assert flatten_levels(maps)[0, :, 0].tolist() == [0, 1, 2, 3, 4, 5, 0, 1]


def _assign(boxes, labels, hw=(128, 128), radius=1.5, num_classes=5):
    sizes = [(math.ceil(hw[0] / s), math.ceil(hw[1] / s)) for s in STRIDES]
    locs = compute_locations(sizes, STRIDES)
    assigner = FCOSTargetAssigner(STRIDES, num_classes=num_classes, center_sample_radius=radius)
    out = assigner(locs, [{"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                           "labels": torch.tensor(labels, dtype=torch.long)}])
    level = torch.cat([torch.full((len(l),), i) for i, l in enumerate(locs)])
    return torch.cat(locs), level, {k: v[0] for k, v in out.items()}


def test_assignment_single_small_box_hand_computed():
    locs, level, out = _assign([[0, 0, 40, 40]], [3])
    pos = out["labels"] != 5
    # centre (20, 20), region +-12 on P3: x, y in {12, 20, 28}; max distance <= 40 -> only P3
    got = sorted(map(tuple, locs[pos].int().tolist()))
    assert got == sorted((x, y) for x in (12, 20, 28) for y in (12, 20, 28))
    assert (level[pos] == 0).all() and (out["labels"][pos] == 3).all() and (out["gt_inds"][pos] == 0).all()
    x, y = locs[pos, 0], locs[pos, 1]
    torch.testing.assert_close(out["reg_targets"][pos], torch.stack([x, y, 40 - x, 40 - y], 1) / 8)
    assert (out["gt_inds"][~pos] == -1).all() and (out["reg_targets"][~pos] == 0).all()


def test_assignment_level_by_size_range():
    # box 0..200: P4 centre region (100 +- 24) holds x, y in {88, 104, 120}; their max
    # distance to a side (112, 104, 120) lies in [64, 128]
    locs, level, out = _assign([[0, 0, 200, 200]], [0], hw=(256, 256))
    pos = out["labels"] == 0
    p4 = pos & (level == 1)
    assert sorted(map(tuple, locs[p4].int().tolist())) == [(x, y) for x in (88, 104, 120) for y in (88, 104, 120)]
    assert not (pos & (level == 0)).any()  # every P3 centre location is > 64 from a side
    # a location whose max distance lies outside every level's range is never positive
    max_reg = (out["reg_targets"][pos] * torch.tensor(STRIDES, dtype=torch.float32)[level[pos]][:, None]).max(1).values
    lo = torch.tensor([0, 64, 128, 256, 512.0])[level[pos]]
    hi = torch.tensor([64, 128, 256, 512, 1e9])[level[pos]]
    assert ((max_reg >= lo) & (max_reg <= hi)).all()


@pytest.mark.parametrize("order", [0, 1])
def test_assignment_overlap_takes_min_area(order):
    big, small = [0, 0, 60, 60], [8, 8, 56, 56]
    boxes = [big, small] if order == 0 else [small, big]
    locs, level, out = _assign(boxes, [1, 2] if order == 0 else [2, 1])
    k = ((locs[:, 0] == 28) & (locs[:, 1] == 28) & (level == 0)).nonzero()[0, 0]
    assert out["gt_inds"][k].item() == (1 if order == 0 else 0)
    assert out["labels"][k].item() == 2
    torch.testing.assert_close(out["reg_targets"][k], torch.tensor([20.0, 20, 28, 28]) / 8)


def test_assignment_centre_sampling_radius():
    for radius, n in ((1.5, 9), (2.5, 25)):  # region (30 +- 8r): P3 centres 20..36 / 12..44
        _, level, out = _assign([[0, 0, 60, 60]], [0], radius=radius)
        assert int((out["labels"] == 0).sum()) == n
    _, _, out = _assign(np.zeros((0, 4)), [])
    assert (out["labels"] == 5).all() and (out["gt_inds"] == -1).all()


def _brute_force_assign(locs, level, boxes, radius):
    ranges = [(0, 64), (64, 128), (128, 256), (256, 512), (512, float("inf"))]
    gt = []
    for (x, y), lv in zip(locs.tolist(), level.tolist()):
        best, best_area = -1, float("inf")
        for g, (x0, y0, x1, y1) in enumerate(boxes):
            cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, STRIDES[lv] * radius
            inside = max(cx - r, x0) < x < min(cx + r, x1) and max(cy - r, y0) < y < min(cy + r, y1)
            m = max(x - x0, y - y0, x1 - x, y1 - y)
            area = (x1 - x0) * (y1 - y0)
            if inside and ranges[lv][0] <= m <= ranges[lv][1] and area < best_area:
                best, best_area = g, area
        gt.append(best)
    return gt


def test_assignment_matches_brute_force_on_random_boxes():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 180, size=(12, 2))
    wh = rng.uniform(4, 150, size=(12, 2))
    boxes = np.concatenate([xy, np.minimum(xy + wh, 255)], 1).round(1)
    locs, level, out = _assign(boxes, list(range(12)), hw=(256, 256), num_classes=12)
    assert out["gt_inds"].tolist() == _brute_force_assign(locs, level, boxes.tolist(), 1.5)
    assert (out["gt_inds"] >= 0).sum() > 20


def test_decode_detections_threshold_nms_topk():
    k, big = 2, 10.0
    cls = [torch.full((1, k, 2, 3), -big), torch.full((1, k, 1, 2), -big)]
    reg = [torch.ones(1, 4, 2, 3), torch.ones(1, 4, 1, 2)]
    ctr = [torch.full((1, 1, 2, 3), big), torch.full((1, 1, 1, 2), big)]
    ctrl = [torch.arange(6.0).reshape(1, 1, 2, 3).repeat(1, 5, 1, 1), torch.zeros(1, 5, 1, 2)]
    cls[0][0, 1, 0, 0] = 3.0     # box (-4,-4,12,12), class 1
    cls[0][0, 1, 0, 1] = 2.0     # box (4,-4,20,12), class 1: IoU 1/3 with the first
    cls[0][0, 0, 0, 1] = 1.0     # same box, class 0: other class, kept
    cls[1][0, 1, 0, 1] = 0.5     # level 1 location (24, 8), box (8, -8, 40, 24)
    head = {"cls_logits": cls, "bbox_reg": reg, "ctrness": ctr, "controller": ctrl}
    locs = compute_locations([(2, 3), (1, 2)], [8, 16])
    det = decode_detections(head, locs, [8, 16], 0, inference_th=0.05, nms_th=0.3, post_nms_topk=100)
    sig = torch.sigmoid
    c = sig(torch.tensor(big))
    assert det["labels"].tolist() == [1, 0, 1]
    torch.testing.assert_close(det["scores"], (sig(torch.tensor([3.0, 1.0, 0.5])) * c).sqrt())
    torch.testing.assert_close(det["boxes"], torch.tensor([[-4.0, -4, 12, 12], [4, -4, 20, 12], [8, -8, 40, 24]]))
    assert det["fpn_levels"].tolist() == [0, 0, 1]
    assert det["params"][:, 0].tolist() == [0.0, 1.0, 0.0]
    assert det["locations"].tolist() == [[4, 4], [12, 4], [24, 8]]
    # at a looser NMS threshold the class-1 neighbour survives; post_nms_topk cuts the tail
    det = decode_detections(head, locs, [8, 16], 0, nms_th=0.5, post_nms_topk=2)
    assert det["labels"].tolist() == [1, 1]
    # pre_nms_topk is per level: 1 candidate from each level
    det = decode_detections(head, locs, [8, 16], 0, nms_th=0.5, pre_nms_topk=1)
    assert det["fpn_levels"].tolist() == [0, 1]
    # clipping to the canvas
    det = decode_detections(head, locs, [8, 16], 0, canvas_hw=(16, 32))
    assert det["boxes"][:, :2].min() >= 0 and det["boxes"][:, 2].max() <= 32 and det["boxes"][:, 3].max() <= 16


def test_sigmoid_focal_loss_formula():
    x = torch.tensor([[-2.0, 0.5], [1.5, -0.3]])
    t = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    expected = 0.0
    for xi, ti in zip(x.flatten().tolist(), t.flatten().tolist()):
        p = 1 / (1 + math.exp(-xi))
        if ti == 1:
            expected += -0.25 * (1 - p) ** 2 * math.log(p)
        else:
            expected += -0.75 * p ** 2 * math.log(1 - p)
    assert sigmoid_focal_loss(x, t, 0.25, 2.0).item() == pytest.approx(expected, rel=1e-5)


def test_centerness_and_giou_loss():
    reg = torch.tensor([[1.0, 2, 3, 4], [2, 2, 2, 2]])
    torch.testing.assert_close(centerness_target(reg), torch.tensor([math.sqrt(1 / 3 * 2 / 4), 1.0]))
    pred = torch.tensor([[1.0, 1, 1, 1], [0.5, 3, 2, 0.1], [0, 0, 0, 0]])
    tgt = torch.tensor([[1.0, 1, 1, 1], [1, 1, 1, 1], [1, 2, 3, 4]])
    as_boxes = lambda d: torch.stack([-d[:, 0], -d[:, 1], d[:, 2], d[:, 3]], 1)  # noqa: E731
    ref = 1 - _giou_pairs(as_boxes(pred), as_boxes(tgt))
    torch.testing.assert_close(giou_loss_ltrb(pred, tgt), ref)
    assert giou_loss_ltrb(pred, tgt)[0].item() == pytest.approx(0.0, abs=1e-6)


def test_fcos_losses_normalisation_and_zero_positives():
    torch.manual_seed(0)
    k = 3
    cls = torch.randn(6, k, requires_grad=True)
    reg = torch.rand(6, 4, requires_grad=True)
    ctr = torch.randn(6, requires_grad=True)
    labels = torch.tensor([3, 1, 3, 0, 3, 3])
    tgt = torch.rand(6, 4) + 0.5
    out = fcos_losses(cls, reg, ctr, labels, tgt, num_classes=k)
    pos = labels < k
    onehot = torch.zeros(6, k)
    onehot[pos, labels[pos]] = 1
    ct = centerness_target(tgt[pos])
    assert out["loss_fcos_cls"].item() == pytest.approx(sigmoid_focal_loss(cls, onehot).item() / 2, rel=1e-5)
    assert out["loss_fcos_loc"].item() == pytest.approx(
        ((giou_loss_ltrb(reg[pos], tgt[pos]) * ct).sum() / ct.sum()).item(), rel=1e-5)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(ctr[pos], ct, reduction="sum") / 2
    assert out["loss_fcos_ctr"].item() == pytest.approx(bce.item(), rel=1e-5)
    # no positives: the focal sum over 1, zero box/ctr losses, all still differentiable
    out = fcos_losses(cls, reg, ctr, torch.full((6,), k), tgt, num_classes=k)
    assert out["loss_fcos_cls"].item() == pytest.approx(sigmoid_focal_loss(cls, torch.zeros(6, k)).item(), rel=1e-5)
    assert out["loss_fcos_loc"].item() == 0 and out["loss_fcos_ctr"].item() == 0
    sum(out.values()).backward()
    assert reg.grad is not None and ctr.grad is not None and torch.isfinite(cls.grad).all()
