"""The clinical sections of a run report: calibration before/after scaling, operating points of each
clinical question, conformal prediction sets and subgroups, as a JSON-ready dict and Markdown.

Thresholds, temperature and the conformal threshold come from the run's validation split
(``model.json["calibration"]``, see :mod:`medvit.clinical.calibrate`); every figure here is
measured on the reported (test or external) predictions.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from medvit.metrics.bootstrap import Estimate
from medvit.metrics.calibration import apply_temperature, compute_calibration
from medvit.metrics.conformal import evaluate_prediction_sets
from medvit.metrics.operating_points import (
    OperatingPoint,
    binary_scores,
    evaluate_operating_points,
    question_auroc,
)
from medvit.metrics.subgroups import age_bands, subgroup_table
from medvit.clinical.calibrate import fit_calibration
from medvit.train.probabilities import unscaled_probabilities
from medvit.clinical.plots import plot_operating_points, plot_reliability
from medvit.run_dir import ReportFiles
from medvit.markdown import markdown_table
from medvit.data.manifest import read_manifest

__all__ = ["CLINICAL_FILES", "clinical_markdown", "clinical_summary", "subgroup_frame"]

_logger = logging.getLogger(__name__)

RELIABILITY_PNG = ReportFiles.reliability_png
OPERATING_POINTS_PNG = ReportFiles.operating_points_png
CLINICAL_FILES = (RELIABILITY_PNG, OPERATING_POINTS_PNG)


def subgroup_frame(predictions: pd.DataFrame, manifest: str | Path | None, columns: Sequence[str]) -> pd.DataFrame | None:
    """The reporting-only columns of the manifest, aligned with the rows of ``predictions`` (by image).

    ``age`` becomes ``age band`` (:func:`medvit.metrics.subgroups.age_bands`). ``None`` when the
    manifest is not readable here or has none of ``columns``.
    """
    if not manifest or not columns or not Path(manifest).is_file():
        return None

    frame = read_manifest(manifest)
    present = [c for c in columns if c in frame.columns]
    if not present:
        return None
    table = frame.drop_duplicates("image").set_index("image")[present]
    aligned = table.reindex(predictions["image"].astype(str)).reset_index(drop=True)
    if "age" in aligned.columns:
        aligned["age"] = age_bands(aligned["age"])
        aligned = aligned.rename(columns={"age": "age band"})
    return aligned


def _estimate(d: Mapping[str, Any] | None) -> Estimate:
    return Estimate.from_dict(d)


def clinical_summary(
    info: Mapping[str, Any],
    predictions: pd.DataFrame,
    out_dir: Path,
    val: pd.DataFrame | None = None,
    subgroups: pd.DataFrame | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Compute the clinical sections and write their plots into ``out_dir``.

    Args:
        info: the run's ``model.json`` (its ``calibration`` record, class names, questions).
        predictions: the reported predictions (``label``, ``prob_*``, optional ``temperature``).
        out_dir: the report folder (``reliability.png``, ``operating_points.png``).
        val: validation predictions, used only when ``info`` has no calibration record (then the
            record is fitted here and not stored; ``medvit calibrate`` stores it).
        subgroups: reporting-only columns aligned with ``predictions`` (:func:`subgroup_frame`).
        n_bootstrap, seed: the stratified bootstrap of every CI.

    Returns:
        JSON-ready dict with ``calibration``, ``questions``, ``conformal``, ``subgroups``, ``notes``.
    """
    class_names = [str(c) for c in info["class_names"]]
    labels = predictions["label"].to_numpy(dtype=np.int64)
    raw = unscaled_probabilities(predictions, class_names)
    notes: list[str] = []
    record = info.get("calibration")
    stored = bool(record)
    if not record and val is not None:
        record = fit_calibration(val, info)
        notes.append("calibration fitted on predictions_val.csv for this report only; store it with 'medvit calibrate RUN'")
    if not record:
        notes.append("no validation predictions: no temperature, thresholds or prediction sets; run 'medvit calibrate RUN'")
    temperature = float(record["temperature"]) if record else 1.0
    scaled = apply_temperature(raw, temperature)
    boot = dict(n_bootstrap=n_bootstrap, seed=seed)
    summary: dict[str, Any] = {
        "calibration": {
            "temperature": temperature,
            "stored": stored,
            "fitted_on": record.get("fitted_on") if record else None,
            "n_val": record.get("n_val") if record else None,
            "member_temperature": record.get("member_temperature") if record else None,
            "before": compute_calibration(labels, raw, **boot).to_dict(),
            "after": compute_calibration(labels, scaled, **boot).to_dict() if record else None,
        },
        "questions": [],
        "conformal": None,
        "subgroups": [],
        "notes": notes,
    }
    first_question: tuple[str, np.ndarray, np.ndarray] | None = None
    for q in (record or {}).get("questions", []):
        positive = np.isin(labels, [class_names.index(c) for c in q["positive_classes"]])
        score = binary_scores(scaled, class_names, q["positive_classes"])
        points = [OperatingPoint(**p) for p in q.get("operating_points", [])]
        entry: dict[str, Any] = {
            "name": q["name"],
            "positive_classes": list(q["positive_classes"]),
            "n_positive": int(positive.sum()),
            "n_negative": int((~positive).sum()),
            "auroc": question_auroc(positive, score, **boot).__dict__,
            "points": [],
        }
        if points and positive.any() and not positive.all():
            entry["points"] = [r.to_dict() for r in evaluate_operating_points(positive, score, points, **boot)]
        summary["questions"].append(entry)
        if first_question is None and positive.any() and not positive.all():
            first_question = (q["name"], positive, score)
            plot_operating_points(out_dir / OPERATING_POINTS_PNG, q["name"], positive, score, entry["points"], entry["auroc"]["value"])
    conformal = (record or {}).get("conformal")
    if conformal:
        q_value = float("inf") if conformal.get("q") is None else float(conformal["q"])
        summary["conformal"] = evaluate_prediction_sets(
            labels, scaled, class_names, q_value, conformal["method"], conformal["alpha"], int(record.get("n_val") or 0), **boot
        ).to_dict()
    positive_labels = None
    if record and record.get("questions"):
        positive_labels = [class_names.index(c) for c in record["questions"][0]["positive_classes"]]
    if subgroups is not None:
        for column in subgroups.columns:
            summary["subgroups"].append(
                subgroup_table(labels, scaled, subgroups[column].tolist(), column, positive_labels, **boot).to_dict()
            )
    summary["notes"] += _caveats(summary)
    panels = [(f"before scaling (T = 1): ECE {summary['calibration']['before']['ece']['value']:.3f}", summary["calibration"]["before"]["bins"])]
    if record:
        panels.append((f"after scaling (T = {temperature:.3f}): ECE {summary['calibration']['after']['ece']['value']:.3f}", summary["calibration"]["after"]["bins"]))
    plot_reliability(out_dir / RELIABILITY_PNG, panels, first_question)
    return summary


