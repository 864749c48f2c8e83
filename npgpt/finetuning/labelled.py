"""Labelled text for classification: reading files, label sets, splits and padded batches.

Companion of ``docs/finetuning.md`` (section "Labelled data").

* :func:`read_labelled_file` reads a CSV, TSV or JSONL file into texts and
  raw labels, with errors that name the file, the row and the problem.
* :func:`label_counts` counts the labels and refuses a column that looks
  like something else (most "classes" with one example).
* :class:`LabelSet` turns raw labels ("neg", "pos", or 0/1) into class ids
  and back, and refuses labels outside the expected set.
* :func:`split_indices` makes a fixed, seeded train/validation/test split.
* :func:`pad_batch` pads token ids into a (B, T) array with the attention
  mask the classifier needs (1 = real token, 0 = padding).
* :func:`movie_reviews` is the labelled corpus the book's examples use.

Depends on ``npgpt.io.fileio`` only (and ``npgpt.datasets`` to fetch the reviews).
"""

from __future__ import annotations

import collections
import contextlib
import csv
import io
import json
import math
import os
import pathlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Optional

import numpy as np

from npgpt import backend
from npgpt.io import fileio

__all__ = ["read_labelled_file", "movie_reviews", "label_counts", "label_name", "LabelSet", "split_indices", "pad_batch"]


# ----------------------------------------------------------------- data files
def _format_of(path: str | os.PathLike, fmt: Optional[str] = None) -> str:
    if fmt is not None:
        fmt = fmt.lower()
        if fmt not in ("csv", "tsv", "jsonl"):
            raise ValueError(f"unknown data format {fmt!r}: use csv, tsv or jsonl")
        return fmt
    suffix = pathlib.Path(path).suffix.lower()
    known = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
    if suffix not in known:
        raise ValueError(f"cannot tell the format of {path} from its extension {suffix!r}: "
                         "name it .csv, .tsv or .jsonl, or give the format: --format csv|tsv|jsonl on the command line, "
                         "fmt='csv'|'tsv'|'jsonl' in Python")
    return known[suffix]


def _column_index(column: str | int, header: list[str], path: pathlib.Path, header_row: bool) -> int:
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


def read_labelled_file(path: str | os.PathLike, text_column: str | int = "text", label_column: str | int = "label",
                       fmt: Optional[str] = None, header: bool = True) -> tuple[list[str], list[Any]]:
    """Read ``(texts, raw_labels)`` from a CSV, TSV or JSONL file.

    CSV/TSV files have a header row naming the columns (``header=False``:
    columns are then numbers, 0 for the first); JSONL files have one JSON
    object per line. Leading and trailing white space of texts is removed.
    Raises ``KeyError`` for a missing column and ``ValueError`` for an empty
    text or label, naming the file and the 1-based line.

    Any field length works (a field is at most the file). A UTF-8 byte-order
    mark is skipped. In JSONL a text is a string or a number and a label a
    string or an integer: lists, objects, booleans, null and non-finite
    numbers are refused with the line, never turned into strings.
    """
    path = pathlib.Path(path)
    if not path.exists():              # a special file is refused by read_utf8, not called missing
        raise FileNotFoundError(f"data file {path} does not exist")
    fmt = _format_of(path, fmt)
    # A regular file of at most 1 GiB (fileio.MAX_TEXT_FILE); names the file and line of a non-UTF-8 byte.
    content = fileio.read_utf8(path, "data file", limit=fileio.MAX_TEXT_FILE)
    texts, labels = [], []

    def add(line_no: int, text: Any, label: Any) -> None:
        if fmt == "jsonl":
            _check_json_fields(path, line_no, text, label, text_column, label_column)
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
            record = fileio.parse_json(line, f"{path}, line {line_no}")
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
        with io.StringIO(content, newline="") as f, _field_limit(len(content) + 1):
            # TSV has no quoting (IANA text/tab-separated-values): a text may start with '"'.
            quoting = csv.QUOTE_MINIMAL if fmt == "csv" else csv.QUOTE_NONE
            rows = csv.reader(f, delimiter=delimiter, quoting=quoting)
            try:
                first = next(rows, None)
                if first is None:
                    raise ValueError(f"{path} is empty")
                t = _column_index(text_column, first, path, header)
                y = _column_index(label_column, first, path, header)
                body = rows if header else _prepend(first, rows)
                for row in body:
                    line_no = rows.line_num         # the line the row ends on (a quoted field may span lines)
                    if not row:                               # a blank line
                        continue
                    if max(t, y) >= len(row):
                        raise ValueError(f"{path}, line {line_no}: {len(row)} columns, but column "
                                         f"{max(t, y)} is needed")
                    add(line_no, row[t], row[y])
            except csv.Error as exc:
                raise ValueError(f"{path}, line {rows.line_num}: not valid {fmt.upper()} ({exc})") from None
    if not texts:
        raise ValueError(f"{path} holds no examples")
    return texts, labels


