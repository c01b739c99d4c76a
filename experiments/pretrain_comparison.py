"""Scratch vs distilled: the fine-tuning runs' test balanced accuracy and macro AUROC, into docs/pretraining.md.

Each pair is two finished ``medvit train`` runs with the same recipe and budget, one started from random
initialisation and one from a ``medvit pretrain`` backbone. The table (both rows per pair, 95% bootstrap CIs
from each run's ``report/summary.json``) replaces the text between ``<!-- comparison:start -->`` and
``<!-- comparison:end -->`` of the docs page; config keys other than ``pretrained`` that differ between the
two runs of a pair are listed under the table.

    python experiments/pretrain_comparison.py --scratch runs/busi_vvt_tiny_scratch \\
        --distilled runs/busi_vvt_tiny_distilled [--scratch ... --distilled ...] [--doc docs/pretraining.md]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import yaml

from medvit.report import format_estimate, read_summary, summary_estimate
from medvit.run_dir import CONFIG_YAML, read_model_info

START, END = "<!-- comparison:start -->", "<!-- comparison:end -->"
_METRICS = (("balanced_accuracy", "Test balanced accuracy (95% CI)"), ("macro_auroc", "Test macro AUROC (95% CI)"))


def _start_description(info: dict) -> str:
    """How a run's weights started: ``pretrained_description`` of its model.json, else derived."""
    if info.get("pretrained_description"):
        return str(info["pretrained_description"])
    from medvit.models.pretrained import describe_pretrained

    try:
        return describe_pretrained(info.get("pretrained"), str(info["model"]))["pretrained_description"]
    except (ValueError, FileNotFoundError):
        return f"pretrained: {info.get('pretrained')}"


def _config(run: Path) -> dict:
    path = run / CONFIG_YAML
    if not path.is_file():
        return {}
    return yaml.safe_load(path.read_text()) or {}


def _row(run: Path, label: str) -> list[str]:
    info = read_model_info(run)
    summary = read_summary(run)
    if summary is None:
        raise FileNotFoundError(f"{run}: no report/summary.json; run 'medvit report {run}' first")
    if summary.get("split") != "test":
        raise ValueError(f"{run}: report/summary.json is of split {summary.get('split')!r}; the table compares test splits")
    cells = [format_estimate(summary_estimate(summary, metric)) for metric, _ in _METRICS]
    return [label, f"`{info['model']}`", _start_description(info), *cells, f"`{run.name}`"]


def comparison_markdown(pairs: Sequence[tuple[Path, Path]], command: str) -> str:
    """The Markdown table (two rows per pair) and its notes.

    Raises:
        FileNotFoundError / ValueError: a run without a test report, or a pair on different datasets.
    """
    header = ["Start", "Model", "Initial weights", *(title for _, title in _METRICS), "Run"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    notes = []
    for scratch, distilled in pairs:
        a, b = read_model_info(scratch), read_model_info(distilled)
        if (a.get("dataset"), a.get("manifest_hash")) != (b.get("dataset"), b.get("manifest_hash")):
            raise ValueError(f"{scratch} and {distilled} were trained on different data (dataset/manifest hash differ)")
        lines.append("| " + " | ".join(_row(scratch, "scratch")) + " |")
        lines.append("| " + " | ".join(_row(distilled, "distilled")) + " |")
        ca, cb = _config(scratch), _config(distilled)
        differ = sorted(k for k in set(ca) | set(cb) if k != "pretrained" and ca.get(k) != cb.get(k))
        if differ:
            notes.append(f"- `{scratch.name}` vs `{distilled.name}` also differ in: " + ", ".join(f"`{k}`" for k in differ))
        else:
            notes.append(f"- `{scratch.name}` vs `{distilled.name}`: same config except `pretrained`.")
    return "\n".join([f"Regenerate with `{command}`.", "", *lines, "", *notes])


def write_between_markers(doc: Path, text: str) -> None:
    """Replace what lies between the comparison markers of ``doc`` with ``text``.

    Raises:
        ValueError: the markers are missing or out of order.
    """
    content = doc.read_text()
    start, end = content.find(START), content.find(END)
    if start < 0 or end < start:
        raise ValueError(f"{doc}: needs the markers {START} ... {END} (in that order) around the table")
    doc.write_text(content[: start + len(START)] + "\n" + text.strip() + "\n" + content[end:])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scratch", type=Path, action="append", required=True, help="run from random init (repeatable)")
    parser.add_argument("--distilled", type=Path, action="append", required=True, help="run from a pretrain backbone (repeatable)")
    parser.add_argument("--doc", type=Path, default=Path("docs/pretraining.md"), help="page holding the markers")
    args = parser.parse_args(argv)
    if len(args.scratch) != len(args.distilled):
        parser.error("give one --distilled run per --scratch run")
    command = "python experiments/pretrain_comparison.py " + " ".join(
        f"--scratch {s} --distilled {d}" for s, d in zip(args.scratch, args.distilled)
    )
    try:
        text = comparison_markdown(list(zip(args.scratch, args.distilled)), command)
        write_between_markers(args.doc, text)
    except (ValueError, FileNotFoundError) as error:
        print(f"pretrain_comparison: error: {error}", file=sys.stderr)
        return 1
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
