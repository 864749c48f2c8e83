"""Reverse-mode automatic differentiation (companion of ``docs/autograd.md``).

The package holds the chapter's two modules:

* ``npgpt.autograd.core``: the ``Tensor``, its graph, the backward walk and
  the elementary operations behind Python's operators;
* ``npgpt.autograd.gradcheck``: the finite-difference check every backward
  pass is tested with (imported on its own: ``from npgpt.autograd.gradcheck
  import gradcheck``).

Every public name of ``core`` is re-exported here, so ``from npgpt.autograd
import Tensor`` reads as the chapter writes it.
"""

from npgpt.autograd.core import (
    CONSTANT,
    Axes,
    Node,
    Operand,
    RowGradient,
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

__all__ = [
    "CONSTANT", "Axes", "Node", "Operand", "RowGradient", "Tensor", "accumulate_grad", "add", "as_tensor",
    "backward", "concat", "div", "exp", "getitem", "grad", "is_grad_enabled", "log", "masked_fill", "matmul",
    "max_", "mean", "mul", "neg", "no_grad", "power", "reshape", "split", "sqrt", "stack", "sub", "sum_",
    "swapaxes", "tanh", "tensor", "transpose", "unbroadcast", "where",
]