@contextlib.contextmanager
def _field_limit(limit: int) -> Iterator[None]:
    """Let the csv module read fields of up to ``limit`` characters (its default stops at 131,072)."""
    old = csv.field_size_limit()
    csv.field_size_limit(max(old, min(limit, 2 ** 31 - 1)))
    try:
        yield
    finally:
        csv.field_size_limit(old)


def _check_json_fields(path: pathlib.Path, line_no: int, text: Any, label: Any, text_column: Any,
                       label_column: Any) -> None:
    """A JSONL text is a string or a finite number, a label a string or an integer; nothing else is guessed at.

    (null is let through: it is reported as an empty text or label.)
    """
    def refuse(column: Any, what: str, wanted: str) -> None:
        raise ValueError(f"{path}, line {line_no}: field {column!r} is {what}, not {wanted}")

    for value, column, is_label in ((text, text_column, False), (label, label_column, True)):
        if isinstance(value, bool):            # before int: True is an int to Python
            refuse(column, f"the boolean {json.dumps(value)}", f"a string or an integer (write \"{json.dumps(value)}\" "
                   f"or {int(value)} if it is a class)" if is_label else "a string")
        if isinstance(value, (list, dict)):
            refuse(column, f"a JSON {'array' if isinstance(value, list) else 'object'}",
                   "a string or an integer" if is_label else "a string")
    if isinstance(label, float):
        refuse(label_column, f"the number {label!r}", "a string or an integer (a class, not a score)")
    if isinstance(text, float) and not math.isfinite(text):
        refuse(text_column, f"the number {text!r}", "a string")


def _prepend(first: list[str], rows: Iterator[list[str]]) -> Iterator[list[str]]:
    yield first
    yield from rows


def movie_reviews(path: Optional[str | os.PathLike] = None) -> tuple[list[str], list[int]]:
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


# Spellings of "no value" that a spreadsheet or pandas writes into an empty cell.
NULL_LIKE = frozenset({"nan", "none", "null", "na", "n/a", "nil", "undefined", "missing"})


def label_name(value: Any) -> str:
    """The class name of a raw label: its text, with a number that is an integer written as one.

    ``1``, ``"1"``, ``"1.0"``, ``"01"`` and ``"1e0"`` are one class, ``"1"``: a CSV column that a
    spreadsheet wrote as ``1.0`` in some rows and ``1`` in others holds two spellings, not two
    classes. Other numbers (``"0.5"``) and all other text are kept as written.
    """
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    if math.isfinite(number) and number == int(number) and abs(number) < 2 ** 53:
        return str(int(number))
    return text


