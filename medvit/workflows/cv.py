"""Cross-validated training (``cv: {folds: K}``): K grouped, stratified folds over train+val in one run.

A cross-validated run directory holds::

    RUN/config.yaml            the config (with ``cv``), as given
    RUN/folds.csv              the fold of every train+val row (image, label, group, split, fold)
    RUN/fold_<k>/              an ordinary run: train = the other folds, val = fold k, test = test;
                               its manifest (``manifest.csv`` + side JSON) sits inside it
    RUN/refit/                 with ``final: refit``: train+val for the epoch count the folds chose
    RUN/model.json             the description, ``cv`` (folds, members, chosen epochs) and the
                               ``calibration`` fitted on the out-of-fold predictions
    RUN/predictions_oof.csv    every train+val image once, predicted by the fold that did not train on it
    RUN/predictions.csv        the test split, predicted by the final predictor
    RUN/report/

Each fold chooses its epoch on its own held-out fold (the engine's early-stopping metric). The test
rows are never trained on, chosen on or calibrated on. The final predictor is the fold ensemble
(:class:`medvit.models.ensemble.FoldEnsemble`: mean of the members' probabilities after the
out-of-fold temperature) or the refit; :func:`medvit.run_dir.load_run` loads either, so ``evaluate``,
``report``, ``explain``, ``demo-export`` and the page read a cross-validated run as any other.

Resume: every fold is an ordinary resumable run, and everything after the folds (out-of-fold file,
calibration, test predictions, report) is recomputed from the finished folds, so a run killed at
any point continues with ``resume=True`` to the result of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
import yaml

from medvit.boundary.predictions import read_predictions_file
from medvit.clinical.calibrate import calibrate_run
from medvit.data.manifest import manifest_hash, read_manifest, read_manifest_info, split_counts, write_manifest_info
from medvit.data.splits import assign_folds, count_table
from medvit.report import write_report
from medvit.run_dir import (
    CONFIG_YAML,
    FOLDS_CSV,
    LAST_STATE,
    MODEL_JSON,
    OOF_SPLIT,
    PREDICTIONS_CSV,
    REPORT_DIR,
    TRAIN_LOG,
    ReportFiles,
    atomic_write_text,
    kept_epoch,
    predictions_filename,
    read_metrics,
    write_model_info,
)
from medvit.train.config import (
    CrossValidationConfig,
    EarlyStoppingConfig,
    TrainConfig,
    config_from_dict,
    config_to_dict,
)
from medvit.train.evaluate import evaluate_run
from medvit.train.loop import run_log
from medvit.train.probabilities import unscaled_probabilities
from medvit.workflows.training import train_run

__all__ = [
    "CVResult",
    "FOLD_MANIFEST",
    "REFIT_DIR",
    "chosen_epochs",
    "fold_assignment",
    "fold_name",
    "is_cv_config",
    "train_cv",
    "write_fold_manifest",
    "write_oof_predictions",
]

_logger = logging.getLogger(__name__)

REFIT_DIR = "refit"
FOLD_MANIFEST = "manifest.csv"
"""Each member's manifest, inside its own folder (``fold_<k>/manifest.csv`` + ``manifest.json``)."""


def fold_name(k: int) -> str:
    """The folder of fold ``k``: ``fold_<k>``."""
    return f"fold_{k}"


@dataclass
class CVResult:
    """Outcome of :func:`train_cv`.

    Attributes:
        run_dir: the cross-validated run directory.
        folds: ``K``.
        final: ``ensemble`` or ``refit``.
        members: the member folders of the final predictor.
        best_epochs: each fold's kept epoch (1-based), chosen on its held-out fold.
        refit_epochs: epochs of the refit (``None`` for an ensemble).
        seed: the seed that drew the fold assignment.
    """

    run_dir: Path
    folds: int
    final: str
    members: list[str]
    best_epochs: list[int]
    refit_epochs: int | None
    seed: int


def is_cv_config(config: TrainConfig | dict[str, Any]) -> bool:
    """Whether a config (dataclass or ``config.yaml`` mapping) asks for cross-validation."""
    if isinstance(config, TrainConfig):
        return config.cv.folds is not None
    return (config.get("cv") or {}).get("folds") is not None


