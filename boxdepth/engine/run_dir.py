"""Run folders that cannot mix: what `train` checks before it writes anything.

A run folder holds one run (README "Run folders"):
- training into a folder that already holds a run stops unless it is `resume`d or
  `overwrite`n (which deletes the run's own files, nothing else);
- temp files that a killed checkpoint write left behind are removed at the next start;
- `--resume` takes the newest checkpoint that loads; a damaged newer one is named and
  skipped;
- on resume the config is compared with the one the checkpoint was made with: keys that
  change the network are an error naming them, any other difference is a warning naming
  it; `config.yaml` is written only once the run can start (`start_run_files`);
- metrics.jsonl keeps only the rows up to the resumed iteration, so a resumed run has no
  duplicate or out-of-order rows.
Rank 0 changes files; every rank reads.
"""
from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import yaml

from boxdepth.engine import dist
from boxdepth.engine.checkpoint import checkpoints_newest_first, load_checkpoint
from boxdepth.fileio import atomic_write_text

log = logging.getLogger("boxdepth")

# files (and the tb/ folder) a training run writes; --overwrite deletes exactly these
RUN_FILE_RE = re.compile(r"^(config\.yaml|metrics\.jsonl|metrics\.json|results\.json|"
                         r"model_(\d+|final|best)\.pth|tb)$")
# a temp file of fileio.atomic_path for one of them: ".<name>.tmp-<random><suffix>"
TEMP_FILE_RE = re.compile(r"^\.(config\.yaml|metrics\.json|results\.json|model_(\d+|final|best)\.pth)"
                          r"\.tmp-.+$")
# model.* keys that do not change the network's parameters: they may differ on resume
MODEL_KEYS_FREE_ON_RESUME = ("model.backbone.weights", "model.backbone.channels_last",
                             "model.backbone.channels_last_train", "model.winograd",
                             "model.mask_threshold", "model.fcos.inference_th",
                             "model.fcos.pre_nms_topk", "model.fcos.nms_th",
                             "model.fcos.post_nms_topk")


class RunFolderError(ValueError):
    """A run folder that cannot be used as asked (the CLI prints it on one line)."""


def holds_run(out_dir: Path) -> bool:
    """Whether `out_dir` holds a training run's config, metrics or checkpoints."""
    return out_dir.is_dir() and any(
        RUN_FILE_RE.match(p.name) and p.name not in ("metrics.json", "results.json", "tb")
        for p in out_dir.iterdir())


