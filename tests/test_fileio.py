"""Atomic files (npgpt.io.fileio; docs/engineering.md, "Guarantees"): a writer's temporary file carries
its pid, and only a dead writer's is removed as debris. The commands' writers are tested whole in
tests/suites/test_writers.py."""

import pathlib
import subprocess
import sys
import textwrap

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