def fold_assignment(manifest: str | Path, folds: int, seed: int) -> tuple[pd.DataFrame, int]:
    """The train+val rows of ``manifest`` with their fold (:func:`medvit.data.splits.assign_folds`).

    Returns:
        ``(frame, seed_used)``: columns ``image, label, group, split, fold``, in manifest order.
    """
    frame = read_manifest(manifest)
    pool = frame[frame["split"].isin(["train", "val"])].reset_index(drop=True)
    if pool.empty:
        raise ValueError(f"{manifest}: no train or val rows to cross-validate")
    fold, used = assign_folds(pool["label"].to_numpy(), pool["group"].to_numpy(), folds, seed)
    out = pool[["image", "label", "group", "split"]].copy()
    out["fold"] = fold
    return out, used


def write_fold_manifest(manifest: str | Path, assignment: pd.DataFrame, held_out: int | None, path: Path) -> Path:
    """A member's manifest: the source manifest with train+val re-split by ``assignment``.

    ``held_out = k``: fold ``k`` is ``val``, the other folds ``train``; ``None`` (the refit): every
    train+val row is ``train`` and there is no ``val``. Test rows stay ``test``. The side JSON is the
    source's with the counts recomputed and a ``cv`` record naming the fold.
    """
    frame = read_manifest(manifest)
    fold_of = dict(zip(assignment["image"], assignment["fold"]))
    pooled = frame["split"].isin(["train", "val"])
    folds = frame["image"].map(fold_of)
    if pooled.sum() != len(assignment) or folds[pooled].isna().any():
        raise ValueError(f"{manifest}: its train+val rows differ from the run's {FOLDS_CSV}; the manifest changed since")
    frame.loc[pooled, "split"] = "train" if held_out is None else np.where(folds[pooled] == held_out, "val", "train")
    side = read_manifest_info(manifest)
    class_names = [str(c) for c in side.get("class_names") or sorted(frame["label_name"].unique())]
    side["counts"] = split_counts(count_table(frame, class_names))
    side["cv"] = {"fold": held_out, "source_manifest": str(manifest), "source_hash": manifest_hash(manifest)}
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, lineterminator="\n")
    atomic_write_text(path, buffer.getvalue())
    write_manifest_info(path, side)
    return path


def chosen_epochs(best_epochs: Sequence[int]) -> int:
    """The refit's epoch count: the median of the folds' kept epochs (halves round up)."""
    return int(np.floor(np.median(np.asarray(best_epochs, dtype=np.float64)) + 0.5))


def _member_finished(folder: Path, cfg: TrainConfig) -> bool:
    """Whether a member run finished its loop and its final evaluation (predictions, calibration, report)."""
    if not (folder / LAST_STATE).is_file() or not (folder / PREDICTIONS_CSV).is_file():
        return False
    if not torch.load(folder / LAST_STATE, map_location="cpu", weights_only=True).get("finished"):
        return False
    if cfg.report and not (folder / REPORT_DIR / ReportFiles.summary_json).is_file():
        return False
    has_val = (folder / predictions_filename("val")).is_file()
    return not has_val or "calibration" in json.loads((folder / MODEL_JSON).read_text())


def _run_member(cfg: TrainConfig, folder: Path) -> int:
    """Train (or resume, or skip when finished) one member run; returns its kept epoch (1-based)."""
    if _member_finished(folder, cfg):
        _logger.info("%s: finished", folder)
    elif (folder / CONFIG_YAML).is_file():
        train_run(None, folder, resume=True)
    else:
        train_run(cfg, folder)
    return kept_epoch(read_metrics(folder), cfg.early_stopping.metric) + 1


def _fold_config(cfg: TrainConfig, manifest: Path) -> TrainConfig:
    return dataclasses.replace(cfg, manifest=str(manifest), cv=CrossValidationConfig())


