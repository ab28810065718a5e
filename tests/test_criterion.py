"""CondInstCriterion: the windowed pairwise terms equal the full-canvas formulas of SPEC §2,
each switch turns its term on or off, and loss.depth_consistency.pairs combines L_cons with
the colour pairs as its mode says."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from boxdepth.losses.boxinst import (bottom_pixels_mask, boxes_to_stride_masks, pairwise_loss,
                                     pairwise_neg_log_same, projection_loss)
from boxdepth.losses.criterion import CondInstCriterion
from boxdepth.losses.depth import (PAIR_MODES, depth_consistency_loss, depth_similarity,
                                   instance_depth_loss)
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
    w_c = (sim >= 0.3).float() * box_masks
    ref = {"loss_prj": projection_loss(logits.sigmoid(), box_masks),
           "loss_pairwise": warm * pairwise_loss(nls, w_c)}
    d01 = F.avg_pool2d(batch["depth"], 4, 4)
    has = batch["has_depth"].float()[p["im_inds"]][:, None, None, None]
    ref["loss_depth"] = instance_depth_loss(p["depth_logits"].sigmoid(), d01[p["im_inds"]], box_masks * has)
    dsim = depth_similarity(255 * d01, valid, 3, 2, crit.cons_kappa)[p["im_inds"]]
    centre = valid[p["im_inds"]][:, None] * has
    ref["loss_cons"] = warm * depth_consistency_loss(nls, dsim, box_masks * has, crit.cons_tau,
                                                     inside_box=crit.cons_inside_box,
                                                     image_mask=centre)
    w_d = (dsim > crit.cons_tau).float() * centre * (box_masks if crit.cons_inside_box else 1)
    if crit.cons_pairs == "shared":  # one normaliser over both pair sets
        n = w_c.sum() + w_d.sum()
        ref["loss_pairwise"], ref["loss_cons"] = warm * (nls * w_c).sum() / n, warm * (nls * w_d).sum() / n
    elif crit.cons_pairs == "complement":
        only_d = w_d * (1 - w_c)
        ref["loss_cons"] = warm * (nls * only_d).sum() / only_d.sum()
    elif crit.cons_pairs == "gated":  # images without depth keep every colour pair
        gated = w_c * ((dsim > crit.cons_tau) | (has == 0)).float()
        ref["loss_pairwise"], ref["loss_cons"] = warm * (nls * gated).sum() / gated.sum(), nls.sum() * 0
    return ref


@pytest.mark.parametrize("inside_box", [True, False])
@pytest.mark.parametrize("pairs", PAIR_MODES)
@pytest.mark.parametrize("iteration", [3, 50])
def test_windowed_mask_losses_equal_full_canvas_formulas(iteration, pairs, inside_box):
    outputs, batch = _fake()
    crit = CondInstCriterion(num_classes=3, warmup_iters=10, cons_kappa=0.02, cons_tau=0.5,
                             cons_inside_box=inside_box, cons_pairs=pairs)
    losses = crit(outputs, batch, iteration=iteration)
    ref = _reference(outputs, batch, crit, iteration)
    for k, v in ref.items():
        torch.testing.assert_close(losses[k], v, rtol=1e-5, atol=1e-6, msg=k)
    # the comparison is not vacuous (gated has no term of its own)
    assert ref["loss_pairwise"] > 0 and (ref["loss_cons"] > 0) == (pairs != "gated")
    assert {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr", "loss_cons"} <= set(losses)


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


def _quadrants():
    """One image, 32x32 canvas (8x8 at stride 4), box cells 1..6: colour splits the cells at
    column 4 (red | blue), depth at row 2 (d01 0.2 over 0.6). Returns (outputs, batch) and
    the pair sums {kind: (sum -log P(same), count)} counted by hand over the 3x3 dilation-2
    pairs of centres in the box, kind 'both' | 'colour' | 'depth' (the one that agrees)."""
    g = torch.Generator().manual_seed(3)
    images = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    images[0, :, :, :16] = torch.tensor([200, 30, 30], dtype=torch.uint8)[:, None, None]
    images[0, :, :, 16:] = torch.tensor([30, 30, 200], dtype=torch.uint8)[:, None, None]
    depth = torch.full((1, 1, 32, 32), 0.6)
    depth[..., :8, :] = 0.2  # |dd255| = 102: S_d = exp(-51), far below tau_d
    z = 2 * torch.randn(1, 1, 8, 8, generator=g)
    outputs = {"cls_logits": torch.randn(4, 3, generator=g), "bbox_reg": torch.rand(4, 4, generator=g) + 0.5,
               "ctrness": torch.randn(4, generator=g), "labels": torch.tensor([3, 3, 3, 0]),
               "reg_targets": torch.rand(4, 4, generator=g) + 0.5,
               "mask_feats": torch.randn(1, 4, 4, 4, generator=g),
               "proposals": {"im_inds": torch.tensor([0]), "gt_inds": torch.tensor([0]),
                             "mask_logits": z, "depth_logits": None}}
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 27.0, 27.0]]), "labels": torch.tensor([0]),
                "size": (32, 32), "orig_size": (32, 32)}]
    batch = {"images": images, "image_mask": torch.ones(1, 32, 32, dtype=torch.bool),
             "targets": targets, "depth": depth, "has_depth": torch.tensor([True])}
    p = torch.sigmoid(z[0, 0].double())
    sums = {"both": [0.0, 0], "colour": [0.0, 0], "depth": [0.0, 0]}
    for y in range(1, 7):
        for x in range(1, 7):
            for dy in (-2, 0, 2):
                for dx in (-2, 0, 2):
                    yj, xj = y + dy, x + dx
                    if (dy, dx) == (0, 0) or not (0 <= yj < 8 and 0 <= xj < 8):
                        continue
                    same_c, same_d = (x < 4) == (xj < 4), (y < 2) == (yj < 2)
                    if not (same_c or same_d):
                        continue
                    kind = "both" if same_c and same_d else "colour" if same_c else "depth"
                    pi, pj = p[y, x], p[yj, xj]
                    sums[kind][0] += -math.log(pi * pj + (1 - pi) * (1 - pj))
                    sums[kind][1] += 1
    return outputs, batch, {k: tuple(v) for k, v in sums.items()}


def _quadrant_losses(pairs=None, weight=1.0):
    outputs, batch, sums = _quadrants()
    kw = {} if pairs is None else {"cons_pairs": pairs}
    crit = CondInstCriterion(num_classes=3, warmup_iters=0, bottom_pixels_removed=0,
                             pairwise_weight=weight, cons_weight=weight, **kw)
    return crit(outputs, batch, 0), outputs, batch, sums


def test_quadrants_case_is_as_designed():
    _, _, sums = _quadrants()
    assert all(n > 0 for _, n in sums.values())
    colour_pairs = sums["both"][1] + sums["colour"][1]
    depth_pairs = sums["both"][1] + sums["depth"][1]
    assert colour_pairs != depth_pairs  # shared's normaliser differs from both of separate's


def test_pairs_separate_is_the_default_and_the_spec_formula():
    losses, outputs, batch, sums = _quadrant_losses()
    (s_b, n_b), (s_c, n_c), (s_d, n_d) = sums["both"], sums["colour"], sums["depth"]
    assert losses["loss_pairwise"].item() == pytest.approx((s_b + s_c) / (n_b + n_c), rel=1e-6)
    assert losses["loss_cons"].item() == pytest.approx((s_b + s_d) / (n_b + n_d), rel=1e-6)
    # exactly the functions of SPEC §2 on the full map (the box window covers all 8x8 cells)
    nls = pairwise_neg_log_same(outputs["proposals"]["mask_logits"], 3, 2)
    box = boxes_to_stride_masks(batch["targets"][0]["boxes"], (32, 32), 4)
    lab = rgb_to_lab(F.avg_pool2d(batch["images"].float(), 4, 4))
    valid = torch.ones(1, 8, 8)
    colour = (color_similarity(lab, valid, 3, 2) >= 0.3) * box
    dsim = depth_similarity(255 * F.avg_pool2d(batch["depth"], 4, 4), valid, 3, 2, 0.5)
    assert torch.equal(losses["loss_pairwise"], pairwise_loss(nls, colour))
    assert torch.equal(losses["loss_cons"],
                       depth_consistency_loss(nls, dsim, box, 0.5, image_mask=valid[:, None]))
    explicit = _quadrant_losses("separate")[0]
    assert all(torch.equal(explicit[k], losses[k]) for k in ("loss_pairwise", "loss_cons"))


def test_pairs_shared_is_one_term_over_both_pair_sets():
    separate = _quadrant_losses("separate", weight=0.7)[0]
    losses, _, _, sums = _quadrant_losses("shared", weight=0.7)
    (s_b, n_b), (s_c, n_c), (s_d, n_d) = sums["both"], sums["colour"], sums["depth"]
    n = (n_b + n_c) + (n_b + n_d)  # a pair active for both counts in each set
    assert losses["loss_pairwise"].item() == pytest.approx(0.7 * (s_b + s_c) / n, rel=1e-6)
    assert losses["loss_cons"].item() == pytest.approx(0.7 * (s_b + s_d) / n, rel=1e-6)
    combined = ((s_b + s_c) + (s_b + s_d)) / n
    assert (losses["loss_pairwise"] + losses["loss_cons"]).item() == pytest.approx(0.7 * combined, rel=1e-6)
    for k in ("loss_pairwise", "loss_cons"):
        assert not torch.isclose(losses[k], separate[k])


def test_pairs_complement_drops_the_pairs_colour_sees():
    separate = _quadrant_losses("separate")[0]
    losses, _, _, sums = _quadrant_losses("complement")
    s_d, n_d = sums["depth"]  # the 'both' pairs are active for colour: not in L_cons
    assert losses["loss_cons"].item() == pytest.approx(s_d / n_d, rel=1e-6)
    assert not torch.isclose(losses["loss_cons"], separate["loss_cons"])
    assert torch.equal(losses["loss_pairwise"], separate["loss_pairwise"])


def test_pairs_gated_keeps_colour_pairs_where_depth_agrees():
    losses, _, _, sums = _quadrant_losses("gated")
    s_b, n_b = sums["both"]
    assert losses["loss_pairwise"].item() == pytest.approx(s_b / n_b, rel=1e-6)
    assert losses["loss_cons"].item() == 0.0  # reported (key kept), adds nothing
    assert set(losses) == set(_quadrant_losses("separate")[0])  # same keys for logging


@pytest.mark.parametrize("pairs", PAIR_MODES[1:])
def test_joint_pairs_without_one_side_fall_back(pairs):
    outputs, batch = _fake()
    make = lambda **kw: CondInstCriterion(num_classes=3, warmup_iters=0, cons_kappa=0.02, **kw)  # noqa: E731
    # no depth in the batch: the colour term alone, as `separate`
    no_depth = {**batch, "depth": None}
    assert torch.equal(make(cons_pairs=pairs)(outputs, no_depth, 0)["loss_pairwise"],
                       make()(outputs, no_depth, 0)["loss_pairwise"])
    # colour term off: it has no pairs, so shared and complement keep all depth pairs
    off = make(cons_pairs=pairs, pairwise_weight=0.0)(outputs, batch, 0)
    assert "loss_pairwise" not in off
    expected = 0.0 if pairs == "gated" else make(pairwise_weight=0.0)(outputs, batch, 0)["loss_cons"].item()
    assert off["loss_cons"].item() == pytest.approx(expected, rel=1e-6)


def test_bad_pairs_value_names_the_key_and_the_choices():
    with pytest.raises(ValueError, match=r"loss\.depth_consistency\.pairs") as e:
        CondInstCriterion(num_classes=3, cons_pairs="union")
    assert "separate, shared, complement, gated" in str(e.value) and "'union'" in str(e.value)
    from boxdepth.config import load_config
    from boxdepth.losses.build import build_criterion
    cfg = load_config(None, ["model.fcos.num_classes=3", "loss.depth_consistency.pairs=shared"])
    assert build_criterion(cfg).cons_pairs == "shared"
    with pytest.raises(ValueError, match=r"loss\.depth_consistency\.pairs"):
        build_criterion(load_config(None, ["model.fcos.num_classes=3",
                                           "loss.depth_consistency.pairs=Shared"]))
