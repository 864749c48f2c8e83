"""The length and cyclomatic complexity of every function in npgpt/, from the syntax tree.

Run from the repository root: ``python tools/function_sizes.py`` prints the longest and the
most branched functions; ``--over LINES COMPLEXITY`` lists only those over either limit.
``tests/suites/test_function_sizes.py`` enforces the limits below, with each exemption named and
justified, so a function that grows past them is a decision someone wrote down.

* **length**: the lines of the function's body, docstring excluded, blank and comment lines
  included (what a reader scrolls through), nested functions counted in their parent as well;
* **complexity**: McCabe's cyclomatic number, 1 + one for each decision: ``if``/``elif``, a
  conditional expression, ``for``/``while`` (and their ``else``), each ``except``, each extra
  operand of ``and``/``or``, each ``if`` of a comprehension, each ``case`` of a ``match``, and
  each ``assert`` (a branch to an error). A nested function's decisions are its own, not its
  parent's (as McCabe's tool for flake8 counts them).
"""

from __future__ import annotations

import argparse
import ast
import pathlib
from dataclasses import dataclass

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "npgpt"

# The limits every function meets unless it is exempted in tests/suites/test_function_sizes.py.
MAX_LINES = 60
MAX_COMPLEXITY = 15


@dataclass(frozen=True)
class FunctionSize:
    name: str          # module:qualified.name
    lines: int
    complexity: int


def _body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]          # the docstring
    if not body:
        return 0
    return node.end_lineno - body[0].lineno + 1


def _decisions(node: ast.AST) -> int:
    """Decision points in ``node``, not descending into nested functions, classes or lambdas."""
    count = 0
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        if isinstance(child, (ast.If, ast.IfExp, ast.While, ast.For, ast.AsyncFor, ast.Assert)):
            count += 1
            if isinstance(child, (ast.For, ast.AsyncFor, ast.While)) and child.orelse:
                count += 1
        elif isinstance(child, ast.ExceptHandler):
            count += 1
        elif isinstance(child, ast.BoolOp):
            count += len(child.values) - 1
        elif isinstance(child, ast.comprehension):
            count += len(child.ifs)
        elif isinstance(child, ast.match_case):
            count += 1
        count += _decisions(child)
    return count


def function_sizes(path: pathlib.Path) -> list[FunctionSize]:
    """Every function and method of one file, with its length and complexity."""
    tree = ast.parse(path.read_text(), filename=str(path))
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                found.append(FunctionSize(f"{module}:{name}", _body_lines(child), 1 + _decisions(child)))
                visit(child, name + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(tree, "")
    return found


def all_function_sizes(package: pathlib.Path = PACKAGE) -> list[FunctionSize]:
    return [size for path in sorted(package.rglob("*.py")) for size in function_sizes(path)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--over", nargs=2, type=int, metavar=("LINES", "COMPLEXITY"),
                        help="list only the functions longer than LINES or more complex than COMPLEXITY")
    parser.add_argument("--top", type=int, default=15, help="how many of the longest and most complex to list")
    args = parser.parse_args(argv)
    sizes = all_function_sizes()
    if args.over:
        lines, complexity = args.over
        for s in sorted(sizes, key=lambda s: s.name):
            if s.lines > lines or s.complexity > complexity:
                print(f"{s.lines:4d} lines  complexity {s.complexity:3d}  {s.name}")
        return 0
    print(f"{len(sizes)} functions")
    print("longest:")
    for s in sorted(sizes, key=lambda s: -s.lines)[:args.top]:
        print(f"  {s.lines:4d} lines  {s.name}")
    print("most complex:")
    for s in sorted(sizes, key=lambda s: -s.complexity)[:args.top]:
        print(f"  {s.complexity:4d}  {s.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
