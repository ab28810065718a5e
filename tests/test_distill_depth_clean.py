"""Depth-cleaned teacher pseudo masks (distill/depth_clean.py, distill.depth_clean): hand-computed
medians and tolerances, where the paper's depth terms accept what the cleaning removes, and
the SelfDistiller wiring (off by default; on: the dice loss reads the cleaned masks)."""
from __future__ import annotations

import math

import pytest
import torch

import boxdepth.distill.distiller as distiller_module
from boxdepth.distill.depth_clean import depth_clean_pseudo_masks, depth_clean_teacher_targets
from boxdepth.distill.distiller import SelfDistiller
from boxdepth.distill.matcher import depth_consistency_score
from boxdepth.losses.boxinst import pairwise_neg_log_same
from boxdepth.losses.depth import depth_consistency_loss, depth_similarity


def _occluder_depth():
    """4x4: the instance at d01 0.5 in columns 0-2, a nearer neighbour at 0.9 in column 3."""
    d = torch.full((4, 4), 0.5)
    d[:, 3] = 0.9
    return d


def test_hand_case_drops_the_neighbour_keeps_a_receding_instance():
    masks = torch.zeros(3, 4, 4, dtype=torch.bool)
    masks[0] = True                        # spills over the whole box
    masks[1] = True                        # a receding instance, rows at 0.1 0.35 0.5 0.7
    depth = torch.stack([_occluder_depth(),
                         torch.tensor([0.1, 0.35, 0.5, 0.7])[:, None].expand(4, 4),
                         _occluder_depth()])  # mask 2 is empty
    out = depth_clean_pseudo_masks(masks, depth, tolerance=0.2, mad_scale=3.0)
    # mask 0: 12 values 0.5, 4 values 0.9 -> median 0.5, MAD 0 -> tol = max(0.2, 0) = 0.2:
    # column 3 (|0.9 - 0.5| = 0.4) goes
    expected0 = torch.ones(4, 4, dtype=torch.bool)
    expected0[:, 3] = False
    assert torch.equal(out[0], expected0)
    # mask 1: sorted values 0.1 x4, 0.35 x4, 0.5 x4, 0.7 x4 -> (lower) median 0.35; sorted
    # deviations 0 x4, 0.15 x4, 0.25 x4, 0.35 x4 -> MAD 0.15 -> tol = max(0.2, 3 * 1.4826 *
    # 0.15 = 0.67): all stay, where the floor alone would cut rows 0.1 and 0.7 (0.25, 0.35)
    assert out[1].all()
    floor_only = depth_clean_pseudo_masks(masks[1:2], depth[1:2], tolerance=0.2, mad_scale=0.0)
    assert torch.equal(floor_only[0].all(dim=1), torch.tensor([False, True, True, False]))
    assert not out[2].any()                # an empty mask stays empty
    with pytest.raises(ValueError, match="share one"):
        depth_clean_pseudo_masks(masks, depth[:, :3])


def test_teacher_targets_threshold_clip_and_skip_images_without_depth():
    teacher = torch.full((2, 1, 4, 4), 0.9)
    teacher[:, :, 0, 0] = 0.3                              # below 0.5: not in the pseudo mask
    box = torch.ones(2, 1, 4, 4)
    box[:, :, 3] = 0                                       # row 3 outside the GT box
    depth = _occluder_depth().repeat_interleave(4, 0).repeat_interleave(4, 1)[None, None]
    depth = depth.repeat(2, 1, 1, 1)                       # (B=2, 1, 16, 16): pools back to 4x4
    masks, removed = depth_clean_teacher_targets(teacher, box, depth, torch.tensor([True, False]),
                                                 torch.tensor([0, 1]), stride=4)
    base = (teacher[:, 0] > 0.5) & (box[:, 0] > 0)         # 11 pixels each
    assert masks.shape == (2, 1, 4, 4) and masks.dtype == torch.float32
    # image 0: median of {0.5 x8, 0.9 x3} is 0.5, MAD 0 -> column 3 (3 pixels) goes
    assert torch.equal(masks[0, 0].bool(), base[0] & (torch.arange(4) < 3))
    assert torch.equal(masks[1, 0].bool(), base[1])        # image 1 has no depth
    assert removed == pytest.approx(3 / 22)
    same, none_removed = depth_clean_teacher_targets(teacher, box, None, None, torch.tensor([0, 1]))
    assert torch.equal(same[:, 0].bool(), base) and none_removed == 0.0


