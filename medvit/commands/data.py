"""``medvit prepare`` (raw folder -> manifest, or ``--check`` a manifest) and ``medvit synth``."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``prepare`` and ``synth`` sub-commands."""
    from medvit.data.datasets import DATASETS

    prepare = subparsers.add_parser(
        "prepare",
        help="validate a raw dataset folder and write a split manifest (or --check one)",
        description="Decode every image of DATASET in RAW, reject unusable files (NAME.rejected.csv), and "
        "write a seeded, class-stratified, group-aware train/val/test manifest NAME.csv with its side "
        "JSON NAME.json (class order, seed, raw content hash, counts). With --check MANIFEST: re-validate "
        "an existing manifest (files exist, labels known, no group in two splits, raw content unchanged).",
        epilog="layouts: "
        + "; ".join(f"{name}: {spec.layout}" for name, spec in DATASETS.items()),
    )
    prepare.add_argument("dataset", nargs="?", choices=list(DATASETS), help="dataset kind")
    prepare.add_argument("raw", nargs="?", type=Path, help="the downloaded dataset folder")
    prepare.add_argument("--out", type=Path, help="manifest CSV to write, e.g. data_manifests/ham10000.csv")
    prepare.add_argument("--seed", type=int, default=0, help="split seed (default: 0)")
    prepare.add_argument("--val", type=float, default=0.15, help="validation fraction (default: 0.15)")
    prepare.add_argument("--test", type=float, default=0.15, help="test fraction (default: 0.15)")
    prepare.add_argument(
        "--duplicates",
        choices=("group", "drop"),
        default="group",
        help="byte-identical images with the same label: keep all in one group, or keep one copy (default: group)",
    )
    prepare.add_argument(
        "--keep-conflicting",
        action="store_true",
        help="keep (and group) byte-identical images with different labels instead of dropping them",
    )
    prepare.add_argument(
        "--workers", type=int, default=None, help="threads for hashing/decoding (default: min(8, CPUs))"
    )
    prepare.add_argument(
        "--positive", nargs="+", metavar="CLASS", default=None,
        help="classes whose 'yes' the report's operating points answer (folder datasets; e.g. --positive malignant)",
    )
    prepare.add_argument("--check", type=Path, metavar="MANIFEST", help="re-validate this manifest instead")
    prepare.add_argument("--root", type=Path, help="with --check: the raw folder (default: the one recorded)")
    prepare.set_defaults(func=_prepare)

    synth = subparsers.add_parser(
        "synth",
        help="write a tiny learnable synthetic dataset in a raw layout",
        description="Write a small synthetic dataset (classes learnable from shapes/colours) in the original "
        "raw layout of DATASET, for smoke runs: then 'medvit prepare DATASET OUT --out ...'.",
    )
    synth.add_argument("--out", type=Path, required=True, help="new or empty folder to write")
    synth.add_argument("--dataset", required=True, choices=("busi", "ham10000", "eyepacs"))
    synth.add_argument("--per-class", type=int, default=12, help="images per class (default: 12)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    synth.set_defaults(func=_synth)


def _prepare(args: argparse.Namespace) -> int:
    if args.check is not None:
        if args.dataset or args.raw or args.out:
            raise ValueError("use either 'prepare --check MANIFEST [--root R]' or 'prepare DATASET RAW --out M'")
        return _check(args)
    if args.dataset is None or args.raw is None or args.out is None:
        raise ValueError("missing arguments: medvit prepare DATASET RAW --out data_manifests/NAME.csv")
    from medvit.data.manifest import prepare_manifest

    result = prepare_manifest(
        args.dataset,
        args.raw,
        args.out,
        seed=args.seed,
        val=args.val,
        test=args.test,
        duplicates=args.duplicates,
        keep_conflicting=args.keep_conflicting,
        num_workers=args.workers,
        positive_classes=args.positive,
    )
    print(result.counts.to_string())
    reasons = ", ".join(f"{reason}: {count}" for reason, count in result.rejected_by_reason.items())
    summary = f"images: {result.num_images}, groups: {result.num_groups}, rejected: {result.num_rejected}"
    print(summary + (f" ({reasons})" if reasons else ""))
    print(f"rejected files and rows with reasons: {result.rejected}")
    for names in result.duplicate_sets:
        print(f"byte-identical: {' = '.join(names)}")
    print(f"wrote {result.manifest} and {result.info}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from medvit.boundary.manifest import check_manifest

    result = check_manifest(args.check, root=args.root, num_workers=args.workers)
    if result.ok:
        print(f"{args.check}: OK ({result.num_images} images, raw content unchanged under {result.root})")
        return 0
    for problem in result.problems:
        print(f"{args.check}: {problem}")
    return 1


def _synth(args: argparse.Namespace) -> int:
    from medvit.data.synthetic import make_synthetic

    out = make_synthetic(args.out, args.dataset, per_class=args.per_class, seed=args.seed)
    print(f"wrote synthetic {args.dataset} to {out}; next: medvit prepare {args.dataset} {out} --out MANIFEST.csv")
    return 0
