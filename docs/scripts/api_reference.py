"""Build docs/api.md, the API reference, from npgpt's docstrings.

Run from the repository root: ``python docs/scripts/api_reference.py`` (``--check`` exits 1
when the committed page is out of date; ``tests/suites/test_api_reference.py`` runs the same check).

What counts as public: a module's ``__all__`` when it has one, otherwise every name that does
not start with ``_`` and is defined in that module (not imported into it). For a class, its
constructor's signature and every public method, property and classmethod defined on the class
itself. Each entry shows the signature and the docstring as written; nothing is edited, so the
page says exactly what ``help()`` says.
"""

import importlib
import inspect
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
OUTPUT = ROOT / "docs" / "api.md"

# (module, the chapter it is the companion of), in the order data flows through the library.
# Every top-level module and subpackage of npgpt is documented; one missing from this list is
# added at the end (tests/suites/test_api_reference.py asks for it to be placed here).
MODULES = [
    ("npgpt", "index.md"),
    ("npgpt.backend", "backend.md"),
    ("npgpt.backend.speed", "performance.md"),
    ("npgpt.autograd", "autograd.md"),
    ("npgpt.io.inputs", "model.md"),
    ("npgpt.functional", "model.md"),
    ("npgpt.nn", "model.md"),
    ("npgpt.model", "model.md"),
    ("npgpt.generation", "generation.md"),
    ("npgpt.generation.prompt_lookup", "generation.md"),
    ("npgpt.tokenizer", "tokenizer.md"),
    ("npgpt.training.progress", "tokenizer.md"),
    ("npgpt.training.data", "training.md"),
    ("npgpt.io.token_formats", "training.md"),
    ("npgpt.datasets", "training.md"),
    ("npgpt.training.optim", "training.md"),
    ("npgpt.training.settings", "training.md"),
    ("npgpt.training.engine", "training.md"),
    ("npgpt.training.mixed_precision", "training.md"),
    ("npgpt.training.rundir", "training.md"),
    ("npgpt.training.interrupt", "training.md"),
    ("npgpt.training.plot", "training.md"),
    ("npgpt.training.train", "training.md"),
    ("npgpt.io.checkpoint", "model.md"),
    ("npgpt.io.hf_gpt2", "model.md"),
    ("npgpt.io.hub", "model.md"),
    ("npgpt.io.fileio", "training.md"),
    ("npgpt.finetuning.classifier", "finetuning.md"),
    ("npgpt.finetuning.labelled", "finetuning.md"),
    ("npgpt.finetuning.metrics", "finetuning.md"),
    ("npgpt.finetuning.finetune", "finetuning.md"),
    ("npgpt.finetuning.lora", "agent.md"),
    ("npgpt.finetuning.trainable_tokens", "agent.md"),
    ("npgpt.finetuning.dpo", "agent.md"),
    ("npgpt.apps.evaluation", "agent.md"),
    ("npgpt.apps.lm_eval_plugin", "agent.md"),
    ("npgpt.apps.eval_tasks", "agent.md"),
    ("npgpt.finetuning.conversations", "agent.md"),
    ("npgpt.finetuning.sft", "agent.md"),
    ("npgpt.apps.chat", "agent.md"),
    ("npgpt.viz", "interpretability.md"),
    ("npgpt.autograd.gradcheck", "autograd.md"),
    ("npgpt.training.parallel", "performance.md"),
    ("npgpt.training.flops", "performance.md"),
    ("npgpt.training.distributed", "distributed.md"),
    ("npgpt.bench", "benchmarks.md"),
    ("npgpt.apps.cli", "index.md"),
    ("npgpt.apps.serve", "serving.md"),
]


# Subpackages that only group modules (their ``__init__`` is a docstring): each of their modules
# is documented on its own. The other subpackages (autograd, tokenizer, datasets, bench) have a
# public face of their own and are documented as one module.
GROUPS = ("npgpt.training", "npgpt.finetuning", "npgpt.io", "npgpt.apps")


def package_modules():
    """Names of npgpt's top-level modules and subpackages, with the grouping packages' modules
    in place of the groups (never ``__main__``)."""
    import pkgutil

    import npgpt

    names = []
    for m in pkgutil.iter_modules(npgpt.__path__):
        name = f"npgpt.{m.name}"
        if name in GROUPS:
            package = importlib.import_module(name)
            names += [f"{name}.{s.name}" for s in pkgutil.iter_modules(package.__path__) if s.name != "__main__"]
        elif m.name != "__main__":
            names.append(name)
    return sorted(names)


