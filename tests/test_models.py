"""The pyramid contract on every curated backbone: four NCHW stage maps at strides 4-32, stage modules
whose hooked outputs (converted with to_nchw) equal them, and the zoo's factory."""

from __future__ import annotations

import pytest
import timm
import torch

from medvit.models import create_model, get_model_info, list_models, pyramid_stages, stage_modules, to_nchw
from medvit.models.registry import summarize_models

CURATED = [info.name for info in list_models()]
# Inputs: small and non-square; img_size sets the windows of MaxViT and ACC-ViT, and Swin gets 2x2 windows
# (its stage grids are 16x24 .. 2x3). ACC-ViT's default 224 is tested below.
TEST_INPUT = {name: (64, 96) for name in CURATED}
# The widest variants run their one forward on the meta device: shapes, layouts and hooks are checked
# without compute; the values are checked on the smaller variants of the same families.
HEAVY = {"acc_vit_tiny", "acc_vit_small", "acc_vit_base", "vvt_small", "vvt_medium", "vvt_large"}


def _build(name: str, hw: tuple[int, int]) -> torch.nn.Module:
    kwargs = {"window_size": 2} if get_model_info(name).family == "swin" else {}
    return create_model(name, num_classes=3, img_size=hw, **kwargs).eval()


def _check_contract(model: torch.nn.Module, name: str, hw: tuple[int, int], compare_features: bool) -> None:
    device = next(model.parameters()).device
    stages = pyramid_stages(model)
    assert [s.reduction for s in stages] == [4, 8, 16, 32]
    feature_info = {f["module"]: f for f in model.feature_info}
    for stage in stages:
        assert stage.num_chs == feature_info[stage.name]["num_chs"]
        assert stage.module is model.get_submodule(stage.name)
        assert stage.fmt == ("NHWC" if get_model_info(name).family == "swin" else "NCHW")  # timm's Swin is channels-last
    assert stage_modules(model) == [s.module for s in stages]

    hooked: dict[int, torch.Tensor] = {}
    handles = [
        stage.module.register_forward_hook(lambda _m, _i, out, i=i: hooked.__setitem__(i, out))
        for i, stage in enumerate(stages)
    ]
    x = torch.randn(1, 3, *hw, device=device)
    try:
        with torch.no_grad():
            final, maps = model.forward_intermediates(x, indices=[s.feature_index for s in stages])
    finally:
        for handle in handles:
            handle.remove()
    assert len(maps) == 4
    for i, (stage, feature_map) in enumerate(zip(stages, maps)):
        assert feature_map.shape == (1, stage.num_chs, hw[0] // stage.reduction, hw[1] // stage.reduction)
        grid = (hw[0] // stage.reduction, hw[1] // stage.reduction)
        converted = to_nchw(hooked[i], stage.fmt, hw=grid)
        if device.type == "meta":
            assert converted.shape == feature_map.shape
        else:
            torch.testing.assert_close(converted, feature_map, rtol=0, atol=0)
    if compare_features:
        with torch.no_grad():
            torch.testing.assert_close(final, model.forward_features(x))
            logits = model.forward_head(final)
        assert logits.shape == (1, 3)


@pytest.mark.parametrize("name", CURATED)
def test_pyramid_contract(name: str) -> None:
    hw = TEST_INPUT[name]
    if name in HEAVY:
        with torch.device("meta"):
            model = _build(name, hw)
        _check_contract(model, name, hw, compare_features=False)
    else:
        _check_contract(_build(name, hw), name, hw, compare_features=True)


def test_acc_vit_default_size() -> None:
    model = create_model("acc_vit_nano", num_classes=3).eval()
    _check_contract(model, "acc_vit_nano", (224, 224), compare_features=False)


def test_swin_default_windows_on_a_non_square_input() -> None:
    # 224x320 pads Swin's 7x7 windows at every stage; its stages stay channels-last (NHWC).
    name = "swin_tiny_patch4_window7_224"
    with torch.device("meta"):
        model = create_model(name, num_classes=3, img_size=(224, 320)).eval()
    assert [s.fmt for s in pyramid_stages(model)] == ["NHWC"] * 4
    _check_contract(model, name, (224, 320), compare_features=False)


@pytest.mark.parametrize("name", ["vvt_tiny", "acc_vit_nano"])
def test_ours_features_only_in_timm(name: str) -> None:
    kwargs = {"img_size": (64, 96)} if name.startswith("acc_vit") else {}
    model = timm.create_model(name, features_only=True, **kwargs).eval()
    with torch.no_grad():
        maps = model(torch.randn(1, 3, 64, 96))
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    assert [m.shape[1] for m in maps] == model.feature_info.channels()
    assert [tuple(m.shape[2:]) for m in maps] == [(64 // r, 96 // r) for r in (4, 8, 16, 32)]


def test_summary_counts_parameters_and_multiply_adds() -> None:
    rows = {r.name: r for r in summarize_models(["vvt_tiny", "convnext_tiny", "tf_efficientnet_lite0"], with_flops=True)}
    assert round(rows["vvt_tiny"].params_m * 1e6) == 12_882_440  # official VVT-tiny
    assert round(rows["convnext_tiny"].params_m * 1e6) == 28_589_128  # timm
    assert rows["convnext_tiny"].gflops_224 == pytest.approx(4.46, abs=0.01)  # paper: 4.5 G multiply-adds
    assert rows["tf_efficientnet_lite0"].pretrained == "bundled"


def test_any_timm_model_and_helpful_errors() -> None:
    model = create_model("resnet18", num_classes=2)
    assert model.num_classes == 2
    assert [s.name for s in pyramid_stages(model)] == ["layer1", "layer2", "layer3", "layer4"]
    assert [s.fmt for s in pyramid_stages(model)] == ["NCHW"] * 4
    with pytest.raises(KeyError, match="vvt_tiny"):
        create_model("vvt_tiyn")
    with torch.device("meta"), pytest.raises(ValueError, match=r"no feature level at stride\(s\) \[4, 8, 32\]"):
        pyramid_stages(create_model("vit_tiny_patch16_224", num_classes=0))


def test_img_size_only_reaches_models_that_need_it() -> None:
    with torch.device("meta"):
        create_model("convnext_tiny", img_size=(64, 96))  # ConvNeXt takes no img_size: dropped
        maxvit = create_model("maxvit_tiny_tf_224", img_size=384)
    assert maxvit.stages[0].blocks[0].attn_block.partition_size == (12, 12)
