"""``medvit evaluate | report | compare | export``: what is done with a trained run."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["register"]


def _evaluate(args: argparse.Namespace) -> int:
    if args.out is None:
        from medvit.clinical.external import default_evaluation

        args.manifest, args.root, args.out = default_evaluation(args.run, args.manifest, args.root, args.split, args.report)
    if args.out is not None and args.out.suffix.lower() != ".csv":
        return _evaluate_into_folder(args)
    if args.report:
        raise ValueError("--report needs --out DIR (a folder for the predictions and their report)")
    from medvit.train.engine import evaluate_run

    path = evaluate_run(
        args.run, manifest=args.manifest, root=args.root, split=args.split, batch_size=args.batch_size,
        device=args.device, out=args.out,
    )
    print(path)
    return 0


def _evaluate_into_folder(args: argparse.Namespace) -> int:
    from medvit.clinical.external import evaluate_external

    if args.manifest is None or args.root is None:
        raise ValueError("--out DIR evaluates other data: pass --manifest OTHER.csv and --root RAW_DIR")
    out = evaluate_external(args.run, args.manifest, args.root, args.out, split=args.split,
                            batch_size=args.batch_size, device=args.device)
    from medvit.run_dir import PREDICTIONS_CSV, ReportFiles

    print(out / PREDICTIONS_CSV)
    if args.report:
        from medvit.report import write_report

        print(write_report(out, n_bootstrap=args.bootstrap) / ReportFiles.index_md)
    return 0


def _report(args: argparse.Namespace) -> int:
    from medvit.report import write_report

    out = write_report(args.run, split=args.split, n_bootstrap=args.bootstrap, seed=args.seed)
    print((out / "per_class.md").read_text())
    return 0


def _compare(args: argparse.Namespace) -> int:
    from medvit.report import compare_runs

    paths = compare_runs(args.runs, args.out, split=args.split, n_bootstrap=args.bootstrap)
    print(paths["md"].read_text())
    return 0


def _export(args: argparse.Namespace) -> int:
    import torch

    from medvit.run_dir import export_run

    dtype = torch.float16 if args.fp16 else torch.float32
    print(export_run(args.run, args.out, dtype=dtype))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``evaluate``, ``report``, ``compare`` and ``export``."""
    p = subparsers.add_parser("evaluate", help="predict a split with a run's best model (predictions.csv)")
    p.add_argument("run", type=Path, help="run directory")
    p.add_argument("--manifest", type=Path, help="manifest CSV (default: the run's)")
    p.add_argument("--root", type=Path, help="raw data folder (default: the run's)")
    p.add_argument("--split", default="test", choices=("train", "val", "test", "all"),
                   help="split of the manifest (all: every row, for external data)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--out", type=Path, default=None,
                   help="CSV to write, or a folder DIR: DIR/predictions.csv + DIR/model.json, reported by 'medvit report "
                   "DIR'. Default: the run's own RUN/predictions.csv (RUN/predictions_SPLIT.csv for train/val) while "
                   "it does not exist; otherwise, and for other data, a new folder RUN/evaluations/MANIFEST_SPLIT/ "
                   "(a run's own predictions are never overwritten)")
    p.add_argument("--report", action="store_true", help="with --out DIR: also write DIR/report/")
    p.add_argument("--bootstrap", type=int, default=1000, help="with --report: bootstrap resamples")
    p.set_defaults(func=_evaluate)

    p = subparsers.add_parser("report", help="per-class metrics with bootstrap CIs and plots into RUN/report/")
    p.add_argument("run", type=Path, help="run directory")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.set_defaults(func=_report)

    p = subparsers.add_parser("compare", help="paper-style table of several runs (Markdown, CSV, LaTeX)")
    p.add_argument("runs", nargs="+", type=Path, help="run directories on the same dataset")
    p.add_argument("--out", type=Path, required=True, help="table path; .md/.csv/.tex written with its stem")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--bootstrap", type=int, default=1000)
    p.set_defaults(func=_compare)

    p = subparsers.add_parser("export", help="copy a run for shipping, best weights in fp16")
    p.add_argument("run", type=Path, help="run directory")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--fp16", action=argparse.BooleanOptionalAction, default=True,
                   help="cast weights to float16 (default; --no-fp16 keeps float32)")
    p.set_defaults(func=_export)
