"""docs/api.md is generated from the docstrings, and it is current.

When this fails after a docstring or signature changed: run
``python docs/scripts/api_reference.py`` and commit docs/api.md with the change.
"""

import importlib.util
import inspect
import pathlib
import re

import npgpt

ROOT = pathlib.Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("api_reference", ROOT / "docs" / "scripts" / "api_reference.py")
api_reference = importlib.util.module_from_spec(spec)
spec.loader.exec_module(api_reference)


def test_api_page_is_current():
    assert (ROOT / "docs" / "api.md").read_text() == api_reference.render(), \
        "docs/api.md is out of date: run python docs/scripts/api_reference.py"


def test_every_export_of_npgpt_is_documented():
    page = api_reference.render()
    for name in npgpt.__all__:
        obj = getattr(npgpt, name)
        if inspect.ismodule(obj):
            assert f"## {obj.__name__}\n" in page, f"module {obj.__name__} (npgpt.{name}) has no section"
        else:
            assert re.search(rf"`npgpt\.[\w.]*\b{obj.__name__}`", page), f"npgpt.{name} is not in docs/api.md"


def test_every_module_of_the_package_has_a_chapter():
    listed = {name for name, _ in api_reference.MODULES}
    missing = sorted(set(api_reference.package_modules()) - listed)
    assert not missing, f"add these modules, with their chapter, to MODULES in docs/scripts/api_reference.py: {missing}"


def test_signatures_carry_no_machine_specific_text():
    text = api_reference.clean("(xp=<module 'numpy' from '/usr/lib/numpy/__init__.py'>, f=<function g at 0x7f3a>)")
    assert text == "(xp=numpy, f=g)"
