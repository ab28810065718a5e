"""Where one training step's time goes: torch.profiler over `engine.trainer.train_step`,
attributed to the model's parts for the forward *and* the backward pass.

    python benchmarks/profile_step.py [--preset r50|demo|small] [--size 512] [--iters 2]
        [--warmup 1] [--threads 1] [--top 25] [--set KEY=VALUE ...] [--json FILE] [--trace FILE]

Same model, optimizer and synthetic batch as `train_step.py` (its `build_cfg`,
`synthetic_batch`; criterion at `loss.boxinst.warmup_iters`). Each top-level part's
forward runs inside a `record_function` range (`fwd/backbone`, `fwd/fpn`, `fwd/fcos_head`,
`fwd/mask_branch`, `fwd/mask_head`, `fwd/losses`; the rest of CondInst.forward is
`fwd/other`). A backward node is charged to the part whose forward op created it: the
profiler gives forward ops and `autograd::engine::evaluate_function: XBackward0` events
the same sequence number. `zero_grad`, `optimizer.step` and `scheduler.step` are ranges too.
Prints per-part forward/backward milliseconds per iteration and the top ops by self CPU
time; `--json` writes both, `--trace` a Chrome trace. Profiler overhead inflates small ops:
use it for shares, `train_step.py` for times.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import PRESETS, build_cfg, synthetic_batch  # noqa: E402

PARTS = ("backbone", "fpn", "fcos_head", "mask_branch", "mask_head")
BWD_PREFIX = "autograd::engine::evaluate_function: "


@contextlib.contextmanager
def part_ranges(model, criterion):
    """record_function ranges around each part's forward and the criterion's."""
    handles, open_ranges = [], {}

    def enter(name):
        def hook(*_):
            open_ranges[name] = record_function(f"fwd/{name}")
            open_ranges[name].__enter__()
        return hook

    def leave(name):
        def hook(*_):
            open_ranges.pop(name).__exit__(None, None, None)
        return hook

    for name in PARTS:
        mod = getattr(model, name)
        handles += [mod.register_forward_pre_hook(enter(name)), mod.register_forward_hook(leave(name))]
    handles += [criterion.register_forward_pre_hook(enter("losses")),
                criterion.register_forward_hook(leave("losses"))]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def attribute(events) -> dict[str, dict[str, float]]:
    """{part: {"forward": us, "backward": us}} summed over the profiled iterations."""
    seq_part: dict[int, str] = {}
    out: dict[str, dict[str, float]] = defaultdict(lambda: {"forward": 0.0, "backward": 0.0})

    def label(ev):
        p = ev
        while p is not None:
            if p.name.startswith("fwd/"):
                return p.name[4:]
            if p.name == "train_step/forward":
                return "other"
            p = p.cpu_parent
        return None

    for ev in events:
        if ev.name.startswith("fwd/"):
            out[ev.name[4:]]["forward"] += ev.cpu_time_total
        elif ev.name == "train_step/forward":
            out["other"]["forward"] += ev.cpu_time_total
        if ev.sequence_nr >= 0 and not ev.name.startswith(BWD_PREFIX):
            part = label(ev)
            if part is not None:
                seq_part.setdefault(ev.sequence_nr, part)
    for part in list(out):  # a part's forward range includes nested parts (none here) and "other" all
        if part == "other":
            out[part]["forward"] -= sum(v["forward"] for k, v in out.items() if k not in ("other", "losses"))
    for ev in events:
        if ev.name.startswith(BWD_PREFIX) and (ev.cpu_parent is None or not ev.cpu_parent.name.startswith(BWD_PREFIX)):
            out[seq_part.get(ev.sequence_nr, "unattributed")]["backward"] += ev.cpu_time_total
    return dict(out)


def main(argv=None) -> dict:
    from boxdepth.data.transforms import shortest_edge_shape
    from boxdepth.engine import dist
    from boxdepth.engine.trainer import batch_to_device, build_training

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="r50")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--iters", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--trace", type=Path, default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    s = {"preset": a.preset, "config": None, "depth_head": False, "overrides": a.overrides}
    cfg = build_cfg(s)
    device = torch.device("cpu")
    model, criterion, optimizer, scheduler, scaler = build_training(cfg, device)
    hw = shortest_edge_shape(480, 640, a.size, int(cfg.input.max_size_train))
    cpu_batch = synthetic_batch(hw, batch=1, num_boxes=5, num_classes=int(cfg.model.fcos.num_classes),
                                with_depth=False, size_divisibility=int(cfg.input.size_divisibility))
    it0 = int(getattr(criterion, "warmup_iters", 0))
    model.train()

    def step(i):
        batch = batch_to_device(cpu_batch, device)
        with record_function("train_step/forward"):
            outputs = model(batch["images"], batch["image_mask"], batch["targets"])
        losses = criterion(outputs, batch, iteration=it0 + i)
        dist.reduce_loss_dict(losses)
        with record_function("train_step/zero_grad"):
            optimizer.zero_grad(set_to_none=True)
        with record_function("train_step/backward"):
            sum(losses.values()).backward()
        with record_function("train_step/optimizer_step"):
            optimizer.step()
        with record_function("train_step/scheduler"):
            scheduler.step()

    with part_ranges(model, criterion):
        for i in range(a.warmup):
            step(i)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for i in range(a.iters):
                with record_function("train_step"):
                    step(a.warmup + i)
    if a.trace:
        prof.export_chrome_trace(str(a.trace))
    events = prof.events()
    n = a.iters
    total = sum(ev.cpu_time_total for ev in events if ev.name == "train_step") / n / 1e3
    parts = {k: {kk: vv / n / 1e3 for kk, vv in v.items()} for k, v in attribute(events).items()}
    ranges = {ev_name: sum(ev.cpu_time_total for ev in events if ev.name == ev_name) / n / 1e3
              for ev_name in ("train_step/forward", "fwd/losses", "train_step/zero_grad",
                              "train_step/backward", "train_step/optimizer_step", "train_step/scheduler")}
    top = []
    for e in sorted(prof.key_averages(group_by_input_shape=True), key=lambda e: -e.self_cpu_time_total)[:a.top]:
        top.append({"op": e.key, "shapes": str(e.input_shapes)[:120], "calls": e.count // n,
                    "self_ms": e.self_cpu_time_total / n / 1e3, "share": e.self_cpu_time_total / n / 1e3 / total})
    by_op = []
    for e in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:a.top]:
        by_op.append({"op": e.key, "calls": e.count // n, "self_ms": e.self_cpu_time_total / n / 1e3,
                      "share": e.self_cpu_time_total / n / 1e3 / total})
    print(f"== {a.preset} {hw[0]}x{hw[1]}, {a.threads} thread(s), {n} profiled iterations: "
          f"{total:.0f} ms per step (with profiler overhead) ==")
    print("ranges (ms/iter): " + ", ".join(f"{k} {v:.0f}" for k, v in ranges.items()))
    print(f"{'part':14s} {'forward ms':>11s} {'backward ms':>12s} {'share':>6s}")
    for k, v in sorted(parts.items(), key=lambda kv: -(kv[1]['forward'] + kv[1]['backward'])):
        print(f"{k:14s} {v['forward']:11.0f} {v['backward']:12.0f} {(v['forward'] + v['backward']) / total:6.1%}")
    print("top ops by self CPU time (ms/iter):")
    for t in by_op:
        print(f"  {t['self_ms']:8.1f} {t['share']:6.1%} x{t['calls']:<5d} {t['op']}")
    print("top (op, input shapes):")
    for t in top:
        print(f"  {t['self_ms']:8.1f} {t['share']:6.1%} x{t['calls']:<5d} {t['op']} {t['shapes']}")
    out = {"benchmark": "profile_step", "command": [sys.executable, *sys.argv], "args": {k: str(v) for k, v in vars(a).items()},
           "hw": list(hw), "step_ms_profiled": total, "ranges_ms": ranges, "parts_ms": parts,
           "top_ops": by_op, "top_ops_by_shape": top}
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
