"""CondInst end to end on tiny inputs: proposals, training outputs, inference, postprocess."""
import pytest
import torch

from boxdepth.config import load_config
from boxdepth.losses.fcos import fcos_losses_from_outputs
from boxdepth.models.build import build_model
from boxdepth.models.condinst import postprocess_detections, select_training_proposals
from boxdepth.models.fcos import compute_locations

TINY = ["model.backbone.name=small", "model.backbone.width=8", "model.fpn.out_channels=32",
        "model.fcos.num_classes=3", "model.mask_branch.channels=16"]


def _tiny(depth_head=False, *extra):
    torch.manual_seed(0)
    cfg = load_config(None, TINY + [f"model.depth_head={str(depth_head).lower()}", *extra])
    return build_model(cfg)


def _batch():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2, 3, 64, 96), dtype=torch.uint8, generator=g)
    mask = torch.zeros(2, 64, 96, dtype=torch.bool)
    mask[0] = True
    mask[1, :48, :80] = True
    targets = [{"boxes": torch.tensor([[4.0, 6, 50, 40], [30, 10, 90, 60], [60, 2, 70, 12]]),
                "labels": torch.tensor([0, 2, 1])},
               {"boxes": torch.tensor([[10.0, 8, 40, 44]]), "labels": torch.tensor([1])}]
    return images, mask, targets


def test_select_training_proposals_split_and_ranking():
    g = torch.Generator().manual_seed(0)
    # image 0: gt 0 with 70 positives, gt 1 with 5; image 1: one gt with 100; image 2: 80 gts x 2
    im = torch.cat([torch.zeros(75), torch.ones(100), torch.full((160,), 2)]).long()
    gt = torch.cat([torch.zeros(70), torch.ones(5), torch.full((100,), 4), torch.arange(80).repeat(2)]).long()
    scores = torch.rand(len(im), generator=g)
    keep = select_training_proposals(im, gt, scores, 64)
    assert len(keep) == len(set(keep.tolist()))
    for i, g_id, n in ((0, 0, 32), (0, 1, 5), (1, 4, 64)):
        sel = keep[(im[keep] == i) & (gt[keep] == g_id)]
        assert len(sel) == n
        all_idx = ((im == i) & (gt == g_id)).nonzero()[:, 0]
        assert set(sel.tolist()) == set(all_idx[scores[all_idx].argsort(descending=True)[:n]].tolist())
    sel2 = keep[im[keep] == 2]   # max(64 // 80, 1) = 1 per box, the better of its two
    assert len(sel2) == 80
    for g_id in range(80):
        idx = ((im == 2) & (gt == g_id)).nonzero()[:, 0]
        assert keep[(im[keep] == 2) & (gt[keep] == g_id)].item() == idx[scores[idx].argmax()].item()
    assert len(select_training_proposals(im[:0], gt[:0], scores[:0], 64)) == 0


def test_normalize_rgb_bgr_and_padding():
    model = _tiny()
    images = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    mask = torch.zeros(1, 32, 32, dtype=torch.bool)
    mask[:, :20, :24] = True
    mean, std = torch.tensor([123.675, 116.28, 103.53]), torch.tensor([58.395, 57.12, 57.375])
    x = model.normalize(images, mask)
    ref = (images[0].float() - mean[:, None, None]) / std[:, None, None]
    torch.testing.assert_close(x[0, :, :20, :24], ref[:, :20, :24])
    assert (x[0, :, 20:] == 0).all() and (x[0, :, :, 24:] == 0).all()
    bgr = _tiny(False, "input.format=BGR", "input.pixel_mean=[103.53,116.28,123.675]",
                "input.pixel_std=[1.0,1.0,1.0]")
    xb = bgr.normalize(images, None)
    torch.testing.assert_close(xb[0, 0], images[0, 2].float() - 103.53)
    torch.testing.assert_close(xb[0, 2], images[0, 0].float() - 123.675)


