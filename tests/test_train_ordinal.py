"""SORD soft ordinal labels: the targets, the loss, and the engine's use of them on graded data only."""

import pytest
import torch
from torch import nn

from medvit.train.ordinal import OrdinalSoftLabelLoss, ordinal_soft_labels


def test_soft_labels_peak_at_the_grade_and_fall_with_distance():
    q = ordinal_soft_labels(5, scale=2.0)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(5))
    assert (q.argmax(dim=1) == torch.arange(5)).all()
    torch.testing.assert_close(q, q.flip(0).flip(1))  # grade 0 mirrors grade 4
    row = q[2]
    assert row[2] == pytest.approx(1 / (1 + 2 * torch.exp(torch.tensor(-2.0)).item() + 2 * torch.exp(torch.tensor(-8.0)).item()))
    assert row[1] == row[3] and row[1] > 10 * row[0]  # neighbours get mass, two grades away almost none
    with pytest.raises(ValueError, match="scale > 0"):
        ordinal_soft_labels(5, scale=0.0)


def test_a_sharp_scale_is_weighted_cross_entropy():
    logits, labels = torch.randn(16, 5), torch.randint(0, 5, (16,))
    weight = torch.tensor([0.5, 1.0, 2.0, 3.0, 4.0])
    sharp = OrdinalSoftLabelLoss(5, scale=50.0, weight=weight)
    torch.testing.assert_close(sharp(logits, labels), nn.CrossEntropyLoss(weight=weight)(logits, labels))
    torch.testing.assert_close(OrdinalSoftLabelLoss(5, 50.0)(logits, labels), nn.functional.cross_entropy(logits, labels))


def test_a_near_miss_costs_less_than_a_far_one():
    loss = OrdinalSoftLabelLoss(5, scale=1.0)
    near, far = torch.full((1, 5), -5.0), torch.full((1, 5), -5.0)
    near[0, 3], far[0, 0] = 5.0, 5.0  # confident grade 3 / grade 0 for a true grade 4
    label = torch.tensor([4])
    assert loss(near, label) < loss(far, label)
    assert nn.functional.cross_entropy(near, label) == pytest.approx(nn.functional.cross_entropy(far, label).item())


def test_config_refuses_ordinal_labels_with_label_smoothing():
    from medvit.train.config import config_from_dict

    with pytest.raises(ValueError, match="label_smoothing: 0"):
        config_from_dict({"ordinal_labels": 2.0, "label_smoothing": 0.1})
    with pytest.raises(ValueError, match="ordinal_labels"):
        config_from_dict({"ordinal_labels": -1.0, "label_smoothing": 0.0})
    assert config_from_dict({"ordinal_labels": 2.0, "label_smoothing": 0.0}).ordinal_labels == 2.0


def test_engine_trains_graded_data_with_ordinal_labels_and_refuses_unordered(tmp_path, tiny_train_config, tiny_vvt_kwargs):
    from medvit.data.manifest import prepare_manifest
    from medvit.data.synthetic import make_synthetic
    from medvit.run_dir import read_config, read_metrics
    from medvit.train import train
    from medvit.train.config import config_from_dict

    with pytest.raises(ValueError, match="not ordered grades"):
        train(config_from_dict(tiny_train_config(ordinal_labels=2.0)), tmp_path / "busi")
    raw = make_synthetic(tmp_path / "eyepacs_raw", "eyepacs", per_class=4, seed=0)
    manifest = tmp_path / "eyepacs.csv"
    prepare_manifest("eyepacs", raw, manifest, num_workers=1)
    run = tmp_path / "eyepacs"
    train(config_from_dict(tiny_train_config(manifest=str(manifest), root=str(raw), ordinal_labels=2.0,
                                             class_weighting="inverse", report=False)), run)
    (row,) = read_metrics(run)
    assert row["train_loss"] > 0 and "val_qwk" in row
    assert read_config(run)["ordinal_labels"] == 2.0
