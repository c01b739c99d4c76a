"""Benchmark: CPU cost of the per-stage faithfulness scores and the sanity check, per image and stage.

For each run directory (default: the embedded BUSI demo models, at their own input sizes) and one BUSI
test image, the best of ``--repeats`` calls after one warm-up of:

* ``explain_s``: :func:`medvit.explain.pipeline.explain` alone (prediction + four stage CAMs);
* ``road_fast_s``: :func:`medvit.explain.faithfulness.stage_faithfulness`, ROAD at the default
  percentiles (20, 50, 80), no curves (the fast default of the split tables);
* ``road_full_s``: ROAD at pytorch-grad-cam's ``ROADCombined`` default percentiles 10, 20, ..., 90;
* ``curves_s``: deletion + insertion curves with 10 steps, no ROAD;
* ``sanity_s``: :func:`medvit.explain.sanity.cascading_randomization` for one image (copy of the
  model + 5 cascade steps x one CAM pass); over a split the copy is made once.

All four stages are scored together (one batched forward pass); ``*_per_stage_s`` divides by four.
Writes ``results/faithfulness.csv``, ``results/faithfulness.md`` and, with ``--doc``, the table between the
``<!-- explain-cost:start -->``/``<!-- explain-cost:end -->`` markers of that page (``docs/explanations.md``).

Usage::

    .venv/bin/python experiments/benchmarks/faithfulness.py [--runs medvit/assets/demo_models/busi_*] [--repeats 2] \
        [--doc docs/explanations.md]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

from medvit.assets import demo_models_dir
from medvit.data.images import read_image
from medvit.data.transforms import preprocess_image
from medvit.explain.faithfulness import FaithfulnessConfig, stage_faithfulness
from medvit.explain.pipeline import explain
from medvit.explain.sanity import cascading_randomization
from medvit.run_dir import load_run

_logger = logging.getLogger("medvit.benchmarks.faithfulness")

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RESULTS = HERE / "results"
DEFAULT_IMAGE = "Dataset_BUSI_with_GT/malignant/malignant (1).png"
DEFAULT_ROOT = REPO.parent / "shared" / "datasets" / "pools" / "busi_256"

COST_HEADING = "Cost of faithfulness and sanity scores (CPU)"
CONFIGS = {
    "road_fast_s": FaithfulnessConfig(percentiles=(20, 50, 80), curve_steps=0),
    "road_full_s": FaithfulnessConfig(percentiles=tuple(range(10, 100, 10)), curve_steps=0),
    "curves_s": FaithfulnessConfig(percentiles=(), curve_steps=10),
}


def best_time(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Best wall time and best CPU time (this process, all threads) of ``repeats`` calls after a warm-up.

    On a machine shared with other jobs the wall time includes waiting for a core; the CPU time does not.
    """
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return min(wall), min(cpu)


def benchmark(run_dir: Path, rgb, repeats: int) -> dict:
    """Time one run directory."""
    run = load_run(run_dir)
    tensor = preprocess_image(rgb, run.image_size, run.mean, run.std)
    base = explain(run, rgb)
    row = {"run": run_dir.name, "model": run.model_name, "input": f"{run.image_size[0]}x{run.image_size[1]}"}
    cams = [stage.cam for stage in base.stages]
    calls = {"explain_s": lambda: explain(run, rgb)}
    for name, config in CONFIGS.items():
        calls[name] = lambda config=config: stage_faithfulness(run.model, tensor, cams, base.target, config)
    calls["sanity_s"] = lambda: cascading_randomization(run.model, [tensor], [base.stage_cams])
    for name, call in calls.items():
        row[name], row[name.replace("_s", "_cpu_s")] = best_time(call, repeats)
    for name in ("road_fast_s", "road_full_s", "curves_s", "sanity_s"):
        row[name.replace("_s", "_per_stage_s")] = row[name] / 4
        row[name.replace("_s", "_cpu_per_stage_s")] = row[name.replace("_s", "_cpu_s")] / 4
    row = {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}
    _logger.info("%s", row)
    return row


def to_markdown(table: pd.DataFrame, repeats: int, image: str, load: tuple[float, float, float]) -> str:
    """The result table as Markdown, with the conditions of the run."""
    lines = [
        "| run | model | input | prediction + 4 CAMs | ROAD 20/50/80 | ROAD 10..90 | deletion + insertion, 10 steps | sanity, 5 steps |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in table.itertuples(index=False):
        cells = [
            f"{getattr(row, name):.2f} / {getattr(row, name.replace('_s', '_cpu_s')):.2f} "
            f"({getattr(row, name.replace('_s', '_cpu_per_stage_s')):.2f}/stage)"
            for name in ("road_fast_s", "road_full_s", "curves_s", "sanity_s")
        ]
        lines.append(
            f"| {row.run} | {row.model} | {row.input} | {row.explain_s:.2f} / {row.explain_cpu_s:.2f} | " + " | ".join(cells) + " |"
        )
    lines.append("")
    lines.append(
        "Seconds per image: wall / CPU (this process, all threads), and CPU per stage; the four stages are scored "
        f"together (one batched forward pass), so per stage is a quarter. One BUSI test image (`{image}`), "
        f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}), "
        f"{torch.get_num_threads()} threads; best of {repeats} after a warm-up. ROAD's cost is pytorch-grad-cam's "
        "NoisyLinearImputer (one sparse solve per stage, percentile and direction; it grows with the pixels "
        f"imputed). Load average at the end {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f} (above ~2 the machine "
        "was shared with other jobs)."
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", type=Path, default=sorted(demo_models_dir().glob("busi_*")))
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="BUSI raw folder")
    parser.add_argument("--image", default=DEFAULT_IMAGE, help="image path under --root")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--doc", type=Path, help="also write the table into this page's explain-cost markers")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    rgb = read_image(args.root / args.image)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for run_dir in args.runs:  # rewritten after each run, so a long benchmark can be stopped
        rows.append(benchmark(run_dir, rgb, args.repeats))
        table = pd.DataFrame(rows)
        table.to_csv(args.out / "faithfulness.csv", index=False)
        (args.out / "faithfulness.md").write_text(to_markdown(table, args.repeats, args.image, os.getloadavg()))
    text = (args.out / "faithfulness.md").read_text()
    if args.doc is not None:
        sys.path.insert(0, str(REPO / "experiments"))
        from stage_trust import write_between_markers

        command = f"python experiments/benchmarks/faithfulness.py --repeats {args.repeats} --doc {args.doc}"
        write_between_markers(args.doc, f"Regenerate with `{command}`.\n\n{text}", "explain-cost", COST_HEADING)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
