"""Winograd F(2x2, 3x3) against oneDNN's direct convolution (issue 25): per conv shape,
and the whole R-50 training step with `model.winograd` / `channels_last_train` variants.

    OMP_NUM_THREADS=2 python benchmarks/winograd_bench.py --threads 2 [--rounds 9]
        [--step-sizes 512 800] [--step-rounds 6] [--json FILE]

Part 1, per conv: forward + backward (input, weight and bias gradients) of one 3x3 conv,
batch 1, `F.conv2d` (NCHW input, oneDNN) against `winograd_conv3x3`, the two interleaved
for `--rounds` rounds (each round: one untimed call, then one timed); median wall ms. Part 2, per size in `--step-sizes`:
the R-50 BoxInst training step (benchmarks/train_step.py's r50 preset and synthetic
batch, batch 1) of each config variant, all built in one process and stepped in turn,
`--step-rounds` rounds, median of all but the first. Wall time: run it on a quiet
machine. The JSON records the environment (threads, allocator variables).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

CONV_SHAPES = [  # (C_in, C_out, H, W): FCOS towers / FPN / ResNet res4-res5 maps at 512-800
    (256, 256, 100, 136), (256, 256, 64, 88), (256, 238, 64, 88), (256, 256, 32, 44),
    (256, 256, 25, 34), (256, 256, 16, 22), (512, 512, 25, 34), (512, 512, 16, 22),
    (128, 128, 64, 88), (256, 80, 64, 88), (64, 64, 48, 64)]
STEP_VARIANTS = {
    "direct (winograd off, channels_last_train frozen)": ["model.winograd=false",
                                                          "model.backbone.channels_last_train=frozen"],
    "winograd, channels_last_train frozen": ["model.winograd=true", "model.backbone.channels_last_train=frozen"],
    "winograd, channels_last_train all (default)": ["model.winograd=true", "model.backbone.channels_last_train=all"],
}


def _warm_then_time_ms(fn) -> float:
    """One untimed call (caches, allocator), then one timed call, in ms."""
    fn()
    t0 = time.perf_counter()
    fn()
    return 1000 * (time.perf_counter() - t0)


def bench_convs(rounds: int) -> list[dict]:
    from boxdepth.ops.winograd import winograd_conv3x3
    rows = []
    for c, o, h, w in CONV_SHAPES:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1, c, h, w, generator=g).requires_grad_()
        weight = (torch.randn(o, c, 3, 3, generator=g) * 0.02).requires_grad_()
        bias = torch.randn(o, generator=g).requires_grad_()
        grad = torch.randn(1, o, h, w, generator=g)

        def step(conv):
            return lambda: conv(x, weight, bias).backward(grad)
        direct = step(lambda a, b, c_: F.conv2d(a, b, c_, padding=1))
        wino = step(winograd_conv3x3)
        d, wn = [], []
        for _ in range(rounds):  # interleaved, so drift hits both alike
            d.append(_warm_then_time_ms(direct))
            wn.append(_warm_then_time_ms(wino))
        row = {"c_in": c, "c_out": o, "hw": [h, w], "direct_ms": statistics.median(d),
               "winograd_ms": statistics.median(wn)}
        row["speedup"] = row["direct_ms"] / row["winograd_ms"]
        rows.append(row)
        print(f"{c:4d} -> {o:4d} at {h:3d}x{w:<3d}  direct {row['direct_ms']:7.1f} ms  "
              f"winograd {row['winograd_ms']:7.1f} ms  x{row['speedup']:.2f}", flush=True)
    return rows


def bench_step(size: int, rounds: int) -> dict:
    import train_step as ts
    from boxdepth.engine.trainer import build_training, train_step
    parts = {}
    for name, overrides in STEP_VARIANTS.items():
        cfg = ts.build_cfg({"preset": "r50", "config": None, "depth_head": False, "overrides": overrides})
        parts[name] = build_training(cfg, torch.device("cpu"))
    batch = ts.synthetic_batch((size, size * 4 // 3), batch=1, num_boxes=5, num_classes=80,
                               with_depth=False, size_divisibility=32)
    times = {name: [] for name in parts}
    losses = {}
    for r in range(rounds):
        for name, p in parts.items():
            t0 = time.perf_counter()
            losses[name] = train_step(*p, batch, 100 + r, 10.0)
            times[name].append(time.perf_counter() - t0)
    out = {name: {"median_s": statistics.median(t[1:]), "all_s": t, "last_losses": losses[name],
                  "winograd_convs": parts[name][0].winograd_convs} for name, t in times.items()}
    base = out[next(iter(STEP_VARIANTS))]["median_s"]
    for name, r in out.items():
        r["ratio_to_direct"] = r["median_s"] / base
        print(f"R-50 {size}: {name:55s} {r['median_s']:6.2f} s  x{r['ratio_to_direct']:.3f}", flush=True)
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--rounds", type=int, default=9, help="per-conv rounds (default 9)")
    p.add_argument("--step-sizes", type=int, nargs="*", default=[512, 800])
    p.add_argument("--step-rounds", type=int, default=6)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    from boxdepth.engine.allocator import keep_freed_memory
    malloc = keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    repo = Path(__file__).resolve().parents[1]
    out = {"benchmark": "winograd_bench", "command": " ".join(["python", *sys.argv]),
           "environment": {**common.environment(torch.device("cpu"), repo), "malloc": malloc},
           "args": vars(args),
           "convs": bench_convs(args.rounds),
           "step": {str(s): bench_step(s, args.step_rounds) for s in args.step_sizes}}
    if args.json:
        from boxdepth.fileio import atomic_write_json
        atomic_write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
