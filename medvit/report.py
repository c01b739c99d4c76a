"""Run reports (per-class tables with CIs, confusion and ROC plots) and cross-run comparison tables.

``write_report(run_dir)`` turns a run's ``predictions.csv`` into ``report/``; ``compare_runs``
puts several runs side by side the way transfer-learning papers do (rows = backbones, columns =
per-class precision and recall, macro scores and accuracy), as CSV, Markdown and LaTeX.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure  # pyplot-free: no global backend or figure state
from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay

from medvit.boundary.predictions import read_predictions_file
from medvit.clinical.cv import cv_markdown, cv_summary
from medvit.clinical.external import with_external_notice
from medvit.clinical.section import clinical_section
from medvit.markdown import markdown_table
from medvit.metrics import ClassificationMetrics, Estimate, compute_metrics
from medvit.run_dir import (
    REPORT_DIR,
    ReportFiles,
    atomic_write_text,
    predictions_filename,
    read_model_info,
    split_sizes,
)
from medvit.train.probabilities import probability_columns

__all__ = [
    "write_report",
    "compare_runs",
    "read_predictions",
    "read_summary",
    "per_class_table",
    "format_estimate",
    "summary_estimate",
    "ReportFiles",
]

_logger = logging.getLogger(__name__)


def read_predictions(run_dir: str | Path, split: str = "test", class_names: Sequence[str] | None = None) -> pd.DataFrame:
    """Read a run's predictions of ``split`` (``predictions.csv`` or ``predictions_<split>.csv``), checked
    against the run's classes (``class_names``; default: read from its ``model.json``).

    Raises:
        FileNotFoundError: no predictions for that split (run ``medvit evaluate`` first).
        ValueError: a corrupt file (:func:`medvit.boundary.predictions.read_predictions_file`).
    """
    path = Path(run_dir) / predictions_filename(split)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; create it with 'medvit evaluate {run_dir} --split {split}'")
    if class_names is None:
        class_names = [str(c) for c in read_model_info(run_dir)["class_names"]]
    return read_predictions_file(path, class_names, fix=f"create it again with 'medvit evaluate {run_dir} --split {split}'")


def per_class_table(metrics: ClassificationMetrics) -> pd.DataFrame:
    """One row per class plus macro/weighted averages: value, CI low/high for every score."""
    rows = []
    for c in metrics.per_class:
        row: dict[str, Any] = {"class": c.name, "support": c.support}
        for key in ("precision", "recall", "specificity", "f1", "auroc"):
            est: Estimate = getattr(c, key)
            row.update({key: est.value, f"{key}_low": est.low, f"{key}_high": est.high})
        rows.append(row)
    for label, averages in (("macro avg", metrics.macro), ("weighted avg", metrics.weighted)):
        row = {"class": label, "support": metrics.n}
        for key in ("precision", "recall", "specificity", "f1"):
            est = averages[key]
            row.update({key: est.value, f"{key}_low": est.low, f"{key}_high": est.high})
        if label == "macro avg":
            est = metrics.macro_auroc
            row.update({"auroc": est.value, "auroc_low": est.low, "auroc_high": est.high})
        rows.append(row)
    return pd.DataFrame(rows)


def _per_class_markdown(metrics: ClassificationMetrics) -> str:
    header = ["Class", "Support", "Precision", "Recall (sens.)", "Specificity", "F1", "AUROC"]
    rows = [
        [c.name, c.support, c.precision.format(), c.recall.format(), c.specificity.format(), c.f1.format(), c.auroc.format()]
        for c in metrics.per_class
    ]
    for label, avg, auroc in (("**macro avg**", metrics.macro, metrics.macro_auroc.format()), ("**weighted avg**", metrics.weighted, "")):
        rows.append([label, metrics.n, avg["precision"].format(), avg["recall"].format(), avg["specificity"].format(), avg["f1"].format(), auroc])
    overall = [
        f"- Accuracy: {metrics.accuracy.format()}",
        f"- Balanced accuracy: {metrics.balanced_accuracy.format()}",
        f"- Macro AUROC (one-vs-rest): {metrics.macro_auroc.format()}",
    ]
    if metrics.qwk is not None:
        overall.append(f"- Quadratic weighted kappa: {metrics.qwk.format()}")
    note = (
        f"\n{int(metrics.confidence * 100)}% CIs: stratified bootstrap, {metrics.n_bootstrap} resamples, "
        f"seed {metrics.seed} (percentile intervals).\n" if metrics.n_bootstrap else "\n"
    )
    return markdown_table(header, rows) + "\n" + "\n".join(overall) + "\n" + note


def _plot_confusion(path: Path, labels: np.ndarray, predictions: np.ndarray, class_names: Sequence[str]) -> None:
    K = len(class_names)
    fig = Figure(figsize=(5 + 2.2 * K, 2.5 + 1.0 * K), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, normalize, title in ((axes[0], None, "counts"), (axes[1], "true", "row-normalised (recall)")):
        ConfusionMatrixDisplay.from_predictions(
            labels, predictions, labels=list(range(K)), display_labels=list(class_names),
            normalize=normalize, values_format="d" if normalize is None else ".2f",
            ax=ax, colorbar=False, cmap="Blues", xticks_rotation=45,
        )
        ax.set_title(title)
    fig.savefig(path, dpi=120)


def _plot_roc(path: Path, labels: np.ndarray, probabilities: np.ndarray, metrics: ClassificationMetrics) -> None:
    fig = Figure(figsize=(5.5, 5), layout="constrained")
    ax = fig.subplots()
    for c, cm in enumerate(metrics.per_class):
        positive = labels == c
        if positive.all() or not positive.any():
            continue
        RocCurveDisplay.from_predictions(positive, probabilities[:, c], name=f"{cm.name} (AUC {cm.auroc.value:.3f})", ax=ax)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    ax.set_title(f"One-vs-rest ROC (macro AUROC {metrics.macro_auroc.value:.3f})")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    fig.savefig(path, dpi=120)


def _index_markdown(run_dir: Path, info: dict[str, Any], split: str, metrics: ClassificationMetrics) -> str:
    counts = {name: v for name, v in (info.get("manifest_counts") or {}).items() if name != "total"}
    sizes = split_sizes(info)
    lines = [
        f"# Run report: {run_dir.name}",
        "",
        "Research use only; not for clinical use.",
        "",
        "## Model",
        f"- Backbone: `{info['model']}`" + (f" with `{json.dumps(info.get('model_kwargs'))}`" if info.get("model_kwargs") else ""),
        f"- Pretrained weights: {info.get('pretrained') or 'none (random init)'}"
        + (f", {info['pretrained_description']}" if info.get("pretrained") and info.get("pretrained_description") else "")
        + (f" (sha256 `{info['pretrained_sha256'][:16]}…`)" if info.get("pretrained_sha256") else ""),
        f"- Input: {info['image_size'][0]}×{info['image_size'][1]}, mean {tuple(round(m, 4) for m in info['mean'])}, "
        f"std {tuple(round(s, 4) for s in info['std'])}",
        "",
        "## Data",
        f"- Dataset: {info.get('dataset', '?')} (preset `{info.get('preset', '?')}`), classes: {', '.join(info['class_names'])}",
        f"- Manifest: `{info.get('manifest', '?')}` (sha256 `{(info.get('manifest_hash') or '?')[:16]}…`)",
    ]
    if sizes:
        lines.append(f"- Split sizes: train {sizes.get('train', 0)}, val {sizes.get('val', 0)}, test {sizes.get('test', 0)}")
        lines.append("")
        header = ["Class", "train", "val", "test"]
        table = [[name, v.get("train", 0), v.get("val", 0), v.get("test", 0)] for name, v in counts.items()]
        lines.append(markdown_table(header, table))
    if info.get("manifest_num_rejected") is not None:
        lines.append(f"- Rejected files at `medvit prepare`: {info['manifest_num_rejected']}")
    if info.get("manifest_num_duplicate_sets") is not None:
        lines.append(
            f"- Byte-identical duplicate sets: {info['manifest_num_duplicate_sets']} "
            f"(handled by `{info.get('manifest_duplicates', '?')}`)"
        )
    lines += [
        "",
        f"## Results on `{split}` ({metrics.n} images)",
        "",
        f"Accuracy {metrics.accuracy.format()}, balanced accuracy {metrics.balanced_accuracy.format()}, "
        f"macro F1 {metrics.macro['f1'].format()}, macro AUROC {metrics.macro_auroc.format()}"
        + (f", QWK {metrics.qwk.format()}" if metrics.qwk is not None else "")
        + ".",
        "",
        f"- Per-class table: [{ReportFiles.per_class_md}]({ReportFiles.per_class_md}) "
        f"([CSV]({ReportFiles.per_class_csv}), [JSON]({ReportFiles.summary_json}))",
        f"- ![confusion matrix]({ReportFiles.confusion_png})",
        f"- ![ROC curves]({ReportFiles.roc_png})",
        "",
    ]
    return "\n".join(lines)


def write_report(run_dir: str | Path, split: str = "test", n_bootstrap: int = 1000, seed: int = 0) -> Path:
    """Write ``RUN/report/`` from the run's predictions of ``split``.

    Args:
        run_dir: a run directory with ``model.json`` and predictions of ``split``.
        split: which predictions to report (``predictions.csv`` holds the test split).
        n_bootstrap: stratified bootstrap resamples for the 95% CIs.
        seed: bootstrap seed.

    Returns:
        The report directory.

    Raises:
        FileNotFoundError: no ``model.json`` or no predictions for ``split``.
    """
    run_dir = Path(run_dir)
    info = read_model_info(run_dir)
    class_names = [str(c) for c in info["class_names"]]
    frame = read_predictions(run_dir, split, class_names)
    probabilities = probability_columns(frame, class_names)
    labels = frame["label"].to_numpy(dtype=np.int64)
    is_ordinal = bool(info.get("is_ordinal", False))
    metrics = compute_metrics(labels, probabilities, class_names, is_ordinal=is_ordinal, n_bootstrap=n_bootstrap, seed=seed)

    out = run_dir / REPORT_DIR
    out.mkdir(exist_ok=True)
    per_class_table(metrics).to_csv(out / ReportFiles.per_class_csv, index=False, float_format="%.6g")
    atomic_write_text(out / ReportFiles.per_class_md, f"# Per-class metrics: {run_dir.name} ({split})\n\n" + _per_class_markdown(metrics))
    summary = {"run": run_dir.name, "model": info["model"], "dataset": info.get("dataset"), "split": split, **metrics.to_dict()}

    summary["clinical"], clinical_md = clinical_section(run_dir, info, frame, split, out, n_bootstrap=n_bootstrap, seed=seed)
    atomic_write_text(out / ReportFiles.summary_json, json.dumps(summary, indent=1))
    _plot_confusion(out / ReportFiles.confusion_png, labels, probabilities.argmax(axis=1), class_names)
    _plot_roc(out / ReportFiles.roc_png, labels, probabilities, metrics)

    index_md = with_external_notice(_index_markdown(run_dir, info, split, metrics), info, split)
    if info.get("cv") and not info.get("external"):
        summary["cv"] = cv_summary(run_dir, info, n_bootstrap=n_bootstrap, seed=seed)
        atomic_write_text(out / ReportFiles.summary_json, json.dumps(summary, indent=1))
        index_md += "\n" + cv_markdown(summary["cv"], metrics.to_dict() if split == "test" else None)
    atomic_write_text(out / ReportFiles.index_md, index_md + "\n" + clinical_md)
    _logger.info("wrote %s (accuracy %s)", out, metrics.accuracy.format())
    return out


def read_summary(run_dir: str | Path) -> dict[str, Any] | None:
    """``RUN/report/summary.json`` (what :func:`write_report` wrote), or ``None`` when there is no report.

    Raises:
        ValueError: the file is not valid JSON.
    """
    path = Path(run_dir) / REPORT_DIR / ReportFiles.summary_json
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as error:
        raise ValueError(f"{path}: not valid JSON ({error}); re-create it with 'medvit report {run_dir}'") from error


def summary_estimate(summary: Mapping[str, Any], metric: str) -> dict[str, Any] | None:
    """The estimate of ``metric`` in a ``summary.json``, named as ``metrics.csv`` names it.

    ``accuracy``, ``balanced_accuracy``, ``macro_auroc``, ``qwk`` are top-level entries; ``macro_<score>``
    and ``weighted_<score>`` (``macro_f1``, ``weighted_recall``, ...) are read from the averages.
    ``None`` when the summary has no such metric.
    """
    value = summary.get(metric)
    if value is None:
        average, _, score = metric.partition("_")
        if average in ("macro", "weighted"):
            value = (summary.get(average) or {}).get(score)
    return dict(value) if isinstance(value, Mapping) and "value" in value else None


def format_estimate(est: Mapping[str, Any] | None, digits: int = 3) -> str:
    """A ``summary.json`` estimate (``{"value", "low", "high"}``) as ``0.912 (0.880–0.940)``; ``n/a`` when absent.

    The text is :meth:`medvit.metrics.Estimate.format`'s, so reports, tables and the model card agree.
    """
    return Estimate.from_dict(est).format(digits)


def _latex_escape(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#")):
        text = text.replace(a, b)
    return text


def compare_runs(run_dirs: Sequence[str | Path], out: str | Path, split: str = "test", n_bootstrap: int = 1000) -> dict[str, Path]:
    """A paper-style comparison table of several runs on the same classes.

    Rows are runs (named by backbone; the run folder is added when two runs share a backbone),
    columns are per-class precision (P) and recall (R), macro precision/recall/F1, balanced accuracy,
    accuracy (and QWK for ordinal data), each "value (95% CI)". Missing reports are written first.

    Args:
        run_dirs: run directories trained on the same class list.
        out: output path; ``.md``, ``.csv`` and ``.tex`` files are written next to each other
            with this stem.
        split: split of the reports.
        n_bootstrap: resamples when a report has to be written.

    Returns:
        ``{"md": ..., "csv": ..., "tex": ...}`` paths.

    Raises:
        ValueError: no runs, or runs with different class lists.
    """
    if not run_dirs:
        raise ValueError("compare needs at least one run directory")
    summaries = []
    for run in map(Path, run_dirs):
        summary = read_summary(run)
        if summary is None or summary.get("split") != split:
            write_report(run, split=split, n_bootstrap=n_bootstrap)
            summary = read_summary(run)
        summaries.append((run, summary))
    class_names = summaries[0][1]["class_names"]
    for run, summary in summaries[1:]:
        if summary["class_names"] != class_names:
            raise ValueError(
                f"{run}: classes {summary['class_names']} differ from {summaries[0][0]}'s {class_names}; "
                "compare runs trained on the same dataset"
            )
    models = [s["model"] for _, s in summaries]
    has_qwk = any(s.get("qwk") for _, s in summaries)
    rows = []
    for run, s in summaries:
        name = s["model"] if models.count(s["model"]) == 1 else f"{s['model']} ({run.name})"
        row: dict[str, Any] = {"Model": name}
        for c in s["per_class"]:
            row[f"{c['name']} P"] = c["precision"]
            row[f"{c['name']} R"] = c["recall"]
        row["Macro P"] = s["macro"]["precision"]
        row["Macro R"] = s["macro"]["recall"]
        row["Macro F1"] = s["macro"]["f1"]
        row["Bal. acc."] = s["balanced_accuracy"]
        row["Accuracy"] = s["accuracy"]
        row["Macro AUROC"] = s["macro_auroc"]
        if has_qwk:
            row["QWK"] = s.get("qwk")
        rows.append(row)
    columns = list(rows[0])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = {"md": out.with_suffix(".md"), "csv": out.with_suffix(".csv"), "tex": out.with_suffix(".tex")}

    flat = []
    for row in rows:
        record: dict[str, Any] = {"Model": row["Model"]}
        for col in columns[1:]:
            est = row[col] or {}
            record[col] = est.get("value")
            record[f"{col} low"] = est.get("low")
            record[f"{col} high"] = est.get("high")
        flat.append(record)
    pd.DataFrame(flat).to_csv(paths["csv"], index=False, float_format="%.6g")

    text_rows = [[row["Model"]] + [format_estimate(row[c]) for c in columns[1:]] for row in rows]
    note = (
        f"\n{split} split; values with 95% stratified bootstrap CIs. P = precision, R = recall (sensitivity).\n"
    )
    atomic_write_text(paths["md"], markdown_table(columns, text_rows) + note)

    tex = [
        r"\begin{tabular}{l" + "c" * (len(columns) - 1) + "}",
        r"\toprule",
        " & ".join(_latex_escape(c) for c in columns) + r" \\",
        r"\midrule",
    ]
    for row in text_rows:
        tex.append(" & ".join(_latex_escape(v).replace("–", "--") for v in row) + r" \\")
    tex += [r"\bottomrule", r"\end{tabular}", ""]
    atomic_write_text(paths["tex"], "\n".join(tex))
    _logger.info("wrote %s, %s, %s", *paths.values())
    return paths
