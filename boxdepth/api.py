"""The Python API: what the `boxdepth` verbs run, for people who script rather than type.

    import boxdepth
    result = boxdepth.train("synth_boxinst", "runs/mine", data__train_json="train.json",
                            data__image_root="images", solver__max_iter=200)
    p = boxdepth.Predictor(result["weights"], device="cpu")
    out = p("photo.jpg")     # boxes, scores, classes, category_ids, masks, depth

`Predictor` is engine/predictor.py's (its docstring lists `out`). `train(config, out_dir,
**overrides)` is `boxdepth train`: config is a packaged name, a YAML path or a Config;
each keyword is one `key=value` override, its dots written as double underscores
(`solver__max_iter=200`) or passed as a dict (`**{"solver.max_iter": 200}`), values as
Python values. Returns {"weights": Path of model_final.pth, "metrics": {"bbox": {...},
"segm": {...}} of the evaluation on data.val_json (None without one or with
evaluate=False), "out_dir": Path, "config": the resolved Config}.
`evaluate_checkpoint(weights, cfg, metrics_path)` is `boxdepth eval`'s and training's
final evaluation.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from boxdepth.config import Config, apply_override, load_config
from boxdepth.engine.predictor import Predictor

__all__ = ["Predictor", "train", "evaluate_checkpoint", "resolve_train_config"]


def resolve_train_config(config, overrides: dict[str, Any]) -> Config:
    """A config name / path / Config plus keyword overrides (module docstring) -> Config;
    every override is checked against the schema like a command-line `key=value`."""
    if isinstance(config, dict):
        cfg = copy.deepcopy(config.to_dict() if isinstance(config, Config) else dict(config))
    else:
        cfg = load_config(config).to_dict()
    schema = load_config(None).to_dict()
    for key, value in overrides.items():
        value = str(value) if isinstance(value, Path) else value
        apply_override(cfg, key.replace("__", "."), value, schema)
    return Config(cfg)


def evaluate_checkpoint(weights: str | Path, cfg: Config, metrics_path: str | Path | None = None, *,
                        progress: bool = True) -> dict:
    """Evaluate checkpoint `weights` built with `cfg` on cfg.data.val_json; with
    `metrics_path`, rank 0 writes the metrics there and the detections beside them."""
    from boxdepth.data.build import build_dataset
    from boxdepth.engine import dist
    from boxdepth.engine.inference import evaluate_model, load_trained_model

    device = dist.init_distributed(cfg.device)
    model, cfg, _ = load_trained_model(weights, device, cfg)
    dataset = build_dataset(cfg, "val", is_train=False)
    return evaluate_model(model, dataset, cfg.data.val_json, device, metrics_path=metrics_path,
                          progress=progress)


def train(config, out_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
          evaluate: bool = True, progress: bool = True, **overrides: Any) -> dict:
    """Train, then evaluate on data.val_json: `boxdepth train` (module docstring). A folder
    that already holds a run needs `resume` or `overwrite` (engine/run_dir.py)."""
    from boxdepth.engine.trainer import train as run_training

    cfg = resolve_train_config(config, overrides)
    out_dir = Path(out_dir)
    weights = run_training(cfg, out_dir, resume=resume, overwrite=overwrite, progress=progress)
    metrics = None
    if evaluate and cfg.data.val_json:
        metrics = evaluate_checkpoint(weights, cfg, out_dir / "metrics.json", progress=progress)
    return {"weights": weights, "metrics": metrics, "out_dir": out_dir, "config": cfg}
