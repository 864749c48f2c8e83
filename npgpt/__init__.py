"""npgpt: a GPT-2 language model library written from scratch on NumPy.

The same code runs on NVIDIA GPUs through CuPy: the array module follows the
data (see ``npgpt.backend``). Read the package alongside the book in
``docs/``: each module is the companion of one chapter.

Importing ``npgpt`` loads nothing but this file: each name below is imported
the first time it is used (PEP 562 ``__getattr__``). So ``from npgpt import
Tokenizer`` loads the tokenizer and no model or autograd code, and a script
that only generates never loads the trainer, the optimizer or the CLI.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> (module, attribute in it; None for the module itself)
_EXPORTS = {
    "Tensor": ("npgpt.autograd", "Tensor"),
    "tensor": ("npgpt.autograd", "tensor"),
    "grad": ("npgpt.autograd", "grad"),
    "no_grad": ("npgpt.autograd", "no_grad"),
    "is_grad_enabled": ("npgpt.autograd", "is_grad_enabled"),
    "concat": ("npgpt.autograd", "concat"),
    "stack": ("npgpt.autograd", "stack"),
    "split": ("npgpt.autograd", "split"),
    "where": ("npgpt.autograd", "where"),
    "cuda_available": ("npgpt.backend", "cuda_available"),
    "functional": ("npgpt.functional", None),
    "F": ("npgpt.functional", None),
    "nn": ("npgpt.nn", None),
    "GPT": ("npgpt.model", "GPT"),
    "GPTConfig": ("npgpt.model", "GPTConfig"),
    "KVCache": ("npgpt.model", "KVCache"),
    "GPTClassifier": ("npgpt.finetuning.classifier", "GPTClassifier"),
    "Tokenizer": ("npgpt.tokenizer", "Tokenizer"),
    "StreamDecoder": ("npgpt.tokenizer", "StreamDecoder"),
    "ChatSession": ("npgpt.apps.chat", "ChatSession"),
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        # Submodules (``npgpt.training.train``) are found by the import system, not here.
        raise AttributeError(f"module 'npgpt' has no attribute {name!r}")
    module_name, attribute = _EXPORTS[name]
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value          # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:       # for type checkers and IDEs: the names as if imported eagerly
    from npgpt import functional, nn
    from npgpt import functional as F
    from npgpt.apps.chat import ChatSession
    from npgpt.autograd import Tensor, concat, grad, is_grad_enabled, no_grad, split, stack, tensor, where
    from npgpt.backend import cuda_available
    from npgpt.finetuning.classifier import GPTClassifier
    from npgpt.model import GPT, GPTConfig, KVCache
    from npgpt.tokenizer import StreamDecoder, Tokenizer