def label_counts(raw_labels: Iterable[Any], source: str = "the data", allow_many_classes: bool = False,
                 few: int = 5) -> tuple[collections.Counter[str], list[str]]:
    """Count the examples of each label; refuse labels that look like the wrong column.

    Returns ``(counts, warnings)``: a ``collections.Counter`` of the class
    names (:func:`label_name`) and one warning line per class with fewer than
    ``few`` examples (a typo such as "postive" makes a class of one), per
    class that several spellings of one number made (``"1"`` and ``"1.0"``),
    and per class spelled like a missing value (``NaN``, ``None``, ``null``:
    ``NULL_LIKE``). When there are
    more than two classes and more than half of them have a single example,
    the column is most likely not a label at all (a rating, an id, the text):
    that is a ``ValueError`` unless ``allow_many_classes``.
    """
    raw_labels = list(raw_labels)
    spellings: dict[str, set[str]] = collections.defaultdict(set)
    for v in raw_labels:
        spellings[label_name(v)].add(str(v).strip())
    counts = collections.Counter(label_name(v) for v in raw_labels)
    singletons = sum(1 for n in counts.values() if n == 1)
    if len(counts) > 2 and singletons > len(counts) / 2 and not allow_many_classes:
        examples = ", ".join(repr(k) for k in list(counts)[:3])
        raise ValueError(f"{source} has {len(counts):,} distinct labels ({examples}, ...) and {singletons:,} of them "
                         "occur once: is --label-column the right column? Pass --allow-many-classes if it is")
    warnings = [f"class {name!r} has only {n} example{'s' if n != 1 else ''} in {source}"
                for name, n in sorted(counts.items()) if n < few]
    warnings += [f"the labels {', '.join(map(repr, sorted(spellings[name])))} of {source} are one class, {name!r}"
                 for name in sorted(counts) if len(spellings[name]) > 1]
    warnings += [f"class {name!r} ({counts[name]:,} examples of {source}) is spelled like a missing value: "
                 "is the label column complete?" for name in sorted(counts) if name.lower() in NULL_LIKE]
    return counts, warnings


class LabelSet:
    """The classes of a task: names in a fixed order, class id = position in it.

    ``LabelSet(["neg", "pos"])``: "neg" is class 0, "pos" class 1. Without
    names, :meth:`infer` takes the sorted distinct raw labels (numerically
    when they all are numbers, so "2" comes before "10").
    """

    def __init__(self, names: Iterable[Any]) -> None:
        names = [label_name(n) for n in names]
        if len(names) < 2:
            raise ValueError(f"a classification task needs at least two classes, got {names}")
        if len(set(names)) != len(names):
            raise ValueError(f"class names must be distinct, got {names}")
        self.names = names
        self.index = {n: i for i, n in enumerate(names)}

    @classmethod
    def infer(cls, raw_labels: Iterable[Any]) -> LabelSet:
        distinct = {label_name(v) for v in raw_labels}
        try:
            ordered = sorted(distinct, key=lambda name: (float(name), name))   # ties (0.5, 0.50): by text
        except ValueError:
            ordered = sorted(distinct)
        return cls(ordered)

    def __len__(self) -> int:
        return len(self.names)

    def encode(self, raw_labels: Iterable[Any], source: str = "the data") -> np.ndarray:
        """Class ids (int64 array) of raw labels; an unknown label is an error naming it."""
        ids = []
        for i, value in enumerate(raw_labels):
            key = label_name(value)
            if key not in self.index:
                raise ValueError(f"label {value!r} (example {i + 1} of {source}) is not one of the "
                                 f"expected labels {self.names}")
            ids.append(self.index[key])
        return np.asarray(ids, dtype=np.int64)

    @property
    def id2label(self) -> dict[int, str]:
        return {i: n for i, n in enumerate(self.names)}

    @property
    def label2id(self) -> dict[str, int]:
        return dict(self.index)


def split_indices(n: int, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0) -> list[np.ndarray]:
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


def pad_batch(sequences: Iterable[Iterable[int]], pad_id: int = 0, side: str = "right",
              max_length: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
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


def next_token_targets(idx: Any, mask: Any | None, ignore_index: int = -100) -> Any:
    """The next-token targets of a padded batch, int (B, T): ``idx[b, t+1]`` where tokens ``t`` and ``t+1``
    are both real, else ``ignore_index`` (the last position, padding, and a real token followed by padding)."""
    xp = backend.array_module(idx)
    targets = xp.full(idx.shape, ignore_index, dtype=xp.int64)
    targets[:, :-1] = idx[:, 1:]
    if mask is not None:
        both_real = (mask[:, :-1] != 0) & (mask[:, 1:] != 0)
        targets[:, :-1] = xp.where(both_real, targets[:, :-1], ignore_index)
    return targets
