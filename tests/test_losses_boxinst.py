"""BoxInst losses and box-mask targets against hand-computed values."""
import math

import pytest
import torch

from boxdepth.losses.boxinst import (bottom_pixels_mask, boxes_to_stride_masks, dice_loss,
                                     pairwise_loss, pairwise_neg_log_same, projection_loss)

EPS = 1e-5


def test_dice_loss_hand_case():
    x = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    t = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    expected = torch.tensor([1 - 2 * 1 / (1 + 2 + EPS), 1 - 0 / (0.5 + EPS)])
    assert torch.allclose(dice_loss(x, t), expected)
    assert dice_loss(x.reshape(2, 1, 1, 2), t.reshape(2, 1, 1, 2)).shape == (2,)


def _one_instance():
    p = torch.zeros(1, 1, 4, 4)
    p[0, 0, 0, 1] = 0.5
    p[0, 0, 1, 1] = 1.0
    p[0, 0, 1, 2] = 0.25
    box = torch.zeros(1, 1, 4, 4)
    box[0, 0, 0:2, 1:3] = 1.0
    return p, box


def test_projection_loss_hand_4x4():
    p, box = _one_instance()
    # max over y (per column): p [0, 1, 0.25, 0], box [0, 1, 1, 0]
    loss_y = 1 - 2 * (1 + 0.25) / ((1 + 0.0625) + 2 + EPS)
    # max over x (per row): p [0.5, 1, 0, 0], box [1, 1, 0, 0]
    loss_x = 1 - 2 * (0.5 + 1) / ((0.25 + 1) + 2 + EPS)
    assert projection_loss(p, box).item() == pytest.approx(loss_x + loss_y, rel=1e-6)
    # a box-shaped prediction: each projection 1 - 2*2/(2+2+eps); mean over instances
    perfect = 2 * (1 - 4 / (4 + EPS))
    two = projection_loss(torch.cat([p, box]), torch.cat([box, box]))
    assert two.item() == pytest.approx((loss_x + loss_y + perfect) / 2, rel=1e-6)


def test_projection_loss_empty_and_grad():
    probs = torch.rand(0, 1, 4, 4, requires_grad=True)
    loss = projection_loss(probs, torch.zeros(0, 1, 4, 4))
    loss.backward()
    assert loss.item() == 0.0 and probs.grad is not None
    p, box = _one_instance()
    p = p.clone().requires_grad_(True)
    projection_loss(p, box).backward()
    assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="equal shape"):
        projection_loss(p, box[:, :, :3])


def _neighbour(z, y, x, dy, dx):
    h, w = z.shape
    if 0 <= y + dy < h and 0 <= x + dx < w:
        return z[y + dy, x + dx]
    return None


def test_pairwise_neg_log_same_matches_direct_formula():
    g = torch.Generator().manual_seed(0)
    z = (torch.rand(2, 1, 5, 6, generator=g) * 10 - 5)
    nls = pairwise_neg_log_same(z, 3, 2)
    assert nls.shape == (2, 8, 5, 6)
    offsets = [(dy, dx) for dy in (-2, 0, 2) for dx in (-2, 0, 2) if (dy, dx) != (0, 0)]
    zd = z.double()
    for n in range(2):
        for k, (dy, dx) in enumerate(offsets):
            for y in range(5):
                for x in range(6):
                    zj = _neighbour(zd[n, 0], y, x, dy, dx)
                    if zj is None:  # off-canvas neighbours read log-prob 0 -> P(same) = 1
                        assert nls[n, k, y, x].item() == pytest.approx(0.0, abs=1e-6)
                        continue
                    pi, pj = torch.sigmoid(zd[n, 0, y, x]), torch.sigmoid(zj)
                    direct = -torch.log(pi * pj + (1 - pi) * (1 - pj)).item()
                    assert nls[n, k, y, x].item() == pytest.approx(direct, rel=1e-5, abs=1e-6)