def modules():
    """(module, chapter) for every module to document: the list above, then any it misses."""
    listed = [name for name, _ in MODULES]
    return MODULES + [(name, "") for name in package_modules() if name not in listed]


def importable(name):
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def public_names(module):
    """The public names of a module, in source order where we can find it."""
    if hasattr(module, "__all__"):
        return list(module.__all__)
    names = []
    for name, value in vars(module).items():
        if name.startswith("_") or inspect.ismodule(value):
            continue
        if (inspect.isclass(value) or inspect.isfunction(value)) and value.__module__ == module.__name__:
            names.append(name)
    return names


def clean(text):
    """Remove what changes from one machine or run to the next (paths, memory addresses)."""
    text = re.sub(r"<module '([\w.]+)' from '[^']*'>", r"\1", text)
    text = re.sub(r"<module '([\w.]+)' \(built-in\)>", r"\1", text)
    text = re.sub(r"<(function|built-in function|class) ([\w.<>]+)(?: at 0x[0-9a-f]+)?>", r"\2", text)
    text = re.sub(r" at 0x[0-9a-f]+", "", text)
    return text


def signature(obj):
    try:
        return clean(str(inspect.signature(obj)))
    except (TypeError, ValueError):
        return "(...)"


def docstring(obj):
    doc = inspect.getdoc(obj)
    return doc.strip() if doc else "(no docstring)"


def block(text):
    return ["```text", text, "```", ""]


def class_members(cls):
    """(name, kind, object) for the public methods and properties defined on the class itself."""
    members = []
    for name, raw in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(raw, property):
            members.append((name, "property", raw))
        elif isinstance(raw, (classmethod, staticmethod)):
            members.append((name, type(raw).__name__, raw.__func__))
        elif inspect.isfunction(raw):
            members.append((name, "method", raw))
    return members


def render_object(qualified, name, obj):
    lines = []
    if inspect.isclass(obj):
        init_sig = signature(obj) if "__init__" in vars(obj) or "__new__" in vars(obj) else "(...)"
        if init_sig == "(...)":
            init_sig = signature(obj)
        lines += [f"### class `{qualified}`", "", "```text", f"{name}{init_sig}", "```", ""]
        lines += block(docstring(obj))
        for member, kind, value in class_members(obj):
            if kind == "property":
                head = f"{name}.{member}"
                lines += [f"#### `{head}` (property)", ""]
                lines += block(docstring(value))
            else:
                sig = signature(value)
                tag = f" ({kind})" if kind != "method" else ""
                lines += [f"#### `{name}.{member}`{tag}", "", "```text", f"{member}{sig}", "```", ""]
                lines += block(docstring(value))
    elif callable(obj):
        lines += [f"### `{qualified}`", "", "```text", f"{name}{signature(obj)}", "```", ""]
        lines += block(docstring(obj))
    else:
        lines += [f"### `{qualified}`", "", f"A constant: `{clean(repr(obj))}`.", ""]
    return lines


def render():
    lines = ["# API reference", "",
             "Generated by `python docs/scripts/api_reference.py` from the docstrings of the",
             "package; `tests/suites/test_api_reference.py` fails when this page and the code disagree.",
             "Each module is listed with the chapter that explains it. Public means: the module's",
             "`__all__` when it has one, otherwise the classes and functions defined in it whose",
             "names do not start with an underscore.", ""]
    docs = ROOT / "docs"
    present = [(name, page) for name, page in modules() if importable(name) is not None]
    lines += ["| module | chapter |", "|---|---|"]
    for name, page in present:
        chapter = f"[{page}]({page})" if page and (docs / page).exists() else (f"`{page}`" if page else "—")
        anchor = name.replace(".", "")
        lines.append(f"| [`{name}`](#{anchor}) | {chapter} |")
    lines.append("")
    for name, page in present:
        module = importlib.import_module(name)
        lines += [f"## {name}", ""]
        lines += block(docstring(module))
        if name == "npgpt":
            exported = ", ".join(f"`{n}`" for n in module.__all__)
            lines += [f"`npgpt.__all__`: {exported}. Each is documented below under the module",
                      "that defines it.", ""]
            continue
        for public in public_names(module):
            obj = getattr(module, public)
            if inspect.ismodule(obj):
                continue
            lines += render_object(f"{name}.{public}", public, obj)
    return "\n".join(lines).rstrip() + "\n"


def main(argv):
    text = render()
    if "--check" in argv:
        current = OUTPUT.read_text() if OUTPUT.exists() else ""
        if current != text:
            print("docs/api.md is out of date: run python docs/scripts/api_reference.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT.relative_to(ROOT)}: {text.count(chr(10))} lines")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
