"""Depth consistency score (Eq. 8) and the depth-aware Hungarian matcher (Eq. 9)."""
import itertools
import math

import numpy as np
import pytest
import torch

from boxdepth.distill.matcher import (DepthAwareHungarianMatcher, depth_consistency_score,
                                      maximum_assignment)
from boxdepth.losses.depth import depth_similarity

E1 = math.exp(-1.0)


def _brute_dcons(mask: torch.Tensor, depth255: torch.Tensor, tau: float, kappa: float, dilation: int) -> float:
    """Eq. 8 by explicit loops: centre-pixel mask weight, 8 neighbours, off-image pairs skipped."""
    h, w = mask.shape
    num = den = 0.0
    for y in range(h):
        for x in range(w):
            for dy in (-dilation, 0, dilation):
                for dx in (-dilation, 0, dilation):
                    yy, xx = y + dy, x + dx
                    if (dy, dx) == (0, 0) or not (0 <= yy < h and 0 <= xx < w):
                        continue
                    s = math.exp(-kappa * abs(float(depth255[y, x]) - float(depth255[yy, xx])))
                    den += float(mask[y, x]) * s
                    num += float(mask[y, x]) * s * (s > tau)
    return num / den if den > 0 else 0.0


def _rect(c0, c1, r0=1, r1=14, size=16):
    m = torch.zeros(size, size)
    m[r0:r1 + 1, c0:c1 + 1] = 1.0
    return m


def _two_planes(step=2.0):
    """16 x 16 stride-4 map: columns 0-7 at d255 = 100, columns 8-15 `step` further."""
    d = torch.full((16, 16), 100.0)
    d[:, 8:] += step
    return d


def _sim(depth255, dilation=2, kappa=0.5):
    h, w = depth255.shape
    return depth_similarity(depth255[None, None], torch.ones(1, h, w), 3, dilation, kappa)[0]


def test_dcons_hand_values_one_row():
    # pixels 0,1,2 on one row at d255 = 0, 0, 2; neighbours left/right only, kappa 0.5:
    # S_d(0,1) = 1, S_d(1,2) = exp(-1) < tau = 0.5
    sim = torch.tensor([[[0.0, 1.0, E1]],     # left neighbour
                        [[1.0, E1, 0.0]]])    # right neighbour
    masks = torch.tensor([[[1.0, 1.0, 0.0]], [[1.0, 1.0, 1.0]], [[0.0, 0.0, 1.0]],
                          [[1.0, 0.5, 0.0]], [[0.0, 0.0, 0.0]]])
    expected = torch.tensor([2 / (2 + E1), 2 / (2 + 2 * E1), 0.0, 1.5 / (1.5 + 0.5 * E1), 0.0])
    torch.testing.assert_close(depth_consistency_score(masks, sim, 0.5), expected)
    # the same S_d from the depth itself (3x3 kernel, dilation 1: vertical pairs are off the image)
    sim_d = depth_similarity(torch.tensor([[[[0.0, 0.0, 2.0]]]]), torch.ones(1, 1, 3), 3, 1, 0.5)[0]
    torch.testing.assert_close(depth_consistency_score(masks, sim_d, 0.5), expected)


def test_dcons_matches_brute_force_and_orders_masks():
    depth = _two_planes()
    sim = _sim(depth)
    masks = torch.stack([_rect(1, 7), _rect(1, 9), _rect(6, 9), _rect(9, 14)])
    masks[1] *= 0.7  # soft masks too
    got = depth_consistency_score(masks, sim, 0.5)
    want = torch.tensor([_brute_dcons(m, depth, 0.5, 0.5, 2) for m in masks])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    inside_left, spill, straddle, inside_right = got.tolist()
    assert straddle < spill < inside_left < 1.0
    assert inside_right < 1.0 and inside_right > spill
    flat = _sim(torch.full((16, 16), 50.0))
    torch.testing.assert_close(depth_consistency_score(masks, flat, 0.5), torch.ones(4))
    assert depth_consistency_score(masks[:0], sim, 0.5).shape == (0,)


CANVAS_GT = torch.tensor([[4.0, 4.0, 32.0, 60.0]])  # cells (rows 1-14, columns 1-7) of the near plane
# A: box a little better (IoU 28/30) but its mask spills two columns onto the far plane;
# B: box a little worse (IoU 52/56), mask exactly on the near plane.
PRED_BOXES = torch.tensor([[4.0, 4.0, 34.0, 60.0], [4.0, 4.0, 32.0, 56.0]])


def _case_a():
    depth = _two_planes()
    masks = torch.stack([_rect(1, 9), _rect(1, 7)])
    return depth, masks, torch.tensor([0.9, 0.8])


