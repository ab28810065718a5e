"""The config a trained checkpoint runs with, for eval, label, export, predict and `Predictor`.

A checkpoint carries the resolved config it was trained with (`ckpt["config"]`), and that
is the model's config: `inference_config(weights, config=None, overrides=())` starts from
the defaults with the checkpoint's config merged in, then
  * a CONFIG file only adds what is the run's own business: the keys of RUN_SECTIONS (data
    paths, device, eval.*) that the file sets (a value other than the default). For every
    other key the checkpoint's value stays, and each key where the file disagrees with the
    checkpoint is printed (one warning: key, checkpoint value, file value);
  * `key=value` overrides come last and may change any key (the way to change a model key
    on purpose, e.g. model.fcos.inference_th); each that changes the checkpoint's value is
    printed.
Not compared: IGNORED_KEYS (training only, or the backbone's initial weights file, which
a trained checkpoint replaces) and file values of null (null means "not set").
A checkpoint without a config (older versions) runs with CONFIG as it is, with a warning.

Before this, eval/label/export built the model from CONFIG alone: a CONFIG that disagreed
with the checkpoint (say model.fcos.inference_th) silently changed its detections.
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, Iterable

from boxdepth.config import Config, apply_override, load_config, parse_override

log = logging.getLogger("boxdepth")

RUN_SECTIONS = ("data", "device", "eval")
IGNORED_KEYS = ("seed", "solver", "log", "model.backbone.weights")


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists are values."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _set(cfg: dict, key: str, value: Any) -> None:
    *path, leaf = key.split(".")
    for part in path:
        cfg = cfg[part]
    cfg[leaf] = value


def _ignored(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in IGNORED_KEYS)


def merge_known_keys(dst: dict, src: dict) -> None:
    """Copy values of `src` whose keys exist in `dst` (configs saved by older versions)."""
    for k, v in src.items():
        if k in dst and isinstance(dst[k], dict) and isinstance(v, dict):
            merge_known_keys(dst[k], v)
        elif k in dst:
            dst[k] = v


def apply_config_file(cfg: dict, file_cfg: dict, defaults: dict) -> tuple[list, list]:
    """Merge a CONFIG file's run keys into `cfg` (the checkpoint's config) in place.
    Returns (kept, taken): [(key, checkpoint value, file value)] for the keys where the
    checkpoint's value stayed against the file, and for the run keys taken from the file."""
    current, dflt = flatten(cfg), flatten(defaults)
    kept, taken = [], []
    for key, value in flatten(file_cfg).items():
        if value is None or _ignored(key) or value == current.get(key):
            continue
        if key.split(".")[0] in RUN_SECTIONS:
            if value != dflt.get(key):  # a run key the file leaves at its default is not set
                _set(cfg, key, value)
                taken.append((key, current.get(key), value))
        else:
            kept.append((key, current.get(key), value))
    return kept, taken


def _report(weights, config, kept: list, taken: list, changed: list) -> None:
    name = Path(config).name if config is not None else "CONFIG"
    if kept:
        lines = [f"  {k}: checkpoint {c!r}, {name} {f!r}" for k, c, f in kept]
        log.warning("%s carries its own config; %s disagrees with it on %d key(s) and the "
                    "checkpoint's values are used (give KEY=VALUE to change one):\n%s",
                    weights, name, len(kept), "\n".join(lines))
    for k, c, f in taken:
        log.info("from %s: %s = %r (checkpoint: %r)", name, k, f, c)
    for k, c, f in changed:
        log.info("override: %s = %r (checkpoint: %r)", k, f, c)


def inference_config(weights: str | Path, config: str | Path | None = None,
                     overrides: Iterable[str] = (), *, ckpt: dict | None = None) -> Config:
    """The config to run checkpoint `weights` with (module docstring); `ckpt`: the
    checkpoint already loaded, so that it is read once."""
    from boxdepth.engine.checkpoint import load_checkpoint

    overrides = list(overrides)
    load_config(None, overrides)  # unknown keys and bad values fail here, before any work
    saved = (ckpt if ckpt is not None else load_checkpoint(weights)).get("config")
    if not saved:
        if config is None:
            raise ValueError(f"{weights} holds no config; pass the config it was trained with")
        log.warning("%s holds no config (an older checkpoint): the model config comes from %s",
                    weights, config)
        return load_config(config, overrides)
    defaults = load_config(None).to_dict()
    cfg = copy.deepcopy(defaults)
    merge_known_keys(cfg, saved)
    kept, taken = ([], []) if config is None else \
        apply_config_file(cfg, load_config(config).to_dict(), defaults)
    before, changed = flatten(cfg), []
    for text in overrides:
        key, value = parse_override(text)
        apply_override(cfg, key, value, defaults)
        new = flatten(cfg)
        changed += [(k, before.get(k), v) for k, v in new.items()
                    if (k == key or k.startswith(key + ".")) and v != before.get(k)]
    _report(weights, config, kept, taken, changed)
    return Config(cfg)
