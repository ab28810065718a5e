"""DDP on CPU (gloo): one 2-rank step equals one single-process step on the same images,
and `torchrun --nproc_per_node=2 -m boxdepth.cli train` runs end to end."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

from boxdepth.data.build import build_dataset
from boxdepth.data.transforms import collate_batch
from boxdepth.engine.checkpoint import load_checkpoint
from boxdepth.engine.trainer import build_training, resolve_num_classes, train_step
from tests.conftest import tiny_config

# fixed size, no flip: both runs see exactly the same two images
FIXED = ("input.flip_prob=0.0", "solver.warmup_iters=0", "solver.base_lr=0.05",
         "loss.boxinst.warmup_iters=0", "solver.momentum=0.0")


def _one_step(cfg, samples, ddp: bool) -> dict[str, torch.Tensor]:
    """Apply one train_step on `samples` from the seed's initial weights; return the update."""
    model, criterion, optimizer, scheduler, scaler = build_training(cfg, torch.device("cpu"))
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    net = torch.nn.parallel.DistributedDataParallel(model) if ddp else model
    train_step(net, criterion, optimizer, scheduler, scaler, collate_batch(samples, 32), iteration=5)
    return {k: (v.detach() - before[k]).reshape(-1) for k, v in model.named_parameters()}


def _samples(data_dir: Path, *extra: str):
    cfg = tiny_config(data_dir, *FIXED, *extra)
    ds = build_dataset(cfg, "train", is_train=True)
    resolve_num_classes(cfg, ds)
    return cfg, [ds[0], ds[1]]


def _shutdown() -> None:
    """End a worker once both ranks are done. The barrier keeps a rank from leaving while its
    peer still uses the connection; then the worker leaves with os._exit(0), without
    destroy_process_group and the interpreter's teardown: gloo's threads being destroyed at
    exit sometimes end in std::terminate ("terminate called without an active exception",
    SIGABRT), seen in CI before and after a barrier was added, each time after all results
    were written. The test's assertions read those results, so nothing is lost."""
    tdist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _ddp_worker(rank: int, world: int, init_file: str, data_dir: str, out: str) -> None:
    tdist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    cfg, samples = _samples(Path(data_dir))
    cfg.solver.ims_per_batch = 1  # per rank
    delta = _one_step(cfg, [samples[rank]], ddp=True)
    if rank == 0:
        torch.save(delta, out)
    _shutdown()


def test_ddp_step_matches_single_process_step(tiny_synth, tmp_path):
    out = tmp_path / "ddp_delta.pt"
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tiny_synth), str(out)), nprocs=2)
    cfg, samples = _samples(tiny_synth)
    single = _one_step(cfg, samples, ddp=False)
    ddp = torch.load(out, weights_only=True)
    a = torch.cat([single[k] for k in sorted(single)])
    b = torch.cat([ddp[k] for k in sorted(ddp)])
    cos = torch.nn.functional.cosine_similarity(a, b, dim=0).item()
    assert a.norm() > 0
    assert cos >= 0.99, f"DDP update differs from single-process update: cos={cos:.4f}"
    ratio = (b.norm() / a.norm()).item()
    assert 0.9 < ratio < 1.1, f"DDP update has another scale: |ddp|/|single|={ratio:.3f}"


def test_torchrun_two_processes_end_to_end(tiny_synth, tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    assert torchrun, "torchrun not found next to the interpreter"
    cfg = tiny_config(tiny_synth)
    overrides = [f"data.{k}={v}" for k, v in cfg.data.items() if v is not None and k.endswith(("json", "root"))]
    from tests.conftest import TINY_MODEL
    cmd = [torchrun, "--nproc_per_node=2", "--standalone",
           "-m", "boxdepth.cli", "train", "synth_boxinst", *overrides, *TINY_MODEL,
           "data.num_workers=0", "input.min_size_train=[64]", "input.max_size_train=128",
           "input.min_size_test=64", "input.max_size_test=128", "solver.ims_per_batch=2",
           "solver.max_iter=2", "solver.checkpoint_period=0", "solver.warmup_iters=1",
           "log.period=1", "log.tensorboard=false", "eval.period=2", "eval.best_metric=bbox/AP",
           "--out", str(tmp_path / "run"), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ckpt = load_checkpoint(tmp_path / "run" / "model_final.pth")
    assert ckpt["iteration"] == 2
    assert (tmp_path / "run" / "metrics.json").exists()  # rank 0 evaluated after training
    assert "segm" in proc.stdout
    # periodic evaluation: both ranks infer their share of the 3 val images, rank 0 writes once
    from boxdepth.engine.logging import read_metrics
    evals = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "eval/bbox/AP" in r]
    assert [r["iter"] for r in evals] == [2] and evals[0]["best"] == "eval/bbox/AP"
    assert load_checkpoint(tmp_path / "run" / "model_best.pth")["iteration"] == 2
    final = json.loads((tmp_path / "run" / "metrics.json").read_text())  # same weights, all images
    assert evals[0]["eval/bbox/AP"] == final["bbox"]["AP"]


def _teacher_worker(rank: int, world: int, init_file: str, data_dir: str, out: str) -> None:
    from boxdepth.distill.ema import ModelEMA
    from boxdepth.distill.build import build_distiller

    tdist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    cfg, samples = _samples(Path(data_dir), "distill.enabled=true", "distill.teacher_size=64",
                            "distill.teacher_max_size=128", "distill.tau_m=0.0")
    model, criterion, optimizer, scheduler, scaler = build_training(cfg, torch.device("cpu"))
    net = torch.nn.parallel.DistributedDataParallel(model)
    teacher, distiller = ModelEMA(model, 0.5), build_distiller(cfg)
    for it in range(2):  # each rank sees a different image
        train_step(net, criterion, optimizer, scheduler, scaler, collate_batch([samples[rank]], 32),
                   iteration=it, distiller=distiller, teacher=teacher)
    flat = torch.cat([v.reshape(-1).float() for v in teacher.state_dict().values()])
    gathered = [torch.zeros_like(flat) for _ in range(world)]
    tdist.all_gather(gathered, flat)
    if rank == 0:
        torch.save(torch.stack(gathered), out)
    del net  # DDP's reducer holds the process group: release it before tearing the group down
    _shutdown()


def test_ddp_teachers_stay_identical(tiny_synth, tmp_path):
    out = tmp_path / "teachers.pt"
    mp.spawn(_teacher_worker, args=(2, str(tmp_path / "init"), str(tiny_synth), str(out)), nprocs=2)
    teachers = torch.load(out, weights_only=True)
    assert torch.equal(teachers[0], teachers[1])
