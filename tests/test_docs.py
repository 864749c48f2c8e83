"""Every code listing in docs/ runs, and the outputs the docs show are the real ones.

Each page's ```python blocks run in order in one fresh interpreter, from the repository root.
A block preceded by the line ``<!-- skip -->`` is not run (e.g. it needs a GPU). When a
```text block directly follows a python block, it is the exact output that block prints.
"""

import json
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").glob("*.md"))
BLOCK = re.compile(r"(<!-- skip -->\s*\n)?```python\n(.*?)```\n(?:\s*```text\n(.*?)```)?", re.S)

RUNNER = r"""
import contextlib, io, json, sys, traceback
blocks = json.loads(sys.stdin.read())
namespace = {"__name__": "__main__"}
results = []
for code in blocks:
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            exec(compile(code, "<docs block>", "exec"), namespace)
    except Exception:
        results.append({"output": buffer.getvalue(), "error": traceback.format_exc()})
        break
    results.append({"output": buffer.getvalue(), "error": None})
print(json.dumps(results))
"""


def listings(page):
    """(code, expected output or None) for each runnable python block of a page."""
    found = []
    for skip, code, expected in BLOCK.findall(page.read_text()):
        if not skip:
            found.append((code, expected if expected else None))
    return found


def normalise(text):
    return "\n".join(line.rstrip() for line in text.strip().splitlines())


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_docs_listings_run_and_show_real_output(page):
    blocks = listings(page)
    if not blocks:
        pytest.skip(f"{page.name} has no runnable python listings")
    proc = subprocess.run([sys.executable, "-c", RUNNER], input=json.dumps([c for c, _ in blocks]),
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for i, ((code, expected), result) in enumerate(zip(blocks, results)):
        first_line = code.strip().splitlines()[0]
        assert result["error"] is None, f"{page.name} block {i + 1} ({first_line!r}) failed:\n{result['error']}"
        if expected is not None:
            assert normalise(result["output"]) == normalise(expected), (
                f"{page.name} block {i + 1} ({first_line!r}) prints\n{result['output']}\nbut the docs show\n{expected}")


def test_the_listing_parser_sees_skips_and_outputs(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("```python\nprint(1)\n```\n\n```text\n1\n```\n<!-- skip -->\n```python\nboom()\n```\n")
    assert listings(page) == [("print(1)\n", "1\n")]
