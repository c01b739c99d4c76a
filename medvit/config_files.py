"""Reading a config file: YAML, with a ``base:`` recipe and the variant's differences merged over it.

A config file may name another file as its base and then list only the keys that differ::

    # experiments/configs/demo_busi_vvt_tiny_long.yaml
    base: demo_busi_vvt_tiny.yaml     # relative to this file
    epochs: 30
    early_stopping: {patience: 10}    # merged into the base's section: its metric is kept

:func:`load_yaml_config` expands it: the base is read first (itself expanded, so a base may have a base), then the
variant is merged over it by :func:`merge_config` (mappings key by key, every other value, a list included,
replaced whole). The result has no ``base`` key: it is the complete config, what ``medvit train`` and ``medvit
pretrain`` validate and write to a run's ``config.yaml``. ``medvit train``, ``medvit pretrain`` and the study read
their files through this one function.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import yaml

__all__ = ["BASE_KEY", "load_yaml_config", "merge_config"]

BASE_KEY = "base"
"""The top-level key naming a config's base recipe (a path relative to the file that declares it)."""


def merge_config(base: Mapping[str, Any], variant: Mapping[str, Any]) -> dict[str, Any]:
    """``variant`` merged over ``base``: mappings merge key by key (recursively), other values replace.

    A list replaces the base's list whole (``image_size``, pretrain ``data``), and ``null`` replaces whatever the
    base had. Neither input is modified.
    """
    merged = dict(base)
    for key, value in variant.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_config(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_yaml_config(path: str | Path, *, not_found_hint: str = "") -> dict[str, Any]:
    """The mapping a YAML config file holds, its ``base:`` chain expanded (see the module docstring).

    Args:
        path: the YAML file.
        not_found_hint: what the message of a missing ``path`` adds (e.g. where the examples are).

    Returns:
        The complete mapping, without the ``base`` key; ``{}`` for an empty file.

    Raises:
        FileNotFoundError: ``path`` or a base it names does not exist (the message names the file that names it).
        ValueError: a file is not valid YAML or not a mapping, a ``base`` is not a file name, or the bases make a
            cycle (the message lists it).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} not found" + (f"; {not_found_hint}" if not_found_hint else ""))
    return _expand(path, chain=())


def _expand(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    """``path``'s mapping over its expanded base; ``chain`` holds the variants that led here (cycle check)."""
    data = _read_mapping(path)
    if BASE_KEY not in data:
        return data
    base_name = data.pop(BASE_KEY)
    if not isinstance(base_name, str) or not base_name.strip():
        raise ValueError(
            f"{path}: config key '{BASE_KEY}': expected the file name of the base config (relative to this file), "
            f"got {base_name!r}"
        )
    base = (path.parent / base_name).resolve()
    here = path.resolve()
    seen = chain + (here,)
    if base in seen:
        cycle = " -> ".join(p.name for p in seen[seen.index(base):] + (base,))
        raise ValueError(f"{path}: '{BASE_KEY}: {base_name}' makes a cycle of bases ({cycle}); one of them must not have a base")
    if not base.is_file():
        raise FileNotFoundError(
            f"{path}: '{BASE_KEY}: {base_name}' not found ({base}); the path is relative to the file that names it"
        )
    return merge_config(_expand(base, seen), data)


def _read_mapping(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML ({error})") from error
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of config keys at the top level")
    return data
