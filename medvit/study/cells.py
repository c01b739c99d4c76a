"""The cells of a study: one ``medvit pretrain`` run per backbone (distilled start) and one fine-tuning run
per (dataset, backbone, seed), each an ordinary run directory under the study folder.

``STUDY/pretrain/<backbone>/`` and ``STUDY/<dataset>/<backbone>[_s<seed>]/`` are what ``medvit report``,
``explain`` and the page open. A cell's *results* are the small files the report reads
(:data:`RESULT_FILES`, plus ``cam/`` for the dataset with lesion masks); a cell whose results are all
there is finished even without its weights, so results committed to the repository count as done on a
fresh machine. A cell job resumes an interrupted run (pretrain and fine-tune alike) from its last
completed epoch.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from medvit.errors import RunError
from medvit.explain.files import write_split_scores
from medvit.pretrain import pretrain
from medvit.run_dir import (
    CONFIG_YAML,
    LAST_STATE,
    METRICS_CSV,
    MODEL_JSON,
    PREDICTIONS_CSV,
    TRAIN_LOG,
    predictions_filename,
)
from medvit.study.config import StudyConfig
from medvit.study.figure import figure_cams
from medvit.workflows import train_run

__all__ = [
    "CAM_DIR",
    "Cell",
    "RESULT_FILES",
    "cell_state",
    "clear_unstarted",
    "score_cams",
    "start_weights",
    "plan_cells",
    "publish_results",
    "run_cell",
    "run_state",
    "select_cells",
]

_logger = logging.getLogger(__name__)

CAM_DIR = "cam"
RESULT_FILES = (CONFIG_YAML, MODEL_JSON, METRICS_CSV, TRAIN_LOG, PREDICTIONS_CSV, predictions_filename("val"))
PRETRAIN_RESULT_FILES = (CONFIG_YAML, MODEL_JSON, METRICS_CSV, TRAIN_LOG)
CAM_FILES = ("stage_scores_test.csv", "stage_scores_test_per_image.csv", "figure.npz")
_FRESH_RUN_FILES = {CONFIG_YAML, MODEL_JSON, TRAIN_LOG}


@dataclass(frozen=True)
class Cell:
    """One job of a study.

    Attributes:
        name: ``pretrain/<backbone>`` or ``<dataset>/<backbone>`` (``_s<seed>`` for seeds other than the first).
        kind: ``pretrain`` or ``train``.
        backbone, dataset, seed: what it trains (``dataset`` is None for a pretrain cell).
        needs: the pretrain cell it fine-tunes from, or None.
        scores_cams: whether the job also scores the test split's per-stage CAMs against lesion masks.
    """

    name: str
    kind: str
    backbone: str
    dataset: str | None = None
    seed: int = 0
    needs: str | None = None
    scores_cams: bool = False

    def path(self, study_dir: str | Path) -> Path:
        return Path(study_dir) / self.name

    def result_files(self) -> tuple[str, ...]:
        files = PRETRAIN_RESULT_FILES if self.kind == "pretrain" else RESULT_FILES
        return files + tuple(f"{CAM_DIR}/{name}" for name in CAM_FILES) * self.scores_cams


def plan_cells(cfg: StudyConfig) -> list[Cell]:
    """Every cell of ``cfg``: pretrain cells first, then datasets × backbones × seeds."""
    cells = []
    cells += [Cell(f"pretrain/{b}", "pretrain", b) for b in cfg.backbones if cfg.backbone_start(b) == "distilled"]
    for dataset in cfg.datasets:
        for backbone in cfg.backbones:
            for i, seed in enumerate(cfg.seeds):
                name = f"{dataset}/{backbone}" + (f"_s{seed}" if i else "")
                cells.append(Cell(
                    name, "train", backbone, dataset, seed,
                    needs=f"pretrain/{backbone}" if cfg.backbone_start(backbone) == "distilled" else None,
                    scores_cams=cfg.cam.get("dataset") == dataset,
                ))
    return cells


def select_cells(cells: Sequence[Cell], only: Sequence[str] = ()) -> list[Cell]:
    """The cells named in ``only`` (``busi/acc_vit_tiny``, ``busi`` for a whole dataset) with the pretrain
    cells they need; all cells when ``only`` is empty.

    Raises:
        ValueError: a name matches no cell (the known names are listed).
    """
    if not only:
        return list(cells)
    chosen = set()
    for name in only:
        matches = {c.name for c in cells if c.name == name or c.name.split("/")[0] == name or c.backbone == name}
        if not matches:
            raise ValueError(f"--only {name!r}: no such cell; cells: {', '.join(c.name for c in cells)}")
        chosen |= matches
    needed = {c.needs for c in cells if c.name in chosen and c.needs}
    return [c for c in cells if c.name in chosen or c.name in needed]


def _finished_run(path: Path) -> bool:
    if not (path / LAST_STATE).is_file():
        return False
    return bool(torch.load(path / LAST_STATE, map_location="cpu", weights_only=True).get("finished"))


def _all_epochs(path: Path) -> bool:
    """Whether a pretrain run's ``metrics.csv`` holds every epoch of its ``config.yaml``."""
    import pandas as pd
    import yaml

    epochs = (yaml.safe_load((path / CONFIG_YAML).read_text()) or {}).get("epochs")
    return epochs is not None and len(pd.read_csv(path / METRICS_CSV)) >= int(epochs)


