"""Run a study's cells as independent jobs: in this process, or through submitit (Slurm, or local processes).

Cells run in two waves: the pretrain cells (one per backbone), then the fine-tuning cells, which need
them. ``local`` runs every cell in this process, one after another. ``slurm`` submits one submitit job
per cell (``AutoExecutor``: a Slurm cluster when there is one) and waits for each wave; ``submitit-local``
is submitit's ``LocalExecutor`` (each cell a local process, in parallel), the stand-in for Slurm on one
machine. With ``nproc > 1`` a fine-tuning cell runs through ``torchrun --nproc_per_node nproc`` (DDP).
Every wave skips finished cells and resumes interrupted ones, so re-running the command continues a study.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from medvit.errors import RunError
from medvit.study.cells import (
    Cell,
    adopt_results,
    cell_state,
    clear_unstarted,
    plan_cells,
    publish_results,
    run_cell,
    score_cams,
    select_cells,
    start_weights,
)
from medvit.study.config import StudyConfig
from medvit.study.report import write_study_report
from medvit.train.config import config_from_dict
from medvit.workflows import train_run

__all__ = ["LAUNCHERS", "StudyRun", "run_study", "launch_training", "slurm_parameters"]

_logger = logging.getLogger(__name__)

LAUNCHERS = ("local", "slurm", "submitit-local")


@dataclass
class StudyRun:
    """What :func:`run_study` did: each cell's state before it ran, and the report folder (or None)."""

    states: dict[str, str] = field(default_factory=dict)
    report: Path | None = None


