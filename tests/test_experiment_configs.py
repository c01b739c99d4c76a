"""The committed experiment configs and the `make demo-models` recipe that runs them.

A typo in a config, or a run that `make demo-models` needs before it has trained it, would otherwise show up
hours into a regeneration. These checks read the files only: nothing is trained. Every file is read as
`medvit train` / `medvit pretrain` read it (its `base:` chain expanded, :mod:`medvit.config_files`).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import timm
import yaml

import medvit.models  # noqa: F401  (registers the zoo with timm)
from medvit.config_files import BASE_KEY, load_yaml_config
from medvit.pretrain.config import load_pretrain_config
from medvit.train.config import load_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "experiments" / "configs").glob("*.yaml"))
NOT_EMBEDDED = "NOT embedded"


def _is_pretrain(path: Path) -> bool:
    return path.name.startswith("pretrain_")


def _demo_models_steps() -> list[tuple[str, str, str, dict[str, str]]]:
    """(train|pretrain, config stem, --out, --set overrides) of every step `make -n demo-models` prints, in order."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    printed = subprocess.run(
        ["make", "-n", "demo-models", "POOLS=pools", "DEMO_RUNS=runs/demo_models", "DEMO_SET="],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout
    steps = []
    for line in printed.replace("\\\n", " ").splitlines():
        step = re.search(r"medvit (train|pretrain) --config experiments/configs/(\w+)\.yaml\s+--out\s+(\S+)", line)
        if step:
            steps.append((*step.groups(), dict(re.findall(r"--set (\S+?)=(\S+)", line))))
    assert steps, "`make -n demo-models` printed no `medvit train` / `medvit pretrain` step"
    return steps


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads_and_names_a_known_model(path: Path) -> None:
    if _is_pretrain(path):
        # a run-directory teacher is checked on disk at load time; the ordering test below covers it
        teacher = load_yaml_config(path).get("teacher", "")
        cfg = load_pretrain_config(path, [] if str(teacher).startswith("tf_") else ["teacher=tf_efficientnet_lite0"])
        assert timm.is_model(cfg.student), f"{path.name}: unknown student {cfg.student!r}"
    else:
        cfg = load_config(path)
        assert timm.is_model(cfg.model), f"{path.name}: unknown model {cfg.model!r}"


def test_every_embedded_demo_config_is_in_make_demo_models() -> None:
    used = {stem for _, stem, _, _ in _demo_models_steps()}
    for name in used:
        assert (REPO / "experiments" / "configs" / f"{name}.yaml").is_file(), f"the Makefile runs {name}.yaml, which is missing"
    for path in CONFIGS:
        if path.name.startswith("demo_") and NOT_EMBEDDED not in path.read_text():
            assert path.stem in used, f"{path.name} is not in `make demo-models` (or say {NOT_EMBEDDED!r} in it)"


def test_demo_models_trains_every_run_before_a_config_needs_it() -> None:
    """A config's `pretrained:` / `distill.teacher:` / pretrain `teacher:` run exists when its step runs."""
    made: set[str] = set()
    for kind, stem, out, overrides in _demo_models_steps():
        data = load_yaml_config(REPO / "experiments" / "configs" / f"{stem}.yaml")
        needed = [
            overrides.get("pretrained", data.get("pretrained")),
            overrides.get("distill.teacher", (data.get("distill") or {}).get("teacher")),
            overrides.get("teacher", data.get("teacher")) if kind == "pretrain" else None,
        ]
        for value in needed:
            if isinstance(value, str) and value.startswith("runs/"):
                run = re.sub(r"/(best|backbone)\.safetensors$", "", value)
                assert run in made, f"{stem}.yaml needs {run}, which `make demo-models` has not made by then"
        made.add(out)


def _own_keys(path: Path) -> dict:
    """The keys a file itself lists (its ``base`` unexpanded)."""
    return yaml.safe_load(path.read_text()) or {}


def _changes(own: dict, base: dict, prefix: str = "") -> list[str]:
    """Dotted keys of ``own`` whose value the expanded ``base`` already has (nothing changed: noise)."""
    same = []
    for key, value in own.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            same += _changes(value, base[key], f"{prefix}{key}.")
        elif key in base and base[key] == value:
            same.append(f"{prefix}{key}")
    return same


@pytest.mark.parametrize("path", [p for p in CONFIGS if BASE_KEY in _own_keys(p)], ids=lambda p: p.name)
def test_a_variant_lists_only_what_it_changes(path: Path) -> None:
    """A variant's base is a committed config of this folder, and each key it lists differs from that base."""
    own = _own_keys(path)
    base = (path.parent / own.pop(BASE_KEY)).resolve()
    assert base.parent == path.parent and base in CONFIGS, f"{path.name}: its base {base} is not in experiments/configs"
    assert _is_pretrain(base) == _is_pretrain(path), f"{path.name}: a train config and a pretrain config mix"
    repeated = _changes(own, load_yaml_config(base))
    assert not repeated, f"{path.name} repeats what {base.name} already says: {', '.join(repeated)}; drop those keys"
