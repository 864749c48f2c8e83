"""Every numbered equation in docs/ has a name and is checked by at least one test that cites it by
that name; every reference to an equation (in tests, code, prose, the Chinese pages) names one that
exists, none is written with a number, and docs/equations.md is up to date. The site numbers the
equations in reading order (docs/scripts/mkdocs_hooks.py), checked here on a page of its own."""

import importlib.util
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("equations", ROOT / "docs" / "scripts" / "equations.py")
equations = importlib.util.module_from_spec(spec)
spec.loader.exec_module(equations)
hooks_spec = importlib.util.spec_from_file_location("mkdocs_hooks", ROOT / "docs" / "scripts" / "mkdocs_hooks.py")
hooks = importlib.util.module_from_spec(hooks_spec)
hooks_spec.loader.exec_module(hooks)


def test_every_equation_is_checked_by_a_test():
    unchecked = sorted(set(equations.equations()) - set(equations.citations()))
    assert not unchecked, "equations no test cites: " + ", ".join(f"docs/{p}.md eq:{n}" for p, n in unchecked)


def test_every_citation_names_a_real_equation():
    dangling = sorted(set(equations.citations()) - set(equations.equations()))
    assert not dangling, "tests cite equations that do not exist: " + ", ".join(
        f"docs/{p}.md eq:{n} ({equations.citations()[(p, n)][0]})" for p, n in dangling)


def test_every_reference_names_an_equation_and_none_is_a_number():
    found = equations.problems()
    assert not found, "references to equations that do not exist, or by number:\n" + "\n".join(found)


def test_names_are_unique_across_the_book():
    seen = {}
    for page, name in equations.equations():
        assert name not in seen, f"eq:{name} is on docs/{seen[name]}.md and docs/{page}.md"
        seen[name] = page


def test_equation_index_page_is_current():
    assert (ROOT / "docs" / "equations.md").read_text(encoding="utf-8") == equations.render(), \
        "docs/equations.md is out of date: run python docs/scripts/equations.py"


def test_citation_pattern_reads_lists():
    found = equations.CITATION.findall("# docs/model.md eq:softmax and eq:log-softmax; docs/training.md eq:perplexity")
    assert found == [("model", "eq:softmax and eq:log-softmax"), ("training", "eq:perplexity")]
    assert equations.CITATION.findall("docs/model.md eq:a, eq:b-c") == [("model", "eq:a, eq:b-c")]


