"""Crash-safe file writing: a file or a directory appears complete or not at all.

Used by every writer of lasting state (checkpoints, token files, tokenizers).
The recipe is the same each time: write everything under a temporary name in
the same directory, flush it to the disk (``fsync``), then ``rename`` it into
place. A rename within one file system is atomic, so a crash at any instant
leaves either the old version or the new one, never a torn mixture.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import stat
import tempfile
from typing import Any, Optional


def fsync(path: str | os.PathLike) -> None:
    """Flush a file's (or a directory's entries') data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, data: bytes | str) -> pathlib.Path:
    """Write ``data`` (bytes or str, UTF-8) to ``path`` via a temporary file and a rename."""
    path = pathlib.Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)          # mkstemp makes files private; these are for sharing
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def staging_directory(target: str | os.PathLike) -> pathlib.Path:
    """A new, empty, private directory next to ``target`` to assemble its next version in.

    Named ``.<name>.saving-*``: :func:`stale_staging` finds those a killed
    writer left behind (they are never complete, and are never read).
    """
    target = pathlib.Path(target)
    return pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}.saving-", dir=target.parent))


def stale_staging(target: str | os.PathLike) -> list[pathlib.Path]:
    """Staging directories of ``target`` (see :func:`staging_directory`)."""
    target = pathlib.Path(target)
    return sorted(target.parent.glob(f".{target.name}.saving-*"))


def backups(target: str | os.PathLike) -> list[pathlib.Path]:
    """Previous versions of ``target`` that :func:`replace_directory` parked, as ``.<name>.old-*/<name>``.

    One exists only if a crash hit between the two renames of a swap; it is
    then complete, and is the newest complete version.
    """
    target = pathlib.Path(target)
    return sorted(target.parent.glob(f".{target.name}.old-*/{target.name}"))


def replace_directory(staging: str | os.PathLike, target: str | os.PathLike) -> pathlib.Path:
    """Swap the fully written directory ``staging`` into place as ``target``.

    Between the two renames the previous ``target`` is still complete under
    ``.<name>.old-*/<name>`` next to it (readers that must survive a crash at
    that instant look there); it is deleted once the new one is in place.
    """
    staging, target = pathlib.Path(staging), pathlib.Path(target)
    if target.exists() and not target.is_dir():     # a file there is someone's: never delete it to make room
        raise NotADirectoryError(f"{target} exists and is not a directory")
    for item in staging.iterdir():
        if item.is_file():
            os.chmod(item, 0o644)     # temporary files are private; a model directory is for sharing
        fsync(item)
    fsync(staging)
    os.chmod(staging, 0o755)          # mkdtemp makes directories private
    backup = None
    if target.exists():
        backup = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.rename(target, backup / target.name)
    os.rename(staging, target)
    fsync(target.parent)
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)
    for orphan in backups(target):      # parked by an earlier swap that a crash interrupted
        shutil.rmtree(orphan.parent, ignore_errors=True)
    return target


MAX_SMALL_FILE = 16 * 2 ** 20          # a JSON file of settings or state (config.json, meta.json, ...): a few kB
MAX_TOKENIZER_FILE = 256 * 2 ** 20     # vocab.json / merges.txt / .tiktoken: GPT-2's are ~1 MB, the largest known ~40 MB
MAX_TEXT_FILE = 2 ** 30                # text read whole into lists (labelled examples, prompts): ~10x in Python objects


def read_bytes(path: str | os.PathLike, what: str = "file", limit: Optional[int] = MAX_SMALL_FILE) -> bytes:
    """The bytes of the regular file ``path``, refused before reading when it cannot be what ``what`` says.

    Refused (``ValueError`` naming ``what`` and the file): anything that is not a regular file
    after following links (``/dev/zero``, a FIFO, a socket: each would be read forever or block),
    and a file over ``limit`` bytes (``None``: no limit), judged by its size before a byte is read,
    so a 50 GiB sparse file costs one ``stat``. The opened file is checked again, and at most
    ``limit`` bytes are ever read, even from a file that grows meanwhile.
    """
    path = pathlib.Path(path)
    try:
        info = os.stat(path)     # before opening: opening a FIFO would wait for a writer
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path} does not exist") from None
    _check_regular(path, info, what, limit)
    with open(path, "rb") as f:
        _check_regular(path, os.fstat(f.fileno()), what, limit)     # the file opened, if swapped meanwhile
        data = f.read() if limit is None else f.read(limit + 1)
    if limit is not None and len(data) > limit:
        raise ValueError(f"{what} {path} grew beyond {limit:,} bytes while it was read")
    return data


def _check_regular(path: pathlib.Path, info: os.stat_result, what: str, limit: Optional[int]) -> None:
    if stat.S_ISDIR(info.st_mode):
        raise IsADirectoryError(f"{what} {path} is a directory, not a file")
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"{what} {path} is not a regular file (a device, FIFO or socket, or a link to one)")
    if limit is not None and info.st_size > limit:
        raise ValueError(f"{what} {path} has {info.st_size:,} bytes, more than such a file may have "
                         f"({limit:,}); is it the right file?")


def read_utf8(path: str | os.PathLike, what: str = "file", limit: Optional[int] = None) -> str:
    """The text of a UTF-8 file; bytes that are not UTF-8 raise ``ValueError`` naming the file and line.

    A leading byte-order mark (some editors write one) is dropped. ``what``
    says what the file is for, in the message ("input file", "data file").
    The file is read by :func:`read_bytes`: a regular file of at most ``limit`` bytes.
    """
    path = pathlib.Path(path)
    raw = read_bytes(path, what, limit)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ValueError(f"{what} {path} is not UTF-8 text: line {line}, byte {exc.start} "
                         f"({raw[exc.start:exc.start + 1]!r}) cannot be decoded; convert it to UTF-8 "
                         "(e.g. iconv -f latin1 -t utf-8)") from None


def excerpt(value: Any, n: int = 16) -> str:
    """At most ``n`` characters of ``repr(value)`` for an error message (``'root:x:0:0:ro...``).

    Messages about a malformed file quote it so the reader can find the spot, but a file may be a
    link to one that is none of npgpt's business (``/etc/passwd``, a key): a few characters
    locate the problem without copying the file into a log.
    """
    text = repr(value)
    return text if len(text) <= n else text[:n] + "..."


def unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    """``object_pairs_hook`` for ``json.loads``: a key given twice in one object is an error.

    JSON allows duplicate keys and ``json.loads`` keeps the last one silently;
    for a config or a vocabulary that hides a corrupt or tampered file, so
    the loaders of checkpoints and tokenizers refuse it.
    """
    result = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"the key {excerpt(key)} appears twice")
        result[key] = value
    return result


def is_int(value: Any) -> bool:
    """Is ``value`` (parsed from JSON) an integer? ``true`` and ``false`` are not, though Python's bools are ints."""
    return isinstance(value, int) and not isinstance(value, bool)
