"""DynamicMaskHead (BoxInst head + DG-MaskHead depth layer, Eq. 1) against loop references."""
import pytest
import torch

from boxdepth.models.dynamic_head import DynamicMaskHead, split_params
from boxdepth.ops.pairwise import aligned_bilinear

SOI = (64.0, 128.0, 256.0, 512.0, 1024.0)


def _reference_boxinst(feats, stride, im_inds, locs, levels, params):
    """BoxInst per instance: weights [W1 (8x18) W2 (8x8) Wm (8)], biases [b1 b2 bm]."""
    _, c, h, w = feats.shape
    ys, xs = torch.meshgrid(torch.arange(h) * stride + stride // 2, torch.arange(w) * stride + stride // 2,
                            indexing="ij")
    out = []
    for n in range(len(im_inds)):
        p, soi = params[n], SOI[int(levels[n])]
        f0 = torch.cat([((locs[n, 0] - xs) / soi)[None], ((locs[n, 1] - ys) / soi)[None],
                        feats[im_inds[n]]], 0).reshape(c + 2, -1)
        w1, w2, wm = p[:144].reshape(8, 18), p[144:208].reshape(8, 8), p[208:216]
        b1, b2, bm = p[216:224], p[224:232], p[232]
        f1 = torch.relu(w2 @ torch.relu(w1 @ f0 + b1[:, None]) + b2[:, None])
        out.append((wm @ f1 + bm).reshape(h, w))
    return torch.stack(out)[:, None]


def _reference_dg(mask_feats, stride, im_inds, locations, levels, params):
    """Eq. 1 per instance: layout weights [W1 W2 Wm Wd] then biases [b1 b2 bm bd]."""
    _, c, h, w = mask_feats.shape
    ys, xs = torch.meshgrid(torch.arange(h) * stride + stride // 2, torch.arange(w) * stride + stride // 2,
                            indexing="ij")
    masks, depths = [], []
    for n in range(len(im_inds)):
        p = params[n]
        soi = SOI[int(levels[n])]
        f0 = torch.cat([((locations[n, 0] - xs) / soi)[None], ((locations[n, 1] - ys) / soi)[None],
                        mask_feats[im_inds[n]]], 0).reshape(c + 2, -1)
        w1, w2, wm, wd = p[:144].reshape(8, 18), p[144:208].reshape(8, 8), p[208:216], p[216:224]
        b1, b2, bm, bd = p[224:232], p[232:240], p[240], p[241]
        f1 = torch.relu(w2 @ torch.relu(w1 @ f0 + b1[:, None]) + b2[:, None])
        zd = wd @ f1 + bd
        masks.append(((wm @ f1 + bm) * torch.sigmoid(zd)).reshape(h, w))
        depths.append(zd.reshape(h, w))
    return torch.stack(masks)[:, None], torch.stack(depths)[:, None]


