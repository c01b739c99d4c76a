"""Files of ``medvit explain``: one folder per image, written all or nothing; per-split score tables.

Per image ``<out>/<stem>/`` holds ``explanation.json`` (:meth:`~medvit.explain.pipeline.Explanation.to_json`),
``grid.png`` (the image and the four overlays), ``stage{1..4}.png`` and, with faithfulness scores,
``curves.png`` (deletion/insertion per stage). Everything is computed and encoded in memory first, written
into a hidden temporary folder next to it, and renamed into place, so an image that fails (unreadable
file, mask of another size) leaves nothing behind and a finished folder is always complete. A bad image
does not stop the batch: :func:`explain_images` returns one :class:`ExplainFailure` per bad file.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from PIL import Image

from medvit.explain.faithfulness import FaithfulnessConfig
from medvit.explain.localization import DEFAULT_TOP_FRACTION
from medvit.explain.overlay import figure_to_png, overlay_cam, render_curves, render_grid
from medvit.explain.pipeline import Explanation, explain, resolve_class
from medvit.explain.split import SplitScores, score_split
from medvit.markdown import markdown_table
from medvit.data.images import read_image, read_mask
from medvit.data.manifest import read_manifest_info
from medvit.explain.cam import stage_cam_class
from medvit.run_dir import load_run

__all__ = [
    "EXPLANATION_JSON",
    "ExplainBatch",
    "ExplainFailure",
    "explain_images",
    "explanation_files",
    "resolve_class",
    "write_explanation",
    "write_split_scores",
]

_logger = logging.getLogger(__name__)

EXPLANATION_JSON = "explanation.json"


@dataclass(frozen=True)
class ExplainFailure:
    """One image that could not be explained, with a one-line reason."""

    image: str
    reason: str

    def __str__(self) -> str:
        return f"{self.image}: {self.reason}"


@dataclass
class ExplainBatch:
    """Result of :func:`explain_images`: the folders written and the images that failed."""

    records: list[dict] = field(default_factory=list)
    folders: list[Path] = field(default_factory=list)
    failures: list[ExplainFailure] = field(default_factory=list)

    @property
    def is_complete(self) -> bool:
        return not self.failures


def _explained_image(folder: Path) -> str | None:
    """The image an existing explanation folder was made from (``None``: no readable record)."""
    try:
        return str(json.loads((folder / EXPLANATION_JSON).read_text()).get("image"))
    except (OSError, ValueError, AttributeError):
        return None


def _unique_stems(paths: Sequence[Path], out: Path | None = None) -> list[str]:
    """One folder name per image: its stem, with ``_2``, ``_3`` ... for a stem already taken in this
    batch or by an earlier explanation of another file in ``out`` (``d1/img.png`` then ``d2/img.png``).
    A folder of the same file is reused (explaining it again replaces it)."""
    stems: list[str] = []
    for path in paths:
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem).strip("_.") or "image"
        candidate, k = stem, 2

        def taken(name: str) -> bool:
            if name in stems:
                return True
            folder = out / name if out is not None else None
            return folder is not None and folder.exists() and _explained_image(folder) != str(path)

        while taken(candidate):
            candidate, k = f"{stem}_{k}", k + 1
        stems.append(candidate)
    return stems


def explanation_files(explanation: Explanation, alpha: float = 0.5) -> dict[str, bytes]:
    """The files of one explanation, encoded in memory: file name -> bytes."""
    import io

    files: dict[str, bytes] = {}
    figure = render_grid(explanation.image, explanation.stage_cams, explanation.class_names, alpha=alpha)
    files["grid.png"] = figure_to_png(figure)
    for stage in explanation.stages:
        buffer = io.BytesIO()
        Image.fromarray(overlay_cam(explanation.image, stage.cam, alpha)).save(buffer, format="PNG")
        files[f"stage{stage.index + 1}.png"] = buffer.getvalue()
    if explanation.faithfulness is not None and explanation.faithfulness.fractions:
        curves = render_curves(
            explanation.faithfulness.fractions,
            [s.faithfulness.deletion for s in explanation.stages],
            [s.faithfulness.insertion for s in explanation.stages],
            [s.caption for s in explanation.stages],
            explanation.class_names[explanation.target],
        )
        files["curves.png"] = figure_to_png(curves)
    files[EXPLANATION_JSON] = (json.dumps(explanation.to_json(), indent=2, allow_nan=False) + "\n").encode()
    return files


def write_explanation(files: dict[str, bytes], folder: str | Path) -> Path:
    """Write one explanation's files as ``folder``, all or nothing (temporary folder, then rename).

    An existing ``folder`` (an earlier run) is replaced only once the new one is complete.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".partial"))
    try:
        for name, data in files.items():
            (staging / name).write_bytes(data)
        os.chmod(staging, 0o755)  # mkdtemp creates 0700
        if folder.exists():
            old = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".old"))
            os.replace(folder, old / folder.name)
            os.replace(staging, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def _reason(error: BaseException, path: Path) -> str:
    """A one-line reason: the error's first line, without the image path it may start with."""
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return text.removeprefix(f"{path}: ")


def explain_images(
    run_dir: str | Path,
    images: Sequence[str | Path],
    out: str | Path,
    method: str = "gradcam",
    target: str | int | None = None,
    masks: Sequence[str | Path] | None = None,
    top_fraction: float = DEFAULT_TOP_FRACTION,
    alpha: float = 0.5,
    faithfulness: FaithfulnessConfig | bool | None = None,
    sanity: bool = False,
    frame: int = 0,
    label_map: bool = False,
) -> ExplainBatch:
    """Explain images with a run's model: one folder per image (see the module docstring).

    Each image goes through :func:`medvit.explain.pipeline.explain` (read with
    :func:`medvit.data.images.read_image`; a mask with :func:`medvit.data.images.read_mask`, checked
    against the image's size). A missing, empty, truncated or oversized file, or a mask that does not
    fit, fails that image only: its reason is logged and returned, and the next image is processed.

    Args:
        run_dir: A run directory (:func:`medvit.run_dir.load_run`).
        images: Image files.
        out: Output folder (created).
        method: A :data:`~medvit.explain.CAM_METHODS` name.
        target: Class to explain, by name or index; None: each image's predicted class.
        masks: One lesion mask per image (same order), to add localisation scores.
        top_fraction: Share of CAM pixels kept for the IoU.
        alpha: Heat-map weight of the overlays.
        faithfulness: True or a :class:`FaithfulnessConfig`: per-stage ROAD and deletion/insertion
            scores in the JSON and ``curves.png``.
        sanity: Add the per-stage model-randomisation check to the JSON.
        frame: The frame of multi-frame DICOM images, 0-based (nothing of a DICOM header is written).
        label_map: The masks are label maps (every non-zero label is lesion); else a mask must be binary.

    Returns:
        :class:`ExplainBatch` with the JSON records and folders written and the failures.

    Raises:
        FileNotFoundError / ValueError: Problems of the whole batch, before any image: no image, a mask
            count that differs from the image count, a missing or corrupt run, an unknown method or class.
    """
    image_paths = [Path(p) for p in images]
    mask_paths = [Path(p) for p in masks] if masks else None
    if not image_paths:
        raise ValueError("no image given; pass one or more image files")
    if mask_paths is not None and len(mask_paths) != len(image_paths):
        raise ValueError(f"{len(mask_paths)} masks for {len(image_paths)} images; pass one --mask per image, in order")
    stage_cam_class(method)
    run = load_run(run_dir)
    resolve_class(target, run.class_names)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    batch = ExplainBatch()
    for index, (path, stem) in enumerate(zip(image_paths, _unique_stems(image_paths, out))):
        mask_path = mask_paths[index] if mask_paths is not None else None
        try:
            for file in (path, mask_path):
                if file is not None and not file.is_file():
                    raise FileNotFoundError(f"{file}: no such file")
            rgb = read_image(path, frame=frame)
            mask = read_mask(mask_path, shape=rgb.shape[:2], label_map=label_map) if mask_path is not None else None
            explanation = explain(
                run,
                rgb,
                method=method,
                target=target,
                mask=mask,
                top_fraction=top_fraction,
                faithfulness=faithfulness,
                sanity=sanity,
                source=str(path),
                mask_source=str(mask_path) if mask_path is not None else None,
            )
            files = explanation_files(explanation, alpha)
        except (FileNotFoundError, ValueError, OSError) as error:  # ImageReadError is a ValueError
            failure = ExplainFailure(str(path), _reason(error, path))
            _logger.error("skipped %s", failure)
            batch.failures.append(failure)
            continue
        folder = write_explanation(files, out / stem)
        record = explanation.to_json()
        _logger.info("%s: %s p=%.3f -> %s", path, record["target"]["name"], record["target"]["probability"], folder)
        batch.records.append(record)
        batch.folders.append(folder)
    return batch


def _cell(row: pd.Series, name: str) -> str:
    mean, low, high = row[name], row[f"{name}_ci_low"], row[f"{name}_ci_high"]
    return "n/a" if np.isnan(mean) else f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def split_scores_markdown(result: SplitScores) -> str:
    """The per-stage table as Markdown: ``mean [95% CI]`` per score and stage, with a note on settings."""
    table = result.table
    header = ["stage", "stride", "n", *result.scores]
    rows = [
        [f"{row['stage']} ({row['module']})", row["stride"], row["n"], *(_cell(row, name) for name in result.scores)]
        for _, row in table.iterrows()
    ]
    lines = [markdown_table(header, rows).rstrip("\n")]
    first = table.iloc[0]
    note = (
        f"\n{first['method']} CAMs for the {'true' if first['target'] == 'label' else 'predicted'} class; "
        f"mean [95% bootstrap CI] over images ({first['sampled']})"
    )
    if "pointing" in result.scores:
        note += f" with a lesion mask; IoU at the top {first['top_fraction']:.0%} of CAM pixels"
    if "road_combined" in result.scores:
        note += f"; ROAD at percentiles {first['road_percentiles']} (softmax probability)"
    if "spearman" in result.scores:
        note += "; sanity: Spearman/SSIM with the map once the head and later stages are randomised (flagged: Spearman >= 0.5)"
    return "\n".join(lines) + "\n" + note + ".\n"


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
    faithfulness: FaithfulnessConfig | bool | None = None,
    sanity: bool = False,
    sample_seed: int | None = None,
) -> SplitScores:
    """Per-stage scores over a manifest split: ``stage_scores_<split>.csv``, ``.md`` and ``_per_image.csv``.

    Args:
        run_dir: A run directory.
        manifest: Manifest CSV (with lesion masks for localisation scores).
        out: Output folder (created).
        root: Raw folder of the manifest; default the one recorded in its side JSON.
        split: ``train``, ``val`` or ``test``.
        method: A CAM method name.
        top_fraction: Share of CAM pixels kept for the IoU.
        target: ``"label"`` (true class) or ``"predicted"``.
        max_images: Score at most this many images.
        faithfulness: Add ROAD and deletion/insertion scores (True or a :class:`FaithfulnessConfig`).
        sanity: Add the cascading-randomisation check.
        sample_seed: With ``max_images``, draw the images at random with this seed.

    Returns:
        :class:`~medvit.explain.split.SplitScores`.
    """
    manifest = Path(manifest)
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest}: manifest not found; create it with 'medvit prepare'")
    if root is None:
        root = read_manifest_info(manifest).get("raw_dir")
        if not root:
            raise ValueError(f"{manifest}: no raw folder recorded; pass --root")
    run = load_run(run_dir)
    result = score_split(
        run,
        manifest,
        root,
        split=split,
        method=method,
        top_fraction=top_fraction,
        target=target,
        max_images=max_images,
        faithfulness=faithfulness,
        sanity=sanity,
        sample_seed=sample_seed,
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result.table.to_csv(out / f"stage_scores_{split}.csv", index=False)
    result.per_image.to_csv(out / f"stage_scores_{split}_per_image.csv", index=False)
    (out / f"stage_scores_{split}.md").write_text(split_scores_markdown(result))
    _logger.info("wrote %s", out / f"stage_scores_{split}.csv")
    return result
