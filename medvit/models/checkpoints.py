"""Load pretrained weights from a local file onto a zoo model.

The file is a safetensors file or a pickled ``.pth``/``.pt``/``.bin`` state dict (read with
``torch.load(weights_only=True)``), possibly wrapped as ``{'model' | 'state_dict' | 'model_state': ...}``
and with ``module.`` (DDP) or ``_orig_mod.`` (``torch.compile``) prefixes. The family's
``checkpoint_filter_fn`` then maps published key names onto ours, as timm's ``load_pretrained``
does: VVT's official keys (``medvit.models.vvt``), ACC-ViT's (``medvit.models.acc_vit``), timm's
baselines (e.g. ``timm.models.swin_transformer.checkpoint_filter_fn``) and the lukemelas-style
EfficientNet-Lite keys (``medvit.models.efficientnet_lite``). A classifier of another shape is
dropped and re-initialised, with a warning; any other missing key or shape mismatch is an error.

Weights named by the Hugging Face hub (``hf-hub:timm/convnext_tiny.fb_in1k``) are files of the local
hub cache (``HF_HOME``), found by :func:`hub_cached_file` without touching the network.
"""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from timm.layers import trunc_normal_
from timm.models.efficientnet import EfficientNet
from torch import nn

from medvit.boundary.weights import read_safetensors
from medvit.hashing import sha256_file  # re-exported: medvit.models.sha256_file
from medvit.models import efficientnet_lite

__all__ = ["HUB_WEIGHT_FILES", "checkpoint_filter_for", "hub_cache_dir", "hub_cached_file", "load_pretrained", "read_state_dict", "sha256_file"]

_logger = logging.getLogger(__name__)

_WRAPPER_KEYS = ("model", "state_dict", "model_state")
_PREFIXES = ("module.", "_orig_mod.")
_PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")

FilterFn = Callable[[Mapping[str, torch.Tensor], nn.Module], Mapping[str, torch.Tensor]]

