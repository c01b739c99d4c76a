"""The committed experiment configs and the `make demo-models` recipe that runs them.

A typo in a config, or a run that `make demo-models` needs before it has trained it, would otherwise show up
hours into a regeneration. These checks read the files only: nothing is trained.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import timm
import yaml

import medvit.models  # noqa: F401  (registers the zoo with timm)
from medvit.pretrain.config import load_pretrain_config
from medvit.train.config import load_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "experiments" / "configs").glob("*.yaml"))
NOT_EMBEDDED = "NOT embedded"


def _is_pretrain(path: Path) -> bool:
    return path.name.startswith("pretrain_")


def _demo_models_recipe() -> list[str]:
    """The commands of the Makefile's demo-models target, continuation lines joined, in order."""
    text = (REPO / "Makefile").read_text().replace("\\\n", " ")
    recipe = text.split("\ndemo-models:", 1)[1].split("\n# ----", 1)[0]
    return [line.strip() for line in recipe.splitlines()[1:] if line.startswith("\t")]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads_and_names_a_known_model(path: Path) -> None:
    if _is_pretrain(path):
        # a run-directory teacher is checked on disk at load time; the ordering test below covers it
        teacher = yaml.safe_load(path.read_text()).get("teacher", "")
        cfg = load_pretrain_config(path, [] if str(teacher).startswith("tf_") else ["teacher=tf_efficientnet_lite0"])
        assert timm.is_model(cfg.student), f"{path.name}: unknown student {cfg.student!r}"
    else:
        cfg = load_config(path)
        assert timm.is_model(cfg.model), f"{path.name}: unknown model {cfg.model!r}"


def test_every_embedded_demo_config_is_in_make_demo_models() -> None:
    recipe = "\n".join(_demo_models_recipe())
    used = set(re.findall(r"demo_train,(demo_\w+),", recipe)) | set(re.findall(r"configs/(pretrain_\w+)\.yaml", recipe))
    for name in used:
        assert (REPO / "experiments" / "configs" / f"{name}.yaml").is_file(), f"the Makefile runs {name}.yaml, which is missing"
    for path in CONFIGS:
        if path.name.startswith("demo_") and NOT_EMBEDDED not in path.read_text():
            assert path.stem in used, f"{path.name} is not in `make demo-models` (or say {NOT_EMBEDDED!r} in it)"


def test_demo_models_trains_every_run_before_a_config_needs_it() -> None:
    """A config's `pretrained:` / `distill.teacher:` / pretrain `teacher:` run exists when its step runs."""
    made: set[str] = set()
    for command in _demo_models_recipe():
        train = re.search(r"demo_train,(\w+),(\w+),\w+,(.*)\)", command)
        pretrain = re.search(r"pretrain --config experiments/configs/(\w+)\.yaml\s+--out\s+(\S+)", command)
        if not (train or pretrain):
            continue
        stem, out = (train.group(1), f"runs/demo_models/{train.group(2)}") if train else (pretrain.group(1), pretrain.group(2))
        data = yaml.safe_load((REPO / "experiments" / "configs" / f"{stem}.yaml").read_text())
        overrides = dict(re.findall(r"--set (\S+?)=([^\s)]+)", command.replace("$(DEMO_RUNS)", "runs/demo_models")))
        needed = [
            overrides.get("pretrained", data.get("pretrained")),
            overrides.get("distill.teacher", (data.get("distill") or {}).get("teacher")),
            overrides.get("teacher", data.get("teacher")) if pretrain else None,
        ]
        for value in needed:
            if isinstance(value, str) and value.startswith("runs/"):
                run = re.sub(r"/(best|backbone)\.safetensors$", "", value)
                assert run in made, f"{stem}.yaml needs {run}, which `make demo-models` has not made by then"
        made.add(out)
