"""Elementwise fusion: one Python function, one GPU kernel on CuPy, the same NumPy code on the CPU.

Companion of ``docs/gpu.md`` (section "Fusing elementwise chains").

A chain of elementwise operations written with NumPy's API (``s = a * a; s *= k; xp.exp(s, out=s)``)
is one kernel launch per operation on a GPU: each reads its inputs from the GPU's memory and
writes its result back. CuPy's ``cupy.fuse`` traces such a function once per argument types and
compiles the whole chain into **one** kernel, which reads each input once and writes only what
the function returns (or what it assigns in place into an argument). :func:`fuse` wraps a
*kernel function* so that

* on CuPy arrays it runs as ``cupy.fuse(kernel)``: one launch;
* on NumPy arrays it runs the very same function, unchanged, with ``numpy`` as its module: the
  CPU computes exactly what it computed before the function was fused, in the same order.

A kernel function takes the array module first, then its arguments (arrays and Python
numbers), and calls that module's ufuncs: ``def kernel(xp, a, b): ...``. Under ``cupy.fuse`` its
arguments are tracing proxies, not arrays, so it may use only what CuPy's tracer (the classic one,
``cupy/_core/fusion.pyx`` in CuPy 14) turns into kernel code:

* the module's ufuncs (``xp.exp``, ``xp.multiply`` ...), also with ``out=`` an array of the
  function (an argument, which the kernel then writes in place, or a value it made), no other
  keyword (no ``dtype=``); ``xp.where``, ``xp.copyto``, ``xp.clip``, ``xp.copy``; arithmetic and
  comparison operators, in-place ones (``s *= k``) included; ``.astype(dtype)``; Python numbers,
  which take the array's type as in NumPy 2 (a float32 array times ``0.5`` stays float32), where
  a number computed in the kernel from an argument is a float64 value (compute such factors in
  Python, before the call);
* at most one reduction (``xp.sum``, ``xp.max`` ... with ``axis=``, never ``keepdims=``, and
  not as an array method): the elementwise chain before it feeds it, and only elementwise
  operations on its result and on the function's own constants may follow, not on its
  arguments (one reduction kernel; ``functional._inverse_std_of_rows`` writes its ``eps`` in);
* no ``.shape``, no indexing but ``x[...] = value``, no ``float(x)`` or ``if x``: the proxies
  have no values. NumPy's own functions (``numpy.exp``) do not take proxies: call ``xp``'s.

What the kernel returns has the shape of all its array arguments broadcast together (of the
reduced shape, after a reduction): a returned value of a smaller shape comes back broadcast. The
CuPy stand-in of the tests (``tests/fake_cupy.py``) emulates this tracer: it refuses what the
tracer refuses, computes the values with NumPy, and counts one launch per call.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from npgpt import backend

__all__ = ["fuse", "Fused"]


class Fused:
    """A kernel function ``kernel(xp, *args)`` callable as ``fused(*args)`` on NumPy or CuPy arrays."""

    def __init__(self, kernel: Callable[..., Any]) -> None:
        self.kernel = kernel
        functools.update_wrapper(self, kernel)       # its name, module and docstring
        self._compiled: dict[int, tuple[Any, Callable[..., Any]]] = {}   # id(cupy module) -> (module, fused)

    def __reduce__(self) -> str:
        """Pickled by reference, as the function it replaces in its module would be."""
        return self.__qualname__

    def __call__(self, *args: Any) -> Any:
        if type(args[0]) is np.ndarray:      # the CPU's fast path (a host array beside a device one fails in NumPy)
            return self.kernel(np, *args)
        for a in args:
            if backend.is_cupy_array(a):
                return self._on(backend.array_module(a))(*args)
        return self.kernel(np, *args)

    def _on(self, xp: Any) -> Callable[..., Any]:
        """``xp.fuse`` of the kernel with ``xp`` bound, made once per module (the stand-in and CuPy
        can take turns in one process: each gets its own)."""
        entry = self._compiled.get(id(xp))
        if entry is None or entry[0] is not xp:
            kernel = self.kernel

            def traced(*args: Any) -> Any:
                return kernel(xp, *args)

            traced.__name__ = traced.__qualname__ = kernel.__name__
            entry = (xp, xp.fuse(kernel_name=kernel.__name__.strip("_") or "fused")(traced))
            self._compiled[id(xp)] = entry
        return entry[1]


def fuse(kernel: Callable[..., Any]) -> Fused:
    """Wrap ``kernel(xp, *args)``: one fused kernel on CuPy, the function itself on NumPy (see the module)."""
    return Fused(kernel)
