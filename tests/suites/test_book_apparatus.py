"""The book's teaching apparatus holds together: every numbered chapter ends with a Summary and
three to five Exercises whose solutions exist on docs/solutions.md; every entry of the
bibliography is cited by a chapter; the equations follow docs/notation.md (the loss is ℒ, the
layer count n_layer, never L).
"""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def chapters():
    """The pages of mkdocs.yml's numbered chapters ("1. ...", "3. The engine": [...]), in order."""
    return [page for group in chapter_groups().values() for page in group]


def chapter_groups():
    """{numbered chapter's nav title: its pages}, in order (a chapter may have several pages)."""
    yaml = pytest.importorskip("yaml")

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    nav = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=Loader)["nav"]
    groups = {}
    for item in nav:
        (title, value), = item.items()
        if not re.match(r"\d+\.", title):
            continue
        pages = [next(iter(v.values())) for v in value] if isinstance(value, list) else [value]
        groups[title] = [page for page in pages if (DOCS / page).exists()]
    return groups


def section(text, heading):
    """The text of the level-2 section ``heading`` (up to the next level-2 heading)."""
    match = re.search(rf"^## {heading}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    return match.group(1) if match else None


def test_the_nav_has_the_chapters():
    assert len(chapters()) >= 14


@pytest.mark.parametrize("page", chapters())
def test_every_chapter_ends_with_a_summary_and_exercises(page):
    text = (DOCS / page).read_text()
    headings = re.findall(r"^## (.+)$", text, re.M)
    assert headings[-2:] == ["Summary", "Exercises"], f"{page} must end with ## Summary, then ## Exercises"
    assert section(text, "Summary").count("\n* ") >= 3
    items = re.findall(r"^\d+\. (.+)$", section(text, "Exercises"), re.M)
    assert 3 <= len(items) <= 5, f"{page} has {len(items)} exercises"
    solutions = (DOCS / "solutions.md").read_text()
    for item in items:
        anchors = re.findall(r"\(solutions\.md#(ex-\d+-\d+)\)", item)
        assert anchors, f"{page}: an exercise without a link to its solution: {item[:60]}"
        assert f"{{ #{anchors[0]} }}" in solutions, f"{page}: solutions.md has no #{anchors[0]}"


BUILD = re.compile(r"^\d+\. \*\*\d+\.\d+\*\* (Build|Write|Extend)\b", re.M)


@pytest.mark.parametrize("chapter", list(chapter_groups()))
def test_every_chapter_has_an_exercise_that_builds_something(chapter):
    """Not only "check that": at least one exercise per chapter asks the reader to build or extend
    something ("Build ...", "Write ...", "Extend ..."), usually checked against the library."""
    exercises = "".join(section((DOCS / page).read_text(), "Exercises") or "" for page in chapter_groups()[chapter])
    assert BUILD.search(exercises), f"{chapter}: no exercise starts with Build, Write or Extend"


def test_exercise_numbers_are_unique_across_the_book():
    ids = re.findall(r"\{ #(ex-\d+-\d+) \}", (DOCS / "solutions.md").read_text())
    assert len(ids) == len(set(ids)) and len(ids) >= 40


def test_every_bibliography_entry_is_cited_by_a_chapter():
    entries = re.findall(r"^\{: #([a-z]+\d{4}) \}$", (DOCS / "bibliography.md").read_text(), re.M)
    assert len(entries) >= 19
    cited = "\n".join((DOCS / page).read_text() for page in chapters())
    missing = [e for e in entries if f"bibliography.md#{e})" not in cited]
    assert not missing, f"bibliography entries no chapter cites: {missing}"


def test_equations_write_the_loss_as_script_l_and_the_layers_as_n_layer():
    # A numbered equation of a chapter: no bare L for a loss (\partial L, L = ..., e^{L}) and no
    # L for the number of layers (L\,(...), 12\,L). LN, \mathcal{L}, \left and \log stay allowed.
    bare_l = re.compile(r"(?<![\\A-Za-z])L(?![A-Za-z_])")
    for page in sorted(DOCS.glob("*.md")):
        if page.name in ("equations.md", "notation.md"):
            continue
        for latex, name in re.findall(r"\$\$(.*?)\\label\{eq:([a-z0-9-]+)\}", page.read_text(), re.S):
            latex = latex.split("$$")[-1].replace("\\mathcal{L}", "")
            assert not bare_l.search(latex), f"{page.name} eq:{name} uses a bare L: {latex.strip()[:80]}"
