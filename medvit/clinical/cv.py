"""The cross-validation part of a run report: out-of-fold metrics, the spread across folds, how it was chosen.

For a cross-validated run (:mod:`medvit.workflows.cv`) :func:`medvit.report.write_report` adds to
``summary.json["cv"]`` and ``index.md``:

* the out-of-fold (OOF) metrics with bootstrap CIs: the estimate made before the test split was looked at,
  on every train+val image, with the run's out-of-fold temperature;
* OOF calibration before and after that temperature;
* the spread across folds (each fold's metrics on its own held-out images, and each fold model's on test);
* with ``final: refit``, the fold ensemble's test metrics as well (from the fold models' test files), so
  one run measures both final predictors;
* CV+ prediction sets on test (:func:`medvit.metrics.conformal.cv_plus_sets`: each out-of-fold score against
  the test image's score under the same fold model) beside the sets of the one out-of-fold threshold that the
  page uses, at the run's conformal level and score;
* :func:`describe_cv`, one sentence saying how the model was chosen and calibrated (also on the model card).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from medvit.boundary.predictions import read_predictions_file
from medvit.markdown import markdown_table
from medvit.metrics import compute_metrics
from medvit.metrics.bootstrap import Estimate
from medvit.metrics.calibration import apply_temperature, compute_calibration
from medvit.metrics.conformal import cv_plus_sets, evaluate_set_membership
from medvit.run_dir import OOF_SPLIT, PREDICTIONS_CSV, predictions_filename
from medvit.train.probabilities import unscaled_probabilities

__all__ = ["cv_markdown", "cv_summary", "describe_cv", "ensemble_probabilities", "fold_temperature"]

_SPREAD = ("accuracy", "balanced_accuracy", "macro_f1", "macro_auroc", "qwk")


def fold_temperature(info: Mapping[str, Any]) -> float:
    """The out-of-fold temperature of a cross-validated run (``member_temperature`` for an ensemble)."""
    record = info.get("calibration") or {}
    return float(record.get("member_temperature", record.get("temperature", 1.0)))


def describe_cv(info: Mapping[str, Any]) -> str | None:
    """How a cross-validated run's model was chosen and calibrated, in one sentence (``None``: not CV)."""
    cv = info.get("cv")
    if not cv:
        return None
    epochs = ", ".join(str(e) for e in cv.get("best_epochs", []))
    if cv.get("final") == "refit":
        final = f"one model refit on all train+val images for {cv.get('refit_epochs')} epochs (the median)"
    else:
        final = f"the ensemble of the {cv['folds']} fold models (mean of their calibrated probabilities)"
    return (
        f"{cv['folds']}-fold grouped, stratified cross-validation over train+val (seed {cv.get('seed')}); each fold "
        f"kept the epoch with the best {cv.get('monitor')} on its own held-out fold (epochs {epochs}); final predictor: "
        f"{final}; temperature, conformal threshold and operating points fitted on the {cv.get('n_oof')} out-of-fold "
        "predictions; the test split was used for nothing but this report."
    )


def _spread(rows: Sequence[Mapping[str, float]]) -> dict[str, dict[str, float]]:
    out = {}
    for key in _SPREAD:
        values = np.array([r[key] for r in rows if key in r], dtype=np.float64)
        if values.size:
            out[key] = {
                "mean": float(np.nanmean(values)), "sd": float(np.nanstd(values, ddof=1)) if values.size > 1 else 0.0,
                "min": float(np.nanmin(values)), "max": float(np.nanmax(values)), "values": values.tolist(),
            }
    return out


def _check_same_images(run_dir: Path, names: Sequence[str], frames: Sequence[pd.DataFrame], split: str) -> None:
    """Every fold's ``split`` predictions list the same images in the same order (rows are compared across folds)."""
    for name, frame in zip(names[1:], frames[1:]):
        if frame["image"].tolist() != frames[0]["image"].tolist():
            raise ValueError(f"{run_dir / name}: its {split} predictions list other images than the first fold's")


