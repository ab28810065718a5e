"""Cost of one CondInst/BoxInst training iteration, phase by phase, plus inference latency
and peak memory, on a synthetic batch (no dataset, no weights downloaded).

    python benchmarks/train_step.py [--device auto|cpu|cuda] [--preset r50|demo|small]
        [--sizes 512 800] [--iters 3] [--warmup 1] [--batch B] [--threads T]
        [--depth-head] [--depth-loss] [--boxes 5] [--e2e-iters N] [--distill]
        [--set KEY=VALUE ...] [--out bench.json]

Every size is one *setting* (short side, 4:3 landscape, long side capped at the
config's input.max_size_train); with more than one setting each runs in a fresh
process, so ru_maxrss and the allocator start clean. Per setting: build model,
criterion, optimizer, scheduler and scaler with `engine.trainer.build_training`; time
inference (eval mode, one image, postprocess included); then time training iterations.

How the split is taken: the real code runs, instrumented, never re-implemented.
  * forward: `CondInst.forward` is called as in training, with forward (pre-)hooks on
    backbone / fpn / fcos_head / mask_branch / mask_head and a wrapper around
    `target_assigner` that put marks (common.PhaseTimer: a phase = time since the
    previous mark, so nothing is lost or counted twice).
  * losses: the real `CondInstCriterion.forward` runs while the loss functions it looks
    up in `boxdepth.losses.criterion` are wrapped to mark after each call; the glue code
    before a function (pooling, indexing) is charged to that function's loss term, and
    inputs shared by several terms to the first that computes them (box masks ->
    loss_prj; valid mask and neg_log_same -> loss_pairwise; the stride-4 depth ->
    loss_depth with a depth head, else loss_cons).
  * step: the body of `engine.trainer.train_step` with marks between its stages; with
    `--e2e-iters` the unmodified `train_step` is timed as a whole too.
  * distill (`--distill`): after the plain iterations, the same step with an EMA teacher
    (`distill.ModelEMA` of the student) and `build_distiller(cfg)` (distill.enabled=true):
    the distiller module's `teacher_predictions`, `pseudo_targets_for_proposals`,
    `boxes_to_stride_masks`, `reliable_dice_loss` and the distiller's `match` are wrapped,
    and `teacher.update` is marked. distill_over_plain = median distill iteration /
    median plain iteration of this run; the teacher runs at distill.teacher_size.
JSON keys: "benchmark", "command", "args", "env", "results" (one per setting: "setting",
"model", "inference", "train", "train_step_e2e", "distill" (None without --distill),
"memory", "wall_s").
"""
from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (benchmarks/ is a folder of scripts, not a package)
from instrument import (INFER_HOOKS, TRAIN_HOOKS, instrument_criterion,  # noqa: E402
                        instrument_distiller, instrument_model, split_loss_marks)

REPO = Path(__file__).resolve().parents[1]
PRESETS = {
    "r50": {"config": None, "sizes": [512, 800], "overrides": [
        "model.backbone.name=resnet50", "model.backbone.norm=FrozenBN", "model.backbone.freeze_at=2",
        "model.backbone.weights=null", "model.fcos.num_classes=80"]},
    # the config the demo trains (embedded synthetic dataset, 4 classes, 256x192 images)
    "demo": {"config": "synth_boxinst", "sizes": [192], "overrides": ["model.fcos.num_classes=4"]},
    "small": {"config": "synth_boxinst", "sizes": [192],
              "overrides": ["model.fcos.num_classes=4", "model.backbone.name=small",
                            "model.backbone.norm=BN", "model.backbone.freeze_at=0"]},
}
# A random-init model scores every location below the default inference_th (the class
# prior is 0.01), so it would detect nothing; threshold 0 makes inference do its full
# work (pre_nms_topk candidates per level, NMS, post_nms_topk masks), a fixed worst case.
INFERENCE_OVERRIDES = ["model.fcos.inference_th=0.0"]
TRAIN_GROUPS = {
    "batch_to_device": ["batch_to_device"],
    "backbone_fpn": ["normalize", "backbone", "fpn"],
    "heads": ["fcos_head", "mask_branch", "target_assignment", "proposal_selection",
              "dynamic_mask_head", "forward_tail"],
    "losses": ["loss_fcos", "loss_prj", "loss_pairwise", "loss_depth", "loss_cons", "loss_mask", "loss_tail"],
    "loss_sync": ["loss_sync"],
    "backward": ["backward"],
    "optimizer": ["zero_grad", "clip_grad", "optimizer_step", "scheduler"],
}
DISTILL_GROUPS = {
    "student_forward_losses": [p for g in ("batch_to_device", "backbone_fpn", "heads", "losses")
                               for p in TRAIN_GROUPS[g]],
    "teacher_forward": ["teacher_forward"], "match": ["match"],
    "reliable_dice": ["reliable_dice", "distill_tail"],
    **{g: TRAIN_GROUPS[g] for g in ("loss_sync", "backward", "optimizer")},
    "ema_update": ["ema_update"],
}
INFER_GROUPS = {
    "to_device": ["to_device"],
    "backbone_fpn": ["normalize", "backbone", "fpn"],
    "heads": ["fcos_head", "mask_branch", "decode_nms", "dynamic_mask_head", "forward_tail"],
    "postprocess": ["postprocess"],
}


