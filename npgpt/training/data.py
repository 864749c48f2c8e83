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
(docs/training.md eq. 2). Its random generator's state is part of a
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
from typing import Any, Optional

import numpy as np
from numpy.typing import DTypeLike

from npgpt.backend import default_workers
from npgpt.io import fileio
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


def _read_documents(input_files: Iterable[str | os.PathLike]) -> Iterator[tuple[pathlib.Path, str]]:
    paths = [pathlib.Path(p) for p in input_files]
    if not paths:
        raise ValueError("prepare: no input files given")
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"prepare: input file {path} does not exist")
        if not path.is_file():
            raise ValueError(f"prepare: {path} is not a regular file")
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"prepare: {path} is not UTF-8 text ({exc})") from None
        docs = split_documents(text)
        if not docs:
            raise ValueError(f"prepare: {path} is empty (no text besides whitespace and {EOT} markers)")
        for doc in docs:
            yield path, doc


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

    ``workers`` processes (default: one per CPU core) encode contiguous runs of documents; the
    files are the same bytes whatever their number (see :func:`prepare_documents`).
    """
    paths = [pathlib.Path(p) for p in input_files]
    docs = list(_read_documents(paths))
    sources = [{"path": str(p), "bytes": p.stat().st_size} for p in paths]
    return prepare_documents([d for _, d in docs], tokenizer, out_dir, val_fraction=val_fraction,
                             sources=sources, progress=progress, workers=workers)


_TASK_BYTES = 1 << 21          # text per task of a worker: small enough to balance, large enough to amortise
_MIN_TASK_BYTES = 1 << 18      # below this a second process costs more than it saves


def prepare_documents(documents: Iterable[str], tokenizer: Any, out_dir: str | os.PathLike, val_fraction: float = 0.1,
                      sources: Optional[list[dict[str, Any]]] = None, progress: bool = True,
                      workers: Optional[int] = None) -> dict[str, Any]:
    """Like :func:`prepare` for a list of document strings (e.g. ``datasets.load_documents``).

    The documents are cut into runs of about 2 MB of text, in order; ``workers`` processes
    (``multiprocessing``; default one per core, never more than there are runs) encode a run
    each, and the parent appends each run's tokens to the files in run order as they come back.
    So the files are byte-identical for any number of workers, and memory holds the text plus a
    few runs' tokens, never the whole stream. With an npgpt ``Tokenizer`` a document's ids go
    from its caches to the file as packed integers (``Tokenizer.encode_ordinary_array``), never
    as a list of Python ints.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"prepare: val_fraction must lie strictly between 0 and 1, got {val_fraction}")
    if workers is None:
        workers = default_workers()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"prepare: workers must be an integer >= 1 (the number of processes), got {workers!r}")
    documents = [d for d in documents if d.strip()]
    if not documents:
        raise ValueError("prepare: no non-empty documents to tokenize")
    vocab_size = _vocab_size(tokenizer)
    dtype = token_dtype(vocab_size)
    eot = _eot_id(tokenizer)
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fileio.remove_abandoned(out_dir)                      # token files of a killed prepare
    fileio.remove_abandoned(tempfile.gettempdir(), f"{_SHARE_PREFIX}*")   # and its workers' caches

    sizes = [len(d.encode("utf-8")) for d in documents]
    total_bytes = sum(sizes)
    runs = _runs(sizes, max(_MIN_TASK_BYTES, min(_TASK_BYTES, total_bytes // workers + 1)))
    workers = min(workers, len(runs))
    bar = Progress(total_bytes, "tokenizing", enabled=progress, unit="B")
    started = time.perf_counter()
    files = {split: _TempFile(out_dir / f"{split}.bin") for split in ("train", "val")}
    staging = None
    try:
        counts = {"train": 0, "val": 0}
        done_bytes = 0
        encoded = _encode_runs(documents, runs, tokenizer, eot, dtype, vocab_size, val_fraction, workers)
        for (a, b), pieces in zip(runs, encoded, strict=True):
            for split, piece in zip(("train", "val"), pieces):
                files[split].write(piece)
                counts[split] += len(piece) // dtype.itemsize
            done_bytes += sum(sizes[a:b])
            bar.update(done_bytes)
        bar.close()
        seconds = time.perf_counter() - started
        if counts["val"] == 0:         # every document is tiny: the stream's tail is the validation split
            n_val = max(1, int(round(counts["train"] * val_fraction)))
            if counts["train"] - n_val >= 1:
                files["val"].write(files["train"].cut_tail((counts["train"] - n_val) * dtype.itemsize))
                counts["train"] -= n_val
                counts["val"] = n_val
        if counts["train"] < 1:
            raise ValueError(f"prepare: {counts['train'] + counts['val']} tokens are too few to split into "
                             "train and validation")

        tokenizer_info = {"class": f"{type(tokenizer).__module__}.{type(tokenizer).__name__}",
                          "vocab_size": vocab_size, "eot_token_id": eot, "dir": None}
        if hasattr(tokenizer, "save"):
            staging = fileio.staging_directory(out_dir / TOKENIZER_DIR)
            tokenizer.save(staging)
            tokenizer_info.update(dir=TOKENIZER_DIR, sha256=tokenizer_digest(staging))
        meta = {"format_version": FORMAT_VERSION, "dtype": dtype.name, "vocab_size": vocab_size,
                "eot_token_id": eot, "train_tokens": counts["train"], "val_tokens": counts["val"],
                "documents": len(documents), "val_fraction": val_fraction, "tokenizer": tokenizer_info,
                "sources": sources or [], "tokenize_seconds": round(seconds, 3)}
        # Everything new is ready beside the old. From here a kill must leave "not prepared", never
        # the old ids beside the new tokenizer: meta.json goes first, the new files take their
        # names, and meta.json (with the tokenizer's digest) comes back last. A directory with a
        # meta.json is complete.
        if os.path.lexists(out_dir / META_NAME):
            os.unlink(out_dir / META_NAME)
            fileio.fsync(out_dir)
        for f in files.values():
            f.commit()
        if staging is not None:
            fileio.replace_directory(staging, out_dir / TOKENIZER_DIR)
            staging = None
    finally:
        for f in files.values():
            f.discard()
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    fileio.atomic_write(out_dir / META_NAME, json.dumps(meta, indent=2) + "\n")
    fileio.fsync(out_dir)
    return meta


def _runs(sizes: list[int], run_bytes: int) -> list[tuple[int, int]]:
    """Cut documents (their sizes in bytes) into consecutive ``[a, b)`` runs of about ``run_bytes``."""
    runs, a, total = [], 0, 0
    for i, size in enumerate(sizes):
        total += size
        if total >= run_bytes:
            runs.append((a, i + 1))
            a, total = i + 1, 0
    if a < len(sizes):
        runs.append((a, len(sizes)))
    return runs


_SHARE_PREFIX = "npgpt-prepare-"      # the workers' shared cache directory, in $TMPDIR


# What every task of one prepare needs, set once per process (inherited by forked workers, or
# sent once to each spawned one) so that a task is only a pair of indices.
_JOB: dict[str, Any] = {}


def _start_job(documents: list[str], tokenizer: Any, eot: int, dtype: np.dtype, vocab_size: int,
               val_fraction: float, share: Optional[str] = None) -> None:
    _JOB.update(documents=documents, tokenizer=tokenizer, eot=eot, dtype=dtype, vocab_size=vocab_size,
                val_fraction=val_fraction, share=share, shared_seen=set(), shared_count=0)


def _learn_from_others(caches: Any) -> None:
    """Add the cache entries other workers have published in the ``share`` directory since last time.

    Workers publish what their caches learned after each run (``_publish``), so a word or chunk
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


def _encode_run(run: tuple[int, int]) -> tuple[bytes, bytes]:
    """The train and validation tokens of documents ``run[0]:run[1]``, packed as the files hold them."""
    tokenizer, eot, dtype, vocab_size = _JOB["tokenizer"], _JOB["eot"], _JOB["dtype"], _JOB["vocab_size"]
    packed = getattr(tokenizer, "encode_ordinary_array", None)      # npgpt's Tokenizer: no Python ints
    caches = getattr(tokenizer, "caches", None) if _JOB["share"] else None
    if caches is not None:
        _learn_from_others(caches)
        mark = caches.mark()
    train, val = [], []
    for doc in _JOB["documents"][run[0]:run[1]]:
        if packed is not None:
            ids = np.frombuffer(packed(doc), dtype=np.uint16 if vocab_size <= 1 << 16 else np.uint32)
        else:
            ids = np.asarray(list(tokenizer.encode(doc, allowed_special=set(), disallowed_special=())),
                             dtype=np.int64)                         # special tokens' text as plain text
        if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
            raise ValueError(f"prepare: the tokenizer produced ids outside 0..{vocab_size - 1}")
        stream = np.empty(ids.size + 1, dtype=dtype)
        stream[:-1] = ids
        stream[-1] = eot
        # The validation split is the tail of *every* document, not the tail of the whole
        # stream: with a few large sources (plays, speeches, a novel) the stream's tail would
        # be one source only, and the validation loss would measure a change of domain.
        n_train = stream.size - int(stream.size * _JOB["val_fraction"])
        train.append(stream[:n_train])
        val.append(stream[n_train:])
    if caches is not None:
        _publish(caches, mark)
    return np.concatenate(train).tobytes(), np.concatenate(val).tobytes()


def _encode_runs(documents: list[str], runs: list[tuple[int, int]], tokenizer: Any, eot: int, dtype: np.dtype,
                 vocab_size: int, val_fraction: float, workers: int) -> Iterator[tuple[bytes, bytes]]:
    """``_encode_run`` of every run, in order: in this process, or in a pool of ``workers``."""
    job = (documents, tokenizer, eot, dtype, vocab_size, val_fraction)
    if workers == 1:
        _start_job(*job)
        try:
            yield from map(_encode_run, runs)
        finally:
            _JOB.clear()
        return
    import multiprocessing

    # fork shares the documents and the tokenizer (with its warm caches) without copying them;
    # elsewhere (macOS, Windows) the default start method sends each worker a copy.
    context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else None)
    with fileio.private_directory(tempfile.gettempdir(), _SHARE_PREFIX) as share, \
            context.Pool(workers, initializer=_start_job, initargs=(*job, str(share))) as pool:
        yield from pool.imap(_encode_run, runs)


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


def load_tokens(path: str | os.PathLike, dtype: Optional[DTypeLike] = None) -> np.memmap:
    """A read-only ``numpy.memmap`` of a token file; ``dtype`` from the ``meta.json`` beside it if not given.

    ``path`` is a ``.bin`` file, or a data directory plus ``"train"``/``"val"``
    via :class:`TokenFile`.
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
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"token file {path} is empty")
    if size % dtype.itemsize:
        raise ValueError(f"token file {path} has {size} bytes, not a whole number of {dtype.name} tokens")
    return np.memmap(path, dtype=dtype.newbyteorder("<"), mode="r")


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
        self.path = self.data_dir / f"{split}.bin"
        self.tokens = load_tokens(self.path, self.meta["dtype"])
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
