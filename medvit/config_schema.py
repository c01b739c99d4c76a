"""The one config validator: dataclasses as schemas, YAML mappings checked against them, ``--set`` overrides.

``medvit train`` (:class:`medvit.train.config.TrainConfig`), ``medvit pretrain``
(:class:`medvit.pretrain.config.PretrainConfig`) and ``medvit study`` (its YAML schema in
:mod:`medvit.study.config`) build their configs with
:func:`build_config`: every key maps to a field, unknown keys ("did you mean") and bad values raise a
``ValueError`` naming the key and what is allowed, so a typo never runs silently with a default.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import yaml

__all__ = ["EXPONENT_NUMBER", "apply_overrides", "build_config", "choices", "image_size_pair", "value_range"]


def value_range(low: float | None = None, high: float | None = None, *, low_open: bool = False) -> dict:
    """Field metadata: the value must lie in ``[low, high]`` (``(low, high]`` with ``low_open``; ``None``: unbounded)."""
    return {"range": (low, high, low_open)}


def choices(*values: Any) -> dict:
    """Field metadata: the value must be one of ``values``."""
    return {"choices": values}


EXPONENT_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
"""A number in exponent form that YAML 1.1 (PyYAML) reads as a string when it has no dot: ``3e-4``."""
_TYPE_NAMES = {bool: "true/false", int: "an integer", float: "a number", str: "a string", dict: "a mapping"}


def _describe(tp: Any) -> str:
    """How a config type reads in an error message."""
    if tp is type(None):
        return "null"
    if typing.get_origin(tp) in (Union, types.UnionType):
        return " or ".join(_describe(arm) for arm in typing.get_args(tp))
    if typing.get_origin(tp) is dict:
        return "a mapping"
    if typing.get_origin(tp) is list:
        return f"a list of {_describe(typing.get_args(tp)[0]).removeprefix('an ').removeprefix('a ')}s"
    return _TYPE_NAMES.get(tp, getattr(tp, "__name__", str(tp)))


def _coerce(value: Any, tp: Any) -> Any:
    """``value`` as type ``tp`` (a resolved annotation); raises ``TypeError`` when it is not one."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        for arm in args:  # in annotation order: ``bool | str`` keeps ``true`` a bool
            try:
                return _coerce(value, arm)
            except TypeError:
                continue
        raise TypeError
    if tp is type(None):
        if value is not None:
            raise TypeError
        return None
    if tp is bool:
        if not isinstance(value, bool):
            raise TypeError
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError
        return value
    if tp is float:
        if isinstance(value, str) and EXPONENT_NUMBER.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads ``3e-4`` (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise TypeError
        return float(value)
    if tp is str:
        if not isinstance(value, (str, Path)):
            raise TypeError
        return str(value)
    if tp is dict or origin is dict:
        if not isinstance(value, Mapping):
            raise TypeError
        return dict(value)
    if tp is list or origin is list:
        if not isinstance(value, (list, tuple)):
            raise TypeError
        return [_coerce(item, args[0]) for item in value] if args else list(value)
    raise NotImplementedError(f"config annotation {tp!r} has no type check; add it to _coerce")


def image_size_pair(value: Any, name: str = "config key 'image_size'") -> list[int]:
    """``[H, W]`` from one positive int or a list of one or two positive ints (``name``: the key, for the error)."""
    sizes = [value] if isinstance(value, int) and not isinstance(value, bool) else value
    if (
        not isinstance(sizes, (list, tuple))
        or len(sizes) not in (1, 2)
        or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes)
    ):
        raise ValueError(
            f"{name}: expected one positive integer or [H, W] of positive integers, got {value!r}"
        )
    sizes = [int(s) for s in sizes]
    return sizes * 2 if len(sizes) == 1 else sizes


def _check_type(key: str, value: Any, f: dataclasses.Field, tp: Any, noun: str = "config key") -> Any:
    """Check one value against the field's resolved annotation ``tp``; returns the coerced value."""
    if f.metadata.get("image_size"):
        return image_size_pair(value, f"{noun} '{key}'")
    try:
        return _coerce(value, tp)
    except TypeError:
        expected = f.metadata.get("expected", _describe(tp))
        raise ValueError(f"{noun} '{key}': expected {expected}, got {value!r}") from None