def _refit_config(cfg: TrainConfig, manifest: Path, epochs: int) -> TrainConfig:
    """The refit: train+val, ``epochs`` epochs, the last one kept; it predicts test and writes no report
    (it has no validation split to calibrate or choose on; the run's own calibration is out-of-fold)."""
    return dataclasses.replace(
        cfg, manifest=str(manifest), cv=CrossValidationConfig(), epochs=epochs,
        early_stopping=EarlyStoppingConfig(metric="epoch", patience=0), eval_split="test", report=False,
    )


def _assignment(cfg: TrainConfig, out: Path) -> tuple[pd.DataFrame, int]:
    """The run's fold assignment: drawn and written to ``folds.csv`` once; on resume, checked against it."""
    assert cfg.cv.folds is not None
    frame, used = fold_assignment(cfg.manifest, cfg.cv.folds, cfg.seed)
    path = out / FOLDS_CSV
    if path.is_file():
        recorded = pd.read_csv(path, dtype={"image": str, "group": str, "split": str})
        if not (recorded["image"].tolist() == frame["image"].tolist() and recorded["fold"].tolist() == frame["fold"].tolist()):
            raise ValueError(f"{path}: the recorded folds differ from those of {cfg.manifest} now; the manifest changed")
    else:
        buffer = io.StringIO()
        frame.to_csv(buffer, index=False, lineterminator="\n")
        atomic_write_text(path, buffer.getvalue())
    return frame, used


def write_oof_predictions(run_dir: str | Path, assignment: pd.DataFrame, class_names: Sequence[str]) -> Path:
    """``predictions_oof.csv``: each fold's held-out predictions (``fold_<k>/predictions_val.csv``) at ``T = 1``.

    Rows follow ``assignment`` (``folds.csv``), with the image's original ``split`` and its ``fold``.

    Raises:
        ValueError: a fold's held-out predictions do not cover its images exactly once.
    """

    run_dir = Path(run_dir)
    parts = []
    for k in sorted(assignment["fold"].unique()):
        path = run_dir / fold_name(int(k)) / predictions_filename("val")
        frame = read_predictions_file(path, class_names, fix=f"resume the run ('medvit train --resume {run_dir}')")
        expected = assignment.loc[assignment["fold"] == k, "image"].astype(str)
        if sorted(frame["image"].astype(str)) != sorted(expected):
            raise ValueError(f"{path}: its images are not those of fold {k} in {run_dir / FOLDS_CSV}")
        probs = unscaled_probabilities(frame, class_names, path)
        part = frame[["image", "label", "label_name"]].copy()
        predicted = probs.argmax(axis=1)
        part["prediction"] = predicted
        part["prediction_name"] = [class_names[i] for i in predicted]
        for c, name in enumerate(class_names):
            part[f"prob_{name}"] = probs[:, c]
        part["fold"] = int(k)
        parts.append(part)
    oof = pd.concat(parts).set_index("image").loc[assignment["image"].astype(str)].reset_index()
    oof.insert(1, "split", assignment["split"].to_numpy())
    path = run_dir / predictions_filename(OOF_SPLIT)
    buffer = io.StringIO()
    oof.to_csv(buffer, index=False, float_format="%.8g")
    atomic_write_text(path, buffer.getvalue())
    return path


def _write_root_info(cfg: TrainConfig, out: Path, result: CVResult, n_oof: int) -> dict[str, Any]:
    """The run's ``model.json``: fold 0's description with the source manifest and the ``cv`` record."""
    info = json.loads((out / fold_name(0) / MODEL_JSON).read_text())
    info.pop("calibration", None)
    side = read_manifest_info(cfg.manifest)
    info.update(
        manifest=str(cfg.manifest),
        manifest_hash=manifest_hash(cfg.manifest),
        manifest_counts=side.get("counts"),
    )
    info["cv"] = {
        "folds": result.folds,
        "final": result.final,
        "seed": result.seed,
        "assignment": FOLDS_CSV,
        "fold_runs": [fold_name(k) for k in range(result.folds)],
        "members": result.members,
        "monitor": cfg.early_stopping.metric,
        "best_epochs": result.best_epochs,
        "refit_epochs": result.refit_epochs,
        "n_oof": n_oof,
    }
    write_model_info(out, info)
    return info


