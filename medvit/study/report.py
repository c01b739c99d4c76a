"""The study report: the papers' per-class tables with CIs, paired differences, the claims' verdicts, CAMs.

Everything is computed from the cells' result files (``predictions.csv``, ``predictions_val.csv``,
``model.json``, ``metrics.csv``, ``cam/``), never from weights, so a report regenerates from the
results committed under ``docs/transfer_study/cells``. Cells not run yet are listed, and every claim that
needs them is "not resolved" until they are.

Files in ``report/``: ``index.md`` (all tables), ``<dataset>_table.{md,csv,tex}``, ``<dataset>_paired.csv``,
``claims.csv``, ``cam_localization.csv``, ``compute.csv``, ``curves_<dataset>.png``, ``cam_figure.png``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from sklearn.metrics import balanced_accuracy_score

from medvit.metrics import Estimate, compute_metrics
from medvit.metrics.bootstrap import percentile_interval
from medvit.models import create_model
from medvit.models.registry import count_gmacs
from medvit.run_dir import METRICS_CSV, MODEL_JSON, PREDICTIONS_CSV, atomic_write_text, predictions_filename
from medvit.study.cells import CAM_DIR, Cell, cell_state, plan_cells
from medvit.study.config import Claim, StudyConfig
from medvit.study.figure import plot_figure
from medvit.study.paired import align_predictions, paired_difference, resampled_scores, shared_resamples
from medvit.study.verdicts import NOT_RESOLVED, Verdict, verdict
from medvit.train.probabilities import probability_columns

__all__ = [
    "PAGE_MARKER",
    "CellResult",
    "claim_verdict",
    "dataset_table",
    "did_not_train",
    "load_results",
    "write_results_page",
    "write_study_report",
]

_logger = logging.getLogger(__name__)

CHANCE_MARGIN = 0.1  # a cell whose test balanced accuracy is within this of chance "did not train"


@dataclass
class CellResult:
    """The result files of one finished fine-tuning cell."""

    cell: Cell
    info: dict[str, Any]
    metrics: pd.DataFrame
    test: pd.DataFrame
    val: pd.DataFrame
    cam_per_image: pd.DataFrame | None
    figure: dict[str, np.ndarray] | None

    @property
    def class_names(self) -> list[str]:
        return list(self.info["class_names"])


def did_not_train(result: CellResult) -> bool:
    """Whether the cell's test balanced accuracy is within :data:`CHANCE_MARGIN` of chance (``1 / K``): such a
    cell says nothing about its backbone; the tables flag it and the verdicts leave it out."""
    names = result.class_names
    predicted = probability_columns(result.test, names).argmax(axis=1)
    balanced = balanced_accuracy_score(result.test["label"].to_numpy(dtype=np.int64), predicted)
    return balanced <= 1 / len(names) + CHANCE_MARGIN


def load_results(cfg: StudyConfig, study_dir: str | Path) -> tuple[dict[str, dict[str, CellResult]], list[str]]:
    """``{dataset: {backbone: CellResult}}`` of the finished first-seed cells, and the names of the missing ones."""
    study_dir = Path(study_dir)
    results: dict[str, dict[str, CellResult]] = {d: {} for d in cfg.datasets}
    missing = []
    for cell in plan_cells(cfg):
        if cell.kind != "train" or cell.seed != cfg.seeds[0]:
            continue
        if cell_state(cell, study_dir) != "finished":
            missing.append(cell.name)
            continue
        path = cell.path(study_dir)
        cam = path / CAM_DIR
        figure = None
        if (cam / "figure.npz").is_file():
            with np.load(cam / "figure.npz", allow_pickle=False) as data:
                figure = {k: data[k] for k in data.files}
        results[cell.dataset][cell.backbone] = CellResult(
            cell=cell,
            info=json.loads((path / MODEL_JSON).read_text()),
            metrics=pd.read_csv(path / METRICS_CSV),
            test=pd.read_csv(path / PREDICTIONS_CSV),
            val=pd.read_csv(path / predictions_filename("val")),
            cam_per_image=pd.read_csv(cam / "stage_scores_test_per_image.csv") if cell.scores_cams else None,
            figure=figure,
        )
    return results, missing


def _ordered(cfg: StudyConfig, names: Sequence[str]) -> list[str]:
    """``names`` with the reference backbone first, then the others in config order."""
    order = [cfg.reference] + [b for b in cfg.backbones if b != cfg.reference]
    return [b for b in order if b in names]


def _fmt(est: Estimate | None) -> str:
    return "n/a" if est is None else est.format(3)


def _model_size(info: dict[str, Any], image_size: Sequence[int]) -> tuple[float, float]:
    """Parameters (M) and GMACs of the cell's architecture at the study's input size (meta device: no compute)."""
    kwargs = dict(info.get("model_kwargs") or {})
    with torch.device("meta"):
        model = create_model(info["model"], num_classes=len(info["class_names"]), **kwargs).eval()
    params = sum(p.numel() for p in model.parameters()) / 1e6
    try:
        gmacs = count_gmacs(model, (3, *image_size))
    except (RuntimeError, NotImplementedError, ValueError):  # an op without a meta kernel: leave it out
        gmacs = float("nan")
    return params, gmacs


def dataset_table(cfg: StudyConfig, dataset: str, cells: dict[str, CellResult]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The papers' table of one dataset: per-class precision and recall, overall scores, size and time.

    Returns:
        ``(shown, numbers)``: a table of formatted cells ("value (low–high)", the best point estimate
        per column in bold) and the same as numbers (``<col>``, ``<col> low``, ``<col> high``).
    """
    rows, numbers = [], []
    for backbone in _ordered(cfg, list(cells)):
        result = cells[backbone]
        names = result.class_names
        labels = result.test["label"].to_numpy(dtype=np.int64)
        ordinal = "qwk" in result.metrics.columns or dataset == "eyepacs"
        m = compute_metrics(labels, probability_columns(result.test, names), names, is_ordinal=ordinal,
                            n_bootstrap=cfg.n_bootstrap, seed=0)
        entries: dict[str, Estimate | None] = {}
        for c in m.per_class:
            entries[f"{c.name} P"], entries[f"{c.name} R"] = c.precision, c.recall
        entries.update({
            "Accuracy": m.accuracy, "Bal. acc.": m.balanced_accuracy, "Macro P": m.macro["precision"],
            "Macro F1": m.macro["f1"], "Macro AUROC": m.macro_auroc,
        })
        if m.qwk is not None:
            entries["QWK"] = m.qwk
        params, gmacs = _model_size(result.info, cfg.image_size)
        seconds = float(result.metrics["epoch_time_s"].sum()) if "epoch_time_s" in result.metrics else float("nan")
        flag = "did not train" if did_not_train(result) else ""
        record: dict[str, Any] = {"Backbone": backbone}
        for key, est in entries.items():
            record.update({key: est.value, f"{key} low": est.low, f"{key} high": est.high})
        record.update({"Params (M)": params, "GMACs": gmacs, "Epochs": len(result.metrics),
                       "Train time (min)": seconds / 60, "Flag": flag})
        numbers.append(record)
        rows.append((backbone, entries, params, gmacs, len(result.metrics), seconds, flag))
    numbers_frame = pd.DataFrame(numbers)
    shown = []
    for backbone, entries, params, gmacs, epochs, seconds, flag in rows:
        row = {"Backbone": backbone + (f" ⚠ {flag}" if flag else "")}
        for key, est in entries.items():
            column = numbers_frame[key]
            text = _fmt(est)
            ranked = len(rows) > 1 and column.nunique() > 1  # a column where every backbone ties marks none
            row[key] = f"**{text}**" if ranked and est.value == column.max() else text
        row.update({"Params (M)": f"{params:.1f}", "GMACs": f"{gmacs:.2f}", "Epochs": str(epochs),
                    "Train time (min)": f"{seconds / 60:.0f}"})
        shown.append(row)
    return pd.DataFrame(shown), numbers_frame