def ensemble_probabilities(run_dir: str | Path, info: Mapping[str, Any], split: str = "test") -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """The fold ensemble's probabilities of ``split`` from the fold runs' own prediction files:
    ``mean_k softmax(z_k / T)`` with the out-of-fold ``T`` (what :class:`~medvit.models.ensemble.FoldEnsemble`
    computes). Returns ``(probabilities, labels, first fold's frame)``.

    Raises:
        ValueError: the folds' files do not list the same images in the same order.
    """
    run_dir = Path(run_dir)
    class_names = [str(c) for c in info["class_names"]]
    temperature = fold_temperature(info)
    frames = [read_predictions_file(run_dir / f / predictions_filename(split), class_names) for f in info["cv"]["fold_runs"]]
    _check_same_images(run_dir, info["cv"]["fold_runs"], frames, split)
    probs = np.mean([apply_temperature(unscaled_probabilities(f, class_names), temperature) for f in frames], axis=0)
    return probs, frames[0]["label"].to_numpy(dtype=np.int64), frames[0]


def cv_summary(run_dir: str | Path, info: Mapping[str, Any], n_bootstrap: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The ``summary.json["cv"]`` record (see the module docstring)."""
    run_dir = Path(run_dir)
    cv = info["cv"]
    class_names = [str(c) for c in info["class_names"]]
    is_ordinal = bool(info.get("is_ordinal", False))
    oof = read_predictions_file(run_dir / predictions_filename(OOF_SPLIT), class_names)
    labels = oof["label"].to_numpy(dtype=np.int64)
    raw = unscaled_probabilities(oof, class_names)
    temperature = fold_temperature(info)
    scaled = apply_temperature(raw, temperature)
    boot = dict(n_bootstrap=n_bootstrap, seed=seed)
    per_fold = []
    for k in sorted(oof["fold"].unique()):
        rows = (oof["fold"] == k).to_numpy()
        m = compute_metrics(labels[rows], scaled[rows], class_names, is_ordinal, n_bootstrap=0).summary()
        per_fold.append({"fold": int(k), "n": int(rows.sum()), **m})
    fold_test, test_frames, test_probs = [], [], []
    for name in cv["fold_runs"]:
        path = run_dir / name / PREDICTIONS_CSV
        if path.is_file():
            frame = read_predictions_file(path, class_names)
            probs = apply_temperature(unscaled_probabilities(frame, class_names), temperature)
            m = compute_metrics(frame["label"].to_numpy(dtype=np.int64), probs, class_names, is_ordinal, n_bootstrap=0).summary()
            fold_test.append({"fold": name, "n": len(frame), **m})
            test_frames.append(frame)
            test_probs.append(probs)
    summary: dict[str, Any] = {
        **{k: cv[k] for k in ("folds", "final", "seed", "members", "monitor", "best_epochs", "refit_epochs", "n_oof")},
        "how": describe_cv(info),
        "temperature": temperature,
        "oof": compute_metrics(labels, scaled, class_names, is_ordinal, **boot).to_dict(),
        "oof_calibration": {
            "before": compute_calibration(labels, raw, **boot).to_dict(),
            "after": compute_calibration(labels, scaled, **boot).to_dict(),
        },
        "per_fold": per_fold,
        "spread": _spread(per_fold),
        "fold_test": fold_test,
        "fold_test_spread": _spread(fold_test),
        "ensemble_test": None,
        "cv_plus_test": None,
    }
    conformal = (info.get("calibration") or {}).get("conformal")
    if conformal and len(fold_test) == len(cv["fold_runs"]):  # fold k's run is cv["fold_runs"][k]
        _check_same_images(run_dir, cv["fold_runs"], test_frames, "test")
        test_labels = test_frames[0]["label"].to_numpy(dtype=np.int64)
        member = cv_plus_sets(labels, scaled, oof["fold"].to_numpy(), dict(enumerate(test_probs)),
                              conformal["alpha"], conformal["method"])
        summary["cv_plus_test"] = evaluate_set_membership(
            test_labels, member, class_names, conformal["method"], conformal["alpha"], n_calibration=labels.size, **boot
        ).to_dict()
    if cv.get("final") == "refit" and len(fold_test) == len(cv["fold_runs"]):
        probs, test_labels, _ = ensemble_probabilities(run_dir, info)
        summary["ensemble_test"] = {
            **compute_metrics(test_labels, probs, class_names, is_ordinal, **boot).to_dict(),
            "calibration": compute_calibration(test_labels, probs, **boot).to_dict(),
        }
    return summary


def _f(d: Mapping[str, Any] | None, digits: int = 3) -> str:
    return Estimate.from_dict(d).format(digits)


def _overall(m: Mapping[str, Any]) -> list[str]:
    cells = [_f(m["accuracy"]), _f(m["balanced_accuracy"]), _f((m.get("macro") or {}).get("f1")), _f(m["macro_auroc"])]
    return cells + ([_f(m["qwk"])] if m.get("qwk") else [])


def cv_markdown(summary: Mapping[str, Any], test: Mapping[str, Any] | None = None) -> str:
    """The ``index.md`` section of :func:`cv_summary`'s record (``test``: the report's own test metrics)."""
    has_qwk = bool(summary["oof"].get("qwk"))
    header = ["", "n", "Accuracy", "Balanced accuracy", "Macro F1", "Macro AUROC"] + (["QWK"] if has_qwk else [])
    rows = [[f"out-of-fold (train+val, T = {summary['temperature']:.3f})", summary["oof"]["n"], *_overall(summary["oof"])]]
    if test is not None:
        rows.append([f"test, final predictor ({summary['final']})", test["n"], *_overall(test)])
    if summary.get("ensemble_test"):
        rows.append(["test, fold ensemble (for comparison)", summary["ensemble_test"]["n"], *_overall(summary["ensemble_test"])])
    lines = [
        "## Cross-validation", "", summary["how"], "", markdown_table(header, rows),
        "95% CIs: stratified bootstrap. The out-of-fold estimate is the honest one before the test split: every "
        "train+val image predicted by the fold model that did not train on it.", "",
    ]
    cal = summary["oof_calibration"]
    lines += [
        f"Out-of-fold calibration: ECE (15 bins) {_f(cal['before']['ece'])} at T = 1, {_f(cal['after']['ece'])} at "
        f"T = {summary['temperature']:.3f}; NLL {_f(cal['before']['nll'])} -> {_f(cal['after']['nll'])}.", "",
    ]
    cv_plus = summary.get("cv_plus_test")
    if cv_plus:
        lines += [
            f"CV+ prediction sets on test ({cv_plus['method'].upper()}, target coverage {1 - cv_plus['alpha']:.0%}; "
            f"each of the {cv_plus['n_calibration']} out-of-fold scores against the test image's score under the same "
            f"fold model): coverage {_f(cv_plus['coverage'])}, mean set size {_f(cv_plus['mean_size'], 2)}. The "
            "page's sets use one out-of-fold threshold (the clinical section's coverage).", "",
        ]
    keys = [k for k in _SPREAD if k in summary["spread"]]
    spread_rows = [[f"fold {r['fold']} (held out)", r["n"], *(f"{r[k]:.3f}" for k in keys)] for r in summary["per_fold"]]
    spread_rows += [[f"{r['fold']} on test", r["n"], *(f"{r[k]:.3f}" for k in keys)] for r in summary["fold_test"]]
    for label, spread in (("held-out folds", summary["spread"]), ("fold models on test", summary["fold_test_spread"])):
        if spread:
            spread_rows.append([f"**{label}: mean ± sd**", "", *(f"{spread[k]['mean']:.3f} ± {spread[k]['sd']:.3f}" for k in keys)])
    lines += ["### Spread across folds", "", markdown_table(["", "n", *(k.replace("_", " ") for k in keys)], spread_rows)]
    return "\n".join(lines) + "\n"
