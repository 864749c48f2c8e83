"""Classification metrics (npgpt.finetuning.metrics; docs/finetuning.md eq:precision, eq:recall, eq:f1): accuracy, precision,
recall, F1, the confusion matrix, macro averages, the decision threshold chosen on validation (eq:threshold)."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npgpt.finetuning import metrics


# --------------------------------------------------------------------- metrics
def test_metrics_match_hand_counts():
    # docs/finetuning.md eq:precision, eq:recall and eq:f1: precision = TP/(TP+FP), recall = TP/(TP+FN), F1 = 2PR/(P+R).
    y_true = [1, 1, 1, 0, 0, 0, 0, 1]
    y_pred = [1, 1, 0, 0, 0, 1, 0, 1]
    m = metrics.classification_metrics(y_true, y_pred, num_classes=2, label_names=["neg", "pos"])
    tp, fp, fn = 3, 1, 1
    assert m["confusion"].tolist() == [[3, 1], [1, 3]]
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["precision"] == pytest.approx(tp / (tp + fp))
    assert m["recall"] == pytest.approx(tp / (tp + fn))
    p, r = m["precision"], m["recall"]
    assert m["f1"] == pytest.approx(2 * p * r / (p + r))
    assert m["per_class"]["neg"]["support"] == 4
    text = metrics.format_metrics(m)
    assert "accuracy 0.750" in text and "pos" in text


def test_multiclass_metrics_are_macro_averages_and_zero_safe():
    m = metrics.classification_metrics([0, 1, 2, 2], [0, 2, 2, 2], num_classes=3)
    # class 1 is never predicted: its precision is 0 by convention, not NaN
    assert m["per_class"]["1"]["precision"] == 0.0
    assert m["precision"] == pytest.approx((1 + 0 + 2 / 3) / 3)
    assert m["recall"] == pytest.approx((1 + 0 + 1) / 3)
    assert m["confusion"].sum() == 4


def _accuracy(p, y, t):
    return float(((np.asarray(p) > t).astype(int) == np.asarray(y)).mean())


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0.0, 0.1, 0.3, 0.5, 0.52, 0.7, 0.9, 1.0]) | st.floats(0, 1),
                          st.integers(0, 1)), min_size=1, max_size=40))
def test_decision_threshold_is_the_most_accurate_and_nearest_half(pairs):
    # docs/finetuning.md eq:threshold: t* = argmax_t #{i : [p_i > t] = y_i}, ties to the t nearest 0.5.
    p, y = np.array([a for a, _ in pairs]), np.array([b for _, b in pairs])
    t = metrics.decision_threshold(p, y)
    # Brute force over every distinct cut: below all, each probability itself, and 0.5.
    candidates = np.concatenate([[np.nextafter(p.min(), -np.inf), 0.5], p])
    best = max(_accuracy(p, y, c) for c in candidates)
    assert _accuracy(p, y, t) == best
    nearest = min(abs(c - 0.5) for c in candidates if _accuracy(p, y, c) == best)
    # Within a gap every threshold predicts the same, so the gap's point nearest 0.5 may lie strictly inside it.
    assert abs(t - 0.5) <= nearest + 1e-12


def test_decision_threshold_keeps_half_for_a_calibrated_classifier_and_moves_for_a_shifted_one():
    p, y = np.array([0.1, 0.4, 0.6, 0.9]), np.array([0, 0, 1, 1])
    assert metrics.decision_threshold(p, y) == 0.5
    shifted = p - 0.3                                      # leans negative: positives at 0.3 and 0.6
    t = metrics.decision_threshold(shifted, y)
    assert 0.1 <= t < 0.3 and _accuracy(shifted, y, t) == 1.0 and _accuracy(shifted, y, 0.5) == 0.75
    with pytest.raises(ValueError, match="binary"):
        metrics.decision_threshold([0.2, 0.8], [0, 2])
    with pytest.raises(ValueError, match="binary"):
        metrics.decision_threshold([0.2, 0.8], [0, 0.7])              # not silently cast to 0
    with pytest.raises(ValueError, match="finite probabilities; 1 are NaN"):
        metrics.decision_threshold([np.nan, 0.8], [0, 1])
    with pytest.raises(ValueError, match="as many labels"):
        metrics.decision_threshold([0.2, 0.8], [0])


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_decision_threshold_is_exact_in_the_probabilities_own_precision(dtype):
    # A threshold just below 0.3, computed in float64, rounds back onto float32's 0.3 when the rule
    # compares it with the float32 array: the sentence at 0.3 would be called negative.
    rng = np.random.default_rng(0)
    for _ in range(200):
        p = rng.random(7).astype(dtype)
        y = rng.integers(0, 2, 7)
        t = metrics.decision_threshold(p, y)
        candidates = np.concatenate([[np.nextafter(p.min(), dtype(-np.inf))], p, [dtype(0.5)]])
        assert _accuracy(p, y, t) == max(_accuracy(p, y, c) for c in candidates)
    p = np.array([0.3, 0.6], dtype=dtype)
    assert _accuracy(p, [1, 1], metrics.decision_threshold(p, [1, 1])) == 1.0


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=60))
def test_mcnemar_exact_is_the_binomial_tail_of_the_disagreements(pairs):
    # docs/finetuning.md eq:mcnemar: p = min(1, 2 sum_{k<=min(b,c)} C(n,k) 2^-n) over the n = b + c disagreements.
    a, b_right = np.array([x for x, _ in pairs]), np.array([y for _, y in pairs])
    b, c, p = metrics.mcnemar_exact(a, b_right)
    assert b == int((a & ~b_right).sum()) and c == int((~a & b_right).sum())
    n = b + c
    # The same tail from the probabilities of a fair coin's outcomes, summed in floats.
    probabilities = [math.comb(n, k) * 0.5 ** n for k in range(n + 1)]
    tail = sum(q for q in probabilities if q <= probabilities[min(b, c)] * (1 + 1e-12))
    assert p == pytest.approx(min(1.0, tail), rel=1e-9) if b != c else p == 1.0
    assert metrics.mcnemar_exact(b_right, a)[2] == p                        # symmetric


def test_mcnemar_exact_hand_values_and_bad_input():
    assert metrics.mcnemar_exact([1, 1, 1, 0], [0, 0, 0, 0]) == (3, 0, 0.25)     # 2 * 1/8
    assert metrics.mcnemar_exact([1, 0], [1, 0]) == (0, 0, 1.0)                  # no disagreement
    with pytest.raises(ValueError, match="same examples"):
        metrics.mcnemar_exact([1, 0], [1])
