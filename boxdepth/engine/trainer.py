"""The training loop, one device or `torchrun` DDP, read top to bottom in `train`.

Run directory layout (rank 0 writes everything):
    config.yaml          the resolved config
    model_<iter>.pth     periodic checkpoints (see engine/checkpoint.py), model_final.pth
    metrics.jsonl        losses, lr and timings every `log.period` iterations, and val AP
                         rows every `eval.period` iterations (engine/periodic_eval.py)
    model_best.pth       the checkpoint with the best `eval.best_metric` (eval.period > 0)
    tb/                  TensorBoard scalars when tensorboard is installed
"""
from __future__ import annotations

import logging
import math
import time
from functools import partial
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from boxdepth.config import Config
from boxdepth.data.build import build_dataset
from boxdepth.data.sampler import SeededDataset, TrainingSampler
from boxdepth.data.transforms import collate_batch
from boxdepth.engine import dist
from boxdepth.engine.allocator import keep_freed_memory
from boxdepth.engine.amp import autocast as amp_autocast
from boxdepth.engine.amp import cpu_bf16_warning
from boxdepth.distill.build import build_distiller
from boxdepth.distill.ema import ModelEMA
from boxdepth.engine.checkpoint import save_checkpoint
from boxdepth.engine.health import TrainingHealth, regression_stats
from boxdepth.engine.logging import MetricsWriter
from boxdepth.engine.optim import build_lr_scheduler, build_optimizer
from boxdepth.engine.periodic_eval import PeriodicEvaluator
from boxdepth.engine.run_dir import check_resume_config, find_checkpoint, prepare_run_dir, start_run_files
from boxdepth.losses.build import build_criterion
from boxdepth.models.build import build_model

log = logging.getLogger("boxdepth")


class NonFiniteLossError(RuntimeError, ValueError):
    """A loss term is NaN/inf; a ValueError too, so the CLI reports it on one line."""


def build_train_loader(cfg: Config, *, start_iter: int = 0) -> DataLoader:
    """Endless loader of collated batches; each rank draws ims_per_batch / world_size images.
    `loader.dataset.dataset` is the underlying CocoBoxDataset. With distill.enabled the
    batches carry `originals` (the decoded images, for the teacher's input)."""
    world = dist.get_world_size()
    if cfg.solver.ims_per_batch % world:
        raise ValueError(f"solver.ims_per_batch={cfg.solver.ims_per_batch} is not divisible by "
                         f"the number of processes ({world})")
    per_rank = cfg.solver.ims_per_batch // world
    generator = torch.Generator()
    dataset = SeededDataset(build_dataset(cfg, "train", is_train=True, generator=generator,
                                          keep_original=bool(cfg.distill.enabled)), generator)
    sampler = TrainingSampler(len(dataset), seed=cfg.seed, rank=dist.get_rank(), world_size=world,
                              start=start_iter * per_rank)
    workers = int(cfg.data.num_workers)
    return DataLoader(dataset, batch_size=per_rank, sampler=sampler, num_workers=workers,
                      collate_fn=partial(collate_batch, size_divisibility=cfg.input.size_divisibility),
                      persistent_workers=workers > 0, pin_memory=torch.cuda.is_available())


def batch_to_device(batch: dict, device: torch.device) -> dict:
    out = dict(batch)
    for k in ("images", "image_mask", "depth", "has_depth"):
        if out.get(k) is not None:
            out[k] = out[k].to(device, non_blocking=True)
    out["targets"] = [{k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
                       for k, v in t.items()} for t in batch["targets"]]
    if batch.get("originals") is not None:
        out["originals"] = [o.to(device, non_blocking=True) for o in batch["originals"]]
    return out


def checkpoint_state(model, optimizer, scheduler, scaler, iteration: int, cfg: Config,
                     meta: dict, teacher: ModelEMA | None = None) -> dict:
    return {"model": dist_unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "iteration": iteration, "config": cfg.to_dict(), "meta": meta,
            "teacher": teacher.state_dict() if teacher is not None else None}


def dataset_meta(dataset) -> dict:
    """What inference needs to name its outputs without the training json."""
    return {"cat_ids": [int(c) for c in dataset.cat_ids], "class_names": list(dataset.class_names)}


def dist_unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def resolve_num_classes(cfg: Config, dataset) -> None:
    """Fill model.fcos.num_classes from the training json, or check a value that was set."""
    n = dataset.num_classes
    if cfg.model.fcos.num_classes is None:
        cfg.model.fcos.num_classes = n
    elif int(cfg.model.fcos.num_classes) != n:
        raise ValueError(f"model.fcos.num_classes={cfg.model.fcos.num_classes} but "
                         f"{cfg.data.train_json} has {n} categories")


