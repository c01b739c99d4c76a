"""Run a grid of training configs one after another, resumably, then compare them per dataset.

    python experiments/run_grid.py experiments/configs/busi_*.yaml --out runs/grid \\
        --set root=data/raw/busi [--set epochs=30 ...] [--nproc 2]

Each config trains into ``OUT/<config stem>``. Re-running the same command skips finished runs,
resumes interrupted ones from their last completed epoch and starts the rest. Afterwards every
group of runs on the same dataset is compared into ``OUT/<dataset>_table.{md,csv,tex}``
(``medvit compare``). With ``--nproc N`` each run goes through
``torchrun --nproc_per_node N -m medvit.cli train``; otherwise runs train in this process.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import torch

from medvit.report import compare_runs
from medvit.run_dir import LAST_STATE, MODEL_JSON
from medvit.train import load_config
from medvit.workflows import train_run

_logger = logging.getLogger("medvit.run_grid")

_FRESH_RUN_FILES = {"config.yaml", "model.json", "train.log"}


def run_state(run_dir: Path) -> str:
    """``finished``, ``partial`` (resumable), ``empty`` (no completed epoch) or ``new``."""
    if not run_dir.exists():
        return "new"
    state_path = run_dir / LAST_STATE
    if not state_path.is_file():
        return "empty"
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    finished = state.get("finished") and (run_dir / "predictions.csv").is_file()
    return "finished" if finished else "partial"


def _train_one(config: Path, overrides: Sequence[str], run_dir: Path, resume: bool, nproc: int) -> None:
    if nproc > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
                   "-m", "medvit.cli", "train", "--out", str(run_dir)]
        if resume:
            command.append("--resume")
        else:
            command += ["--config", str(config)] + [arg for item in overrides for arg in ("--set", item)]
        subprocess.run(command, check=True)
    elif resume:
        train_run(None, run_dir, resume=True)
    else:
        train_run(load_config(config, overrides), run_dir)


def run_grid(configs: Sequence[Path], out: Path, overrides: Sequence[str] = (), nproc: int = 1) -> dict[str, Path]:
    """Train every config (skipping finished runs, resuming partial ones) and compare per dataset.

    Returns:
        ``{dataset: markdown table path}``.
    """
    for config in configs:
        load_config(config, overrides)  # fail fast on a bad config before hours of training
    out.mkdir(parents=True, exist_ok=True)
    for config in configs:
        run_dir = out / config.stem
        state = run_state(run_dir)
        if state == "finished":
            _logger.info("%s: finished, skipped", run_dir)
            continue
        if state == "empty":
            leftovers = {p.name for p in run_dir.iterdir()}
            if not leftovers <= _FRESH_RUN_FILES:
                raise RuntimeError(f"{run_dir}: no completed epoch but unexpected files {sorted(leftovers)}; remove it by hand")
            shutil.rmtree(run_dir)  # interrupted before its first checkpoint: nothing to keep
        _logger.info("%s: %s", run_dir, "resuming" if state == "partial" else "training")
        _train_one(config, overrides, run_dir, resume=state == "partial", nproc=nproc)

    by_dataset: dict[str, list[Path]] = defaultdict(list)
    for config in configs:
        run_dir = out / config.stem
        by_dataset[json.loads((run_dir / MODEL_JSON).read_text())["dataset"]].append(run_dir)
    tables = {}
    for dataset, runs in by_dataset.items():
        tables[dataset] = compare_runs(runs, out / f"{dataset}_table.md")["md"]
        _logger.info("%s: %s", dataset, tables[dataset])
    return tables


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
