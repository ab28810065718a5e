"""bf16 autocast on the CPU (`solver.amp=true`) against float32: one training step, side by side.

    python benchmarks/amp_cpu.py [--presets demo r50] [--rounds 2] [--iters 3] [--threads T]
        [--out benchmarks/results/amp_cpu_<date>.json]

Each (preset, precision) runs `benchmarks/train_step.py --preset P --e2e-iters N` in its own
process (the unmodified `engine.trainer.train_step`, which autocasts to bfloat16 on the CPU
when solver.amp is true); fp32 and bf16 alternate for --rounds rounds so that machine drift
hits both alike. The step time of a run is its end-to-end median; per preset the JSON holds
every run, the medians over rounds and `bf16_over_fp32` (< 1: bf16 is faster). The demo
preset trains at its batch of 8 (256x192), r50 at batch 1 and short side --r50-size (512).

Whether bf16 can pay on a CPU depends on its instructions, so the JSON records the flags
that matter (avx512_bf16, amx_bf16, amx_tile; avx512f, avx2 for reference) and torch's CPU
capability. Without avx512_bf16/AMX, oneDNN emulates bf16 through float32 conversions.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from boxdepth.engine import machine  # noqa: E402
from boxdepth.fileio import atomic_write_json  # noqa: E402

HERE = Path(__file__).resolve().parent
FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile", "avx512f", "avx2")
PRESET_ARGS = {"demo": ["--preset", "demo", "--batch", "8", "--sizes", "192"],
               "r50": ["--preset", "r50", "--batch", "1"]}  # + --sizes R50_SIZE


def cpu_flags(cpuinfo: str | None = None) -> dict:
    """{"model": str | None, "flags": {flag: bool}, "torch_cpu_capability": str}."""
    flags = machine.cpu_flags(cpuinfo) or set()
    model = machine.cpu_model() if cpuinfo is None else next(
        (line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), None)
    return {"model": model, "flags": {f: f in flags for f in FLAGS},
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}


def one_run(preset: str, amp: bool, a: argparse.Namespace) -> float:
    """Median end-to-end train step (ms) of one train_step.py process."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        size = ["--sizes", str(a.r50_size)] if preset == "r50" else []
        cmd = [sys.executable, str(HERE / "train_step.py"), *PRESET_ARGS[preset], *size, "--device", "cpu",
               "--iters", "1", "--warmup", "1", "--e2e-iters", str(a.iters), "--threads", str(a.threads),
               "--set", f"solver.amp={'true' if amp else 'false'}", "--out", str(out)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        r = json.loads(out.read_text())["results"][0]
    if r["setting"]["amp"] != amp:
        raise SystemExit(f"train_step.py ran amp={r['setting']['amp']}, asked for {amp}")
    return 1000 * r["train_step_e2e"]["total"]["median"]


def measure(a: argparse.Namespace) -> dict:
    presets = {}
    for preset in a.presets:
        runs = {"fp32": [], "bf16": []}
        for rnd in range(a.rounds):
            for name in ("fp32", "bf16") if rnd % 2 == 0 else ("bf16", "fp32"):
                runs[name].append(round(one_run(preset, name == "bf16", a), 1))
                print(f"{preset} round {rnd} {name}: {runs[name][-1]:.0f} ms", flush=True)
        med = {k: statistics.median(v) for k, v in runs.items()}
        presets[preset] = {"runs_ms": runs, "fp32_ms": med["fp32"], "bf16_ms": med["bf16"],
                           "bf16_over_fp32": round(med["bf16"] / med["fp32"], 3)}
    return presets


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", choices=sorted(PRESET_ARGS), default=["demo", "r50"])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--iters", type=int, default=3, help="timed end-to-end steps per run")
    ap.add_argument("--threads", type=int, default=common.available_cores())
    ap.add_argument("--r50-size", type=int, default=512, help="r50's short side (default 512)")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    if a.rounds < 1 or a.iters < 1:
        ap.error("--rounds and --iters must be >= 1")
    result = {"benchmark": "amp_cpu", "date": str(datetime.date.today()),
              "command": "python benchmarks/amp_cpu.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
              "cpu": cpu_flags(), "threads": a.threads, "r50_size": a.r50_size, "rounds": a.rounds, "iters": a.iters,
              "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MALLOC_ARENA_MAX", "LD_PRELOAD",
                                                     "MALLOC_MMAP_THRESHOLD_")},
              "torch": torch.__version__, "presets": measure(a)}
    out = a.out or Path("benchmarks/results") / f"amp_cpu_{datetime.date.today()}.json"
    atomic_write_json(out, result)
    for name, p in result["presets"].items():
        print(f"{name}: fp32 {p['fp32_ms']:.0f} ms, bf16 {p['bf16_ms']:.0f} ms, bf16/fp32 {p['bf16_over_fp32']:.2f}")
    print(f"cpu flags: {result['cpu']['flags']}; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
