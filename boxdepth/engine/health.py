"""Training health checks: one warning when a training signal silently does nothing.

A non-finite loss stops a run (engine/trainer.py); these catch the quieter failures that
leave a run going for hours and scoring 0 AP. `TrainingHealth` watches the first
`num_periods` logged periods of a run (or of a term, from when it first appears) and
warns at most once per loss term (the most specific check first):

    constant_loss   a loss term that stays within `loss_tol` of one value (and is not
                    exactly 0: a term weighted off or at the start of its warm-up ramp
                    is 0 by design; a term that is 0 for lack of positives is the next check)
    no_positives    more than `no_pos_frac` of the batches have no positive location
    dead_regression at least `degenerate_frac` of the positives predict a box with zero
                    width or height (relu clamps both sides of a pair: 1 - GIoU has no
                    gradient there, so box regression cannot learn)

Per-iteration statistics come from `regression_stats(outputs, num_classes)`, on the
training dict of `CondInst.forward` (keys labels (B*M,), bbox_reg (B*M, 4),
proposals.im_inds): {"pos_per_image": float, "box_degenerate": float or NaN with no
positive}. A warning is a dict {"check", "term", "iteration", "message"}; the trainer
prints it and writes it into that period's metrics.jsonl row as "health_warnings".
"""
from __future__ import annotations

import math

import torch

HINTS = {
    "constant_loss": ("a term that never moves gets no gradient or no data: check that its "
                      "weight is not tiny (loss.*.weight), that the batches have boxes "
                      "(boxdepth inspect) and the learning rate (solver.base_lr, "
                      "solver.warmup_iters)"),
    "no_positives": ("no location was assigned to a box: boxes may be too small for the "
                     "strides (model.fcos.strides, data.min_box_size), outside the size ranges "
                     "(model.fcos.sizes_of_interest, model.fcos.center_sample_radius) or "
                     "missing from the json; run `boxdepth inspect`"),
    "dead_regression": ("the box regression predicts zero-size boxes, where 1 - GIoU has no "
                        "gradient: check model.fcos.box_init_distance (> 0), the learning rate "
                        "(solver.base_lr) and gradient clipping (solver.clip_grad_norm)"),
}


@torch.no_grad()
def regression_stats(outputs: dict, num_classes: int) -> dict[str, float]:
    """Positives per image and the fraction of positives whose predicted box is degenerate."""
    labels = outputs["labels"]
    pos = (labels >= 0) & (labels < num_classes)
    n_images = max(int(outputs["mask_feats"].shape[0]), 1)
    reg = outputs["bbox_reg"][pos].detach()
    degenerate = ((reg[:, 0] + reg[:, 2]) <= 0) | ((reg[:, 1] + reg[:, 3]) <= 0)
    return {"pos_per_image": float(pos.sum()) / n_images,
            "box_degenerate": float(degenerate.float().mean()) if len(reg) else math.nan}


class TrainingHealth:
    def __init__(self, *, num_periods: int = 5, loss_tol: float = 1e-3, no_pos_frac: float = 0.5,
                 degenerate_frac: float = 0.9):
        if num_periods < 2:
            raise ValueError(f"TrainingHealth: num_periods must be >= 2, got {num_periods}")
        self.num_periods, self.loss_tol = int(num_periods), float(loss_tol)
        self.no_pos_frac, self.degenerate_frac = float(no_pos_frac), float(degenerate_frac)
        self._losses: dict[str, list[float]] = {}
        self._steps: list[dict[str, float]] = []
        self._periods = 0
        self._warned: set[str] = set()

    def observe_step(self, stats: dict[str, float]) -> None:
        """Per-iteration statistics (`regression_stats`) of the watched window."""
        if self._periods < self.num_periods:
            self._steps.append(dict(stats))

    def observe_period(self, iteration: int, logged: dict[str, float]) -> list[dict]:
        """The losses logged at `iteration`; returns the warnings new at this period."""
        self._periods += 1
        new = []
        if self._periods == self.num_periods and self._steps:
            new += self._check_steps(iteration)  # first: the specific cause beats "constant"
        for term, value in logged.items():
            if not term.startswith("loss_") or not math.isfinite(value):
                continue
            seen = self._losses.setdefault(term, [])
            if len(seen) < self.num_periods:
                seen.append(float(value))
                if len(seen) == self.num_periods:
                    new += self._check_constant(term, seen, iteration)
        return new

    def _warn(self, check: str, term: str, iteration: int, what: str) -> list[dict]:
        if term in self._warned:  # one warning per term, the first (most specific) one
            return []
        self._warned.add(term)
        return [{"check": check, "term": term, "iteration": iteration,
                 "message": f"training health: {what} (iteration {iteration}); {HINTS[check]}"}]

    def _check_constant(self, term: str, values: list[float], iteration: int) -> list[dict]:
        if max(values) - min(values) >= self.loss_tol or all(v == 0 for v in values):
            return []
        return self._warn("constant_loss", term, iteration,
                          f"{term} stayed at {values[-1]:.4f} (within {self.loss_tol:g}) for the "
                          f"first {len(values)} logged periods")

    def _check_steps(self, iteration: int) -> list[dict]:
        out = []
        empty = sum(s["pos_per_image"] == 0 for s in self._steps) / len(self._steps)
        if empty > self.no_pos_frac:
            out += self._warn("no_positives", "loss_fcos_loc", iteration,
                              f"{100 * empty:.0f} % of the first {len(self._steps)} batches had "
                              f"no positive location")
        degenerate = [s["box_degenerate"] for s in self._steps if math.isfinite(s["box_degenerate"])]
        if degenerate and sum(degenerate) / len(degenerate) >= self.degenerate_frac:
            out += self._warn("dead_regression", "loss_fcos_loc", iteration,
                              f"{100 * sum(degenerate) / len(degenerate):.0f} % of the positives "
                              f"predicted a zero-width or zero-height box over the first "
                              f"{len(self._steps)} iterations")
        return out
