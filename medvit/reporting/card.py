"""The clinical lines of a model card, read from ``report/summary.json["clinical"]`` (nothing recomputed)."""

from __future__ import annotations

from typing import Any, Mapping

from medvit.metrics.bootstrap import Estimate

__all__ = ["clinical_card"]


def _fmt(d: Mapping[str, Any] | None, digits: int = 3) -> str:
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
        line = f"ECE {_fmt(cal['after']['ece'])} (fold ensemble, members scaled by T = {cal['member_temperature']:.3f}, fitted on {images})"
    else:
        line = f"ECE {_fmt(cal['before']['ece'])} before temperature scaling"
    if cal.get("after") and cal.get("member_temperature") is None:
        line += f", {_fmt(cal['after']['ece'])} after (T = {cal['temperature']:.3f}, fitted on {images})"
    out["Calibration (test ECE, 15 bins)"] = line
    for q in clinical.get("questions", []):
        for r in q.get("points", []):
            out[f"{r['point']['description']} for {q['name']} (t = {r['point']['threshold']:.3f})"] = (
                f"sensitivity {_fmt(r['sensitivity'])}, specificity {_fmt(r['specificity'])}, "
                f"PPV {_fmt(r['ppv'])}, NPV {_fmt(r['npv'])}"
            )
    conf = clinical.get("conformal")
    if conf:
        out[f"Prediction sets ({conf['method'].upper()}, target coverage {1 - conf['alpha']:.0%})"] = (
            f"coverage {_fmt(conf['coverage'])}, mean set size {_fmt(conf['mean_size'], 2)}"
        )
    worst = []
    for table in clinical.get("subgroups", []):
        name = table["worst"].get("recall")
        if name is None:
            continue
        group = next(g for g in table["groups"] if g["value"] == name)
        worst.append((group["recall"]["value"], f"{table['column']} = {name}: recall {_fmt(group['recall'])} (n = {group['n']})"))
    if worst:
        out["Worst subgroup (recall)"] = min(worst)[1]
    return out
