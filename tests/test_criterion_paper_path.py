"""The criterion's paper path (issue 24 item 10): the default criterion runs only the SPEC §2
terms, the non-paper options sit behind their own objects, the step's box masks and pooled
depth are computed once and shared with the distiller, and Eq. 1 has its own name."""
from __future__ import annotations

import torch

from boxdepth.losses.criterion import CondInstCriterion
from boxdepth.losses.depth_edge import DepthEdgeTerm
from boxdepth.losses.pair_modes import NonPaperPairs
from boxdepth.losses.step_maps import step_maps
from tests.test_criterion import _fake


def test_default_criterion_is_the_paper_loss_map():
    crit = CondInstCriterion(num_classes=3)
    assert crit.pair_mode is None and crit.depth_edge is None
    terms = crit.loss_map()
    assert list(terms) == ["loss_prj", "loss_pairwise", "loss_depth", "loss_cons"]
    assert terms["loss_cons"] == crit.loss_cons and terms["loss_pairwise"] == crit.loss_pairwise


def test_non_paper_options_use_their_strategy_objects():
    for kwargs in ({"cons_pairs": "shared"}, {"cons_pairs": "gated"}, {"cons_inside_box": False}):
        crit = CondInstCriterion(num_classes=3, **kwargs)
        assert isinstance(crit.pair_mode, NonPaperPairs)
        assert crit.loss_map()["loss_cons"] != crit.loss_cons
    edge = CondInstCriterion(num_classes=3, edge_weight=0.5)
    assert isinstance(edge.depth_edge, DepthEdgeTerm) and edge.pair_mode is None
    assert list(edge.loss_map())[-1] == "loss_depth_edge"


def test_loss_keys_keep_their_order():
    """The trainer sums the dict in order: the refactor kept it (float sums are not
    associative)."""
    outputs, batch = _fake()
    keys = list(CondInstCriterion(num_classes=3, edge_weight=1.0)(outputs, batch, 100))
    assert keys[-5:] == ["loss_prj", "loss_pairwise", "loss_depth", "loss_cons", "loss_depth_edge"]
    outputs, batch = _fake()
    joint = list(CondInstCriterion(num_classes=3, cons_pairs="shared")(outputs, batch, 100))
    assert joint[-4:] == ["loss_prj", "loss_depth", "loss_cons", "loss_pairwise"]


def test_step_maps_are_computed_once_and_follow_the_batch():
    outputs, batch = _fake()
    first = step_maps(outputs, batch, 4)
    assert step_maps(outputs, batch, 4) is first  # the distiller reuses the criterion's
    no_depth = {**batch, "depth": None}
    assert step_maps(outputs, no_depth, 4).d01 is None
    props = outputs["proposals"]
    fewer = {**outputs, "proposals": {k: v[:2] if torch.is_tensor(v) else v for k, v in props.items()}}
    assert len(step_maps(fewer, batch, 4).box_masks) == 2
    assert step_maps(outputs, batch, 4).box_masks.shape == first.box_masks.shape


def test_eq1_has_a_name():
    from boxdepth.models.dynamic_head import depth_guided_mask_logits
    z, zd = torch.randn(2, 1, 3, 3), torch.randn(2, 1, 3, 3)
    assert torch.equal(depth_guided_mask_logits(z, zd), z * zd.sigmoid())


def test_build_distiller_lives_in_distill():
    from boxdepth.config import load_config
    from boxdepth.distill.build import build_distiller
    assert build_distiller(load_config(None)).tau_m == 0.8
