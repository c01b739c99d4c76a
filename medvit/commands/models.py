"""``medvit models``: the curated backbones with their size, cost and pretrained-weight support."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from medvit.models.registry import ModelSummary

_PRETRAINED_HELP = {
    "bundled": "bundled ImageNet (pretrained=True) or file",
    "file": "file (pretrained=PATH)",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``medvit models`` to the CLI."""
    parser = subparsers.add_parser(
        "models",
        help="list the backbones (name, family, params, GFLOPs@224, pretrained weights)",
        description=(
            "List the curated backbones. Parameters are counted for 1000 classes on the meta device "
            "(no memory, no compute). GFLOPs (multiply-adds at 224x224, as papers report them, counted "
            "with torch.utils.flop_counter) take about a second per model on 2 CPU cores, so they are "
            "opt-in with --flops."
        ),
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--flops", action="store_true", help="also count GFLOPs at 224x224 (slower)")
    parser.add_argument("names", nargs="*", help="only these curated names (default: all)")
    parser.set_defaults(func=_run)


def _format_table(rows: list[ModelSummary], with_flops: bool) -> str:
    header = ("name", "family", "params (M)", "GFLOPs@224", "pretrained weights")
    body = [
        (
            row.name,
            row.family,
            f"{row.params_m:.2f}",
            f"{row.gflops_224:.2f}" if row.gflops_224 is not None else "-",
            _PRETRAINED_HELP[row.pretrained],
        )
        for row in rows
    ]
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *body)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in (header, *body)]
    if not with_flops:
        lines.append("(GFLOPs: run `medvit models --flops`)")
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    from medvit.models.registry import summarize_models

    rows = summarize_models(args.names or None, with_flops=args.flops)
    if args.json:
        print(json.dumps([asdict(row) for row in rows], indent=2))
    else:
        print(_format_table(rows, args.flops))
    return 0