def test_pairwise_neg_log_same_saturated_logits():
    z = torch.tensor([[[[100.0, -100.0, 100.0, 100.0]]]], requires_grad=True)
    nls = pairwise_neg_log_same(z, 3, 1)
    assert torch.isfinite(nls).all()
    # neighbour index 4 is (dy, dx) = (0, +1): pixel 0 (z=100) vs pixel 1 (z=-100)
    # log P(same) = logaddexp(0 - 100, -100 + 0) = -100 + log 2
    assert nls[0, 4, 0, 0].item() == pytest.approx(100 - math.log(2), rel=1e-6)
    assert nls[0, 4, 0, 2].item() == pytest.approx(0.0, abs=1e-6)  # 100 vs 100
    nls.sum().backward()
    assert torch.isfinite(z.grad).all()


def test_pairwise_loss_hand_case():
    nls = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])  # (1,2,1,2)
    w = torch.tensor([[[[1.0, 0.0]], [[1.0, 1.0]]]])
    assert pairwise_loss(nls, w).item() == pytest.approx(8 / 3)
    assert pairwise_loss(nls, torch.zeros_like(w)).item() == 0.0
    # a (N,1,H,W) box mask counts once per neighbour: (1 + 3) / 2
    assert pairwise_loss(nls, torch.tensor([[[[1.0, 0.0]]]])).item() == pytest.approx(2.0)


def test_boxes_to_stride_masks_hand_case():
    boxes = torch.tensor([[3.5, 0.0, 6.0, 9.9], [0.0, 0.0, 1.0, 1.0]])
    m = boxes_to_stride_masks(boxes, (16, 12), stride=4)
    assert m.shape == (2, 1, 4, 3) and m.dtype == torch.float32
    # samples at canvas rows/cols 2, 6, 10(, 14); box 0 covers cols 3..6, rows 0..9
    expected0 = torch.zeros(4, 3)
    expected0[0:2, 1] = 1
    assert torch.equal(m[0, 0], expected0)
    assert m[1].sum() == 0  # a 2x2-pixel box at the corner misses every sample


def test_boxes_to_stride_masks_matches_adelaidet_raster():
    g = torch.Generator().manual_seed(1)
    hp, wp = 32, 40
    xy = torch.rand(30, 2, generator=g) * torch.tensor([wp - 1.0, hp - 1.0])
    wh = torch.rand(30, 2, generator=g) * 15
    boxes = torch.cat([xy, torch.minimum(xy + wh, torch.tensor([wp - 1.0, hp - 1.0]))], dim=1)
    got = boxes_to_stride_masks(boxes, (hp, wp), stride=4)
    for i, b in enumerate(boxes.tolist()):
        full = torch.zeros(hp, wp)
        full[int(b[1]):int(b[3] + 1), int(b[0]):int(b[2] + 1)] = 1.0
        assert torch.equal(got[i, 0], full[2::4, 2::4])
    with pytest.raises(ValueError, match="divisible"):
        boxes_to_stride_masks(boxes, (30, 40), stride=4)


def test_bottom_pixels_mask():
    sizes, orig_h = [(12, 16), (8, 10)], [24, 8]
    full = bottom_pixels_mask(sizes, orig_h, (16, 16), bottom_pixels_removed=4)
    assert full.shape == (2, 16, 16)
    expected = torch.zeros(2, 16, 16)
    expected[0, :10, :16] = 1  # int(4 * 12 / 24) = 2 rows removed from 12
    expected[1, :4, :10] = 1   # int(4 * 8 / 8) = 4 rows removed from 8
    assert torch.equal(full, expected)
    strided = bottom_pixels_mask(sizes, orig_h, (16, 16), 4, stride=4)
    assert torch.equal(strided, expected[:, 2::4, 2::4])
    # removing more rows than the image has leaves nothing; 0 removes nothing
    assert bottom_pixels_mask([(4, 4)], [1], (4, 4), 10).sum() == 0
    assert bottom_pixels_mask([(4, 4)], [4], (4, 4), 0).sum() == 16


def test_runs_on_the_input_device():
    """The meta device fails on any tensor silently created on the CPU."""
    z = torch.rand(2, 1, 8, 8, device="meta")
    assert projection_loss(z.sigmoid(), z).is_meta
    nls = pairwise_neg_log_same(z, 3, 2)
    assert nls.is_meta and pairwise_loss(nls, z).is_meta
    assert boxes_to_stride_masks(torch.rand(3, 4, device="meta"), (32, 32)).is_meta
    assert bottom_pixels_mask([(20, 30)], [40], (32, 32), 10, stride=4, device="meta").is_meta
