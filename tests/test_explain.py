"""Stage CAMs: equality with per-layer pytorch-grad-cam, localisation, state hygiene, overlays, CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from medvit.explain import (
    CAM_METHODS,
    LocalizationScores,
    compute_stage_cams,
    figure_to_png,
    localization_scores,
    overlay_cam,
    render_grid,
    stage_cam_class,
    summarize_scores,
)
from medvit.explain.cam import stage_grid_size, stage_reshape_transform
from medvit.models import create_model, list_models, pyramid_stages

from tiny_pyramid import TinyPyramid, _quadrant_image

# One member per family runs the CAM-equality check: the larger variants run the same code, and their stage
# modules, layouts and hooks are checked without compute on the meta device by
# tests/test_models.py::test_pyramid_contract (full-size acc_vit_base or vvt_large took 4-7 s each here).
_LARGER = {
    "acc_vit_tiny", "acc_vit_small", "acc_vit_base", "vvt_small", "vvt_medium", "vvt_large",
    "tf_efficientnet_lite1", "tf_efficientnet_lite2",
}
_CAM_ZOO = [info.name for info in list_models() if info.name not in _LARGER]
# Non-square and small: every backbone of the zoo takes 32x64 (VVT: multiples of 32; ACC-ViT, Swin,
# MaxViT are built with img_size=(32, 64)); stage grids 8x16, 4x8, 2x4, 1x2.
_SIZE = (32, 64)


def _reference_cams(model: nn.Module, image: torch.Tensor, target: int, method: str) -> list[np.ndarray]:
    """What pytorch-grad-cam computes for each stage alone: one CAM object per stage."""
    size = tuple(image.shape[-2:])
    maps = []
    for stage in pyramid_stages(model):
        reshape = stage_reshape_transform(stage, size)
        with CAM_METHODS[method](model, target_layers=[stage.module], reshape_transform=reshape) as cam:
            maps.append(cam(image, [ClassifierOutputTarget(target)])[0])
    return maps


def test_cam_equality_covers_every_family() -> None:
    families = {info.family for info in list_models()}
    assert {info.family for info in list_models() if info.name in _CAM_ZOO} == families
    assert _LARGER <= {info.name for info in list_models()}


@pytest.mark.parametrize("name", _CAM_ZOO)
def test_stage_cams_equal_per_layer_pytorch_grad_cam(name: str) -> None:
    model = create_model(name, num_classes=3, img_size=_SIZE)
    image = torch.randn(1, 3, *_SIZE)
    methods = ["gradcam", "layercam"] + (["gradcam++"] if name in ("pvt_v2_b1", "tf_efficientnet_lite0") else [])
    for method in methods:
        cams = compute_stage_cams(model, image, target=1, method=method)
        assert cams.target == 1
        assert [s.reduction for s in cams.stages] == [4, 8, 16, 32]
        assert cams.grid_sizes == [(_SIZE[0] // r, _SIZE[1] // r) for r in (4, 8, 16, 32)]
        reference = _reference_cams(model, image, 1, method)
        for stage, ours, theirs in zip(cams.stages, cams.cams, reference):
            assert ours.shape == _SIZE and ours.dtype == np.float32
            assert ours.min() >= 0.0 and ours.max() <= 1.0 + 1e-6
            np.testing.assert_allclose(ours, theirs, atol=1e-5, err_msg=f"{name} {method} {stage.name}")
    assert math.isclose(float(cams.probabilities.sum()), 1.0, rel_tol=1e-5)


# --- a hand-made 4-stage pyramid: the class evidence is the brightness of one image region ---------------


def _quadrant_masses(cam: np.ndarray) -> list[float]:
    height, width = cam.shape
    return [
        float(cam[(q // 2) * height // 2 : (q // 2 + 1) * height // 2, (q % 2) * width // 2 : (q % 2 + 1) * width // 2].sum())
        for q in range(4)
    ]


@pytest.mark.parametrize("quadrant", [0, 1, 2, 3])
@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "layercam", "hirescam", "xgradcam"])
def test_cams_peak_in_the_quadrant_with_the_evidence(quadrant: int, method: str) -> None:
    model = TinyPyramid()
    image = _quadrant_image(quadrant)
    cams = compute_stage_cams(model, image, target=1, method=method)
    for index, cam in enumerate(cams.cams):
        peak_y, peak_x = np.unravel_index(np.argmax(cam), cam.shape)
        assert (peak_y // 32) * 2 + (peak_x // 48) == quadrant, f"stage {index + 1} peaks outside the quadrant"
        masses = _quadrant_masses(cam)
        assert int(np.argmax(masses)) == quadrant
        assert masses[quadrant] / sum(masses) > 0.6


def test_token_stages_give_the_same_cams_as_nchw_stages() -> None:
    image = torch.rand(1, 3, 64, 96)
    nchw = compute_stage_cams(TinyPyramid(tokens=False), image, target=1)
    nlc_model = TinyPyramid(tokens=True)
    assert {s.fmt for s in pyramid_stages(nlc_model)} == {"NLC"}
    nlc = compute_stage_cams(nlc_model, image, target=1)
    for a, b, c in zip(nchw.cams, nlc.cams, _reference_cams(nlc_model, image, 1, "gradcam")):
        np.testing.assert_allclose(a, b, atol=1e-6)
        np.testing.assert_allclose(b, c, atol=1e-5)


def test_default_target_is_the_predicted_class_and_methods_by_name() -> None:
    model = TinyPyramid()
    dark = compute_stage_cams(model, torch.zeros(3, 64, 64) - 1.0)
    bright = compute_stage_cams(model, _quadrant_image(0, (64, 64)))
    assert dark.target == 0 and bright.target == 1
    assert bright.probabilities.argmax() == 1
    for method in CAM_METHODS:
        cams = compute_stage_cams(model, _quadrant_image(3, (64, 64)), method=method)
        assert len(cams.cams) == 4 and all(c.shape == (64, 64) for c in cams.cams)
    with pytest.raises(ValueError, match="unknown CAM method"):
        compute_stage_cams(model, torch.zeros(3, 64, 64), method="scorecam")
    with pytest.raises(ValueError, match="out of range"):
        compute_stage_cams(model, torch.zeros(3, 64, 64), target=2)
    with pytest.raises(ValueError, match="one image"):
        compute_stage_cams(model, torch.zeros(2, 3, 64, 64))


# --- state hygiene -----------------------------------------------------------------------------------


def _hook_counts(model: nn.Module) -> list[int]:
    return [len(s.module._forward_hooks) + len(s.module._backward_hooks) for s in pyramid_stages(model)]


def test_no_hooks_left_after_an_exception() -> None:
    model = TinyPyramid()
    before = _hook_counts(model)
    with pytest.raises(RuntimeError, match="boom"):
        with stage_cam_class("gradcam")(model, pyramid_stages(model)) as cam:
            assert [n - b for n, b in zip(_hook_counts(model), before)] == [1, 1, 1, 1]
            cam(_quadrant_image(0), None)
            raise RuntimeError("boom")
    assert _hook_counts(model) == before
    model.train()
    with pytest.raises(RuntimeError):  # the forward itself fails: 1 input channel
        compute_stage_cams(model, torch.zeros(1, 1, 64, 64))
    assert _hook_counts(model) == before
    assert all(m.training for m in model.modules())
    compute_stage_cams(model, _quadrant_image(0))
    assert _hook_counts(model) == before


def test_frozen_model_in_any_mode_is_left_as_it_was() -> None:
    model = TinyPyramid()
    image = _quadrant_image(2)
    expected = compute_stage_cams(model, image, target=1)
    model.requires_grad_(False)
    model.head.weight.requires_grad_(True)  # a linear probe: only the head trains
    model.head.weight.grad = torch.full_like(model.head.weight, 7.0)
    model.train()
    model.stages[1].eval()
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    image_before = image.clone()
    for context in (torch.enable_grad, torch.no_grad, torch.inference_mode):
        with context():
            cams = compute_stage_cams(model, image, target=1)
        for a, b in zip(cams.cams, expected.cams):
            np.testing.assert_allclose(a, b, atol=1e-6)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert torch.equal(model.head.weight.grad, torch.full_like(model.head.weight, 7.0))
    assert all(p.grad is None for n, p in model.named_parameters() if n != "head.weight")
    assert torch.equal(image, image_before) and not image.requires_grad


# --- localisation ------------------------------------------------------------------------------------


def test_localization_scores_on_hand_made_masks() -> None:
    cam = np.zeros((8, 8), dtype=np.float32)
    cam[:, :4] = 1.0  # all the mass on the left half
    cam[2, 1] = 2.0  # the peak
    left, top_left, right = np.zeros((8, 8), bool), np.zeros((8, 8), bool), np.zeros((8, 8), bool)
    left[:, :4], top_left[:4, :4], right[:, 4:] = True, True, True
    scores = localization_scores(cam, left, top_fraction=0.5)
    assert scores == LocalizationScores(pointing=1.0, energy=1.0, iou=1.0)
    scores = localization_scores(cam, top_left, top_fraction=0.5)
    assert scores.pointing == 1.0
    assert scores.energy == pytest.approx(17 / 33)  # 15 ones + the peak 2 inside, of 31 ones + 2
    assert scores.iou == pytest.approx(16 / 32)
    scores = localization_scores(cam, right, top_fraction=0.5)
    assert scores == LocalizationScores(pointing=0.0, energy=0.0, iou=0.0)
    # top 25 %: 16 pixels of distinct values, the first two rows
    ramp = np.arange(64, dtype=np.float32)[::-1].reshape(8, 8)
    first_row = np.zeros((8, 8), np.uint8)
    first_row[0] = 1
    assert localization_scores(ramp, first_row, top_fraction=0.25).iou == pytest.approx(8 / 16)
    assert localization_scores(ramp, first_row, top_fraction=0.125).iou == pytest.approx(1.0)
    assert localization_scores(ramp, first_row.astype(np.float32)[None], top_fraction=0.125).iou == 1.0
    flat = localization_scores(np.ones((8, 8)), left)
    assert all(math.isnan(v) for v in (flat.pointing, flat.energy, flat.iou))
    with pytest.raises(ValueError, match="empty"):
        localization_scores(cam, np.zeros((8, 8)))
    with pytest.raises(ValueError, match="resize the mask"):
        localization_scores(cam, np.ones((4, 4)))
    with pytest.raises(ValueError, match="top_fraction"):
        localization_scores(cam, left, top_fraction=0.0)


def test_summarize_scores_per_stage() -> None:
    stages = pyramid_stages(TinyPyramid())
    per_image = [
        [LocalizationScores(1.0, 0.8, 0.5)] * 4,
        [LocalizationScores(0.0, 0.4, 0.3)] * 4,
        [LocalizationScores(math.nan, math.nan, math.nan)] * 4,
    ]
    table = summarize_scores(per_image, stages)
    assert list(table["stride"]) == [4, 8, 16, 32]
    assert table.loc[0, "pointing"] == pytest.approx(0.5)
    assert table.loc[0, "energy"] == pytest.approx(0.6)
    assert table.loc[0, "n"] == 3 and table.loc[0, "n_iou"] == 2
    assert table.loc[0, "iou_ci_low"] <= 0.4 <= table.loc[0, "iou_ci_high"]


def test_cam_localises_the_evidence_quadrant() -> None:
    cams = compute_stage_cams(TinyPyramid(), _quadrant_image(1), target=1)
    mask = np.zeros((64, 96), bool)
    mask[:32, 48:] = True
    for cam in cams.cams:
        scores = localization_scores(cam, mask)
        assert scores.pointing == 1.0 and scores.energy > 0.6 and scores.iou > 0.4


# --- overlays ----------------------------------------------------------------------------------------


def test_overlay_and_grid() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    cam = np.zeros((64, 96), np.float32)
    cam[:32, :48] = 1.0
    overlay = overlay_cam(rgb, cam, alpha=0.5)
    assert overlay.shape == (64, 96, 3) and overlay.dtype == np.uint8
    np.testing.assert_array_equal(overlay, overlay_cam(rgb.astype(np.float32) / 255, cam, alpha=0.5))
    assert overlay_cam(rgb, cam[::2, ::2], alpha=0.5).shape == (64, 96, 3)
    with pytest.raises(ValueError, match="\\[0, 1\\]"):
        overlay_cam(rgb.astype(np.float32), cam)
    cams = compute_stage_cams(TinyPyramid(), _quadrant_image(0), target=1)
    figure = render_grid(rgb, cams, ["normal", "lesion"])
    assert isinstance(figure, Figure) and len(figure.axes) == 5
    titles = [axis.get_title() for axis in figure.axes]
    assert "stage 1 · stride 4 · 16×24" in titles[1] and "stage 4 · stride 32 · 2×3" in titles[4]
    assert all("lesion: p=" in title for title in titles)
    assert figure_to_png(figure).startswith(b"\x89PNG")


# --- CLI ---------------------------------------------------------------------------------------------


def test_cli_explain_image_with_mask(tiny_run, tmp_path) -> None:
    from medvit.cli import main

    rgb = np.random.default_rng(0).integers(0, 256, (72, 88, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "case 1.png")
    mask = np.zeros((72, 88), np.uint8)
    mask[10:40, 20:60] = 255
    Image.fromarray(mask).save(tmp_path / "case 1_mask.png")
    out = tmp_path / "out"
    argv = ["explain", str(tiny_run), str(tmp_path / "case 1.png"), "--out", str(out)]
    assert main(argv + ["--mask", str(tmp_path / "case 1_mask.png"), "--target", "malignant"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["case_1"]
    files = sorted(p.name for p in (out / "case_1").iterdir())
    assert files == ["explanation.json", "grid.png"] + [f"stage{k}.png" for k in range(1, 5)]
    record = json.loads((out / "case_1" / "explanation.json").read_text())
    assert record["target"]["name"] == "malignant" and record["target"]["index"] == 1
    assert set(record["probabilities"]) == {"benign", "malignant", "normal"}
    assert [s["stride"] for s in record["stages"]] == [4, 8, 16, 32]
    assert record["stages"][0]["resolution"] == [16, 16] and record["stages"][0]["shape"] == [8, 16, 16]  # 64x64 in
    assert set(record["stages"][2]["localization"]) == {"pointing", "energy", "iou"}
    assert Image.open(out / "case_1" / "stage1.png").size == (64, 64)
    assert main(argv + ["--target", "tumour"]) == 1
    (tmp_path / "broken.png").write_bytes(b"not an image")
    assert main(["explain", str(tiny_run), str(tmp_path / "broken.png"), "--out", str(out)]) == 1


def test_cli_explain_scores_over_a_split(tiny_run, synthetic_busi, tmp_path) -> None:
    from medvit.cli import main

    out = tmp_path / "scores"
    manifest = synthetic_busi["manifest"]
    assert main(["explain", str(tiny_run), "--manifest", manifest, "--scores", "--split", "test", "--out", str(out)]) == 0
    import pandas as pd

    table = pd.read_csv(out / "stage_scores_test.csv")
    assert list(table["stride"]) == [4, 8, 16, 32]
    assert (table["n"] > 0).all()
    assert table["energy"].between(0, 1).all()
    assert "| stage | stride | n | pointing | energy | iou |" in (out / "stage_scores_test.md").read_text()