def cell_state(cell: Cell, study_dir: str | Path) -> str:
    """``finished`` (every result file present), ``trained`` (the run finished, its CAM scores are
    missing), ``partial`` (resumable), ``empty`` (no completed epoch) or ``new``."""
    path = cell.path(study_dir)
    if not path.exists():
        return "new"
    if all((path / name).is_file() for name in cell.result_files()) and (cell.kind == "train" or _all_epochs(path)):
        return "finished"
    if _finished_run(path) and all((path / name).is_file() for name in RESULT_FILES if cell.kind == "train"):
        return "trained"
    return "partial" if (path / LAST_STATE).is_file() else "empty"


def _weights_present(cell: Cell, study_dir: Path) -> bool:
    name = "backbone.safetensors" if cell.kind == "pretrain" else "best.safetensors"
    return (cell.path(study_dir) / name).is_file()


def run_state(path: str | Path) -> str:
    """A fine-tuning run directory's state: ``finished`` (the run finished and wrote its test predictions),
    ``partial`` (resumable), ``empty`` (no completed epoch) or ``new``."""
    path = Path(path)
    if not path.exists():
        return "new"
    if not (path / LAST_STATE).is_file():
        return "empty"
    return "finished" if _finished_run(path) and (path / PREDICTIONS_CSV).is_file() else "partial"


def clear_unstarted(path: Path) -> None:
    """Remove a run folder that holds no completed epoch (nothing to keep), refusing anything unexpected."""
    leftovers = {p.name for p in path.iterdir()}
    if not leftovers <= _FRESH_RUN_FILES | {METRICS_CSV}:
        raise RunError(f"{path}: no completed epoch but unexpected files {sorted(leftovers)}; move it aside")
    shutil.rmtree(path)


