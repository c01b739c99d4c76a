"""External validation: a run evaluated on another manifest (a second site), reported in its own folder.

``medvit evaluate RUN --manifest OTHER.csv --root R --split all --out DIR`` writes ``DIR/predictions.csv``
and ``DIR/model.json`` (the run's record plus an ``external`` block naming the data); ``medvit report DIR``
then writes ``DIR/report/`` with the run's validation-fitted calibration, thresholds and sets applied
to the new data. The run directory itself is never written.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

from medvit.boundary.manifest import require_same_classes
from medvit.data.manifest import manifest_hash, manifest_info_path, read_manifest_info
from medvit.run_dir import PREDICTIONS_CSV, predictions_filename, read_config, read_model_info, write_model_info
from medvit.train.evaluate import evaluate_run

__all__ = [
    "EVALUATIONS_DIR",
    "check_external_classes",
    "evaluate_external",
    "evaluation_dir",
    "external_markdown",
    "external_record",
    "with_external_notice",
]

_logger = logging.getLogger(__name__)


EVALUATIONS_DIR = "evaluations"
"""Where ``medvit evaluate RUN`` writes, inside the run, whatever is not the run's own prediction file."""


def check_external_classes(info: Mapping[str, Any], manifest: str | Path) -> tuple[list[str], str]:
    """The manifest's classes and dataset kind, checked against the run's classes.

    Raises:
        FileNotFoundError: no such manifest.
        ManifestError: the classes (or their order) differ from the run's; the message names both lists.
    """
    manifest = Path(manifest)
    classes = require_same_classes(manifest, info["class_names"])
    side = read_manifest_info(manifest) if manifest_info_path(manifest).is_file() else {}
    return classes, str(side.get("dataset", "unknown"))


def default_evaluation(
    run_dir: str | Path, manifest: str | Path | None, root: str | Path | None, split: str, folder: bool = False
) -> tuple[Path | None, Path | None, Path | None]:
    """Where ``medvit evaluate RUN`` writes without ``--out``: ``(manifest, root, out)``.

    The run's own ``predictions*.csv`` (``out`` ``None``) only for the run's own manifest while that
    file does not exist; otherwise (other data, an existing file, or ``folder``: a report is asked) a
    new :func:`evaluation_dir`, with the manifest and root defaulting to the run's.
    """
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    own_manifest = config.get("manifest")
    is_own_data = manifest is None or bool(own_manifest and Path(manifest).resolve() == Path(own_manifest).resolve())
    manifest = Path(manifest) if manifest else (Path(own_manifest) if own_manifest else None)
    root = Path(root) if root else (Path(config["root"]) if config.get("root") else None)
    if manifest is None or (is_own_data and not folder and not (run_dir / predictions_filename(split)).exists()):
        return manifest, root, None
    return manifest, root, evaluation_dir(run_dir, manifest, split)


def evaluation_dir(run_dir: str | Path, manifest: str | Path, split: str) -> Path:
    """A new folder ``RUN/evaluations/<manifest>_<split>[_N]`` beside the run's own predictions."""
    base = Path(run_dir) / EVALUATIONS_DIR / f"{Path(manifest).stem}_{split}"
    folder, number = base, 2
    while folder.exists():
        folder, number = base.with_name(f"{base.name}_{number}"), number + 1
    return folder


def external_record(info: Mapping[str, Any], manifest: str | Path, root: str | Path, split: str, n_images: int) -> dict[str, Any]:
    """The ``external`` block of ``DIR/model.json``: what data the predictions are on."""
    _, dataset = check_external_classes(info, manifest)
    own = str(info.get("manifest_hash", "")) == manifest_hash(manifest)
    return {
        "manifest": str(manifest),
        "manifest_hash": manifest_hash(manifest),
        "root": str(root),
        "dataset": dataset,
        "split": split,
        "n_images": int(n_images),
        "same_manifest_as_training": own,
        "same_dataset_kind": dataset == info.get("dataset"),
        "run_dataset": info.get("dataset"),
    }


def prepare_external_dir(run_dir: str | Path, out_dir: str | Path, manifest: str | Path) -> dict[str, Any]:
    """Check the manifest against the run and create ``DIR``; returns the run's ``model.json``.

    Raises:
        ValueError: ``DIR`` is the run directory, or the classes differ (both lists named).
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    info = read_model_info(run_dir)
    if out_dir.resolve() == run_dir.resolve():
        raise ValueError(f"--out {out_dir} is the run directory; external results go into a folder of their own")
    check_external_classes(info, manifest)
    out_dir.mkdir(parents=True, exist_ok=True)
    return info


def write_external_info(out_dir: str | Path, info: Mapping[str, Any], record: Mapping[str, Any], run_dir: str | Path) -> Path:
    """``DIR/model.json``: the run's record with ``external`` (data) and ``source_run`` added."""
    return write_model_info(out_dir, {**info, "external": dict(record), "source_run": str(run_dir)})


def external_markdown(info: Mapping[str, Any]) -> str:
    """The report's statement of what external data it is on (empty for a run's own report)."""
    ext = info.get("external")
    if not ext:
        return ""
    if ext.get("same_manifest_as_training"):
        kind = "the run's own manifest (not external data)"
    elif ext.get("same_dataset_kind"):
        kind = f"external data of the same dataset kind ({ext['dataset']})"
    else:
        kind = (
            f"external data of another dataset kind ({ext['dataset']}; the run was trained on "
            f"{ext.get('run_dataset')}) with the same classes"
        )
    return "\n".join(
        [
            "## External validation",
            "",
            f"These predictions are on {kind}: manifest `{ext['manifest']}` (sha256 `{ext['manifest_hash'][:16]}…`), "
            f"split `{ext['split']}`, {ext['n_images']} images, model from `{info.get('source_run', '?')}`. "
            "Temperature, thresholds and prediction sets come from the run's own validation split.",
            "",
        ]
    )



def evaluate_external(
    run_dir: str | Path,
    manifest: str | Path,
    root: str | Path,
    out_dir: str | Path,
    split: str = "all",
    batch_size: int | None = None,
    device: str = "auto",
) -> Path:
    """Predict ``split`` of another manifest with a run's model into ``out_dir`` (never the run directory).

    Writes ``DIR/predictions.csv`` (the run's temperature and prediction sets applied) and
    ``DIR/model.json`` with the ``external`` block; ``medvit report DIR`` reports it.

    Raises:
        ValueError: classes differ from the run's (both lists named), or ``out_dir`` is the run.
    """
    import pandas as pd


    out_dir = Path(out_dir)
    info = prepare_external_dir(run_dir, out_dir, manifest)
    path = evaluate_run(run_dir, manifest=manifest, root=root, split=split, batch_size=batch_size, device=device,
                        out=out_dir / PREDICTIONS_CSV)
    n_images = len(pd.read_csv(path, usecols=["image"]))
    record = external_record(info, manifest, root, split, n_images)
    write_external_info(out_dir, info, record, run_dir)
    _logger.info("%s: %d images of %s (%s)", out_dir, n_images, manifest, record["dataset"])
    return out_dir


def with_external_notice(index_md: str, info: Mapping[str, Any], split: str = "test") -> str:
    """``index.md`` of an external report: the external-data statement under the title, and the results
    heading naming the external split instead of the file's ``test`` (unchanged for a run's own report)."""
    ext = info.get("external")
    if not ext:
        return index_md
    title, _, rest = index_md.partition("\n")
    rest = rest.replace(f"## Results on `{split}`", f"## Results on `{ext['split']}` of `{Path(ext['manifest']).name}` (external)", 1)
    return f"{title}\n\n{external_markdown(info)}{rest}"
