"""Our depth-edge pair term (losses/depth_edge.py, loss.depth_edge): hand-computed values on a
4x4 step edge, an explicit pair loop, where it differs from the paper's L_cons, and its
place in the criterion (windowed = full-canvas formula, off by default)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from boxdepth.losses.boxinst import bottom_pixels_mask, boxes_to_stride_masks, pairwise_neg_log_same
from boxdepth.losses.criterion import CondInstCriterion
from boxdepth.losses.depth import depth_consistency_loss, depth_similarity
from boxdepth.losses.depth_edge import depth_edge_loss, depth_edge_weights, pairwise_neg_log_apart
from tests.test_criterion import _fake


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _step_case():
    """1x1x4x4: columns of p = 0.9 0.9 0.2 0.5 and d01 = 0.2 0.2 0.6 0.45."""
    z = torch.tensor([_logit(0.9), _logit(0.9), _logit(0.2), 0.0]).expand(1, 1, 4, 4).clone()
    d01 = torch.tensor([0.2, 0.2, 0.6, 0.45]).expand(1, 1, 4, 4).clone()
    return z, d01


@pytest.mark.parametrize("form", ["not_both", "different"])
def test_depth_edge_loss_hand_case(form):
    z, d01 = _step_case()
    edges = depth_edge_weights(d01, torch.ones(1, 4, 4), kernel_size=3, dilation=1, threshold=0.1)
    loss = depth_edge_loss(pairwise_neg_log_apart(z, 3, 1, form), edges, torch.ones(1, 1, 4, 4))
    # 3x3 dilation 1: column 1 <-> 2 has 2 * (2 + 3 + 3 + 2) = 20 pairs, jump 0.4 >= 2t: w = 1;
    # column 2 <-> 3 20 pairs, jump 0.15: w = (0.15 - 0.1) / 0.1 = 0.5; column 0 <-> 1: no jump
    if form == "not_both":  # 1 - p_i p_j
        per_12, per_23 = -math.log(1 - 0.9 * 0.2), -math.log(1 - 0.2 * 0.5)
    else:                   # p_i (1 - p_j) + p_j (1 - p_i)
        per_12 = -math.log(0.9 * 0.8 + 0.2 * 0.1)
        per_23 = -math.log(0.2 * 0.5 + 0.5 * 0.8)
    expected = (20 * 1.0 * per_12 + 20 * 0.5 * per_23) / (20 * 1.0 + 20 * 0.5)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # a jump of exactly t or less weighs nothing; the ramp is linear up to 2t
    assert edges[0, 3, 0, 1].item() == 0.0                        # column 1 -> 0: no jump
    assert edges[0, 4, 0, 1].item() == 1.0                        # column 1 -> 2: 0.4
    assert edges[0, 4, 0, 2].item() == pytest.approx(0.5, abs=1e-5)  # column 2 -> 3: 0.15


def test_pairs_into_invalid_pixels_and_centres_outside_the_box_do_not_count():
    z, d01 = _step_case()
    image_mask = torch.ones(1, 4, 4)
    image_mask[0, 3] = 0                     # a removed bottom row
    box = torch.zeros(1, 1, 4, 4)
    box[0, 0, :, 1] = 1                      # centres only in column 1
    edges = depth_edge_weights(d01, image_mask, 3, 1, threshold=0.1)
    centres = box * image_mask[:, None]      # as the criterion: in the box and on the image
    loss = depth_edge_loss(pairwise_neg_log_apart(z, 3, 1), edges, centres)
    # centres (0..2, 1); neighbours in column 2 on rows 0..2: 2 + 3 + 2 = 7 pairs, all w = 1
    assert loss.item() == pytest.approx(-math.log(0.9 * 0.8 + 0.2 * 0.1), rel=1e-5)
    assert depth_edge_loss(pairwise_neg_log_apart(z, 3, 1), edges * 0, centres).item() == 0.0


def test_depth_edge_end_to_end_against_loop():
    """Dilation 2 (the config's), soft weights, box and image masks, against a pair loop
    (the default form, different)."""
    g = torch.Generator().manual_seed(0)
    z = (torch.randn(2, 1, 7, 7, generator=g) * 3).requires_grad_(True)
    d01 = torch.rand(2, 1, 7, 7, generator=g) * 0.5
    image_mask = torch.ones(2, 7, 7)
    image_mask[:, 6] = 0
    box = torch.zeros(2, 1, 7, 7)
    box[0, 0, 1:6, 0:5] = 1
    box[1, 0, 0:7, 2:5] = 1
    edges = depth_edge_weights(d01, image_mask, 3, 2, threshold=0.1)
    loss = depth_edge_loss(pairwise_neg_log_apart(z, 3, 2), edges, box * image_mask[:, None])
    p, d = torch.sigmoid(z.detach().double()).tolist(), d01.double().tolist()
    total, norm = 0.0, 0.0
    for n in range(2):
        for y in range(7):
            for x in range(7):
                if box[n, 0, y, x] == 0 or image_mask[n, y, x] == 0:
                    continue
                for dy in (-2, 0, 2):
                    for dx in (-2, 0, 2):
                        yj, xj = y + dy, x + dx
                        if (dy, dx) == (0, 0) or not (0 <= yj < 7 and 0 <= xj < 7) \
                                or image_mask[n, yj, xj] == 0:
                            continue
                        w = min(max((abs(d[n][0][y][x] - d[n][0][yj][xj]) - 0.1) / 0.1, 0.0), 1.0)
                        pi, pj = p[n][0][y][x], p[n][0][yj][xj]
                        total += -w * math.log(pi * (1 - pj) + pj * (1 - pi))
                        norm += w
    assert norm > 1
    assert loss.item() == pytest.approx(total / norm, rel=1e-5)
    loss.backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_saturated_logits_stay_finite():
    z = torch.tensor([[[[40.0, 40.0, -40.0]]]], requires_grad=True)
    for form in ("not_both", "different"):
        nla = pairwise_neg_log_apart(z, 3, 1, form)
        nla[:, 3:5].sum().backward()
        assert torch.isfinite(nla).all() and torch.isfinite(z.grad).all()
        z.grad = None
    with pytest.raises(ValueError, match="loss.depth_edge.form"):
        pairwise_neg_log_apart(z, 3, 1, "apart")


def _spill_vs_right_mask():
    """A near object (d01 0.6) left of column 4 in front of a far wall (0.2), 8x8, box all.
    Masks (logits +-8): `right` covers the object, `spill` also the wall, `cut` stops at
    column 2 inside the object, `empty` covers nothing."""
    d01 = torch.full((1, 1, 8, 8), 0.2)
    d01[..., :4] = 0.6
    cols = torch.arange(8)
    masks = {name: torch.where(cond, 8.0, -8.0).expand(1, 1, 8, 8)
             for name, cond in (("right", cols < 4), ("spill", cols < 8), ("cut", cols < 2),
                                ("empty", cols < 0))}
    return d01, masks


def _l_cons(z, d01):
    """The paper's L_cons (SPEC §2 defaults: kappa 0.5 on d255, tau_d 0.5), box = all."""
    sim = depth_similarity(255 * d01, torch.ones(1, 8, 8), 3, 2, kappa=0.5)
    return depth_consistency_loss(pairwise_neg_log_same(z, 3, 2), sim, torch.ones(1, 1, 8, 8), 0.5).item()


def _edge(z, d01, form="different"):
    edges = depth_edge_weights(d01, torch.ones(1, 8, 8), 3, 2, threshold=0.1)
    return depth_edge_loss(pairwise_neg_log_apart(z, 3, 2, form), edges, torch.ones(1, 1, 8, 8)).item()


def test_edge_term_sees_a_spill_and_a_collapse_that_l_cons_cannot():
    d01, m = _spill_vs_right_mask()
    # L_cons only has "same" pairs, all inside one depth region: a mask spilling across
    # the depth edge costs it nothing, nor does the empty mask, exactly as the right mask
    for name in ("spill", "empty", "right"):
        assert _l_cons(m[name], d01) < 1e-3, name
    # the edge term's pairs all cross the edge: it charges both ~7.3 per pair
    # (-log(2 sigmoid(8) sigmoid(-8))) and only the right mask is free
    assert _edge(m["spill"], d01) > 7.0 and _edge(m["empty"], d01) > 7.0
    assert _edge(m["right"], d01) < 1e-3
    # a mask cut inside the object, where depth is flat, is L_cons's business
    assert _l_cons(m["cut"], d01) > 0.5


def test_not_both_leaves_two_background_pixels_alone_different_does_not():
    d01, m = _spill_vs_right_mask()
    # an empty mask across a background depth edge: "not both foreground" holds, while
    # "different" wants one of the two background pixels to become foreground
    assert _edge(m["empty"], d01, "not_both") < 1e-3
    assert _edge(m["empty"], d01, "different") > 7.0
    assert _edge(m["right"], d01, "different") < 1e-3


def _edge_reference(outputs, batch, crit, iteration):
    """The criterion's loss_depth_edge written out on the full stride-4 canvas."""
    p, t = outputs["proposals"], batch["targets"]
    hp, wp = batch["images"].shape[-2:]
    offsets = torch.tensor([0, len(t[0]["boxes"])])
    box_masks = boxes_to_stride_masks(torch.cat([x["boxes"] for x in t]), (hp, wp), 4)[
        offsets[p["im_inds"]] + p["gt_inds"]]
    valid = bottom_pixels_mask([x["size"] for x in t], [x["orig_size"][0] for x in t], (hp, wp),
                               crit.bottom_pixels_removed, stride=4)
    d01 = F.avg_pool2d(batch["depth"], 4, 4)
    has = batch["has_depth"].float()[p["im_inds"]][:, None, None, None]
    edges = depth_edge_weights(d01, valid, 3, 2, crit.edge_threshold)[p["im_inds"]]
    centres = box_masks * valid[p["im_inds"]][:, None] * has
    nla = pairwise_neg_log_apart(p["mask_logits"], 3, 2, crit.edge_form)
    warm = min(iteration / crit.warmup_iters, 1.0)
    return crit.edge_weight * warm * depth_edge_loss(nla, edges, centres)


@pytest.mark.parametrize("form", ["not_both", "different"])
def test_criterion_edge_term_equals_the_full_canvas_formula(form):
    outputs, batch = _fake()
    crit = CondInstCriterion(num_classes=3, warmup_iters=10, edge_weight=0.7, edge_threshold=0.05,
                             edge_form=form)
    losses = crit(outputs, batch, iteration=4)
    ref = _edge_reference(outputs, batch, crit, 4)
    assert ref > 0
    torch.testing.assert_close(losses["loss_depth_edge"], ref, rtol=1e-5, atol=1e-6)
    # the image without depth adds nothing: dropping its proposals leaves the value
    keep = outputs["proposals"]["im_inds"] == 0
    only0 = {**outputs, "proposals": {k: v[keep] if torch.is_tensor(v) else v
                                      for k, v in outputs["proposals"].items()}}
    torch.testing.assert_close(crit(only0, batch, iteration=4)["loss_depth_edge"], ref,
                               rtol=1e-5, atol=1e-6)


def test_edge_term_is_off_by_default_and_needs_depth():
    outputs, batch = _fake()
    assert "loss_depth_edge" not in CondInstCriterion(num_classes=3)(outputs, batch, 100)
    on = CondInstCriterion(num_classes=3, edge_weight=1.0)
    assert "loss_depth_edge" in on(outputs, batch, 100)
    assert "loss_depth_edge" not in on(outputs, {**batch, "depth": None}, 100)
    with pytest.raises(ValueError, match="loss.depth_edge.form"):
        CondInstCriterion(num_classes=3, edge_form="apart")


def test_config_keys_reach_the_criterion():
    from boxdepth.config import load_config
    from boxdepth.losses.build import build_criterion

    cfg = load_config(None, ["model.fcos.num_classes=3"])
    assert cfg.loss.depth_edge.weight == 0.0 and cfg.loss.depth_edge.form == "different"
    assert cfg.loss.depth_edge.threshold == 0.1
    crit = build_criterion(load_config(None, ["model.fcos.num_classes=3", "loss.depth_edge.weight=1.0",
                                              "loss.depth_edge.threshold=0.2",
                                              "loss.depth_edge.form=not_both"]))
    assert (crit.edge_weight, crit.edge_threshold, crit.edge_form) == (1.0, 0.2, "not_both")