@pytest.mark.parametrize("depth_head", [False, True])
def test_training_forward_outputs_and_backward(depth_head):
    model = _tiny(depth_head)
    assert model.mask_head.num_params == (242 if depth_head else 233)
    assert model.fcos_head.controller.out_channels == model.mask_head.num_params
    images, mask, targets = _batch()
    out = model(images, mask, targets)
    m = sum(h * w for h, w in ((8, 12), (4, 6), (2, 3), (1, 2), (1, 1)))
    assert out["cls_logits"].shape == (2 * m, 3) and out["bbox_reg"].shape == (2 * m, 4)
    assert out["ctrness"].shape == (2 * m,) and out["reg_targets"].shape == (2 * m, 4)
    assert out["mask_feats"].shape == (2, 16, 8, 12)
    prop = out["proposals"]
    n = len(prop["im_inds"])
    assert n > 0 and prop["mask_logits"].shape == (n, 1, 16, 24)
    assert (prop["depth_logits"] is not None) == depth_head
    # proposals are positives of the assigned gt; count per gt = min(#positives, 64 // n_gt)
    locs = compute_locations([(8, 12), (4, 6), (2, 3), (1, 2), (1, 1)], model.strides)
    assigned = model.target_assigner(locs, targets)
    for i in range(2):
        gts = assigned["gt_inds"][i][assigned["gt_inds"][i] >= 0]
        for g in gts.unique():
            got = ((prop["im_inds"] == i) & (prop["gt_inds"] == g)).sum().item()
            assert got == min((gts == g).sum().item(), max(64 // len(gts.unique()), 1))
    k = prop["im_inds"] * m + torch.cat([(torch.cat(locs) == l).all(1).nonzero()[0] for l in prop["locations"]])
    assert (out["labels"][k] == torch.stack([targets[i]["labels"][g] for i, g in
                                             zip(prop["im_inds"].tolist(), prop["gt_inds"].tolist())])).all()
    torch.testing.assert_close(prop["scores"], out["cls_logits"][k].sigmoid().max(1).values *
                               out["ctrness"][k].sigmoid())
    losses = fcos_losses_from_outputs(out, num_classes=3)
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    total = sum(losses.values()) + prop["mask_logits"].sigmoid().mean()
    if depth_head:
        total = total + prop["depth_logits"].sigmoid().mean()
    total.backward()
    # (not fpn.p7: on these tiny images P7 is 1x1, and GroupNorm(32) over 32 channels of
    # one pixel outputs its bias whatever the input, so P7's conv gets no gradient)
    for name in ("fcos_head.controller.weight", "mask_branch.tower.4.weight", "backbone.res5.conv1.weight",
                 "fcos_head.cls_logits.weight", "fpn.p6.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


def test_training_without_boxes_still_differentiable():
    model = _tiny(True)
    images, mask, _ = _batch()
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}] * 2
    out = model(images, mask, empty)
    assert len(out["proposals"]["im_inds"]) == 0
    losses = fcos_losses_from_outputs(out, num_classes=3)
    (sum(losses.values()) + out["proposals"]["mask_logits"].sum()).backward()
    assert model.fcos_head.controller.weight.grad is not None


@pytest.mark.parametrize("depth_head", [False, True])
def test_inference_and_postprocess(depth_head):
    model = _tiny(depth_head, "model.fcos.inference_th=0.0", "model.fcos.post_nms_topk=7").eval()
    images, mask, _ = _batch()
    with torch.no_grad():
        dets = model(images, mask)
    assert len(dets) == 2
    for det in dets:
        d = len(det["boxes"])
        assert 0 < d <= 7
        assert det["mask_probs"].shape == (d, 1, 16, 24)
        assert ((det["mask_probs"] >= 0) & (det["mask_probs"] <= 1)).all()
        assert (det["depth_probs"] is not None) == depth_head
        assert (det["scores"][:-1] >= det["scores"][1:]).all()
    post = model.postprocess(dets[1], (48, 80), (96, 160))
    d = len(post["boxes"])
    assert post["masks"].shape == (d, 96, 160) and post["masks"].dtype == torch.bool
    assert (post["boxes"][:, 2] <= 160).all() and (post["boxes"][:, 3] <= 96).all()
    if depth_head:
        assert post["depth"].shape == (d, 96, 160) and post["depth"].dtype == torch.float32


def test_postprocess_crop_scale_threshold():
    probs = torch.zeros(3, 1, 16, 24)
    probs[:, :, :, :12] = 0.9          # left half of the 64x96 canvas (x < 48) is "object"
    det = {"boxes": torch.tensor([[4.0, 8, 20, 30], [40, 0, 60, 70], [50, 10, 60, 20]]),
           "scores": torch.tensor([0.9, 0.8, 0.7]), "labels": torch.tensor([0, 1, 2]),
           "mask_probs": probs, "depth_probs": probs * 0.5}
    # real image = 64 x 48 (the left half), original 128 x 96: every kept pixel is object
    out = postprocess_detections(det, (64, 48), (128, 96))
    # box 2 lies right of the image (x >= 50 > 48) -> empty after clipping -> dropped
    torch.testing.assert_close(out["boxes"], torch.tensor([[8.0, 16, 40, 60], [80, 0, 96, 128]]))
    assert out["labels"].tolist() == [0, 1] and out["masks"].shape == (2, 128, 96) and out["masks"].all()
    # depth is not thresholded: 0.45 inside; only the last canvas cell blends with 0 beyond it
    torch.testing.assert_close(out["depth"][:, :, :88], torch.full((2, 128, 88), 0.45))
    assert out["depth"].max() <= 0.45 + 1e-6 and out["depth"].min() > 0.3
    # without the crop the right half (probability 0) would show up
    out = postprocess_detections(det, (64, 96), (64, 96))
    assert out["masks"][:, :, :44].all() and not out["masks"][:, :, 52:].any()
    with pytest.raises(ValueError, match="canvas"):
        postprocess_detections(det, (65, 96), (64, 96))


def test_bad_image_size_is_an_error():
    model = _tiny()
    with pytest.raises(ValueError, match="multiple of 32"):
        model(torch.zeros(1, 3, 60, 96, dtype=torch.uint8))


def test_default_config_builds_boxinst_head():
    cfg = load_config(None, ["model.backbone.name=small", "model.fcos.num_classes=80"])
    model = build_model(cfg)
    assert model.mask_head.num_params == 233 and model.fcos_head.controller.out_channels == 233
    assert model.fpn.out_channels == 256 and model.mask_branch.out_channels == 16
    assert model.target_assigner.size_ranges[1] == (64.0, 128.0)