def train_cv(cfg: TrainConfig | None, out_dir: str | Path, resume: bool = False) -> CVResult:
    """Train a cross-validated run (see the module docstring) or continue one.

    Args:
        cfg: the validated configuration with ``cv.folds`` set (ignored on resume: the run's own
            ``config.yaml`` is used).
        out_dir: the run directory to create (or to continue with ``resume=True``).
        resume: continue an interrupted run.

    Returns:
        A :class:`CVResult`.

    Raises:
        ValueError: ``cv.folds`` not set, ``eval_split`` other than ``test``, a class with fewer groups
            than folds, or ``out_dir`` holds files and ``resume`` is false.
        FileNotFoundError: ``resume`` without a ``config.yaml`` in ``out_dir``.
    """

    out = Path(out_dir)
    if resume:
        if not (out / CONFIG_YAML).is_file():
            raise FileNotFoundError(f"{out / CONFIG_YAML} not found: {out} is not a run to resume; drop --resume to start it")
        cfg = config_from_dict(yaml.safe_load((out / CONFIG_YAML).read_text()))
    elif out.is_dir() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty; continue a cross-validated run with --resume or choose another --out")
    assert cfg is not None
    if cfg.cv.folds is None:
        raise ValueError("config key 'cv.folds' is not set; set it (e.g. --folds 5) or train with medvit.train.train")
    if cfg.eval_split != "test":
        raise ValueError(
            f"config key 'eval_split': {cfg.eval_split!r}; a cross-validated run reports the test split "
            "(its validation is the out-of-fold predictions), so use eval_split: test"
        )
    out.mkdir(parents=True, exist_ok=True)
    if not resume:
        atomic_write_text(out / CONFIG_YAML, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    with run_log(out / TRAIN_LOG):
        return _CrossValidation(cfg, out).run()


class _CrossValidation:
    """The folds, the refit and the combined results of one run; :meth:`run` does them in order."""

    def __init__(self, cfg: TrainConfig, out: Path) -> None:
        self.cfg, self.out = cfg, out
        self.folds = int(cfg.cv.folds or 0)

    def run(self) -> CVResult:
        cfg, out = self.cfg, self.out
        assignment, seed = _assignment(cfg, out)
        _logger.info(
            "%s: %d folds over %d train+val images (seed %d); final predictor: %s",
            out, self.folds, len(assignment), seed, cfg.cv.final,
        )
        best_epochs = []
        for k in range(self.folds):
            folder = out / fold_name(k)
            manifest = folder / FOLD_MANIFEST
            if not manifest.is_file():
                write_fold_manifest(cfg.manifest, assignment, k, manifest)
            _logger.info("fold %d/%d", k + 1, self.folds)
            best_epochs.append(_run_member(_fold_config(cfg, manifest), folder))
        members = [fold_name(k) for k in range(self.folds)]
        refit_epochs = None
        if cfg.cv.final == "refit":
            refit_epochs = chosen_epochs(best_epochs)
            folder = out / REFIT_DIR
            manifest = folder / FOLD_MANIFEST
            if not manifest.is_file():
                write_fold_manifest(cfg.manifest, assignment, None, manifest)
            _logger.info("refit on train+val for %d epochs (median of the folds' %s)", refit_epochs, best_epochs)
            _run_member(_refit_config(cfg, manifest, refit_epochs), folder)
            members = [REFIT_DIR]
        result = CVResult(out, self.folds, cfg.cv.final, members, best_epochs, refit_epochs, seed)
        self._finish(result, assignment)
        return result

    def _finish(self, result: CVResult, assignment: pd.DataFrame) -> None:
        """Out-of-fold predictions, their calibration, the final predictor's test predictions, the report."""
        cfg, out = self.cfg, self.out
        info = _write_root_info(cfg, out, result, len(assignment))
        write_oof_predictions(out, assignment, [str(c) for c in info["class_names"]])
        calibrate_run(out, device=cfg.device)
        evaluate_run(out, split="test", device=cfg.device, replace=True)  # the final predictor, calibrated
        if cfg.report:
            write_report(out, split="test", n_bootstrap=cfg.n_bootstrap, seed=cfg.seed)
        _logger.info("%s: cross-validated run finished (%s of %s)", out, cfg.cv.final, ", ".join(result.members))
