"""`boxdepth demo`: the main job on the embedded synthetic RGB-D dataset.

Stage 1 (this version): generate the dataset under ``<out>/data`` (reused when it is
already there with the same settings) and print what was made.
"""
from __future__ import annotations

import json
from pathlib import Path

DEMO_DATA = dict(n_train=300, n_val=100, size=(256, 192), seed=0, camouflage=0.3, depth_error=1.0)


def prepare_demo_data(out_dir: Path) -> tuple[Path, dict]:
    """Generate (or reuse) the demo dataset; returns (data_dir, summary)."""
    from boxdepth.data.synthetic import generate_synthetic_dataset

    data_dir = Path(out_dir) / "data"
    stamp = data_dir / "demo_settings.json"
    wanted = json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in DEMO_DATA.items()},
                        sort_keys=True)
    if stamp.exists() and stamp.read_text() == wanted and (data_dir / "summary.json").exists():
        return data_dir, json.loads((data_dir / "summary.json").read_text())
    summary = generate_synthetic_dataset(data_dir, **DEMO_DATA)
    from boxdepth.fileio import atomic_write_text
    atomic_write_text(stamp, wanted)
    return data_dir, summary


def run_demo(out_dir: str | Path = "runs/demo") -> dict:
    from boxdepth.data.synthetic import format_summary

    data_dir, summary = prepare_demo_data(Path(out_dir))
    print(format_summary(summary))
    print(f"demo dataset ready in {data_dir} (training on it comes with the model stage)")
    return summary
