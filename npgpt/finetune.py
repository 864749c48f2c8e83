"""Fine-tuning a ``GPTClassifier`` on labelled text: data files, batches, the loop, the metrics.

Companion of ``docs/finetuning.md``.

The pieces, in the order data flows through them:

* :func:`read_labelled_file` reads a CSV, TSV or JSONL file into texts and
  raw labels, with errors that name the file, the row and the problem.
* :class:`LabelSet` turns raw labels ("neg", "pos", or 0/1) into class ids
  and back, and refuses labels outside the expected set.
* :func:`split_indices` makes a fixed, seeded train/validation/test split.
* :func:`pad_batch` pads token ids into a (B, T) array with the attention
  mask the classifier needs (1 = real token, 0 = padding).
* :func:`freeze` keeps all but the last k blocks (and the head) fixed.
* :func:`finetune` trains with ``npgpt.train``'s optimizer, clipping,
  schedule and checkpoint writing, evaluates on a held-out split after each
  epoch and stops early when the validation loss stops improving.
* :func:`classification_metrics` computes accuracy, precision, recall, F1
  (docs/finetuning.md eqs. 9-11) and the confusion matrix.
"""

import csv
import json
import pathlib

import numpy as np

from npgpt import backend

__all__ = ["read_labelled_file", "LabelSet", "split_indices", "pad_batch", "classification_metrics",
           "format_metrics", "freeze", "FinetuneConfig", "finetune", "evaluate", "predict"]


# ----------------------------------------------------------------- data files
def _format_of(path, fmt=None):
    if fmt is not None:
        fmt = fmt.lower()
        if fmt not in ("csv", "tsv", "jsonl"):
            raise ValueError(f"unknown data format {fmt!r}: use csv, tsv or jsonl")
        return fmt
    suffix = pathlib.Path(path).suffix.lower()
    known = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
    if suffix not in known:
        raise ValueError(f"cannot tell the format of {path} from its extension {suffix!r}: "
                         "name it .csv, .tsv or .jsonl, or pass fmt='csv'|'tsv'|'jsonl'")
    return known[suffix]


def _column_index(column, header, path, header_row):
    """Where ``column`` (a name, or an integer position for header-less files) is."""
    if header_row:
        if column in header:
            return header.index(column)
        raise KeyError(f"column {column!r} is not in {path}; its columns are {header}")
    try:
        index = int(column)
    except (TypeError, ValueError):
        raise KeyError(f"{path} is read without a header, so columns are numbers (0, 1, ...), "
                       f"not {column!r}") from None
    if not 0 <= index < len(header):
        raise KeyError(f"column {index} does not exist in {path}: its first row has {len(header)} columns")
    return index


