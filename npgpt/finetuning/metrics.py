"""Classification metrics: accuracy, precision, recall, F1 and the confusion matrix.

Companion of ``docs/finetuning.md`` (section "Measuring a classifier", eq:precision, eq:recall, eq:f1, eq:threshold).

Host-side bookkeeping on NumPy arrays (device arrays are copied to the host
first): these run once per evaluation, not in a training step.

Depends on ``npgpt.backend``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Optional

import numpy as np
from numpy.typing import ArrayLike

from npgpt import backend
from npgpt.backend import Array

__all__ = ["classification_metrics", "decision_threshold", "format_metrics", "mcnemar_exact"]


def classification_metrics(y_true: ArrayLike | Array, y_pred: ArrayLike | Array, num_classes: Optional[int] = None,
                           label_names: Optional[Iterable[str]] = None) -> dict[str, Any]:
    """Accuracy, precision, recall, F1 and the confusion matrix.

    ``confusion[i, j]`` counts examples of true class ``i`` predicted as ``j``.
    For class ``c``, with TP, FP, FN read off the matrix (eq:precision, eq:recall, eq:f1)::

        precision = TP / (TP + FP),  recall = TP / (TP + FN),
        F1 = 2 precision recall / (precision + recall)

    (0 where a denominator is 0). With two classes the headline ``precision``,
    ``recall`` and ``f1`` are those of class 1, "positive"; with more they are
    the unweighted means over classes ("macro" averages). Per-class values
    are in ``per_class``.
    """
    y_true = backend.to_numpy(y_true).astype(np.int64).reshape(-1)
    y_pred = backend.to_numpy(y_pred).astype(np.int64).reshape(-1)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"{y_true.size} true labels but {y_pred.size} predictions")
    if y_true.size == 0:
        raise ValueError("metrics of an empty set are undefined")
    k = int(num_classes) if num_classes is not None else int(max(y_true.max(), y_pred.max())) + 1
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (y_true, y_pred), 1)          # host-side bookkeeping, not a compute path
    tp = np.diag(confusion).astype(np.float64)
    predicted = confusion.sum(axis=0).astype(np.float64)  # TP + FP per class
    actual = confusion.sum(axis=1).astype(np.float64)     # TP + FN per class
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros(k), where=actual > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros(k), where=both > 0)
    names = list(label_names) if label_names is not None else [str(i) for i in range(k)]
    result = {"accuracy": float(tp.sum() / y_true.size), "confusion": confusion, "labels": names,
              "per_class": {names[c]: {"precision": float(precision[c]), "recall": float(recall[c]),
                                       "f1": float(f1[c]), "support": int(actual[c])} for c in range(k)}}
    if k == 2:
        result.update(precision=float(precision[1]), recall=float(recall[1]), f1=float(f1[1]))
    else:
        result.update(precision=float(precision.mean()), recall=float(recall.mean()), f1=float(f1.mean()))
    return result


def decision_threshold(p_positive: ArrayLike | Array, y_true: ArrayLike | Array) -> float:
    """The threshold ``t`` on P(positive) that makes the rule "positive when p > t" most accurate on ``y_true``.

    Choose it on validation data and apply it to the test set: a classifier whose probabilities are
    shifted (early stopping can keep one that leans to a class) then decides where the labelled data
    say the classes part, not at 0.5 by habit. Every threshold between two neighbouring distinct
    probabilities gives the same predictions, so the candidates are those gaps; of the equally accurate
    ones the threshold nearest 0.5 is returned (0.5 itself when its gap is among them), so a
    calibrated classifier keeps 0.5. Sorting makes this O(N log N)::

        t* = argmax_t  #{i : [p_i > t] = y_i}      (eq:threshold; ties: the t nearest 0.5)
    """
    p = backend.to_numpy(p_positive).reshape(-1)
    # The threshold lives in the probabilities' own precision: one just below a float32 probability,
    # computed in float64, would round back onto it when compared with the float32 array.
    p = p.astype(p.dtype if np.issubdtype(p.dtype, np.floating) else np.float64)
    labels = backend.to_numpy(y_true).reshape(-1)
    if p.shape != labels.shape or p.size == 0:
        raise ValueError(f"need as many labels as probabilities (got {labels.size} and {p.size}), at least one")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("decision_threshold needs binary labels 0 and 1")
    if not np.isfinite(p).all():
        raise ValueError(f"decision_threshold needs finite probabilities; {int((~np.isfinite(p)).sum())} are NaN or inf")
    y = labels.astype(np.int64)
    order = np.argsort(p, kind="stable")
    p, y = p[order], y[order]
    # Cut k: the k smallest probabilities are called negative, the rest positive (k = 0 .. N).
    negatives_below = np.concatenate([[0], np.cumsum(y == 0)])
    positives_above = int(y.sum()) - np.concatenate([[0], np.cumsum(y == 1)])
    correct = negatives_below + positives_above
    infinity = np.array([np.inf], dtype=p.dtype)
    lo = np.concatenate([-infinity, p])          # a threshold in [lo_k, hi_k) makes cut k
    hi = np.concatenate([p, infinity])
    possible = lo < hi                           # no cut between two equal probabilities
    below = np.nextafter(hi, -np.inf)            # the largest threshold of a gap that ends at or below 0.5
    distance = np.where(lo > 0.5, lo - 0.5, np.where(hi <= 0.5, 0.5 - below.astype(np.float64), 0.0))
    best = np.flatnonzero(possible & (correct == correct[possible].max()))
    k = best[np.argmin(distance[best])]
    if lo[k] <= 0.5 < hi[k]:
        return 0.5
    return float(lo[k]) if lo[k] > 0.5 else float(below[k])


def mcnemar_exact(correct_a: ArrayLike, correct_b: ArrayLike) -> tuple[int, int, float]:
    """Two classifiers scored on the same examples: is one more accurate, or is the gap chance?

    ``correct_a``, ``correct_b``: per example, whether each model got it right. Only the examples
    where they disagree say anything: ``b`` right for A alone, ``c`` for B alone. If the models
    were equally good each such example would be a fair coin, so McNemar's exact test is the
    binomial's two-sided tail at ``n = b + c`` (eq:mcnemar)::

        p = min(1, 2 sum_{k=0}^{min(b, c)} C(n, k) / 2^n)

    Returns ``(b, c, p)``. Pairing matters: the two accuracies' own error bars would overlap far
    more than the test says, since the examples both get right or both get wrong cancel.
    """
    a = np.asarray(correct_a, dtype=bool).reshape(-1)
    b_right = np.asarray(correct_b, dtype=bool).reshape(-1)
    if a.shape != b_right.shape:
        raise ValueError(f"the two models must be scored on the same examples ({a.size} against {b_right.size})")
    b, c = int((a & ~b_right).sum()), int((~a & b_right).sum())
    n = b + c
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1))      # exact integers: no underflow at large n
    return b, c, min(1.0, 2 * tail / 2 ** n) if n else 1.0


def format_metrics(metrics: dict[str, Any]) -> str:
    """The metrics as a short human-readable report (a few lines of text)."""
    names = metrics["labels"]
    width = max(6, max(len(n) for n in names))
    lines = [f"accuracy {metrics['accuracy']:.3f}  precision {metrics['precision']:.3f}  "
             f"recall {metrics['recall']:.3f}  F1 {metrics['f1']:.3f}",
             "confusion matrix (rows: true class, columns: predicted):",
             " " * (width + 2) + " ".join(f"{n:>{width}}" for n in names)]
    for name, row in zip(names, metrics["confusion"]):
        lines.append(f"{name:>{width}}  " + " ".join(f"{int(v):>{width}}" for v in row))
    return "\n".join(lines)
