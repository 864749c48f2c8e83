"""Every code listing in docs/ runs, and the outputs the docs show are the real ones.

Each page's ```python blocks run in order in one fresh interpreter, from the repository root;
docs/solutions.md runs one fresh interpreter per exercise, so that every solution works on its own
(its imports and data in its own listings, nothing from the solution before it).
A block preceded by the line ``<!-- skip -->`` is not run (e.g. it needs a GPU). When a
```text block directly follows a python block, it is the output that block prints.

"The output" means: the same text, with every printed number allowed to differ by at most one
unit in its last printed digit. The last digit of a rounded float is not a fact about the
library: a value of 0.305 prints as 0.30 with one BLAS build and 0.31 with another, because the
order of a matrix product's additions (and so the last bits of float32) depends on the build and
the CPU. A page that pinned that digit would fail on a reader's machine with nothing wrong. So
:func:`same_output` splits both texts into numbers and the text between them, and requires

* the text between the numbers to be equal, except that a run of spaces may be longer or shorter
  (a number that gains a digit shifts a table's padding);
* the same count of numbers, in the same order, each of the same kind;
* integers (no decimal point, no exponent: token ids, counts, sizes) to be equal exactly;
* decimals (``0.30``, ``-38.92``, ``2.5e-05``, ``1,057.5``) to differ by at most one unit in the
  last digit printed, e.g. 0.01 for ``0.30``, 1e-07 for ``2.5e-05``.

A wrong result still fails: a different word, a missing line, an id off by one, or a decimal off
by two units in its last digit. A number that moves further than one unit across BLAS builds
(anything a few hundred steps of training amplify) is not stable enough to print at that
precision; the listing has to print it at a precision that is stable, or compute something that
is (tests/suites/test_docs.py checks every page with this rule on each run).
"""

import json
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
# The English chapters and the Chinese edition (docs/zh/), whose listings run on the Chinese data.
SOLUTIONS = ROOT / "docs" / "solutions.md"
PAGES = [p for p in sorted((ROOT / "docs").glob("*.md")) if p != SOLUTIONS] + sorted((ROOT / "docs" / "zh").glob("*.md"))
EXERCISE = re.compile(r"^### Exercise (\d+\.\d+) \{ #ex-\d+-\d+ \}\n", re.M)
BLOCK = re.compile(r"(<!-- skip -->\s*\n)?```python\n(.*?)```\n(?:\s*```text\n(.*?)```)?", re.S)
# A number as Python prints one: optional sign, digits (optionally grouped by thousands with
# commas), an optional fraction, an optional exponent. Digits glued to letters (``head0``,
# ``float32``) are numbers too: they are compared exactly, as integers.
NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?")

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


def _split(text):
    """``text`` as (the text between numbers, [(value, unit or None for an integer), ...])."""
    words, numbers, last = [], [], 0
    for match in NUMBER.finditer(text):
        words.append(text[last:match.start()])
        last = match.end()
        token = match.group().replace(",", "")
        mantissa, _, exponent = token.lower().partition("e")
        if "." not in mantissa and not exponent:
            numbers.append((int(token), None))
            continue
        decimals = len(mantissa.partition(".")[2])
        numbers.append((float(token), 10.0 ** (int(exponent or 0) - decimals)))
    words.append(text[last:])
    return [re.sub(r" +", " ", w) for w in words], numbers


def same_output(actual, expected):
    """Whether ``actual`` shows what ``expected`` shows, by the rule of the module docstring.

    Returns ``(True, "")`` or ``(False, why)``; ``why`` names the first difference.
    """
    actual_words, actual_numbers = _split(normalise(actual))
    expected_words, expected_numbers = _split(normalise(expected))
    if actual_words != expected_words:
        for a, e in zip(actual_words, expected_words):
            if a != e:
                at = next((i for i, (x, y) in enumerate(zip(a, e)) if x != y), min(len(a), len(e)))
                start = max(at - 20, 0)
                return False, f"the text differs: {a[start:at + 20]!r} where the docs show {e[start:at + 20]!r}"
        return False, f"{len(actual_numbers)} numbers printed where the docs show {len(expected_numbers)}"
    for (a, a_unit), (e, e_unit) in zip(actual_numbers, expected_numbers):
        if (a_unit is None) != (e_unit is None):
            return False, f"{a} and {e} are not the same kind of number (integer or decimal)"
        if e_unit is None:
            if a != e:
                return False, f"the integer {a} where the docs show {e}"
        else:
            unit = max(a_unit, e_unit)
            if abs(a - e) > unit * (1 + 1e-9):          # 1e-9: 0.31 - 0.30 is 0.010000000000000009
                return False, f"{a} where the docs show {e}: more than one unit ({unit:g}) in the last digit"
    return True, ""


def listings(page):
    """(code, expected output or None) for each runnable python block of a page."""
    found = []
    for skip, code, expected in BLOCK.findall(page.read_text(encoding="utf-8")):
        if not skip:
            found.append((code, expected if expected else None))
    return found


