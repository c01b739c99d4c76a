"""``medvit explain``: stage CAMs of a run for images, or localisation scores over a manifest split."""

from __future__ import annotations

import argparse
from pathlib import Path

from medvit.explain.options import CAM_METHOD_NAMES, DEFAULT_TOP_FRACTION


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``medvit explain`` to the CLI."""
    parser = subparsers.add_parser(
        "explain",
        help="Grad-CAM (and friends) at all four pyramid stages, overlays and localisation scores",
        description=(
            "Per image: a 1x5 grid PNG (image + 4 stages), four overlay PNGs and a JSON (probabilities, "
            "target class, per-stage statistics, and localisation scores with --mask). With --manifest "
            "and --scores: per-stage pointing game, energy inside the mask and top-k IoU over a split "
            "(CSV + Markdown). One forward and one backward pass serve all four stages."
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
        "--top-fraction",
        type=float,
        default=DEFAULT_TOP_FRACTION,
        help=f"share of CAM pixels kept for the IoU (default {DEFAULT_TOP_FRACTION})",
    )
    parser.add_argument("--manifest", type=Path, help="with --scores: manifest CSV with lesion masks")
    parser.add_argument("--root", type=Path, help="with --scores: raw folder (default: the one recorded)")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"), help="with --scores (default test)")
    parser.add_argument("--scores", action="store_true", help="write the per-stage localisation table of a split")
    parser.add_argument(
        "--score-target",
        default="label",
        choices=("label", "predicted"),
        help="with --scores: explain the true class (default) or the predicted one",
    )
    parser.add_argument("--max-images", type=int, help="with --scores: at most this many masked images")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if args.scores or args.manifest is not None:
        if not (args.scores and args.manifest is not None) or args.images:
            raise ValueError("use 'explain RUN --manifest M --scores --out DIR' (no images) or 'explain RUN IMAGE... --out DIR'")
        from medvit.explain.export import write_split_scores

        table = write_split_scores(
            args.run,
            args.manifest,
            args.out,
            root=args.root,
            split=args.split,
            method=args.method,
            top_fraction=args.top_fraction,
            target=args.score_target,
            max_images=args.max_images,
        )
        print(table[["stage", "stride", "n", "pointing", "energy", "iou"]].to_string(index=False))
        return 0
    if not args.images:
        raise ValueError("no image given; use 'explain RUN IMAGE... --out DIR' or '--manifest M --scores'")
    from medvit.explain.export import explain_images

    records = explain_images(
        args.run,
        args.images,
        args.out,
        method=args.method,
        target=args.target,
        masks=args.mask,
        top_fraction=args.top_fraction,
    )
    for record in records:
        print(f"{record['image']}: {record['target']['name']} p={record['target']['probability']:.3f}")
    print(f"wrote {len(records)} explanation(s) to {args.out}")
    return 0
