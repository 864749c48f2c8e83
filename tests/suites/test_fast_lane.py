"""The fast lane's list of slow tests (tests/slow_tests.py) names tests that exist, and the mark reaches them."""

import ast
import pathlib

import pytest
import slow_tests

TESTS = pathlib.Path(__file__).resolve().parents[1]


def functions_in(path):
    tree = ast.parse(path.read_text())
    return {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}



def test_every_listed_module_and_test_exists():
    def find(module):
        return next((p for p in (TESTS / module, TESTS / "suites" / module) if p.is_file()), None)

    missing = [m for m in slow_tests.SLOW_MODULES if find(m) is None]
    for module, names in slow_tests.SLOW_TESTS.items():
        path = find(module)
        if path is None:
            missing.append(module)
            continue
        missing += [f"{module}::{n}" for n in names if n not in functions_in(path)]
    assert not missing, f"tests/slow_tests.py names tests that do not exist (renamed? update the list): {missing}"


def test_the_mark_is_applied(request):
    """This test is fast and unlisted, so it carries no ``slow`` mark; a listed one would."""
    assert request.node.get_closest_marker("slow") is None
    assert slow_tests.is_slow("test_serve.py", "anything") and slow_tests.is_slow("test_sft.py", "test_the_command")
    assert not slow_tests.is_slow("test_sft.py", "test_fast_lane")


@pytest.mark.parametrize("module", sorted(slow_tests.SLOW_MODULES))
def test_slow_modules_are_named_with_a_reason(module):
    assert slow_tests.SLOW_MODULES[module].strip()
