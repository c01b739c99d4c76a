"""Which pyramid stage's map to trust: per-stage localisation, faithfulness and sanity of the BUSI demo models.

For every embedded BUSI model (``medvit/assets/demo_models/busi_*``, whatever is embedded when this runs) and the
test split of ``data_manifests/busi_pool.csv`` (images with a lesion mask: benign and malignant), one
call of :func:`medvit.explain.split.score_split` (the pipeline of ``medvit explain``) gives per stage:
pointing game and energy inside the mask, ROAD (pytorch-grad-cam, percentiles 20/50/80), deletion and
insertion areas (5 steps) and the cascading-randomisation check (Spearman with the map once the head
and later stages are destroyed; share of images flagged at Spearman >= 0.5), as means with 95%
bootstrap CIs. It writes ``experiments/benchmarks/results/stage_trust.csv`` (all models) and the
Markdown between ``<!-- stage-trust:start -->`` and ``<!-- stage-trust:end -->`` of
``docs/explanations.md`` (the markers are appended when missing).

ROAD dominates the cost (a sparse solve per stage, percentile and direction): about 1 s per image at
64 px and 5 s at 160 px on 2 idle CPU cores, so ``--max-images`` draws a seeded subsample (the table
says which).

Usage::

    .venv/bin/python experiments/stage_trust.py [--max-images 20 --seed 0] [--runs medvit/assets/demo_models/busi_lite0 ...]
    .venv/bin/python experiments/stage_trust.py --from-csv results.csv ...   # re-render saved tables
"""

from __future__ import annotations

import argparse
import logging
import math
import shlex
import sys
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch

from medvit.assets import demo_models_dir
from medvit.explain.faithfulness import FaithfulnessConfig
from medvit.explain.sanity import SANITY_MAX_SPEARMAN
from medvit.explain.split import score_split
from medvit.run_dir import load_run

_logger = logging.getLogger("medvit.experiments.stage_trust")

REPO = Path(__file__).resolve().parents[1]
COLUMNS = {
    "pointing": "pointing game",
    "energy": "energy in mask",
    "road_combined": "ROAD (higher = faithful)",
    "deletion_auc": "deletion area (lower)",
    "insertion_auc": "insertion area (higher)",
    "spearman": "sanity Spearman (lower)",
    "flagged": "flagged share",
}
CONFIG = FaithfulnessConfig(percentiles=(20, 50, 80), curve_steps=5)


def _cell(row: pd.Series, name: str) -> str:
    mean, low, high = row[name], row[f"{name}_ci_low"], row[f"{name}_ci_high"]
    if math.isnan(mean):
        return "n/a"
    signed = "+" if name == "road_combined" else ""
    return f"{mean:{signed}.2f} [{low:{signed}.2f}, {high:{signed}.2f}]"


