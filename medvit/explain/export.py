"""Files of ``medvit explain``: per-image grid, overlays and JSON; per-split localisation tables."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from PIL import Image

from medvit.explain.cam import StageCams, compute_stage_cams
from medvit.explain.localization import DEFAULT_TOP_FRACTION, SCORE_NAMES, score_split, stage_localization_scores
from medvit.explain.overlay import denormalize_image, figure_to_png, overlay_cam, render_grid

__all__ = ["explain_images", "resolve_class", "stage_summary", "write_split_scores"]

_logger = logging.getLogger(__name__)


def resolve_class(target: str | int | None, class_names: Sequence[str]) -> int | None:
    """A class given by name or index (``"malignant"``, ``"2"``, ``2``) -> its index; None stays None.

    Raises:
        ValueError: Unknown name or index out of range (the message lists the classes).
    """
    if target is None:
        return None
    names = list(class_names)
    if isinstance(target, str) and target in names:
        return names.index(target)
    try:
        index = int(target)
    except ValueError:
        index = None
    if index is None or not 0 <= index < len(names):
        choices = ", ".join(f"{k}={name}" for k, name in enumerate(names))
        raise ValueError(f"unknown target class {target!r}; use a class name or index ({choices})")
    return index


def stage_summary(stage_cams: StageCams) -> list[dict]:
    """Per stage: module, stride, map shape (C, h, w), resolution and the CAM maximum's location (y, x)."""
    summary = []
    for index, (stage, cam) in enumerate(zip(stage_cams.stages, stage_cams.cams)):
        grid = stage_cams.grid_sizes[index] if index < len(stage_cams.grid_sizes) else None
        peak_y, peak_x = np.unravel_index(int(np.argmax(cam)), cam.shape)
        summary.append(
            {
                "stage": index + 1,
                "module": stage.name,
                "stride": stage.reduction,
                "shape": [stage.num_chs, *grid] if grid else None,
                "resolution": list(grid) if grid else None,
                "max_location": [int(peak_y), int(peak_x)],
                "max_value": float(cam[peak_y, peak_x]),
                "mean_value": float(cam.mean()),
            }
        )
    return summary


def _unique_stems(paths: Sequence[Path]) -> list[str]:
    stems: list[str] = []
    for path in paths:
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem).strip("_") or "image"
        candidate, k = stem, 2
        while candidate in stems:
            candidate, k = f"{stem}_{k}", k + 1
        stems.append(candidate)
    return stems


def explain_images(
    run_dir: str | Path,
    images: Sequence[str | Path],
    out: str | Path,
    method: str = "gradcam",
    target: str | int | None = None,
    masks: Sequence[str | Path] | None = None,
    top_fraction: float = DEFAULT_TOP_FRACTION,
    alpha: float = 0.5,
) -> list[dict]:
    """Explain images with a run's model: per image a grid PNG, four overlay PNGs and a JSON.

    Writes ``<stem>_grid.png``, ``<stem>_stage{1..4}.png`` and ``<stem>.json`` under ``out``. Images
    are read with :func:`medvit.data.images.read_image` and resized/normalised with
    :func:`medvit.data.transforms.preprocess_image` (the eval pipeline); overlays are drawn on the
    resized image the model saw. A mask is read with :func:`medvit.data.images.read_mask` and resized
    (nearest) like the image.

    Args:
        run_dir: A run directory (:func:`medvit.run_dir.load_run`).
        images: Image files.
        out: Output folder (created).
        method: A :data:`~medvit.explain.CAM_METHODS` name.
        target: Class to explain, by name or index; None: each image's predicted class.
        masks: One lesion mask per image (same order), to add localisation scores.
        top_fraction: Share of CAM pixels kept for the IoU.
        alpha: Heat-map weight of the overlays.

    Returns:
        The JSON records written, one per image.

    Raises:
        FileNotFoundError: Missing run, image or mask.
        ValueError: Unreadable image (:class:`~medvit.data.images.ImageReadError`), mask count or size
            mismatch, unknown method or class.
    """
    import torch

    from medvit.data.images import read_image, read_mask
    from medvit.data.transforms import Resize2d, preprocess_image
    from medvit.run_dir import load_run

    image_paths = [Path(p) for p in images]
    mask_paths = [Path(p) for p in masks] if masks else None
    if not image_paths:
        raise ValueError("no image given; pass one or more image files")
    if mask_paths is not None and len(mask_paths) != len(image_paths):
        raise ValueError(f"{len(mask_paths)} masks for {len(image_paths)} images; pass one --mask per image, in order")
    for path in image_paths + (mask_paths or []):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file")
    run = load_run(run_dir)
    target_index = resolve_class(target, run.class_names)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for index, (path, stem) in enumerate(zip(image_paths, _unique_stems(image_paths))):
        rgb = read_image(path)
        tensor = preprocess_image(rgb, run.image_size, run.mean, run.std)
        cams = compute_stage_cams(run.model, tensor, target=target_index, method=method)
        shown = denormalize_image(tensor, run.mean, run.std)
        figure = render_grid(shown, cams, run.class_names, alpha=alpha)
        (out / f"{stem}_grid.png").write_bytes(figure_to_png(figure))
        for k, cam in enumerate(cams.cams):
            Image.fromarray(overlay_cam(shown, cam, alpha)).save(out / f"{stem}_stage{k + 1}.png")
        record = {
            "image": str(path),
            "run": str(run.path),
            "model": run.model_name,
            "method": method,
            "input_size": list(run.image_size),
            "probabilities": {name: float(p) for name, p in zip(run.class_names, cams.probabilities)},
            "predicted": run.class_names[int(np.argmax(cams.probabilities))],
            "target": {
                "index": cams.target,
                "name": run.class_names[cams.target],
                "probability": float(cams.probabilities[cams.target]),
            },
            "stages": stage_summary(cams),
        }
        if mask_paths is not None:
            mask = read_mask(mask_paths[index], shape=rgb.shape[:2])
            mask = Resize2d(run.image_size, mode="nearest")(torch.from_numpy(mask[None].astype(np.float32)))[0]
            record["mask"] = str(mask_paths[index])
            record["top_fraction"] = top_fraction
            if bool((mask > 0.5).any()):
                for summary, scores in zip(record["stages"], stage_localization_scores(cams, mask, top_fraction)):
                    summary["localization"] = {  # NaN (a constant CAM) is written as null
                        name: None if np.isnan(getattr(scores, name)) else getattr(scores, name) for name in SCORE_NAMES
                    }
            else:
                _logger.warning("%s: the mask is empty; no localisation scores", mask_paths[index])
        (out / f"{stem}.json").write_text(json.dumps(record, indent=2, allow_nan=False) + "\n")
        _logger.info(
            "%s: %s p=%.3f -> %s", path, record["target"]["name"], record["target"]["probability"], out / f"{stem}_grid.png"
        )
        records.append(record)
    return records