def build_training(cfg: Config, device: torch.device):
    """Model, criterion, optimizer, LR scheduler and AMP scaler for `cfg`."""
    torch.manual_seed(cfg.seed)  # same initial weights on every rank
    model = build_model(cfg).to(device)
    if dist.is_dist() and device.type == "cuda" and cfg.model.mask_branch.norm == "BN":
        model.mask_branch = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model.mask_branch)
    criterion = build_criterion(cfg).to(device)
    s = cfg.solver
    optimizer = build_optimizer(model, base_lr=s.base_lr, momentum=s.momentum,
                                weight_decay=s.weight_decay, weight_decay_norm=s.weight_decay_norm,
                                bias_lr_factor=s.bias_lr_factor, impl=s.sgd_impl)
    scheduler = build_lr_scheduler(optimizer, warmup_iters=s.warmup_iters,
                                   warmup_factor=s.warmup_factor, steps=list(s.steps), gamma=s.gamma)
    # fp16 needs loss scaling; CPU AMP is bf16 (float32's range), so no scaler there
    scaler = torch.amp.GradScaler("cuda", enabled=bool(s.amp) and device.type == "cuda")
    return model, criterion, optimizer, scheduler, scaler


def restore(ckpt: dict, model, optimizer, scheduler, scaler) -> int:
    """Load a training checkpoint (dict) into the objects; returns the iteration to continue from."""
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:  # shapes of another config: one line, not a traceback
        raise ValueError(f"the checkpoint does not fit the model of this config: {e}") from None
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    if scaler.is_enabled() and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    return int(ckpt["iteration"])


def train_step(model, criterion, optimizer, scheduler, scaler, batch: dict, iteration: int,
               clip_grad_norm: float = 0.0, distiller=None, teacher=None,
               stats: dict | None = None, amp: bool = False) -> dict[str, float]:
    """One optimisation step; returns the losses averaged over ranks (floats). With a
    `teacher` (EMA model) the `distiller` adds Eq. 10's term and, after the step, the
    teacher follows the student (EMA); its matching statistics and the box regression's
    health statistics (engine/health.py) go into `stats`. `amp` (or an enabled fp16
    `scaler`): autocast, bf16 on CPU / fp16 on CUDA (engine/amp.py)."""
    with amp_autocast(batch["images"].device, amp or scaler.is_enabled()):
        outputs = model(batch["images"], batch["image_mask"], batch["targets"])
        losses = criterion(outputs, batch, iteration=iteration)
        if stats is not None:
            stats.update(regression_stats(outputs, criterion.num_classes))
        if teacher is not None:
            extra, distill_stats = distiller(teacher, outputs, batch)
            losses.update(extra)
            if stats is not None:
                stats.update(distill_stats)
    logged = dist.reduce_loss_dict(losses)
    bad = [k for k, v in logged.items() if not math.isfinite(v)]
    if bad:
        raise NonFiniteLossError(f"loss term {', '.join(bad)} is not finite at iteration {iteration}")
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(sum(losses.values())).backward()
    if clip_grad_norm > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    if teacher is not None:
        teacher.update(model)
    return logged