def model_table(name: str, model_name: str, table: pd.DataFrame) -> str:
    """One model's per-stage table (:attr:`SplitScores.table`) with a generated sentence on its best and
    flagged stages."""
    header = ["stage", "stride", "n", *COLUMNS.values()]
    lines = [f"**{name}** (`{model_name}`)", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in table.iterrows():
        lines.append(
            "| " + " | ".join([str(row["stage"]), str(row["stride"]), str(row["n"])] + [_cell(row, c) for c in COLUMNS]) + " |"
        )
    best = {
        "localises best (energy)": int(table.loc[table["energy"].idxmax(), "stage"]),
        "is most faithful (ROAD)": int(table.loc[table["road_combined"].idxmax(), "stage"]),
        "changes most under randomisation": int(table.loc[table["spearman"].idxmin(), "stage"]),
    }
    flagged = [int(s) for s, share in zip(table["stage"], table["flagged"]) if share >= 0.5]
    sentence = "; ".join(f"stage {stage} {what}" for what, stage in best.items())
    sentence += (
        f"; flagged on at least half of the images: stage {', '.join(map(str, flagged))}." if flagged
        else "; no stage is flagged on half of the images or more."
    )
    return "\n".join(lines) + "\n\n" + sentence[0].upper() + sentence[1:] + "\n"


INTERPRETATION = """How to read it: a stage deserves trust when its map both **points at the lesion** (pointing game,
energy; a uniform map scores the lesion's area share, about 0.1-0.2 on BUSI) and **matters to the model**
(ROAD > 0: imputing the pixels it ranks highest lowers the class probability more than imputing those it
ranks lowest; lower deletion and higher insertion areas say the same with zeroed pixels), and when it
**depends on the model** (a low sanity Spearman: once the head and the later stages are randomised, the map
no longer ranks pixels as before). A map that localises well but keeps its ranking under randomisation
follows the image's structure (edges, the bright lesion border of the ultrasound) rather than the model's
decision; a map that is faithful but misses the mask shows what the model uses, which may be context
(shadowing, the image border) rather than the lesion. Early stages (stride 4, 8) have the finest maps but
the weakest tie to the decision (their gradient passes through every later stage); the last stage is what
the head reads but is coarse at these input sizes (2x2 at 64 px, 5x5 at 160 px), so its pointing game and
energy are blurred. The CIs are over images: with about 30-60 images per model, differences of less than
~0.05 between stages are within noise."""


def write_between_markers(
    doc: Path, text: str, name: str = "stage-trust", heading: str = "Which stage to trust (BUSI demo models)"
) -> None:
    """Replace the text between ``<!-- {name}:start -->`` and ``<!-- {name}:end -->`` of ``doc``.

    When the markers are missing they are appended under ``## {heading}`` (the rest of the page is kept).

    Raises:
        ValueError: Only one marker, or the two out of order.
    """
    start_marker, end_marker = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    content = doc.read_text() if doc.is_file() else "# Explanations\n"
    start, end = content.find(start_marker), content.find(end_marker)
    if start < 0 and end < 0:
        content = content.rstrip() + f"\n\n## {heading}\n\n{start_marker}\n{end_marker}\n"
        start, end = content.find(start_marker), content.find(end_marker)
    if start < 0 or end < start:
        raise ValueError(f"{doc}: needs the markers {start_marker} ... {end_marker} (in that order) around the table")
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(content[: start + len(start_marker)] + "\n" + text.strip() + "\n" + content[end:])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", type=Path, help="run directories (default: medvit/assets/demo_models/busi_*)")
    parser.add_argument("--manifest", type=Path, default=REPO / "data_manifests" / "busi_pool.csv")
    parser.add_argument("--root", type=Path, default=REPO.parent / "shared" / "datasets" / "pools" / "busi_256")
    parser.add_argument("--split", default="test")
    parser.add_argument("--max-images", type=int, default=20, help="images per model (default 20; 0: all with a mask)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the subsample, the bootstrap and the randomisation")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--doc", type=Path, default=REPO / "docs" / "explanations.md")
    parser.add_argument("--csv", type=Path, default=REPO / "experiments" / "benchmarks" / "results" / "stage_trust.csv")
    parser.add_argument(
        "--from-csv", nargs="+", type=Path, help="re-render the section from saved tables (this script's --csv files)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    runs = args.runs or sorted(demo_models_dir().glob("busi_*"))
    if not runs:
        print("stage_trust: no BUSI run directory found (medvit/assets/demo_models/busi_*); pass --runs", file=sys.stderr)
        return 1
    max_images = args.max_images or None
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    if args.from_csv:
        frames = [group for frame in map(pd.read_csv, args.from_csv) for _, group in frame.groupby("run", sort=False)]
        frames.sort(key=lambda frame: frame["run"].iloc[0])
        pd.concat(frames).to_csv(args.csv, index=False)
    else:
        frames = []
        for path in runs:
            run = load_run(path)
            _logger.info("%s (%s): scoring the %s split", path.name, run.model_name, args.split)
            result = score_split(
                run, args.manifest, args.root, split=args.split, max_images=max_images, seed=args.seed,
                faithfulness=CONFIG, sanity=True, sample_seed=args.seed if max_images else None,
            )
            frames.append(result.table.assign(run=path.name, model=run.model_name))
            pd.concat(frames).to_csv(args.csv, index=False)  # rewritten after each model
    sections = [model_table(f["run"].iloc[0], f["model"].iloc[0], f.reset_index(drop=True)) for f in frames]
    sampled = frames[0]["sampled"].iloc[0]
    command = "python experiments/stage_trust.py" + (f" --max-images {args.max_images} --seed {args.seed}" if max_images else " --max-images 0")
    if args.runs:
        command += " --runs " + " ".join(shlex.quote(str(p)) for p in args.runs)
    header = (
        f"Regenerate with `{command}` (writes this section and `experiments/benchmarks/results/stage_trust.csv`). "
        f"BUSI `{args.split}` split of `data_manifests/busi_pool.csv`, images with a lesion mask ({sampled}); "
        "Grad-CAM of the true class; mean [95% bootstrap CI] over images. ROAD: pytorch-grad-cam's ROADCombined "
        "at percentiles 20/50/80 on the softmax probability, in [-0.5, 0.5]; deletion/insertion: areas under the "
        "probability curve with 0-5/5 of the pixels zeroed/kept, most relevant first; sanity: Spearman between the "
        "trained map and the map once the head and every later stage are randomised (each parameter tensor "
        f"permuted, seeded), flagged at >= {SANITY_MAX_SPEARMAN}."
    )
    write_between_markers(args.doc, "\n\n".join([header, *sections, INTERPRETATION]))
    print("\n\n".join(sections))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
