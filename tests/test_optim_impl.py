"""solver.sgd_impl (engine/optim.py): torch's fused / foreach / per-tensor SGD give the
same update up to float rounding, the configured kernel is the one used, and a checkpoint
saved with another kernel does not switch it back on load."""
import pytest
import torch
from torch import nn

from boxdepth.engine.optim import SGD_IMPLS, build_optimizer


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(4, 8), nn.Conv2d(8, 2, 1))


def _train(impl, steps=4):
    model = _model()
    opt = build_optimizer(model, base_lr=0.1, weight_decay=1e-4, bias_lr_factor=2.0, impl=impl)
    x = torch.randn(2, 3, 9, 9, generator=torch.Generator().manual_seed(1))
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        model(x).square().mean().backward()
        opt.step()
    return opt, [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("impl", sorted(SGD_IMPLS))
def test_each_impl_is_used_and_matches_the_per_tensor_loop(impl):
    opt, params = _train(impl)
    assert all(g["fused"] == SGD_IMPLS[impl]["fused"] and g["foreach"] == SGD_IMPLS[impl]["foreach"]
               for g in opt.param_groups)
    _, reference = _train("loop")
    for p, q in zip(params, reference):
        if impl == "fused":
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
        else:  # foreach runs the same ops as the loop
            assert torch.equal(p, q)


def test_the_default_is_fused_and_build_training_reads_the_config():
    from boxdepth.config import load_config
    from boxdepth.engine.trainer import build_training
    assert build_optimizer(_model(), base_lr=0.1).param_groups[0]["fused"] is True
    cfg = load_config("synth_boxinst", ["model.fcos.num_classes=2", "solver.sgd_impl=loop"])
    opt = build_training(cfg, torch.device("cpu"))[2]
    assert all(g["foreach"] is False and not g["fused"] for g in opt.param_groups)


def test_loading_a_checkpoint_of_another_impl_keeps_the_configured_one():
    old, _ = _train("loop", steps=1)
    opt = build_optimizer(_model(), base_lr=0.1, weight_decay=1e-4, bias_lr_factor=2.0, impl="fused")
    opt.load_state_dict(old.state_dict())
    assert all(g["fused"] is True and g["foreach"] is None for g in opt.param_groups)


def test_an_unknown_impl_is_refused_naming_the_key():
    with pytest.raises(ValueError, match="solver.sgd_impl"):
        build_optimizer(_model(), base_lr=0.1, impl="adam")