def _check_range(key: str, value: Any, f: dataclasses.Field, noun: str = "config key") -> None:
    if value is None:
        return
    if "choices" in f.metadata and value not in f.metadata["choices"]:
        allowed = ", ".join("null" if c is None else str(c) for c in f.metadata["choices"])
        raise ValueError(f"{noun} '{key}': got {value!r}; allowed: {allowed}")
    if "range" in f.metadata:
        low, high, low_open = f.metadata["range"]
        bad_low = low is not None and (value <= low if low_open else value < low)
        bad_high = high is not None and value > high
        if bad_low or bad_high:
            lo = "-inf" if low is None else low
            hi = "inf" if high is None else high
            bracket = "(" if low_open else "["
            raise ValueError(f"{noun} '{key}': {value!r} is out of range; allowed: {bracket}{lo}, {hi}]")


def build_config(cls: type, data: Mapping[str, Any], prefix: str = "", noun: str = "config key") -> Any:
    """Build the dataclass ``cls`` from a mapping, checking every key and value against its fields.

    Unknown keys raise with a "did you mean"; each value is checked against the field's annotation
    (:func:`typing.get_type_hints`) and its metadata (:func:`value_range`, :func:`choices`,
    ``{"image_size": True}``, ``{"key": "class"}`` for a YAML key that is no Python name); a field typed
    as a dataclass is a nested section (``prefix`` names it), and so is each value of a
    ``dict[str, <dataclass>]`` field (named sections, e.g. a study's datasets) and each item of a
    ``list[<dataclass>]``. A field without a default is a required key.

    Raises:
        ValueError: naming the key (``noun``: how keys are called, e.g. "study config key") and what is allowed.
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"{noun} '{prefix.rstrip('.') or '<root>'}': expected a mapping, got {data!r}")
    fields = {f.metadata.get("key", f.name): f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields), key=str)
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), list(fields), n=1)
        hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
        raise ValueError(
            f"unknown {noun} '{prefix}{unknown[0]}'{hint}; allowed keys{' under ' + prefix.rstrip('.') if prefix else ''}: "
            f"{', '.join(sorted(fields))}"
        )
    missing = [key for key, f in fields.items() if key not in data and _is_required(f)]
    if missing:
        raise ValueError(f"{noun} '{prefix}{missing[0]}' is missing; it has no default")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key_name, value in data.items():
        f = fields[key_name]
        key = f"{prefix}{key_name}"
        kwargs[f.name] = _build_value(key, value, f, hints[f.name], noun)
    return cls(**kwargs)


def _is_required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _section_type(tp: Any) -> Any:
    """The dataclass of a section field (``tp``, or the arm of ``tp | None``); ``None`` otherwise."""
    if dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) in (Union, types.UnionType):
        arms = [arm for arm in typing.get_args(tp) if arm is not type(None)]
        if len(arms) == 1 and dataclasses.is_dataclass(arms[0]):
            return arms[0]
    return None


def _build_value(key: str, value: Any, f: dataclasses.Field, tp: Any, noun: str) -> Any:
    """One field's value: a nested section, a mapping or list of sections, or a checked plain value."""
    section = _section_type(tp)
    if section is not None:
        return build_config(section, value or {}, prefix=f"{key}.", noun=noun)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    item = _section_type(args[-1]) if origin in (dict, list) and args else None  # the section of each value/item
    if item is not None and origin is dict:
        if not isinstance(value, Mapping):
            raise ValueError(f"{noun} '{key}': expected a mapping of named sections, got {value!r}")
        return {str(name): build_config(item, spec or {}, prefix=f"{key}.{name}.", noun=noun)
                for name, spec in value.items()}
    if item is not None:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{noun} '{key}': expected a list, got {value!r}")
        return [build_config(item, entry, prefix=f"{key}[{i}].", noun=noun) for i, entry in enumerate(value)]
    value = _check_type(key, value, f, tp, noun)
    _check_range(key, value, f, noun)
    return value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key=value`` overrides (dotted keys for nested sections; values parsed as YAML).

    Example: ``["epochs=3", "early_stopping.patience=2", "image_size=[64,64]"]``.
    """
    data = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in data.items()}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected key=value, e.g. --set epochs=3")
        key, raw = item.split("=", 1)
        key = key.strip()
        value = yaml.safe_load(raw) if raw.strip() else None
        parts = key.split(".")
        target = data
        for part in parts[:-1]:
            node = target.get(part)
            if node is None:
                node = {}
            elif not isinstance(node, dict):
                raise ValueError(f"--set {item!r}: config key '{part}' is not a section")
            target[part] = node = dict(node)
            target = node
        target[parts[-1]] = value
    return data
