"""Reverse-mode automatic differentiation (companion of ``docs/autograd.md``).

The package holds the chapter's three modules:

* ``npgpt.autograd.core``: the ``Tensor``, ``backward`` and ``grad``, and the
  elementary operations behind Python's operators;
* ``npgpt.autograd.graph``: the graph's nodes (``Node``, ``Leaf``,
  ``CONSTANT``) and the backward walk, with ``GradientSum``, the memory
  policy of the gradients summed on the way;
* ``npgpt.autograd.gradcheck``: the finite-difference check every backward
  pass is tested with (imported on its own: ``from npgpt.autograd.gradcheck
  import gradcheck``).

Every public name of ``core`` and ``graph`` is re-exported here, so ``from npgpt.autograd
import Tensor`` reads as the chapter writes it.
"""

from npgpt.autograd.core import (
    Axes,
    Operand,
    Tensor,
    accumulate_grad,
    add,
    as_tensor,
    backward,
    concat,
    div,
    exp,
    getitem,
    grad,
    is_grad_enabled,
    log,
    masked_fill,
    matmul,
    max_,
    mean,
    mul,
    neg,
    no_grad,
    power,
    reshape,
    split,
    sqrt,
    stack,
    sub,
    sum_,
    swapaxes,
    tanh,
    tensor,
    transpose,
    unbroadcast,
    where,
)
from npgpt.autograd.graph import CONSTANT, GradientSum, Leaf, Node, RowGradient

__all__ = [
    "CONSTANT", "Axes", "GradientSum", "Leaf", "Node", "Operand", "RowGradient", "Tensor", "accumulate_grad", "add", "as_tensor",
    "backward", "concat", "div", "exp", "getitem", "grad", "is_grad_enabled", "log", "masked_fill", "matmul",
    "max_", "mean", "mul", "neg", "no_grad", "power", "reshape", "split", "sqrt", "stack", "sub", "sum_",
    "swapaxes", "tanh", "tensor", "transpose", "unbroadcast", "where",
]