def _caveats(summary: Mapping[str, Any]) -> list[str]:
    """Plain statements where the reported split disagrees with what validation promised."""
    notes = []
    cal = summary["calibration"]
    if cal["after"] and cal["after"]["nll"]["value"] > cal["before"]["nll"]["value"]:
        notes.append(
            f"the validation-fitted temperature raises NLL on these images ({cal['before']['nll']['value']:.3f} -> "
            f"{cal['after']['nll']['value']:.3f}): validation, which also chose the epoch, is more optimistic than this split"
        )
    conf = summary.get("conformal")
    if conf and conf["coverage"]["high"] is not None and conf["coverage"]["high"] < 1 - conf["alpha"]:
        notes.append(
            f"prediction-set coverage {conf['coverage']['value']:.3f} is below its {1 - conf['alpha']:.2f} target even at "
            "the CI's upper end: the guarantee needs validation and these images to be exchangeable"
        )
    return notes


def _f(d: Mapping[str, Any] | None) -> str:
    return _estimate(d).format()


def clinical_markdown(summary: Mapping[str, Any], split: str) -> str:
    """The clinical sections of ``index.md`` (numbers with 95 % CIs; plots linked)."""
    cal = summary["calibration"]
    lines = [f"## Calibration on `{split}`", ""]
    rows = [["before scaling (T = 1)"] + [_f(cal["before"][k]) for k in ("ece", "adaptive_ece", "mce", "brier", "nll")]]
    images = "out-of-fold" if cal.get("fitted_on") == "oof" else "validation"
    if cal.get("member_temperature") is not None:  # a fold ensemble: the temperature acts inside, on each member
        rows = [[f"fold ensemble, members scaled by T = {cal['member_temperature']:.3f} (fitted on {cal['n_val']} "
                 f"{images} images)"] + [_f(cal["after"][k]) for k in ("ece", "adaptive_ece", "mce", "brier", "nll")]]
    elif cal["after"]:
        where = f"fitted on {cal['n_val']} {images} images" + ("" if cal["stored"] else ", not stored")
        rows.append([f"after scaling (T = {cal['temperature']:.3f}, {where})"] + [_f(cal["after"][k]) for k in ("ece", "adaptive_ece", "mce", "brier", "nll")])
    lines.append(markdown_table(["", "ECE (15 bins)", "adaptive ECE", "MCE", "Brier", "NLL"], rows))
    lines += [
        "ECE: mean gap between confidence and accuracy over 15 equal-width confidence bins (adaptive: equal-count "
        "bins; MCE: the largest gap). Lower is better; temperature scaling changes no prediction, only how sure it is.",
        "",
        f"![reliability diagram]({RELIABILITY_PNG})",
        "",
    ]
    for q in summary["questions"]:
        lines += [
            f"## Operating points: {q['name']} vs not (score = P({' + '.join(q['positive_classes'])}))",
            "",
            f"{q['n_positive']} positive and {q['n_negative']} negative images; AUROC {_f(q['auroc'])}. "
            f"Thresholds are chosen on {images} predictions, figures measured here.",
            "",
        ]
        if q["points"]:
            rows = [
                [
                    r["point"]["description"], f"{r['point']['threshold']:.4f}", f"{r['point']['val_sensitivity']:.3f}",
                    _f(r["sensitivity"]), _f(r["specificity"]), _f(r["ppv"]), _f(r["npv"]),
                    f"{r['tp']}/{r['fp']}/{r['tn']}/{r['fn']}",
                ]
                for r in q["points"]
            ]
            lines.append(markdown_table(["Operating point", "Threshold", "Val. sens.", "Sensitivity", "Specificity", "PPV", "NPV", "TP/FP/TN/FN"], rows))
        else:
            lines.append("No operating points (the validation or reported split lacks positives or negatives).\n")
        if q is summary["questions"][0] and q["points"]:
            lines += [f"![operating points]({OPERATING_POINTS_PNG})", ""]
    conf = summary.get("conformal")
    if conf:
        lines += [
            f"## Prediction sets (split-conformal {conf['method'].upper()}, alpha = {conf['alpha']:g}, "
            f"calibrated on {conf['n_calibration']} validation images)",
            "",
            f"Coverage {_f(conf['coverage'])} (target >= {1 - conf['alpha']:.2f}); mean set size {_f(conf['mean_size'])}. "
            "A set lists every class the model cannot rule out at this level; for exchangeable data it holds the "
            f"true class for at least {100 * (1 - conf['alpha']):g} % of images.",
            "",
            markdown_table(
                ["True class", "n", "Coverage", "Mean set size"],
                [[name, c["n"], _f(c["coverage"]), _f(c["mean_size"])] for name, c in conf["per_class"].items()],
            ),
            "Set sizes: " + ", ".join(f"{k} class{'es' if k != '1' else ''}: {v}" for k, v in conf["size_counts"].items()),
            "",
        ]
    if summary["subgroups"]:
        lines += ["## Subgroups", ""]
        first = summary["questions"][0]["name"] if summary["questions"] else None
        lines.append(
            (f"Recall = sensitivity for {first} at the predicted class; AUROC of the {first} score. " if first
             else "Recall = macro recall; AUROC = macro one-vs-rest. ")
            + "Groups under 10 images (for recall and AUROC: under 10 positives): value and count only, no CI, "
            "never the worst group.\n"
        )
        for table in summary["subgroups"]:
            rows = [
                [g["value"], g["n"], *([g["n_positive"]] if first else []), _f(g["recall"]), _f(g["balanced_accuracy"]), _f(g["auroc"])]
                for g in table["groups"]
            ]
            header = [table["column"], "n", *([first] if first else []), "Recall", "Balanced accuracy", "AUROC"]
            lines += [f"### {table['column']}", "", markdown_table(header, rows)]
            worst = ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in table["worst"].items() if v is not None)
            lines += [f"Worst group: {worst or 'n/a (fewer than two groups of 10+ images)'}", ""]
    for note in summary.get("notes", []):
        lines.append(f"- Note: {note}")
    return "\n".join(lines) + "\n"
