"""Time in `boxdepth demo`: a run's training time from its metrics.jsonl (`run_timing`) and
the whole demo's ETA before each run (`DemoClock`).

run_timing(run_dir, distill_start) -> {"train_seconds", "s_per_iter"[, "s_per_iter_plain",
"s_per_iter_distill", "distill_cost_ratio"]}.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

# a distillation iteration's cost in plain iterations, until a run of this demo measures it
DISTILL_COST_PRIOR = 1.6


def run_timing(run_dir: Path, distill_start: int | None = None) -> dict:
    """Training time of a run from its metrics.jsonl (mean step times per logged window):
    {"train_seconds", "s_per_iter" (median window)}; with `distill_start` also the median
    s/iter before and after the teacher appears and their ratio, measured in the same run
    (machines drift between runs; a ratio within one run is the fair comparison)."""
    from boxdepth.engine.logging import read_metrics

    rows = [r for r in read_metrics(run_dir / "metrics.jsonl") if "time_step" in r]  # not eval rows
    logs = sorted({r["iter"]: r for r in rows}.values(),
                  key=lambda r: r["iter"])  # a resumed run may log a window twice: keep the last
    seconds, prev = 0.0, 0
    for r in logs:
        seconds += (r["time_data"] + r["time_step"]) * (r["iter"] - prev)
        prev = r["iter"]
    out = {"train_seconds": round(seconds, 1),
           "s_per_iter": statistics.median(r["time_step"] for r in logs)}
    if distill_start is not None:
        # the window logged at iteration i covers iterations i - period .. i - 1 (0-based)
        plain = [r["time_step"] for r in logs if r["iter"] <= distill_start]
        distill = [r["time_step"] for r in logs if r["iter"] > distill_start]
        if plain and distill:
            out.update(s_per_iter_plain=statistics.median(plain),
                       s_per_iter_distill=statistics.median(distill))
            out["distill_cost_ratio"] = out["s_per_iter_distill"] / out["s_per_iter_plain"]
    return out


class DemoClock:
    """The whole demo's ETA: seconds per plain training iteration measured on the runs this
    invocation trained (evaluation included), a distillation iteration counted as
    DISTILL_COST_PRIOR plain ones until a run measures the ratio."""

    def __init__(self, plan: list[tuple[str, int]], configs: dict, t0: float | None = None):
        self.plan, self.configs, self.t0 = plan, configs, time.time() if t0 is None else t0
        self.distill_cost, self.measured_s, self.measured_units = DISTILL_COST_PRIOR, 0.0, 0.0

    def units(self, name: str) -> float:
        cfg = self.configs[name]
        n = int(cfg.solver.max_iter)
        extra = max(n - int(cfg.distill.start_iter), 0) if cfg.distill.enabled else 0
        return n + extra * (self.distill_cost - 1.0)

    def finished(self, name: str, seconds: float, trained: bool, rows: list[dict]) -> None:
        ratio = rows[0].get("distill_cost_ratio") if rows else None
        if ratio:
            self.distill_cost = ratio
        if trained:
            self.measured_s, self.measured_units = self.measured_s + seconds, self.measured_units + self.units(name)

    def line(self, k: int) -> str:
        """Progress line before run k (0-based) of the plan."""
        name, seed = self.plan[k]
        elapsed = time.time() - self.t0
        head = f"[demo {k + 1}/{len(self.plan)}] {name} (seed {seed}); elapsed {_mmss(elapsed)}"
        if not self.measured_units:
            return head + ", ETA after the first trained run"
        left = sum(self.units(n) for n, _ in self.plan[k:]) * self.measured_s / self.measured_units
        return head + f", ETA {_mmss(left)} (done at ~{_mmss(elapsed + left)})"


def _mmss(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