# ---------------------------------------------------------------- setup
def build_cfg(s: dict):
    from boxdepth.config import load_config
    preset = PRESETS[s["preset"]]
    depth_head = f"model.depth_head={'true' if s['depth_head'] else 'false'}"
    overrides = preset["overrides"] + INFERENCE_OVERRIDES + [depth_head]
    overrides += ["distill.enabled=true"] if s.get("distill") else []
    return load_config(s["config"] or preset["config"], overrides + list(s["overrides"]))


def synthetic_batch(hw: tuple[int, int], *, batch: int, num_boxes: int, num_classes: int,
                    with_depth: bool, size_divisibility: int, seed: int = 0) -> dict:
    """Collated CPU batch: smooth random-colour images, `num_boxes` random boxes per image (sides
    10-60 % of the image), and with `with_depth` a smooth depth map (bilinear 4x4 noise)."""
    from boxdepth.data.transforms import collate_batch
    g = torch.Generator().manual_seed(seed)
    h, w = hw
    samples = []
    for _ in range(batch):
        wh = torch.rand(num_boxes, 2, generator=g) * 0.5 + 0.1
        xy = torch.rand(num_boxes, 2, generator=g) * (1 - wh)
        boxes = torch.cat([xy, xy + wh], dim=1) * torch.tensor([w, h, w, h], dtype=torch.float32)
        # smooth colour blobs plus noise: neighbouring pixels are often similar, as in photos,
        # so the pairwise colour term has active pairs (its cost does not depend on it)
        blobs = F.interpolate(torch.rand(1, 3, 6, 8, generator=g) * 255, size=(h, w), mode="bilinear")[0]
        image = (blobs + torch.randn(3, h, w, generator=g) * 4).clamp(0, 255).to(torch.uint8)
        s = {"image": image, "boxes": boxes,
             "labels": torch.randint(0, num_classes, (num_boxes,), generator=g),
             "size": (h, w), "orig_size": (h, w), "has_depth": with_depth}
        if with_depth:
            coarse = torch.rand(1, 1, 4, 4, generator=g)
            d = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=True)[0]
            s["depth"] = (d - d.min()) / (d.max() - d.min()).clamp(min=1e-6)
        samples.append(s)
    return collate_batch(samples, size_divisibility=size_divisibility)


# ---------------------------------------------------------------- timed work
def instrumented_step(model, criterion, optimizer, scheduler, scaler, cpu_batch, device, iteration: int,
                      clip: float, timer: common.PhaseTimer, distiller=None, teacher=None, amp: bool = False):
    """`engine.trainer.train_step` with marks; returns (marks, logged losses, proposals).
    `amp` (solver.amp): the engine's autocast, bf16 on CPU / fp16 on CUDA, as train_step."""
    from boxdepth.engine import dist
    from boxdepth.engine.amp import autocast as amp_autocast
    from boxdepth.engine.trainer import NonFiniteLossError, batch_to_device
    timer.start()
    batch = batch_to_device(cpu_batch, device)
    timer.mark("batch_to_device")
    with amp_autocast(device, amp or scaler.is_enabled()):
        outputs = model(batch["images"], batch["image_mask"], batch["targets"])
        timer.mark("forward_tail")
        losses = criterion(outputs, batch, iteration=iteration)
        timer.mark("loss_tail")
        if teacher is not None:
            losses.update(distiller(teacher, outputs, batch)[0])
            timer.mark("distill_tail")
    logged = dist.reduce_loss_dict(losses)
    bad = [k for k, v in logged.items() if not math.isfinite(v)]
    if bad:
        raise NonFiniteLossError(f"loss term {', '.join(bad)} is not finite at iteration {iteration}")
    timer.mark("loss_sync")
    optimizer.zero_grad(set_to_none=True)
    timer.mark("zero_grad")
    scaler.scale(sum(losses.values())).backward()
    timer.mark("backward")
    if clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        timer.mark("clip_grad")
    scaler.step(optimizer)
    scaler.update()
    timer.mark("optimizer_step")
    scheduler.step()
    timer.mark("scheduler")
    if teacher is not None:
        teacher.update(model)
        timer.mark("ema_update")
    return timer.stop(), logged, len(outputs["proposals"]["im_inds"])


