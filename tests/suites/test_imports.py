"""The package's import graph reads top-down: no cycles, and ``import npgpt`` loads only what is used.

docs/index.md (section "Reading order") names the modules; this test keeps it true.
"""

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "npgpt"


def module_name(path):
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path):
    """npgpt modules imported anywhere in a file (module level or inside functions), except TYPE_CHECKING blocks."""
    tree = ast.parse(path.read_text())
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            skipped.update(id(n) for n in ast.walk(node))
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("npgpt"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("npgpt"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def graph():
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges = {}
    for name, path in modules.items():
        targets = {t for t in imports_of(path) if t in modules and t != name}
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        # A subpackage importing its own modules is its internal structure, not an edge out.
        edges[name] = {t for t in targets if not (path.name == "__init__.py" and t.startswith(package + "."))}
    return edges


def find_cycle(edges):
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(edges):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def loaded_after(code):
    probe = code + "\nimport sys; print(' '.join(sorted(m for m in sys.modules if m.startswith('npgpt'))))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True)
    return set(out.stdout.split())


def test_import_npgpt_loads_no_trainer_optimizer_finetuning_cli_or_threads():
    loaded = loaded_after("import npgpt; npgpt.GPT; npgpt.Tensor; npgpt.F")
    for heavy in ("npgpt.training.train", "npgpt.training.optim", "npgpt.finetuning.finetune", "npgpt.apps.cli",
                  "npgpt.training.parallel", "npgpt.training.engine"):
        assert heavy not in loaded, f"import npgpt loaded {heavy}"
    assert loaded_after("import npgpt") == {"npgpt"}


def test_the_tokenizer_loads_no_model_or_autograd():
    loaded = loaded_after("from npgpt import Tokenizer; Tokenizer")
    assert "npgpt.tokenizer" in loaded
    assert not {"npgpt.model", "npgpt.autograd", "npgpt.functional", "npgpt.backend"} & loaded, loaded


def test_the_model_loads_no_threads_or_processes():
    """The model is the teaching path: the thread pool and the process group are the trainer's equipment."""
    loaded = loaded_after("import npgpt.model")
    assert "npgpt.model" in loaded
    assert not {"npgpt.training.parallel", "npgpt.training.distributed"} & loaded, loaded
