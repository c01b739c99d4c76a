"""Compare models on one image: every model's prediction and, with a lesion mask, its stages' localisation.

The page's "Compare models" mode shows one row per model (probabilities and the four stage CAMs);
:func:`comparison_table` is the table under the grid, one row per model, so that the same numbers are
available outside the page.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import pandas as pd

from medvit.demo.catalog import RunEntry
from medvit.demo.explanation import Explanation

__all__ = ["MAX_COMPARED", "MIN_COMPARED", "check_comparison", "comparison_table"]

MIN_COMPARED, MAX_COMPARED = 2, 4


def check_comparison(entries: Sequence[RunEntry]) -> None:
    """Raise a ``ValueError`` naming the problem unless ``entries`` are 2-4 runs of one dataset."""
    if not MIN_COMPARED <= len(entries) <= MAX_COMPARED:
        raise ValueError(f"pick {MIN_COMPARED} to {MAX_COMPARED} models to compare (got {len(entries)})")
    datasets = {e.dataset for e in entries}
    if len(datasets) > 1:
        raise ValueError(f"compare models of one dataset; these are of {', '.join(sorted(map(str, datasets)))}")


def comparison_table(explanations: Mapping[str, Explanation], score: str = "energy") -> pd.DataFrame:
    """One row per model: backbone, predicted class and its probability, each class's probability, and with
    a mask each stage's localisation ``score`` (``pointing``, ``energy`` or ``iou``).

    Raises:
        ValueError: the models have different class lists.
    """
    rows = []
    first = None
    for label, explanation in explanations.items():
        names = list(explanation.class_names)
        if first is None:
            first = names
        elif names != first:
            raise ValueError(f"{label}: classes {names} differ from {first}; compare models of one dataset")
        row: dict[str, object] = {
            "model": label,
            "backbone": explanation.model_name,
            "predicted": names[explanation.predicted],
            "p(predicted)": float(explanation.probabilities[explanation.predicted]),
        }
        row.update({f"p({name})": float(p) for name, p in zip(names, explanation.probabilities)})
        for view in explanation.stages:
            if view.localization is not None:
                row[f"stage {view.index + 1} {score}"] = view.localization.get(score)
        rows.append(row)
    return pd.DataFrame(rows)
