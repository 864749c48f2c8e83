"""Crash-safe file writing: a file or a directory appears complete or not at all.

Used by every writer of lasting state (checkpoints, token files, tokenizers).
The recipe is the same each time: write everything under a temporary name in
the same directory, flush it to the disk (``fsync``), then ``rename`` it into
place. A rename within one file system is atomic, so a crash at any instant
leaves either the old version or the new one, never a torn mixture.

Three more rules make a directory safe to write (docs/engineering.md, "Guarantees"):

* **One writer.** :func:`hold` takes an exclusive ``flock`` on ``DIR/.lock``
  and writes the holder (pid, host, start time, command) into it; a second
  writer is refused at once with :class:`DirectoryLocked` naming the first.
  The kernel lets go of the lock when the holder ends, however it ends.
* **Debris is provably dead.** A temporary file is named after its writer's
  pid (``.NAME.PID-XXXX.tmp``) and ``flock``'ed by it until it is renamed;
  :func:`remove_abandoned` deletes one only when that pid is gone *and* the
  lock is free, so a live writer's file is never touched.
* **Errors name the file.** :func:`naming` gives a full disk (``ENOSPC``),
  a file-size limit (``EFBIG``) or a quota (``EDQUOT``) the path it hit,
  whichever library raised it.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import pathlib
import re
import shutil
import socket
import stat
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any, Optional

try:
    import fcntl
except ImportError:          # not POSIX (Windows): directories are not locked
    fcntl = None

LOCK_NAME = ".lock"
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


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
    fd, tmp = temporary_file(path)
    try:
        with naming(tmp), os.fdopen(fd, "wb", closefd=False) as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)          # mkstemp makes files private; these are for sharing
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    finally:
        os.close(fd)                  # after the rename: the flock guards the file until it has its name
    return path


# ------------------------------------------------------- temporary files
def _alive(pid: int) -> bool:
    """Is process ``pid`` running on this machine? (A pid we may not signal is alive.)"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def temporary_file(path: str | os.PathLike) -> tuple[int, str]:
    """A new private file beside ``path`` to write its next version in: ``(descriptor, name)``.

    Named ``.<name>.<pid>-XXXXXXXX.tmp`` and ``flock``'ed through the returned
    descriptor: keep it open until the file is renamed onto ``path`` (or
    deleted), so that :func:`remove_abandoned` can tell this writer's file,
    which it never deletes, from a dead writer's. Dead writers' files of the
    same name are deleted first.
    """
    path = pathlib.Path(path)
    remove_abandoned(path.parent, f".{glob.escape(path.name)}.*.tmp")      # a killed writer's, of this name
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp", dir=path.parent)
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)     # new and ours: never blocks
    return fd, tmp


# ".NAME.PID-XXXXXXXX.tmp" (temporary_file), ".PREFIX.PID-XXXXXXXX" and "npgpt-PREFIX-PID-XXXXXXXX"
# (private_directory), ".NAME.saving-PID-XXXXXXXX" (staging_directory); XXXXXXXX is tempfile's random part.
_RANDOM = "[A-Za-z0-9_]{8}"
_TAGGED = re.compile(rf"^(?:\..+\.(\d+)-{_RANDOM}\.tmp|\.saving\.(\d+)-{_RANDOM}|\..+\.saving-(\d+)-{_RANDOM}"
                     rf"|npgpt-[a-z]+-(\d+)-{_RANDOM})$")


def _writer_pid(name: str) -> Optional[int]:
    """The pid in a name made by :func:`temporary_file` or :func:`private_directory`, or None."""
    match = _TAGGED.match(name)
    return int(next(g for g in match.groups() if g is not None)) if match else None


