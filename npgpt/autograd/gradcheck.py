"""Numerical gradient checking: the test every backward pass must pass.

Companion of ``docs/autograd.md`` (section "Checking gradients").

The analytic gradient from ``backward`` is compared with central finite
differences (docs/autograd.md eq:central-difference):

    dL/dx_j  ~=  (L(x + eps e_j) - L(x - eps e_j)) / (2 eps),

whose error is O(eps^2). In float64 with eps = 1e-6 the two agree to about
1e-8 relative for smooth functions; float32 cannot resolve such a difference,
which is why checks always run in float64 (as Chainer and DeZero do).

A function with a non-scalar output ``y`` is reduced to the scalar
``L = sum(y * w)`` with a fixed random ``w``, so every output element's
gradient is exercised with a different weight.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Optional

import numpy as np

from npgpt import backend
from npgpt.autograd import Tensor
from npgpt.backend import Array


def numerical_gradient(f: Callable[..., Any], arrays: Sequence[Array], index: int, eps: float = 1e-6) -> np.ndarray:
    """Central differences of the scalar ``f(*arrays)`` w.r.t. ``arrays[index]``."""
    x = arrays[index]
    grad = np.zeros(x.shape, dtype=np.float64)
    flat = x.reshape(-1)          # a view: writing it perturbs x in place
    for j in range(flat.size):
        saved = flat[j].item()
        flat[j] = saved + eps
        plus = float(f(*arrays))
        flat[j] = saved - eps
        minus = float(f(*arrays))
        flat[j] = saved
        grad.reshape(-1)[j] = (plus - minus) / (2 * eps)
    return grad


def check_gradients(fn: Callable[..., Tensor], *arrays: Array, wrt: Optional[Iterable[int]] = None, rtol: float = 1e-5,
                    atol: float = 1e-7, eps: float = 1e-6, seed: int = 0) -> bool:
    """Assert that ``fn``'s backward pass matches finite differences.

    ``fn`` maps Tensors to a Tensor; ``arrays`` are float64 arrays (or int
    arrays passed through unchanged). ``wrt`` lists the argument positions
    to check (default: every floating-point argument). Raises
    ``AssertionError`` naming the argument and the worst element.
    """
    xp = backend.array_module(*arrays)
    arrays = [a.copy() for a in arrays]
    if wrt is None:
        wrt = [i for i, a in enumerate(arrays) if a.dtype.kind == "f"]
    for i in wrt:
        if arrays[i].dtype != np.float64:
            raise TypeError(f"check_gradients: argument {i} must be float64, got {arrays[i].dtype}")

    tensors = [Tensor(a, requires_grad=(i in wrt)) for i, a in enumerate(arrays)]
    out = fn(*tensors)
    weights = xp.asarray(np.random.default_rng(seed).standard_normal(out.shape))
    (out * Tensor(weights)).sum().backward()

    def scalar(*values: Array) -> Array:
        return (fn(*[Tensor(v) for v in values]).data * weights).sum()

    for i in wrt:
        analytic = backend.to_numpy(tensors[i].grad)
        numeric = backend.to_numpy(numerical_gradient(scalar, arrays, i, eps))
        if analytic.shape != numeric.shape:
            raise AssertionError(f"argument {i}: gradient shape {analytic.shape}, expected {numeric.shape}")
        error = np.abs(analytic - numeric) - (atol + rtol * np.abs(numeric))
        if (error > 0).any():
            worst = np.unravel_index(np.argmax(error), error.shape)
            raise AssertionError(f"argument {i}: analytic gradient {analytic[worst]:.10g} differs from "
                                 f"numerical {numeric[worst]:.10g} at index {worst}")
    return True