def bench_train(parts, cpu_batch, device, s: dict, clip: float, distiller=None, teacher=None) -> dict:
    model, criterion, optimizer, scheduler, scaler = parts
    timer = common.PhaseTimer(device)
    model.train()
    it0 = int(getattr(criterion, "warmup_iters", 0))  # pairwise/consistency at full weight
    runs, funcs, props, logged = [], [], [], {}
    groups = TRAIN_GROUPS if teacher is None else DISTILL_GROUPS
    with contextlib.ExitStack() as stack:
        stack.enter_context(instrument_model(model, timer, TRAIN_HOOKS))
        missing = stack.enter_context(instrument_criterion(timer))
        if teacher is not None:
            missing += stack.enter_context(instrument_distiller(distiller, timer))
        for i in range(s["warmup"] + s["iters"]):
            marks, logged, n_prop = instrumented_step(model, criterion, optimizer, scheduler, scaler, cpu_batch,
                                                      device, it0 + i, clip, timer, distiller, teacher,
                                                      amp=s.get("amp", False))
            if i >= s["warmup"]:
                phases, fn_times = split_loss_marks(marks)
                runs.append(phases)
                funcs.append(fn_times)
                props.append(n_prop)
    order = [p for members in groups.values() for p in members if any(p in r for r in runs)]
    total = common.summarize(sum(r.values()) for r in runs)
    return {"phases": common.summarize_runs(runs, order),
            "groups": common.summarize_runs([common.group_sums(r, groups) for r in runs]),
            "loss_functions": common.summarize_runs(funcs), "total": total,
            "images_per_s": s["batch"] / total["median"] if total["median"] else None,
            "proposals_per_image": sum(props) / max(len(props), 1) / s["batch"],
            "losses": logged, "uninstrumented_loss_functions": missing}


def bench_distill(parts, cfg, cpu_batch, device, s: dict, clip: float, plain_total: dict) -> dict:
    """Distillation iterations (teacher = EMA copy of the student, made before any instrumentation
    so it carries no hooks) with the same split as `bench_train`, plus the ratio to the plain step."""
    from boxdepth.distill.ema import ModelEMA
    from boxdepth.distill.build import build_distiller
    distiller, teacher = build_distiller(cfg).to(device), ModelEMA(parts[0], cfg.distill.ema_decay)
    r = bench_train(parts, cpu_batch, device, s, clip, distiller, teacher)
    ratio = r["total"]["median"] / plain_total["median"] if plain_total["median"] else None
    return {**r, "distill_over_plain": ratio, "teacher_size": int(cfg.distill.teacher_size),
            "teacher_max_size": int(cfg.distill.teacher_max_size), "match": cfg.distill.match}


def bench_e2e(parts, cpu_batch, device, s: dict, clip: float) -> dict | None:
    """The unmodified `train_step` (no marks, so no per-phase CUDA syncs)."""
    from boxdepth.engine.trainer import batch_to_device, train_step
    if s["e2e_iters"] <= 0:
        return None
    model, criterion, optimizer, scheduler, scaler = parts
    timer = common.PhaseTimer(device)
    times = []
    for i in range(s["e2e_iters"]):
        timer.start()
        train_step(model, criterion, optimizer, scheduler, scaler, batch_to_device(cpu_batch, device),
                   int(getattr(criterion, "warmup_iters", 0)) + i, clip, amp=s.get("amp", False))
        timer.mark("train_step")
        times.append(timer.stop()["train_step"])
    st = common.summarize(times)
    return {"total": st, "images_per_s": s["batch"] / st["median"]}


