"""Every numbered equation in docs/ is checked by at least one test that cites it, every
citation points at an equation that exists, and docs/equations.md is up to date."""

import importlib.util
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("equations", ROOT / "docs" / "scripts" / "equations.py")
equations = importlib.util.module_from_spec(spec)
spec.loader.exec_module(equations)


def test_every_equation_is_checked_by_a_test():
    unchecked = sorted(set(equations.equations()) - set(equations.citations()))
    assert not unchecked, "equations no test cites: " + ", ".join(f"docs/{p}.md eq. {n}" for p, n in unchecked)


def test_every_citation_names_a_real_equation():
    dangling = sorted(set(equations.citations()) - set(equations.equations()))
    assert not dangling, "tests cite equations that do not exist: " + ", ".join(
        f"docs/{p}.md eq. {n} ({equations.citations()[(p, n)][0]})" for p, n in dangling)


def test_equation_index_page_is_current():
    assert (ROOT / "docs" / "equations.md").read_text() == equations.render(), \
        "docs/equations.md is out of date: run python docs/scripts/equations.py"


def test_citation_pattern_reads_lists():
    found = equations.CITATION.findall("# docs/model.md eqs. 4 and 5; docs/training.md eq. 2")
    assert found == [("model", "4 and 5"), ("training", "2")]


def test_an_untagged_display_does_not_swallow_the_prose_after_it():
    # model.md's first display is the article's formula, untagged; the old pattern read from its
    # $$ across the prose up to the \tag{1} of the next display and indexed all of it as eq. 1.
    page = ("The article writes\n\n$$h_i = \\mathrm{softmax}(Q_i K^\\top) V$$\n\nwhich is the idea.\n\n"
            "Every projection is affine:\n\n$$ y = xW + b \\tag{1} $$\n\nand $$ a = b \\tag{2} $$ inline.\n")
    assert equations.page_equations(page, "model") == {1: "y = xW + b", 2: "a = b"}


def test_dollar_signs_in_code_are_not_maths():
    page = "```python\nprint('$$')\n```\nUse `$$` for displays:\n\n$$ e = mc^2 \\tag{3} $$\n"
    assert equations.page_equations(page, "p") == {3: "e = mc^2"}


@pytest.mark.parametrize("page, line, why", [
    # a $$ left open: the next display's opening $$ closes it, across a paragraph of prose
    ("Intro.\n\n$$ h = QK^T V\n\nprose that is not maths.\n\n$$ y = xW \\tag{1} $$\n", 3, "blank line"),
    ("One $$ stray.\n\n$$ y = xW \\tag{1} $$\n", 1, "blank line"),
    ("$$ y = xW \\tag{1} $$\n\nand a stray $$ at the end\n", 3, "never closed"),
    ("$$ a \\tag{1} \\qquad b \\tag{2} $$\n", 1, "2 tags"),
    ("$$ a \\tag{1} $$\n\n$$ b \\tag{1} $$\n", 3, "tagged twice"),
])
def test_a_page_whose_displays_do_not_pair_up_is_refused_with_page_and_line(page, line, why):
    with pytest.raises(equations.EquationError, match=rf"^docs/model\.md line {line}: .*{why}"):
        equations.page_equations(page, "model")