def test_depth_term_fixes_iou_choice():
    depth, masks, scores = _case_a()
    matcher = DepthAwareHungarianMatcher(alpha=0.8, beta=0.2, tau_d=0.5, mode="depth")
    out = matcher(CANVAS_GT, PRED_BOXES, scores, masks, _sim(depth))
    dcons = [_brute_dcons(m, depth, 0.5, 0.5, 2) for m in masks]
    s = [0.8 * 28 / 30 + 0.2 * dcons[0], 0.8 * 52 / 56 + 0.2 * dcons[1]]
    assert s[1] > s[0]  # the hand-built case really is decided by the depth term
    assert out["gt_inds"].tolist() == [0] and out["pred_inds"].tolist() == [1]
    assert out["gt_inds"].dtype == torch.long and out["pred_inds"].dtype == torch.long
    torch.testing.assert_close(out["s_match"], torch.tensor([s[1]]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["s_dcons"], torch.tensor([dcons[1]]), rtol=1e-5, atol=1e-6)

    iou_only = DepthAwareHungarianMatcher(mode="iou")(CANVAS_GT, PRED_BOXES, scores, masks, _sim(depth))
    assert iou_only["pred_inds"].tolist() == [0]
    torch.testing.assert_close(iou_only["s_match"], torch.tensor([28 / 30]))


def test_iou_mode_ignores_depth():
    depth, masks, scores = _case_a()
    matcher = DepthAwareHungarianMatcher(mode="iou")
    a = matcher(CANVAS_GT, PRED_BOXES, scores, None, None)
    b = matcher(CANVAS_GT, PRED_BOXES, scores, masks, torch.rand(8, 16, 16))
    for k in ("gt_inds", "pred_inds", "s_match"):
        assert torch.equal(a[k], b[k])
    assert torch.isnan(a["s_dcons"]).all() and a["s_dcons"].shape == (1,)


def test_prediction_score_weight():
    depth, masks, scores = _case_a()
    matcher = DepthAwareHungarianMatcher(alpha=0.5, beta=0.2, mode="depth")
    assert matcher.pred_score_weight == pytest.approx(0.3)
    s_match, s_dcons = matcher.match_scores(CANVAS_GT, PRED_BOXES, scores, masks, _sim(depth))
    iou = torch.tensor([[28 / 30, 52 / 56]])
    torch.testing.assert_close(s_match, 0.5 * iou + 0.2 * s_dcons[None] + 0.3 * scores[None])


def test_ties_are_deterministic_lowest_index():
    box = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    matcher = DepthAwareHungarianMatcher(mode="iou")
    preds = box.repeat(3, 1)
    out = matcher(box, preds, torch.ones(3))
    assert out["pred_inds"].tolist() == [0]
    # two GTs, three predictions where 1 and 2 are identical: the lower index wins, every time
    gts = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    preds = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0], [20.0, 20.0, 30.0, 30.0]])
    results = {tuple(matcher(gts, preds, torch.ones(3))["pred_inds"].tolist()) for _ in range(5)}
    assert results == {(0, 1)}
    preds = preds[[2, 0, 1]]  # now the duplicates sit at 0 and 2
    assert matcher(gts, preds, torch.ones(3))["pred_inds"].tolist() == [1, 0]


def test_more_gts_than_predictions():
    gts = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 0.0, 30.0, 10.0], [40.0, 0.0, 50.0, 10.0]])
    preds = torch.tensor([[41.0, 0.0, 50.0, 10.0], [0.0, 0.0, 9.0, 10.0]])
    out = DepthAwareHungarianMatcher(mode="iou")(gts, preds, torch.ones(2))
    assert out["gt_inds"].tolist() == [0, 2] and out["pred_inds"].tolist() == [1, 0]
    torch.testing.assert_close(out["s_match"], torch.tensor([0.9, 0.9]))
    assert len(set(out["pred_inds"].tolist())) == 2


@pytest.mark.parametrize("g,p", [(0, 3), (2, 0), (0, 0)])
def test_empty_inputs(g, p):
    for mode in ("depth", "iou"):
        out = DepthAwareHungarianMatcher(mode=mode)(torch.zeros(g, 4), torch.zeros(p, 4), torch.zeros(p),
                                                    torch.zeros(p, 16, 16), torch.zeros(8, 16, 16))
        assert out["gt_inds"].shape == out["pred_inds"].shape == out["s_match"].shape == (0,)
        assert out["gt_inds"].dtype == out["pred_inds"].dtype == torch.long
        assert out["s_match"].dtype == torch.float32 and out["s_dcons"].shape == (0,)


def test_assignment_is_optimal_against_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(30):
        g, p = (int(v) for v in rng.integers(1, 5, size=2))
        scores = rng.random((g, p))
        rows, cols = maximum_assignment(scores)
        assert len(rows) == min(g, p) and len(set(cols.tolist())) == len(cols)
        best = max(sum(scores[r, c] for r, c in zip(rs, cs))
                   for rs in itertools.combinations(range(g), min(g, p))
                   for cs in itertools.permutations(range(p), min(g, p)))
        assert scores[rows, cols].sum() == pytest.approx(best, abs=1e-5)


def test_match_empty_and_errors():
    depth, masks, scores = _case_a()
    matcher = DepthAwareHungarianMatcher()
    assert matcher(CANVAS_GT, PRED_BOXES, scores, masks, _sim(depth))["pred_inds"].tolist() == [1]
    assert matcher(torch.zeros(0, 4), PRED_BOXES, scores, masks, _sim(depth))["pred_inds"].tolist() == []
    with pytest.raises(ValueError, match="depth_sim"):
        matcher(CANVAS_GT, PRED_BOXES, scores, masks, None)
    with pytest.raises(ValueError, match="pred_scores"):
        matcher(CANVAS_GT, PRED_BOXES, scores[:1], masks, _sim(depth))
    with pytest.raises(ValueError, match="mode"):
        DepthAwareHungarianMatcher(mode="dice")
    with pytest.raises(ValueError, match="alpha"):
        DepthAwareHungarianMatcher(alpha=0.9, beta=0.2)
