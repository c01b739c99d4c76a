"""experiments/stage_trust.py and experiments/benchmarks/faithfulness.py: their tables and the docs markers."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medvit.explain.split import SplitScores, summarize_stage_values

ROOT = Path(__file__).resolve().parents[1]


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def stage_trust():
    return _load(ROOT / "experiments" / "stage_trust.py", "medvit_stage_trust")


def _scores() -> SplitScores:
    rows = []
    for image in range(4):
        for stage in range(1, 5):
            rows.append({
                "image": f"i{image}", "stage": stage, "module": f"stages.{stage - 1}", "stride": 2 ** (stage + 1),
                "pointing": float(stage == 2), "energy": 0.1 * stage, "road_combined": 0.05 * (5 - stage) - 0.1,
                "deletion_auc": 0.3, "insertion_auc": 0.5, "spearman": [0.9, 0.2, 0.1, -0.3][stage - 1],
                "flagged": float(stage == 1),
            })
    per_image = pd.DataFrame(rows)
    names = ["pointing", "energy", "road_combined", "deletion_auc", "insertion_auc", "spearman", "flagged"]
    table = summarize_stage_values(per_image, names)
    return SplitScores(table=table.assign(sampled="all"), per_image=per_image, scores=names)


def test_model_table_and_sentence(stage_trust) -> None:
    text = stage_trust.model_table("busi_x", "vvt_tiny", _scores().table)
    lines = text.splitlines()
    assert lines[0] == "**busi_x** (`vvt_tiny`)"
    assert lines[2].startswith("| stage | stride | n | pointing game | energy in mask | ROAD (higher = faithful) |")
    assert lines[4] == (
        "| 1 | 4 | 4 | 0.00 [0.00, 0.00] | 0.10 [0.10, 0.10] | +0.10 [+0.10, +0.10] | 0.30 [0.30, 0.30] | "
        "0.50 [0.50, 0.50] | 0.90 [0.90, 0.90] | 1.00 [1.00, 1.00] |"
    )
    assert lines[-1] == (
        "Stage 4 localises best (energy); stage 1 is most faithful (ROAD); stage 4 changes most under "
        "randomisation; flagged on at least half of the images: stage 1."
    )


def test_write_between_markers(stage_trust, tmp_path) -> None:
    doc = tmp_path / "explanations.md"
    doc.write_text("# Explanations\n\nintro\n")
    stage_trust.write_between_markers(doc, "table one")
    assert doc.read_text() == (
        "# Explanations\n\nintro\n\n## Which stage to trust (BUSI demo models)\n\n"
        "<!-- stage-trust:start -->\ntable one\n<!-- stage-trust:end -->\n"
    )
    stage_trust.write_between_markers(doc, "table two")
    assert doc.read_text().count("table") == 1 and "table two" in doc.read_text()
    doc.write_text("<!-- stage-trust:end --> <!-- stage-trust:start -->")
    with pytest.raises(ValueError, match="markers"):
        stage_trust.write_between_markers(doc, "x")


def test_summarize_stage_values_means_and_cis() -> None:
    table = _scores().table
    assert list(table["stage"]) == [1, 2, 3, 4] and (table["n"] == 4).all()
    np.testing.assert_allclose(table["energy"], [0.1, 0.2, 0.3, 0.4])
    assert table.loc[1, "pointing"] == 1.0 and table.loc[1, "pointing_ci_low"] == 1.0


def test_faithfulness_benchmark_markdown() -> None:
    bench = _load(ROOT / "experiments" / "benchmarks" / "faithfulness.py", "medvit_faithfulness_bench")
    row = {"run": "busi_lite0", "model": "tf_efficientnet_lite0", "input": "160x160", "explain_s": 0.1234, "explain_cpu_s": 0.2}
    for name, value in (("road_fast_s", 4.0), ("road_full_s", 12.0), ("curves_s", 0.8), ("sanity_s", 2.0)):
        row[name], row[name.replace("_s", "_cpu_s")] = 2 * value, value
        row[name.replace("_s", "_cpu_per_stage_s")] = value / 4
    text = bench.to_markdown(pd.DataFrame([row]), 2, "x.png", (1.0, 1.0, 1.0))
    assert text.splitlines()[2] == (
        "| busi_lite0 | tf_efficientnet_lite0 | 160x160 | 0.12 / 0.20 | 8.00 / 4.00 (1.00/stage) | "
        "24.00 / 12.00 (3.00/stage) | 1.60 / 0.80 (0.20/stage) | 4.00 / 2.00 (0.50/stage) |"
    )
