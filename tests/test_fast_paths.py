"""The training step's fast paths (issue 25) compute what the plain modules compute, to
float rounding: FrozenBN folded into frozen convs, the FCOS head's three box-tower
outputs as one convolution, and the backbone's memory layout while training."""
import torch
from torch import nn

from boxdepth.models.backbones import build_backbone
from boxdepth.models.fcos import FCOSHead
from boxdepth.models.norm import FrozenBatchNorm2d, conv_norm


def _close(a, b, tol=1e-5):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol * max(b.abs().max().item(), 1.0))


def _frozen_conv_bn(seed=0):
    g = torch.Generator().manual_seed(seed)
    conv, bn = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), FrozenBatchNorm2d(16)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.2)
        for name in ("weight", "bias", "running_mean"):
            getattr(bn, name).copy_(torch.randn(16, generator=g))
        bn.running_var.copy_(torch.rand(16, generator=g) + 0.5)
    return conv, bn


def test_conv_norm_folds_a_frozen_conv_and_frozen_bn_to_float_rounding():
    conv, bn = _frozen_conv_bn()
    x = torch.randn(2, 8, 17, 23)
    conv.weight.requires_grad_(False)
    _close(conv_norm(conv, bn, x), bn(conv(x)))
    # channels-last weights and input (the backbone's frozen stages) give the same
    conv_cl = conv.to(memory_format=torch.channels_last)
    _close(conv_norm(conv_cl, bn, x.contiguous(memory_format=torch.channels_last)), bn(conv(x)))


def test_conv_norm_leaves_a_trainable_conv_unfolded():
    conv, bn = _frozen_conv_bn()
    x = torch.randn(1, 8, 9, 9)
    assert torch.equal(conv_norm(conv, bn, x), bn(conv(x)))
    conv_norm(conv, bn, x).sum().backward()
    assert conv.weight.grad is not None


def test_frozen_resnet_stages_build_no_graph_and_the_trainable_ones_get_gradients():
    model = build_backbone("resnet50", norm="FrozenBN", freeze_at=2)
    seen = {}
    model.layer2.register_forward_pre_hook(lambda m, args: seen.update(res2_grad=args[0].requires_grad))
    out = model(torch.randn(1, 3, 64, 64))
    assert seen["res2_grad"] is False  # the frozen stem and res2 record no autograd graph
    sum(v.sum() for v in out.values()).backward()
    assert model.conv1.weight.grad is None and model.layer1[0].conv1.weight.grad is None
    assert model.layer2[0].conv1.weight.grad is not None


def _head(controller=233):
    torch.manual_seed(0)
    head = FCOSHead(32, 3, num_convs=2, norm="GN", num_controller_params=controller)
    with torch.no_grad():  # non-trivial scales and biases, so a wrong split shows up
        for p in head.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return head


def _separate(head, feats):
    """The head's outputs with each output conv run as its own module (the plain path)."""
    out = {"cls_logits": [], "bbox_reg": [], "ctrness": [], "controller": []}
    for level, x in enumerate(feats):
        box_t = head.bbox_tower(x)
        out["cls_logits"].append(head.cls_logits(head.cls_tower(x)))
        out["bbox_reg"].append(torch.relu(head.scales[level](head.bbox_pred(box_t))))
        out["ctrness"].append(head.ctrness(box_t))
        if head.controller is not None:
            out["controller"].append(head.controller(box_t))
    return out


def _feats():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(2, 32, s, s + 3, generator=g) for s in (16, 8, 4, 2, 1)]


def test_fcos_head_box_outputs_as_one_conv_match_the_separate_convs():
    for controller in (233, 0):
        head, feats = _head(controller), _feats()
        fused, plain = head(feats), _separate(head, feats)
        for key in ("cls_logits", "bbox_reg", "ctrness"):
            for a, b in zip(fused[key], plain[key]):
                assert a.shape == b.shape
                _close(a, b)
        if controller:
            for a, b in zip(fused["controller"], plain["controller"]):
                _close(a, b)
        else:
            assert fused["controller"] is None


def test_fcos_head_fused_outputs_give_the_same_gradients():
    # float64: the fused conv sums the box tower's input gradient over all 238 output
    # channels at once, the plain path per conv; in float32 the two orders differ by
    # rounding relative to the largest gradient, in float64 they must agree to 1e-10
    head, feats = _head().double(), [f.double() for f in _feats()]
    weights = [torch.randn_like(t) for k in ("bbox_reg", "ctrness", "controller") for t in head(feats)[k]]

    def grads(out):
        head.zero_grad(set_to_none=True)
        ts = [t for k in ("bbox_reg", "ctrness", "controller") for t in out[k]]
        sum((t * w).sum() for t, w in zip(ts, weights)).backward()
        return {n: p.grad.clone() for n, p in head.named_parameters() if p.grad is not None}

    g_fused, g_plain = grads(head(feats)), grads(_separate(head, feats))
    assert g_fused.keys() == g_plain.keys()
    for name in g_plain:
        _close(g_fused[name], g_plain[name], tol=1e-10)


def _is_cl(t):
    return t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def test_channels_last_train_frozen_runs_the_trainable_convs_nchw_only_while_training():
    from boxdepth.models.layout import trainable_convs_nchw
    torch.manual_seed(0)
    plain = build_backbone("resnet18", norm="FrozenBN", freeze_at=2)
    fast = build_backbone("resnet18", norm="FrozenBN", freeze_at=2)
    fast.load_state_dict(plain.state_dict())
    fast.to(memory_format=torch.channels_last)
    assert trainable_convs_nchw(fast) == sum(1 for p in fast.parameters() if p.requires_grad and p.dim() == 4)
    assert _is_cl(fast.conv1.weight) and _is_cl(fast.layer1[0].conv1.weight)
    assert fast.layer2[0].conv1.weight.is_contiguous() and fast.layer4[1].conv2.weight.is_contiguous()
    seen = []
    fast.layer3[0].conv1.register_forward_hook(lambda m, args, out: seen.append(_is_cl(args[0])))
    x = torch.randn(1, 3, 64, 96)
    out_fast = fast(x.contiguous(memory_format=torch.channels_last))
    out_plain = plain(x)
    sum(v.sum() for v in out_fast.values()).backward()
    sum(v.sum() for v in out_plain.values()).backward()
    assert seen == [False]  # training: the trainable stages see NCHW
    for k in out_plain:
        _close(out_fast[k], out_plain[k])
    for (name, p), q in zip(fast.named_parameters(), plain.parameters()):
        if p.requires_grad:
            _close(p.grad, q.grad, tol=1e-4)
    with torch.no_grad():  # inference: NHWC throughout, as channels_last alone
        fast(x.contiguous(memory_format=torch.channels_last))
    assert seen == [False, True]


def test_build_model_reads_channels_last_train_and_refuses_other_values():
    import pytest
    from boxdepth.config import load_config
    from boxdepth.models.build import build_model
    base = ["model.backbone.name=resnet18", "model.backbone.weights=null", "model.fcos.num_classes=2"]
    model = build_model(load_config(None, base))  # default: all NHWC (with model.winograd)
    assert _is_cl(model.backbone.conv1.weight) and _is_cl(model.backbone.layer3[0].conv1.weight)
    model = build_model(load_config(None, base + ["model.backbone.channels_last_train=frozen"]))
    assert _is_cl(model.backbone.conv1.weight) and model.backbone.layer3[0].conv1.weight.is_contiguous()
    with pytest.raises(ValueError, match="model.backbone.channels_last_train"):
        build_model(load_config(None, base + ["model.backbone.channels_last_train=some"]))
