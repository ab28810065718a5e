"""SGD with weight-decay rules and the warm-up + multi-step LR schedule (SPEC §6).

Parameter groups: normalisation weights/biases use `weight_decay_norm`; other biases use
`base_lr * bias_lr_factor`; frozen parameters are left out.
"""
from __future__ import annotations

from bisect import bisect_right

import torch
from torch import nn

_NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm, nn.GroupNorm, nn.LayerNorm)


def build_optimizer(model: nn.Module, *, base_lr: float, momentum: float = 0.9,
                    weight_decay: float = 1e-4, weight_decay_norm: float = 0.0,
                    bias_lr_factor: float = 1.0) -> torch.optim.SGD:
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
    return torch.optim.SGD(param_groups, lr=base_lr, momentum=momentum)


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
