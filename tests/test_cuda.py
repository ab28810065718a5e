"""CUDA: the same numbers as on the CPU, fp16 AMP close to fp32, a training run with AMP and
distillation, and a DDP step over NCCL equal to a plain step. Marked `cuda`: skipped without
a CUDA device (CI), run by `benchmarks/gpu_check.sh` (`pytest -m cuda`) on a lent GPU."""
from __future__ import annotations

import json
import math
import os
import sys

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

from boxdepth.data.build import build_dataset
from boxdepth.data.transforms import collate_batch
from boxdepth.engine.amp import autocast
from boxdepth.engine.trainer import (batch_to_device, build_training, resolve_num_classes, train,
                                     train_step)
from tests.conftest import tiny_config

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
CUDA = torch.device("cuda", 0)
FIXED = ("input.flip_prob=0.0", "solver.warmup_iters=0", "loss.boxinst.warmup_iters=0",
         "model.depth_head=true")


def _first_batch(cfg):
    """The first two training images (fixed size, no flip: the same batch every call)."""
    ds = build_dataset(cfg, "train", is_train=True)
    resolve_num_classes(cfg, ds)
    return collate_batch([ds[0], ds[1]], size_divisibility=int(cfg.input.size_divisibility))


def _losses(cfg, cpu_batch, device: torch.device) -> dict[str, torch.Tensor]:
    """The first-step losses of the seed's initial weights (the same on every device)."""
    model, criterion, *_ = build_training(cfg, device)
    batch = batch_to_device(cpu_batch, device)
    with torch.no_grad():
        out = model(batch["images"], batch["image_mask"], batch["targets"])
        return criterion(out, batch, iteration=5)


@pytest.fixture
def no_tf32():
    """cuDNN convolutions in TF32 (the default) round inputs to 10 mantissa bits: compare in fp32."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def test_cuda_losses_match_cpu(tiny_synth, no_tf32):
    cfg = tiny_config(tiny_synth, *FIXED, depth=True)
    cpu_batch = _first_batch(cfg)
    ref, got = ({k: float(v) for k, v in _losses(cfg, cpu_batch, device).items()}
                for device in (torch.device("cpu"), CUDA))
    assert set(ref) == set(got) >= {"loss_prj", "loss_pairwise", "loss_depth", "loss_cons"}
    for k in ref:
        assert abs(got[k] - ref[k]) <= 1e-3 * max(1.0, abs(ref[k])), (k, got[k], ref[k])


def test_fp16_first_step_losses_close_to_fp32(tiny_synth):
    cfg = tiny_config(tiny_synth, *FIXED, depth=True)
    batch = batch_to_device(_first_batch(cfg), CUDA)
    model, criterion, *_ = build_training(cfg, CUDA)
    with torch.no_grad():
        ref = criterion(model(batch["images"], batch["image_mask"], batch["targets"]), batch, iteration=5)
        with autocast(CUDA, True):
            out = model(batch["images"], batch["image_mask"], batch["targets"])
            got = criterion(out, batch, iteration=5)
    assert out["mask_feats"].dtype == torch.float16  # AMP really ran the convolutions in fp16
    assert out["proposals"]["mask_logits"].dtype == torch.float32  # the dynamic head stays fp32
    for k in ref:
        assert math.isfinite(float(got[k])) and got[k].dtype == torch.float32, k
        assert abs(float(got[k]) - float(ref[k])) < 1e-2, (k, float(got[k]), float(ref[k]))


def test_training_with_fp16_amp_and_distillation_on_cuda(tiny_synth, tmp_path):
    cfg = tiny_config(tiny_synth, "device=cuda", "solver.amp=true", "model.depth_head=true",
                      "distill.enabled=true", "distill.start_iter=2", "distill.teacher_size=64",
                      "distill.teacher_max_size=128", "distill.ema_decay=0.5", depth=True)
    final = train(cfg, tmp_path / "run", progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["iter"] == 4 and "loss_distill" in rows[-1]
    assert all(v is not None and math.isfinite(v) for r in rows for k, v in r.items() if k.startswith("loss"))
    ckpt = torch.load(final, map_location="cpu", weights_only=False)
    assert ckpt["scaler"] and ckpt["scaler"]["scale"] > 0  # fp16 on CUDA: the GradScaler is saved
    assert all(v.dtype in (torch.float32, torch.int64) for v in ckpt["model"].values()
               if v.is_floating_point() or v.dtype == torch.int64)


def _nccl_worker(rank: int, init_file: str, data_dir: str, out: str) -> None:
    from pathlib import Path
    tdist.init_process_group("nccl", init_method=f"file://{init_file}", rank=rank, world_size=1)
    torch.cuda.set_device(0)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # as the parent
    delta = _one_cuda_step(tiny_config(Path(data_dir), *FIXED, "solver.momentum=0.0"), ddp=True)
    torch.save(delta, out)
    tdist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)


def _one_cuda_step(cfg, ddp: bool) -> dict[str, torch.Tensor]:
    cpu_batch = _first_batch(cfg)
    model, criterion, optimizer, scheduler, scaler = build_training(cfg, CUDA)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[0]) if ddp else model
    train_step(net, criterion, optimizer, scheduler, scaler, batch_to_device(cpu_batch, CUDA), iteration=5)
    return {k: (v.detach() - before[k]).reshape(-1).cpu() for k, v in model.named_parameters()}


def test_ddp_over_nccl_world_size_one_matches_plain_step(tiny_synth, tmp_path, no_tf32):
    out = tmp_path / "delta.pt"
    mp.spawn(_nccl_worker, args=(str(tmp_path / "init"), str(tiny_synth), str(out)), nprocs=1)
    single = _one_cuda_step(tiny_config(tiny_synth, *FIXED, "solver.momentum=0.0"), ddp=False)
    ddp = torch.load(out, weights_only=True)
    a = torch.cat([single[k] for k in sorted(single)])
    b = torch.cat([ddp[k] for k in sorted(ddp)])
    assert a.norm() > 0
    cos = torch.nn.functional.cosine_similarity(a, b, dim=0).item()
    assert cos >= 0.999, f"NCCL DDP update differs from the plain update: cos={cos:.5f}"
    assert 0.99 < (b.norm() / a.norm()).item() < 1.01
