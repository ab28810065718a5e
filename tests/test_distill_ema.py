"""ModelEMA: copy at start, the EMA formula over parameters and buffers, eval mode, state."""
import pytest
import torch
from torch import nn

from boxdepth.distill.ema import ModelEMA


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 1)
        self.bn = nn.BatchNorm2d(3)  # float running stats + int64 num_batches_tracked
        self.register_buffer("scale", torch.tensor([2.0, 3.0]))

    def forward(self, x):
        return self.bn(self.conv(x))


def _perturb(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in list(model.parameters()) + [model.bn.running_mean, model.bn.running_var, model.scale]:
            t.copy_(torch.randn(t.shape, generator=g).abs() + 0.1)
        model.bn.num_batches_tracked.fill_(7 + seed)


def test_initial_copy_frozen_and_independent():
    student = Tiny()
    ema = ModelEMA(student, decay=0.9)
    for (n, t), (_, s) in zip(ema.module.state_dict().items(), student.state_dict().items()):
        assert torch.equal(t, s), n
    assert all(not p.requires_grad for p in ema.module.parameters())
    assert all(p.requires_grad for p in student.parameters())
    with torch.no_grad():
        student.conv.weight.add_(1.0)
    assert not torch.equal(ema.module.conv.weight, student.conv.weight)  # a copy, not shared storage


def test_update_formula_parameters_and_buffers():
    d = 0.75
    student = Tiny()
    _perturb(student, 0)
    ema = ModelEMA(student, decay=d)
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    _perturb(student, 1)
    ema.update(student)
    after, s = ema.module.state_dict(), student.state_dict()
    for k in ("conv.weight", "conv.bias", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var", "scale"):
        torch.testing.assert_close(after[k], d * before[k] + (1 - d) * s[k])
        assert not torch.equal(after[k], before[k]) and not torch.equal(after[k], s[k])
    assert after["bn.num_batches_tracked"].dtype == torch.int64
    assert int(after["bn.num_batches_tracked"]) == 8  # copied, not averaged


def test_two_updates_compound():
    d = 0.5
    student = Tiny()
    _perturb(student, 0)
    ema = ModelEMA(student, decay=d)
    t0 = ema.module.conv.weight.clone()
    _perturb(student, 1)
    s1 = student.conv.weight.detach().clone()
    ema.update(student)
    _perturb(student, 2)
    ema.update(student)
    expected = d * (d * t0 + (1 - d) * s1) + (1 - d) * student.conv.weight.detach()
    torch.testing.assert_close(ema.module.conv.weight, expected)


def test_ddp_like_wrapper_is_unwrapped():
    student = Tiny()
    wrapped = nn.DataParallel(student)  # same `.module` layout as DistributedDataParallel
    ema = ModelEMA(wrapped, decay=0.0)
    assert isinstance(ema.module, Tiny)
    _perturb(student, 3)
    ema.update(wrapped)
    torch.testing.assert_close(ema.module.conv.weight, student.conv.weight.detach())


def test_stays_in_eval_mode():
    ema = ModelEMA(Tiny())
    assert not ema.training and not ema.module.training and not ema.module.bn.training
    parent = nn.ModuleDict({"student": Tiny(), "teacher": ema})
    parent.train()
    assert parent["student"].training
    assert not ema.training and not ema.module.bn.training
    ema.train(True)
    assert not ema.module.training
    x = torch.randn(2, 2, 4, 4)
    with torch.no_grad():
        out = ema(x)
    torch.testing.assert_close(out, ema.module(x))
    assert int(ema.module.bn.num_batches_tracked) == 0  # eval BN: statistics untouched


def test_state_dict_round_trip_restores_exactly(tmp_path):
    student = Tiny()
    _perturb(student, 0)
    ema = ModelEMA(student, decay=0.9)
    _perturb(student, 1)
    ema.update(student)
    sd = ema.state_dict()
    assert set(sd) == set(student.state_dict())  # no prefix: loads into a bare model too
    torch.save({"teacher": sd}, tmp_path / "ckpt.pth")
    loaded = torch.load(tmp_path / "ckpt.pth", weights_only=True)["teacher"]
    fresh = ModelEMA(Tiny(), decay=0.9)
    fresh.load_state_dict(loaded)
    for k, v in ema.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    assert all(not p.requires_grad for p in fresh.module.parameters())
    bare = Tiny()
    bare.load_state_dict(loaded)
    assert torch.equal(bare.conv.weight, ema.module.conv.weight)


def test_mismatched_student_is_a_clear_error():
    ema = ModelEMA(Tiny())
    with pytest.raises(ValueError, match="differ"):
        ema.update(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="decay"):
        ModelEMA(Tiny(), decay=1.5)
