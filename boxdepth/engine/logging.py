"""Training logs: `metrics.jsonl` (one json object per logged iteration) and, when the
`tensorboard` package imports, TensorBoard scalars in `<run>/tb/`. Only rank 0 writes.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

log = logging.getLogger("boxdepth")


class MetricsWriter:
    def __init__(self, run_dir: str | Path, *, enabled: bool = True, tensorboard: bool = True,
                 purge_step: int | None = None):
        """`purge_step`: a resumed run's first iteration; TensorBoard hides the events an
        earlier attempt logged after it (run_dir.py trims metrics.jsonl the same way)."""
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self._tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self._tb = SummaryWriter(str(Path(run_dir) / "tb"), purge_step=purge_step)
            except Exception:  # tensorboard not installed: jsonl only
                log.debug("tensorboard unavailable; writing metrics.jsonl only")

    def write(self, iteration: int, scalars: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"iter": iteration, **{k: (None if isinstance(v, float) and not math.isfinite(v)
                                         else v) for k, v in scalars.items()}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:  # append-only log: a torn last line is tolerable
            f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for k, v in scalars.items():
                if isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, iteration)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: str | Path) -> list[dict]:
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line torn by a crash
    return rows
