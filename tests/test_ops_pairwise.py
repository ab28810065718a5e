"""unfold_wo_center, rgb_to_lab, color_similarity and aligned_bilinear."""
import math

import numpy as np
import pytest
import torch
from skimage.color import rgb2lab

from boxdepth.ops.pairwise import (aligned_bilinear, color_similarity, rgb_to_lab,
                                   unfold_wo_center)


def _offsets(k, d):
    """Row-major (dy, dx) offsets of a dilated k x k window, centre removed."""
    r = k // 2
    return [(dy * d, dx * d) for dy in range(-r, r + 1) for dx in range(-r, r + 1)
            if (dy, dx) != (0, 0)]


def _unfold_loop(x, k, d):
    n, c, h, w = x.shape
    out = torch.zeros(n, c, k * k - 1, h, w)
    for t, (dy, dx) in enumerate(_offsets(k, d)):
        for y in range(h):
            for xx in range(w):
                yy, xj = y + dy, xx + dx
                if 0 <= yy < h and 0 <= xj < w:
                    out[:, :, t, y, xx] = x[:, :, yy, xj]
    return out


@pytest.mark.parametrize("k,d", [(3, 1), (3, 2), (5, 1)])
def test_unfold_wo_center_matches_loop(k, d):
    x = torch.randn(2, 3, 6, 7, generator=torch.Generator().manual_seed(k * 10 + d))
    out = unfold_wo_center(x, k, d)
    assert out.shape == (2, 3, k * k - 1, 6, 7)
    assert torch.equal(out, _unfold_loop(x, k, d))


def test_unfold_wo_center_order_3x3_dilation2():
    x = torch.arange(25.0).reshape(1, 1, 5, 5)
    # pixel (2,2) = 12; its dilation-2 neighbours are the 4 corners and 4 edge midpoints
    assert unfold_wo_center(x, 3, 2)[0, 0, :, 2, 2].tolist() == [0, 2, 4, 10, 14, 20, 22, 24]
    # pixel (0,0): only (0,2), (2,0), (2,2) exist; the rest read the zero padding
    assert unfold_wo_center(x, 3, 2)[0, 0, :, 0, 0].tolist() == [0, 0, 0, 0, 2, 0, 10, 12]
    with pytest.raises(ValueError, match="odd"):
        unfold_wo_center(x, 2, 1)


def test_rgb_to_lab_known_colours():
    rgb = torch.tensor([[255.0, 255, 255], [255, 0, 0], [0, 0, 0], [0, 255, 0]])
    lab = rgb_to_lab(rgb.T.reshape(1, 3, 4, 1))[0, :, :, 0].T
    # textbook values to 2 decimals; skimage's sRGB matrix maps white to
    # (100, -0.0025, 0.0047), hence 1e-2 here and 1e-3 against skimage below
    assert torch.allclose(lab[0], torch.tensor([100.0, 0.0, 0.0]), atol=1e-2)
    assert torch.allclose(lab[1], torch.tensor([53.24, 80.09, 67.20]), atol=1e-2)
    assert torch.allclose(lab[2], torch.zeros(3), atol=1e-4)
    assert torch.allclose(lab[3], torch.tensor([87.73, -86.18, 83.18]), atol=1e-2)


def test_rgb_to_lab_matches_skimage():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(2, 9, 11, 3)).astype(np.float64)
    img[0, 0, :6] = [[0, 0, 0], [1, 2, 3], [10, 10, 10], [11, 0, 255], [255, 255, 0],
                     [128, 128, 128]]
    img[1] = rng.uniform(0, 255, size=(9, 11, 3))  # non-integer values (average pooling)
    expected = np.stack([rgb2lab(im / 255.0) for im in img])  # (2,H,W,3)
    got = rgb_to_lab(torch.from_numpy(img).float().permute(0, 3, 1, 2))
    assert got.dtype == torch.float32
    assert np.abs(got.permute(0, 2, 3, 1).numpy() - expected).max() < 1e-3
    got64 = rgb_to_lab(torch.from_numpy(img).permute(0, 3, 1, 2))
    assert np.abs(got64.permute(0, 2, 3, 1).numpy() - expected).max() < 1e-9


