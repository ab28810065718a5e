"""Depth similarity (Eq. 3), instance depth loss (Eq. 2), depth consistency (Eq. 4) and its
joint pair modes with the colour pairs (loss.depth_consistency.pairs)."""
import math

import pytest
import torch

from boxdepth.losses.boxinst import pairwise_neg_log_same
from boxdepth.losses.depth import (depth_consistency_loss, depth_pair_weights, depth_similarity,
                                   instance_depth_loss, joint_pair_losses)


def test_depth_similarity_two_instances():
    d = torch.tensor([[[[10.0, 12.0, 12.0]]], [[[0.0, 3.0, 0.0]]]])    # (2,1,1,3)
    mask = torch.tensor([[[1.0, 1.0, 0.0]], [[1.0, 1.0, 1.0]]])        # (2,1,3)
    sim = depth_similarity(d, mask, kernel_size=3, dilation=1, kappa=0.5)
    assert sim.shape == (2, 8, 1, 3)
    # in a single row only neighbours 3 (dx=-1) and 4 (dx=+1) exist
    others = [0, 1, 2, 5, 6, 7]
    assert sim[:, others].abs().max() == 0
    e = math.exp(-0.5 * 2)
    # pixel 2 is outside the image mask: it zeroes pairs that reach *to* it
    # (dx=+1 from pixel 1), not pairs centred on it (only the neighbour's mask)
    assert sim[0, 3, 0].tolist() == pytest.approx([0, e, 1.0])
    assert sim[0, 4, 0].tolist() == pytest.approx([e, 0, 0])
    f = math.exp(-0.5 * 3)
    assert sim[1, 3, 0].tolist() == pytest.approx([0, f, f])
    assert sim[1, 4, 0].tolist() == pytest.approx([f, f, 0])
    # kappa = 1 is the paper's Eq. 3
    sim1 = depth_similarity(d, mask, 3, 1, kappa=1.0)
    assert sim1[0, 4, 0, 0].item() == pytest.approx(math.exp(-2))


def test_instance_depth_loss_hand_case():
    p = torch.tensor([[[0.5, 0.5], [0.5, 0.5]],
                      [[0.2, 0.4], [0.6, 0.8]],
                      [[0.9, 0.9], [0.9, 0.9]]])[:, None].requires_grad_(True)
    d01 = torch.tensor([[[0.1, 0.5], [0.9, 0.5]],
                        [[0.0, 0.0], [0.0, 0.0]],
                        [[0.0, 0.0], [0.0, 0.0]]])[:, None]
    box = torch.tensor([[[1.0, 1.0], [0.0, 0.0]],
                        [[1.0, 1.0], [1.0, 1.0]],
                        [[0.0, 0.0], [0.0, 0.0]]])[:, None]
    # inst 0: (0.16 + 0) / 2 = 0.08; inst 1: (0.04+0.16+0.36+0.64) / 4 = 0.3; inst 2: empty box
    loss = instance_depth_loss(p, d01, box)
    assert loss.item() == pytest.approx((0.08 + 0.3) / 2)
    loss.backward()
    assert torch.isfinite(p.grad).all()
    assert p.grad[2].abs().sum() == 0 and p.grad[0, 0, 1].abs().sum() == 0
    # d/dp of 0.5 * (p - d)^2 / 2 at inst 0 pixel (0,0): 0.5 * 2 * 0.4 / 2
    assert p.grad[0, 0, 0, 0].item() == pytest.approx(0.2)


def test_instance_depth_loss_no_valid_instance_keeps_graph():
    p = torch.rand(2, 1, 3, 3, requires_grad=True)
    loss = instance_depth_loss(p, torch.rand(2, 1, 3, 3), torch.zeros(2, 1, 3, 3))
    loss.backward()
    assert loss.item() == 0.0 and p.grad is not None
    assert instance_depth_loss(p[:0], p[:0].detach(), p[:0].detach()).item() == 0.0


def test_depth_consistency_loss_hand_case():
    nls = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]],
                        [[[5.0, 6.0]], [[7.0, 8.0]]]])        # (2,K=2,1,2)
    sim = torch.tensor([[[[0.6, 0.5]], [[0.9, 0.1]]],
                        [[[0.7, 0.7]], [[0.7, 0.7]]]])
    box = torch.tensor([[[[1.0, 1.0]]], [[[0.0, 1.0]]]])      # (2,1,1,2)
    # inst 0 active: k0 px0 (0.5 is not > 0.5), k1 px0 -> 1 + 3; inst 1: px1 only -> 6 + 8
    assert depth_consistency_loss(nls, sim, box, tau=0.5).item() == pytest.approx(18 / 4)
    # without the box restriction inst 1 adds 5 + 7
    no_box = depth_consistency_loss(nls, sim, box, 0.5, inside_box=False)
    assert no_box.item() == pytest.approx(30 / 6)
    centre = torch.tensor([[[1.0, 1.0]], [[0.0, 1.0]]])        # (2,1,2)
    out = depth_consistency_loss(nls, sim, box, 0.5, inside_box=False, image_mask=centre)
    assert out.item() == pytest.approx(18 / 4)
    assert depth_consistency_loss(nls, sim * 0, box, 0.5).item() == 0.0


