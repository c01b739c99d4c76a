"""``medvit demo`` (serve the Streamlit page) and ``medvit demo-export`` (embed a demo model)."""

from __future__ import annotations

import argparse
from pathlib import Path

from medvit.assets import demo_models_dir


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``demo`` and ``demo-export`` sub-commands."""
    parser = subparsers.add_parser(
        "demo",
        help="serve the Streamlit demo (what `make demo` runs)",
        description="Serve the Streamlit demo page offline and headless: embedded demo models plus the "
        "run directories found under --runs. Ctrl-C or SIGTERM stops it and its Streamlit process.",
    )
    parser.add_argument(
        "--port", type=int, default=None, help="HTTP port (default: $STREAMLIT_SERVER_PORT, else 8501)"
    )
    parser.add_argument("--address", default="localhost", help="address to bind (default: localhost)")
    parser.add_argument(
        "--runs", type=Path, default=Path("runs"), help="folder searched for run directories (default: runs/)"
    )
    parser.add_argument(
        "--models", action="store_true", help="print a table of the embedded demo models (from their reports) and exit"
    )
    parser.set_defaults(func=_demo)

    export = subparsers.add_parser(
        "demo-export",
        help="embed the best of one or more run directories as a demo model (int8 weights, measured as stored)",
        description="Pick the run with the highest validation METRIC (val_METRIC of metrics.csv at the epoch "
        "each run kept; never the test split), export it to OUT with per-channel int8 weights (or --storage fp16), "
        "predict validation and test again with the stored weights, calibrate and rewrite the report, and record "
        "every candidate's validation and test scores in OUT/selection.json. Each run needs report/ (medvit report).",
    )
    export.add_argument("runs", nargs="+", type=Path, help="candidate run directories (each with report/)")
    export.add_argument("--out", type=Path, required=True, help="target folder, e.g. medvit/assets/demo_models/busi_lite0")
    export.add_argument(
        "--metric",
        default="macro_f1",
        help="validation metric that picks the best run: macro_f1 (default), balanced_accuracy, macro_auroc, ...",
    )
    export.add_argument(
        "--default", action="store_true", help="make it its dataset's default model on the demo page"
    )
    export.add_argument("--storage", choices=("int8", "fp16", "fp32"), default="int8", help="weight storage (default int8)")
    export.add_argument(
        "--no-remeasure", action="store_true",
        help="copy the run's report as it is instead of measuring the stored weights again (no data needed)",
    )
    export.set_defaults(func=_demo_export)
    defaults = subparsers.add_parser(
        "demo-defaults",
        help="make each dataset's best embedded model on validation the page's default",
        description="Score every embedded model in FOLDER on its validation predictions (stored weights) and mark "
        "the best per dataset as the page's default in its selection.json.",
    )
    defaults.add_argument(
        "folder", type=Path, nargs="?", default=None, help="embedded models (default: medvit/assets/demo_models/)"
    )
    defaults.add_argument("--metric", default="balanced_accuracy", help="validation metric (default balanced_accuracy)")
    defaults.set_defaults(func=_demo_defaults)


def _demo(args: argparse.Namespace) -> int:
    from medvit.demo import demo_models_markdown, serve_demo

    if args.models:
        print(demo_models_markdown(), end="")
        return 0
    return serve_demo(port=args.port, runs_dir=args.runs, address=args.address)


def _demo_export(args: argparse.Namespace) -> int:
    from medvit.demo import export_demo_model

    import torch

    dtype = {"int8": "int8", "fp16": torch.float16, "fp32": torch.float32}[args.storage]
    selection = export_demo_model(
        args.runs, args.out, metric=args.metric, default=args.default, dtype=dtype, remeasure=not args.no_remeasure
    )
    print(f"exported {selection['chosen']} -> {args.out} ({'out-of-fold' if selection['split'] == 'oof' else 'validation'} {args.metric} = {selection['score']:.4f})")
    return 0


def _demo_defaults(args: argparse.Namespace) -> int:
    from medvit.demo.export import mark_defaults

    folder = args.folder if args.folder is not None else demo_models_dir()
    for dataset, name in sorted(mark_defaults(folder, metric=args.metric).items()):
        print(f"{dataset}: {name}")
    return 0
