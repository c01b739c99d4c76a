"""medvit.metrics calibration, operating points, conformal sets and subgroups: hand-computed numbers."""

import numpy as np
import pytest
from sklearn.metrics import log_loss

from medvit.metrics.calibration import (
    apply_temperature,
    binned_errors,
    compute_calibration,
    fit_temperature,
    monai_calibration_error,
    nll,
)
from medvit.metrics.conformal import (
    conformal_quantile,
    cv_plus_sets,
    evaluate_prediction_sets,
    evaluate_set_membership,
    format_set,
    prediction_sets,
)
from medvit.metrics.operating_points import binary_scores, choose_thresholds, evaluate_operating_points, question_auroc
from medvit.metrics.subgroups import age_bands, subgroup_table


def _hand_calibration_example():
    """Top-label confidences 0.95 (right), 0.62 (right), 0.64 (wrong), 0.75 (wrong), 0.55 (right)."""
    probs = np.array([[0.95, 0.05], [0.38, 0.62], [0.64, 0.36], [0.25, 0.75], [0.55, 0.45]])
    labels = np.array([0, 1, 1, 0, 0])
    return labels, probs


def test_ece_mce_adaptive_of_a_hand_example():
    labels, probs = _hand_calibration_example()
    m = compute_calibration(labels, probs, n_bootstrap=0)
    # 15 bins of width 1/15: 0.95 -> bin 14 (gap 0.05), 0.62 and 0.64 -> bin 9 (accuracy 0.5 vs
    # confidence 0.63: gap 0.13, two images), 0.75 -> bin 11 (gap 0.75), 0.55 -> bin 8 (gap 0.45)
    assert m.ece.value == pytest.approx((0.05 + 2 * 0.13 + 0.75 + 0.45) / 5, abs=1e-6)
    assert m.mce.value == pytest.approx(0.75, abs=1e-6)
    # 5 images in 15 equal-count bins: one image per bin, mean |correct - confidence|
    assert m.adaptive_ece.value == pytest.approx((0.05 + 0.38 + 0.64 + 0.75 + 0.45) / 5)
    assert m.bins.counts[8:15] == [1, 2, 0, 1, 0, 0, 1]
    assert m.bins.accuracy[9] == pytest.approx(0.5)
    # binary Brier (scikit-learn's): mean (p_positive - y)^2
    p1 = probs[:, 1]
    assert m.brier.value == pytest.approx(np.mean((p1 - labels) ** 2))
    assert m.nll.value == pytest.approx(-np.mean(np.log(probs[np.arange(5), labels])))
    assert np.isnan(m.ece.low)


def test_calibration_intervals_bracket_the_value():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(300, 3)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = np.array([rng.choice(3, p=p) for p in probs])
    m = compute_calibration(labels, probs, n_bootstrap=200, seed=1)
    for est in (m.brier, m.nll):  # means of per-image terms: the interval holds the value
        assert est.low <= est.value <= est.high
    for est in (m.ece, m.adaptive_ece, m.mce):  # binned errors: resamples are biased upwards
        assert 0 <= est.low < est.high <= 1
    assert m.ece.value < 0.1  # labels drawn from the probabilities: well calibrated


def test_vectorised_binning_matches_monai():
    rng = np.random.default_rng(2)
    conf = np.concatenate([rng.uniform(0.34, 1.0, size=(20, 97)), np.full((1, 97), 0.8)])  # 0.8: a bin edge
    correct = rng.random((21, 97)) < conf
    ece, mce = binned_errors(conf, correct)
    for r in range(conf.shape[0]):
        assert ece[r] == pytest.approx(monai_calibration_error(conf[r], correct[r], "expected"), abs=1e-6)
        assert mce[r] == pytest.approx(monai_calibration_error(conf[r], correct[r], "maximum"), abs=1e-6)


def _overconfident(n, seed, scale=3.0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, 4))
    true = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = np.array([rng.choice(4, p=p) for p in true])
    z = logits * scale
    return labels, np.exp(z) / np.exp(z).sum(1, keepdims=True)


@pytest.mark.parametrize("scale", [3.0, 1.0, 0.4])
def test_temperature_never_raises_validation_nll(scale):
    labels, probs = _overconfident(400, seed=int(scale * 10), scale=scale)
    t = fit_temperature(labels, probs)
    assert nll(labels, apply_temperature(probs, t)) <= nll(labels, probs) + 1e-12
    if scale == 3.0:
        assert t == pytest.approx(3.0, rel=0.25)  # recovers the over-sharpening
    if scale == 0.4:
        assert t < 1


def test_temperature_keeps_nll_when_scaling_cannot_help():
    labels = np.array([0, 1, 0, 1])
    probs = np.full((4, 2), 0.5)  # every temperature gives the same probabilities
    assert fit_temperature(labels, probs) == 1.0


