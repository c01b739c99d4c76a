"""``medvit train``: fine-tune a backbone into a run directory (one run, or a cross-validated one).

DDP: ``torchrun --nproc_per_node 2 -m medvit.cli train --config X.yaml --out runs/NAME`` (or
``torchrun --nproc_per_node 2 $(which medvit) train ...``); every process runs this same command.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

__all__ = ["register"]


def _train(args: argparse.Namespace) -> int:
    from medvit.run_dir import read_config
    from medvit.train.config import load_config
    from medvit.workflows import is_cv_config, train_cv, train_run

    resume_dir = args.resume if isinstance(args.resume, str) else None
    out = Path(args.out or resume_dir or "")
    if not args.out and not resume_dir:
        raise ValueError("medvit train needs --out RUN_DIR (or --resume RUN_DIR)")
    if args.resume:
        if args.config or args.set or args.folds is not None:
            raise ValueError("--resume continues with the run's own config.yaml; drop --config/--set/--folds")
        cfg = None
        cross_validated = is_cv_config(read_config(out))
    else:
        if not args.config and not args.set:
            raise ValueError("medvit train needs --config X.yaml (see experiments/configs/) and/or --set key=value")
        overrides = list(args.set) + ([f"cv.folds={args.folds}"] if args.folds is not None else [])
        cfg = load_config(args.config, overrides)
        cross_validated = is_cv_config(cfg)
    if cross_validated:
        cv = train_cv(cfg, out, resume=bool(args.resume))
        print(f"{cv.run_dir}: {cv.folds} folds, kept epochs {cv.best_epochs}, final predictor {cv.final} "
              f"({', '.join(cv.members)})")
        return 0
    result = train_run(cfg, out, resume=bool(args.resume))
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"{result.run_dir}: {result.epochs_run} epochs, best epoch {result.best_epoch} ({result.best_metric:.4f})")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train``."""
    p = subparsers.add_parser(
        "train",
        help="fine-tune a backbone and write a run directory",
        description="Fine-tune a backbone on a manifest. Single process, or DDP with "
        "'torchrun --nproc_per_node N -m medvit.cli train ...'.",
    )
    p.add_argument("--config", type=Path, help="YAML config (experiments/configs/*.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (dotted for sections: early_stopping.patience=3); repeatable")
    p.add_argument("--out", type=Path, help="run directory to create (e.g. runs/busi_vvt_tiny)")
    p.add_argument("--folds", type=int, default=None, metavar="K",
                   help="cross-validate: K grouped, stratified folds over train+val (same as --set cv.folds=K)")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN_DIR",
                   help="continue the run in --out (or RUN_DIR) from its last completed epoch")
    p.set_defaults(func=_train)
