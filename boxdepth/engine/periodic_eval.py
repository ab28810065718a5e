"""Evaluation during training: every `eval.period` iterations on `data.val_json`.

`PeriodicEvaluator(cfg, out_dir, writer=..., device=...)` is built once per run;
`evaluator(done, model=..., teacher=..., state=...)` after each step does nothing unless
`done` is a multiple of `eval.period` (0 = off, the default: the final evaluation of
`boxdepth train` / `boxdepth.train` is the only one).

What one evaluation does:
- the student (and the EMA teacher once self-distillation has started) run inference on
  the val set and are scored with COCO bbox/segm AP (engine/evaluate.py);
- one metrics.jsonl row per evaluation, at iteration `done`, with keys
  "eval/<iou type>/<metric>" for the student and "eval_teacher/<iou type>/<metric>" for
  the teacher (metric in AP, AP50, AP75, APs, APm, APl; NaN -> null), also TensorBoard
  scalars under the same names. These rows have no loss keys; read loss rows by
  "time_step" or a loss key;
- `model_best.pth` (the same training-checkpoint dict as `model_<iter>.pth`) is replaced
  when `eval.best_metric` ("<iou type>/<metric>", default "segm/AP", higher is better)
  beats the best so far. The metric is read from the model `eval`/`predict` would load
  from that checkpoint: the teacher's once it exists and `eval.model` is "teacher", else
  the student's. On `--resume` the best so far is read back from metrics.jsonl's eval
  rows (trimmed to the resumed iteration by engine/run_dir.py).

DDP: every rank runs inference on its shard of the val images and the results are
gathered on every rank (engine/inference.inference_on_dataset); rank 0 alone scores
them, writes the row and model_best.pth, while the other ranks wait at a barrier.
The global RNG state is saved and restored around an evaluation, so turning it on does
not change the training that follows.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import torch

from boxdepth.engine import dist
from boxdepth.engine.checkpoint import save_checkpoint
from boxdepth.engine.evaluate import IOU_TYPES, METRIC_NAMES, evaluate_coco
from boxdepth.engine.inference import inference_on_dataset
from boxdepth.engine.logging import MetricsWriter, read_metrics

log = logging.getLogger("boxdepth")

BEST_NAME = "model_best.pth"


def parse_best_metric(name: str) -> tuple[str, str]:
    """'segm/AP' -> ('segm', 'AP'); a ValueError naming the key for anything else."""
    iou_type, _, metric = str(name).partition("/")
    if iou_type not in IOU_TYPES or metric not in METRIC_NAMES:
        raise ValueError(f"eval.best_metric={name!r}: expected <iou type>/<metric> with iou type "
                         f"in {list(IOU_TYPES)} and metric in {list(METRIC_NAMES)}, e.g. segm/AP")
    return iou_type, metric


def flat_metrics(metrics: dict[str, dict[str, float]], prefix: str) -> dict[str, float]:
    """{"segm": {"AP": x}} -> {"<prefix>/segm/AP": x}."""
    return {f"{prefix}/{t}/{k}": v for t, row in metrics.items() for k, v in row.items()}


class PeriodicEvaluator:
    """See the module docstring. Build it after the run's files are set up (rank 0 reads
    the best value so far from metrics.jsonl)."""

    def __init__(self, cfg, out_dir: str | Path, *, writer: MetricsWriter, device: torch.device):
        self.period = int(cfg.eval.period)
        self.out_dir, self.writer, self.device = Path(out_dir), writer, device
        self.use_teacher = cfg.eval.model == "teacher"
        self.best_type, self.best_name = parse_best_metric(cfg.eval.best_metric)
        self.best_key = f"{self.best_type}/{self.best_name}"
        self.gt_json, self._cfg, self._dataset = cfg.data.val_json, cfg, None
        if self.period < 0:
            raise ValueError(f"eval.period={self.period}: give 0 (off) or a number of iterations")
        if self.period > 0 and not self.gt_json:
            raise ValueError(f"eval.period={self.period} evaluates on data.val_json, which is not "
                             f"set; give data.val_json=VAL.json or eval.period=0")
        self.best = self._best_so_far() if self.period > 0 else -math.inf

    def _best_so_far(self) -> float:
        path = self.out_dir / "metrics.jsonl"
        if not dist.is_main_process() or not path.is_file():
            return -math.inf
        values = [r.get(k) for r in read_metrics(path)
                  for k in (f"eval_teacher/{self.best_key}", f"eval/{self.best_key}") if r.get("best") == k]
        return max((v for v in values if isinstance(v, (int, float))), default=-math.inf)

    @property
    def dataset(self):
        if self._dataset is None:  # built at the first evaluation: a run without one never reads it
            from boxdepth.data.build import build_dataset
            self._dataset = build_dataset(self._cfg, "val", is_train=False)
        return self._dataset

    def __call__(self, done: int, *, model: torch.nn.Module, teacher=None, state=None) -> dict | None:
        """Evaluate at iteration `done` when it is due. `model`: the student, unwrapped from
        DDP; `teacher`: the ModelEMA or None; `state`: a callable returning the checkpoint
        dict for model_best.pth. Returns the row written (rank 0) or None."""
        if self.period <= 0 or done % self.period:
            return None
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # training draws the same numbers after
            scores = {"eval": self._score(model)}
            if teacher is not None:
                scores["eval_teacher"] = self._score(teacher.module)
        row = None
        if dist.is_main_process():
            row = self._record(done, scores, state)
        dist.barrier()
        return row

    def _score(self, model: torch.nn.Module) -> dict | None:
        """Every rank infers its shard; rank 0 scores the gathered results (None elsewhere)."""
        results = inference_on_dataset(model, self.dataset, self.device, progress=False)
        return evaluate_coco(self.gt_json, results) if dist.is_main_process() else None

    def _record(self, done: int, scores: dict, state) -> dict:
        judged = "eval_teacher" if self.use_teacher and "eval_teacher" in scores else "eval"
        row = {k: v for prefix, m in scores.items() for k, v in flat_metrics(m, prefix).items()}
        value = row.get(f"{judged}/{self.best_key}")
        if value is None or not math.isfinite(value):
            log.warning(f"iteration {done}: no finite {judged}/{self.best_key} to choose {BEST_NAME} "
                        f"by (a val json without masks? then set eval.best_metric=bbox/AP)")
        elif value > self.best:
            self.best = value
            row["best"] = f"{judged}/{self.best_key}"
            if state is not None:
                save_checkpoint(self.out_dir / BEST_NAME, state())
        self.writer.write(done, row)
        if "best" in row:
            log.info(f"iteration {done}: {row['best']} {100 * value:.1f}, the best so far: {BEST_NAME}")
        return row
