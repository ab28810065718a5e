"""SGD with weight-decay rules and the warm-up + multi-step LR schedule (SPEC §6).

Parameter groups: normalisation weights/biases use `weight_decay_norm`; other biases use
`base_lr * bias_lr_factor`; frozen parameters are left out.

`impl` (config `solver.sgd_impl`) picks torch's SGD kernel; all three compute the same
update (fused differs by float rounding only):
  fused    one kernel per tensor that reads and writes param, grad and momentum once
           (CPU and CUDA); on the CPU 45 vs 68 ms per R-50 step (benchmarks/README.md)
  foreach  torch's multi-tensor path (detectron2's choice on CUDA; no gain on the CPU)
  loop     the per-tensor Python loop, torch's own default on the CPU
"""
from __future__ import annotations

from bisect import bisect_right

import torch
from torch import nn

_NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm, nn.GroupNorm, nn.LayerNorm)
SGD_IMPLS = {"fused": {"fused": True, "foreach": None}, "foreach": {"fused": None, "foreach": True},
             "loop": {"fused": None, "foreach": False}}


def build_optimizer(model: nn.Module, *, base_lr: float, momentum: float = 0.9,
                    weight_decay: float = 1e-4, weight_decay_norm: float = 0.0,
                    bias_lr_factor: float = 1.0, impl: str = "fused") -> torch.optim.SGD:
    if impl not in SGD_IMPLS:
        raise ValueError(f"solver.sgd_impl={impl!r}: expected one of {', '.join(SGD_IMPLS)}")
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    seen: set[int] = set()
    for module in model.modules():
        is_norm = isinstance(module, _NORM_TYPES)
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            lr, wd = base_lr, weight_decay
            if is_norm:
                wd = weight_decay_norm
            elif name == "bias":
                lr = base_lr * bias_lr_factor
            groups.setdefault((lr, wd), []).append(p)
    param_groups = [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]
    flags = SGD_IMPLS[impl]
    if flags["fused"] and any(p.device.type not in ("cpu", "cuda") for g in param_groups for p in g["params"]):
        flags = SGD_IMPLS["foreach"]
    optimizer = torch.optim.SGD(param_groups, lr=base_lr, momentum=momentum, **flags)

    def keep_impl(opt):  # a checkpoint's groups carry the saving run's flags: keep ours
        for g in opt.param_groups:
            g.update(flags)

    optimizer.register_load_state_dict_post_hook(keep_impl)
    return optimizer


def warmup_multistep_factor(it: int, *, warmup_iters: int, warmup_factor: float,
                            steps: list[int], gamma: float) -> float:
    """LR multiplier at iteration `it`: linear warm-up from `warmup_factor`, then x gamma at each step."""
    factor = gamma ** bisect_right(sorted(steps), it)
    if it < warmup_iters:
        alpha = it / warmup_iters
        factor *= warmup_factor * (1 - alpha) + alpha
    return factor


def build_lr_scheduler(optimizer: torch.optim.Optimizer, *, warmup_iters: int,
                       warmup_factor: float, steps: list[int], gamma: float):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: warmup_multistep_factor(
            it, warmup_iters=warmup_iters, warmup_factor=warmup_factor, steps=steps, gamma=gamma))