@torch.no_grad()
def bench_inference(model, cpu_batch, device, s: dict) -> dict:
    """One image through the model in eval mode, then `model.postprocess` (as inference_on_dataset)."""
    timer = common.PhaseTimer(device)
    images, mask, target = cpu_batch["images"][:1], cpu_batch["image_mask"][:1], cpu_batch["targets"][0]
    runs, dets = [], []
    model.eval()
    with instrument_model(model, timer, INFER_HOOKS):
        for i in range(s["warmup"] + s["iters"]):
            timer.start()
            x, m = images.to(device), mask.to(device)
            timer.mark("to_device")
            out = model(x, m)
            timer.mark("forward_tail")
            post = model.postprocess(out[0], target["size"], target["orig_size"])
            timer.mark("postprocess")
            marks = timer.stop()
            if i >= s["warmup"]:
                runs.append(marks)
                dets.append(len(post["boxes"]))
    model.train()
    total = common.summarize(sum(r.values()) for r in runs)
    return {"phases": common.summarize_runs(runs), "groups": common.summarize_runs(
            [common.group_sums(r, INFER_GROUPS) for r in runs]), "total": total,
            "images_per_s": 1.0 / total["median"] if total["median"] else None,
            "detections": sum(dets) / max(len(dets), 1)}


def run_setting(s: dict) -> dict:
    """Everything measured for one setting (runs in its own process when there are several)."""
    from boxdepth.engine.trainer import build_training
    from boxdepth.engine.allocator import keep_freed_memory
    malloc = keep_freed_memory()  # as engine.trainer.train does (BOXDEPTH_MALLOC=default: off)
    t_wall, contention = time.perf_counter(), common.CpuContention()
    torch.set_num_threads(s["threads"])
    device = torch.device(s["device"])
    cfg = build_cfg(s)
    s = {**s, "amp": bool(cfg.solver.amp)}  # bf16 autocast on CPU (no scaler there), fp16 + scaler on CUDA
    parts = build_training(cfg, device)
    model = parts[0]
    cpu_batch = synthetic_batch(tuple(s["hw"]), batch=s["batch"], num_boxes=s["boxes"],
                                num_classes=int(cfg.model.fcos.num_classes), with_depth=s["depth_loss"],
                                size_divisibility=int(cfg.input.size_divisibility))
    mem = common.MemoryProbe(device)
    mem.begin()
    inference = bench_inference(model, cpu_batch, device, s)
    mem.end("inference", s["warmup"] + s["iters"])
    mem.begin()
    clip = float(cfg.solver.clip_grad_norm)
    train = bench_train(parts, cpu_batch, device, s, clip)
    mem.end("train", s["warmup"] + s["iters"])
    e2e = bench_e2e(parts, cpu_batch, device, s, clip)
    distill = None
    if s["distill"]:
        mem.begin()
        distill = bench_distill(parts, cfg, cpu_batch, device, s, clip, train["total"])
        mem.end("distill", s["warmup"] + s["iters"])
    n_params = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    setting = {**s, "padded_hw": list(cpu_batch["images"].shape[-2:]), "amp": s["amp"], "malloc": malloc,
               "backbone": cfg.model.backbone.name, "load_average_end": common.load_average(),
               "cpu_contention": contention.result()}
    return {"setting": setting, "model": {"parameters": n_params, "trainable_parameters": n_train},
            "inference": inference, "train": train, "train_step_e2e": e2e, "distill": distill, "memory": mem.out,
            "wall_s": time.perf_counter() - t_wall}


# ---------------------------------------------------------------- CLI and report
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (auto: cuda when available)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="r50")
    p.add_argument("--config", default=None,
                   help="config file instead of the preset's (preset overrides still apply)")
    p.add_argument("--sizes", type=int, nargs="+", default=None,
                   help="short sides (4:3 images); default r50: 512 800, small: 192")
    p.add_argument("--iters", type=int, default=3, help="timed iterations (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed iterations first (default 1)")
    p.add_argument("--batch", type=int, default=None, help="images per iteration (default 1 on CPU, 2 on CUDA)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores available)")
    p.add_argument("--depth-head", action="store_true", help="model.depth_head=true (DG-MaskHead)")
    p.add_argument("--depth-loss", action="store_true", help="add a synthetic depth map: depth losses on")
    p.add_argument("--boxes", type=int, default=5, help="GT boxes per image (default 5)")
    p.add_argument("--e2e-iters", type=int, default=None,
                   help="extra iterations of the unmodified train_step (default: --iters on CUDA, 0 on CPU)")
    p.add_argument("--distill", action="store_true",
                   help="also time self-distillation iterations (EMA teacher at distill.teacher_size)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, repeatable (applied last)")
    p.add_argument("--out", default=None, help="write the JSON here (atomically)")
    args = p.parse_args(argv)
    if min(args.iters, args.boxes) < 1 or args.warmup < 0:
        p.error("--iters and --boxes must be >= 1 and --warmup >= 0")
    return args


