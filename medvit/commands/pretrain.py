"""``medvit pretrain``: stage-wise distillation from an ImageNet (or fine-tuned) teacher into a zoo backbone."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["register"]


def _pretrain(args: argparse.Namespace) -> int:
    from medvit.pretrain import load_pretrain_config, pretrain

    if args.resume:
        if args.config or args.set:
            raise ValueError("--resume continues with the run's own config.yaml; drop --config/--set")
        cfg = None
    elif not args.config and not args.set:
        raise ValueError("medvit pretrain needs --config X.yaml (see experiments/configs/pretrain_*.yaml)")
    else:
        cfg = load_pretrain_config(args.config, args.set)
    result = pretrain(cfg, args.out, resume=args.resume)
    last = result.history[-1] if result.history else {}
    loss = f", loss {last['loss']:.4f}" if last else ""
    print(f"{result.backbone}: {result.epochs_run} epochs{loss}; fine-tune with --set pretrained={result.run_dir}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``pretrain``."""
    p = subparsers.add_parser(
        "pretrain",
        help="distil an ImageNet EfficientNet-Lite (or a fine-tuned run) into a backbone on unlabeled train images",
        description="Stage-wise feature distillation (plus KL on the teacher's logits) from a bundled ImageNet "
        "EfficientNet-Lite teacher, or from a `medvit train` run directory (teacher: RUN), into any zoo backbone, "
        "on the train splits of the given manifests. "
        "Writes RUN/backbone.safetensors; fine-tune with 'medvit train --set pretrained=RUN'.",
    )
    p.add_argument("--config", type=Path, help="YAML config (experiments/configs/pretrain_*.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (data.N.root=DIR for a data root); repeatable")
    p.add_argument("--out", type=Path, required=True, help="run directory to create (e.g. runs/pretrain_vvt_tiny)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last completed epoch")
    p.set_defaults(func=_pretrain)