def paired_table(cfg: StudyConfig, dataset: str, cells: dict[str, CellResult]) -> tuple[pd.DataFrame, dict[str, dict[str, Estimate]], int]:
    """Reference minus each baseline on the same test images, for balanced accuracy and per-class P/R.

    Returns:
        the table (one row per baseline and statistic), ``{baseline: {statistic: Estimate}}`` and n.
    """
    if cfg.reference not in cells:
        return pd.DataFrame(), {}, 0
    names = cells[cfg.reference].class_names
    labels, predictions = align_predictions({b: r.test for b, r in cells.items()}, dataset)
    idx = shared_resamples(labels, cfg.n_bootstrap, seed=0)
    point = {b: resampled_scores(labels, p, np.arange(labels.size)[None], names) for b, p in predictions.items()}
    boot = {b: resampled_scores(labels, p, idx, names) for b, p in predictions.items()}
    rows, diffs = [], {}
    for baseline in _ordered(cfg, list(cells))[1:]:
        diffs[baseline] = {}
        for key in boot[cfg.reference]:
            est = paired_difference(float(point[cfg.reference][key][0] - point[baseline][key][0]),
                                    boot[cfg.reference][key], boot[baseline][key])
            diffs[baseline][key] = est
            rows.append({"dataset": dataset, "baseline": baseline, "statistic": key, "difference": est.value,
                         "low": est.low, "high": est.high})
    return pd.DataFrame(rows), diffs, int(labels.size)


