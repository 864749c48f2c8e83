"""Token files and batches: text -> ``train.bin`` / ``val.bin`` -> random (x, y) windows.

Companion of ``docs/training.md`` (section "From text to batches").

A language model is trained on one long stream of token ids. :func:`prepare`
tokenizes text files once, ahead of training, and writes the stream to disk
as raw little-endian integers (``uint16`` while every id fits in 16 bits,
else ``uint32``), split into a training and a validation part, together with
a ``meta.json`` that says how to read them. Training then maps the files
into memory (:func:`load_tokens`, ``numpy.memmap``) instead of reading them:
a corpus larger than RAM works, and start-up costs nothing.

:class:`BatchSampler` cuts random windows of ``block_size + 1`` tokens out of
the stream. A window ``w`` gives an input ``x = w[:-1]`` and a target
``y = w[1:]``: at every position the target is the next token
(docs/training.md eq:cross-entropy-loss). Its random generator's state is part of a
checkpoint, so a resumed run draws exactly the batches the uninterrupted run
would have drawn.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import pickle
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple, Optional

import numpy as np
import regex
from numpy.typing import DTypeLike

from npgpt.backend import default_workers
from npgpt.io import fileio, token_formats
from npgpt.io.fileio import excerpt
from npgpt.tokenizer.bpe import ENDOFTEXT
from npgpt.training.progress import Progress

__all__ = ["EOT", "prepare", "prepare_documents", "split_documents", "load_tokens", "load_meta", "tokenizer_dir",
           "tokenizer_digest", "TokenFile",
           "BatchSampler", "token_dtype"]

EOT = ENDOFTEXT          # separates documents in a token stream
META_NAME = "meta.json"
TOKENIZER_DIR = "tokenizer"      # DATA/tokenizer: the tokenizer that made the ids, saved by prepare
FORMAT_VERSION = 1


# ================================================================ helpers
def token_dtype(vocab_size: int) -> np.dtype:
    """``uint16`` when every id (0 .. vocab_size-1) fits in 16 bits, else ``uint32``."""
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    return np.dtype("<u2") if vocab_size <= 2 ** 16 else np.dtype("<u4")


def _vocab_size(tokenizer: Any) -> int:
    size = getattr(tokenizer, "vocab_size", None)
    if callable(size):
        size = size()
    if size is None:
        size = len(tokenizer)
    return int(size)


def _eot_id(tokenizer: Any) -> int:
    """The id of ``<|endoftext|>`` in ``tokenizer`` (a clear error when it has none)."""
    try:
        ids = tokenizer.encode(EOT, allowed_special={EOT})
    except Exception as exc:  # the tokenizer does not know the special token
        raise ValueError(f"the tokenizer has no {EOT} special token, which separates documents "
                         f"({type(exc).__name__}: {exc}); train it with special_tokens=({EOT!r},)") from None
    if len(ids) != 1:
        raise ValueError(f"the tokenizer encodes {EOT} as {len(ids)} tokens {list(ids)}, not as one special "
                         f"token; train it with special_tokens=({EOT!r},)")
    return int(ids[0])


# ================================================================ prepare
def split_documents(text: str) -> list[str]:
    """The documents of a text: the pieces between literal ``<|endoftext|>`` markers (empty ones dropped)."""
    return [doc for doc in text.split(EOT) if doc.strip()]


def _check_inputs(input_files: Iterable[str | os.PathLike]) -> list[pathlib.Path]:
    paths = [pathlib.Path(p) for p in input_files]
    if not paths:
        raise ValueError("prepare: no input files given")
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"prepare: input file {path} does not exist")
        if not path.is_file():
            raise ValueError(f"prepare: {path} is not a regular file")
    return paths


# A segment is (text, ends): a whole document (ends, and the first of its document), or one piece of
# a long document cut at a safe place, ``ends`` on its last piece.
Segment = tuple[str, bool]
_SAFE_CUT = regex.compile(r"\S(?=\s)")     # a cut after it changes no pre-token (see _cut_pieces)
_READ_CHARS = 1 << 20                      # characters read from a file at a time


def _cut_pieces(text: str, piece_chars: Optional[int], keep: int = 0) -> tuple[list[str], str]:
    """Cut pieces of about ``piece_chars`` off the front of a long document's ``text``: ``(pieces, rest)``.

    A cut falls between a character that is not whitespace and one that is (``_SAFE_CUT``).
    There GPT-2's pre-tokenizer (``tokenizer.GPT2_PATTERN``) ends a pre-token in the whole text and
    in the piece before the cut alike, and starts the next one where the piece after the cut
    starts (no alternative spans non-space then space, and its one look-ahead, ``\\s+(?!\\S)``,
    ends inside a run of whitespace): so encoding the pieces one by one gives exactly the ids of
    the whole (a property test). The last ``keep`` characters are never cut off: they may be the
    start of an ``<|endoftext|>`` marker whose end is not read yet.
    """
    pieces, start = [], 0
    if piece_chars is None:
        return pieces, text
    while len(text) - start - keep > piece_chars:
        match = _SAFE_CUT.search(text, start + piece_chars, len(text) - keep)
        if match is None:              # no whitespace yet: wait for more text (or the document's end)
            break
        pieces.append(text[start:match.end()])
        start = match.end()
    return pieces, text[start:]


def _segments_of_files(paths: list[pathlib.Path], piece_chars: Optional[int]) -> Iterator[Segment]:
    """The documents of the files, streamed: each file read in chunks, split at ``<|endoftext|>``
    markers (empty documents dropped, as :func:`split_documents` does), a long document cut into
    pieces as it is read (``_cut_pieces``), so memory holds a piece, not a file."""
    for path in paths:
        documents, text, cut = 0, "", False
        # Text mode, as read_text: UTF-8, and universal newlines ("\r\n" -> "\n"), for the same ids.
        with open(path, encoding="utf-8") as f:
            while True:
                try:
                    chunk = f.read(_READ_CHARS)
                except UnicodeDecodeError:
                    raise ValueError(f"prepare: {path} is not UTF-8 text ({_utf8_error(path)})") from None
                *ended, text = (text + chunk).split(EOT)
                if not chunk:              # the end of the file ends its last document
                    ended.append(text)
                for doc in ended:
                    if cut or doc.strip():     # a document already cut into pieces ends, even if blank
                        documents += 1
                        yield doc, True
                    cut = False
                if not chunk:
                    break
                pieces, text = _cut_pieces(text, piece_chars, keep=len(EOT) - 1)
                for piece in pieces:
                    yield piece, False
                    cut = True
        if not documents:
            raise ValueError(f"prepare: {path} is empty (no text besides whitespace and {EOT} markers)")


def _utf8_error(path: pathlib.Path) -> str:
    """Where the first byte that is not UTF-8 lies in ``path``: its line and byte offset."""
    import codecs

    decoder, offset, line = codecs.getincrementaldecoder("utf-8")(), 0, 1
    with open(path, "rb") as f:
        while block := f.read(_READ_CHARS):
            pending = decoder.getstate()[0]           # the start of a character cut by the last block
            try:
                decoder.decode(block)
            except UnicodeDecodeError as exc:
                newlines = (pending + block)[:exc.start].count(b"\n")
                return f"line {line + newlines}, byte {offset - len(pending) + exc.start:,}: {exc.reason}"
            offset += len(block)
            line += block.count(b"\n")
    return "its last character is cut short"


def _segments_of_documents(documents: list[str], piece_chars: Optional[int]) -> Iterator[Segment]:
    for doc in documents:
        pieces, rest = _cut_pieces(doc, piece_chars)
        for piece in pieces:
            yield piece, False
        yield rest, True


def _tasks(segments: Iterable[Segment], run_chars: int) -> Iterator[tuple[str, list[str], bool]]:
    """Work for the encoders, in order: ``("docs", documents, True)``, a run of whole documents of
    about ``run_chars`` characters, or ``("piece", [text], last)``, one piece of a long document."""
    run, size, inside = [], 0, False
    for text, ends in segments:
        if inside or not ends:             # a piece of a long document: after the run before it
            if run:
                yield "docs", run, True
                run, size = [], 0
            yield "piece", [text], ends
            inside = not ends
            continue
        run.append(text)
        size += len(text)
        if size >= run_chars:
            yield "docs", run, True
            run, size = [], 0
    if run:
        yield "docs", run, True


def _cuts_safely(tokenizer: Any) -> bool:
    """Does ``tokenizer`` pre-tokenize with GPT-2's pattern, so that ``_cut_pieces`` keeps its ids?

    npgpt's Tokenizer does, and so does tiktoken's ``gpt2`` encoding; for any other tokenizer a
    long document is encoded whole (other patterns, cl100k's for one, can join a punctuation
    mark to the newlines after it).
    """
    from npgpt.tokenizer import GPT2_PATTERN, Tokenizer

    return isinstance(tokenizer, Tokenizer) or getattr(tokenizer, "_pat_str", None) == GPT2_PATTERN


def prepare(input_files: Iterable[str | os.PathLike], tokenizer: Any, out_dir: str | os.PathLike,
            val_fraction: float = 0.1, tokenizer_dir: Optional[str | os.PathLike] = None,
            progress: bool = True, workers: Optional[int] = None) -> dict[str, Any]:
    """Tokenize text files into ``out_dir/train.bin``, ``val.bin`` and ``meta.json``; returns the meta dict.

    Each file is one document, or several separated by literal
    ``<|endoftext|>`` markers; every document is encoded as ordinary text
    (a marker-like string inside it cannot inject a special token) and is
    followed by the ``<|endoftext|>`` token, so the model learns where
    documents end. The last ``val_fraction`` of every document is the validation
    split. The tokenizer is saved into ``out_dir/tokenizer`` (when it has a
    ``save`` method), so training and generation find it there.

    The files are streamed: read in chunks, a long document cut into pieces of about 512 kB at
    places that change no id (``_cut_pieces``), so memory holds a few pieces, not the corpus,
    and the ``workers`` processes (default: one per CPU core) share even a single huge file. The
    files are the same bytes whatever their number (see :func:`prepare_documents`).
    """
    paths = _check_inputs(input_files)
    sources = [{"path": str(p), "bytes": p.stat().st_size} for p in paths]
    total = sum(s["bytes"] for s in sources)
    return _prepare(lambda piece_chars: _segments_of_files(paths, piece_chars), total, tokenizer, out_dir,
                    val_fraction, sources, progress, workers)


_TASK_BYTES = 1 << 21          # text per task of a worker: small enough to balance, large enough to amortise
_MIN_TASK_BYTES = 1 << 18      # below this a second process costs more than it saves
_PIECE_CHARS = 1 << 19         # a long document's pieces: encoding one holds ~20x its size (its chunk list)


def prepare_documents(documents: Iterable[str], tokenizer: Any, out_dir: str | os.PathLike, val_fraction: float = 0.1,
                      sources: Optional[list[dict[str, Any]]] = None, progress: bool = True,
                      workers: Optional[int] = None) -> dict[str, Any]:
    """Like :func:`prepare` for a list of document strings (e.g. ``datasets.load_documents``).

    The documents are cut into runs of about 2 MB of text, in order, and a long document into
    pieces of about 512 kB; ``workers`` processes (``multiprocessing``; default one per core, never
    more than there are runs) encode a run or a piece each, and the parent appends the tokens to
    the files in order as they come back (a long document's validation tail is moved from
    ``train.bin`` to ``val.bin`` when its last piece is in). So the files are byte-identical for
    any number of workers, and memory holds the text plus a few runs' tokens, never the whole
    stream. With an npgpt ``Tokenizer`` a document's ids go from its caches to the file as
    packed integers (``Tokenizer.encode_ordinary_array``), never as a list of Python ints.
    """
    documents = [d for d in documents if d.strip()]
    if not documents:
        raise ValueError("prepare: no non-empty documents to tokenize")
    total = sum(len(d.encode("utf-8", errors="surrogatepass")) for d in documents)
    return _prepare(lambda piece_chars: _segments_of_documents(documents, piece_chars), total, tokenizer, out_dir,
                    val_fraction, sources, progress, workers)


def _prepare(segments: Callable[[Optional[int]], Iterator[Segment]], total: int, tokenizer: Any,
             out_dir: str | os.PathLike, val_fraction: float, sources: Optional[list[dict[str, Any]]],
             progress: bool, workers: Optional[int]) -> dict[str, Any]:
    """``prepare`` of the documents that ``segments(piece_chars)`` yields (about ``total`` bytes)."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"prepare: val_fraction must lie strictly between 0 and 1, got {val_fraction}")
    workers = default_workers() if workers is None else workers
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"prepare: workers must be an integer >= 1 (the number of processes), got {workers!r}")
    vocab_size, eot = _vocab_size(tokenizer), _eot_id(tokenizer)
    dtype = token_dtype(vocab_size)
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fileio.remove_abandoned(out_dir)                      # token files of a killed prepare
    fileio.remove_abandoned(tempfile.gettempdir(), f"{_SHARE_PREFIX}*")   # and its workers' caches

    run_chars = max(_MIN_TASK_BYTES, min(_TASK_BYTES, total // workers + 1))
    workers = max(1, min(workers, -(-total // run_chars)))       # never more than there are runs
    tasks = _tasks(segments(min(run_chars, _PIECE_CHARS) if _cuts_safely(tokenizer) else None), run_chars)
    bar = Progress(total, "tokenizing", enabled=progress, unit="B")
    started, done = time.perf_counter(), 0
    splits = _Splits(out_dir, dtype, val_fraction)
    try:
        for out in _encode_tasks(tasks, tokenizer, eot, dtype, vocab_size, val_fraction, workers):
            splits.add(out)
            done += out.nbytes
            bar.update(min(done, total))
        bar.update(total)
        bar.close()
        splits.finish()
        meta = {"format_version": FORMAT_VERSION, "dtype": dtype.name, "vocab_size": vocab_size,
                "eot_token_id": eot, "train_tokens": splits.counts["train"], "val_tokens": splits.counts["val"],
                "documents": splits.documents, "val_fraction": val_fraction,
                "tokenizer": {"class": f"{type(tokenizer).__module__}.{type(tokenizer).__name__}",
                              "vocab_size": vocab_size, "eot_token_id": eot, "dir": None},
                "sources": sources or [], "tokenize_seconds": round(time.perf_counter() - started, 3)}
        _replace_data(out_dir, splits, tokenizer, meta)
    finally:
        splits.discard()
    return meta


class _Splits:
    """``train.bin`` and ``val.bin`` being written beside their final names, with their token counts."""

    def __init__(self, out_dir: pathlib.Path, dtype: np.dtype, val_fraction: float) -> None:
        self.files = {split: _TempFile(out_dir / f"{split}.bin") for split in ("train", "val")}
        self.counts = {"train": 0, "val": 0}
        self.dtype, self.val_fraction = dtype, val_fraction
        self.documents = 0
        self._long = 0                 # tokens of the long document whose pieces are coming in

    def add(self, out: _Encoded) -> None:
        """Append a task's tokens: a run's two splits, or a long document's piece (to train.bin,
        its validation tail moved to val.bin when its last piece is in, as ``_encode_task``
        splits a whole document)."""
        n = self._append("train", out.train)
        if out.val is not None:
            self._append("val", out.val)
            self.documents += out.documents
            return
        self._long += n
        if out.ends:
            self._move_tail(int(self._long * self.val_fraction))
            self.documents += 1
            self._long = 0

    def finish(self) -> None:
        """When every document is tiny (no token reached val.bin), the stream's tail is the validation split."""
        if self.counts["val"] == 0:
            n_val = max(1, int(round(self.counts["train"] * self.val_fraction)))
            if self.counts["train"] - n_val >= 1:
                self._move_tail(n_val)
        if self.counts["train"] < 1:
            raise ValueError(f"prepare: {self.counts['train'] + self.counts['val']} tokens are too few to split "
                             "into train and validation")

    def _append(self, split: str, tokens: bytes) -> int:
        self.files[split].write(tokens)
        n = len(tokens) // self.dtype.itemsize
        self.counts[split] += n
        return n

    def _move_tail(self, n: int) -> None:
        """Move the last ``n`` tokens of train.bin to the end of val.bin."""
        if n:
            self.files["val"].write(self.files["train"].cut_tail((self.counts["train"] - n) * self.dtype.itemsize))
            self.counts["train"] -= n
            self.counts["val"] += n

    def commit(self) -> None:
        for f in self.files.values():
            f.commit()

    def discard(self) -> None:
        for f in self.files.values():
            f.discard()


def _replace_data(out_dir: pathlib.Path, splits: _Splits, tokenizer: Any, meta: dict[str, Any]) -> None:
    """Put the new data in place of the old: complete, or read as not prepared, at every instant.

    The tokenizer is saved beside the data first (a staging directory) and its digest goes into
    ``meta``. From the moment the old ``meta.json`` is removed until the new one is written, a
    kill leaves a directory that reads as not prepared, never the old ids beside the new
    tokenizer; before it, the old data are whole.
    """
    staging = None
    try:
        if hasattr(tokenizer, "save"):
            staging = fileio.staging_directory(out_dir / TOKENIZER_DIR)
            tokenizer.save(staging)
            meta["tokenizer"].update(dir=TOKENIZER_DIR, sha256=tokenizer_digest(staging))
        if os.path.lexists(out_dir / META_NAME):
            os.unlink(out_dir / META_NAME)
            fileio.fsync(out_dir)
        splits.commit()
        if staging is not None:
            fileio.replace_directory(staging, out_dir / TOKENIZER_DIR)
            staging = None
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    fileio.atomic_write(out_dir / META_NAME, json.dumps(meta, indent=2) + "\n")
    fileio.fsync(out_dir)


_SHARE_PREFIX = "npgpt-prepare-"      # the workers' shared cache directory, in $TMPDIR


class _Encoded(NamedTuple):
    """What an encoder returns for a task: packed tokens, in the dtype of the files."""

    train: bytes                 # a run's training tokens, or a piece's tokens
    val: Optional[bytes]         # a run's validation tokens; None for a piece
    nbytes: int                  # the UTF-8 bytes of text encoded (for the progress bar)
    documents: int               # whole documents in a run
    ends: bool                   # a piece: the last of its document (its <|endoftext|> appended)


# What every task of one prepare needs, set once per process (inherited by forked workers, or
# sent once to each spawned one), so that a task carries only its text.
_JOB: dict[str, Any] = {}


def _start_job(tokenizer: Any, eot: int, dtype: np.dtype, vocab_size: int, val_fraction: float,
               share: Optional[str] = None) -> None:
    _JOB.update(tokenizer=tokenizer, eot=eot, dtype=dtype, vocab_size=vocab_size, val_fraction=val_fraction,
                share=share, shared_seen=set(), shared_count=0)


def _learn_from_others(caches: Any) -> None:
    """Add the cache entries other workers have published in the ``share`` directory since last time.

    Workers publish what their caches learned after each task (``_publish``), so a word or chunk
    new to the corpus is encoded by one worker, not by each: with 2 workers about half of the
    cold work. Entries depend only on their keys, so the ids are the same in any case.
    """
    share, seen = _JOB["share"], _JOB["shared_seen"]
    mine = f"{os.getpid()}-"
    for name in sorted(os.listdir(share)):
        if name.endswith(".pkl") and not name.startswith(mine) and name not in seen:
            with open(os.path.join(share, name), "rb") as f:
                caches.add(pickle.load(f))
            seen.add(name)


def _publish(caches: Any, mark: tuple[int, ...]) -> None:
    entries = caches.entries_since(mark)
    if any(entries):
        _JOB["shared_count"] += 1
        path = os.path.join(_JOB["share"], f"{os.getpid()}-{_JOB['shared_count']:06d}")
        with open(path + ".tmp", "wb") as f:
            pickle.dump(entries, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(path + ".tmp", path + ".pkl")     # others never read a half-written file


def _encode_text(text: str) -> np.ndarray:
    """The ids of ``text`` as ordinary text (a special token's text stays text), checked."""
    tokenizer, vocab_size = _JOB["tokenizer"], _JOB["vocab_size"]
    packed = getattr(tokenizer, "encode_ordinary_array", None)      # npgpt's Tokenizer: no Python ints
    if packed is not None:
        ids = np.frombuffer(packed(text), dtype=np.uint16 if vocab_size <= 1 << 16 else np.uint32)
    else:
        ids = np.asarray(list(tokenizer.encode(text, allowed_special=set(), disallowed_special=())), dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(f"prepare: the tokenizer produced ids outside 0..{vocab_size - 1}")
    return ids


def _encode_task(task: tuple[str, list[str], bool]) -> _Encoded:
    """Encode one task of ``_tasks``: a run of documents, each split into train and validation
    tokens, or one piece of a long document (split by the parent when its last piece is in)."""
    kind, texts, ends = task
    eot, dtype = _JOB["eot"], _JOB["dtype"]
    caches = getattr(_JOB["tokenizer"], "caches", None) if _JOB["share"] else None
    if caches is not None:
        _learn_from_others(caches)
        mark = caches.mark()
    nbytes = sum(len(t.encode("utf-8", errors="surrogatepass")) for t in texts)
    if kind == "piece":
        ids = _encode_text(texts[0])
        stream = np.empty(ids.size + ends, dtype=dtype)
        stream[:ids.size] = ids
        if ends:
            stream[-1] = eot
        result = _Encoded(stream.tobytes(), None, nbytes, 0, ends)
    else:
        train, val = [], []
        for doc in texts:
            ids = _encode_text(doc)
            stream = np.empty(ids.size + 1, dtype=dtype)
            stream[:-1] = ids
            stream[-1] = eot
            # The validation split is the tail of *every* document, not the tail of the whole
            # stream: with a few large sources (plays, speeches, a novel) the stream's tail would
            # be one source only, and the validation loss would measure a change of domain.
            n_train = stream.size - int(stream.size * _JOB["val_fraction"])
            train.append(stream[:n_train])
            val.append(stream[n_train:])
        result = _Encoded(np.concatenate(train).tobytes(), np.concatenate(val).tobytes(), nbytes, len(texts), True)
    if caches is not None:
        _publish(caches, mark)
    return result


def _encode_tasks(tasks: Iterator[tuple[str, list[str], bool]], tokenizer: Any, eot: int, dtype: np.dtype,
                  vocab_size: int, val_fraction: float, workers: int) -> Iterator[_Encoded]:
    """``_encode_task`` of every task, in order: in this process, or in a pool of ``workers``.

    At most two tasks per worker are in flight: the tasks are read from the files only as fast
    as the workers encode them, so a corpus never sits in memory as a queue of tasks.
    """
    job = (tokenizer, eot, dtype, vocab_size, val_fraction)
    if workers == 1:
        _start_job(*job)
        try:
            yield from map(_encode_task, tasks)
        finally:
            _JOB.clear()
        return
    import collections
    import multiprocessing

    # fork shares the tokenizer (with its warm caches) without copying it; elsewhere (macOS,
    # Windows) the default start method sends each worker a copy.
    context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else None)
    with fileio.private_directory(tempfile.gettempdir(), _SHARE_PREFIX) as share, \
            context.Pool(workers, initializer=_start_job, initargs=(*job, str(share))) as pool:
        in_flight: collections.deque = collections.deque()
        for task in tasks:
            in_flight.append(pool.apply_async(_encode_task, (task,)))
            if len(in_flight) >= 2 * workers:
                yield in_flight.popleft().get()
        while in_flight:
            yield in_flight.popleft().get()


class _TempFile:
    """A file written in pieces beside ``path``, renamed onto it by ``commit`` (never half-written)."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        fd, self.tmp = fileio.temporary_file(path)     # flock'ed: a later prepare knows it is not debris
        self.file = os.fdopen(fd, "w+b")

    def write(self, data: bytes) -> None:
        with fileio.naming(self.tmp):
            self.file.write(data)

    def cut_tail(self, offset: int) -> bytes:
        """Remove and return everything after byte ``offset``."""
        self.file.flush()
        self.file.seek(offset)
        tail = self.file.read()
        self.file.seek(offset)
        self.file.truncate()
        return tail

    def commit(self) -> None:
        with fileio.naming(self.tmp):
            self.file.flush()
            os.fsync(self.file.fileno())
        os.chmod(self.tmp, 0o644)      # mkstemp makes files private; these are for sharing
        os.replace(self.tmp, self.path)
        self.file.close()              # after the rename: the flock guards the file until it has its name

    def discard(self) -> None:
        """Close and delete the temporary file, unless ``commit`` has renamed it."""
        if not self.file.closed:
            self.file.close()
        if os.path.exists(self.tmp):
            os.unlink(self.tmp)


# ================================================================= reading
_TOKEN_DTYPES = ("uint16", "uint32")
_CHUNK = 1 << 24          # tokens per chunk when scanning a token file for out-of-range ids


def load_meta(data_dir: str | os.PathLike) -> dict[str, Any]:
    """The ``meta.json`` of a prepared data directory (clear errors when it is not one).

    Every field training reads is type-checked: ``dtype`` is ``"uint16"`` or
    ``"uint32"`` and wide enough for ``vocab_size`` ids, counts are integers,
    ``eot_token_id`` lies in the vocabulary, ``tokenizer`` is an object. A
    malformed file is a ``ValueError`` naming it.
    """
    data_dir = pathlib.Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data directory {data_dir} does not exist; create it with `npgpt prepare`")
    path = data_dir / META_NAME
    if not path.exists() and (foreign := token_formats.foreign_meta(data_dir)) is not None:
        return foreign                 # nanoGPT's or llm.c's files (npgpt.io.token_formats), read as they are
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: {data_dir} is not a prepared data directory "
                                "(or its preparation did not finish); run `npgpt prepare`")
    text = fileio.read_utf8(path, "data file", limit=fileio.MAX_SMALL_FILE)   # names the file (and line)
    meta = fileio.parse_json(text, path)
    if not isinstance(meta, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(meta).__name__}")
    for key in ("dtype", "vocab_size"):
        if key not in meta:
            raise ValueError(f"{path} lacks {key!r}")
    version = meta.get("format_version", FORMAT_VERSION)
    if not fileio.is_int(version) or version > FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {excerpt(version)} is not one this npgpt reads "
                         f"(1..{FORMAT_VERSION}); was it written by a newer npgpt?")
    vocab_size, dtype = meta["vocab_size"], meta["dtype"]
    if not fileio.is_int(vocab_size) or not 1 <= vocab_size <= 2 ** 32:
        raise ValueError(f"{path}: vocab_size must be an integer in 1..2**32, got {excerpt(vocab_size)}")
    if dtype not in _TOKEN_DTYPES:
        raise ValueError(f"{path}: dtype must be one of {', '.join(_TOKEN_DTYPES)}, got {excerpt(dtype)}")
    if vocab_size > 2 ** (8 * np.dtype(dtype).itemsize):
        raise ValueError(f"{path}: dtype {dtype} cannot hold the ids of a vocabulary of {vocab_size:,} tokens")
    for key in ("train_tokens", "val_tokens"):
        if key in meta and (not fileio.is_int(meta[key]) or meta[key] < 0):
            raise ValueError(f"{path}: {key} must be an integer >= 0, got {excerpt(meta[key])}")
    eot = meta.get("eot_token_id")
    if eot is not None and (not fileio.is_int(eot) or not 0 <= eot < vocab_size):
        raise ValueError(f"{path}: eot_token_id must be an id in 0..{vocab_size - 1}, got {excerpt(eot)}")
    tokenizer = meta.get("tokenizer")
    if tokenizer is not None:
        if not isinstance(tokenizer, dict):
            raise ValueError(f"{path}: tokenizer must be an object, got {excerpt(tokenizer)}")
        sub = tokenizer.get("dir")
        if sub is not None and (not isinstance(sub, str) or not sub or pathlib.PurePath(sub).is_absolute()
                                or ".." in pathlib.PurePath(sub).parts):
            raise ValueError(f"{path}: tokenizer.dir must name a directory inside the data directory, got "
                             f"{excerpt(sub)}")
        digest = tokenizer.get("sha256")
        if digest is not None and not (isinstance(digest, str) and len(digest) == 64
                                       and all(c in "0123456789abcdef" for c in digest)):
            raise ValueError(f"{path}: tokenizer.sha256 must be 64 hexadecimal digits, got {excerpt(digest)}")
    return meta


def tokenizer_digest(directory: str | os.PathLike) -> str:
    """The SHA-256 of a tokenizer directory: of each regular file's name and bytes, in name order.

    Hidden files (a writer's ``.lock``) are left out. ``prepare`` records it in ``meta.json``;
    :func:`tokenizer_dir` compares it with the files there before training reads them.
    """
    directory = pathlib.Path(directory)
    h = hashlib.sha256()
    for path in sorted(directory.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        raw = fileio.read_bytes(path, "tokenizer file", limit=fileio.MAX_TOKENIZER_FILE)
        h.update(path.name.encode("utf-8") + b"\0" + len(raw).to_bytes(8, "little") + raw)
    return h.hexdigest()


def tokenizer_dir(data_dir: str | os.PathLike, meta: Optional[dict[str, Any]] = None,
                  log: Optional[Callable[[str], None]] = None) -> Optional[pathlib.Path]:
    """The directory of the tokenizer that made a data directory's ids, checked; None if it has none.

    The directory ``meta.json`` names must lie inside the data directory (a link out of it is
    refused too), exist, and hold exactly the files whose digest ``prepare`` recorded
    (:func:`tokenizer_digest`): a tokenizer swapped, edited or deleted after ``prepare`` would
    make the ids mean other text, so it is refused, naming what to do. A ``meta.json`` written
    before digests were recorded loads as before, with a note through ``log``.
    """
    data_dir = pathlib.Path(data_dir)
    info = (load_meta(data_dir) if meta is None else meta).get("tokenizer") or {}
    if not info.get("dir"):
        return None
    path = data_dir / info["dir"]
    digest = info.get("sha256")
    if os.path.lexists(path) and not path.resolve().is_relative_to(data_dir.resolve()):
        raise ValueError(f"{path} is a link out of the data directory {data_dir}: the tokenizer that made the ids "
                         "is kept inside it; run `npgpt prepare` again")
    if not path.is_dir():
        if digest is None:             # an older npgpt's data directory: as before, no tokenizer
            return None
        raise FileNotFoundError(f"the tokenizer {path} that made the token ids of {data_dir} was deleted; "
                                "run `npgpt prepare` again")
    if digest is None:
        if log is not None:
            log(f"note: {data_dir / META_NAME} records no digest of its tokenizer (an older npgpt wrote it), so "
                f"{path} is not checked against the ids; `npgpt prepare` again records one")
        return path
    actual = tokenizer_digest(path)
    if actual != digest:
        raise ValueError(f"{path}: this tokenizer is not the one that made the token ids of {data_dir} (its files' "
                         f"sha256 is {actual[:12]}..., {META_NAME} records {digest[:12]}...): it was changed or "
                         "replaced after `npgpt prepare`; run `npgpt prepare` again")
    return path


def load_tokens(path: str | os.PathLike, dtype: Optional[DTypeLike] = None, offset: int = 0) -> np.memmap:
    """A read-only ``numpy.memmap`` of a token file; ``dtype`` from the ``meta.json`` beside it if not given.

    ``path`` is a ``.bin`` file, or a data directory plus ``"train"``/``"val"``
    via :class:`TokenFile`. ``offset``: bytes of header before the ids (llm.c's files have 1,024).
    """
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"token file {path} does not exist")
    if not path.is_file():             # memory-mapping a FIFO would block, a device read forever
        raise ValueError(f"token file {path} is not a regular file (a device, FIFO or socket, or a link to one)")
    if dtype is None:
        meta_path = path.parent / META_NAME
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path} is missing, so the dtype of {path} is unknown; pass dtype=")
        dtype = load_meta(path.parent)["dtype"]
    dtype = np.dtype(dtype)
    size = path.stat().st_size - offset
    if size <= 0:
        raise ValueError(f"token file {path} is empty" + (f" after its {offset}-byte header" if offset else ""))
    if size % dtype.itemsize:
        raise ValueError(f"token file {path} has {size} bytes, not a whole number of {dtype.name} tokens")
    return np.memmap(path, dtype=dtype.newbyteorder("<"), mode="r", offset=offset)


def _split_file_name(data_dir: pathlib.Path, meta: dict[str, Any], split: str) -> str:
    """The name of a split's token file: ``SPLIT.bin``, or the name llm.c gave it (``meta["files"]``).

    A name is a file of the data directory itself, never a path: a ``meta.json`` that says
    ``"../elsewhere"`` or ``null`` is refused here, naming the file, not followed or crashed on.
    """
    files = meta.get("files", {})
    name = files.get(split, f"{split}.bin") if isinstance(files, dict) else None
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise ValueError(f"{data_dir / META_NAME}: 'files' must map 'train' and 'val' to file names in "
                         f"{data_dir}, got {files!r:.80}")
    return name


def _header_bytes(data_dir: pathlib.Path, meta: dict[str, Any]) -> int:
    """How many bytes precede the tokens (llm.c's 1,024-byte header; 0 for npgpt's and nanoGPT's files)."""
    header = meta.get("header_bytes", 0)
    if not isinstance(header, int) or isinstance(header, bool) or header < 0:
        raise ValueError(f"{data_dir / META_NAME}: 'header_bytes' must be a non-negative integer, got {header!r:.80}")
    return header


class TokenFile:
    """One split of a prepared data directory: ``TokenFile(data_dir, "train")``.

    ``.tokens`` is the memmap, ``.meta`` the directory's meta.json,
    ``len()`` the number of tokens.
    """

    def __init__(self, data_dir: str | os.PathLike, split: str = "train", check_ids: bool = True) -> None:
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        self.data_dir = pathlib.Path(data_dir)
        self.meta = load_meta(self.data_dir)
        self.split = split
        self.path = self.data_dir / _split_file_name(self.data_dir, self.meta, split)
        self.tokens = load_tokens(self.path, self.meta["dtype"], _header_bytes(self.data_dir, self.meta))
        expected = self.meta.get(f"{split}_tokens")
        if expected is not None and expected != len(self.tokens):
            raise ValueError(f"{self.path} holds {len(self.tokens):,} {self.tokens.dtype.name} tokens, but "
                             f"{self.data_dir / META_NAME} says {expected:,}: the file or its dtype does not match")
        if check_ids:
            self.check_ids()

    def check_ids(self) -> None:
        """Every id must lie in ``0 .. vocab_size - 1``; the first one that does not is named with its offset.

        One pass over the file, in chunks (about a second per 2 GB), before any
        training: an id beyond the vocabulary would otherwise index past the
        embedding table steps later, or silently wrap.
        """
        vocab_size = self.meta["vocab_size"]
        if vocab_size >= 2 ** (8 * self.tokens.dtype.itemsize):
            return                     # every value the dtype can hold is an id
        for start in range(0, len(self.tokens), _CHUNK):
            chunk = self.tokens[start:start + _CHUNK]
            if int(chunk.max()) >= vocab_size:
                at = start + int(np.argmax(chunk >= vocab_size))
                raise ValueError(f"{self.path}: token {at:,} (byte offset {at * self.tokens.dtype.itemsize:,}) is "
                                 f"id {int(self.tokens[at])}, outside the vocabulary 0..{vocab_size - 1} of "
                                 f"{self.data_dir / META_NAME}; the file is corrupt or was made with another "
                                 "tokenizer (run `npgpt prepare` again)")

    def __len__(self) -> int:
        return len(self.tokens)

    def __repr__(self) -> str:
        return f"TokenFile({str(self.path)!r}, tokens={len(self):,}, dtype={self.tokens.dtype.name})"


# ================================================================= batches
class BatchSampler:
    """Random training windows: ``x, y = sampler.next()``, both int64 (B, T), ``y`` = ``x`` shifted by one.

    Each of the ``batch_size`` rows starts at a uniformly random offset
    ``s`` in ``0 .. len(tokens) - block_size - 1`` and holds
    ``tokens[s : s + T]`` as input and ``tokens[s + 1 : s + T + 1]`` as target.
    The generator is NumPy's PCG64 seeded with ``seed``; ``state_dict()``
    captures it (and the number of batches drawn), so that after
    ``load_state_dict`` the sampler continues with exactly the batches it
    would have drawn next.
    """

    def __init__(self, tokens: np.ndarray, batch_size: int, block_size: int, seed: int = 0) -> None:
        if batch_size <= 0 or block_size <= 0:
            raise ValueError(f"batch_size and block_size must be positive, got {batch_size}, {block_size}")
        n = len(tokens)
        if n < block_size + 1:
            raise ValueError(f"the token stream has {n:,} tokens, fewer than block_size + 1 = {block_size + 1}: "
                             "use a smaller block_size or more text")
        self.tokens = tokens
        self.batch_size, self.block_size, self.seed = int(batch_size), int(block_size), int(seed)
        self.rng = np.random.default_rng(self.seed)
        self.batches = 0
        self._offsets = np.arange(self.block_size + 1)

    def next(self) -> tuple[np.ndarray, np.ndarray]:
        """The next batch ``(x, y)``: two int64 arrays of shape (batch_size, block_size)."""
        starts = self.rng.integers(0, len(self.tokens) - self.block_size, size=self.batch_size)
        windows = np.asarray(self.tokens[starts[:, None] + self._offsets], dtype=np.int64)  # (B, T+1)
        self.batches += 1
        return windows[:, :-1], windows[:, 1:]

    __next__ = next

    def __iter__(self) -> BatchSampler:
        return self

    def state_dict(self) -> dict[str, Any]:
        """A JSON-serialisable snapshot: seed, shape, batches drawn and the generator's exact state."""
        return {"seed": self.seed, "batch_size": self.batch_size, "block_size": self.block_size,
                "batches": self.batches, "tokens": len(self.tokens),
                "bit_generator": _jsonable(self.rng.bit_generator.state)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        current = {"batch_size": self.batch_size, "block_size": self.block_size, "tokens": len(self.tokens)}
        for key, value in current.items():
            if key in state and state[key] != value:
                raise ValueError(f"BatchSampler.load_state_dict: the saved sampler had {key}={state[key]}, "
                                 f"this one has {value} (a different corpus or configuration)")
        self.seed = int(state["seed"])
        self.batches = int(state["batches"])
        self.rng.bit_generator.state = state["bit_generator"]


def _jsonable(value: Any) -> Any:
    """NumPy generator states hold Python ints (PCG64) or arrays (MT19937): make them JSON-safe."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.integer):
        return int(value)
    return value
