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
* :func:`finetune` trains with the pretraining loop's own step
  (``npgpt.train.optimizer_step``: sharded backward, clipping, AdamW), the
  warmup + cosine schedule of ``npgpt.optim`` and the atomic checkpoint
  writer of ``npgpt.checkpoint``; it evaluates on a held-out split after each
  epoch and stops early when the validation loss stops improving.
* :func:`classification_metrics` computes accuracy, precision, recall, F1
  (docs/finetuning.md eqs. 9-11) and the confusion matrix.
"""

import collections
import csv
import dataclasses
import io
import json
import pathlib
from typing import Callable, Optional

import numpy as np

from npgpt import backend, fileio, settings
from npgpt.interrupt import GracefulStop
from npgpt.settings import setting

__all__ = ["read_labelled_file", "movie_reviews", "label_counts", "LabelSet", "split_indices", "pad_batch", "classification_metrics",
           "format_metrics", "freeze", "pad_id_for", "Encoded", "FinetuneConfig", "FinetuneResult", "finetune", "evaluate",
           "predict"]


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
    content = fileio.read_utf8(path, "data file")      # names the file and line of a non-UTF-8 byte
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
        # split("\n"), not splitlines(): a JSON string may hold U+2028, which splitlines() breaks at.
        for line_no, line in enumerate(content.split("\n"), 1):
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
        with io.StringIO(content, newline="") as f:
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


def movie_reviews(path=None):
    """The movie-review snippets of Hutto & Gilbert (2014) as ``(texts, labels)``.

    Fetched (pinned, sha256-checked) by ``npgpt.datasets.fetch("movie-reviews")``
    unless ``path`` is given. Each line is ``id<TAB>mean rating<TAB>text`` with
    ratings from -4 to +4; label 1 (positive) means rating > 0, label 0 rating
    < 0, and the 37 sentences rated exactly 0 are dropped: 10,568 texts, 5,242
    positive. Raises ``npgpt.datasets.DatasetUnavailable`` when it cannot fetch.
    """
    if path is None:
        from npgpt import datasets

        path = datasets.fetch("movie-reviews")
    texts, ratings = read_labelled_file(path, text_column=2, label_column=1, fmt="tsv", header=False)
    kept = [(t, float(r)) for t, r in zip(texts, ratings) if float(r) != 0.0]
    return [t for t, _ in kept], [int(r > 0) for _, r in kept]


def label_counts(raw_labels, source="the data", allow_many_classes=False, few=5):
    """Count the examples of each label; refuse labels that look like the wrong column.

    Returns ``(counts, warnings)``: a ``collections.Counter`` of the labels
    (as strings) and one warning line per class with fewer than ``few``
    examples (a typo such as "postive" makes a class of one). When there are
    more than two classes and more than half of them have a single example,
    the column is most likely not a label at all (a rating, an id, the text):
    that is a ``ValueError`` unless ``allow_many_classes``.
    """
    counts = collections.Counter(str(v) for v in raw_labels)
    singletons = sum(1 for n in counts.values() if n == 1)
    if len(counts) > 2 and singletons > len(counts) / 2 and not allow_many_classes:
        examples = ", ".join(repr(k) for k in list(counts)[:3])
        raise ValueError(f"{source} has {len(counts):,} distinct labels ({examples}, ...) and {singletons:,} of them "
                         "occur once: is --label-column the right column? Pass --allow-many-classes if it is")
    warnings = [f"class {name!r} has only {n} example{'s' if n != 1 else ''} in {source}"
                for name, n in sorted(counts.items()) if n < few]
    return counts, warnings


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


# ------------------------------------------------------------------- freezing
def freeze(classifier, train_last=None):
    """Choose what trains: everything (``None``) or the last ``train_last`` blocks + ``ln_f`` + head.

    ``train_last=0`` trains the head alone (a linear probe of frozen features).
    Frozen parameters get ``requires_grad = False``: the autograd engine then
    records no graph through them, so they cost a forward pass and nothing
    else. Returns the names of the trainable parameters.
    """
    n = len(classifier.transformer.h)
    if train_last is not None and not 0 <= int(train_last) <= n:
        raise ValueError(f"train_last must lie in 0..{n} (the model has {n} blocks), got {train_last}")
    prefixes = ["score."]
    if train_last is None:
        prefixes = [""]
    elif int(train_last) > 0:
        prefixes += ["transformer.ln_f."] + [f"transformer.h.{i}." for i in range(n - int(train_last), n)]
    trainable = []
    for name, p in classifier.named_parameters():
        p.requires_grad = any(name.startswith(prefix) for prefix in prefixes)
        if p.requires_grad:
            trainable.append(name)
    return trainable


# ---------------------------------------------------------------- the loop
@dataclasses.dataclass
class FinetuneConfig:
    """Settings of :func:`finetune` (every one has a default; ``npgpt finetune`` has a flag for each).

    ``warmup`` is a fraction of the steps (linear warmup before the cosine
    decay); ``head_lr`` defaults to ``lr`` (a fresh head can take a larger
    one); ``workers`` CPU threads (``npgpt.parallel``; ``None``: one per core
    without dropout, else 1).
    """

    epochs: int = setting(3, "passes over the training texts")
    batch_size: int = setting(32, "texts per optimizer step")
    lr: float = setting(1e-4, "peak learning rate of the backbone")
    head_lr: Optional[float] = setting(None, "peak learning rate of the new head (default: lr)")
    weight_decay: float = setting(0.01, "AdamW weight decay on matrices")
    beta1: float = setting(0.9, "AdamW beta1")
    beta2: float = setting(0.999, "AdamW beta2")
    eps: float = setting(1e-8, "AdamW epsilon")
    warmup: float = setting(0.1, "fraction of the steps with a linear warmup, in [0, 1)")
    grad_clip: float = setting(1.0, "clip the global gradient norm to this (0: off)")
    train_last: Optional[int] = setting(None, "train only the last K blocks, ln_f and the head "
                                              "(0: the head only; default: everything)")
    max_length: int = setting(128, "tokens kept per text (the start of longer texts)")
    pad_side: str = setting("right", "where padding goes: right or left")
    eval_every: Optional[int] = setting(None, "steps between evaluations (default: once per epoch)")
    patience: int = setting(2, "evaluations without a lower validation loss before stopping early")
    seed: int = setting(0, "seed of the split, the head's weights and the batch order")
    workers: Optional[int] = setting(None, "CPU threads to split each batch over (default: one per core)")

    def __post_init__(self):
        def fail(field, template):
            settings.fail("FinetuneConfig", field, template)

        for name in ("epochs", "batch_size", "max_length", "patience"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or value < 1:
                fail(name, f"{{name}} must be a positive integer, got {value!r}")
            setattr(self, name, int(value))
        for name in ("eval_every", "workers"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or int(value) != value or value < 1):
                fail(name, f"{{name}} must be a positive integer, got {value!r}")
        if self.train_last is not None and (int(self.train_last) != self.train_last or self.train_last < 0):
            fail("train_last", f"{{name}} must be a non-negative integer, got {self.train_last!r}")
        if not self.lr > 0:
            fail("lr", f"{{name}} must be positive, got {self.lr}")
        if self.head_lr is None:
            self.head_lr = self.lr
        if not self.head_lr > 0:
            fail("head_lr", f"{{name}} must be positive, got {self.head_lr}")
        if not 0.0 <= self.warmup < 1.0:
            fail("warmup", f"{{name}} is a fraction of the steps in [0, 1), got {self.warmup}")
        for name in ("weight_decay", "grad_clip"):
            if getattr(self, name) < 0:
                fail(name, f"{{name}} must be >= 0, got {getattr(self, name)}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                fail(name, f"{{name}} must lie in [0, 1), got {getattr(self, name)}")
        if not self.eps > 0:
            fail("eps", f"{{name}} must be positive, got {self.eps}")
        if self.pad_side not in ("left", "right"):
            fail("pad_side", f"{{name}} must be 'left' or 'right', got {self.pad_side!r}")


class Encoded:
    """Token ids of texts (truncated to ``max_length``) with their class ids."""

    def __init__(self, tokenizer, texts, labels, max_length):
        if len(texts) != len(labels):
            raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
        if not texts:
            raise ValueError("no examples to train or evaluate on")
        self.ids = []
        encode = _plain_text_encoder(tokenizer)
        for i, text in enumerate(texts):
            ids = list(encode(text))[:max_length]
            if not ids:
                raise ValueError(f"text {i + 1} ({text!r}) encodes to no tokens")
            self.ids.append(ids)
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self):
        return len(self.ids)

    def batch(self, rows, pad_id, side):
        idx, mask = pad_batch([self.ids[r] for r in rows], pad_id=pad_id, side=side)
        return idx, mask, self.labels[rows]


def _plain_text_encoder(tokenizer):
    """``tokenizer.encode`` that reads a special token's text in a review ("<|endoftext|>") as
    ordinary characters instead of refusing it (npgpt's and tiktoken's ``disallowed_special=()``)."""
    try:
        tokenizer.encode("", disallowed_special=())
    except TypeError:                       # a simple tokenizer without special tokens
        return tokenizer.encode
    return lambda text: tokenizer.encode(text, disallowed_special=())


def pad_id_for(classifier, tokenizer) -> int:
    """The id to pad with: the classifier's, else ``<|endoftext|>``, else 0. Any id works -- the
    mask decides what is padding -- but end-of-text keeps the saved config natural for HF."""
    if classifier.pad_token_id is not None:
        return classifier.pad_token_id
    special = getattr(tokenizer, "special_tokens", None) or {}
    return int(special.get("<|endoftext|>", 0))


def predict(classifier, tokenizer, texts, batch_size=64, max_length=128, pad_side="right"):
    """Class probabilities (N, num_classes) of raw texts, in batches, without a graph."""
    max_length = min(int(max_length), classifier.config.block_size)     # the model sees no more
    data = Encoded(tokenizer, list(texts), [0] * len(texts), max_length)
    return _probabilities(classifier, data, pad_id_for(classifier, tokenizer), batch_size, pad_side)


def _probabilities(classifier, data, pad_id, batch_size, pad_side):
    was_training = classifier.training
    classifier.eval()
    # Batches of similar length waste less work on padding; the order is restored below.
    order = np.argsort([len(s) for s in data.ids], kind="stable")
    probs = np.zeros((len(data), classifier.num_classes))
    try:
        for start in range(0, len(data), batch_size):
            rows = order[start:start + batch_size]
            idx, mask, _ = data.batch(rows, pad_id, pad_side)
            probs[rows] = classifier.predict_proba(idx, mask)
    finally:
        classifier.train(was_training)
    return probs


def evaluate(classifier, data, pad_id=None, batch_size=64, pad_side="right"):
    """Mean loss (eq. 2 or 8) and :func:`classification_metrics` of ``data`` (an :class:`Encoded`).

    ``pad_id`` defaults to the classifier's ``pad_token_id`` (or 0); the result
    does not depend on it, since padding is masked.
    """
    if pad_id is None:
        pad_id = classifier.pad_token_id if classifier.pad_token_id is not None else 0
    probs = _probabilities(classifier, data, pad_id, batch_size, pad_side)
    picked = np.clip(probs[np.arange(len(data)), data.labels], 1e-12, 1.0)
    metrics = classification_metrics(data.labels, probs.argmax(axis=1), classifier.num_classes,
                                     label_names=classifier.labels)
    metrics["loss"] = float(-np.log(picked).mean())
    return metrics


def _length_bucketed_batches(data, batch_size, rng, bucket=16):
    """One epoch of random batches whose texts have similar lengths.

    A padded batch costs as much as its longest text times its size. Texts are
    shuffled, cut into chunks of ``bucket`` batches, sorted by length inside
    each chunk and cut into batches; the batch order is shuffled again. Each
    batch is still a random sample, but the padding (here about 40% of the
    tokens with plain random batches) almost disappears.
    """
    order = rng.permutation(len(data))
    lengths = np.array([len(s) for s in data.ids])
    batches = []
    for start in range(0, len(order), batch_size * bucket):
        chunk = order[start:start + batch_size * bucket]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


class FinetuneResult:
    """What :func:`finetune` did: ``history`` (one dict per evaluation), the best step and loss."""

    def __init__(self):
        self.history, self.best_step, self.best_loss, self.stopped_early, self.steps = [], None, np.inf, False, 0
        self.stopped_by = None      # the signal number, when Ctrl-C / SIGTERM ended the run

    def __repr__(self):
        return (f"FinetuneResult(steps={self.steps}, best_step={self.best_step}, "
                f"best_val_loss={self.best_loss:.4f}, stopped_early={self.stopped_early})")


def _optimizer(classifier, cfg):
    """AdamW with GPT-2's decay/no-decay groups; the head in a group of its own (``lr_scale``)."""
    from npgpt import optim

    groups = []
    for group in optim.param_groups(classifier, cfg.weight_decay):
        body = [(n, p) for n, p in zip(group["names"], group["params"]) if not n.startswith("score.")]
        head = [(n, p) for n, p in zip(group["names"], group["params"]) if n.startswith("score.")]
        for members, scale in ((body, 1.0), (head, cfg.head_lr / cfg.lr)):
            if members:
                groups.append({"params": [p for _, p in members], "names": [n for n, _ in members],
                               "weight_decay": group["weight_decay"], "lr_scale": scale})
    return optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, weight_decay=cfg.weight_decay)