HUB_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
"""Weights files of a timm repository on the Hugging Face hub, in order of preference."""
_OFFLINE_OFF = ("0", "false", "no", "off")


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache: ``HF_HUB_CACHE``, else ``HF_HOME/hub``, else huggingface_hub's default.

    Read from the environment at each call (``huggingface_hub.constants`` is fixed at import).
    """
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hub_cached_file(repo_id: str, filenames: Sequence[str] = HUB_WEIGHT_FILES, revision: str | None = None) -> Path:
    """The first of ``filenames`` of hub repository ``repo_id`` found in the local hub cache.

    Only when ``HF_HUB_OFFLINE`` is explicitly off (``0``) and the file is not cached is it
    downloaded into the cache (``huggingface_hub.hf_hub_download``); ``create_model`` sets
    ``HF_HUB_OFFLINE=1`` when it is unset, so by default nothing is fetched.

    Args:
        repo_id: e.g. ``timm/convnext_tiny.fb_in1k``.
        filenames: candidates, in order of preference.
        revision: branch, tag or commit (default ``main``).

    Raises:
        FileNotFoundError: none is cached and downloading is off; the message names the repository,
            the file and the cache folder to put it in.
    """
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    cache = hub_cache_dir()
    for filename in filenames:
        found = try_to_load_from_cache(repo_id, filename, cache_dir=cache, revision=revision)
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    if os.environ.get("HF_HUB_OFFLINE", "1").strip().lower() in _OFFLINE_OFF:
        return Path(hf_hub_download(repo_id, filenames[0], revision=revision, cache_dir=cache))
    folder = cache / f"models--{repo_id.replace('/', '--')}"
    raise FileNotFoundError(
        f"{filenames[0]} of the Hugging Face repository {repo_id!r} is not in the hub cache {cache} and "
        f"HF_HUB_OFFLINE=1 forbids downloading. On a machine with internet run "
        f"`hf download {repo_id} {filenames[0]}` (or python -c \"from huggingface_hub import hf_hub_download; "
        f"hf_hub_download('{repo_id}', '{filenames[0]}')\"), then copy its cache folder {folder.name}/ into {cache}/ "
        f"here (or point HF_HOME at a folder whose hub/ holds it); or allow downloads with HF_HUB_OFFLINE=0"
    )


def _strip_prefixes(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(state_dict)
    for prefix in _PREFIXES:
        if out and all(key.startswith(prefix) for key in out):
            out = {key[len(prefix):]: value for key, value in out.items()}
    return out


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a safetensors or pickled PyTorch checkpoint.

    Args:
        path: ``.safetensors``, or ``.pth``/``.pt``/``.bin``/``.ckpt`` (loaded with ``weights_only=True``).

    Returns:
        The tensors, unwrapped from ``{'model' | 'state_dict' | 'model_state': ...}`` and with
        ``module.`` / ``_orig_mod.`` prefixes removed.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: The suffix is unknown or the file holds no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found; pass an existing .safetensors or .pth file")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        state: Any = read_safetensors(path, fix="pass a complete weights file (re-copy or re-export it)")[0]
    elif suffix in _PICKLE_SUFFIXES:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # pickle.UnpicklingError and friends carry the reason
            raise ValueError(
                f"{path}: not loadable with torch.load(weights_only=True) ({error}); "
                "save the state dict alone (torch.save(model.state_dict(), ...)) or as safetensors"
            ) from error
    else:
        raise ValueError(
            f"{path}: unknown checkpoint suffix {suffix!r}; use .safetensors or one of {list(_PICKLE_SUFFIXES)}"
        )
    if isinstance(state, Mapping):
        for key in _WRAPPER_KEYS:
            if key in state and isinstance(state[key], Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: holds no state dict (a mapping of names to tensors)")
    return _strip_prefixes({k: v for k, v in state.items() if isinstance(v, torch.Tensor)})


def checkpoint_filter_for(model: nn.Module) -> FilterFn | None:
    """The ``checkpoint_filter_fn`` of ``model``'s family, or None when it has none.

    EfficientNets use :func:`medvit.models.efficientnet_lite.checkpoint_filter_fn`; every other model
    uses the ``checkpoint_filter_fn`` of the module defining its class (``medvit.models.vvt``,
    ``medvit.models.acc_vit``, ``timm.models.swin_transformer``, ...).
    """
    if isinstance(model, EfficientNet):
        return efficientnet_lite.checkpoint_filter_fn
    module = importlib.import_module(type(model).__module__)
    return getattr(module, "checkpoint_filter_fn", None)


def _classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    classifier = getattr(model, "pretrained_cfg", {}).get("classifier", "")
    names = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    return tuple(f"{name}." for name in names if name)


def _reinit_classifier(model: nn.Module, prefixes: tuple[str, ...]) -> None:
    for prefix in prefixes:
        try:
            head = model.get_submodule(prefix[:-1])
        except AttributeError:
            continue
        for module in head.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Conv2d):
                module.reset_parameters()


def load_pretrained(
    model: nn.Module,
    path: str | Path,
    num_classes: int | None = None,
    filter_fn: FilterFn | None = None,
) -> nn.Module:
    """Load the weights in ``path`` into ``model`` (in place), adapting the classifier if needed.

    Args:
        model: A zoo model, created with the number of classes wanted.
        path: The checkpoint file (see :func:`read_state_dict`).
        num_classes: The classes ``model`` was created with, as a check; None skips the check.
        filter_fn: Maps the checkpoint's keys onto ``model``'s; default: the family's
            ``checkpoint_filter_fn`` (:func:`checkpoint_filter_for`).

    Returns:
        ``model``, with the backbone loaded. When the checkpoint's classifier differs in shape (another
        number of classes) or is absent, the classifier is re-initialised and a warning says so.

    Raises:
        FileNotFoundError, ValueError: From :func:`read_state_dict`.
        ValueError: ``num_classes`` differs from the model's, or backbone keys are missing or have
            another shape (each listed as key, expected shape, checkpoint shape).
    """
    model_classes = getattr(model, "num_classes", None)
    if num_classes is not None and model_classes is not None and num_classes != model_classes:
        raise ValueError(
            f"model has {model_classes} classes but num_classes={num_classes} was asked; "
            "create the model with the number of classes wanted"
        )
    path = Path(path)
    state_dict = read_state_dict(path)
    filter_fn = filter_fn if filter_fn is not None else checkpoint_filter_for(model)
    if filter_fn is not None:
        state_dict = dict(filter_fn(state_dict, model))

    expected = model.state_dict()
    head_prefixes = _classifier_prefixes(model)

    def is_head(key: str) -> bool:
        return key.startswith(head_prefixes) if head_prefixes else False

    dropped_head = []
    mismatched = []
    for key in list(state_dict):
        if key not in expected:
            if is_head(key):  # model built without this head (e.g. num_classes=0)
                dropped_head.append(f"{key} {tuple(state_dict[key].shape)}")
                del state_dict[key]
            continue
        got, want = tuple(state_dict[key].shape), tuple(expected[key].shape)
        if got == want:
            continue
        if is_head(key):
            dropped_head.append(f"{key} {got} -> {want}")
            del state_dict[key]
        else:
            mismatched.append(f"{key} (expected {want}, got {got})")
    missing = [key for key in expected if key not in state_dict]
    missing_backbone = [key for key in missing if not is_head(key)]
    if mismatched or missing_backbone:
        lines = []
        if missing_backbone:
            lines.append(f"missing keys ({len(missing_backbone)}): " + ", ".join(missing_backbone[:20]))
        if mismatched:
            lines.append(f"shape mismatches ({len(mismatched)}): " + ", ".join(mismatched[:20]))
        raise ValueError(
            f"{path}: does not fit {type(model).__name__} "
            f"({getattr(model, 'pretrained_cfg', {}).get('architecture', '?')}): " + "; ".join(lines)
            + ". Pass a checkpoint of the same architecture and variant (same kwargs)."
        )
    unexpected = [key for key in state_dict if key not in expected]
    if unexpected:
        _logger.warning("%s: ignoring %d unexpected keys: %s", path, len(unexpected), ", ".join(unexpected[:20]))
        for key in unexpected:
            del state_dict[key]
    model.load_state_dict(state_dict, strict=False)
    missing_head = [key for key in missing if is_head(key)]
    if dropped_head and not missing_head and not any(k.startswith(head_prefixes) for k in expected):
        _logger.info("%s: model has no classifier; dropped the checkpoint's (%s)", path, ", ".join(dropped_head))
    elif dropped_head or missing_head:
        _reinit_classifier(model, head_prefixes)
        if dropped_head:
            _logger.warning(
                "%s: classifier re-initialised for %s classes (checkpoint head: %s); fine-tune before use",
                path, model_classes, ", ".join(dropped_head),
            )
        else:
            _logger.warning(
                "%s: checkpoint has no classifier (%s); head re-initialised", path, ", ".join(missing_head)
            )
    _logger.info("loaded %s into %s", path, type(model).__name__)
    return model
