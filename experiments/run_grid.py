"""Run a grid of training configs one after another, resumably, then compare them per dataset.

    python experiments/run_grid.py experiments/configs/busi_*.yaml --out runs/grid \\
        --set root=data/raw/busi [--set epochs=30 ...] [--nproc 2]

A thin caller of the study's machinery (``medvit study`` is the experiment of the papers: datasets x
backbones under one protocol); this script is for an ad-hoc list of configs. Each config trains into
``OUT/<config stem>``; re-running skips finished runs and resumes interrupted ones
(:func:`medvit.study.cells.run_state`, :func:`medvit.study.launch.launch_training`, which goes through
``torchrun`` with ``--nproc N``); afterwards each dataset's runs are compared into
``OUT/<dataset>_table.{md,csv,tex}`` (``medvit compare``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from medvit.report import compare_runs
from medvit.run_dir import MODEL_JSON
from medvit.study.cells import run_state
from medvit.study.launch import launch_training
from medvit.train import load_config
from medvit.train.config import config_to_dict

_logger = logging.getLogger("medvit.run_grid")

__all__ = ["run_grid", "run_state"]


def run_grid(configs: Sequence[Path], out: Path, overrides: Sequence[str] = (), nproc: int = 1) -> dict[str, Path]:
    """Train every config (skipping finished runs, resuming partial ones) and compare per dataset.

    Returns:
        ``{dataset: markdown table path}``.
    """
    validated = {config: load_config(config, overrides) for config in configs}  # fail fast, before hours of training
    out.mkdir(parents=True, exist_ok=True)
    for config, cfg in validated.items():
        run_dir = out / config.stem
        state = run_state(run_dir)
        _logger.info("%s: %s", run_dir, {"finished": "finished, skipped", "partial": "resuming"}.get(state, "training"))
        if state != "finished":
            launch_training(run_dir, None if state == "partial" else config_to_dict(cfg), nproc)
    by_dataset: dict[str, list[Path]] = defaultdict(list)
    for config in configs:
        run_dir = out / config.stem
        by_dataset[json.loads((run_dir / MODEL_JSON).read_text())["dataset"]].append(run_dir)
    return {dataset: compare_runs(runs, out / f"{dataset}_table.md")["md"] for dataset, runs in by_dataset.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="+", type=Path, help="YAML configs (experiments/configs/*.yaml)")
    parser.add_argument("--out", type=Path, required=True, help="grid folder: one run directory per config")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every config")
    parser.add_argument("--nproc", type=int, default=1, help="DDP processes per run (torchrun)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for dataset, table in run_grid(args.configs, args.out, args.set, args.nproc).items():
        print(f"## {dataset}\n\n{table.read_text()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