def _spill_case():
    """8x8, box = all: the instance at d01 0.5 in columns 0-4, a touching neighbour at 0.9
    in columns 5-7; the teacher's mask (0.99) covers both."""
    depth = torch.full((8, 8), 0.5)
    depth[:, 5:] = 0.9
    return depth, torch.full((8, 8), 0.99)


def test_paper_depth_terms_accept_the_spill_that_cleaning_removes():
    depth, teacher = _spill_case()
    right = torch.full((8, 8), 0.01)
    right[:, :5] = 0.99
    sim = depth_similarity(255 * depth[None, None], torch.ones(1, 8, 8), 3, 2, kappa=0.5)

    def l_cons(m):
        nls = pairwise_neg_log_same(torch.logit(m)[None, None], 3, 2)
        return depth_consistency_loss(nls, sim, torch.ones(1, 1, 8, 8), tau=0.5).item()

    # the paper: L_cons only has "same" pairs within one depth region, where both masks are
    # uniform: the spill costs exactly what the right mask costs, -log(0.99^2 + 0.01^2)
    assert l_cons(teacher) == pytest.approx(l_cons(right), rel=1e-5)
    assert l_cons(teacher) == pytest.approx(-math.log(0.99 ** 2 + 0.01 ** 2), rel=1e-4)
    # and the matcher's S_dcons (Eq. 8) rates both 1: a pair across the edge has S_d ~ 0 and
    # so weighs nothing in its numerator or its denominator
    s = depth_consistency_score(torch.stack([right, teacher]), sim[0], tau_d=0.5)
    assert s.tolist() == pytest.approx([1.0, 1.0])
    # ours: the pseudo mask loses the neighbour's columns (median 0.5, MAD 0, tol 0.2)
    cleaned = depth_clean_pseudo_masks((teacher > 0.5)[None], depth[None])
    assert torch.equal(cleaned[0], right > 0.5)


def _distill_inputs():
    """One 32x32 image (8x8 at stride 4), GT box = the canvas, the spill case as the
    teacher's only prediction, and a student at p = 0.5 everywhere."""
    depth, teacher = _spill_case()
    batch = {"images": torch.zeros(1, 3, 32, 32, dtype=torch.uint8),
             "image_mask": torch.ones(1, 32, 32, dtype=torch.bool),
             "depth": depth.repeat_interleave(4, 0).repeat_interleave(4, 1)[None, None],
             "has_depth": torch.tensor([True]),
             "targets": [{"boxes": torch.tensor([[0.0, 0.0, 32.0, 32.0]]), "labels": torch.tensor([0]),
                          "size": (32, 32), "orig_size": (32, 32)}]}
    preds = [{"boxes": torch.tensor([[0.0, 0.0, 32.0, 32.0]]), "scores": torch.tensor([0.9]),
              "labels": torch.tensor([0]), "masks": teacher[None]}]
    outputs = {"proposals": {"im_inds": torch.tensor([0]), "gt_inds": torch.tensor([0]),
                             "mask_logits": torch.zeros(1, 1, 8, 8, requires_grad=True)}}
    return batch, preds, outputs


@pytest.mark.parametrize("clean", [False, True])
def test_distiller_dice_reads_the_cleaned_pseudo_masks(clean, monkeypatch):
    batch, preds, outputs = _distill_inputs()
    monkeypatch.setattr(distiller_module, "teacher_predictions", lambda *a, **k: preds)
    distiller = SelfDistiller(match="iou", depth_clean=clean)
    losses, stats = distiller(None, outputs, batch)
    # student p = 0.5 on 64 cells; pseudo mask 64 cells (spill) or 40 (cleaned):
    # dice = 1 - 2 * 0.5 * n / (64 * 0.25 + n + 1e-5), times gamma = 4
    n = 40 if clean else 64
    expected = 4.0 * (1 - n / (16 + n + 1e-5))
    assert losses["loss_distill"].item() == pytest.approx(expected, rel=1e-5)
    assert ("distill_clean_removed" in stats) == clean
    if clean:
        assert stats["distill_clean_removed"] == pytest.approx(24 / 64)
    assert not math.isnan(stats["distill_s_match"])


def test_config_keys_reach_the_distiller():
    from boxdepth.config import load_config
    from boxdepth.distill.build import build_distiller

    off = build_distiller(load_config(None))
    assert off.depth_clean is False
    on = build_distiller(load_config(None, ["distill.depth_clean.enabled=true",
                                            "distill.depth_clean.tolerance=0.15",
                                            "distill.depth_clean.mad_scale=2.0"]))
    assert (on.depth_clean, on.clean_tolerance, on.clean_mad_scale) == (True, 0.15, 2.0)
