"""DDP with world size 1: the real trainer (`engine.trainer.train`) under an initialised
process group, NCCL on CUDA (gloo on the CPU), on a small synthetic RGB-D dataset. Part of
`benchmarks/gpu_check.sh`; it checks that DDP, SyncBN and the collectives work on the
device, not how fast several GPUs are.

    python benchmarks/ddp_check.py [--device auto|cpu|cuda] [--iters 20] [--batch 8]
        [--tiny] [--work DIR] [--out ddp.json]

The process group is initialised here (rank 0 of 1, file:// rendezvous), so `train` sees
`dist.is_dist()` and runs as under torchrun with several ranks: SyncBN mask branch on CUDA
(norm BN), `DistributedDataParallel` around the model, losses averaged over ranks. The
model: R-50 (random init, FrozenBN), depth-guided mask head with the depth losses, and
self-distillation from half-way (EMA teacher, depth-aware matching): the full method.
`--tiny`: the small from-scratch backbone at 64 px (a CPU stand-in for the dry run).
JSON keys: "benchmark", "command", "args", "backend", "world_size", "device", "sync_bn",
"all_reduce_ok", "train_seconds", "s_per_iter" (median logged step time), "final_iteration",
"losses" (last logged), "distill_rows" (logged windows with the distillation term), "ok"
(NCCL and SyncBN on CUDA, collectives, every iteration, finite losses, distillation ran);
exit status 1 when not ok.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as tdist

TINY = ["model.backbone.name=small", "model.backbone.norm=GN", "model.backbone.freeze_at=0",
        "model.backbone.width=32", "model.fpn.out_channels=64", "model.fcos.num_convs=1",
        "model.mask_branch.channels=32", "model.mask_branch.num_convs=1",
        "model.mask_head.topk_proposals_per_im=8"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (auto: cuda when available)")
    p.add_argument("--iters", type=int, default=20, help="training iterations (default 20)")
    p.add_argument("--batch", type=int, default=8, help="images per iteration (default 8)")
    p.add_argument("--tiny", action="store_true", help="small backbone at 64 px (CPU stand-in)")
    p.add_argument("--work", default=None, help="folder for the data and the run (default: a temp dir)")
    p.add_argument("--out", default=None, help="write the JSON here (atomically)")
    args = p.parse_args(argv)
    if args.iters < 2 or args.batch < 1:
        p.error("--iters must be >= 2 and --batch >= 1")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {args.device} but torch {torch.__version__} sees no CUDA device")
    return args


def make_config(args, data: Path):
    from boxdepth.config import load_config
    size = 64 if args.tiny else 192
    classes = len(json.loads((data / "train.json").read_text())["categories"])
    half = args.iters // 2
    overrides = [f"data.train_json={data / 'train.json'}", f"data.val_json={data / 'val.json'}",
                 f"data.image_root={data / 'images'}", f"data.depth_root={data / 'depth'}",
                 f"device={args.device}", "model.backbone.weights=null", f"model.fcos.num_classes={classes}",
                 "model.depth_head=true",
                 f"input.min_size_train=[{size}]", f"input.max_size_train={size * 4 // 3}",
                 f"solver.ims_per_batch={args.batch}", "solver.base_lr=0.01", "solver.warmup_iters=2",
                 f"solver.steps=[{args.iters}]", f"solver.max_iter={args.iters}", "solver.checkpoint_period=0",
                 f"loss.boxinst.warmup_iters={half}", "distill.enabled=true", f"distill.start_iter={half}",
                 f"distill.teacher_size={size}", f"distill.teacher_max_size={size * 4 // 3}",
                 "distill.ema_decay=0.9", "log.period=2", "log.tensorboard=false",
                 "data.num_workers=0" if args.tiny else "data.num_workers=2"]
    return load_config(None, overrides + (TINY if args.tiny else []))


def init_group(device: torch.device, work: Path) -> str:
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device.index or 0)
    tdist.init_process_group(backend, init_method=f"file://{work / 'pg_init'}", rank=0, world_size=1,
                             timeout=timedelta(minutes=2))
    return tdist.get_backend()


def collectives_ok(device: torch.device) -> bool:
    from boxdepth.engine import dist
    t = torch.full((4,), 3.0, device=device)
    summed = dist.all_reduce_sum(t)
    holder = [{"rank": dist.get_rank()}]
    tdist.broadcast_object_list(holder, src=0)  # object collectives (pickled) work too
    dist.barrier()
    return bool(torch.equal(summed, t)) and holder[0] == {"rank": 0}


def uses_sync_bn(cfg, device: torch.device) -> bool:
    from boxdepth.engine.trainer import build_training
    model = build_training(cfg, device)[0]
    return any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())


def run(args) -> dict:
    from boxdepth.data.synthetic import generate_synthetic_dataset
    from boxdepth.engine.checkpoint import load_checkpoint
    from boxdepth.engine.logging import read_metrics
    from boxdepth.engine.trainer import train
    work = Path(args.work or tempfile.mkdtemp(prefix="boxdepth_ddp_"))
    work.mkdir(parents=True, exist_ok=True)
    n = max(args.batch * 2, 4)
    generate_synthetic_dataset(work / "data", n_train=n, n_val=2, size=(96, 64) if args.tiny else (256, 192),
                               seed=0, preview=False, progress=False)
    cfg = make_config(args, work / "data")
    device = torch.device(args.device if ":" in args.device or args.device == "cpu" else "cuda:0")
    backend = init_group(device, work)
    sync_bn = uses_sync_bn(cfg, device)
    t0 = time.perf_counter()
    final = train(cfg, work / "run", progress=False)
    seconds = time.perf_counter() - t0
    rows = read_metrics(work / "run" / "metrics.jsonl")
    losses = {k: v for k, v in rows[-1].items() if k.startswith("loss")} if rows else {}
    out = {"backend": backend, "world_size": tdist.get_world_size(), "device": str(device), "sync_bn": sync_bn,
           "all_reduce_ok": collectives_ok(device), "train_seconds": round(seconds, 2),
           "s_per_iter": statistics.median(r["time_step"] for r in rows) if rows else None,
           "final_iteration": int(load_checkpoint(final)["iteration"]), "losses": losses,
           "distill_rows": sum(1 for r in rows if any(k.startswith("loss_distill") for k in r))}
    tdist.destroy_process_group()
    out["ok"] = (out["all_reduce_ok"] and out["final_iteration"] == args.iters and bool(losses)
                 and all(v is not None and math.isfinite(v) for v in losses.values())
                 and backend == ("nccl" if device.type == "cuda" else "gloo") and out["distill_rows"] > 0
                 and (out["sync_bn"] or device.type != "cuda"))  # the BN mask branch is SyncBN under DDP
    return out


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = {"benchmark": "ddp_check", "command": [sys.executable, *sys.argv], "args": vars(args), **run(args)}
    print(f"DDP world size {out['world_size']} over {out['backend']} on {out['device']}: "
          f"{args.iters} iterations x batch {args.batch} in {out['train_seconds']:.1f} s "
          f"(median step {out['s_per_iter']:.3f} s); SyncBN {out['sync_bn']}; "
          f"collectives ok {out['all_reduce_ok']}; ok {out['ok']}")
    print("last losses: " + ", ".join(f"{k} {v:.4f}" for k, v in out["losses"].items()))
    if args.out:
        from boxdepth.fileio import atomic_write_json
        atomic_write_json(args.out, out)
    if not out["ok"]:
        raise SystemExit("benchmarks/ddp_check.py: the DDP run did not finish cleanly (see the JSON)")
    return out


if __name__ == "__main__":
    main()