def test_color_similarity_values_and_masking():
    lab = torch.zeros(1, 3, 3, 3)
    lab[0, :, 1, 2] = torch.tensor([3.0, 4.0, 0.0])  # distance 5 from the rest
    mask = torch.ones(1, 3, 3)
    mask[0, 2, :] = 0  # e.g. removed bottom row
    sim = color_similarity(lab, mask, 3, 1)
    assert sim.shape == (1, 8, 3, 3)
    # centre (1,1): neighbours in row-major order
    # (0,0) (0,1) (0,2) (1,0) (1,2)=far (2,0) (2,1) (2,2) -> the last three are masked
    exp_far = math.exp(-2.5)
    assert sim[0, :, 1, 1].tolist() == pytest.approx([1, 1, 1, 1, exp_far, 0, 0, 0])
    # the far pixel itself sees every valid neighbour as far; the mask is the neighbour's
    assert sim[0, :, 1, 2].tolist() == pytest.approx([exp_far, exp_far, 0, exp_far, 0, 0, 0, 0])
    # a centre in the masked row still has similarity to valid neighbours above it
    assert sim[0, 1, 2, 1].item() == pytest.approx(1.0)
    # (N,1,H,W) bool masks are accepted and give the same result
    assert torch.equal(color_similarity(lab, mask[:, None].bool(), 3, 1), sim)
    with pytest.raises(ValueError, match="image_mask"):
        color_similarity(lab, torch.ones(1, 4, 4), 3, 1)


def test_aligned_bilinear_hand_case():
    x = torch.tensor([[[[0.0, 2.0]]]])  # (1,1,1,2)
    # pad -> [0,2,2]; interpolate to 5 with align_corners -> [0,1,2,2,2];
    # replicate-pad 1 on the left -> [0,0,1,2,2,2]; crop to 4 -> [0,0,1,2]
    out = aligned_bilinear(x, 2)
    assert out.shape == (1, 1, 2, 4)
    assert out[0, 0].tolist() == [[0, 0, 1, 2], [0, 0, 1, 2]]
    assert aligned_bilinear(x, 1) is x


@pytest.mark.parametrize("f", [2, 3, 4, 8])
def test_aligned_bilinear_property(f):
    x = torch.randn(2, 3, 5, 4, generator=torch.Generator().manual_seed(f))
    out = aligned_bilinear(x, f)
    assert out.shape == (2, 3, 5 * f, 4 * f)
    c = f // 2
    # input pixel i is the centre f*i + f//2 of its stride-f cell
    assert torch.allclose(out[:, :, c::f, c::f], x, atol=1e-6)
    # linear between two centres along x (row of a centre)
    mid = out[:, :, c, c + 1:c + f]
    t = torch.arange(1, f, dtype=torch.float32) / f
    lin = x[:, :, 0, 0:1] * (1 - t) + x[:, :, 0, 1:2] * t
    assert torch.allclose(mid, lin, atol=1e-5)
    # constant before the first and after the last centre
    assert torch.allclose(out[:, :, :c, :], out[:, :, c:c + 1, :].expand(-1, -1, c, -1))
    last = c + f * 4
    assert torch.allclose(out[:, :, c + f * 4:, :],
                          out[:, :, c + f * 4:c + f * 4 + 1, :].expand_as(out[:, :, last:, :]),
                          atol=1e-6)


def test_runs_on_the_input_device():
    """The meta device fails on any tensor silently created on the CPU."""
    lab = rgb_to_lab(torch.rand(2, 3, 8, 8, device="meta") * 255)
    assert lab.is_meta
    assert color_similarity(lab, torch.ones(2, 8, 8, device="meta"), 3, 2).is_meta
    assert aligned_bilinear(lab, 2).shape == (2, 3, 16, 16)
