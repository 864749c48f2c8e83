"""The book's numbered equations, their stable names, and docs/equations.md (the index of the tests
that check them).

Run from the repository root: ``python docs/scripts/equations.py`` (``--check`` exits 1 when
the committed page is out of date).

**An equation is named, not numbered, in the source.** A numbered equation is a ``$$ ... $$``
display that carries a label, ``\\label{eq:causal-mask}``; its number is its place in the page's
reading order, and the site shows it: ``docs/scripts/mkdocs_hooks.py`` turns each label into
``\\tag{n}`` (n = 1, 2, ... down the page) and an anchor ``#eq-causal-mask``. Nothing in the
source holds a number, so moving, adding or removing an equation renumbers the page and breaks
no citation. A display that is not to be numbered (a definition on the way, a step of a
derivation, the article's own formula) says so with ``\\notag``, which the site drops; a display
with neither a label nor ``\\notag`` is refused, and so is a hand-written ``\\tag`` (its number
would drift from the reading order).

**Names are unique across the book** (the English pages, docs/*.md), so a name alone says which
equation is meant. A Chinese page (docs/zh/) shows some of its English page's equations and uses
their names. Everything refers to an equation by its name:

* a test cites the formula it checks as ``docs/model.md eq:causal-mask`` (also
  ``docs/model.md eq:softmax and eq:log-softmax`` / ``eq:a, eq:b``); those citations make the
  "checked by" column of the index;
* code and comments say ``eq:causal-mask`` (the page is implied by the name);
* prose links to it, ``[eq. causal-mask](model.md#eq-causal-mask)``: the hook replaces the name
  in the link text with the number, so the site reads "eq. 5".

:func:`problems` lists every reference to a name that does not exist and every reference still
written with a number (``eq. 4``, ``equation (4)``, ``式 (4)``); ``tests/suites/test_equations.py``
requires it to be empty.

A page's ``$$`` delimiters are read in pairs, in order, as MathJax reads them, outside code
blocks and inline code. A page whose delimiters do not pair up into displays is refused with an
``EquationError`` naming the page and the line: an odd number of ``$$``, a display that runs over
a blank line (a ``$$`` left open swallows the prose after it), two labels in one display, a label
that is not ``eq:`` and lower-case words joined by ``-``, one name used twice, or a ``\\tag``.
"""

