"""The clinical part of ``medvit report``: what :func:`medvit.report.write_report` adds to ``report/``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from medvit.boundary.predictions import read_predictions_file
from medvit.clinical.summary import clinical_markdown, clinical_summary, subgroup_frame
from medvit.data.datasets import DATASETS
from medvit.data.manifest import manifest_info_path, read_manifest_info
from medvit.run_dir import predictions_filename

__all__ = ["clinical_section"]


def _subgroup_columns(info: Mapping[str, Any], manifest: str | Path | None) -> list[str]:
    """Reporting-only columns: the manifest side JSON's list, else the dataset spec's."""
    if manifest:
        if manifest_info_path(manifest).is_file():
            side = read_manifest_info(manifest)
            if "subgroup_columns" in side:
                return [str(c) for c in side["subgroup_columns"]]
    spec = DATASETS.get(str(info.get("dataset", "")).lower())
    return list(spec.subgroup_columns) if spec else []


def clinical_section(
    run_dir: str | Path,
    info: Mapping[str, Any],
    predictions: pd.DataFrame,
    split: str,
    out_dir: Path,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> tuple[dict[str, Any], str]:
    """The clinical summary (for ``summary.json["clinical"]``) and its Markdown (appended to ``index.md``).

    Uses the run's stored calibration; without one, ``predictions_val.csv`` of the run (if present)
    is used for this report only. Subgroups come from the manifest's reporting-only columns when the
    manifest is readable from here.
    """
    run_dir = Path(run_dir)
    external = info.get("external") or {}
    val = None
    val_path = run_dir / predictions_filename("val")
    if not info.get("calibration") and not external and val_path.is_file():
        val = read_predictions_file(val_path, [str(c) for c in info["class_names"]])
    manifest = external.get("manifest") or info.get("manifest")
    subgroups = subgroup_frame(predictions, manifest, _subgroup_columns(info, manifest))
    summary = clinical_summary(info, predictions, out_dir, val=val, subgroups=subgroups, n_bootstrap=n_bootstrap, seed=seed)
    if external:
        summary["external"] = dict(external)
    label = f"{external['split']} of {Path(external['manifest']).name} (external)" if external else split
    return summary, clinical_markdown(summary, label)
