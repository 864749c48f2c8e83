"""Functions stay short enough to read: limits on length and cyclomatic complexity (issue 23 item 5).

The measure is ``tools/function_sizes.py`` (its docstring defines both numbers). Every function
in npgpt/ meets ``MAX_LINES`` and ``MAX_COMPLEXITY`` or is named below with the reason it may
not; an exemption that is no longer needed fails too, so the list only shrinks.
"""

import importlib.util
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("function_sizes", ROOT / "tools" / "function_sizes.py")
function_sizes = importlib.util.module_from_spec(spec)
sys.modules["function_sizes"] = function_sizes      # dataclasses look their module up by name
spec.loader.exec_module(function_sizes)

_FILE_FORMAT = "checks an untrusted file field by field, each refusal naming the field (docs/engineering.md)"
_BENCH = "a benchmark's script: one measurement read top to bottom, outside the teaching path"

EXEMPT = {
    # reading files a user or a download hands us
    "npgpt.io.checkpoint:read_header": _FILE_FORMAT,
    "npgpt.tokenizer.formats:read_vocab_merges": _FILE_FORMAT,
    "npgpt.tokenizer.formats:read_tiktoken": _FILE_FORMAT,
    "npgpt.tokenizer.formats:special_names": _FILE_FORMAT,
    "npgpt.training.data:load_meta": _FILE_FORMAT,
    "npgpt.finetuning.labelled:read_labelled_file": _FILE_FORMAT,
    "npgpt.finetuning.conversations:messages_of": _FILE_FORMAT,
    "npgpt.finetuning.lora:load_adapter": _FILE_FORMAT,
    "npgpt.finetuning.classifier:_classifier_fields": _FILE_FORMAT,
    # benchmarks
    "npgpt.bench.generate:_run": _BENCH,
    "npgpt.bench.tokenizer:run": _BENCH,
    "npgpt.bench.train:run": _BENCH,
    "npgpt.bench.serve:run": _BENCH,
    # fused ops: one forward and its hand-written backward in one closure, as docs/backward.md derives them
    "npgpt.functional:linear_cross_entropy": "the fused head and loss, blocked over rows (docs/backward.md): "
                                             "forward and backward share the block loop",
    "npgpt.finetuning.lora:lora_linear":
        "the fused LoRA op: forward and hand-written backward (eq:lora, eq:lora-grad and eq:lora-merge of agent.md)",
}


SIZES = function_sizes.all_function_sizes()      # measured once for the tests below


def test_every_function_meets_the_limits_or_is_exempted_with_a_reason():
    over = [s for s in SIZES
            if (s.lines > function_sizes.MAX_LINES or s.complexity > function_sizes.MAX_COMPLEXITY)
            and s.name not in EXEMPT]
    assert not over, (f"over {function_sizes.MAX_LINES} lines or complexity {function_sizes.MAX_COMPLEXITY} "
                      "(split it, or add it to EXEMPT in tests/suites/test_function_sizes.py with the reason): "
                      + "; ".join(f"{s.name} ({s.lines} lines, complexity {s.complexity})" for s in over))


def test_every_exemption_is_still_needed():
    sizes = {s.name: s for s in SIZES}
    stale = [name for name in EXEMPT if name not in sizes
             or (sizes[name].lines <= function_sizes.MAX_LINES
                 and sizes[name].complexity <= function_sizes.MAX_COMPLEXITY)]
    assert not stale, f"remove from EXEMPT in tests/suites/test_function_sizes.py (gone or within the limits now): {stale}"


def test_the_measure_counts_what_its_docstring_says(tmp_path):
    source = tmp_path / "npgpt" / "m.py"
    source.parent.mkdir()
    source.write_text('def f(x):\n    """Doc."""\n    if x and x > 1:\n        return [y for y in x if y]\n'
                      '    for y in x:\n        pass\n    else:\n        pass\n    return 1 if x else 2\n'
                      'class C:\n    def g(self):\n        def inner():\n            if self:\n                pass\n'
                      '        return inner\n')
    old_root = function_sizes.ROOT
    function_sizes.ROOT = tmp_path
    try:
        sizes = {s.name: s for s in function_sizes.function_sizes(source)}
    finally:
        function_sizes.ROOT = old_root
    # f: if, and, comprehension if, for, for-else, conditional expression: 1 + 6
    assert sizes["npgpt.m:f"].complexity == 7
    assert sizes["npgpt.m:f"].lines == 7          # docstring excluded
    assert sizes["npgpt.m:C.g"].complexity == 1   # the nested function's if is its own
    assert sizes["npgpt.m:C.g.inner"].complexity == 2
