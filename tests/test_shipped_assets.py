"""What the package ships for the page: the embedded demo models and the samples (``medvit.assets``).

These check rules, whatever ``make demo-models`` embeds (no test names today's models): the catalogue
finds every shipped model folder, each has its files, loads and predicts its dataset's classes; each
dataset with an embedded model has one default; the weights fit the size budget; every sample's dataset
has a default model with the sample's classes; no committed text file holds an absolute path of the
machine that made it.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch

from medvit.assets import demo_models_dir, samples_dir
from medvit.data.datasets import get_spec
from medvit.demo import default_run, discover_runs, load_samples
from medvit.run_dir import load_run

REPO = Path(__file__).resolve().parent.parent
EMBEDDED = demo_models_dir()
SAMPLES = samples_dir()
MODELS = sorted(p.name for p in EMBEDDED.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
REQUIRED = (
    "model.json", "config.yaml", "best.safetensors", "metrics.csv", "predictions.csv", "selection.json",
    "report/summary.json", "report/per_class.csv", "report/index.md",
)
WEIGHTS_BUDGET_BYTES = 50_000_000  # issue 12: the embedded weights together <= 50 MB
SAMPLES_BUDGET_BYTES = 4 * 2**20
TEXT_SUFFIXES = (".json", ".yaml", ".yml", ".csv", ".md", ".txt", ".py")
# an absolute path: a POSIX path under a machine folder, a home directory, a Windows drive, a virtualenv
ABSOLUTE_PATH = re.compile(
    r"(?<![\w.~-])/(?:home|Users|root|tmp|work|mnt|media|opt|srv|scratch|data|private|var)/|"
    r"(?<![\w])[A-Za-z]:[\\/](?:Users|home)|site-packages"
)


def _committed_files(folder: Path) -> list[Path]:
    """The files git tracks under ``folder`` (every file when this is not a git checkout)."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--", str(folder)], cwd=REPO, capture_output=True, check=True
        ).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):
        return sorted(p for p in folder.rglob("*") if p.is_file())
    return [REPO / name for name in listed if name]


def test_there_are_embedded_models():
    assert MODELS, f"no embedded demo model in {EMBEDDED}; run `make demo-models`"


def test_the_catalogue_lists_every_shipped_model_once():
    entries = [e for e in discover_runs(None) if e.is_embedded]  # the page's default: the package's folder
    assert sorted(e.path.name for e in entries) == MODELS
    for entry in entries:
        header = json.loads((entry.path / "model.json").read_text())
        assert (entry.dataset, entry.model_name) == (header["dataset"], header["model"])


@pytest.mark.parametrize("name", MODELS)
def test_embedded_model_has_its_files(name):
    missing = [f for f in REQUIRED if not (EMBEDDED / name / f).is_file()]
    assert not missing, f"{name} lacks {missing}; re-export it with `medvit demo-export`"
    selection = json.loads((EMBEDDED / name / "selection.json").read_text())
    assert selection["split"] == "val" and selection["chosen"] in [c["run"] for c in selection["candidates"]]


@pytest.mark.slow  # builds every embedded network (about 60 M parameters together today)
@pytest.mark.parametrize("name", MODELS)
def test_embedded_model_loads_and_predicts_its_datasets_classes(name):
    run = load_run(EMBEDDED / name)
    spec = get_spec(run.dataset)
    assert run.class_names == list(spec.class_names)
    with torch.no_grad():
        logits = run.model(torch.zeros(1, 3, *run.image_size))
    assert logits.shape == (1, len(run.class_names)) and torch.isfinite(logits).all()
    per_class = pd.read_csv(EMBEDDED / name / "report" / "per_class.csv")
    assert run.class_names == [c for c in per_class["class"] if "avg" not in c]
    predictions = pd.read_csv(EMBEDDED / name / "predictions.csv", nrows=1)
    assert [c.removeprefix("prob_") for c in predictions.columns if c.startswith("prob_")] == run.class_names


def test_one_default_model_per_dataset():
    entries = discover_runs(None, EMBEDDED)
    datasets = {e.dataset for e in entries}
    assert datasets and all(datasets), f"a shipped model without a readable dataset: {entries}"
    for dataset in sorted(datasets):
        defaults = [e for e in entries if e.dataset == dataset and e.is_default]
        assert len(defaults) == 1, f"{dataset}: {len(defaults)} default models"
        assert defaults[0].is_embedded and default_run(entries, dataset) == defaults[0]


def test_embedded_weights_fit_the_budget():
    sizes = {p.parent.name: p.stat().st_size for p in EMBEDDED.glob("*/*.safetensors")}
    total = sum(sizes.values())
    assert total <= WEIGHTS_BUDGET_BYTES, f"embedded weights {total / 1e6:.1f} MB > 50 MB: {sizes}"


def test_no_absolute_path_in_committed_text_files():
    offenders = {}
    for path in _committed_files(EMBEDDED) + _committed_files(SAMPLES):
        if path.suffix in TEXT_SUFFIXES and path.is_file():
            text = path.read_text(errors="replace")
            hits = ABSOLUTE_PATH.findall(text) + ([str(REPO)] if str(REPO) in text else [])
            if hits:
                offenders[path.relative_to(REPO).as_posix()] = sorted(set(hits))
    assert not offenders, f"absolute paths in committed files: {offenders}"


def test_absolute_path_pattern():
    for text in ("root: /work/shared/pools", "'/home/ana/x.png'", "C:\\Users\\ana", "lib/python3.11/site-packages/x"):
        assert ABSOLUTE_PATH.search(text), text
    for text in ("root: pools/busi_256", "bundled:tf_efficientnet_lite0", "data_manifests/busi.csv", "~/data/x", "a/tmp/b"):
        assert not ABSOLUTE_PATH.search(text), text


def test_samples_match_the_default_models():
    samples = load_samples(SAMPLES)
    entries = discover_runs(None, EMBEDDED)
    assert samples
    for dataset in sorted({s.dataset for s in samples}):
        labels = {s.label for s in samples if s.dataset == dataset}
        default = default_run(entries, dataset)
        assert default is not None and default.is_default, f"samples of {dataset} but no default model for it"
        info = json.loads((default.path / "model.json").read_text())
        assert labels == set(info["class_names"]), dataset
        assert all(s.mask for s in samples if s.dataset == dataset and get_spec(dataset).has_mask), dataset
    assert not any(s.seen_in_training for s in samples)
    assert sum(p.stat().st_size for p in SAMPLES.rglob("*") if p.is_file()) < SAMPLES_BUDGET_BYTES
    assert (SAMPLES / "ATTRIBUTION.md").is_file()
