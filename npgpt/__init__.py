"""npgpt: a GPT-2 language model library written from scratch on NumPy.

The same code runs on NVIDIA GPUs through CuPy: the array module follows the
data (see ``npgpt.backend``). Read the package alongside the book in
``docs/``: each module is the companion of one chapter.
"""

from npgpt import functional, nn
from npgpt import functional as F
from npgpt.autograd import Tensor, concat, grad, is_grad_enabled, no_grad, split, stack, tensor, where
from npgpt.backend import cuda_available
from npgpt.classifier import GPTClassifier
from npgpt.model import GPT, GPTConfig, KVCache
from npgpt.tokenizer import StreamDecoder, Tokenizer

__version__ = "0.1.0"

__all__ = ["Tensor", "tensor", "grad", "no_grad", "is_grad_enabled", "concat", "stack", "split", "where",
           "cuda_available", "functional", "F", "nn", "GPT", "GPTConfig", "KVCache",
           "GPTClassifier", "Tokenizer", "StreamDecoder"]

