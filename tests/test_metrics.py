"""Classification metrics (npgpt.finetuning.metrics; docs/finetuning.md eq:precision, eq:recall, eq:f1): accuracy, precision,
recall, F1, the confusion matrix, macro averages."""

import pytest

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
