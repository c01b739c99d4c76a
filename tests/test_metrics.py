"""medvit.metrics: hand-checked values, scikit-learn agreement of every bootstrap resample, CI behaviour."""

import numpy as np
import pytest
from sklearn.metrics import (
    balanced_accuracy_score,
    cohen_kappa_score,
    multilabel_confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

from medvit.metrics import (
    bootstrap_auroc,
    compute_metrics,
    confusion_matrices,
    scores_from_confusion,
    stratified_bootstrap_indices,
)

CLASSES = ["a", "b", "c"]


def _one_hot_probs(pred: np.ndarray, k: int, confidence: float = 0.8) -> np.ndarray:
    probs = np.full((pred.size, k), (1 - confidence) / (k - 1))
    probs[np.arange(pred.size), pred] = confidence
    return probs


def _hand_example() -> tuple[np.ndarray, np.ndarray]:
    """Confusion matrix (rows true, cols predicted) [[4, 1, 0], [0, 2, 1], [1, 0, 1]]."""
    y = np.array([0] * 5 + [1] * 3 + [2] * 2)
    pred = np.array([0, 0, 0, 0, 1] + [1, 1, 2] + [2, 0])
    return y, pred


def test_hand_checked_confusion_matrix():
    y, pred = _hand_example()
    m = compute_metrics(y, _one_hot_probs(pred, 3), CLASSES, n_bootstrap=0)
    assert m.confusion == [[4, 1, 0], [0, 2, 1], [1, 0, 1]]
    # precision = column diagonal / column sum; recall = row diagonal / row sum
    assert [c.precision.value for c in m.per_class] == pytest.approx([4 / 5, 2 / 3, 1 / 2])
    assert [c.recall.value for c in m.per_class] == pytest.approx([4 / 5, 2 / 3, 1 / 2])
    # specificity = TN / (TN + FP): class a: TN 4, FP 1; b: TN 6, FP 1; c: TN 7, FP 1
    assert [c.specificity.value for c in m.per_class] == pytest.approx([4 / 5, 6 / 7, 7 / 8])
    assert [c.f1.value for c in m.per_class] == pytest.approx([0.8, 2 / 3, 0.5])
    assert [c.support for c in m.per_class] == [5, 3, 2]
    assert m.accuracy.value == pytest.approx(0.7)
    assert m.balanced_accuracy.value == pytest.approx((0.8 + 2 / 3 + 0.5) / 3)
    assert m.macro["precision"].value == pytest.approx((0.8 + 2 / 3 + 0.5) / 3)
    assert m.weighted["recall"].value == pytest.approx(0.7)  # support-weighted recall = accuracy
    assert m.qwk is None
    assert np.isnan(m.accuracy.low)  # no bootstrap, no interval


def test_qwk_perfect_and_anticorrelated():
    y = np.tile(np.arange(5), 10)
    names = [str(i) for i in range(5)]
    perfect = compute_metrics(y, _one_hot_probs(y, 5), names, is_ordinal=True, n_bootstrap=50)
    assert perfect.qwk.value == pytest.approx(1.0)
    reversed_ = compute_metrics(y, _one_hot_probs(4 - y, 5), names, is_ordinal=True, n_bootstrap=50)
    assert reversed_.qwk.value < 0
    assert reversed_.qwk.value == pytest.approx(-1.0)


def test_ci_width_shrinks_with_n():
    y, pred = _hand_example()
    probs = _one_hot_probs(pred, 3)
    small = compute_metrics(y, probs, CLASSES, n_bootstrap=1000, seed=1)
    large = compute_metrics(np.tile(y, 20), np.tile(probs, (20, 1)), CLASSES, n_bootstrap=1000, seed=1)
    assert small.accuracy.value == large.accuracy.value
    width = lambda e: e.high - e.low  # noqa: E731
    assert width(large.accuracy) < width(small.accuracy) / 2
    assert width(large.per_class[0].recall) < width(small.per_class[0].recall)
    assert small.accuracy.low <= small.accuracy.value <= small.accuracy.high


def test_bootstrap_resamples_agree_with_sklearn():
    rng = np.random.default_rng(0)
    n, k = 300, 4
    y = rng.integers(0, k, n)
    probs = rng.dirichlet(np.ones(k), n)
    probs[np.arange(n), y] += rng.uniform(0, 0.6, n)
    probs /= probs.sum(1, keepdims=True)
    pred = probs.argmax(1)
    idx = stratified_bootstrap_indices(y, 20, seed=3)
    assert (np.bincount(y[idx[7]], minlength=k) == np.bincount(y, minlength=k)).all()  # stratified
    scores = scores_from_confusion(confusion_matrices(y[idx], pred[idx], k))
    auroc = bootstrap_auroc(probs, y, idx)
    for r in range(5):
        yt, yp = y[idx[r]], pred[idx[r]]
        p, rc, f, _ = precision_recall_fscore_support(yt, yp, labels=range(k), zero_division=0)
        mcm = multilabel_confusion_matrix(yt, yp, labels=range(k))
        np.testing.assert_allclose(scores["precision"][r], p)
        np.testing.assert_allclose(scores["recall"][r], rc)
        np.testing.assert_allclose(scores["f1"][r], f)
        np.testing.assert_allclose(scores["specificity"][r], mcm[:, 0, 0] / (mcm[:, 0, 0] + mcm[:, 0, 1]))
        assert scores["balanced_accuracy"][r] == pytest.approx(balanced_accuracy_score(yt, yp))
        assert scores["qwk"][r] == pytest.approx(cohen_kappa_score(yt, yp, labels=range(k), weights="quadratic"))
        for c in range(k):
            assert auroc[r, c] == pytest.approx(roc_auc_score(yt == c, probs[idx[r], c]))


def test_bootstrap_is_seeded():
    rng = np.random.default_rng(1)
    n, k = 300, 7
    y = rng.integers(0, k, n)
    probs = rng.dirichlet(np.ones(k), n)
    a = compute_metrics(y, probs, list("abcdefg"), is_ordinal=True, n_bootstrap=200, seed=5)
    b = compute_metrics(y, probs, list("abcdefg"), is_ordinal=True, n_bootstrap=200, seed=5)
    c = compute_metrics(y, probs, list("abcdefg"), is_ordinal=True, n_bootstrap=200, seed=6)
    assert a.to_dict() == b.to_dict()
    assert a.to_dict() != c.to_dict()


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="probabilities must be"):
        compute_metrics([0, 1], np.ones((2, 2)), CLASSES)
    with pytest.raises(ValueError, match="labels must lie"):
        compute_metrics([0, 3], np.ones((2, 3)) / 3, CLASSES)
