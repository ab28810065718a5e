"""Config values checked against the type of their default in ``configs/defaults.yaml``.

Rules (README "Configs"):
- a bool default takes `true`/`false` only;
- an int default takes an integer; a whole number written as a float or in exponent
  form (`2e4`) is accepted as that integer;
- a float default takes any finite number, ints included; strings such as `1e-3` count,
  because YAML 1.1 (PyYAML) reads an exponent without a dot as a string;
- a string default takes a string;
- a list default takes a list whose items follow the type of the default's items
  (`[]` is always a list);
- a null default (paths, `model.fcos.num_classes`) takes null or a value of the type in
  `NULL_DEFAULT_TYPES` (a string unless listed there; a number given for a path is
  taken as its text, e.g. a folder named `2024`).
A value that does not fit raises ConfigError naming the key, the value and the type.
"""
from __future__ import annotations

import json
import math
from typing import Any

# keys whose default is null but whose values are not paths
NULL_DEFAULT_TYPES: dict[str, type] = {"model.fcos.num_classes": int}


class ConfigTypeError(ValueError):
    """A value of the wrong type for its key (config.ConfigError subclasses ValueError too;
    config.py turns this into a ConfigError with the place the value came from)."""


def _type_name(default: Any) -> str:
    if isinstance(default, bool):
        return "true or false"
    if isinstance(default, int):
        return "an integer"
    if isinstance(default, float):
        return "a float"
    if isinstance(default, str):
        return "a string"
    if isinstance(default, list):
        inner = f" of {_plural(default[0])}" if default else ""
        return f"a list{inner}"
    return type(default).__name__


def _plural(item: Any) -> str:
    return {"true or false": "true/false values", "an integer": "integers", "a float": "floats",
            "a string": "strings"}.get(_type_name(item), _type_name(item))


def _as_number(value: Any) -> float | None:
    """`value` as a float when it is a number (not a bool) or a numeric string, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def _scalar(value: Any, default: Any) -> Any:
    """`value` converted to the type of `default`; raises ConfigTypeError('') when it cannot."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        number = _as_number(value)
        if number is not None and math.isfinite(number) and number.is_integer():
            return int(number)
    elif isinstance(default, float):
        number = _as_number(value)
        if number is not None and math.isfinite(number):
            return number
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
    raise ConfigTypeError("")


def _nullable(key: str, value: Any) -> Any:
    if value is None:
        return None
    kind = NULL_DEFAULT_TYPES.get(key, str)
    if kind is int:
        return _scalar(value, 0)
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # a path that YAML read as a number
    raise ConfigTypeError("")


def coerce_value(key: str, value: Any, default: Any) -> Any:
    """`value` for config key `key` (dotted) converted to the type of `default`; raises
    ConfigTypeError naming key, value and expected type when it does not fit."""
    try:
        if default is None:
            return _nullable(key, value)
        if isinstance(default, list):
            if not isinstance(value, list):
                raise ConfigTypeError("")
            return [_scalar(v, default[0]) for v in value] if default else list(value)
        return _scalar(value, default)
    except ConfigTypeError:
        if default is None:
            kind = NULL_DEFAULT_TYPES.get(key, str)
            expected = f"null or {'an integer' if kind is int else 'a string (a path)'}"
        else:
            expected = f"{_type_name(default)}, like its default {json.dumps(default)}"
        raise ConfigTypeError(f"config key '{key}' = {value!r}: expected {expected}") from None


def coerce_tree(data: dict, schema: dict, prefix: str = "") -> None:
    """Check and convert, in place, every leaf of `data` whose key is in `schema` (unknown
    keys and sections are config._validate's business)."""
    for k, v in list(data.items()):
        if k not in schema:
            continue
        if isinstance(schema[k], dict):
            if isinstance(v, dict):
                coerce_tree(v, schema[k], f"{prefix}{k}.")
            continue
        data[k] = coerce_value(f"{prefix}{k}", v, schema[k])
