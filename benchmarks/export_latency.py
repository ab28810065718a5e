"""onnxruntime (and TorchScript) vs PyTorch latency of the exported network on this CPU.

The demo's network (config synth_boxinst: EfficientNet-Lite0, FPN 64) at the demo's test
size: the embedded dataset's 256x192 images resized to short side 192 -> a 192x256 canvas,
batch 1. Timed, interleaved round-robin so that machine noise hits every backend alike:
  dense   the exported part alone: PyTorch `CondInst.dense` vs `ExportedModel.raw`
          (onnxruntime session.run / the TorchScript module)
  full    the whole `model(images, image_mask)` call: the network plus the Python
          post-processing (decode, NMS, dynamic mask head) that stays in the runner.
The model is the lite0 network with ImageNet backbone weights and untrained heads, so the
`full` rows include almost no detections: read them as the post-processing floor.
Also records the max abs difference of the dense outputs (ONNX and TorchScript vs PyTorch).

    python benchmarks/export_latency.py [--threads 1] [--iters 30] [--warmup 5]
        [--size 192x256] [--out benchmarks/results/export_latency_<date>.json]
"""
from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from common import CpuContention, environment, other_cores_now, summarize  # noqa: E402

from boxdepth.config import load_config  # noqa: E402
from boxdepth.export.exporter import export_model  # noqa: E402
from boxdepth.export.graph import HEAD_KEYS  # noqa: E402
from boxdepth.export.runner import ExportedModel  # noqa: E402
from boxdepth.fileio import atomic_write_json  # noqa: E402
from boxdepth.models.build import build_model  # noqa: E402


def _inputs(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return (torch.randint(0, 256, (1, 3, h, w), dtype=torch.uint8, generator=gen),
            torch.ones(1, h, w, dtype=torch.bool))


def _dense_ref(model, images, mask) -> list[torch.Tensor]:
    with torch.no_grad():
        head_out, mask_feats = model.dense(images, mask)
    return [t for k in HEAD_KEYS for t in head_out[k]] + [mask_feats]


def _build(tmp: Path, size_hw, threads: int):
    torch.manual_seed(0)
    cfg = load_config("synth_boxinst", ["model.fcos.num_classes=4"])
    model = build_model(cfg).eval()  # lite0 ImageNet weights from the `lite0` extra
    ckpt = tmp / "demo.pth"
    torch.save({"model": model.state_dict(), "config": cfg.to_dict()}, ckpt)
    export_model(ckpt, tmp / "demo.onnx", fmt="onnx", size_hw=size_hw)
    export_model(ckpt, tmp / "demo.pt", fmt="torchscript", size_hw=size_hw)
    return model, {"onnxruntime": ExportedModel(tmp / "demo.onnx", threads=threads),
                   "torchscript": ExportedModel(tmp / "demo.pt")}


def _time_round_robin(calls: dict, iters: int, warmup: int) -> dict[str, list[float]]:
    for _ in range(warmup):
        for fn in calls.values():
            fn()
    samples = {k: [] for k in calls}
    for _ in range(iters):
        for k, fn in calls.items():
            t0 = time.perf_counter()
            fn()
            samples[k].append(time.perf_counter() - t0)
    return samples


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    h, w = args.size
    images, mask = _inputs(h, w)
    with tempfile.TemporaryDirectory() as tmp:
        model, exported = _build(Path(tmp), (h, w), args.threads)
        ref = _dense_ref(model, images, mask)
        parity = {k: max(float((g - r).abs().max()) for g, r in zip(m.raw(images, mask), ref))
                  for k, m in exported.items()}
        calls = {"dense/pytorch": lambda: _dense_ref(model, images, mask)}
        calls.update({f"dense/{k}": (lambda m=m: m.raw(images, mask)) for k, m in exported.items()})
        calls["full/pytorch"] = lambda: torch.no_grad()(model)(images, mask)
        calls.update({f"full/{k}": (lambda m=m: m(images, mask)) for k, m in exported.items()})
        other_before = other_cores_now()
        probe = CpuContention()
        samples = _time_round_robin(calls, args.iters, args.warmup)
        contention = probe.result()
    stats = {k: summarize(v) for k, v in samples.items()}
    med = {k: v["median"] for k, v in stats.items()}
    ratios = {f"{part}/{k}_over_pytorch": med[f"{part}/{k}"] / med[f"{part}/pytorch"]
              for part in ("dense", "full") for k in exported}
    return {"benchmark": "export_latency", "command": " ".join(sys.argv), "args": vars(args) | {
                "size": f"{h}x{w}"},
            "env": environment(torch.device("cpu"), REPO) | {
                "onnxruntime_intra_op_threads": args.threads, "other_cores_before": other_before},
            "cpu_contention": contention, "parity_max_abs_diff": parity,
            "latency_s": stats, "median_ratio": ratios}


def _parse_hw(text: str) -> tuple[int, int]:
    h, w = (int(v) for v in text.lower().split("x"))
    return h, w


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1, help="torch and onnxruntime intra-op threads")
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--size", type=_parse_hw, default=(192, 256), help="canvas HxW (default 192x256)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    result = run(args)
    out = args.out or REPO / "benchmarks" / "results" / f"export_latency_{datetime.date.today()}.json"
    result["args"]["out"] = str(out)
    atomic_write_json(out, result)
    for k, v in result["latency_s"].items():
        print(f"{k:22s} median {v['median'] * 1e3:7.2f} ms  (p10 {v['p10'] * 1e3:.2f}, p90 {v['p90'] * 1e3:.2f})")
    for k, v in result["median_ratio"].items():
        print(f"{k:36s} {v:.3f}")
    print(f"parity max abs diff: {result['parity_max_abs_diff']}; other cores busy: "
          f"{result['cpu_contention']['other_cores']}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