def run_cell(cfg: StudyConfig, cell: Cell, study_dir: str | Path) -> str:
    """Run (or resume, or finish) one cell; returns the state it started in.

    A pretrain cell whose results are present but whose weights are not (results from the repository on
    a fresh machine) is re-run from scratch when a fine-tuning cell still needs it: the run is seeded,
    so it gives the same weights.
    """
    study_dir = Path(study_dir)
    path = cell.path(study_dir)
    state = cell_state(cell, study_dir)
    _logger.info("%s: %s", cell.name, state)
    if state == "finished":
        return state
    if state == "empty":
        clear_unstarted(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if cell.kind == "pretrain":
        if state == "partial":
            pretrain(None, path, resume=True)
        else:
            pretrain(cfg.pretrain_config(cell.backbone), path)
        return state
    if state in ("partial", "new", "empty"):
        if state == "partial":
            train_run(None, path, resume=True)
        else:
            pretrained = start_weights(cfg, cell, study_dir)
            train_run(cfg.cell_train_config(cell.dataset, cell.backbone, cell.seed, pretrained), path)
    if cell.scores_cams:
        score_cams(cfg, cell, study_dir)
    return state


def ensure_pretrain_weights(cfg: StudyConfig, cell: Cell, study_dir: Path) -> None:
    """Re-run a finished pretrain cell whose weights are gone (results-only copy) from scratch."""
    path = cell.path(study_dir)
    if _weights_present(cell, study_dir):
        return
    if (path / LAST_STATE).is_file():
        raise RunError(f"{path}: a run without backbone.safetensors; resume it with 'medvit pretrain --resume'")
    _logger.info("%s: weights missing (results only); distilling again (seeded: same weights)", cell.name)
    aside = path.with_name(path.name + ".results")
    if path.exists():
        shutil.rmtree(aside, ignore_errors=True)
        path.rename(aside)
    pretrain(cfg.pretrain_config(cell.backbone), path)
    shutil.rmtree(aside, ignore_errors=True)


def start_weights(cfg: StudyConfig, cell: Cell, study_dir: Path) -> str | None:
    start = cfg.backbone_start(cell.backbone)
    if start == "scratch":
        return None
    if start == "imagenet":
        return cfg.weights[cell.backbone]
    needed = Cell(cell.needs, "pretrain", cell.backbone)
    if cell_state(needed, study_dir) not in ("finished", "trained"):
        raise RunError(f"{cell.name} needs {cell.needs}, which has not finished; run it first")
    ensure_pretrain_weights(cfg, needed, study_dir)
    return str(needed.path(study_dir))


def score_cams(cfg: StudyConfig, cell: Cell, study_dir: Path) -> None:
    """The cell's per-stage CAM localisation on the test split and the figure images' stage CAMs (``cam/``)."""
    path = cell.path(study_dir)
    if not _weights_present(cell, study_dir):
        raise RunError(f"{path}: best.safetensors is missing, so its CAMs cannot be scored; retrain the cell")
    dataset = cfg.datasets[cell.dataset]
    out = path / CAM_DIR
    write_split_scores(
        path, dataset["manifest"], out, root=dataset["root"], split=cfg.cam.get("split", "test"),
        method=cfg.cam.get("method", "gradcam"), target="label",
    )
    figure = figure_cams(path, dataset["manifest"], dataset["root"], int(cfg.cam.get("figure_images", 6)),
                         split=cfg.cam.get("split", "test"), method=cfg.cam.get("method", "gradcam"))
    np.savez_compressed(out / "figure.npz", **figure)


def publish_results(cell: Cell, study_dir: str | Path, results_dir: str | Path) -> list[Path]:
    """Copy a finished cell's result files (no weights) to ``results_dir/<cell>/``; returns the copies."""
    source, dest = cell.path(study_dir), Path(results_dir) / cell.name
    copied = []
    for name in cell.result_files():
        if (source / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / name, dest / name)
            if name == TRAIN_LOG:
                (dest / name).write_text(machine_neutral((dest / name).read_text()))
            copied.append(dest / name)
    return copied


def machine_neutral(text: str) -> str:
    """``text`` without this machine's absolute paths (a published log goes into a repository):
    installed packages' folder becomes ``<site-packages>``, the Python prefix ``<python>``, the working
    directory ``.`` and the home folder ``~``."""
    import site
    import sys

    places = [(p, "<site-packages>") for p in site.getsitepackages()]
    places += [(sys.prefix, "<python>"), (str(Path.cwd()), "."), (str(Path.home()), "~")]
    for prefix, name in places:
        if prefix not in ("", "/"):
            text = text.replace(prefix.rstrip("/") + "/", name + "/")
    return text


def adopt_results(cell: Cell, study_dir: str | Path, results_dir: str | Path) -> bool:
    """Copy published results of ``cell`` into the study folder when it has none; True when it did."""
    source, dest = Path(results_dir) / cell.name, cell.path(study_dir)
    if dest.exists() or not all((source / name).is_file() for name in cell.result_files()):
        return False
    shutil.copytree(source, dest)
    return True


def cell_summary(cell: Cell, study_dir: str | Path) -> dict:
    """Train time (s), epochs, the kept epoch and the precision of a cell, from its result files."""
    import pandas as pd

    path = cell.path(study_dir)
    metrics = pd.read_csv(path / METRICS_CSV)
    info = json.loads((path / MODEL_JSON).read_text())
    seconds = float(metrics["epoch_time_s"].sum()) if "epoch_time_s" in metrics else float("nan")
    return {"cell": cell.name, "epochs": len(metrics), "train_s": seconds, "precision": info.get("precision", "fp32")}