def train(cfg: Config, out_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
          progress: bool = True) -> Path:
    """Train per `cfg` into `out_dir`; returns the final checkpoint's path. A folder that
    holds a run needs `resume` or `overwrite` (engine/run_dir.py)."""
    malloc = keep_freed_memory()  # no page faults for the same activations every step
    device = dist.init_distributed(cfg.device)
    out_dir, is_main = Path(out_dir), dist.is_main_process()
    prepare_run_dir(out_dir, resume=resume, overwrite=overwrite)
    last_good, ckpt = find_resume(out_dir, resume, device)
    start_iter = int(ckpt["iteration"]) if ckpt else 0
    loader = build_train_loader(cfg, start_iter=start_iter)
    meta = dataset_meta(loader.dataset.dataset)
    resolve_num_classes(cfg, loader.dataset.dataset)
    check_resume_config(out_dir, cfg, ckpt, last_good)
    model, criterion, optimizer, scheduler, scaler = build_training(cfg, device)
    distiller = build_distiller(cfg) if cfg.distill.enabled else None
    teacher = resume_training(ckpt, last_good, cfg, model, optimizer, scheduler, scaler)
    del ckpt
    if is_main:  # only now can the run start: its files change from here on
        start_run_files(out_dir, cfg, start_iter)
        log.info(f"memory allocator: {malloc} (engine/allocator.py; BOXDEPTH_MALLOC=default turns it off)")
        slow_amp = cpu_bf16_warning(device, bool(cfg.solver.amp))
        if slow_amp:
            log.warning(slow_amp)
    if dist.is_dist():
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    writer = MetricsWriter(out_dir, enabled=is_main, tensorboard=cfg.log.tensorboard,
                           purge_step=start_iter or None)
    evaluator = PeriodicEvaluator(cfg, out_dir, writer=writer, device=device)
    max_iter, period = int(cfg.solver.max_iter), int(cfg.log.period)
    ckpt_period = int(cfg.solver.checkpoint_period)
    bar = tqdm(total=max_iter, initial=start_iter, disable=not (progress and is_main),
               desc="train", dynamic_ncols=True)
    # the checks watch the start of a run; a resumed run was watched when it started
    health = (TrainingHealth(num_periods=cfg.log.health_periods)
              if cfg.log.health_periods and start_iter == 0 else None)
    model.train()
    data_iter, timer, stats = iter(loader), {"data": 0.0, "step": 0.0, "n": 0}, {}
    for iteration in range(start_iter, max_iter):
        if distiller is not None and teacher is None and iteration >= cfg.distill.start_iter:
            teacher = ModelEMA(dist_unwrap(model), cfg.distill.ema_decay)  # a copy of the student
        t0 = time.perf_counter()
        batch = batch_to_device(next(data_iter), device)
        t1 = time.perf_counter()
        try:
            logged = train_step(model, criterion, optimizer, scheduler, scaler, batch, iteration,
                                cfg.solver.clip_grad_norm, distiller, teacher, stats,
                                amp=bool(cfg.solver.amp))
        except NonFiniteLossError as e:
            kept = f"last good checkpoint: {last_good}" if last_good else "no checkpoint written yet"
            raise NonFiniteLossError(f"{e}; {kept}") from None
        timer = {"data": timer["data"] + t1 - t0, "step": timer["step"] + time.perf_counter() - t1,
                 "n": timer["n"] + 1}
        done = iteration + 1
        if health is not None:
            health.observe_step(stats)
        if done % period == 0 or done == max_iter:
            write_period(writer, health, done, logged, optimizer.param_groups[0]["lr"], stats, timer)
            timer = {"data": 0.0, "step": 0.0, "n": 0}
        bar.set_postfix(_short_losses(logged), refresh=False)
        bar.update(1)
        if is_main and ckpt_period > 0 and done % ckpt_period == 0 and done < max_iter:
            last_good = save_checkpoint(out_dir / f"model_{done:07d}.pth", checkpoint_state(
                model, optimizer, scheduler, scaler, done, cfg, meta, teacher))
        evaluator(done, model=dist_unwrap(model), teacher=teacher, state=lambda: checkpoint_state(
            model, optimizer, scheduler, scaler, done, cfg, meta, teacher))
    bar.close()
    final = out_dir / "model_final.pth"
    if is_main and start_iter < max_iter:
        save_checkpoint(final, checkpoint_state(model, optimizer, scheduler, scaler, max_iter, cfg,
                                                meta, teacher))
    writer.close()
    dist.barrier()
    return final


def find_resume(out_dir: Path, resume: bool, device: torch.device) -> tuple[Path | None, dict | None]:
    """With `resume`, the newest checkpoint in `out_dir` that loads and its contents; else
    (None, None)."""
    path, ckpt = find_checkpoint(out_dir, map_location=device) if resume else (None, None)
    if resume and path is None:
        log.info(f"--resume: no checkpoint in {out_dir}; starting from scratch")
    return path, ckpt


def resume_training(ckpt: dict | None, path: Path | None, cfg: Config, model, optimizer, scheduler,
                    scaler) -> ModelEMA | None:
    """Load a training checkpoint (if any) into the objects; returns the EMA teacher when
    self-distillation had started before the checkpoint, else None."""
    if ckpt is None:
        return None
    restore(ckpt, model, optimizer, scheduler, scaler)
    log.info(f"resumed from {path} at iteration {int(ckpt['iteration'])}")
    if ckpt.get("teacher") is None:
        return None
    teacher = ModelEMA(model, cfg.distill.ema_decay)  # distillation had started: it goes on
    teacher.load_state_dict(ckpt["teacher"])
    return teacher


def write_period(writer: MetricsWriter, health: TrainingHealth | None, done: int,
                 logged: dict[str, float], lr: float, stats: dict, timer: dict) -> None:
    """One metrics.jsonl record at iteration `done`: the last step's losses, the learning
    rate, `stats`, the period's mean data/step seconds (`timer`: sums and count `n`) and
    the health checks' warnings (also logged)."""
    warnings = health.observe_period(done, logged) if health is not None else []
    for w in warnings:
        log.warning(w["message"])
    writer.write(done, {**logged, "loss": sum(logged.values()), "lr": lr, **stats,
                        "time_data": timer["data"] / timer["n"], "time_step": timer["step"] / timer["n"],
                        **({"health_warnings": warnings} if warnings else {})})


def _short_losses(logged: dict[str, float]) -> dict[str, str]:
    keys = ("loss_fcos_cls", "loss_fcos_loc", "loss_prj", "loss_pairwise", "loss_mask",
            "loss_depth", "loss_cons", "loss_distill")
    out = {"loss": f"{sum(logged.values()):.3f}"}
    out.update({k[5:].replace("fcos_", ""): f"{logged[k]:.3f}" for k in keys if k in logged})
    return out
