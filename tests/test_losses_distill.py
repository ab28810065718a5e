"""Reliable dice loss (Eq. 10) and the proposal -> pseudo target mapping."""
import pytest
import torch

from boxdepth.losses.distill import pseudo_targets_for_proposals, reliable_dice_loss

STUDENT = torch.tensor([[0.8, 0.6, 0.1], [0.5, 0.2, 0.9]])
TEACHER = torch.tensor([[0.9, 0.7, 0.2], [0.6, 0.4, 0.8]])
BOX = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])


def _hand_dice():
    # pseudo = (teacher > 0.5) * box = [[1, 1, 0], [1, 0, 0]]: the teacher's 0.8 at (1, 2)
    # lies outside the GT box and is clipped away
    inter = 0.8 + 0.6 + 0.5
    sum_p2 = 0.64 + 0.36 + 0.01 + 0.25 + 0.04 + 0.81
    return 1.0 - 2.0 * inter / (sum_p2 + 3.0 + 1e-5)


def test_one_instance_hand_value():
    probs = STUDENT[None, None].clone().requires_grad_(True)
    loss, stats = reliable_dice_loss(probs, TEACHER[None, None], BOX[None, None], torch.tensor([0.9]),
                                     tau_m=0.8, weight=4.0)
    assert loss.item() == pytest.approx(4.0 * _hand_dice(), rel=1e-6)
    assert stats == {"distill_matched": 1.0, "distill_reliable": 1.0,
                     "distill_s_match": pytest.approx(0.9)}
    loss.backward()
    assert probs.grad.abs().sum() > 0


def test_unreliable_and_unmatched_pairs_are_excluded():
    n = 4
    probs = STUDENT[None, None].repeat(n, 1, 1, 1)
    probs[1:] = torch.rand(n - 1, 1, 2, 3, generator=torch.Generator().manual_seed(0))
    probs.requires_grad_(True)
    teacher = TEACHER[None, None].repeat(n, 1, 1, 1)
    box = BOX[None, None].repeat(n, 1, 1, 1)
    # 0.8 is not > tau_m; the last is above tau_m but has no match
    s_match = torch.tensor([0.95, 0.8, 0.3, 0.99])
    has_match = torch.tensor([True, True, True, False])
    loss, stats = reliable_dice_loss(probs, teacher, box, s_match, tau_m=0.8, weight=2.0, has_match=has_match)
    assert loss.item() == pytest.approx(2.0 * _hand_dice(), rel=1e-6)
    assert stats["distill_matched"] == 3.0 and stats["distill_reliable"] == 1.0
    assert stats["distill_s_match"] == pytest.approx((0.95 + 0.8 + 0.3) / 3)
    loss.backward()
    assert probs.grad[0].abs().sum() > 0 and probs.grad[1:].abs().sum() == 0


def test_mean_over_reliable_instances():
    probs = torch.stack([STUDENT, 1 - STUDENT])[:, None]
    teacher = TEACHER[None, None].repeat(2, 1, 1, 1)
    box = BOX[None, None].repeat(2, 1, 1, 1)
    loss, _ = reliable_dice_loss(probs, teacher, box, torch.tensor([0.9, 0.9]), tau_m=0.8, weight=1.0)
    pseudo = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    d = [1 - 2 * (p * pseudo).sum() / ((p * p).sum() + (pseudo * pseudo).sum() + 1e-5) for p in probs[:, 0]]
    assert loss.item() == pytest.approx(float(d[0] + d[1]) / 2, rel=1e-6)


def test_nothing_reliable_gives_graph_zero():
    probs = torch.rand(2, 1, 4, 4).requires_grad_(True)
    loss, stats = reliable_dice_loss(probs, torch.ones(2, 1, 4, 4), torch.ones(2, 1, 4, 4),
                                     torch.tensor([0.1, 0.2]))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(probs.grad, torch.zeros_like(probs))
    assert stats["distill_reliable"] == 0.0
    empty = torch.zeros(0, 1, 4, 4, requires_grad=True)
    loss, stats = reliable_dice_loss(empty, empty.detach(), empty.detach(), torch.zeros(0))
    assert loss.item() == 0.0 and loss.requires_grad
    assert stats == {"distill_matched": 0.0, "distill_reliable": 0.0, "distill_s_match": 0.0}


def test_shape_errors():
    with pytest.raises(ValueError, match="share one"):
        reliable_dice_loss(torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 5), torch.rand(2, 1, 4, 4),
                           torch.ones(2))
    with pytest.raises(ValueError, match="s_match"):
        reliable_dice_loss(torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 4),
                           torch.ones(3))


def test_pseudo_targets_for_proposals():
    h, w = 3, 5
    t0 = torch.arange(1.0, 5.0)[:, None, None].expand(4, h, w) / 10  # prediction p has value (p+1)/10
    t1 = torch.full((2, h, w), 0.77)
    matches = [{"gt_inds": torch.tensor([0, 2]), "pred_inds": torch.tensor([3, 1]),
                "s_match": torch.tensor([0.9, 0.85])},
               {"gt_inds": torch.zeros(0, dtype=torch.long), "pred_inds": torch.zeros(0, dtype=torch.long),
                "s_match": torch.zeros(0)}]
    im = torch.tensor([0, 0, 0, 1, 0, 0])
    gt = torch.tensor([0, 1, 2, 0, 2, 3])  # GT 1 and 3 of image 0 have no match, image 1 none at all
    masks, s_match, has = pseudo_targets_for_proposals(im, gt, matches, [t0, t1])
    assert masks.shape == (6, 1, h, w)
    assert has.tolist() == [True, False, True, False, True, False]
    torch.testing.assert_close(s_match, torch.tensor([0.9, 0.0, 0.85, 0.0, 0.85, 0.0]))
    want = [0.4, 0.0, 0.2, 0.0, 0.2, 0.0]
    for i, v in enumerate(want):
        assert torch.all(masks[i] == v), i
    with pytest.raises(ValueError, match="match dicts"):
        pseudo_targets_for_proposals(im, gt, matches[:1], [t0, t1])
    empty = pseudo_targets_for_proposals(im[:0], gt[:0], matches, [t0, t1])
    assert empty[0].shape == (0, 1, h, w) and empty[2].dtype == torch.bool