import pathlib
import posixpath
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
OUTPUT = DOCS / "equations.md"
DISPLAY = re.compile(r"\$\$(.*?)\$\$", re.S)
LABEL = re.compile(r"\\label\{([^}]*)\}")
NAME = r"[a-z0-9]+(?:-[a-z0-9]+)*"
GOOD_LABEL = re.compile(rf"eq:{NAME}")
TAG = re.compile(r"\\tag\*?\{")
NOTAG = re.compile(r"\\notag\b")
# Inside a display, where no link can go, \ref{eq:name} names another equation of the same page.
REF = re.compile(rf"\\ref\{{eq:({NAME})\}}")
# Code is not maths: fenced blocks, then inline code spans, are blanked before the scan (their
# newlines kept, so that line numbers stay right).
FENCE = re.compile(r"^[ \t]*(```|~~~).*?^[ \t]*\1[^\n]*$", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]+`")
# A test's citation: the page, then one or more names.
CITATION = re.compile(rf"docs/([\w-]+)\.md,? (eq:{NAME}(?:(?:,\s*|\s+and\s+|\s*&\s*)eq:{NAME})*)")
# Any mention of a name, in code, comments, tests or prose, with the page where one is given.
MENTION = re.compile(rf"(?:docs/([\w/-]+)\.md,? )?(?<![\w:])eq:({NAME})")
# A link to an equation: [text](page.md#eq-name) or [text](#eq-name).
LINK = re.compile(rf"\[([^\]\n]*)\]\(([^)\s#]*)#eq-({NAME})\)")
# A reference still written with a number: eq. 4, eqs. 2 and 3, Equation (4), equation 11, 式 (4).
NUMBERED = re.compile(r"\b(?:[Ee]qs?\.|[Ee]quations?)\s*\(?\d|式\s*\(\d")
# In a page's prose, a bare number in parentheses after a word that introduces a reference:
# "one term of (2)", "checks (3)", "With right padding (7) gives". ("a token (1)" is not one.)
BARE_NUMBER = re.compile(r"(?<![\w\])])(?:of|and|by|checks|apply|from|see|padding|with|to|gives) \(\d{1,2}\)(?![\w(])")


class EquationError(ValueError):
    """A page's display maths cannot be read into equations; the message names the page and line."""


def _blank(match):
    return re.sub(r"[^\n]", " ", match.group())


def prose(text):
    """``text`` with its code (fenced blocks, inline spans) blanked out, newlines kept."""
    return INLINE_CODE.sub(_blank, FENCE.sub(_blank, text))


def displays(text, page):
    """[(offset, body)] for the page's displays, refused with a line number where they do not pair up."""
    scanned = prose(text)
    line_of = lambda offset: scanned.count("\n", 0, offset) + 1
    found, end = [], 0
    for match in DISPLAY.finditer(scanned):
        body, end = match.group(1), match.end()
        if re.search(r"\n[ \t]*\n", body):
            raise EquationError(f"docs/{page}.md line {line_of(match.start())}: the $$ opened here is closed only "
                                f"at line {line_of(match.end())}, after a blank line; a display cannot span "
                                "paragraphs, so a $$ is missing or stray, and the text in between would be read as maths")
        found.append((match.start(), text[match.start(1):match.end(1)], line_of(match.start())))
    stray = scanned.find("$$", end)
    if stray >= 0:
        raise EquationError(f"docs/{page}.md line {line_of(stray)}: this $$ is never closed (the page has an odd number of $$)")
    return found


def page_equations(text, page="page"):
    """{name: latex} for the labelled displays of one page's markdown ``text``, in reading order
    (``page``: its path under docs/ without ``.md``, for the messages). Equation ``n`` of the page
    is the ``n``-th entry. Raises ``EquationError`` (with ``docs/<page>.md line N``); see the
    module docstring."""
    found = {}
    for _, body, line in displays(text, page):
        where = f"docs/{page}.md line {line}"
        if TAG.search(body):
            raise EquationError(f"{where}: a hand-written \\tag; name the equation with \\label{{eq:some-name}} "
                                "instead and the site numbers it in reading order")
        labels = LABEL.findall(body)
        if len(labels) > 1:
            raise EquationError(f"{where}: one display carries {len(labels)} labels ({', '.join(labels)})")
        if NOTAG.search(body):
            if labels:
                raise EquationError(f"{where}: a display with a name ({labels[0]}) cannot also be \\notag")
            continue
        if not labels:
            raise EquationError(f"{where}: a display with neither a name nor \\notag; name it, \\label{{eq:some-name}}, "
                                "to number it (and cite it from a test), or mark it \\notag to leave it unnumbered")
        if not GOOD_LABEL.fullmatch(labels[0]):
            raise EquationError(f"{where}: the label {labels[0]!r} is not eq: and lower-case words joined by -")
        name = labels[0][len("eq:"):]
        if name in found:
            raise EquationError(f"{where}: the name eq:{name} is used twice on the page")
        found[name] = " ".join(LABEL.sub(" ", body).split())
    return found


def numbers(text, page="page"):
    """{name: number} for one page: the names of :func:`page_equations` numbered 1, 2, ... in order."""
    return {name: n for n, name in enumerate(page_equations(text, page), start=1)}


def pages():
    """The pages that may hold equations: docs/*.md (but this index) and docs/zh/*.md."""
    english = [p for p in sorted(DOCS.glob("*.md")) if p != OUTPUT]
    return english + sorted((DOCS / "zh").glob("*.md"))


def _stem(path):
    return path.relative_to(DOCS).with_suffix("").as_posix()


def equations():
    """{(page, name): latex} for every labelled equation of the English pages (page: ``"model"``)."""
    found = {}
    for page in pages():
        if page.parent == DOCS:
            for name, latex in page_equations(page.read_text(encoding="utf-8"), page.stem).items():
                found[(page.stem, name)] = latex
    return found


def _test_files():
    return [f for f in sorted((ROOT / "tests").rglob("test_*.py")) if f.name != "test_equations.py"]


def citations():
    """{(page, name): sorted list of 'tests/file.py::function'} from the test-suite's citations."""
    cited = {}
    for test_file in _test_files():
        current, pending = "module", []
        for line in test_file.read_text(encoding="utf-8").splitlines():
            match = re.match(r"\s*(?:async\s+)?def (test\w*)", line)
            if match:
                current = match.group(1)
            elif line[:1] not in ("", " ", "\t", "#", "@", ")"):
                current = "module"     # a top-level statement ends the function above it
            found = [(page, name) for page, names in CITATION.findall(line)
                     for name in re.findall(rf"eq:({NAME})", names)]
            if line[:1] in ("#", "@"):
                pending += found       # a comment or decorator above a test speaks of that test
                continue
            for page, name in pending + found:
                cited.setdefault((page, name), set()).add(f"{test_file.relative_to(ROOT)}::{current}")
            pending = [] if line.strip() else pending
    return {key: sorted(value) for key, value in cited.items()}


def _sources():
    """(path, text) of every file that may refer to an equation: code, tests, examples, the docs."""
    files = [f for d in ("npgpt", "tests", "examples", "tools") for f in sorted((ROOT / d).rglob("*.py"))]
    files += [f for f in sorted(DOCS.rglob("*.md")) if f != OUTPUT]
    files += [f for f in (ROOT / "README.md",) if f.is_file()]
    return [(f, f.read_text(encoding="utf-8")) for f in files if f.name != "test_equations.py"]


def problems():
    """Every reference that does not name an existing equation, as ``"path:line: why"``."""
    known = {_stem(page): set(page_equations(page.read_text(encoding="utf-8"), _stem(page))) for page in pages()}
    found = []
    for path, text in _sources():
        found += [f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, offset) + 1}: {why}"
                  for offset, why in _problems_of(path, text, known)]
    return found


def _problems_of(path, text, known):
    """(offset, why) for each bad reference in one file; ``known``: {page: its names}."""
    everywhere = set().union(*(names for page, names in known.items() if "/" not in page))
    for match in MENTION.finditer(text):
        page, name = match.groups()
        if page is not None and name not in known.get(page, set()):
            yield match.start(), f"docs/{page}.md has no equation eq:{name}"
        elif page is None and name not in everywhere:
            yield match.start(), f"no page of the book has an equation eq:{name}"
    scanned = text
    if DOCS in path.parents:
        stem = _stem(path)
        for start, body, _ in displays(text, stem):
            scanned = scanned[:start] + re.sub(r"[^\n]", " ", f"$${body}$$") + scanned[start + len(body) + 4:]
            for name in REF.findall(body):
                if name not in known[stem]:
                    yield start, f"\\ref{{eq:{name}}} names no equation of this page"
        for match in BARE_NUMBER.finditer(prose(scanned)):
            yield match.start(), f"{match.group()!r}: an equation by its number? Link it by its name (eq:some-name)"
        for match in LINK.finditer(text):
            linked = match.group(2) or posixpath.basename(stem) + ".md"             # no file: this page
            target = posixpath.normpath(posixpath.join(posixpath.dirname(stem), linked))
            if match.group(3) not in known.get(target.removesuffix(".md"), set()):
                yield match.start(), f"docs/{target} has no equation eq:{match.group(3)} (#eq-{match.group(3)})"
    for match in NUMBERED.finditer(scanned):          # in docs, outside the displays' maths
        yield match.start(), f"{match.group()!r}...: refer to an equation by its name (eq:some-name)"


def render():
    eqs, cites = equations(), citations()
    lines = ["# Equations and the tests that check them", "",
             "Generated by `python docs/scripts/equations.py` from the labelled equations of each chapter",
             "(`\\label{eq:name}`; the number is the equation's place in its chapter's reading order) and",
             "the `docs/<page>.md eq:name` citations in `tests/`. Every equation has at least one test;",
             "`tests/suites/test_equations.py` keeps it that way.", ""]
    for page in sorted({p for p, _ in eqs}):
        lines += [f"## [{page}.md]({page}.md)", "", "| eq. | name | formula | checked by |", "|---|---|---|---|"]
        numbered = {name: str(n) for n, (p, name) in enumerate((k for k in eqs if k[0] == page), start=1)}
        for (p, name), latex in ((k, v) for k, v in eqs.items() if k[0] == page):
            latex = REF.sub(lambda m, numbered=numbered: numbered.get(m.group(1), "?"), latex)
            n = numbered[name]
            tests = "<br>".join(f"`{t}`" for t in cites.get((p, name), [])) or "**unchecked**"
            # A bare | would split the table cell, and the escape \| would reach MathJax as the
            # double bar; \Vert and \vert are the double and single bars without a pipe.
            formula = latex.replace("\\|", "\\Vert ").replace("|", "\\vert ")
            lines.append(f"| [{n}]({page}.md#eq-{name}) | `eq:{name}` | ${formula}$ | {tests} |")
        lines.append("")
    return "\n".join(lines)


def main(argv):
    text = render()
    if "--check" in argv:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
        if current != text:
            print("docs/equations.md is out of date: run python docs/scripts/equations.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT.relative_to(ROOT)}: {len(equations())} equations")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