def _markdown_table(table: pd.DataFrame) -> str:
    """The score table as Markdown: ``mean [CI]`` per score and stage."""
    header = ["stage", "stride", "n"] + [name for name in SCORE_NAMES]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table.itertuples(index=False):
        cells = [f"{row.stage} ({row.module})", str(row.stride), str(row.n)]
        for name in SCORE_NAMES:
            mean, low, high = getattr(row, name), getattr(row, f"{name}_ci_low"), getattr(row, f"{name}_ci_high")
            cells.append("n/a" if np.isnan(mean) else f"{mean:.3f} [{low:.3f}, {high:.3f}]")
        lines.append("| " + " | ".join(cells) + " |")
    first = table.iloc[0]
    note = (
        f"\n{first['method']} CAMs for the {'true' if first['target'] == 'label' else 'predicted'} class; "
        f"mean [95% bootstrap CI] over images with a lesion mask; IoU at the top {first['top_fraction']:.0%} "
        "of CAM pixels.\n"
    )
    return "\n".join(lines) + "\n" + note


def write_split_scores(
    run_dir: str | Path,
    manifest: str | Path,
    out: str | Path,
    root: str | Path | None = None,
    split: str = "test",
    method: str = "gradcam",
    top_fraction: float = DEFAULT_TOP_FRACTION,
    target: str = "label",
    max_images: int | None = None,
) -> pd.DataFrame:
    """Localisation scores per stage over a manifest split: ``localization_<split>.csv`` and ``.md``.

    Args:
        run_dir: A run directory.
        manifest: Manifest CSV with lesion masks.
        out: Output folder (created).
        root: Raw folder of the manifest; default the one recorded in its side JSON.
        split: ``train``, ``val`` or ``test``.
        method: A CAM method name.
        top_fraction: Share of CAM pixels kept for the IoU.
        target: ``"label"`` (true class) or ``"predicted"``.
        max_images: Score at most this many masked images.

    Returns:
        The table (see :func:`~medvit.explain.score_split`).
    """
    from medvit.data.manifest import read_manifest_info
    from medvit.run_dir import load_run

    manifest = Path(manifest)
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest}: manifest not found; create it with 'medvit prepare'")
    if root is None:
        root = read_manifest_info(manifest).get("raw_dir")
        if not root:
            raise ValueError(f"{manifest}: no raw folder recorded; pass --root")
    run = load_run(run_dir)
    table = score_split(
        run, manifest, root, split=split, method=method, top_fraction=top_fraction, target=target, max_images=max_images
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / f"localization_{split}.csv", index=False)
    (out / f"localization_{split}.md").write_text(_markdown_table(table))
    _logger.info("wrote %s", out / f"localization_{split}.csv")
    return table
