"""Files (npgpt.io.fileio; docs/engineering.md, "Guarantees"): atomic writes, a writer's temporary file
that carries its pid (only a dead writer's is removed as debris), bounded reads of regular files
only, and the one guarded JSON parser. The commands' writers are tested whole in
tests/suites/test_writers.py, the loaders' refusals in tests/suites/test_hardening.py."""

import errno
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest
from run_helpers import ENV, ROOT, stop_process

from npgpt.io import fileio


def test_a_live_writers_temporary_file_is_kept(tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    script = textwrap.dedent(f"""
        import pathlib, time
        from npgpt.training import data
        f = data._TempFile(pathlib.Path({str(out)!r}) / "train.bin")
        f.write(b"x" * 1000)
        print(f.tmp, flush=True)
        time.sleep(120)
    """)
    live = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=ROOT, env=ENV)
    try:
        tmp = pathlib.Path(live.stdout.readline().strip())
        assert tmp.exists()
        fileio.remove_abandoned(out)
        assert tmp.exists()
    finally:
        stop_process(live)
    fileio.remove_abandoned(out)                        # now its writer is dead
    assert not tmp.exists()


def test_atomic_write_replaces_the_whole_file_and_leaves_nothing_else(tmp_path):
    path = tmp_path / "settings.json"
    fileio.atomic_write(path, "first, and longer than the second")
    fileio.atomic_write(path, b"second")
    assert path.read_bytes() == b"second" and oct(path.stat().st_mode & 0o777) == oct(0o644)
    assert [p.name for p in tmp_path.iterdir()] == ["settings.json"]          # no temporary file left


def test_a_failed_atomic_write_keeps_the_old_file_and_removes_its_temporary(tmp_path, monkeypatch):
    path = tmp_path / "vocab.json"
    fileio.atomic_write(path, "old")

    def full_disk(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
    monkeypatch.setattr(fileio.os, "replace", full_disk)
    with pytest.raises(OSError) as info:
        fileio.atomic_write(path, "new")
    assert fileio.disk_full(info.value)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["vocab.json"]


def test_only_a_regular_file_of_at_most_limit_bytes_is_read(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"data file {tmp_path / 'missing'} does not exist"):
        fileio.read_bytes(tmp_path / "missing", "data file")
    with pytest.raises(IsADirectoryError, match="is a directory, not a file"):
        fileio.read_bytes(tmp_path, "config file")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)                   # opening it would wait for a writer: refused from its stat alone
    with pytest.raises(ValueError, match="is not a regular file"):
        fileio.read_bytes(fifo, "config file")
    big = tmp_path / "big.json"
    big.write_bytes(b" " * 101)
    with pytest.raises(ValueError, match=r"big.json has 101 bytes, more than such a file may have \(100\)"):
        fileio.read_bytes(big, "config file", limit=100)
    assert fileio.read_bytes(big, limit=None) == b" " * 101


def test_read_utf8_drops_a_byte_order_mark_and_names_the_line_of_bad_bytes(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_bytes(b"\xef\xbb\xbfone\ntwo\n")
    assert fileio.read_utf8(path) == "one\ntwo\n"
    path.write_bytes(b"one\ntwo \xe9t\xe9\n")         # latin-1
    with pytest.raises(ValueError, match=r"input file .*corpus.txt is not UTF-8 text: line 2, byte 8"):
        fileio.read_utf8(path, "input file")


class MyError(Exception):
    pass


@pytest.mark.parametrize("text, why", [('{"a": 1, "a": 2}', "appears twice"), ("[" * 100_000, "nested too deeply"),
                                       ("1" * 5000, "digits"), ("{'a': 1}", "property name"), (b"\xff{}", "utf-8")],
                         ids=["repeated-key", "deep", "long-integer", "syntax", "not-utf8"])
def test_parse_json_refuses_what_json_loads_would_accept_silently_or_choke_on(text, why):
    """json.loads keeps the last of two keys and dies with RecursionError on deep nesting: here each
    is one error of the caller's class, naming the place."""
    with pytest.raises(MyError, match=rf"^config.json: not valid JSON \(.*{why}") as info:
        fileio.parse_json(text, "config.json", MyError)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_an_excerpt_quotes_a_few_characters_at_most():
    assert fileio.excerpt("root:x:0:0:root:/root:/bin/bash") == "'root:x:0:0:root..."      # 16 of repr's characters
    assert fileio.excerpt(12) == "12"
