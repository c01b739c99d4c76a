"""Faithfulness (ROAD, deletion/insertion) and the model-randomisation sanity check of stage maps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pytorch_grad_cam.metrics.road import ROADCombined, ROADMostRelevantFirst
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

from medvit.explain import compute_stage_cams
from medvit.explain.faithfulness import FaithfulnessConfig, stage_faithfulness
from medvit.explain.sanity import CASCADE, cascade_groups, cascading_randomization, map_similarity

from tiny_pyramid import TinyPyramid, fit_pyramid, half_images, quadrant_image


@pytest.fixture(scope="module")
def fitted():
    """A tiny pyramid fitted on left/right-square images (held-out accuracy 1.0) and three test images."""
    torch.set_num_threads(1)
    model = fit_pyramid(steps=40)
    images, labels = half_images(64, seed=1)
    with torch.no_grad():
        accuracy = float((model(images).argmax(1) == labels).float().mean())
    right = labels == 1  # the model learned evidence for "right" (Grad-CAM of "left" is often all negative)
    return model, images[right][:3], labels[right][:3], accuracy


def test_road_equals_pytorch_grad_cam_in_one_batched_pass() -> None:
    model = TinyPyramid()
    torch.manual_seed(3)
    image = quadrant_image(1, (32, 64)) + 0.1 * torch.randn(1, 3, 32, 64)
    cams = compute_stage_cams(model, image, target=1).cams
    ours = stage_faithfulness(model, image, cams, 1, FaithfulnessConfig(percentiles=(20, 50, 80), curve_steps=0, seed=5))
    torch.manual_seed(5)
    targets = [ClassifierOutputSoftmaxTarget(1)] * 4
    theirs = ROADCombined(percentiles=[20, 50, 80])(image.repeat(4, 1, 1, 1), np.stack(cams), targets, model)
    np.testing.assert_allclose([s.road_combined for s in ours], theirs, atol=1e-6)
    torch.manual_seed(5)  # LeRF consumed the noise first in ROADCombined; MoRF alone differs in noise only
    morf = ROADMostRelevantFirst(50)(image.repeat(4, 1, 1, 1), np.stack(cams), targets, model)
    assert all(abs(s.road_morf - m) < 0.05 for s, m in zip(ours, morf))
    assert all(math.isnan(s.deletion_auc) and s.deletion == [] for s in ours)


def test_deletion_and_insertion_curves_follow_the_evidence() -> None:
    model = TinyPyramid()
    image = quadrant_image(0, (32, 64))
    good = compute_stage_cams(model, image, target=1).cams
    reverse = [1.0 - cam for cam in good]  # points away from the evidence
    config = FaithfulnessConfig(percentiles=(50,), curve_steps=4)
    faithful = stage_faithfulness(model, image, good, 1, config)
    unfaithful = stage_faithfulness(model, image, reverse, 1, config)
    with torch.no_grad():
        base = float(torch.softmax(model(image), -1)[0, 1])
        empty = float(torch.softmax(model(torch.zeros_like(image)), -1)[0, 1])
    for ours, theirs in zip(faithful, unfaithful):
        assert len(ours.deletion) == len(ours.insertion) == 5
        assert ours.deletion[0] == pytest.approx(base) and ours.deletion[-1] == pytest.approx(empty)
        assert ours.insertion[0] == pytest.approx(empty) and ours.insertion[-1] == pytest.approx(base)
        assert ours.deletion_auc < theirs.deletion_auc and ours.insertion_auc > theirs.insertion_auc
        assert ours.road_combined > theirs.road_combined
        assert -0.5 <= ours.road_combined <= 0.5
    flat = stage_faithfulness(model, image, [np.zeros((32, 64), np.float32)] * 4, 1, config)
    assert all(math.isnan(s.road_combined) and s.scores()["road_combined"] is None for s in flat)
    with pytest.raises(ValueError, match="upsample"):
        stage_faithfulness(model, image, [np.zeros((8, 12), np.float32)] * 4, 1, config)
    with pytest.raises(ValueError, match="percentiles"):
        FaithfulnessConfig(percentiles=(0,))


def test_map_similarity() -> None:
    ramp = np.linspace(0, 1, 64).reshape(8, 8)
    assert map_similarity(ramp, ramp) == pytest.approx((1.0, 1.0))
    rho, ssim = map_similarity(ramp, 1 - ramp)
    assert rho == pytest.approx(-1.0) and ssim < 0
    assert map_similarity(ramp, np.zeros((8, 8)))[0] == 0.0
    assert all(math.isnan(v) for v in map_similarity(np.ones((8, 8)), ramp))


def test_cascade_groups_split_the_parameters_top_down(fitted) -> None:
    model = fitted[0]
    groups = cascade_groups(model, torch.zeros(1, 3, 64, 64))
    assert len(groups) == len(CASCADE) == 5
    owners = {id(p): name for name, p in model.named_parameters()}
    names = [sorted(owners[id(p)] for p in group) for group in groups]
    assert names == [
        ["head.bias", "head.weight"],
        ["stages.3.bias", "stages.3.weight"],
        ["stages.2.bias", "stages.2.weight"],
        ["stages.1.bias", "stages.1.weight"],
        ["stages.0.bias", "stages.0.weight"],
    ]


def test_randomised_model_cams_differ_from_the_trained_ones(fitted) -> None:
    model, images, labels, accuracy = fitted
    assert accuracy == 1.0
    state = {k: v.clone() for k, v in model.state_dict().items()}
    trained = [compute_stage_cams(model, image, target=int(label)) for image, label in zip(images, labels)]
    results = cascading_randomization(model, list(images), trained, seed=0)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())  # the caller's model is untouched
    assert len(results) == 3 and all(len(stages) == 4 for stages in results)
    for per_stage in results:
        for index, check in enumerate(per_stage):
            assert check.steps == list(CASCADE) and check.own_step == 3 - index
            assert len(check.spearman_steps) == len(check.ssim_steps) == 5
        assert not per_stage[3].is_flagged  # the map the head reads follows the head
    # the trained maps point at the square at every stage (the model learned something) ...
    for image, cams in zip(images, trained):
        square = (image[0] > 1.0).numpy()
        assert all((cam * square).sum() / cam.sum() > 1.5 * square.mean() for cam in cams.cams)
    # ... and once the head is destroyed no stage's map keeps that ranking (measured: -0.66 to 0.0)
    after_head = np.array([[c.spearman_steps[0] for c in stages] for stages in results])
    assert np.all(after_head < 0.5) and after_head.mean() < 0.0
    again = cascading_randomization(model, list(images), trained, seed=0)
    assert [c.spearman_steps for c in again[0]] == [c.spearman_steps for c in results[0]]