def _cell_job(cfg: StudyConfig, cell: Cell, study_dir: str, nproc: int) -> str:
    """One cell (a submitit job or an in-process call)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if nproc > 1 and cell.kind == "train" and cell_state(cell, study_dir) in ("new", "empty", "partial"):
        return _torchrun_cell(cfg, cell, Path(study_dir), nproc)
    return run_cell(cfg, cell, study_dir)


def launch_training(path: Path, config: dict[str, Any] | None, nproc: int = 1) -> None:
    """Train ``config`` into the run directory ``path``, or resume it (``config=None``): in this process, or
    with ``nproc > 1`` through ``torchrun --nproc_per_node nproc -m medvit.cli train`` (DDP)."""
    if config is not None and path.exists():
        clear_unstarted(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if nproc <= 1:
        train_run(None if config is None else config_from_dict(config), path, resume=config is None)
        return
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               "-m", "medvit.cli", "train", "--out", str(path)]
    if config is None:
        command.append("--resume")
    else:
        config_file = path.parent / f".{path.name}.config.yaml"
        config_file.write_text(yaml.safe_dump(config, sort_keys=False))
        command += ["--config", str(config_file)]
    subprocess.run(command, check=True)


def _torchrun_cell(cfg: StudyConfig, cell: Cell, study_dir: Path, nproc: int) -> str:
    state = cell_state(cell, study_dir)
    config = None
    if state != "partial":
        config = cfg.cell_train_dict(cell.dataset, cell.backbone, cell.seed, start_weights(cfg, cell, study_dir))
    launch_training(cell.path(study_dir), config, nproc)
    if cell.scores_cams:
        score_cams(cfg, cell, study_dir)
    return state


def slurm_parameters(
    partition: str | None = None,
    timeout_min: int | None = None,
    nproc: int = 1,
    gpus_per_node: int | None = None,
    cpus_per_task: int | None = None,
    mem_gb: int | None = None,
) -> dict[str, Any]:
    """submitit ``AutoExecutor`` parameters of one cell's job: one task, ``gpus_per_node`` GPUs (default
    ``nproc``, the cell's torchrun processes), the partition, a time limit, CPUs and memory.

    Raises:
        ValueError: a count below 1 (named).
    """
    for name, value in (("nproc", nproc), ("gpus_per_node", gpus_per_node), ("cpus_per_task", cpus_per_task),
                        ("mem_gb", mem_gb), ("timeout_min", timeout_min)):
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} {value}: must be at least 1")
    params: dict[str, Any] = {"nodes": 1, "tasks_per_node": 1, "gpus_per_node": gpus_per_node or nproc}
    optional = {"slurm_partition": partition, "timeout_min": timeout_min, "cpus_per_task": cpus_per_task,
                "mem_gb": mem_gb}
    params.update({k: v for k, v in optional.items() if v is not None})
    return params


def _executor(launcher: str, folder: Path, slurm: dict[str, Any]) -> Any:
    try:
        import submitit
    except ImportError as error:  # optional at import time: only the submitit launchers need it
        raise RunError("--launcher slurm/submitit-local needs submitit: pip install submitit") from error
    if launcher == "submitit-local":
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=int(slurm.get("timeout_min", 24 * 60)))
        return executor
    executor = submitit.AutoExecutor(folder=folder)
    executor.update_parameters(**slurm)
    return executor


def run_study(
    cfg: StudyConfig,
    out: str | Path,
    only: Sequence[str] = (),
    launcher: str = "local",
    results: str | Path | None = None,
    nproc: int = 1,
    slurm: dict[str, Any] | None = None,
    report: bool = True,
) -> StudyRun:
    """Run every (selected) cell of ``cfg`` under ``out``, then write ``out/report/``.

    Args:
        cfg: a validated study config.
        out: the study folder (one run directory per cell).
        only: cell names (``busi/acc_vit_tiny``), dataset or backbone names to run (with the pretrain
            cells they need); empty: all.
        launcher: one of :data:`LAUNCHERS`.
        results: a folder of published results (e.g. ``docs/transfer_study/cells``): finished cells found
            there are taken as done, and every cell that finishes is copied there (no weights).
        nproc: DDP processes per fine-tuning cell.
        slurm: submitit parameters for ``slurm`` (``slurm_partition``, ``gpus_per_node``, ``timeout_min``...).
        report: write the study report when every cell has finished.

    Raises:
        ValueError: an unknown launcher or cell name.
    """
    if launcher not in LAUNCHERS:
        raise ValueError(f"--launcher {launcher!r}: choose one of {', '.join(LAUNCHERS)}")
    if nproc < 1:
        raise ValueError(f"--nproc {nproc}: must be at least 1")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    all_cells = plan_cells(cfg)
    cells = select_cells(all_cells, only)
    outcome = StudyRun()
    if results is not None:
        for cell in all_cells:
            if adopt_results(cell, out, results):
                _logger.info("%s: results taken from %s", cell.name, results)
    if launcher == "local":
        _run_local(cfg, cells, out, results, nproc, outcome)
    else:
        _run_waves(cfg, cells, out, results, nproc, outcome, _executor(launcher, out / ".submitit", slurm or {}))
    done = all(cell_state(c, out) == "finished" for c in all_cells if c.kind == "train")
    if report and done:
        outcome.report = write_study_report(cfg, out)
    elif report:
        missing = [c.name for c in all_cells if c.kind == "train" and cell_state(c, out) != "finished"]
        _logger.info("report waits for %d cells: %s", len(missing), ", ".join(missing))
    return outcome


def _pending(cells: Sequence[Cell], out: Path) -> list[Cell]:
    """Cells still to run: unfinished fine-tunes, and the unfinished pretrain cells they need."""
    train = [c for c in cells if c.kind == "train" and cell_state(c, out) != "finished"]
    needed = {c.needs for c in train}
    return [c for c in cells if (c in train) or (c.name in needed and cell_state(c, out) != "finished")]


def _run_local(cfg: StudyConfig, cells: Sequence[Cell], out: Path, results: str | Path | None, nproc: int,
               outcome: StudyRun) -> None:
    """Backbone by backbone (its pretrain, then its fine-tunes), so a sitting finishes whole backbones."""
    pending = _pending(cells, out)
    for cell in cells:
        if cell not in pending:
            outcome.states[cell.name] = "finished"
    for backbone in cfg.backbones:  # the config's order, whatever has finished already
        for cell in [c for c in pending if c.backbone == backbone]:
            outcome.states[cell.name] = _cell_job(cfg, cell, str(out), nproc)
            if results is not None:
                publish_results(cell, out, results)


def _run_waves(cfg: StudyConfig, cells: Sequence[Cell], out: Path, results: str | Path | None, nproc: int,
               outcome: StudyRun, executor: Any) -> None:
    """All pending pretrain cells as parallel jobs, then all pending fine-tunes."""
    pending = _pending(cells, out)
    for cell in cells:
        if cell not in pending:
            outcome.states[cell.name] = "finished"
    for kind in ("pretrain", "train"):
        wave = [c for c in pending if c.kind == kind]
        if not wave:
            continue
        jobs = [(cell, executor.submit(_cell_job, cfg, cell, str(out), nproc)) for cell in wave]
        for cell, job in jobs:
            _logger.info("%s: job %s", cell.name, job.job_id)
        failures = []
        for cell, job in jobs:
            try:
                outcome.states[cell.name] = job.result()
            except Exception as error:  # noqa: BLE001 - report every failed cell, then stop
                lines = str(error).strip().splitlines()
                failures.append(f"{cell.name}: {lines[-1] if lines else type(error).__name__}")
                continue
            if results is not None:
                publish_results(cell, out, results)
        if failures:
            raise RunError(f"study cells failed (logs under {out / '.submitit'}): " + "; ".join(failures))
