"""Per-stage scores over a manifest split: localisation, faithfulness and the sanity check, with CIs.

Every image goes through the data layer's eval pipeline (image bilinear, mask nearest-exact, as in
training) and then :func:`medvit.explain.pipeline.explain_tensor`, the pipeline of ``medvit explain``.
The sanity check runs once for the whole split (:func:`~medvit.explain.sanity.cascading_randomization`
builds the randomised models once). The table gives, per stage and score, the mean over images with a
percentile-bootstrap 95% CI (:func:`medvit.explain.localization.summarize_scores`' interval).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from medvit.data.loaders import create_dataset
from medvit.explain.faithfulness import FAITHFULNESS_NAMES, FaithfulnessConfig
from medvit.explain.localization import SCORE_NAMES, _mean_ci
from medvit.explain.options import DEFAULT_TOP_FRACTION
from medvit.explain.pipeline import explain_tensor
from medvit.explain.sanity import SANITY_NAMES, cascading_randomization

if TYPE_CHECKING:
    from medvit.run_dir import Run

__all__ = ["SplitScores", "score_split", "summarize_stage_values"]

_logger = logging.getLogger(__name__)


@dataclass
class SplitScores:
    """Result of :func:`score_split`.

    Attributes:
        table: One row per stage: ``stage``, ``module``, ``stride``, ``n`` and per score ``<score>``,
            ``<score>_ci_low``, ``<score>_ci_high``, ``n_<score>`` (finite values); plus the settings.
        per_image: One row per image and stage with every score.
        scores: The score columns present, in table order.
    """

    table: pd.DataFrame
    per_image: pd.DataFrame
    scores: list[str]


def summarize_stage_values(
    per_image: pd.DataFrame, scores: list[str], confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0
) -> pd.DataFrame:
    """Per stage, the mean of each score over images with its bootstrap CI (NaN values are left out).

    Args:
        per_image: Rows with ``stage``, ``module``, ``stride`` and the score columns.
        scores: Score columns to summarise.
        confidence: Level of the percentile-bootstrap interval of the mean.
        n_resamples: Bootstrap resamples.
        seed: Seed of the bootstrap.
    """
    rows = []
    for (stage, module, stride), group in per_image.groupby(["stage", "module", "stride"], sort=True):
        row: dict[str, object] = {"stage": int(stage), "module": module, "stride": int(stride), "n": len(group)}
        for name in scores:
            values = group[name].to_numpy(dtype=np.float64)
            mean, std, low, high = _mean_ci(values, confidence, n_resamples, seed)
            row.update({name: mean, f"{name}_std": std, f"{name}_ci_low": low, f"{name}_ci_high": high})
            row[f"n_{name}"] = int(np.isfinite(values).sum())
        rows.append(row)
    return pd.DataFrame(rows)


def score_split(
    run: Run,
    manifest: str | Path,
    root: str | Path,
    split: str = "test",
    method: str = "gradcam",
    top_fraction: float = DEFAULT_TOP_FRACTION,
    target: Literal["label", "predicted"] = "label",
    max_images: int | None = None,
    seed: int = 0,
    faithfulness: FaithfulnessConfig | bool | None = None,
    sanity: bool = False,
    sample_seed: int | None = None,
) -> SplitScores:
    """Scores of each stage's map over the images of a split.

    With a ``mask`` column, only images with a non-empty lesion mask are scored (BUSI's ``normal``
    images have none); without one, every image is scored and there are no localisation scores.

    Args:
        run: A loaded run (:func:`medvit.run_dir.load_run`).
        manifest: Manifest CSV.
        root: Raw folder the manifest paths are relative to.
        split: ``train``, ``val`` or ``test``.
        method: A :data:`~medvit.explain.CAM_METHODS` name.
        top_fraction: Share of CAM pixels kept for the IoU.
        target: Explain the true class (``"label"``) or the predicted one (``"predicted"``).
        max_images: Score at most this many images (None: all).
        seed: Seed of the bootstrap intervals and of the sanity check's permutations.
        faithfulness: True or a :class:`~medvit.explain.faithfulness.FaithfulnessConfig` to add ROAD and
            deletion/insertion scores.
        sanity: Add the cascading-randomisation check.
        sample_seed: With ``max_images``, draw that many images at random with this seed (None: the
            first ones in manifest order).

    Raises:
        ValueError: No image to score, no mask column and nothing else asked, or a bad argument.
    """
    if target not in ("label", "predicted"):
        raise ValueError(f"target={target!r}; choose 'label' or 'predicted'")
    dataset = create_dataset(
        manifest, root, split, run.image_size, run.mean, run.std, run.preset or "generic", train=False
    )
    has_masks = bool(len(dataset)) and "mask" in dataset.data[0]
    if not has_masks and not (faithfulness or sanity):
        raise ValueError("the manifest has no 'mask' column; localisation scores need lesion masks (e.g. BUSI)")
    order = np.arange(len(dataset))
    if sample_seed is not None:
        order = np.random.default_rng(sample_seed).permutation(len(dataset))
    explanations, tensors, labels, paths = [], [], [], []
    skipped = 0
    for index in order:
        if max_images is not None and len(explanations) >= max_images:
            break
        item = dataset[int(index)]
        mask = item["mask"][0].numpy() > 0.5 if has_masks else None
        if mask is not None and not mask.any():
            skipped += 1
            continue
        label = int(item["label"])
        explanation = explain_tensor(
            run,
            item["image"],
            mask,
            method=method,
            target=label if target == "label" else None,
            top_fraction=top_fraction,
            faithfulness=faithfulness,
            source=str(item["path"]),
        )
        explanations.append(explanation)
        tensors.append(item["image"])
        labels.append(label)
        paths.append(str(item["path"]))
    if not explanations:
        raise ValueError(f"no image of split {split!r} in {manifest} to score (none with a non-empty lesion mask)")
    _logger.info("scored %d %s images (%d without a lesion skipped)", len(explanations), split, skipped)
    checks = None
    if sanity:
        checks = cascading_randomization(run.model, tensors, [e.stage_cams for e in explanations], method, seed=seed)
    scores = (list(SCORE_NAMES) if has_masks else []) + (list(FAITHFULNESS_NAMES) if faithfulness else [])
    scores += list(SANITY_NAMES) + ["flagged"] if sanity else []
    rows = []
    for k, (explanation, label, path) in enumerate(zip(explanations, labels, paths)):
        for stage in explanation.stages:
            row: dict[str, object] = {
                "image": path,
                "label": run.class_names[label],
                "predicted": run.class_names[explanation.predicted],
                "target": run.class_names[explanation.target],
                "stage": stage.index + 1,
                "module": stage.name,
                "stride": stage.stride,
            }
            if has_masks:
                row.update({name: getattr(stage.localization, name) for name in SCORE_NAMES})
            if stage.faithfulness is not None:
                row.update({name: getattr(stage.faithfulness, name) for name in FAITHFULNESS_NAMES})
            if checks is not None:
                check = checks[k][stage.index]
                row.update({name: getattr(check, name) for name in SANITY_NAMES})
                row["flagged"] = float(check.is_flagged)
            rows.append(row)
    per_image = pd.DataFrame(rows)
    table = summarize_stage_values(per_image, scores, seed=seed)
    table.insert(1, "method", method)
    table["target"] = target
    table["top_fraction"] = top_fraction
    table["sampled"] = "all" if max_images is None else (f"first {max_images}" if sample_seed is None else f"{max_images} drawn with seed {sample_seed}")
    if faithfulness:
        config = FaithfulnessConfig() if faithfulness is True else faithfulness
        table["road_percentiles"] = " ".join(f"{p:g}" for p in config.percentiles)
    return SplitScores(table=table, per_image=per_image, scores=scores)
