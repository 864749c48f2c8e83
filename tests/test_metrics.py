"""Classification metrics (npgpt.finetuning.metrics; docs/finetuning.md eq:precision, eq:recall, eq:f1): accuracy, precision,
recall, F1, the confusion matrix, macro averages, the decision threshold chosen on validation (eq:threshold)."""

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
    with pytest.raises(ValueError, match="as many labels"):
        metrics.decision_threshold([0.2, 0.8], [0])