def resolve_settings(args) -> list[dict]:
    from boxdepth.data.transforms import shortest_edge_shape
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"benchmarks/train_step.py: --device {device} but torch {torch.__version__} "
                         "sees no CUDA device")
    cuda = device.startswith("cuda")
    max_size = int(build_cfg({"preset": args.preset, "config": args.config, "depth_head": args.depth_head,
                              "overrides": args.overrides}).input.max_size_train)
    base = {"preset": args.preset, "config": args.config, "device": device,
            "batch": args.batch or (2 if cuda else 1), "threads": args.threads or common.available_cores(),
            "depth_head": args.depth_head, "depth_loss": args.depth_loss, "boxes": args.boxes,
            "distill": args.distill,
            "iters": args.iters, "warmup": args.warmup, "overrides": list(args.overrides),
            "e2e_iters": args.e2e_iters if args.e2e_iters is not None else (args.iters if cuda else 0)}
    return [{**base, "short_side": sz, "hw": list(shortest_edge_shape(480, 640, sz, max_size))}
            for sz in (args.sizes or PRESETS[args.preset]["sizes"])]


def group_rows(tr: dict, groups: dict, collapsed=()) -> list[tuple[str, dict]]:
    rows = []
    for g, members in groups.items():
        rows.append((g, tr["groups"][g]))
        if len(members) > 1 and g not in collapsed:
            rows += [(f"  {p}", tr["phases"][p]) for p in members if p in tr["phases"]]
    if "other" in tr["groups"]:
        rows.append(("other", tr["groups"]["other"]))
    return rows + [("total", tr["total"])]


def report(r: dict) -> str:
    s, tr, inf = r["setting"], r["train"], r["inference"]
    head = (f"== {s['preset']} ({s['backbone']}) {s['device']} {s['hw'][0]}x{s['hw'][1]} "
            f"(padded {s['padded_hw'][0]}x{s['padded_hw'][1]}), batch {s['batch']}, threads {s['threads']}, "
            f"depth_head={s['depth_head']} depth_loss={s['depth_loss']} amp={s['amp']} ==")
    lines = [head, f"train ({tr['total']['n']} timed iterations):",
             common.format_table(group_rows(tr, TRAIN_GROUPS), tr["total"]["median"]),
             f"train: {tr['images_per_s']:.3f} images/s; {tr['proposals_per_image']:.1f} proposals/image"]
    if r["train_step_e2e"]:
        e = r["train_step_e2e"]
        lines.append(f"train_step end to end (no marks): median {common.ms(e['total']['median'])} ms, "
                     f"{e['images_per_s']:.3f} images/s")
    if r.get("distill"):
        d = r["distill"]
        lines += [f"distill (teacher_size {d['teacher_size']}, max {d['teacher_max_size']}, "
                  f"{d['total']['n']} timed iterations):",
                  common.format_table(group_rows(d, DISTILL_GROUPS, ["student_forward_losses"]),
                                      d["total"]["median"]),
                  f"distill_over_plain: {d['distill_over_plain']:.3f} (median distill iteration "
                  f"{common.ms(d['total']['median'])} ms / plain {common.ms(tr['total']['median'])} ms)"]
    g = inf["groups"]
    lines.append(f"inference (1 image, {inf['total']['n']} timed): total {common.ms(inf['total']['median'])} ms = "
                 + ", ".join(f"{k} {common.ms(v['median'])}" for k, v in g.items())
                 + f" ms; {inf['detections']:.0f} detections")
    lines += common.MemoryProbe.describe(r["memory"])
    c = s["cpu_contention"]
    lines.append(f"setting wall time {r['wall_s']:.1f} s; cores used by this run {c['own_cores']}, "
                 f"by other processes meanwhile {c['other_cores']}")
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    settings = resolve_settings(args)
    torch.set_num_threads(settings[0]["threads"])
    device = torch.device(settings[0]["device"])
    out = {"benchmark": "train_step", "command": [sys.executable, *sys.argv], "args": vars(args),
           "env": common.environment(device, REPO), "results": []}
    out["env"]["other_cores_before"] = other = common.other_cores_now()
    warning = common.oversubscription_warning(settings[0]["threads"], other) if device.type == "cpu" else None
    if warning:
        print(warning, file=sys.stderr, flush=True)
    for s in settings:
        if len(settings) == 1:
            r = run_setting(s)
        else:  # a fresh process per setting: clean ru_maxrss, allocator and caches
            with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as ex:
                r = ex.submit(run_setting, s).result()
        out["results"].append(r)
        print(report(r), flush=True)
        if args.out:  # rewritten after every setting, so a long run keeps what it measured
            from boxdepth.fileio import atomic_write_json
            atomic_write_json(args.out, out)
    return out


if __name__ == "__main__":
    main()