def read_labelled_file(path, text_column="text", label_column="label", fmt=None, header=True):
    """Read ``(texts, raw_labels)`` from a CSV, TSV or JSONL file.

    CSV/TSV files have a header row naming the columns (``header=False``:
    columns are then numbers, 0 for the first); JSONL files have one JSON
    object per line. Leading and trailing white space of texts is removed.
    Raises ``KeyError`` for a missing column and ``ValueError`` for an empty
    text or label, naming the file and the 1-based line.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    fmt = _format_of(path, fmt)
    texts, labels = [], []

    def add(line_no, text, label):
        text = "" if text is None else str(text).strip()
        if not text:
            raise ValueError(f"{path}, line {line_no}: empty text in column {text_column!r}")
        if label is None or (isinstance(label, str) and not label.strip()):
            raise ValueError(f"{path}, line {line_no}: empty label in column {label_column!r}")
        texts.append(text)
        labels.append(label.strip() if isinstance(label, str) else label)

    if fmt == "jsonl":
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}, line {line_no}: not valid JSON ({exc.msg})") from None
                if not isinstance(record, dict):
                    raise ValueError(f"{path}, line {line_no}: expected a JSON object, got {type(record).__name__}")
                for column in (text_column, label_column):
                    if column not in record:
                        raise KeyError(f"{path}, line {line_no}: no field {column!r}; "
                                       f"the record has {sorted(record)}")
                add(line_no, record[text_column], record[label_column])
    else:
        delimiter = "," if fmt == "csv" else "\t"
        # newline="" lets the csv module handle quoted newlines and CRLF line ends itself.
        with open(path, encoding="utf-8", newline="") as f:
            # TSV has no quoting (IANA text/tab-separated-values): a text may start with '"'.
            quoting = csv.QUOTE_MINIMAL if fmt == "csv" else csv.QUOTE_NONE
            rows = csv.reader(f, delimiter=delimiter, quoting=quoting)
            first = next(rows, None)
            if first is None:
                raise ValueError(f"{path} is empty")
            t = _column_index(text_column, first, path, header)
            y = _column_index(label_column, first, path, header)
            body = rows if header else _prepend(first, rows)
            start = 2 if header else 1
            for line_no, row in enumerate(body, start):
                if not row:                               # a blank line
                    continue
                if max(t, y) >= len(row):
                    raise ValueError(f"{path}, line {line_no}: {len(row)} columns, but column "
                                     f"{max(t, y)} is needed")
                add(line_no, row[t], row[y])
    if not texts:
        raise ValueError(f"{path} holds no examples")
    return texts, labels


def _prepend(first, rows):
    yield first
    yield from rows


class LabelSet:
    """The classes of a task: names in a fixed order, class id = position in it.

    ``LabelSet(["neg", "pos"])``: "neg" is class 0, "pos" class 1. Without
    names, :meth:`infer` takes the sorted distinct raw labels (numerically
    when they all are numbers, so "2" comes before "10").
    """

    def __init__(self, names):
        names = [str(n) for n in names]
        if len(names) < 2:
            raise ValueError(f"a classification task needs at least two classes, got {names}")
        if len(set(names)) != len(names):
            raise ValueError(f"class names must be distinct, got {names}")
        self.names = names
        self.index = {n: i for i, n in enumerate(names)}

    @classmethod
    def infer(cls, raw_labels):
        distinct = {str(v) for v in raw_labels}
        try:
            ordered = sorted(distinct, key=float)
        except ValueError:
            ordered = sorted(distinct)
        return cls(ordered)

    def __len__(self):
        return len(self.names)

    def encode(self, raw_labels, source="the data"):
        """Class ids (int64 array) of raw labels; an unknown label is an error naming it."""
        ids = []
        for i, value in enumerate(raw_labels):
            key = str(value)
            if key not in self.index:
                raise ValueError(f"label {value!r} (example {i + 1} of {source}) is not one of the "
                                 f"expected labels {self.names}")
            ids.append(self.index[key])
        return np.asarray(ids, dtype=np.int64)

    @property
    def id2label(self):
        return {i: n for i, n in enumerate(self.names)}

    @property
    def label2id(self):
        return dict(self.index)


def split_indices(n, fractions=(0.8, 0.1, 0.1), seed=0):
    """A seeded random partition of ``range(n)`` into parts of the given fractions.

    The same ``n`` and ``seed`` always give the same parts, so a reported test
    accuracy can be reproduced. The last part takes the rounding remainder.
    """
    fractions = [float(f) for f in fractions]
    if any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f"split fractions must be non-negative and sum to 1, got {fractions}")
    order = np.random.default_rng(seed).permutation(n)
    bounds = np.cumsum([int(round(f * n)) for f in fractions[:-1]])
    return np.split(order, bounds)


def pad_batch(sequences, pad_id=0, side="right", max_length=None):
    """Pad token id lists into ``(idx, mask)``, both int64 arrays of shape (B, T).

    ``mask[b, t]`` is 1 for a real token and 0 for padding (the Hugging Face
    convention). ``side="left"`` puts the padding first. Sequences longer than
    ``max_length`` keep their *first* ``max_length`` tokens. The pad id may be
    any valid token id -- the classifier never looks at it, only at the mask.
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    sequences = [list(s)[:max_length] if max_length else list(s) for s in sequences]
    if not sequences:
        raise ValueError("pad_batch needs at least one sequence")
    for i, s in enumerate(sequences):
        if not s:
            raise ValueError(f"sequence {i} is empty: every example needs at least one token")
    T = max(len(s) for s in sequences)
    idx = np.full((len(sequences), T), int(pad_id), dtype=np.int64)
    mask = np.zeros((len(sequences), T), dtype=np.int64)
    for b, s in enumerate(sequences):
        cols = slice(0, len(s)) if side == "right" else slice(T - len(s), T)
        idx[b, cols] = s
        mask[b, cols] = 1
    return idx, mask


# --------------------------------------------------------------------- metrics
def classification_metrics(y_true, y_pred, num_classes=None, label_names=None):
    """Accuracy, precision, recall, F1 and the confusion matrix.

    ``confusion[i, j]`` counts examples of true class ``i`` predicted as ``j``.
    For class ``c``, with TP, FP, FN read off the matrix (eqs. 9-11)::

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


def format_metrics(metrics):
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