def abandoned(path: str | os.PathLike) -> bool:
    """Was ``path`` (a temporary file or directory of ours) left by a writer that is dead?

    Provably: the pid in its name is not running here, and nobody holds its
    ``flock`` (a file's own, a directory's ``.lock``). A name without a pid
    (an older npgpt's) is never called abandoned.
    """
    path = pathlib.Path(path)
    pid = _writer_pid(path.name)
    if pid is None or _alive(pid):
        return False
    guard = path / LOCK_NAME if path.is_dir() else path
    if fcntl is None or not guard.exists():
        return True
    try:
        fd = os.open(guard, os.O_RDONLY | os.O_NONBLOCK | _NOFOLLOW)
    except FileNotFoundError:
        return True
    except OSError:
        return False                        # not a file we made (a link, a FIFO ...): never ours to delete
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False                        # a writer in another pid namespace or on another host
    finally:
        os.close(fd)
    return True


def remove_abandoned(directory: str | os.PathLike, pattern: str = ".*") -> list[pathlib.Path]:
    """Delete the temporary files and directories in ``directory`` whose writers are dead; returns them.

    Only names that :func:`temporary_file` and :func:`private_directory`
    make, and only :func:`abandoned` ones: a live writer's are kept.
    """
    directory = pathlib.Path(directory)
    removed = []
    if not directory.is_dir():
        return removed
    for item in sorted(directory.glob(pattern)):
        if _writer_pid(item.name) is None or item.is_symlink() or not abandoned(item):
            continue
        if item.is_dir():
            shutil.rmtree(item, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                item.unlink()
        removed.append(item)
    return removed


@contextlib.contextmanager
def private_directory(parent: str | os.PathLike, prefix: str) -> Iterator[pathlib.Path]:
    """A new directory ``PARENT/<prefix><pid>-XXXXXXXX`` for this process's scratch files, deleted on exit.

    Its ``.lock`` is ``flock``'ed while it is in use, so that
    :func:`remove_abandoned` deletes it only after its writer died (a kill
    leaves it behind: no exit code runs); each call first deletes the
    abandoned ones of the same ``prefix`` in ``parent``.
    """
    remove_abandoned(parent, f"{glob.escape(prefix)}*")        # a killed writer's, of this kind
    path = pathlib.Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=parent))
    fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        os.close(fd)


def publish(staging: str | os.PathLike, directory: str | os.PathLike, last: str,
            alone: Optional[str] = None) -> list[str]:
    """Move the files written in ``staging`` into ``directory``, complete or refused; returns their names.

    Only those files are replaced; nothing else in ``directory`` is touched.
    ``last`` is the file a reader needs before it reads the others (a model's
    ``config.json``, a tokenizer's ``vocab.json``): it is renamed last, and when
    the new version differs from the old in more than the file ``alone``, the
    old ``last`` is deleted first. So a kill between two renames leaves a
    directory a reader refuses (``last`` is missing), never files of two
    versions. A new version that differs only in ``alone`` (a model's weights)
    is one rename: atomic. Every file is flushed to the disk before any rename.
    """
    staging, directory = pathlib.Path(staging), pathlib.Path(directory)
    names = sorted(p.name for p in staging.iterdir() if p.name != LOCK_NAME and p.is_file())
    for name in names:
        os.chmod(staging / name, 0o644)      # temporary files are private; these are for sharing
        with naming(staging / name):
            fsync(staging / name)
    for name in names:                        # a killed writer's temporary files of these names
        remove_abandoned(directory, f".{glob.escape(name)}.*.tmp")
    changed = [name for name in names if name != alone and not _same_bytes(staging / name, directory / name)]
    if changed and (directory / last).exists():
        os.unlink(directory / last)           # from here until the last rename: refused, never mixed
        fsync(directory)
    for name in sorted(names, key=lambda n: n == last):
        if changed or name == alone:
            os.replace(staging / name, directory / name)
    fsync(directory)
    return names


def _same_bytes(a: pathlib.Path, b: pathlib.Path) -> bool:
    """Do files ``a`` and ``b`` hold the same bytes? (``b`` may be missing.)"""
    try:
        if b.is_symlink() or a.stat().st_size != b.stat().st_size:
            return False
        with open(a, "rb") as fa, open(b, "rb") as fb:
            while True:
                chunk = fa.read(1 << 20)
                if chunk != fb.read(1 << 20):
                    return False
                if not chunk:
                    return True
    except OSError:
        return False