def solution_listings(text):
    """{exercise number: [(code, expected output or None)]} of docs/solutions.md's exercises with listings."""
    parts = EXERCISE.split(text)
    found = {}
    for number, body in zip(parts[1::2], parts[2::2]):
        body = re.split(r"^## ", body, flags=re.M)[0]         # up to the next chapter's heading
        blocks = [(code, expected or None) for skip, code, expected in BLOCK.findall(body) if not skip]
        if blocks:
            found[number] = blocks
    return found


def normalise(text):
    return "\n".join(line.rstrip() for line in text.strip().splitlines())


def listing_failures(blocks, name):
    """Run ``blocks`` [(code, expected)] in order in one fresh interpreter; what went wrong, naming ``name`` and
    the block: an error, or output that differs from what the docs show (an empty list when all is well)."""
    proc = subprocess.run([sys.executable, "-c", RUNNER], input=json.dumps([c for c, _ in blocks]),
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    if proc.returncode != 0:
        return [f"{name}: the runner failed:\n{proc.stderr}"]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    failures = []
    for i, ((code, expected), result) in enumerate(zip(blocks, results)):
        first_line = code.strip().splitlines()[0]
        if result["error"] is not None:
            failures.append(f"{name} block {i + 1} ({first_line!r}) failed:\n{result['error']}")
        elif expected is not None:
            same, why = same_output(result["output"], expected)
            if not same:
                failures.append(f"{name} block {i + 1} ({first_line!r}): {why}. It prints\n{result['output']}\n"
                                f"but the docs show\n{expected}")
    return failures


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT / "docs")) for p in PAGES])
def test_docs_listings_run_and_show_real_output(page):
    blocks = listings(page)
    if not blocks:
        pytest.skip(f"{page.name} has no runnable python listings")
    failures = listing_failures(blocks, page.name)
    assert not failures, "\n\n".join(failures)


SOLVED = solution_listings(SOLUTIONS.read_text(encoding="utf-8"))


@pytest.mark.slow
@pytest.mark.parametrize("exercise", sorted(SOLVED, key=lambda n: tuple(map(int, n.split(".")))))
def test_each_solution_runs_on_its_own_and_shows_real_output(exercise):
    failures = listing_failures(SOLVED[exercise], f"solutions.md, exercise {exercise},")
    assert not failures, "\n\n".join(failures)


def test_the_solutions_are_split_by_exercise():
    text = ("## Chapter 1\n\n### Exercise 1.1 { #ex-1-1 }\n\n```python\nx = 1\nprint(x)\n```\n\n```text\n1\n```\n\n"
            "### Exercise 1.2 { #ex-1-2 }\n\nNo listing.\n\n## Chapter 2\n\n### Exercise 2.1 { #ex-2-1 }\n\n"
            "```python\nprint(x)\n```\n")
    assert solution_listings(text) == {"1.1": [("x = 1\nprint(x)\n", "1\n")], "2.1": [("print(x)\n", None)]}
    assert len(SOLVED) >= 30


def test_a_listing_that_fails_or_prints_otherwise_is_reported():
    assert listing_failures([("print(1)\n", "1\n")], "page") == []
    wrong, broken = listing_failures([("print(2)\n", "1\n"), ("1 / 0\n", None)], "page")
    assert "page block 1 ('print(2)')" in wrong and "ZeroDivisionError" in broken


def test_the_listing_parser_sees_skips_and_outputs(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("```python\nprint(1)\n```\n\n```text\n1\n```\n<!-- skip -->\n```python\nboom()\n```\n")
    assert listings(page) == [("print(1)\n", "1\n")]


def test_outputs_compare_numbers_to_one_unit_in_the_last_digit():
    assert same_output("  mat 0.60\n  rug 0.31\n", "  mat 0.60\n  rug 0.30")[0]     # a rounding edge
    assert same_output("rug 0.29", "rug 0.30")[0]
    assert same_output("log p =  -38.93", "log p =  -38.92")[0]
    assert same_output("loss 2.5e-05", "loss 2.6e-05")[0]
    assert same_output("p = -0.00", "p = 0.00")[0]
    assert same_output("mat  9.99 |", "mat 10.00 |")[0]                              # padding shifts
    assert same_output("10,568 texts, 0.750", "10,568 texts, 0.751")[0]


def test_outputs_that_differ_in_substance_still_fail():
    assert not same_output("rug 0.45", "rug 0.30")[0]                                # a wrong value
    assert not same_output("rug 0.32", "rug 0.30")[0]                                # two units off
    assert not same_output("sofa 0.30", "rug 0.30")[0]                               # a different word
    assert not same_output("[464, 3798, 10718]", "[464, 3797, 10718]")[0]            # ids are exact
    assert not same_output("10,569 texts", "10,568 texts")[0]                        # so are counts
    assert not same_output("rug 0.30\nsofa 0.10", "rug 0.30")[0]                     # a line too many
    assert not same_output("rug 1", "rug 1.0")[0]                                    # integer vs decimal
    assert not same_output("loss 2.5e-04", "loss 2.5e-05")[0]                        # the exponent counts
    why = same_output("the cat sits on the sofa", "the cat sits on the mat")[1]
    assert why == "the text differs: 'the cat sits on the sofa' where the docs show 'the cat sits on the mat'"
