"""``medvit calibrate RUN``: fit temperature, conformal sets and operating points on a run's validation split."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["register"]


def _calibrate(args: argparse.Namespace) -> int:
    from medvit.clinical.calibrate import calibrate_run

    temperature = calibrate_run(
        args.run, alpha=args.alpha, method=args.method, sensitivities=tuple(args.sensitivity), device=args.device
    )
    print(f"{args.run}: temperature {temperature:.4f} stored in model.json; run 'medvit report {args.run}' next")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``calibrate``."""
    p = subparsers.add_parser(
        "calibrate",
        help="fit temperature scaling, conformal prediction sets and operating points on validation (model.json)",
        description="Fit on the run's validation predictions (predictions_val.csv; predicted first when missing): "
        "a temperature for the probabilities, a split-conformal threshold for prediction sets and, per clinical "
        "question, thresholds for target sensitivities and Youden's J. Stored in RUN/model.json; the run's "
        "prediction files are rewritten with scaled probabilities and a prediction_set column.",
    )
    p.add_argument("run", type=Path, help="run directory")
    p.add_argument("--alpha", type=float, default=0.1, help="conformal miscoverage (default 0.1: 90%% coverage)")
    p.add_argument("--method", default="lac", choices=("lac", "aps"), help="conformal score (default lac)")
    p.add_argument("--sensitivity", type=float, nargs="+", default=[0.90, 0.95], metavar="S",
                   help="target sensitivities of the operating points (default 0.90 0.95)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="where to predict the validation split when predictions_val.csv is missing")
    p.set_defaults(func=_calibrate)
