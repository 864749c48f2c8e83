"""Other projects' token files: nanoGPT's ``train.bin``/``val.bin`` + ``meta.pkl``, and llm.c's ``.bin`` shards.

Companion of ``docs/training.md`` (section "From text to batches"). npgpt's own data directory
(``npgpt prepare``) holds ``train.bin``, ``val.bin`` and a ``meta.json`` that says how to read
them. Two other layouts are common enough to read as they are, so ``npgpt train --data DIR``
trains on them without a conversion:

* **nanoGPT** (``data/*/prepare.py``): ``train.bin`` and ``val.bin`` are raw uint16 ids; a
  character-level set adds ``meta.pkl``, a pickled ``{"vocab_size": int, "itos": {int: str},
  "stoi": {str: int}}``. Without ``meta.pkl`` the ids are GPT-2's (vocabulary 50,257).
* **llm.c** (``dev/data/data_common.py``): one ``*train*.bin`` and one ``*val*.bin``, each a
  header of 256 little-endian int32 -- magic 20240520, version 1, the token count -- then that
  many uint16 GPT-2 ids.

A pickle is a program: ``pickle.load`` of a file from elsewhere runs whatever it says.
``meta.pkl`` is read by an unpickler that may build dicts, strings and integers only: any
reference to a class or function (the only way a pickle runs code) is refused, naming the file,
and the result is checked field by field.
"""

from __future__ import annotations

import io
import os
import pathlib
import pickle
from typing import Any, NamedTuple

import numpy as np

from npgpt.io import fileio

NANOGPT_META = "meta.pkl"
GPT2_VOCAB_SIZE = 50257
LLMC_MAGIC = 20240520              # llm.c's header: magic, version, token count, then 253 zeros
LLMC_VERSION = 1                   # uint16 GPT-2 ids
LLMC_HEADER_INTS = 256
LLMC_HEADER_BYTES = 4 * LLMC_HEADER_INTS


class _PlainDataUnpickler(pickle.Unpickler):
    """Builds only what pickle's own opcodes make (dicts, str, int, ...); every class or function lookup is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refers to {module}.{name}; only dicts of strings and integers are read")


def _check_plain(value: Any, where: str) -> None:
    """Only dicts, str and int (not bool), nested: what nanoGPT's ``meta.pkl`` holds."""
    if isinstance(value, dict):
        for k, v in value.items():
            _check_plain(k, where)
            _check_plain(v, where)
    elif not isinstance(value, str) and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"{where}: holds a {type(value).__name__}; nanoGPT's meta.pkl holds dicts of strings and "
                         "integers only")


def read_nanogpt_meta(path: str | os.PathLike) -> dict[str, Any]:
    """nanoGPT's ``meta.pkl``, read safely: ``{"vocab_size": int, "itos": {int: str}, "stoi": {str: int}}``.

    No code in the file runs (see the module's docstring); a file that is not a dict with a
    positive integer ``vocab_size``, or whose ``itos`` ids fall outside it, is a ``ValueError``
    naming the file.
    """
    path = pathlib.Path(path)
    raw = fileio.read_bytes(path, "nanoGPT meta.pkl", limit=fileio.MAX_SMALL_FILE)
    try:
        meta = _PlainDataUnpickler(io.BytesIO(raw)).load()
    except Exception as exc:          # a truncated or hostile pickle raises many kinds of error
        raise ValueError(f"{path}: not a nanoGPT meta.pkl ({type(exc).__name__}: {exc})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: a nanoGPT meta.pkl holds a dict, this one a {type(meta).__name__}")
    _check_plain(meta, str(path))
    vocab_size = meta.get("vocab_size")
    if not isinstance(vocab_size, int) or not 1 <= vocab_size <= 2 ** 16:
        raise ValueError(f"{path}: vocab_size must be an integer in 1..65536 (uint16 ids), got "
                         f"{fileio.excerpt(vocab_size)}")
    itos = meta.get("itos", {})
    if not isinstance(itos, dict) or any(not isinstance(i, int) or not 0 <= i < vocab_size for i in itos):
        raise ValueError(f"{path}: itos must map ids 0..{vocab_size - 1} to strings")
    return meta


class TokenData(NamedTuple):
    """Both splits of a foreign data directory, as read-only memmaps, and what reading them needs."""

    train: np.memmap
    val: np.memmap
    vocab_size: int
    itos: dict[int, str] | None       # a character-level set's id -> character, else None
    format: str                       # "nanogpt" or "llm.c"


def _memmap(path: pathlib.Path, dtype: Any, offset: int = 0, count: int | None = None) -> np.memmap:
    if not path.is_file():
        raise FileNotFoundError(f"token file {path} does not exist (or is not a regular file)")
    body = path.stat().st_size - offset
    itemsize = np.dtype(dtype).itemsize
    if body <= 0 or body % itemsize:
        raise ValueError(f"token file {path} has {body} bytes after its {offset}-byte header, not a whole, non-zero "
                         f"number of {np.dtype(dtype).name} tokens")
    if count is not None and count != body // itemsize:
        raise ValueError(f"{path}: its header says {count:,} tokens but it holds {body // itemsize:,}: the file is "
                         "truncated or not an llm.c token file")
    return np.memmap(path, dtype=np.dtype(dtype).newbyteorder("<"), mode="r", offset=offset)