def _inputs(n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(2, 16, 6, 7, generator=g)
    im_inds = torch.tensor([0, 1, 1, 0, 1])[:n]
    locs = torch.rand(n, 2, generator=g) * 56
    levels = torch.tensor([0, 1, 2, 3, 4])[:n]
    return feats, im_inds, locs, levels


def test_param_counts():
    assert DynamicMaskHead().num_params == 233            # 144 + 64 + 8 weights, 8 + 8 + 1 biases
    assert DynamicMaskHead(depth_head=True).num_params == 242
    assert DynamicMaskHead(num_layers=2).num_params == 18 * 8 + 8 + 8 * 1 + 1


@pytest.mark.parametrize("depth", [False, True])
def test_split_order(depth):
    head = DynamicMaskHead(depth_head=depth)
    p = torch.arange(float(head.num_params))[None].repeat(2, 1)
    p[1] += 1000
    weights, biases = split_params(p, head.shapes)
    assert [tuple(w.shape) for w in weights][:3] == [(16, 18, 1, 1), (16, 8, 1, 1), (2, 8, 1, 1)]
    torch.testing.assert_close(weights[0][:8, :, 0, 0], torch.arange(144.0).reshape(8, 18))
    torch.testing.assert_close(weights[0][8:, :, 0, 0], torch.arange(144.0).reshape(8, 18) + 1000)
    torch.testing.assert_close(weights[1][:8, :, 0, 0], torch.arange(144.0, 208).reshape(8, 8))
    torch.testing.assert_close(weights[2][0, :, 0, 0], torch.arange(208.0, 216))
    b0 = 224 if depth else 216
    torch.testing.assert_close(biases[0][:8], torch.arange(float(b0), b0 + 8))
    torch.testing.assert_close(biases[1][8:], torch.arange(float(b0 + 8), b0 + 16) + 1000)
    assert biases[2].tolist() == [b0 + 16.0, b0 + 1016.0]
    if depth:
        torch.testing.assert_close(weights[3][0, :, 0, 0], torch.arange(216.0, 224))
        assert biases[3].tolist() == [241.0, 1241.0]


def test_boxinst_head_matches_per_instance_loop():
    feats, im_inds, locs, levels = _inputs()
    params = torch.randn(5, 233, generator=torch.Generator().manual_seed(1))
    head = DynamicMaskHead(mask_out_stride=8)   # factor 1: compare at stride 8 directly
    out = head(feats, 8, im_inds, locs, levels, params)
    assert out["depth_logits"] is None
    ref = _reference_boxinst(feats, 8, im_inds, locs, levels, params)
    torch.testing.assert_close(out["mask_logits"], ref, rtol=1e-4, atol=1e-4)
    # default output stride 4: the same logits upsampled x2 with aligned_bilinear
    out4 = DynamicMaskHead()(feats, 8, im_inds, locs, levels, params)
    assert out4["mask_logits"].shape == (5, 1, 12, 14)
    torch.testing.assert_close(out4["mask_logits"], aligned_bilinear(ref, 2), rtol=1e-4, atol=1e-4)


def test_depth_head_matches_eq1_loop():
    feats, im_inds, locs, levels = _inputs()
    params = torch.randn(5, 242, generator=torch.Generator().manual_seed(2))
    out = DynamicMaskHead(depth_head=True, mask_out_stride=8)(feats, 8, im_inds, locs, levels, params)
    ref_mask, ref_depth = _reference_dg(feats, 8, im_inds, locs, levels, params)
    torch.testing.assert_close(out["mask_logits"], ref_mask, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out["depth_logits"], ref_depth, rtol=1e-4, atol=1e-4)
    out4 = DynamicMaskHead(depth_head=True)(feats, 8, im_inds, locs, levels, params)
    torch.testing.assert_close(out4["depth_logits"], aligned_bilinear(ref_depth, 2), rtol=1e-4, atol=1e-4)


def test_depth_head_with_saturated_depth_equals_boxinst():
    # Md with zero weights and a large bias gives P_depth = 1, so Eq. 1 reduces to BoxInst
    feats, im_inds, locs, levels = _inputs()
    p233 = torch.randn(5, 233, generator=torch.Generator().manual_seed(3))
    p242 = torch.cat([p233[:, :216], torch.zeros(5, 8), p233[:, 216:], torch.full((5, 1), 40.0)], 1)
    boxinst = DynamicMaskHead()(feats, 8, im_inds, locs, levels, p233)["mask_logits"]
    dg = DynamicMaskHead(depth_head=True)(feats, 8, im_inds, locs, levels, p242)["mask_logits"]
    torch.testing.assert_close(dg, boxinst)


def test_relative_coords_come_first_in_dx_dy_order():
    feats, im_inds, locs, levels = _inputs(n=2)
    head = DynamicMaskHead(mask_out_stride=8)
    w1 = torch.zeros(8, 18)
    w1[0, 0] = 1.0   # channel 0 -> dx
    w1[1, 1] = 1.0   # channel 1 -> dy
    w1[2, 2] = 1.0   # channel 2 -> first mask feature
    w2 = torch.eye(8)
    h, w = feats.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(h) * 8 + 4.0, torch.arange(w) * 8 + 4.0, indexing="ij")
    for sel, expect in ((0, lambda n: (locs[n, 0] - xs) / SOI[n]), (1, lambda n: (locs[n, 1] - ys) / SOI[n]),
                        (2, lambda n: feats[im_inds[n], 0])):
        wm = torch.zeros(8)
        wm[sel] = 1.0
        p = torch.cat([w1.flatten(), w2.flatten(), wm, torch.zeros(17)])[None].repeat(2, 1)
        z = head(feats, 8, im_inds, locs, levels, p)["mask_logits"]
        for n in range(2):
            torch.testing.assert_close(z[n, 0], torch.relu(expect(n)))


def test_no_instances_keeps_graph():
    feats = torch.randn(1, 16, 4, 4, requires_grad=True)
    params = torch.randn(0, 242, requires_grad=True)
    out = DynamicMaskHead(depth_head=True)(feats, 8, torch.zeros(0, dtype=torch.long), torch.zeros(0, 2),
                                          torch.zeros(0, dtype=torch.long), params)
    assert out["mask_logits"].shape == (0, 1, 8, 8) and out["depth_logits"].shape == (0, 1, 8, 8)
    out["mask_logits"].sum().backward()
    assert feats.grad is not None and torch.all(feats.grad == 0)


def test_bad_params_shape_is_an_error():
    feats, im_inds, locs, levels = _inputs()
    with pytest.raises(ValueError, match="params"):
        DynamicMaskHead(depth_head=True)(feats, 8, im_inds, locs, levels, torch.zeros(5, 233))