# ---------------------------------------------------- errors of writing
DISK_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
_OS_ERROR = re.compile(r"os error (\d+)")


def disk_full(exc: BaseException) -> bool:
    """Is ``exc`` a full disk, a file-size limit or a quota (as an OSError, or safetensors' wrapping)?"""
    return errno_of(exc) in DISK_FULL


def errno_of(exc: BaseException) -> Optional[int]:
    """The operating-system error number of ``exc``: an OSError's, or the one safetensors quotes; else None."""
    if isinstance(exc, OSError):
        return exc.errno
    match = _OS_ERROR.search(str(exc)) if type(exc).__name__ == "SafetensorError" else None
    return int(match.group(1)) if match else None


@contextlib.contextmanager
def naming(path: str | os.PathLike) -> Iterator[None]:
    """Give an error of writing ``path`` the file's name, when the library that raised it did not.

    An ``OSError`` without a filename (Python's ``write``, Pillow's) gets
    ``path``; safetensors' ``SafetensorError`` that wraps an operating-system
    error (``... (os error 28)``) becomes that ``OSError``, naming ``path``.
    """
    try:
        yield
    except Exception as exc:
        code = errno_of(exc)
        if code is None or (isinstance(exc, OSError) and exc.filename):
            raise
        raise type(exc)(code, os.strerror(code), str(path)) if isinstance(exc, OSError) \
            else OSError(code, os.strerror(code), str(path)) from exc


# ------------------------------------------------------------------- locks
class DirectoryLocked(OSError):
    """Another process writes to the directory (the message names it: pid, host, start time, command)."""


def _holder(path: pathlib.Path) -> tuple[str, str]:
    """(what the holder is, who it is), from what the holder wrote into the lock file."""
    try:
        info = read_json(path, "lock file", limit=4096)
        what = info.get("command", "npgpt process")
        return str(what)[:80], f"pid {info['pid']} on {info['host']}, started {info['started']}"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return "npgpt process", "a process that has not yet written its name into the lock file"


def _refusal(directory: pathlib.Path, lock_file: pathlib.Path) -> DirectoryLocked:
    what, who = _holder(lock_file)
    where = "" if lock_file.parent == directory else f", inside {lock_file.parent}, which"
    return DirectoryLocked(f"{directory}{where} is in use by another {what} ({who}); wait for it to end, "
                           "or choose another --out")


def _acquire(path: pathlib.Path, directory: pathlib.Path) -> int:
    """A descriptor of the lock file ``path``, exclusively flock'ed; refused at once if another process holds it.

    The holder deletes the file when it lets go, so a lock taken on a file that is no
    longer at ``path`` (deleted between our open and our flock) is let go and taken again.
    """
    while True:
        try:   # never through a link, never a FIFO or device: the lock file is truncated and written
            fd = os.open(path, os.O_RDWR | os.O_CREAT | _NOFOLLOW | os.O_NONBLOCK, 0o644)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENXIO, errno.EISDIR):
                raise
            fd = None
        if fd is None or not stat.S_ISREG(os.fstat(fd).st_mode):
            if fd is not None:
                os.close(fd)
            raise FileExistsError(f"{path} is not a regular file (a link, a directory, a FIFO or a device); npgpt "
                                  f"keeps the lock of {directory} there: move it away")
        if fcntl is None:
            return fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _refusal(directory, path) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def _refuse_held_ancestors(directory: pathlib.Path) -> None:
    """Refuse ``directory`` if a directory above it is held (``prepare --out RUN/checkpoint`` while RUN trains)."""
    if fcntl is None:
        return
    for parent in directory.resolve().parents:
        lock_file = parent / LOCK_NAME
        if not lock_file.is_file():
            continue
        try:
            fd = os.open(lock_file, os.O_RDONLY | os.O_NONBLOCK)      # a FIFO put there must not block us
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)      # a probe, let go at once
        except BlockingIOError:
            raise _refusal(directory, lock_file) from None
        finally:
            os.close(fd)