def test_temperature_one_is_bit_identical():
    _, probs = _overconfident(50, seed=3)
    assert np.array_equal(apply_temperature(probs, 1.0), probs)
    # softmax(log p / T) by hand: T = 2 takes square roots, 0.8 : 0.2 -> sqrt 0.8 : sqrt 0.2 = 2 : 1
    assert np.allclose(apply_temperature(np.array([[0.8, 0.2]]), 2.0), [[2 / 3, 1 / 3]], rtol=0, atol=1e-12)
    assert np.allclose(apply_temperature(np.array([[0.5, 0.25, 0.25]]), 0.5), [[2 / 3, 1 / 6, 1 / 6]], atol=1e-12)
    scaled = apply_temperature(probs, 2.0)
    assert np.allclose(scaled.sum(1), 1) and np.array_equal(scaled.argmax(1), probs.argmax(1))
    assert log_loss([0] * 50, scaled, labels=[0, 1, 2, 3]) != log_loss([0] * 50, probs, labels=[0, 1, 2, 3])


def test_operating_points_hand_example():
    positive = np.array([True] * 5 + [False] * 5)
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.3, 0.5, 0.4, 0.2, 0.1, 0.05])
    points = choose_thresholds(positive, scores, target_sensitivities=(0.8, 0.9))
    assert [p.name for p in points] == ["sens>=0.8", "sens>=0.9", "youden"]
    assert [p.threshold for p in points] == [0.6, 0.3, 0.6]
    assert [p.val_specificity for p in points] == [1.0, 0.6, 1.0]
    results = evaluate_operating_points(positive, scores, points, n_bootstrap=0)
    r = results[1]
    assert (r.tp, r.fp, r.tn, r.fn) == (5, 2, 3, 0)
    assert (r.sensitivity.value, r.specificity.value, r.ppv.value, r.npv.value) == pytest.approx((1, 0.6, 5 / 7, 1))
    boot = evaluate_operating_points(positive, scores, points, n_bootstrap=200)[1]
    assert boot.ppv.low <= 5 / 7 <= boot.ppv.high
    assert boot.sensitivity.low == boot.sensitivity.high == 1.0  # every positive is above 0.3 in every resample
    assert question_auroc(positive, scores, n_bootstrap=0).value == pytest.approx(23 / 25)  # 0.3 ranks below negatives 0.5, 0.4


def test_binary_scores_sum_positive_classes_and_name_bad_classes():
    probs = np.array([[0.1, 0.2, 0.3, 0.4]])
    names = ["akiec", "bcc", "mel", "nv"]
    assert binary_scores(probs, names, ["mel", "bcc", "akiec"]) == pytest.approx([0.6])
    with pytest.raises(ValueError, match=r"\['melanoma'\].*akiec"):
        binary_scores(probs, names, ["melanoma"])


@pytest.mark.parametrize("method", ["lac", "aps"])
def test_conformal_coverage_on_exchangeable_data(method):
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(6000, 4)) * 1.5
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = (probs.cumsum(1) > rng.random((6000, 1))).argmax(1)  # labels drawn from the model
    alpha = 0.1
    q = conformal_quantile(labels[:2000], probs[:2000], alpha, method)
    result = evaluate_prediction_sets(labels[2000:], probs[2000:], list("abcd"), q, method, alpha, 2000, n_bootstrap=200)
    sampling_error = 3 * np.sqrt(alpha * (1 - alpha) / 4000)
    assert result.coverage.value >= 1 - alpha - sampling_error
    if method == "lac":  # non-randomised APS is conservative by design (~0.99 here)
        assert result.coverage.value <= 1 - alpha + 0.02
    assert 1 < result.mean_size.value < 4
    assert result.coverage.low <= result.coverage.value <= result.coverage.high
    assert sum(result.size_counts.values()) == 4000


@pytest.mark.parametrize("method", ["lac", "aps"])
def test_perfect_classifier_gives_singletons(method):
    labels = np.tile(np.arange(3), 20)
    probs = np.eye(3)[labels]
    q = conformal_quantile(labels, probs, 0.1, method)
    sets = prediction_sets(probs, q, method)
    assert (sets.sum(1) == 1).all() and sets[np.arange(60), labels].all()
    assert format_set(sets[1], ["benign", "malignant", "normal"]) == "malignant"
    assert format_set([True, True, False], ["benign", "malignant", "normal"]) == "benign|malignant"


def test_conformal_too_few_calibration_images_takes_every_class():
    q = conformal_quantile(np.array([0, 1]), np.array([[0.9, 0.1], [0.2, 0.8]]), alpha=0.1)
    assert q == float("inf")
    assert prediction_sets(np.array([[0.99, 0.01]]), q).all()
    with pytest.raises(ValueError, match="alpha"):
        conformal_quantile(np.array([0]), np.array([[1.0, 0.0]]), alpha=1.5)


