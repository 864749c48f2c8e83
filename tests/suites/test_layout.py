"""The tests mirror the package (issue 23 item 5): each module's tests are found from its name.

``tests/test_<module>.py`` tests ``npgpt/.../<module>.py``; a subpackage's modules may share
``tests/test_<package>*.py`` (``test_tokenizer.py`` for ``npgpt/tokenizer/``, ``test_serve*.py``
for ``npgpt/apps/serve/``); ``tests/test_<package>_<module>.py`` works too. Suites that cut
across modules (the book, the repository, robustness, formulas, devices) live in ``tests/suites/``.
A module whose tests live elsewhere is listed in ``TESTED_IN`` with the file that holds them, and
this test checks that the file exists and names the module, so the list cannot point nowhere.
"""

import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"

# Grouping packages whose __init__ is a docstring: nothing to test.
GROUPS = {"npgpt.apps", "npgpt.finetuning", "npgpt.io", "npgpt.training"}

# module -> the test file that holds its tests (not yet split into a test_<module>.py of its own)
TESTED_IN = {
    "npgpt": "tests/suites/test_imports.py",
}


def modules():
    for path in sorted((ROOT / "npgpt").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__main__":
            continue
        yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def own_test_files(module):
    parts = module.split(".")[1:]
    if not parts:
        return []
    names = {f"test_{parts[-1]}.py"} | {f"test_{p}*.py" for p in parts[:-1]} | {f"test_{'_'.join(parts[-2:])}.py"}
    return [f for pattern in names for f in TESTS.glob(pattern)]


def test_every_module_has_its_test_file_or_names_where_its_tests_are():
    missing = [m for m in modules() if m not in GROUPS and m not in TESTED_IN and not own_test_files(m)
               and not m.startswith("npgpt.bench")]
    assert not missing, f"no tests/test_<module>.py for {missing}: add one (or list the file in TESTED_IN)"


def test_the_files_listed_exist_and_name_their_module():
    for module, test_file in TESTED_IN.items():
        path = ROOT / test_file
        assert path.is_file(), f"{test_file} (listed for {module}) does not exist"
        short = module.rsplit(".", 1)[-1]
        assert module in path.read_text() or f"import {short}" in path.read_text() \
            or f" {short}," in path.read_text(), f"{test_file} does not import {module}"
        assert not own_test_files(module), f"{module} has its own test file now: remove it from TESTED_IN"


def test_suites_hold_no_test_of_a_single_module():
    """A file in tests/suites/ is not named after one module (that belongs beside the others)."""
    own = {f"test_{m.rsplit('.', 1)[-1]}.py" for m in modules()}
    assert not [p.name for p in (TESTS / "suites").glob("test_*.py") if p.name in own]
