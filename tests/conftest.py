"""Shared test set-up: offline, CPU-only, deterministic, small.

Shared fixtures (session-scoped: built once per test session; treat what they return as read-only,
``shutil.copytree`` a run before changing it):

* ``tiny_vvt_kwargs``: ``model_kwargs`` of a tiny ``vvt_tiny`` (4 stages of 8-32 channels, one block each).
* ``synthetic_busi``: synthetic BUSI (12 images per class, with masks) and its manifest (24 train,
  6 val, 6 test), as ``{"manifest": str, "root": str}``.
* ``tiny_train_config``: ``tiny_train_config(**overrides) -> dict``, the training config of a one-epoch
  tiny VVT on ``synthetic_busi`` at 32x32 on the CPU (what ``medvit train`` reads from YAML).
* ``one_thread``: run the test with one intra-op thread (results bitwise comparable with the
  one-thread subprocesses of the resume/DDP tests; use with ``pytest.mark.usefixtures``).
* ``tiny_run``: one run directory of ``medvit train``'s workflow on ``tiny_train_config(image_size=64)`` (every run file
  and ``report/``; 3 classes ``benign, malignant, normal``; 64x64, so the stride-32 stage is 2x2).
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TIMM_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))

TINY_VVT = {"embed_dims": [8, 16, 16, 32], "num_heads": [1, 1, 1, 2], "depths": [1, 1, 1, 1], "mlp_ratios": [2, 2, 2, 2]}


@pytest.fixture(autouse=True)
def _seed_torch() -> None:
    """Every test starts from the same torch RNG state."""
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """One intra-op thread for the test: float reductions then match one-thread subprocesses bitwise."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_vvt_kwargs() -> dict[str, list[int]]:
    """``model_kwargs`` of a tiny ``vvt_tiny``: a few thousand parameters, four stages."""
    return {key: list(value) for key, value in TINY_VVT.items()}


@pytest.fixture(scope="session")
def synthetic_busi(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Synthetic BUSI (12 images per class) and its manifest: 24 train, 6 val, 6 test."""
    from medvit.data.manifest import prepare_manifest
    from medvit.data.synthetic import make_synthetic

    root = tmp_path_factory.mktemp("synthetic_busi")
    raw = root / "raw"
    make_synthetic(raw, "busi", per_class=12, seed=0)
    manifest = root / "busi.csv"
    prepare_manifest("busi", raw, manifest, num_workers=1)
    return {"manifest": str(manifest), "root": str(raw)}


@pytest.fixture(scope="session")
def tiny_train_config(synthetic_busi: dict[str, str], tiny_vvt_kwargs: dict) -> Callable[..., dict[str, Any]]:
    """``tiny_train_config(**overrides)``: a one-epoch tiny-VVT config on ``synthetic_busi`` (32x32, CPU)."""

    def make(**overrides: Any) -> dict[str, Any]:
        cfg = {
            "model": "vvt_tiny",
            "model_kwargs": tiny_vvt_kwargs,
            "manifest": synthetic_busi["manifest"],
            "root": synthetic_busi["root"],
            "image_size": 32,
            "epochs": 1,
            "batch_size": 8,
            "lr": 2e-3,
            "warmup_epochs": 0.5,
            "label_smoothing": 0.0,
            "device": "cpu",
            "n_bootstrap": 100,
        }
        cfg.update(overrides)
        return cfg

    return make


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_train_config: Callable[..., dict]) -> Path:
    """A run directory trained once with ``tiny_train_config(image_size=64)``; copy it before changing it."""
    from medvit.train.config import config_from_dict
    from medvit.workflows import train_run

    run = tmp_path_factory.mktemp("tiny_run") / "run"
    train_run(config_from_dict(tiny_train_config(image_size=64)), run)
    return run