def prepare_run_dir(out_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse a folder that holds another run (unless `resume`/`overwrite`), clear it on
    `overwrite`, remove temp files of killed writes. Call on every rank."""
    if out_dir.exists() and not out_dir.is_dir():
        raise RunFolderError(f"--out {out_dir} is a file, not a folder; give a folder for the run")
    if resume and overwrite:
        raise RunFolderError("give either --resume (continue the run) or --overwrite "
                             "(delete it and start again), not both")
    if holds_run(out_dir) and not (resume or overwrite):
        raise RunFolderError(
            f"{out_dir} already holds a training run; give --resume to continue it, a new "
            f"--out, or --overwrite to delete its files and start again")
    if dist.is_main_process() and out_dir.is_dir():
        for p in sorted(out_dir.iterdir()):
            if TEMP_FILE_RE.match(p.name):
                log.info(f"removing {p}, left by an interrupted write")
                p.unlink(missing_ok=True)
        if overwrite:
            clear_run_files(out_dir)
    dist.barrier()


def clear_run_files(out_dir: Path) -> None:
    """Delete the files of a training run in `out_dir` (and nothing else)."""
    for p in sorted(out_dir.iterdir()):
        if RUN_FILE_RE.match(p.name):
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def find_checkpoint(out_dir: Path, map_location) -> tuple[Path | None, dict | None]:
    """The newest checkpoint of `out_dir` that loads, and its contents; a damaged newer one
    (a truncated write, a full disk) is named and skipped. (None, None) when there is none;
    an error when every checkpoint is damaged."""
    damaged = []
    for path in checkpoints_newest_first(out_dir):
        try:
            ckpt = load_checkpoint(path, map_location=map_location)
        except ValueError as e:
            log.warning(f"--resume: skipping {path}: {e}")
            damaged.append(path)
            continue
        if damaged:
            log.warning(f"--resume: resuming from {path.name}, the newest checkpoint that loads "
                        f"({', '.join(p.name for p in damaged)} damaged)")
        return path, ckpt
    if damaged:
        raise RunFolderError(f"--resume: no checkpoint in {out_dir} loads "
                             f"({', '.join(p.name for p in damaged)} damaged); "
                             f"start again with --overwrite")
    return None, None


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def config_differences(saved: dict, now: dict) -> list[tuple[str, object, object]]:
    """(key, saved value, current value) for every key whose value differs. A key the saved
    config lacks (added to boxdepth after that run) counts at its default; keys a run never
    read do not count: `model.fcos.num_classes` left to the json (null) on either side, the
    distillation settings when neither side distils."""
    from boxdepth.config import load_config

    saved = {**_flat(load_config(None).to_dict()), **_flat(saved)}
    now = _flat(now)
    if saved.get("model.fcos.num_classes") is None or now.get("model.fcos.num_classes") is None:
        saved.pop("model.fcos.num_classes", None)
        now.pop("model.fcos.num_classes", None)
    if not saved.get("distill.enabled") and not now.get("distill.enabled"):
        saved = {k: v for k, v in saved.items() if not k.startswith("distill.")}
        now = {k: v for k, v in now.items() if not k.startswith("distill.")}
    absent = "<absent>"
    return [(k, saved.get(k, absent), now.get(k, absent)) for k in sorted(saved.keys() | now.keys())
            if saved.get(k, absent) != now.get(k, absent)]


def format_differences(differ: list[tuple[str, object, object]], limit: int = 5) -> str:
    shown = ", ".join(f"{k}: {a!r} there, {b!r} now" for k, a, b in differ[:limit])
    return shown + (", ..." if len(differ) > limit else "")


def stored_config(out_dir: Path, ckpt: dict | None = None) -> dict | None:
    """The config a run was made with: its checkpoint's, else its config.yaml, else None."""
    if ckpt is not None and ckpt.get("config"):
        return ckpt["config"]
    path = out_dir / "config.yaml"
    return yaml.safe_load(path.read_text()) if path.is_file() else None


def check_resume_config(out_dir: Path, cfg, ckpt: dict | None, ckpt_path: Path | None) -> None:
    """On resume, compare `cfg` with the run's stored config: a differing key that changes
    the network is an error (the checkpoint would not fit), any other is a warning."""
    saved = stored_config(out_dir, ckpt) if ckpt is not None else None
    if saved is None:
        return
    differ = config_differences(saved, cfg.to_dict())
    fatal = [d for d in differ if d[0].startswith("model.") and d[0] not in MODEL_KEYS_FREE_ON_RESUME]
    if fatal:
        raise RunFolderError(
            f"--resume: {ckpt_path} was trained with another model ({format_differences(fatal)}); "
            f"resume with its settings, or give a new --out or --overwrite")
    if differ:
        log.warning(f"--resume: settings differ from the run's ({format_differences(differ, 8)})")


def start_run_files(out_dir: Path, cfg, start_iter: int) -> None:
    """Once the run can start (rank 0): write config.yaml, keep metrics.jsonl's rows up to
    `start_iter` only (a run starting at 0 drops the old metrics.jsonl and tb/)."""
    from boxdepth.config import save_config

    out_dir.mkdir(parents=True, exist_ok=True)
    if start_iter == 0:  # a resume that found no checkpoint: the old logs would mix
        (out_dir / "metrics.jsonl").unlink(missing_ok=True)
        (out_dir / "model_best.pth").unlink(missing_ok=True)  # judged by those logs
        shutil.rmtree(out_dir / "tb", ignore_errors=True)
    else:
        trim_metrics(out_dir / "metrics.jsonl", start_iter)
    save_config(cfg, out_dir / "config.yaml")


def trim_metrics(path: Path, last_iter: int) -> None:
    """Drop the rows of metrics.jsonl past `last_iter` (and a line torn by a crash)."""
    import json

    if not path.is_file():
        return
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            dropped += 1
            continue
        if isinstance(row, dict) and int(row.get("iter", 0)) <= last_iter:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        log.info(f"{path}: dropped {dropped} row(s) past iteration {last_iter}, the resumed checkpoint's")
        atomic_write_text(path, "".join(f"{line}\n" for line in kept))
