"""YAML configs with `_base_` inheritance and dotted `key=value` overrides.

The schema is ``boxdepth/configs/defaults.yaml``: every key a config may set, with its
default. A config file (or an override) that names a key not in the schema is an error
that names the key and the closest valid ones. `load_config` returns a `Config`: a
nested dict with attribute access (``cfg.model.backbone.name``). Every value is checked
against the type of its default (config_types.py): `solver.base_lr=1e-3` is the number
0.001, `solver.max_iter=ten` an error naming the key, the value and the expected type.
"""
from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any, Iterable

import yaml

from boxdepth.config_types import ConfigTypeError, coerce_tree, coerce_value
from boxdepth.fileio import atomic_write_text

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEFAULTS_FILE = CONFIG_DIR / "defaults.yaml"


class ConfigError(ValueError):
    pass


class Config(dict):
    """dict with attribute access; nested dicts are Configs too."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for k, v in self.items():
            if isinstance(v, dict) and not isinstance(v, Config):
                super().__setitem__(k, Config(v))

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = Config(value) if isinstance(value, dict) else value

    def to_dict(self) -> dict:
        return {k: v.to_dict() if isinstance(v, Config) else copy.deepcopy(v) for k, v in self.items()}


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def resolve_config_path(name: str | Path) -> Path:
    """A path as given, else a file of the packaged configs (with or without .yaml)."""
    p = Path(name)
    if p.exists():
        return p
    for cand in (CONFIG_DIR / p.name, CONFIG_DIR / f"{p.name}.yaml"):
        if cand.exists():
            return cand
    raise ConfigError(f"config file not found: {name} (packaged configs: "
                      f"{', '.join(sorted(x.stem for x in CONFIG_DIR.glob('*.yaml')))})")


def _load_with_bases(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: _base_ cycle: {' -> '.join(map(str, seen + (path,)))}")
    data = _read_yaml(path)
    bases = data.pop("_base_", [])
    merged: dict = {}
    for base in [bases] if isinstance(bases, str) else bases:
        base_path = (path.parent / base) if not Path(base).is_absolute() else Path(base)
        _deep_merge(merged, _load_with_bases(base_path, seen + (path,)))
    _deep_merge(merged, data)
    return merged


def _deep_merge(dst: dict, src: dict) -> dict:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _deep_merge(dst[k], v)
        else:
            dst[k] = copy.deepcopy(v)
    return dst


def _all_keys(tree: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in tree.items():
        out.append(prefix + k)
        if isinstance(v, dict):
            out += _all_keys(v, prefix + k + ".")
    return out


def _unknown_key_error(key: str, schema: dict, where: str) -> ConfigError:
    valid = _all_keys(schema)
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
    leaf = key.rsplit(".", 1)[-1]
    close += [k for k in valid if k.rsplit(".", 1)[-1] == leaf and k not in close][:3]
    hint = f"; closest valid keys: {', '.join(close)}" if close else ""
    return ConfigError(f"unknown config key '{key}' in {where}{hint}")


def _validate(data: dict, schema: dict, where: str, prefix: str = "") -> None:
    for k, v in data.items():
        full = prefix + k
        if k not in schema:
            raise _unknown_key_error(full, schema if not prefix else _root_schema(), where)
        if isinstance(schema[k], dict):
            if not isinstance(v, dict):
                raise ConfigError(f"config key '{full}' in {where} must be a mapping, got {v!r}")
            _validate(v, schema[k], where, full + ".")


def _check_types(data: dict, schema: dict, where: str) -> None:
    """Convert `data`'s values in place to their defaults' types, or raise ConfigError."""
    try:
        coerce_tree(data, schema)
    except ConfigTypeError as e:
        raise ConfigError(f"{e} (in {where})") from None


def _root_schema() -> dict:
    return _read_yaml(DEFAULTS_FILE)


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key, value


def apply_override(cfg: dict, key: str, value: Any, schema: dict) -> None:
    parts = key.split(".")
    node, snode = cfg, schema
    for i, part in enumerate(parts):
        if not isinstance(snode, dict) or part not in snode:
            raise _unknown_key_error(key, schema, "command-line overrides")
        if i == len(parts) - 1:
            if isinstance(snode[part], dict):
                if not isinstance(value, dict):
                    raise ConfigError(f"override '{key}' names a section; set one of its keys")
                _validate(value, snode[part], "command-line overrides", key + ".")
                _check_types(value, snode[part], "command-line overrides")
            else:
                try:
                    value = coerce_value(key, value, snode[part])
                except ConfigTypeError as e:
                    raise ConfigError(f"{e} (in command-line overrides)") from None
            node[part] = value
        else:
            node, snode = node[part], snode[part]


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    """Defaults <- config file (with its `_base_` chain) <- `key=value` overrides."""
    schema = _root_schema()
    cfg = copy.deepcopy(schema)
    if path is not None:
        p = resolve_config_path(path)
        data = _load_with_bases(p)
        _validate(data, schema, str(p))
        _check_types(data, schema, str(p))
        _deep_merge(cfg, data)
    for ov in overrides:
        apply_override(cfg, *parse_override(ov), schema)
    return Config(cfg)


def save_config(cfg: dict, path: str | Path) -> None:
    """Write the resolved config (loadable again with `load_config`). A value of the wrong
    type (set in code, past load_config's checks) is an error, never written."""
    data = cfg.to_dict() if isinstance(cfg, Config) else copy.deepcopy(cfg)
    _check_types(data, _root_schema(), f"the config to save as {path}")
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))
