"""Distributed helpers: one code path for plain `python` (one process) and `torchrun`.

`torchrun --nproc_per_node=N` sets RANK/WORLD_SIZE/LOCAL_RANK; `init_distributed` reads
them and picks NCCL on CUDA, gloo on CPU. Everything here is a no-op when the process
group is not initialised, so library code can call it unconditionally.
"""
from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def init_distributed(device: str = "auto") -> torch.device:
    """Initialise the process group when launched by torchrun; return this rank's device."""
    want_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1 and not is_dist():
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if want_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if want_cuda else "gloo",
                                timeout=timedelta(minutes=30))
    if want_cuda:
        if not torch.cuda.is_available():
            raise ValueError(f"device={device} asked for CUDA, but torch.cuda.is_available() is False")
        index = int(os.environ.get("LOCAL_RANK", 0)) if is_dist() else (
            int(device.split(":")[1]) if ":" in device else 0)
        return torch.device("cuda", index)
    return torch.device("cpu")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' -> cuda when available, else cpu; an explicit device must be usable here."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"unknown device {device!r} (use auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} requested but CUDA is not available")
    return dev


def barrier() -> None:
    if is_dist():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (returns a new tensor; the input is untouched)."""
    if not is_dist():
        return t
    t = t.detach().clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    return all_reduce_sum(t) / get_world_size() if is_dist() else t


def reduce_loss_dict(losses: dict[str, torch.Tensor]) -> dict[str, float]:
    """Mean of each (detached) loss over ranks, as floats for logging."""
    if not losses:
        return {}
    names = sorted(losses)
    stacked = torch.stack([losses[k].detach().float().reshape(()) for k in names])
    stacked = all_reduce_mean(stacked)
    return {k: float(v) for k, v in zip(names, stacked.tolist())}


def cleanup() -> None:
    """Tear the process group down once every rank got here: a gloo rank destroying it while
    a peer still talks aborts that peer (std::terminate)."""
    if is_dist():
        dist.barrier()
        dist.destroy_process_group()
