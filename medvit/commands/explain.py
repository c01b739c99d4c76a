"""``medvit explain``: stage CAMs of a run for images, or per-stage scores over a manifest split."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medvit.explain.options import (
    CAM_METHOD_NAMES,
    DEFAULT_CURVE_STEPS,
    DEFAULT_ROAD_PERCENTILES,
    DEFAULT_TOP_FRACTION,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``medvit explain`` to the CLI."""
    parser = subparsers.add_parser(
        "explain",
        help="Grad-CAM (and friends) at all four pyramid stages, overlays, localisation, faithfulness, sanity",
        description=(
            "Per image a folder OUT/<stem>/ with explanation.json (probabilities, target class, per-stage "
            "statistics; localisation scores with --mask, ROAD and deletion/insertion with --faithfulness, "
            "the model-randomisation check with --sanity), grid.png, stage1..4.png and, with --faithfulness, "
            "curves.png; each folder is written all or nothing. A bad image (missing, empty, truncated, too "
            "large, mask of another size) is reported and skipped; the exit code is 1 if any image failed. "
            "With --manifest and --scores: per-stage means with bootstrap CIs over a split (CSV + Markdown)."
        ),
    )
    parser.add_argument("run", type=Path, help="run directory (medvit train --out)")
    parser.add_argument("images", nargs="*", type=Path, help="image files to explain")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--method", default="gradcam", choices=list(CAM_METHOD_NAMES), help="CAM method (default gradcam)"
    )
    parser.add_argument("--target", help="class to explain, by name or index (default: the predicted class)")
    parser.add_argument("--mask", nargs="+", type=Path, help="lesion mask per image, in the order of the images")
    parser.add_argument(
        "--label-map", action="store_true", help="the masks are label maps (any non-zero label is lesion); else binary"
    )
    parser.add_argument(
        "--frame", type=int, default=1, help="frame of multi-frame DICOM images, from 1 (default 1)"
    )
    parser.add_argument(
        "--top-fraction",
        type=float,
        default=DEFAULT_TOP_FRACTION,
        help=f"share of CAM pixels kept for the IoU (default {DEFAULT_TOP_FRACTION})",
    )
    trust = parser.add_argument_group("faithfulness and sanity (extra model passes)")
    trust.add_argument(
        "--faithfulness", action="store_true", help="per-stage ROAD and deletion/insertion scores (+ curves.png)"
    )
    trust.add_argument(
        "--road-percentiles",
        nargs="*",
        type=float,
        default=list(DEFAULT_ROAD_PERCENTILES),
        metavar="P",
        help=f"ROAD percentiles (default {' '.join(map(str, DEFAULT_ROAD_PERCENTILES))}; none: skip ROAD)",
    )
    trust.add_argument(
        "--curve-steps",
        type=int,
        default=DEFAULT_CURVE_STEPS,
        help=f"deletion/insertion curve points beyond 0 (default {DEFAULT_CURVE_STEPS}; 0: none)",
    )
    trust.add_argument("--sanity", action="store_true", help="cascading model randomisation per stage (Spearman, SSIM)")
    split = parser.add_argument_group("split tables (--manifest M --scores)")
    split.add_argument("--manifest", type=Path, help="manifest CSV (with lesion masks for localisation)")
    split.add_argument("--root", type=Path, help="raw folder (default: the one recorded)")
    split.add_argument("--split", default="test", choices=("train", "val", "test"), help="default test")
    split.add_argument("--scores", action="store_true", help="write the per-stage table of a split")
    split.add_argument(
        "--score-target",
        default="label",
        choices=("label", "predicted"),
        help="explain the true class (default) or the predicted one",
    )
    split.add_argument("--max-images", type=int, help="at most this many images")
    split.add_argument("--sample-seed", type=int, help="with --max-images: draw the images at random with this seed")
    parser.set_defaults(func=_run)


def _faithfulness(args: argparse.Namespace):
    if not args.faithfulness:
        return None
    from medvit.explain.faithfulness import FaithfulnessConfig

    return FaithfulnessConfig(percentiles=tuple(args.road_percentiles or ()), curve_steps=args.curve_steps)


def _run(args: argparse.Namespace) -> int:
    if args.scores or args.manifest is not None:
        if not (args.scores and args.manifest is not None) or args.images:
            raise ValueError("use 'explain RUN --manifest M --scores --out DIR' (no images) or 'explain RUN IMAGE... --out DIR'")
        from medvit.explain.files import split_scores_markdown, write_split_scores

        result = write_split_scores(
            args.run,
            args.manifest,
            args.out,
            root=args.root,
            split=args.split,
            method=args.method,
            top_fraction=args.top_fraction,
            target=args.score_target,
            max_images=args.max_images,
            faithfulness=_faithfulness(args),
            sanity=args.sanity,
            sample_seed=args.sample_seed,
        )
        print(split_scores_markdown(result))
        return 0
    if not args.images:
        raise ValueError("no image given; use 'explain RUN IMAGE... --out DIR' or '--manifest M --scores'")
    from medvit.explain.files import explain_images

    batch = explain_images(
        args.run,
        args.images,
        args.out,
        method=args.method,
        target=args.target,
        masks=args.mask,
        top_fraction=args.top_fraction,
        faithfulness=_faithfulness(args),
        sanity=args.sanity,
        frame=args.frame - 1,
        label_map=args.label_map,
    )
    for record, folder in zip(batch.records, batch.folders):
        print(f"{record['image']}: {record['target']['name']} p={record['target']['probability']:.3f} -> {folder}")
    for failure in batch.failures:
        print(f"medvit explain: skipped {failure}", file=sys.stderr)
    total = len(batch.records) + len(batch.failures)
    print(f"wrote {len(batch.records)} of {total} explanation(s) to {args.out}")
    if batch.failures:
        names = ", ".join(Path(f.image).name for f in batch.failures)
        print(f"medvit explain: {len(batch.failures)} of {total} image(s) failed: {names}", file=sys.stderr)
        return 1
    return 0
