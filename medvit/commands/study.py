"""``medvit study``: the transfer study (datasets × backbones under one protocol), resumable, then its report."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["register"]


def _study(args: argparse.Namespace) -> int:
    from medvit.study import load_study_config, run_study, write_study_report
    from medvit.study.launch import slurm_parameters
    from medvit.study.report import write_results_page

    cfg = load_study_config(args.config, args.set)
    if args.report_only:
        report = write_study_report(cfg, args.out, out=args.report_dir)
        print(report)
        if args.page:
            print(write_results_page(args.page, report))
        return 0
    slurm = slurm_parameters(args.partition, args.timeout_min, args.nproc, args.gpus_per_node, args.cpus_per_task,
                             args.mem_gb)
    outcome = run_study(cfg, args.out, only=args.only, launcher=args.launcher, results=args.results,
                        nproc=args.nproc, slurm=slurm, report=not args.no_report)
    for cell, state in outcome.states.items():
        print(f"{cell}: {'already finished' if state == 'finished' else 'done (was ' + state + ')'}")
    if outcome.report is not None:
        print(f"report: {outcome.report}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``study``."""
    p = subparsers.add_parser(
        "study",
        help="run the transfer study (every dataset × backbone cell, resumable) and write its report",
        description="Fine-tune every backbone of a study config on every dataset under one protocol "
        "(distilled / imagenet / scratch start), skipping finished cells and resuming interrupted ones, then "
        "write OUT/report/: per-class precision and recall with CIs, paired differences against the reference "
        "backbone, the claims' verdicts and the CAM localisation comparison. See docs/transfer_study.md.",
    )
    p.add_argument("--config", type=Path, required=True, help="study YAML (experiments/study/cpu.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a study key (protocol.train.epochs=3, datasets.busi.root=DIR); repeatable")
    p.add_argument("--out", type=Path, required=True, help="study folder: one run directory per cell")
    p.add_argument("--only", nargs="+", default=[], metavar="CELL",
                   help="run only these cells (busi/acc_vit_tiny), datasets (busi) or backbones (acc_vit_tiny)")
    p.add_argument("--launcher", default="local", choices=("local", "slurm", "submitit-local"),
                   help="local: in this process (default); slurm: one submitit job per cell; "
                   "submitit-local: submitit's local processes (cells in parallel)")
    p.add_argument("--nproc", type=int, default=1, help="DDP processes per fine-tuning cell (torchrun)")
    p.add_argument("--partition", help="Slurm partition (--launcher slurm)")
    p.add_argument("--timeout-min", type=int, help="job time limit in minutes (submitit launchers)")
    p.add_argument("--gpus-per-node", type=int, help="GPUs per cell job (--launcher slurm; default --nproc)")
    p.add_argument("--cpus-per-task", type=int, help="CPUs per cell job (--launcher slurm)")
    p.add_argument("--mem-gb", type=int, help="memory per cell job in GB (--launcher slurm)")
    p.add_argument("--results", type=Path,
                   help="folder of published results (e.g. docs/transfer_study/cells): finished cells there count "
                   "as done, and each cell that finishes is copied there without weights")
    p.add_argument("--no-report", action="store_true", help="run cells only")
    p.add_argument("--report-only", action="store_true",
                   help="write the report from finished cells' result files (no training; weights not needed)")
    p.add_argument("--page", type=Path,
                   help="with --report-only: also write the report into this results page below its marker line "
                   "(docs/transfer_study.md)")
    p.add_argument("--report-dir", type=Path, help="with --report-only: where to write the report (default OUT/report)")
    p.set_defaults(func=_study)
