"""Evaluation of a finished run on a split of its own manifest or of another one."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from medvit.boundary.manifest import require_same_classes
from medvit.run_dir import load_run, predictions_filename
from medvit.train.acceleration import inference_amp, resolve_precision
from medvit.train.config import translate_legacy_amp
from medvit.train.distributed import DistContext
from medvit.train.predict import predict, write_predictions
from medvit.train.sampling import build_loader, load_split

__all__ = ["evaluate_run"]

_logger = logging.getLogger(__name__)


def evaluate_run(
    run_dir: str | Path,
    manifest: str | Path | None = None,
    root: str | Path | None = None,
    split: str = "test",
    batch_size: int | None = None,
    device: str = "auto",
    out: str | Path | None = None,
    replace: bool = False,
) -> Path:
    """Predict a split with a run's best model and write ``predictions.csv``.

    The manifest is checked first (:func:`medvit.boundary.manifest.require_same_classes`, and the rows
    by :func:`medvit.data.loaders.create_dataset`): its classes must be the run's, in order. A run's own
    prediction file is written only while it does not exist (``medvit evaluate`` writes everything else
    beside it, in ``RUN/evaluations/``).

    Args:
        run_dir: the run directory.
        manifest, root: data to evaluate (default: the run's own ``config.yaml``).
        split: ``train``, ``val``, ``test`` or ``all`` (every row: external data).
        batch_size: evaluation batch size (default: the run's).
        device: ``auto``, ``cpu`` or ``cuda``.
        out: output CSV (default ``RUN/predictions.csv``, ``RUN/predictions_<split>.csv`` for
            other splits).
        replace: replace an existing run-own prediction file (only for a run's own re-measurement,
            e.g. ``medvit demo-export`` predicting again with the weights as stored).

    Returns:
        The written CSV path.

    Raises:
        ManifestError: the manifest's classes differ from the run's, or its rows are invalid.
        FileExistsError: ``out`` (or the default) is one of the run's own prediction files and exists.
    """
    run_dir = Path(run_dir)
    path = Path(out) if out else run_dir / predictions_filename(split)
    own_files = {predictions_filename(s) for s in ("train", "val", "test", "all")}
    if not replace and path.exists() and path.name in own_files and path.parent.resolve() == run_dir.resolve():
        raise FileExistsError(
            f"{path} holds the run's own predictions and is never overwritten; write elsewhere with --out DIR"
        )
    ctx = DistContext.from_env(device)
    try:
        run = load_run(run_dir, device=ctx.device)
        if run.info.get("cv") and split in ("train", "val") and manifest is None:
            raise ValueError(
                f"{run_dir} is cross-validated: its final predictor trained on the {split} split; the held-out "
                f"predictions of train+val are {predictions_filename('oof')} (every image by the fold that did not train on it)"
            )
        manifest = manifest or run.config.get("manifest")
        root = root or run.config.get("root")
        if not manifest or not root:
            raise ValueError(f"{run_dir}: no manifest/root in config.yaml; pass --manifest and --root")
        require_same_classes(manifest, run.class_names)
        data = load_split(
            manifest=manifest, root=root, split=None if split == "all" else split, image_size=run.image_size, mean=run.mean, std=run.std,
            preset=run.preset or "generic", train=False, seed=int(run.config.get("seed", 0)), cache=False,
        )
        loader = build_loader(
            dataset=data.dataset, collate_fn=data.collate_fn, batch_size=batch_size or int(run.config.get("batch_size", 32)),
            ctx=ctx, seed=0, epoch=0, train=False, num_workers=int(run.config.get("num_workers", 0)),
        )
        precision = resolve_precision(translate_legacy_amp(run.config).get("precision", "auto"), ctx.device)
        preds = predict(run.model, loader, ctx, amp=inference_amp(ctx.device, precision), progress=sys.stderr.isatty())
        if ctx.is_main:
            write_predictions(path, preds, data.records, run.class_names, root, split, info=run.info)
            _logger.info("wrote %s (%d images)", path, len(preds.labels))
        return path
    finally:
        ctx.close()
