"""npgpt: a GPT-2 language model library written from scratch on NumPy.

The same code runs on NVIDIA GPUs through CuPy: the array module follows the
data (see ``npgpt.backend``). Read the package alongside the book in
``docs/``: each module is the companion of one chapter.
"""

from npgpt.autograd import Tensor, concat, is_grad_enabled, no_grad, split, stack, tensor, where
from npgpt.backend import cuda_available

__version__ = "0.1.0"

__all__ = ["Tensor", "tensor", "no_grad", "is_grad_enabled", "concat", "stack", "split", "where",
           "cuda_available"]
