"""What the page can load: the embedded demo models and the run directories found under a folder.

:func:`discover_runs` lists them (embedded first, one default per dataset), :func:`default_run` picks
the default. The embedded models are package data (:func:`medvit.assets.demo_models_dir`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from medvit.assets import demo_models_dir
from medvit.models.pretrained import PRETRAIN_KIND
from medvit.run_dir import MODEL_JSON, read_model_header, read_selection

__all__ = ["EMBEDDED_LABEL", "RunEntry", "discover_runs", "default_run"]

EMBEDDED_LABEL = "embedded"


@dataclass(frozen=True)
class RunEntry:
    """A run directory the page can load.

    Attributes:
        path: the run directory.
        label: what the sidebar shows.
        dataset: ``model.json``'s dataset (``""`` when ``model.json`` is unreadable).
        model_name: ``model.json``'s backbone name (``""`` when unreadable).
        is_embedded: shipped in the package (``medvit/assets/demo_models/``) rather than found under ``runs/``.
        is_default: the embedded default model of its dataset.
    """

    path: Path
    label: str
    dataset: str
    model_name: str
    is_embedded: bool
    is_default: bool = False


def _find_run_dirs(folder: Path, max_depth: int) -> list[tuple[Path, str, str]]:
    """(folder, dataset, model name) of each folder at most ``max_depth`` levels below ``folder`` that holds a
    ``model.json``, except ``medvit pretrain`` runs (backbones to fine-tune from, not classifiers to show)."""
    found = []
    for root, dirs, files in os.walk(folder):
        depth = len(Path(root).relative_to(folder).parts)
        if MODEL_JSON in files:
            dataset, model_name, kind = read_model_header(root)
            if kind != PRETRAIN_KIND:
                found.append((Path(root), dataset, model_name))
            dirs.clear()  # a run directory does not nest other runs
        elif depth >= max_depth:
            dirs.clear()
        dirs.sort()
    return sorted(found)


def discover_runs(
    runs_dir: str | Path | None = "runs",
    embedded_dir: str | Path | None = None,
    max_depth: int = 3,
) -> list[RunEntry]:
    """List the embedded demo models, then the run directories found under ``runs_dir``.

    A run directory is any folder holding ``model.json`` (nested up to ``max_depth`` levels, e.g.
    ``runs/grid/busi_vvt``). Unreadable ones are listed too, so that choosing one shows why it does not
    load. The embedded model of each dataset marked ``default`` in its ``selection.json`` (else the
    first one in name order) is its dataset's default.

    Args:
        runs_dir: folder to search; ``None`` or a missing folder adds nothing.
        embedded_dir: the embedded models (default :func:`medvit.assets.demo_models_dir`).
        max_depth: how deep to look below ``runs_dir``.
    """
    if embedded_dir is None:
        embedded_dir = demo_models_dir()
    entries: list[RunEntry] = []
    defaults: dict[str, Path] = {}
    if embedded_dir is not None and Path(embedded_dir).is_dir():
        embedded = _find_run_dirs(Path(embedded_dir), max_depth=1)
        for path, dataset, _ in embedded:
            if read_selection(path).get("default") and dataset not in defaults:
                defaults[dataset] = path
        for path, dataset, _ in embedded:
            defaults.setdefault(dataset, path)
        for path, dataset, model_name in embedded:
            entries.append(
                RunEntry(
                    path=path,
                    label=f"{path.name} ({EMBEDDED_LABEL})",
                    dataset=dataset,
                    model_name=model_name,
                    is_embedded=True,
                    is_default=defaults.get(dataset) == path,
                )
            )
    if runs_dir is not None and Path(runs_dir).is_dir():
        runs_dir = Path(runs_dir)
        for path, dataset, model_name in _find_run_dirs(runs_dir, max_depth=max_depth):
            entries.append(
                RunEntry(
                    path=path,
                    label=str(path.relative_to(runs_dir.parent) if runs_dir.parent != path else path),
                    dataset=dataset,
                    model_name=model_name,
                    is_embedded=False,
                )
            )
    # Entries sort by dataset, then embedded default first, then embedded, then label.
    entries.sort(key=lambda e: (e.dataset, not e.is_default, not e.is_embedded, e.label))
    return entries


def default_run(entries: Sequence[RunEntry], dataset: str | None = None) -> RunEntry | None:
    """The embedded default of ``dataset`` (any dataset when ``None``); else the first entry that matches."""
    matching = [e for e in entries if dataset is None or e.dataset == dataset]
    for entry in matching:
        if entry.is_default:
            return entry
    return matching[0] if matching else None