def test_age_bands():
    assert age_bands([5, 20, 45.0, 80, 95, "", "abc", None, "35"]) == [
        "0-19", "20-39", "40-59", "80+", "80+", "unknown", "unknown", "unknown", "20-39"
    ]


def test_subgroups_recall_worst_group_and_small_groups():
    # classes benign(0)/malignant(1); question: malignant. Group "a": perfect; "b": misses half the
    # malignant images; "c": 4 images (too small for a CI or for "worst").
    labels = np.array([0, 1] * 10 + [0, 1] * 10 + [0, 1, 1, 0])
    pred_b = np.array([0, 1, 0, 0] * 5)
    preds = np.concatenate([labels[:20], pred_b, [1, 0, 0, 1]])
    probs = np.where(np.eye(2)[preds] == 1, 0.8, 0.2)
    groups = ["a"] * 20 + ["b"] * 20 + ["c"] * 4
    table = subgroup_table(labels, probs, groups, "site", positive_labels=[1], n_bootstrap=200)
    by = {g.value: g for g in table.groups}
    assert [g.n for g in table.groups] == [20, 20, 4]
    assert by["a"].recall.value == 1.0 and by["b"].recall.value == 0.5 and by["c"].recall.value == 0.0
    assert by["b"].balanced_accuracy.value == pytest.approx(0.75)
    assert by["a"].auroc.value == 1.0 and by["b"].auroc.value == pytest.approx(0.75)
    assert by["c"].small and np.isnan(by["c"].recall.low)
    assert not np.isnan(by["b"].recall.low) and by["b"].recall.low <= 0.5 <= by["b"].recall.high
    assert table.worst == {"recall": "b", "balanced_accuracy": "b", "auroc": "b"}
    assert by["b"].n_positive == 10
    few = subgroup_table(labels, probs, groups, "site", positive_labels=[1], min_size=11, n_bootstrap=50)
    by = {g.value: g for g in few.groups}
    assert not by["b"].small and np.isnan(by["b"].recall.low) and not np.isnan(by["b"].balanced_accuracy.low)
    assert few.worst == {"recall": None, "balanced_accuracy": "b", "auroc": None}  # 10 positives < 11


def _fold_models(rng, n, k, folds, spread):
    """Probabilities of ``folds`` fold models: one shared signal plus each model's own noise (``spread``)."""
    logits = rng.normal(size=(n, k)) * 1.5
    truth = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = (truth.cumsum(1) > rng.random((n, 1))).argmax(1)
    models = []
    for _ in range(folds):
        noisy = logits + rng.normal(size=logits.shape) * spread
        models.append(np.exp(noisy) / np.exp(noisy).sum(1, keepdims=True))
    return labels, models


@pytest.mark.parametrize("method", ["lac", "aps"])
def test_cv_plus_covers_new_images_at_the_nominal_rate(method):
    rng = np.random.default_rng(3)
    folds, alpha, n_oof, n_test = 5, 0.1, 1500, 3000
    labels, models = _fold_models(rng, n_oof + n_test, 4, folds, spread=0.5)
    fold_of = np.arange(n_oof) % folds  # out-of-fold: image i predicted by the model of its fold
    oof = np.stack([models[f][i] for i, f in enumerate(fold_of)])
    member = cv_plus_sets(labels[:n_oof], oof, fold_of, {f: models[f][n_oof:] for f in range(folds)}, alpha, method)
    result = evaluate_set_membership(labels[n_oof:], member, list("abcd"), method, alpha, n_calibration=n_oof,
                                     n_bootstrap=100)
    sampling_error = 3 * np.sqrt(alpha * (1 - alpha) / n_test)
    assert result.coverage.value >= 1 - alpha - sampling_error
    if method == "lac":
        assert result.coverage.value <= 1 - alpha + 0.03
    assert sum(result.size_counts.values()) == n_test


def test_cv_plus_with_identical_fold_models_is_split_conformal():
    rng = np.random.default_rng(5)
    labels, (model,) = _fold_models(rng, 900, 3, 1, spread=0.0)
    fold_of = np.arange(600) % 3
    member = cv_plus_sets(labels[:600], model[:600], fold_of, {f: model[600:] for f in range(3)}, 0.1, "lac")
    residuals = 1 - model[np.arange(600), labels[:600]]
    q = np.sort(residuals)[int(np.ceil(0.9 * 601)) - 1]  # the ceil((n + 1)(1 - alpha))-th smallest score
    np.testing.assert_array_equal(member, 1 - model[600:] <= q)
    assert q <= conformal_quantile(labels[:600], model[:600], 0.1, "lac")  # numpy's 'higher' quantile: a step above
    with pytest.raises(ValueError, match="folds \\[2\\] have none"):
        cv_plus_sets(labels[:600], model[:600], fold_of, {0: model[600:], 1: model[600:]})
