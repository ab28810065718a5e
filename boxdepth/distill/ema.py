"""The EMA teacher of the self-distillation stage (SPEC §3, paper Sec. 3.3).

    ema = ModelEMA(student, decay=0.999)   # a frozen deep copy of the student, eval mode
    ...optimizer.step()...
    ema.update(student)                    # theta_t = decay*theta_t + (1-decay)*theta_s
    ema(images, image_mask)                # = ema.module(...): the teacher's inference

`update` averages every parameter and every floating-point buffer (BN running
statistics included) and copies the other buffers (e.g. BN ``num_batches_tracked``).
A student wrapped in DistributedDataParallel / DataParallel is unwrapped first; every
rank holds the same teacher because DDP keeps the students equal.

`state_dict()` is the teacher network's own state dict (the same keys as the bare
student's, no prefix), so a checkpoint's ``teacher`` entry loads into a freshly built
model for evaluation, and `load_state_dict` restores the teacher exactly on --resume.
ModelEMA is meant to be held by the trainer, not nested inside another module's
state dict.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


def unwrap_parallel(model: nn.Module) -> nn.Module:
    """The bare network inside a DistributedDataParallel / DataParallel wrapper."""
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return model.module
    return model


class ModelEMA(nn.Module):
    def __init__(self, model: nn.Module, decay: float = 0.999):
        super().__init__()
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"boxdepth/distill/ema.py: decay must be in [0, 1], got {decay}")
        self.decay = float(decay)
        self.module = copy.deepcopy(unwrap_parallel(model))
        self.module.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> "ModelEMA":
        # the teacher predicts pseudo masks with running BN statistics: never train mode,
        # even when a parent module (or the trainer) switches everything to train
        return super().train(False)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    @torch.no_grad()
    def update(self, student: nn.Module) -> None:
        """theta_t = decay * theta_t + (1 - decay) * theta_s, parameters and float buffers."""
        student = unwrap_parallel(student)
        t_params, s_params = self._paired(dict(self.module.named_parameters()),
                                          dict(student.named_parameters()), "parameters")
        t_bufs, s_bufs = self._paired(dict(self.module.named_buffers()),
                                      dict(student.named_buffers()), "buffers")
        t_float = t_params + [t for t in t_bufs if t.is_floating_point()]
        s_float = s_params + [s for t, s in zip(t_bufs, s_bufs) if t.is_floating_point()]
        if t_float:
            s_float = [s.detach().to(dtype=t.dtype) for t, s in zip(t_float, s_float)]
            torch._foreach_mul_(t_float, self.decay)
            torch._foreach_add_(t_float, s_float, alpha=1.0 - self.decay)
        for t, s in zip(t_bufs, s_bufs):
            if not t.is_floating_point():
                t.copy_(s)

    @staticmethod
    def _paired(teacher: dict, student: dict, what: str):
        if teacher.keys() != student.keys():
            missing = sorted(set(teacher) ^ set(student))[:5]
            raise ValueError(f"boxdepth/distill/ema.py: student and teacher {what} differ "
                             f"(e.g. {missing}); the teacher must be a copy of this student")
        names = list(teacher)
        for n in names:
            if teacher[n].shape != student[n].shape:
                raise ValueError(f"boxdepth/distill/ema.py: {what[:-1]} {n!r} has shape "
                                 f"{tuple(student[n].shape)} in the student but "
                                 f"{tuple(teacher[n].shape)} in the teacher")
        return [teacher[n] for n in names], [student[n] for n in names]

    def state_dict(self, *args, **kwargs):
        return self.module.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        result = self.module.load_state_dict(state_dict, strict=strict, assign=assign)
        self.module.requires_grad_(False)  # assign=True would bring the loaded flags along
        return result