def is_nanogpt_dir(data_dir: str | os.PathLike) -> bool:
    """A directory with nanoGPT's ``train.bin`` and ``val.bin`` and nothing of npgpt's.

    npgpt's own directory has a ``meta.json`` and a ``tokenizer``; one whose ``npgpt prepare``
    was killed may have the token files without the ``meta.json``, and it must read as not
    prepared (``npgpt.training.data.load_meta``), not as nanoGPT's: any ``tokenizer`` entry, or
    a hidden file (npgpt's lock and temporary files), says it is npgpt's.
    """
    d = pathlib.Path(data_dir)
    if not ((d / "train.bin").is_file() and (d / "val.bin").is_file()) or (d / "meta.json").exists():
        return False
    return not any(p.name == "tokenizer" or p.name.startswith(".") for p in d.iterdir())


def read_nanogpt_dir(data_dir: str | os.PathLike) -> TokenData:
    """nanoGPT's data directory: uint16 ``train.bin``/``val.bin``; the vocabulary from ``meta.pkl``, else GPT-2's."""
    d = pathlib.Path(data_dir)
    meta_path = d / NANOGPT_META
    meta = read_nanogpt_meta(meta_path) if meta_path.exists() else {"vocab_size": GPT2_VOCAB_SIZE}
    train, val = _memmap(d / "train.bin", np.uint16), _memmap(d / "val.bin", np.uint16)
    return TokenData(train, val, meta["vocab_size"], meta.get("itos"), "nanogpt")


def read_llmc_header(path: str | os.PathLike) -> int:
    """The token count in an llm.c token file's header, after checking its magic number and version."""
    path = pathlib.Path(path)
    with open(path, "rb") as f:
        raw = f.read(LLMC_HEADER_BYTES)
    if len(raw) < LLMC_HEADER_BYTES:
        raise ValueError(f"{path}: {len(raw)} bytes, shorter than llm.c's {LLMC_HEADER_BYTES}-byte header")
    magic, version, count = (int(v) for v in np.frombuffer(raw, dtype="<i4", count=3))
    if magic != LLMC_MAGIC:
        raise ValueError(f"{path}: magic number {magic}, not llm.c's {LLMC_MAGIC}: not an llm.c token file")
    if version != LLMC_VERSION:
        raise ValueError(f"{path}: llm.c token file version {version}; npgpt reads version {LLMC_VERSION} "
                         "(uint16 GPT-2 ids)")
    if count < 0:
        raise ValueError(f"{path}: the header's token count is negative ({count})")
    return count


def read_llmc_tokens(path: str | os.PathLike) -> np.memmap:
    """The uint16 ids of an llm.c token file, header checked (magic, version, count equal to the file's)."""
    path = pathlib.Path(path)
    return _memmap(path, np.uint16, LLMC_HEADER_BYTES, read_llmc_header(path))


def llmc_files(data_dir: str | os.PathLike) -> dict[str, pathlib.Path] | None:
    """``{"train": path, "val": path}`` of an llm.c directory (one ``*train*.bin``, one ``*val*.bin``,
    each starting with llm.c's magic number), or None if the directory is not one."""
    d = pathlib.Path(data_dir)
    found = {}
    for split in ("train", "val"):
        paths = sorted(p for p in d.glob(f"*{split}*.bin") if p.is_file() and _starts_with_magic(p))
        if len(paths) > 1:
            raise ValueError(f"{d}: {len(paths)} llm.c {split} shards ({', '.join(p.name for p in paths[:4])}...); "
                             "npgpt reads one file per split: concatenate the shards or point --data at one")
        if paths:
            found[split] = paths[0]
    return found if len(found) == 2 else None


def _starts_with_magic(path: pathlib.Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(4)
    return len(head) == 4 and int(np.frombuffer(head, dtype="<i4")[0]) == LLMC_MAGIC


def read_llmc_dir(data_dir: str | os.PathLike) -> TokenData:
    """An llm.c data directory: its train and val files, GPT-2's vocabulary."""
    files = llmc_files(data_dir)
    if files is None:
        raise FileNotFoundError(f"{data_dir} holds no llm.c token files (one *train*.bin and one *val*.bin, each "
                                f"starting with the magic number {LLMC_MAGIC})")
    return TokenData(read_llmc_tokens(files["train"]), read_llmc_tokens(files["val"]), GPT2_VOCAB_SIZE, None, "llm.c")


def foreign_meta(data_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The ``meta.json`` a foreign directory would have, for ``npgpt.training.data``; None if it is neither kind.

    Beside npgpt's fields (``dtype``, ``vocab_size``, token counts) it names each split's file
    (``files``) and the bytes to skip before the ids (``header_bytes``).
    """
    d = pathlib.Path(data_dir)
    if (d / "meta.json").exists():
        return None
    files = llmc_files(d)
    if files is not None:
        data = read_llmc_dir(d)
        files = {split: path.name for split, path in files.items()}
        header = LLMC_HEADER_BYTES
    elif is_nanogpt_dir(d):
        data = read_nanogpt_dir(d)
        files, header = {"train": "train.bin", "val": "val.bin"}, 0
    else:
        return None
    return {"format_version": 1, "dtype": "uint16", "vocab_size": data.vocab_size, "source_format": data.format,
            "train_tokens": len(data.train), "val_tokens": len(data.val), "files": files, "header_bytes": header}