def test_joint_pair_losses_hand_case():
    nls = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])        # (1,K=2,1,2)
    w_c = torch.tensor([[[[1.0, 1.0]], [[0.0, 0.0]]]])        # 2 colour pairs
    w_d = torch.tensor([[[[1.0, 0.0]], [[1.0, 1.0]]]])        # 3 depth pairs, one shared with colour
    # shared: one normaliser 2 + 3 = 5 over both sets (the pair in both counts twice)
    c, d = joint_pair_losses("shared", nls, w_c, w_d)
    assert (c.item(), d.item()) == pytest.approx(((1 + 2) / 5, (1 + 3 + 4) / 5))
    # complement: the depth pair colour also has (value 1) drops
    c, d = joint_pair_losses("complement", nls, w_c, w_d)
    assert (c.item(), d.item()) == pytest.approx(((1 + 2) / 2, (3 + 4) / 2))
    # gated: only the colour pair the gate keeps; no term of its own
    c, d = joint_pair_losses("gated", nls, w_c, w_d)
    assert (c.item(), d.item()) == (1.0, 0.0)
    # the colour term off (None): shared and complement keep every depth pair
    for mode in ("shared", "complement"):
        assert joint_pair_losses(mode, nls, None, w_d)[1].item() == pytest.approx(8 / 3)
    assert joint_pair_losses("gated", nls, None, w_d)[1].item() == 0.0
    # a (N,1,H,W) colour weight (a box mask) counts once per neighbour, as pairwise_loss
    c, d = joint_pair_losses("shared", nls, torch.ones(1, 1, 1, 2), w_d)
    assert (c.item(), d.item()) == pytest.approx((10 / 7, 8 / 7))
    with pytest.raises(ValueError, match="shared, complement, gated"):
        joint_pair_losses("separate", nls, w_c, w_d)


def test_depth_consistency_end_to_end_against_loop():
    """Loss from logits and a depth step, against an explicit loop over pixel pairs."""
    g = torch.Generator().manual_seed(0)
    z = (torch.randn(2, 1, 6, 6, generator=g) * 3).requires_grad_(True)
    d255 = torch.zeros(2, 1, 6, 6)
    d255[:, :, :, 3:] = 100.0  # a depth edge between columns 2 and 3
    d255[1] += 0.4             # small offsets still count as the same surface
    image_mask = torch.ones(2, 6, 6)
    image_mask[:, 5] = 0       # removed bottom row
    box = torch.zeros(2, 1, 6, 6)
    box[0, 0, 1:5, 0:5] = 1
    box[1, 0, 0:6, 2:4] = 1
    sim = depth_similarity(d255, image_mask, 3, 2, kappa=0.5)
    nls = pairwise_neg_log_same(z, 3, 2)
    loss = depth_consistency_loss(nls, sim, box, tau=0.5)
    offsets = [(dy, dx) for dy in (-2, 0, 2) for dx in (-2, 0, 2) if (dy, dx) != (0, 0)]
    total, count = 0.0, 0
    p = torch.sigmoid(z.detach().double())
    for n in range(2):
        for y in range(6):
            for x in range(6):
                if box[n, 0, y, x] == 0:
                    continue
                for dy, dx in offsets:
                    yj, xj = y + dy, x + dx
                    if not (0 <= yj < 6 and 0 <= xj < 6) or image_mask[n, yj, xj] == 0:
                        continue
                    if (x < 3) != (xj < 3):  # crosses the depth edge: S_d = exp(-50)
                        continue
                    pi, pj = p[n, 0, y, x], p[n, 0, yj, xj]
                    total += -math.log(pi * pj + (1 - pi) * (1 - pj))
                    count += 1
    assert count > 0
    assert loss.item() == pytest.approx(total / count, rel=1e-5)
    loss.backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_runs_on_the_input_device():
    """The meta device fails on any tensor silently created on the CPU."""
    z = torch.rand(2, 1, 8, 8, device="meta")
    mask = torch.ones(2, 8, 8, device="meta")
    sim = depth_similarity(z * 255, mask, 3, 2, kappa=0.5)
    nls = pairwise_neg_log_same(z, 3, 2)
    assert depth_consistency_loss(nls, sim, z, 0.5, inside_box=False, image_mask=mask).is_meta
    w_d = depth_pair_weights(sim, z, 0.5, image_mask=mask)
    assert all(x.is_meta for m in ("shared", "complement", "gated")
               for x in joint_pair_losses(m, nls, w_d, w_d))
    assert instance_depth_loss(z, z, z).is_meta
