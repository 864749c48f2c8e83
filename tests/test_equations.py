"""Every numbered equation in docs/ is checked by at least one test that cites it, every
citation points at an equation that exists, and docs/equations.md is up to date."""

import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
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
