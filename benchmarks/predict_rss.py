"""Peak memory of `boxdepth predict` on a 12 MP photo with 27 detections (issue 24, item 6).

    python benchmarks/predict_rss.py --out /tmp/rss [--code DIR ...] [--json results.json]

Writes into --out a synthetic 4000x3000 JPEG (smooth shading, rectangles, noise) and a
checkpoint of the demo's network (config synth_boxinst, 4 classes, random init: no
weights needed) whose config keeps exactly 27 detections (`model.fcos.inference_th=0`,
`post_nms_topk=27`); then, for each --code folder (a boxdepth source tree; default: the
installed package), runs under `/usr/bin/time -v`

    PYTHONPATH=DIR python -m boxdepth.cli predict OUT/photo.jpg --weights OUT/model.pth \
        --out OUT/pred-N --device cpu --score-thresh 0 --quiet

(score threshold 0: all 27 masks are drawn and written) and prints the maximum resident
set size and wall time of each (run from OUT, so that PYTHONPATH decides which code runs).
One thread (OMP_NUM_THREADS=1) so that the runs compare.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def make_photo(path: Path, h: int = 3000, w: int = 4000) -> None:
    rng = np.random.RandomState(0)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([120 + 60 * np.sin(xx / 500), 110 + 50 * np.cos(yy / 400),
                    100 + 40 * np.sin((xx + yy) / 700)], axis=2)
    for _ in range(40):  # objects: flat rectangles of random colour
        y0, x0 = rng.randint(0, h - 200), rng.randint(0, w - 200)
        img[y0:y0 + rng.randint(100, 900), x0:x0 + rng.randint(100, 900)] = rng.randint(0, 256, 3)
    img += rng.normal(0, 6, img.shape).astype(np.float32)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=90)


def make_checkpoint(path: Path) -> None:
    from boxdepth.config import load_config
    from boxdepth.models.build import build_model

    cfg = load_config("synth_boxinst", ["model.fcos.num_classes=4", "model.fcos.inference_th=0.0",
                                        "model.fcos.post_nms_topk=27", "device=cpu"])
    torch.manual_seed(0)
    model = build_model(cfg, load_backbone_weights=False)
    torch.save({"model": model.state_dict(), "config": cfg.to_dict(),
                "meta": {"cat_ids": [1, 2, 3, 4], "class_names": ["a", "b", "c", "d"]}}, path)


def measure(code: str | None, out: Path, n: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if code:
        env["PYTHONPATH"] = str(Path(code).resolve())
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "boxdepth.cli", "predict",
           str(out / "photo.jpg"), "--weights", str(out / "model.pth"), "--out", str(out / f"pred-{n}"),
           "--device", "cpu", "--score-thresh", "0", "--quiet"]
    # cwd: `python -m` puts the working directory first on sys.path, before PYTHONPATH
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=out)
    if proc.returncode != 0:
        raise SystemExit(f"predict failed ({code}):\n{proc.stderr[-3000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time .*: (\S+)", proc.stderr).group(1)
    detections = len(json.loads((out / f"pred-{n}" / "results.json").read_text()))
    return {"code": code or "installed", "max_rss_mb": round(rss_kb / 1024, 1), "wall": wall,
            "detections": detections}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path, help="work folder (photo, checkpoint, outputs)")
    p.add_argument("--code", action="append", default=[], help="boxdepth source tree to measure")
    p.add_argument("--json", type=Path, default=None, help="write the measurements here")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if not (args.out / "photo.jpg").exists():
        make_photo(args.out / "photo.jpg")
    make_checkpoint(args.out / "model.pth")
    rows = [measure(code, args.out, n) for n, code in enumerate(args.code or [None])]
    for r in rows:
        print(f"{r['code']:40s} max RSS {r['max_rss_mb']:8.1f} MB  wall {r['wall']}  "
              f"{r['detections']} detections")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
