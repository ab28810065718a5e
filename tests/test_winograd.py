"""Winograd F(2x2, 3x3) convolutions (ops/winograd.py, models/fast_conv.py, issue 25):
forward and all three gradients equal F.conv2d's (exactly in float64 up to rounding,
gradcheck), odd sizes, channels-last input, and the model switch `model.winograd` that
swaps only eligible convs, keeps the state dict and survives a deep copy (the EMA teacher)."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from boxdepth.models import fast_conv
from boxdepth.models.fast_conv import WinogradConv2d, conv3x3, eligible, winograd_convs
from boxdepth.ops import winograd
from boxdepth.ops.winograd import weight_transform, winograd_conv3x3


def _inputs(b, c, o, h, w, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, h, w, generator=g, dtype=dtype).requires_grad_()
    wt = torch.randn(o, c, 3, 3, generator=g, dtype=dtype).requires_grad_()
    bias = torch.randn(o, generator=g, dtype=dtype).requires_grad_()
    return x, wt, bias


@pytest.mark.parametrize("shape", [(2, 2, 3, 4, 6), (1, 3, 2, 5, 3), (3, 2, 3, 1, 1)])
def test_forward_equals_conv2d_and_gradcheck_passes(shape):
    x, wt, bias = _inputs(*shape)
    torch.testing.assert_close(winograd_conv3x3(x, wt, bias), F.conv2d(x, wt, bias, padding=1),
                               rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(winograd_conv3x3, (x, wt, bias))
    assert torch.autograd.gradcheck(winograd_conv3x3, (x, wt, None))


def test_gradients_equal_conv2d_in_float32_across_chunks(monkeypatch):
    # a chunk smaller than one row of tiles: the chunk loops and their accumulation run
    monkeypatch.setattr(winograd, "CHUNK", 5)
    x, wt, bias = _inputs(2, 24, 16, 13, 18, dtype=torch.float32)
    x_cl = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    grad = torch.randn(2, 16, 13, 18)
    y = winograd_conv3x3(x_cl, wt, bias)
    y.backward(grad)
    got = [y.detach(), x_cl.grad, wt.grad, bias.grad]
    wt.grad = bias.grad = None
    y_ref = F.conv2d(x, wt, bias, padding=1)
    y_ref.backward(grad)
    for a, b in zip(got, [y_ref.detach(), x.grad, wt.grad, bias.grad]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


def test_weight_transform_matches_g_w_gt_cell_by_cell():
    g = torch.tensor([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=torch.float64)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    u = weight_transform(w)  # (16, O, C)
    for o in range(3):
        for c in range(2):
            torch.testing.assert_close(u[:, o, c].view(4, 4), g @ w[o, c] @ g.T)


def test_rejects_a_kernel_that_is_not_3x3():
    with pytest.raises(ValueError, match="weight"):
        winograd_conv3x3(torch.randn(1, 2, 5, 5), torch.randn(3, 2, 5, 5))


def test_only_eligible_convs_are_swapped_and_the_state_dict_is_unchanged():
    net = nn.Sequential(nn.Conv2d(256, 256, 3, padding=1), nn.Conv2d(256, 256, 3, stride=2, padding=1),
                        nn.Conv2d(256, 256, 1), nn.Conv2d(64, 64, 3, padding=1),
                        nn.Conv2d(256, 256, 3, padding=2, dilation=2))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert [eligible(m) for m in net] == [True, False, False, False, False]
    assert winograd_convs(net) == 1
    assert [type(m) is WinogradConv2d for m in net] == [True, False, False, False, False]
    assert net.state_dict().keys() == before.keys()
    assert all(torch.equal(net.state_dict()[k], v) for k, v in before.items())
    teacher = copy.deepcopy(net)  # the EMA teacher is a deep copy: it must use its own weights
    assert type(teacher[0]) is WinogradConv2d
    with torch.no_grad():
        teacher[0].weight.zero_()
        teacher[0].bias.zero_()
    assert teacher[0](torch.randn(1, 256, 32, 32)).abs().max() == 0


def test_dispatch_takes_the_winograd_path_only_where_it_applies(monkeypatch):
    calls = []
    monkeypatch.setattr(fast_conv, "winograd_conv3x3",
                        lambda x, w, b: calls.append(tuple(x.shape)) or F.conv2d(x, w, b, padding=1))
    conv = nn.Conv2d(8, 8, 3, padding=1)
    winograd_convs(conv, min_channels=8, min_pixels=64)
    conv(torch.randn(1, 8, 8, 8))                      # 64 pixels: Winograd
    conv(torch.randn(1, 8, 4, 8))                      # 32 pixels: too small
    conv.double()(torch.randn(1, 8, 8, 8, dtype=torch.float64))  # not float32
    conv.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        conv(torch.randn(1, 8, 8, 8))                  # autocast: oneDNN's bf16 path
    conv3x3(torch.randn(1, 8, 8, 8), conv.weight, conv.bias, None)  # switched off
    conv3x3(torch.randn(1, 8, 8, 8), conv.weight, conv.bias, 64)
    assert calls == [(1, 8, 8, 8), (1, 8, 8, 8)]


def test_model_winograd_switch_gives_the_same_losses_and_gradients():
    """A small CondInst with 192-channel FPN and towers: `model.winograd=true` swaps the FPN
    outputs and the towers and routes the fused box outputs, and every loss and the FCOS
    losses' gradients equal the direct convolutions' to float rounding."""
    from boxdepth.config import load_config
    from boxdepth.engine.trainer import build_training
    from tests.test_condinst import TINY, _batch

    results = []
    for on in (False, True):
        cfg = load_config(None, TINY + ["model.fpn.out_channels=192", f"model.winograd={str(on).lower()}"])
        model, criterion, *_ = build_training(cfg, torch.device("cpu"))
        swapped = [m for m in model.modules() if isinstance(m, WinogradConv2d)]
        assert model.winograd_convs == (len(swapped) + 1 if on else 0)  # + the fused box outputs
        # FPN outputs (3) and both towers' convs (2 x 4) are wide; the controller is too but
        # only its weight is read (into the fused box outputs), so it stays a plain Conv2d;
        # the 16-channel mask branch is not wide
        assert len(swapped) == (3 + 8 if on else 0)
        assert type(model.fcos_head.controller) is nn.Conv2d
        for m in swapped:  # the test images are small: take the Winograd path at every level
            m.winograd_min_pixels = 1
        if on:
            model.fcos_head.box_outputs_winograd = 1
        images, mask, targets = _batch()
        batch = {"images": images, "image_mask": mask,
                 "targets": [{**t, "size": (64, 96), "orig_size": (64, 96)} for t in targets]}
        losses = criterion(model(images, mask, targets), batch, iteration=10)
        # gradients of the FCOS losses only: the mask losses' max-projections pick one pixel
        # per row/column, and with untrained (nearly flat) masks a rounding-level difference
        # can pick another one, a discrete change that float rounding does not bound
        sum(v for k, v in losses.items() if k.startswith("loss_fcos")).backward()
        results.append(({k: v.detach() for k, v in losses.items()},
                        {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (l0, g0), (l1, g1) = results
    assert l0.keys() == l1.keys() and g0.keys() == g1.keys()
    for k in l0:
        torch.testing.assert_close(l1[k], l0[k], rtol=1e-4, atol=1e-5)
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-3, atol=1e-5 * max(g0[n].abs().max().item(), 1.0))