def _margin_estimate(cfg: StudyConfig, cells: dict[str, CellResult], dataset: str, class_name: str, ratio: float) -> Estimate:
    """``recall_ref - ratio * max(recall of the baselines)`` of ``class_name`` on shared resamples."""
    names = cells[cfg.reference].class_names
    labels, predictions = align_predictions({b: r.test for b, r in cells.items()}, dataset)
    idx = shared_resamples(labels, cfg.n_bootstrap, seed=0)
    key = f"recall:{class_name}"
    every = [np.arange(labels.size)[None], idx]
    values = []
    for index in every:
        ref = resampled_scores(labels, predictions[cfg.reference], index, names)[key]
        best = np.max([resampled_scores(labels, predictions[b], index, names)[key] for b in predictions if b != cfg.reference], axis=0)
        values.append(ref - ratio * best)
    return Estimate(float(values[0][0]), *percentile_interval(values[1], 0.95))


def _nanmean_rows(values: np.ndarray) -> np.ndarray:
    """Row means ignoring NaN (a flat CAM scores NaN); a resample of flat CAMs only is NaN, left out of the CI."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=1)


def cam_table(cfg: StudyConfig, cells: dict[str, CellResult]) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """Per backbone and stage, the mean localisation scores with CIs, and the paired differences
    (reference minus baseline) per stage and score on the same images."""
    scored = {b: r.cam_per_image for b, r in cells.items() if r.cam_per_image is not None}
    if not scored:
        return pd.DataFrame(), pd.DataFrame(), 0
    rng = np.random.default_rng(0)
    scores = [s for s in ("pointing", "energy", "iou") if s in next(iter(scored.values())).columns]
    images = sorted(set.intersection(*(set(f["image"]) for f in scored.values())))
    n = len(images)
    idx = rng.integers(0, n, size=(cfg.n_bootstrap, n))
    means, diffs = [], []
    order = _ordered(cfg, list(scored))
    for stage in sorted(next(iter(scored.values()))["stage"].unique()):
        values = {b: f[f["stage"] == stage].set_index("image").loc[images] for b, f in scored.items()}
        for backbone in order:
            row: dict[str, Any] = {"backbone": backbone, "stage": int(stage), "n": n}
            for score in scores:
                v = values[backbone][score].to_numpy(dtype=np.float64)
                low, high = percentile_interval(_nanmean_rows(v[idx]), 0.95)
                row.update({score: float(np.nanmean(v)), f"{score}_low": low, f"{score}_high": high})
            means.append(row)
        if cfg.reference not in values:
            continue
        for baseline in order[1:]:
            for score in scores:
                a = values[cfg.reference][score].to_numpy(dtype=np.float64)
                b = values[baseline][score].to_numpy(dtype=np.float64)
                d = a - b  # NaN where either CAM was flat: left out of the mean
                low, high = percentile_interval(_nanmean_rows(d[idx]), 0.95)
                diffs.append({"baseline": baseline, "stage": int(stage), "score": score,
                              "difference": float(np.nanmean(d)), "low": low, "high": high, "n": int(np.isfinite(d).sum())})
    return pd.DataFrame(means), pd.DataFrame(diffs), n


def claim_verdict(cfg: StudyConfig, claim: Claim, results: dict[str, dict[str, CellResult]],
                  paired: dict[str, dict[str, dict[str, Estimate]]], cam_diffs: pd.DataFrame) -> Verdict:
    """The verdict of one claim from the paired intervals (see :mod:`medvit.study.verdicts`)."""
    missing = [f"{d}/{b}" for d in claim.datasets for b in cfg.backbones if b not in results.get(d, {})]
    if missing:
        return Verdict(NOT_RESOLVED, f"cells not run yet: {', '.join(missing)}", 0)
    if len(cfg.backbones) < 2:
        return Verdict(NOT_RESOLVED, "one backbone only: nothing to compare", 0)
    untrained = {d: {b for b, r in results[d].items() if did_not_train(r)} for d in claim.datasets}
    reference_untrained = [f"{d}/{cfg.reference}" for d in claim.datasets if cfg.reference in untrained[d]]
    if reference_untrained:
        return Verdict(NOT_RESOLVED, f"{', '.join(reference_untrained)} did not train (test balanced accuracy within "
                                     f"{CHANCE_MARGIN} of chance): it says nothing about the claim", 0)
    trained = {d: [b for b in paired[d] if b not in untrained[d]] for d in claim.datasets}
    alone = [d for d in claim.datasets if not trained[d]]
    if alone:
        return Verdict(NOT_RESOLVED, f"no baseline trained on {', '.join(alone)}: nothing to compare", 0)
    left_out = "; ".join(f"{d}: {', '.join(sorted(untrained[d]))} left out (did not train)" for d in claim.datasets if untrained[d])
    n = sum(len(results[d][cfg.reference].test) for d in claim.datasets)
    if claim.kind == "highest_macro_precision":
        comparisons = [(f"{d}: {cfg.reference} − {b} macro precision", paired[d][b]["macro_precision"])
                       for d in claim.datasets for b in trained[d]]
    elif claim.kind == "highest_recall":
        d = claim.datasets[0]
        comparisons = [(f"{d}: {cfg.reference} − {b} recall of {claim.class_name}", paired[d][b][f"recall:{claim.class_name}"])
                       for b in trained[d]]
    elif claim.kind == "recall_ratio":
        d = claim.datasets[0]
        cells = {b: r for b, r in results[d].items() if b == cfg.reference or b in trained[d]}
        est = _margin_estimate(cfg, cells, d, str(claim.class_name), claim.ratio)
        comparisons = [(f"{d}: recall of {claim.class_name}, {cfg.reference} − {claim.ratio:g} × best baseline", est)]
    else:
        rows = cam_diffs[(cam_diffs["stage"] == claim.stage) & (cam_diffs["score"] == claim.score)] if len(cam_diffs) else cam_diffs
        if not len(rows):
            return Verdict(NOT_RESOLVED, "no CAM localisation scores", 0)
        rows = rows[rows["baseline"].isin(trained[claim.datasets[0]])]
        comparisons = [(f"{cfg.reference} − {r.baseline} {claim.score} at stage {claim.stage}", Estimate(r.difference, r.low, r.high))
                       for r in rows.itertuples()]
        n = int(rows["n"].min())
    outcome = verdict(comparisons, n)
    if left_out:
        outcome = dataclasses.replace(outcome, reason=f"{outcome.reason} ({left_out})")
    return outcome


def _curves(dataset: str, cells: dict[str, CellResult], selection: str, path: Path) -> None:
    figure = Figure(figsize=(9, 3.2))
    left, right = figure.subplots(1, 2)
    for backbone, result in cells.items():
        epochs = np.arange(1, len(result.metrics) + 1)
        left.plot(epochs, result.metrics["train_loss"], label=backbone)
        if selection in result.metrics:
            right.plot(epochs, result.metrics[selection], label=backbone)
    left.set(title=f"{dataset}: training loss", xlabel="epoch")
    right.set(title=f"{dataset}: {selection}", xlabel="epoch")
    right.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def _starts(cfg: StudyConfig) -> str:
    """Which start each backbone's cells used (``distilled`` / ``imagenet`` with its weights / ``scratch``)."""
    starts = {b: cfg.backbone_start(b) for b in cfg.backbones}
    if len(set(starts.values())) == 1 and cfg.start != "imagenet":
        return f"`{cfg.start}` for every backbone"
    described = [f"{b} `{s}`" + (f" ({cfg.weights[b]})" if s == "imagenet" else "") for b, s in starts.items()]
    return ", ".join(described)