def test_a_reference_by_number_or_to_a_missing_name_is_a_problem(tmp_path, monkeypatch):
    page = "A display:\n\n$$ y = xW \\label{eq:affine} $$\n\nSee [eq. affine](#eq-affine) and [eq. nope](#eq-nope).\n"
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "model.md").write_text(page + "As eq. 1 says.\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text("# docs/model.md eq:affine, docs/model.md eq:gone; eq:missing\n")
    monkeypatch.setattr(equations, "ROOT", tmp_path)
    monkeypatch.setattr(equations, "DOCS", tmp_path / "docs")
    monkeypatch.setattr(equations, "OUTPUT", tmp_path / "docs" / "equations.md")
    found = "\n".join(equations.problems())
    assert "docs/model.md has no equation eq:nope" in found
    assert "docs/model.md has no equation eq:gone" in found
    assert "no page of the book has an equation eq:missing" in found
    assert "'eq. 1'" in found
    assert "eq:affine" not in found.replace("eq:affine,", "")     # the good references pass


def test_a_bare_number_after_a_referring_word_is_a_reference_by_number():
    # finetuning.md said "With right padding (7) gives" after its equations were renumbered (review2).
    prose = "Differentiate one term of (2) with the chain rule and (3). With right padding (7) gives 0, 1, 2."
    assert [m.group() for m in equations.BARE_NUMBER.finditer(prose)] == ["of (2)", "and (3)", "padding (7)"]
    fine = "A mask says which positions hold a token (1); the ranks, such as in (4), er (10) and nd (12)."
    assert not equations.BARE_NUMBER.findall(fine)


def test_names_number_the_page_in_reading_order():
    page = ("The article writes\n\n$$h_i = \\mathrm{softmax}(Q_i K^\\top) V \\notag $$\n\nwhich is the idea.\n\n"
            "Every projection is affine:\n\n$$ y = xW + b \\label{eq:affine} $$\n\n"
            "and $$ a = b \\label{eq:a-is-b} $$ inline.\n")
    # a \notag display (the article's formula) is not numbered and does not swallow the prose after it
    assert equations.page_equations(page, "model") == {"affine": "y = xW + b", "a-is-b": "a = b"}
    assert equations.numbers(page, "model") == {"affine": 1, "a-is-b": 2}


def test_the_site_shows_numbers_where_the_source_has_names(tmp_path):
    (tmp_path / "other.md").write_text("$$ z = 1 \\label{eq:first} $$\n\n$$ z = 2 \\label{eq:second} $$\n")
    page = ("$$ a \\label{eq:one} $$\n\n$$ b = \\text{eq. \\ref{eq:one}} \\label{eq:two} $$\n\n"
            "[Equation (two)](#eq-two) uses [eq. one](#eq-one); eqs. [first](other.md#eq-first) and "
            "[second](other.md#eq-second); [eq. none](#eq-none) is left for the strict build.\n")
    out = hooks.number_equations(page, "page.md", tmp_path)
    assert "$$ a \\tag{1}\\label{eq:one} $$" in out
    assert "\\text{eq. 1} \\tag{2}\\label{eq:two}" in out
    assert "[Equation (2)](#eq-two) uses [eq. 1](#eq-one); eqs. [1](other.md#eq-first) and [2](other.md#eq-second)" in out
    assert "[eq. none](#eq-none)" in out


def test_the_anchor_moves_from_the_maths_to_the_element():
    import markdown

    md = markdown.Markdown(extensions=["pymdownx.arithmatex", hooks.EquationAnchors()],
                           extension_configs={"pymdownx.arithmatex": {"generic": True}})
    html = md.convert("Text.\n\n$$ y = xW \\tag{1}\\label{eq:affine} $$\n")
    assert 'id="eq-affine"' in html and "\\tag{1}" in html and "\\label" not in html


def test_dollar_signs_in_code_are_not_maths():
    page = "```python\nprint('$$')\n```\nUse `$$` for displays:\n\n$$ e = mc^2 \\label{eq:energy} $$\n"
    assert equations.page_equations(page, "p") == {"energy": "e = mc^2"}


@pytest.mark.parametrize("page, line, why", [
    # a $$ left open: the next display's opening $$ closes it, across a paragraph of prose
    ("Intro.\n\n$$ h = QK^T V \\notag\n\nprose that is not maths.\n\n$$ y = xW \\label{eq:a} $$\n", 3, "blank line"),
    ("One $$ stray.\n\n$$ y = xW \\label{eq:a} $$\n", 1, "blank line"),
    ("$$ y = xW \\label{eq:a} $$\n\nand a stray $$ at the end\n", 3, "never closed"),
    ("$$ a \\label{eq:a} \\qquad b \\label{eq:b} $$\n", 1, "2 labels"),
    ("$$ a \\label{eq:a} $$\n\n$$ b \\label{eq:a} $$\n", 3, "used twice"),
    ("$$ a \\tag{1} $$\n", 1, "hand-written"),                   # a number by hand: no label
    ("$$ a \\label{causal mask} $$\n", 1, "is not eq:"),
    ("$$ a \\label{eq:Causal_Mask} $$\n", 1, "is not eq:"),
    ("Text.\n\n$$ a = b $$\n", 3, "neither a name nor"),                # unnumbered, but not said so
    ("$$ a \\label{eq:a} \\notag $$\n", 1, "cannot also be"),
])
def test_a_page_whose_displays_cannot_be_read_is_refused_with_page_and_line(page, line, why):
    with pytest.raises(equations.EquationError, match=rf"^docs/model\.md line {line}: .*{why}"):
        equations.page_equations(page, "model")
