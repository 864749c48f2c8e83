"""The public API carries type hints: at least 90% of its functions and methods are annotated.

Public means: the names in a module's ``__all__`` if it has one, else the names not starting
with ``_`` that the module defines itself (not imported ones); for a class, its public methods
and ``__init__``. ``__main__`` modules are skipped. A function counts as annotated when it has a
return annotation, or when all of its parameters (besides ``self`` and ``cls``) are annotated.
"""

import importlib
import inspect
import pkgutil

import npgpt

REQUIRED = 0.9


def public_functions():
    """``(qualified name, function)`` for every public function and method of the package."""
    for info in pkgutil.walk_packages(npgpt.__path__, "npgpt."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        names = getattr(module, "__all__", [n for n in vars(module) if not n.startswith("_")])
        for name in names:
            obj = getattr(module, name, None)
            if inspect.isfunction(obj) and obj.__module__ == module.__name__:
                yield f"{module.__name__}.{name}", obj
            elif inspect.isclass(obj) and obj.__module__ == module.__name__:
                for attr, value in vars(obj).items():
                    if (not attr.startswith("_") or attr == "__init__") and inspect.isfunction(value):
                        yield f"{module.__name__}.{name}.{attr}", value


def is_annotated(function):
    signature = inspect.signature(function)
    params = [p for p in signature.parameters.values() if p.name not in ("self", "cls")]
    if signature.return_annotation is not inspect.Signature.empty:
        return True
    return bool(params) and all(p.annotation is not inspect.Parameter.empty for p in params)


def test_the_check_tells_annotated_from_bare_functions():
    def bare(x, y=1):
        return x

    def returns(x) -> int:
        return x

    def params(x: int, y: str = ""):
        return x

    def half(x: int, y=1):
        return x

    def nothing():
        return None

    assert not is_annotated(bare) and not is_annotated(half) and not is_annotated(nothing)
    assert is_annotated(returns) and is_annotated(params)


def test_the_walk_finds_functions_methods_and_constructors():
    names = {name for name, _ in public_functions()}
    assert "npgpt.training.optim.cosine_schedule" in names
    assert "npgpt.training.optim.AdamW.__init__" in names
    assert "npgpt.training.data.BatchSampler.next" in names
    assert not any(".__main__." in name for name in names)
    assert not any(name.split(".")[-1].startswith("_") and not name.endswith(".__init__") for name in names)


def test_at_least_90_percent_of_the_public_api_is_annotated():
    items = list(public_functions())
    bare = sorted(name for name, function in items if not is_annotated(function))
    coverage = 1 - len(bare) / len(items)
    assert coverage >= REQUIRED, (
        f"{coverage:.1%} of {len(items)} public functions and methods are annotated (need {REQUIRED:.0%}); "
        f"without annotations: {', '.join(bare)}")
