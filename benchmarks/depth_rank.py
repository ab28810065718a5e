"""Does a stored pseudo-depth tree order pixels like a depth sensor? (Spearman rank)

For every sensor frame ``SENSOR/<stem>.png`` (uint16 millimetres, 0 = no reading) with a
stored map ``DEPTH_ROOT/<stem>.png`` (SPEC §0: normalised inverse depth, larger = nearer),
over the pixels with a reading:
    spearman  rank correlation of the stored map with -depth_mm (= with 1/depth_mm: ranks
              ignore any monotone map), +1 = same order of near and far
    mae       mean |stored - sensor map| where the sensor map is what `boxdepth depth
              --from-sensor` would store (1/mm, 1st-99th percentile of the readings ->
              [0, 1]); this one also sees the shape of the mapping, not only the order
Printed per frame with the median/min/max; the JSON (command, the depth root's meta.json,
per-frame values, summary) goes to ``benchmarks/results/depth_rank_<date>.json``.

    python benchmarks/depth_rank.py /work/osd_depth/pydnet \
        [--sensor ../shared/data/osd-rgbd/depth_mm] [--out FILE.json]

Skips with a message (exit 0) when the sensor folder (../shared) is absent.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from boxdepth.data.depth_io import (load_depth_png, normalize_inverse_depth, read_depth_meta,
                                    read_single_channel)
from boxdepth.fileio import atomic_write_json

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SENSOR = REPO.parent / "shared" / "data" / "osd-rgbd" / "depth_mm"


def frame_scores(stored: np.ndarray, depth_mm: np.ndarray, where: str) -> dict:
    """{'spearman', 'mae', 'valid_fraction'} of one frame; arrays (H, W), same size."""
    if stored.shape != depth_mm.shape:
        raise ValueError(f"{where}: stored map {stored.shape} and sensor {depth_mm.shape} differ")
    valid = depth_mm > 0
    if valid.sum() < 2:
        raise ValueError(f"{where}: fewer than 2 pixels with a sensor reading")
    mm = depth_mm.astype(np.float64)
    rho = spearmanr(stored[valid], -mm[valid])[0]
    sensor01 = normalize_inverse_depth(1.0 / np.where(valid, mm, 1.0), valid=valid)
    return {"spearman": float(rho), "mae": float(np.abs(stored - sensor01)[valid].mean()),
            "valid_fraction": float(valid.mean())}


def summary(values: list[float]) -> dict:
    a = np.asarray(values, np.float64)
    return {"median": float(np.median(a)), "min": float(a.min()), "max": float(a.max()),
            "mean": float(a.mean()), "n": int(a.size)}


def run(depth_root: Path, sensor_root: Path) -> dict:
    frames, missing = {}, []
    for sensor_file in sorted(sensor_root.glob("*.png")):
        stored_file = depth_root / sensor_file.name
        if not stored_file.is_file():
            missing.append(sensor_file.stem)
            continue
        mm = read_single_channel(sensor_file, "sensor depth")
        frames[sensor_file.stem] = frame_scores(load_depth_png(stored_file), mm, str(stored_file))
    if not frames:
        raise FileNotFoundError(f"no stored map under {depth_root} matches a frame of "
                                f"{sensor_root}")
    return {"frames": frames, "missing": missing,
            "spearman": summary([f["spearman"] for f in frames.values()]),
            "mae": summary([f["mae"] for f in frames.values()])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("depth_root", type=Path, help="stored pseudo-depth tree (boxdepth depth --out)")
    p.add_argument("--sensor", type=Path, default=DEFAULT_SENSOR,
                   help="sensor depth folder, uint16 mm (default: ../shared osd-rgbd depth_mm)")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON (default benchmarks/results/depth_rank_<date>.json)")
    args = p.parse_args(argv)
    if not args.sensor.is_dir():
        print(f"skipped: sensor depth folder {args.sensor} not found (../shared is absent)")
        return 0
    if not args.depth_root.is_dir():
        raise SystemExit(f"depth root not found: {args.depth_root}")
    result = run(args.depth_root, args.sensor)
    for stem, f in result["frames"].items():
        print(f"{stem:10s} spearman {f['spearman']:+.3f}  mae {f['mae']:.3f}  "
              f"valid {f['valid_fraction']:.2f}")
    s, m = result["spearman"], result["mae"]
    print(f"{s['n']} frames ({len(result['missing'])} without a stored map): spearman median "
          f"{s['median']:+.3f} (min {s['min']:+.3f}, max {s['max']:+.3f}); mae median "
          f"{m['median']:.3f}")
    out = args.out or REPO / "benchmarks" / "results" / f"depth_rank_{datetime.date.today()}.json"
    record = {"command": "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
              "depth_root": str(args.depth_root), "sensor_root": str(args.sensor),
              "depth_meta": read_depth_meta(args.depth_root), **result}
    atomic_write_json(out, record)
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
