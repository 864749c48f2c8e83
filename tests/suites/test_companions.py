"""Each module names its chapter and the chapter names the module back (issue 23 item 3).

A module's chapter is the one its docstring calls it the companion of ("Companion of
``docs/X.md``"), else the first ``docs/X.md`` its docstring cites. The chapter must exist and name
the module: as ``npgpt.a.b``, as the path ``npgpt/a/b.py`` (or ``a/b.py``), or by its file name in
a chapter that names the module's folder (the tokenizer chapter's table of ``npgpt/tokenizer/``).
"""

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"

# Modules that are not a chapter's companion, and why.
NO_CHAPTER = {
    "npgpt": "the package's lazy public API; docs/index.md and docs/api.md list what it exports",
    "npgpt.bench": "benchmarks: docs/benchmarks.md records their runs, command by command",
    "npgpt.apps.serve": "the server's own chapter (docs/serving.md) lands with the server's work",
}


def module_name(path):
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules():
    for path in sorted((ROOT / "npgpt").rglob("*.py")):
        name = module_name(path)
        if path.name == "__main__.py" or any(name == n or name.startswith(n + ".") for n in NO_CHAPTER if n != "npgpt") \
                or name == "npgpt":
            continue
        yield name, path


def chapter_of(path):
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    declared = re.search(r"[Cc]ompanion of\s+``?docs/([\w-]+\.md)", doc)
    if declared:
        return declared.group(1)
    cited = re.search(r"docs/([\w-]+\.md)", doc)
    return cited.group(1) if cited else None


def names_module(text, name, path):
    rel = path.relative_to(ROOT)
    if path.name == "__init__.py":
        forms = [name, f"{rel.parent}/", f"{rel.parent.relative_to('npgpt')}/"]
    else:
        forms = [name, str(rel), str(rel.relative_to("npgpt"))]
        if f"`{rel.parent}/`" in text:          # a chapter about a folder may list its files by name
            forms.append(path.name)
    pattern = r"(?<![\w./])(" + "|".join(re.escape(f) for f in forms) + r")(?![\w])"
    return re.search(pattern, text) is not None


@pytest.mark.parametrize("name,path", list(modules()), ids=[n for n, _ in modules()])
def test_the_module_names_its_chapter_and_the_chapter_names_the_module(name, path):
    chapter = chapter_of(path)
    assert chapter, f"{path.relative_to(ROOT)}: the docstring names no chapter (\"Companion of ``docs/X.md``\")"
    assert (DOCS / chapter).is_file(), f"{path.relative_to(ROOT)} names docs/{chapter}, which does not exist"
    assert names_module((DOCS / chapter).read_text(), name, path), \
        f"docs/{chapter} (the chapter of {name}) does not name it: write `{path.relative_to(ROOT)}` or `{name}` there"


def test_the_check_tells_a_named_module_from_an_unnamed_one():
    path = ROOT / "npgpt" / "training" / "optim.py"
    assert names_module("The optimizer is `npgpt/training/optim.py`.", "npgpt.training.optim", path)
    assert names_module("see npgpt.training.optim.AdamW", "npgpt.training.optim", path)
    assert not names_module("see npgpt.training.optimizer", "npgpt.training.optim", path)
    assert not names_module("`optim.py`", "npgpt.training.optim", path)