def _md(frame: pd.DataFrame) -> str:
    return frame.to_markdown(index=False) + "\n" if len(frame) else "(no finished cells)\n"


def write_study_report(cfg: StudyConfig, study_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the study report of the finished cells under ``study_dir`` into ``out`` (default ``study_dir/report``)."""
    study_dir = Path(study_dir)
    out = Path(out) if out is not None else study_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    results, missing = load_results(cfg, study_dir)
    sections = [f"# Transfer study `{cfg.name}`: report\n",
                f"Regenerate: `medvit study --config <this study's YAML> --out {study_dir} --report-only"
                f"{'' if out == study_dir / 'report' else f' --report-dir {out}'}`. "
                f"Start: {_starts(cfg)}; {cfg.image_size[0]}×{cfg.image_size[1]} px, selection on validation "
                f"`{cfg.selection}`, seeds {cfg.seeds}; reference backbone `{cfg.reference}`. 95% stratified bootstrap "
                f"CIs ({cfg.n_bootstrap} resamples) on the test split; the best point estimate per column in bold (none where all tie).\n"]
    if missing:
        sections.append(f"**Cells not finished yet** ({len(missing)}): {', '.join(missing)}.\n")
    paired: dict[str, dict[str, dict[str, Estimate]]] = {}
    compute = []
    for dataset, cells in results.items():
        if not cells:
            continue
        shown, numbers = dataset_table(cfg, dataset, cells)
        base = out / f"{dataset}_table"
        numbers.to_csv(base.with_suffix(".csv"), index=False, float_format="%.6g")
        atomic_write_text(base.with_suffix(".md"), _md(shown))
        atomic_write_text(base.with_suffix(".tex"), shown.replace(r"\*\*", "", regex=True).to_latex(index=False, escape=True))
        table, diffs, n = paired_table(cfg, dataset, cells)
        paired[dataset] = diffs
        table.to_csv(out / f"{dataset}_paired.csv", index=False, float_format="%.6g")
        _curves(dataset, cells, cfg.selection, out / f"curves_{dataset}.png")
        sections += [f"## {dataset} (test n = {len(next(iter(cells.values())).test)})\n", _md(shown),
                     f"\n![curves](curves_{dataset}.png)\n"]
        if len(table):
            keep = table[table["statistic"].isin(["balanced_accuracy", "macro_precision"] +
                                                 [s for s in table["statistic"] if s.startswith(("precision:", "recall:"))])]
            wide = keep.assign(value=[Estimate(r.difference, r.low, r.high).format(3) for r in keep.itertuples()])
            wide = wide.pivot(index="statistic", columns="baseline", values="value").reset_index()
            sections += [f"\nPaired differences, {cfg.reference} minus each baseline on the same {n} test images:\n\n", _md(wide)]
        for backbone, result in cells.items():
            compute.append({"cell": result.cell.name, "epochs": len(result.metrics),
                            "train_min": float(result.metrics.get("epoch_time_s", pd.Series([np.nan])).sum()) / 60,
                            "precision": result.info.get("precision", "fp32")})
    for backbone in cfg.backbones:
        pretrain = study_dir / "pretrain" / backbone / METRICS_CSV
        if pretrain.is_file():
            metrics = pd.read_csv(pretrain)
            compute.append({"cell": f"pretrain/{backbone}", "epochs": len(metrics),
                            "train_min": float(metrics["epoch_time_s"].sum()) / 60, "precision": ""})
    cam_means, cam_diffs, cam_n = pd.DataFrame(), pd.DataFrame(), 0
    cam_dataset = cfg.cam.get("dataset")
    if cam_dataset and results.get(cam_dataset):
        cam_means, cam_diffs, cam_n = cam_table(cfg, results[cam_dataset])
        cam_means.to_csv(out / "cam_localization.csv", index=False, float_format="%.6g")
        cam_diffs.to_csv(out / "cam_localization_paired.csv", index=False, float_format="%.6g")
        figures = {b: r.figure for b, r in results[cam_dataset].items() if r.figure is not None}
        if figures:
            ordered = {b: figures[b] for b in _ordered(cfg, list(figures))}
            plot_figure(ordered, next(iter(results[cam_dataset].values())).class_names, out / "cam_figure.png")
        if len(cam_means):
            shown = cam_means.assign(**{s: [Estimate(v, lo, hi).format(3) for v, lo, hi in zip(cam_means[s], cam_means[f"{s}_low"], cam_means[f"{s}_high"])]
                                        for s in ("pointing", "energy", "iou") if s in cam_means})
            sections += [f"\n## Interpretation: per-stage Grad-CAM localisation on {cam_dataset} (n = {cam_n} test images with a lesion mask)\n\n",
                         _md(shown[["backbone", "stage"] + [s for s in ("pointing", "energy", "iou") if s in shown]]),
                         "\n![stage CAMs](cam_figure.png)\n"]
    claims = []
    for claim in cfg.claims:
        v = claim_verdict(cfg, claim, results, paired, cam_diffs)
        claims.append({"claim": claim.id, "text": claim.text, "verdict": v.verdict, "reason": v.reason, "n": v.n,
                       "n_to_resolve": v.n_to_resolve})
    claims_frame = pd.DataFrame(claims)
    claims_frame.to_csv(out / "claims.csv", index=False)
    if len(claims_frame):
        sections += ["\n## The claims\n\n", _md(claims_frame)]
    compute_frame = pd.DataFrame(compute)
    compute_frame.to_csv(out / "compute.csv", index=False, float_format="%.4g")
    sections += ["\n## Compute\n\n", _md(compute_frame)]
    if len(compute_frame):
        per_backbone = compute_frame.assign(backbone=compute_frame["cell"].str.split("/").str[-1])
        minutes = per_backbone.groupby("backbone", sort=False)["train_min"].sum()
        sections.append(
            f"\nTraining time of the finished cells: {compute_frame['train_min'].sum() / 60:.1f} h in all ("
            + ", ".join(f"{name} {value / 60:.1f} h" for name, value in minutes.items())
            + "), on the machine that ran each cell; evaluation, CAM scoring and the report are not counted.\n"
        )
    atomic_write_text(out / "index.md", "\n".join(sections))
    _logger.info("wrote %s", out / "index.md")
    return out


PAGE_MARKER = "<!-- medvit study: everything below this line is generated; edit the text above it -->"


def write_results_page(page: str | Path, report_dir: str | Path) -> Path:
    """Replace the generated part of a results page (``docs/transfer_study.md``) with the report's ``index.md``.

    The page's text above :data:`PAGE_MARKER` (protocol, what the scale can say) is kept; below it goes the
    report, its headings one level down and its links made relative to the page.

    Raises:
        FileNotFoundError: the report has no ``index.md`` yet.
        ValueError: the page exists without the marker line (it would be overwritten).
    """
    import os
    import re

    page, report_dir = Path(page), Path(report_dir)
    index = report_dir / "index.md"
    if not index.is_file():
        raise FileNotFoundError(f"{index} not found; write the report first (medvit study ... --report-only)")
    preface = f"# Transfer study\n\n{PAGE_MARKER}\n"
    if page.is_file():
        text = page.read_text()
        if PAGE_MARKER not in text:
            raise ValueError(f"{page}: no line '{PAGE_MARKER}'; add it where the generated report should start")
        preface = text[: text.index(PAGE_MARKER) + len(PAGE_MARKER)] + "\n"
    prefix = Path(os.path.relpath(report_dir.resolve(), page.resolve().parent)).as_posix()
    body = index.read_text()
    body = re.sub(r"^(#+) ", lambda m: "#" + m.group(1) + " ", body, flags=re.MULTILINE)
    body = re.sub(r"\]\((?![a-z]+:|/|#)([^)]+)\)", lambda m: f"]({prefix}/{m.group(1)})", body)
    atomic_write_text(page, preface + "\n" + body)
    _logger.info("wrote %s", page)
    return page