def finetune(classifier, tokenizer, train_texts, train_labels, val_texts, val_labels,
             config: Optional[FinetuneConfig] = None, out_dir=None,
             log: Optional[Callable[[str], None]] = print, **overrides) -> "FinetuneResult":
    """Fine-tune ``classifier`` on labelled texts; keep the weights with the lowest validation loss.

    Labels are class ids (0 .. num_classes-1; see :class:`LabelSet`). One
    step: a random batch, padded with its mask; the loss (eq. 2 for one logit,
    eq. 8 otherwise); backward, sharded over CPU threads; global-norm
    clipping; AdamW at the warmup + cosine learning rate (the head's scaled by
    ``head_lr / lr``). After every evaluation on the validation texts the best
    weights so far are kept (and, with ``out_dir``, written there atomically
    with the tokenizer); ``patience`` evaluations without improvement stop
    training early. At the end the best weights are restored. ``log``
    receives progress lines (``None``: silence). Ctrl-C or SIGTERM finishes
    the step in progress and stops as if early (``result.stopped_by`` holds
    the signal); with ``out_dir`` the classifier written there is then the
    best one seen, or the current one when no evaluation has run yet.
    Returns a :class:`FinetuneResult`.
    """
    from npgpt import optim
    from npgpt.train import optimizer_step      # the step pretraining takes, shared

    cfg = config if config is not None else FinetuneConfig(**overrides)
    if config is not None and overrides:
        raise TypeError("pass either a FinetuneConfig or keyword settings, not both")
    log = log or (lambda *_: None)
    max_length = min(cfg.max_length, classifier.config.block_size)    # longer texts keep their start
    train = Encoded(tokenizer, list(train_texts), train_labels, max_length)
    val = Encoded(tokenizer, list(val_texts), val_labels, max_length)
    for name, data in (("training", train), ("validation", val)):
        if data.labels.min() < 0 or data.labels.max() >= classifier.num_classes:
            raise ValueError(f"{name} labels must be class ids 0..{classifier.num_classes - 1}, "
                             f"got {int(data.labels.min())}..{int(data.labels.max())}")
    pad_id = pad_id_for(classifier, tokenizer)
    classifier.pad_token_id = pad_id          # saved in config.json: Hugging Face needs one to batch
    freeze(classifier, cfg.train_last)
    trainable = [p for p in classifier.parameters() if p.requires_grad]
    opt = _optimizer(classifier, cfg)
    steps_per_epoch = -(-len(train) // cfg.batch_size)
    max_steps = cfg.epochs * steps_per_epoch
    eval_every = int(cfg.eval_every) if cfg.eval_every else steps_per_epoch
    warmup = int(cfg.warmup * max_steps)
    rng = np.random.default_rng(cfg.seed)
    device = classifier.device
    workers = cfg.workers
    if workers is None and classifier.config.dropout > 0:
        workers = 1     # shards would draw dropout masks from one generator in two threads: not reproducible

    def loss_fn(idx, mask, labels):         # (b, T), (b, T), (b,)
        return classifier(idx, attention_mask=mask, labels=labels)[1]

    result = FinetuneResult()
    best = None
    bad_evaluations = 0
    running, counted = 0.0, 0
    classifier.train()
    step = 0
    with GracefulStop() as stop:
        log(f"fine-tuning {sum(int(p.size) for p in trainable):,} of {classifier.num_parameters():,} parameters "
            f"on {len(train)} texts ({steps_per_epoch} steps per epoch), validating on {len(val)}")
        while step < max_steps and not result.stopped_early and not stop.requested:
            for rows in _length_bucketed_batches(train, cfg.batch_size, rng):
                idx, mask, y = train.batch(rows, pad_id, cfg.pad_side)
                batch = tuple(backend.to_device(a, device) for a in (idx, mask, y))
                lr = optim.cosine_schedule(step, max_steps, cfg.lr, warmup_steps=warmup)
                loss, _ = optimizer_step(opt, loss_fn, [batch], lr,
                                         grad_clip=cfg.grad_clip, workers=workers, step=step + 1)
                step += 1
                running, counted = running + loss, counted + 1
                if step % eval_every == 0 or step == max_steps:
                    metrics = evaluate(classifier, val, pad_id, pad_side=cfg.pad_side)
                    entry = {"step": step, "epoch": step / steps_per_epoch, "train_loss": running / counted,
                             "val_loss": metrics["loss"], "val_accuracy": metrics["accuracy"], "val_f1": metrics["f1"]}
                    result.history.append(entry)
                    running, counted = 0.0, 0
                    improved = metrics["loss"] < result.best_loss
                    log(f"step {step}/{max_steps}  train loss {entry['train_loss']:.4f}  val loss {metrics['loss']:.4f}  "
                        f"val accuracy {metrics['accuracy']:.3f}" + ("  (best)" if improved else ""))
                    if improved:
                        result.best_loss, result.best_step, bad_evaluations = metrics["loss"], step, 0
                        best = {id(p): p.data.copy() for p in trainable}
                        if out_dir is not None:
                            classifier.save_pretrained(out_dir, tokenizer=tokenizer)
                    else:
                        bad_evaluations += 1
                        if bad_evaluations >= cfg.patience:
                            result.stopped_early = True
                            log(f"stopping early: no lower validation loss in {cfg.patience} evaluations")
                            break
                if step >= max_steps or stop.requested:
                    break
    if stop.requested:
        result.stopped_by = stop.signum
        if out_dir is not None and result.best_step is None:
            classifier.save_pretrained(out_dir, tokenizer=tokenizer)
        saved = (f"; the classifier in {out_dir} is from step {result.best_step or step}"
                 if out_dir is not None else "")
        log(f"{stop.name}: stopped at step {step}{saved}")
    result.steps = step
    if best is not None:                    # restore the best weights seen
        for p in trainable:
            p.data[...] = best[id(p)]
    for p in classifier.parameters():       # leave the model as we found it: all trainable
        p.requires_grad = True
    classifier.eval()
    return result