@contextlib.contextmanager
def hold(directory: str | os.PathLike, command: str) -> Iterator[pathlib.Path]:
    """Be the one writer of ``directory``: ``with fileio.hold(out, "npgpt prepare"): ...``; yields the lock file.

    Creates the directory, takes an exclusive ``flock`` on ``DIR/.lock``
    (released on exit, and by the kernel when the process dies, even by
    SIGKILL) and records the holder in it (``command`` says what it is, for
    the refusal of the next). A directory another process holds, or one
    inside a held directory, raises :class:`DirectoryLocked` naming that
    process, at once. A clean exit deletes the lock file, and the directory
    too if this call created it and it stayed empty.
    """
    directory = pathlib.Path(directory)
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_NAME
    try:
        _refuse_held_ancestors(directory)
        fd = _acquire(path, directory)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                directory.rmdir()
        raise
    try:
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                  "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        _test_pause_holding(directory)
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)                   # while still held: a finished writer leaves no lock file behind
        os.close(fd)                          # releases the flock
        if created:
            with contextlib.suppress(OSError):
                directory.rmdir()             # only if empty: a failed first run leaves nothing


def _test_pause_holding(directory: pathlib.Path) -> None:
    """Test hook: ``NPGPT_TEST_PAUSE_HOLDING=SECONDS`` sleeps once the lock is held (tests of two writers)."""
    seconds = os.environ.get("NPGPT_TEST_PAUSE_HOLDING")
    if seconds:
        print(f"npgpt-test: holding {directory}", file=sys.stderr, flush=True)
        time.sleep(float(seconds))


def staging_directory(target: str | os.PathLike) -> pathlib.Path:
    """A new, empty, private directory next to ``target`` to assemble its next version in.

    Named ``.<name>.saving-<pid>-*``: :func:`stale_staging` finds those a
    killed writer left behind (they are never complete, and are never read),
    and :func:`remove_abandoned` deletes those whose writer's pid is gone.
    """
    target = pathlib.Path(target)
    return pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}.saving-{os.getpid()}-", dir=target.parent))


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


def parse_json(data: bytes | str, where: Any, error: type[Exception] = ValueError) -> Any:
    """JSON text (or UTF-8 bytes) -> its value; anything malformed is ``error`` naming ``where``.

    The one guarded JSON reader of the package: checkpoints, tokenizer files, data and run
    directories, settings files and JSON Lines records all parse through it. Malformed covers more
    than syntax: bytes that are not UTF-8, a key given twice in one object (``unique_keys``),
    nesting deep enough to exhaust Python's recursion limit, and integers longer than Python's
    limit on converting digits (``sys.set_int_max_str_digits``). The message reads
    ``"{where}: not valid JSON (why)"``.
    """
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        return json.loads(text, object_pairs_hook=unique_keys)
    except RecursionError:
        raise error(f"{where}: not valid JSON (nested too deeply)") from None
    except ValueError as exc:          # JSONDecodeError, UnicodeDecodeError, too many digits, a repeated key
        raise error(f"{where}: not valid JSON ({exc})") from None


def read_json(path: str | os.PathLike, what: str = "file", limit: Optional[int] = MAX_SMALL_FILE,
              error: type[Exception] = ValueError) -> Any:
    """The JSON value in the file ``path``: read as :func:`read_bytes` reads (bounded, a regular
    file), parsed as :func:`parse_json` parses."""
    return parse_json(read_bytes(path, what, limit), path, error)


def is_int(value: Any) -> bool:
    """Is ``value`` (parsed from JSON) an integer? ``true`` and ``false`` are not, though Python's bools are ints."""
    return isinstance(value, int) and not isinstance(value, bool)
