"""CondInstCriterion: the windowed pairwise terms equal the full-canvas formulas of SPEC §2,
and each switch turns its term on or off."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from boxdepth.losses.boxinst import (bottom_pixels_mask, boxes_to_stride_masks, pairwise_loss,
                                     pairwise_neg_log_same, projection_loss)
from boxdepth.losses.criterion import CondInstCriterion
from boxdepth.losses.depth import depth_consistency_loss, depth_similarity, instance_depth_loss
from boxdepth.ops.pairwise import box_windows, color_similarity, gather_windows, rgb_to_lab


def _fake(num_classes=3, seed=0, depth_head=True):
    g = torch.Generator().manual_seed(seed)
    b, hp, wp, m = 2, 64, 96, 10
    targets = [{"boxes": torch.tensor([[4., 6., 40., 50.], [50., 2., 95., 30.]]),
                "labels": torch.tensor([0, 2]), "size": (60, 96), "orig_size": (120, 192)},
               {"boxes": torch.tensor([[10., 20., 30., 63.]]), "labels": torch.tensor([1]),
                "size": (64, 90), "orig_size": (64, 90)}]
    image_mask = torch.zeros(b, hp, wp, dtype=torch.bool)
    for i, t in enumerate(targets):
        image_mask[i, :t["size"][0], :t["size"][1]] = True
    batch = {"images": torch.randint(0, 256, (b, 3, hp, wp), generator=g, dtype=torch.uint8),
             "image_mask": image_mask, "targets": targets,
             "depth": torch.rand(b, 1, hp, wp, generator=g), "has_depth": torch.tensor([True, False])}
    im_inds, gt_inds = torch.tensor([0, 0, 0, 1, 1]), torch.tensor([0, 1, 1, 0, 0])
    n = len(im_inds)
    outputs = {"cls_logits": torch.randn(b * m, num_classes, generator=g),
               "bbox_reg": torch.rand(b * m, 4, generator=g) + 0.5, "ctrness": torch.randn(b * m, generator=g),
               "labels": torch.tensor([num_classes] * (b * m - 2) + [0, 1]),
               "reg_targets": torch.rand(b * m, 4, generator=g) + 0.5,
               "mask_feats": torch.randn(b, 4, hp // 8, wp // 8, generator=g),
               "proposals": {"im_inds": im_inds, "gt_inds": gt_inds,
                             "mask_logits": 3 * torch.randn(n, 1, hp // 4, wp // 4, generator=g),
                             "depth_logits": torch.randn(n, 1, hp // 4, wp // 4, generator=g)
                             if depth_head else None}}
    return outputs, batch


def _reference(outputs, batch, crit: CondInstCriterion, iteration: int) -> dict:
    """SPEC §2 written out on the full stride-4 canvas, one term at a time."""
    p, t = outputs["proposals"], batch["targets"]
    hp, wp = batch["images"].shape[-2:]
    boxes = torch.cat([x["boxes"] for x in t])
    offsets = torch.tensor([0, len(t[0]["boxes"])])
    box_masks = boxes_to_stride_masks(boxes, (hp, wp), 4)[offsets[p["im_inds"]] + p["gt_inds"]]
    logits = p["mask_logits"]
    valid = bottom_pixels_mask([x["size"] for x in t], [x["orig_size"][0] for x in t], (hp, wp),
                               crit.bottom_pixels_removed, stride=4)
    nls = pairwise_neg_log_same(logits, 3, 2)
    warm = min(iteration / crit.warmup_iters, 1.0)
    lab = rgb_to_lab(F.avg_pool2d(batch["images"].float(), 4, 4))
    sim = color_similarity(lab, valid, 3, 2)[p["im_inds"]]
    ref = {"loss_prj": projection_loss(logits.sigmoid(), box_masks),
           "loss_pairwise": warm * pairwise_loss(nls, (sim >= 0.3).float() * box_masks)}
    d01 = F.avg_pool2d(batch["depth"], 4, 4)
    has = batch["has_depth"].float()[p["im_inds"]][:, None, None, None]
    ref["loss_depth"] = instance_depth_loss(p["depth_logits"].sigmoid(), d01[p["im_inds"]], box_masks * has)
    dsim = depth_similarity(255 * d01, valid, 3, 2, crit.cons_kappa)[p["im_inds"]]
    ref["loss_cons"] = warm * depth_consistency_loss(nls, dsim, box_masks * has, crit.cons_tau,
                                                     image_mask=valid[p["im_inds"]][:, None] * has)
    return ref


@pytest.mark.parametrize("iteration", [3, 50])
def test_windowed_mask_losses_equal_full_canvas_formulas(iteration):
    outputs, batch = _fake()
    crit = CondInstCriterion(num_classes=3, warmup_iters=10, cons_kappa=0.02, cons_tau=0.5)
    losses = crit(outputs, batch, iteration=iteration)
    ref = _reference(outputs, batch, crit, iteration)
    for k, v in ref.items():
        torch.testing.assert_close(losses[k], v, rtol=1e-5, atol=1e-6, msg=k)
    assert ref["loss_pairwise"] > 0 and ref["loss_cons"] > 0  # the comparison is not vacuous
    assert {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr"} <= set(losses)


def test_cons_outside_box_uses_the_whole_image():
    outputs, batch = _fake()
    inside = CondInstCriterion(num_classes=3, warmup_iters=0, cons_kappa=0.02)(outputs, batch, 0)
    anywhere = CondInstCriterion(num_classes=3, warmup_iters=0, cons_kappa=0.02,
                                 cons_inside_box=False)(outputs, batch, 0)
    assert not torch.isclose(inside["loss_cons"], anywhere["loss_cons"])


def test_switches_turn_terms_off():
    outputs, batch = _fake(depth_head=False)
    losses = CondInstCriterion(num_classes=3, cons_weight=0.0)(outputs, batch, 100)
    assert "loss_cons" not in losses and "loss_depth" not in losses  # no DG head, no L_cons
    no_depth = {**batch, "depth": None}
    assert "loss_cons" not in CondInstCriterion(num_classes=3)(outputs, no_depth, 100)


def test_box_windows_cover_box_plus_margin():
    masks = torch.zeros(2, 1, 10, 12)
    masks[0, 0, 2:5, 3:6] = 1
    masks[1, 0, 8:10, 0:2] = 1
    ys, xs, inside = box_windows(masks, margin=2)
    assert ys.shape == (2, 7) and xs.shape == (2, 7)
    assert ys[0].tolist() == list(range(0, 7)) and xs[0].tolist() == list(range(1, 8))
    assert inside[1, 0].sum() == 4 * 4  # rows 6..9, cols 0..3: clipped at the map edge
    crops = gather_windows(masks, ys, xs)
    assert (crops * inside).sum(dim=(1, 2, 3)).tolist() == [9.0, 4.0]


def test_mask_mode_dice_against_gt_masks():
    outputs, batch = _fake()
    for t in batch["targets"]:
        t["masks"] = torch.zeros(len(t["boxes"]), 64, 96, dtype=torch.uint8)
        t["masks"][:, 10:30, 10:40] = 1
    losses = CondInstCriterion(num_classes=3, mode="mask")(outputs, batch, 0)
    p = outputs["proposals"]
    gt = torch.zeros(64, 96)
    gt[10:30, 10:40] = 1
    gt = gt[2::4, 2::4].expand(5, 1, 16, 24)
    probs = p["mask_logits"].sigmoid()
    dice = 1 - 2 * (probs * gt).flatten(1).sum(1) / ((probs ** 2).flatten(1).sum(1) + (gt ** 2).flatten(1).sum(1) + 1e-5)
    torch.testing.assert_close(losses["loss_mask"], dice.mean())
    assert "loss_prj" not in losses
