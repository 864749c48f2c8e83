"""Reverse-mode automatic differentiation: the ``Tensor`` and its graph.

Companion of ``docs/autograd.md``.

A ``Tensor`` wraps an array (``numpy.ndarray`` or ``cupy.ndarray``) in
``.data``. Every differentiable operation on tensors returns a new tensor
whose ``_node`` (a ``Node``) remembers

* ``parents``: the nodes of the tensors it was computed from (a tensor no
  op computed that needs a gradient -- a parameter -- has a ``Leaf``; one
  that needs none is ``CONSTANT``), and
* ``backward``: a function that maps the gradient of the loss with respect to
  this output, ``dL/dy``, to the gradients with respect to each parent,
  ``dL/dx_k = dL/dy * dy/dx_k`` (the chain rule, docs/autograd.md eq:chain-rule).

The graph holds nodes, not tensors: an intermediate result that its
backward does not need (the residual stream, say) is freed as soon as the
program drops it, as in PyTorch, instead of living until the backward pass.

The graph is built as the program runs ("define-by-run"). ``loss.backward()``
sorts the graph topologically and walks it from the loss back to the leaves,
summing the gradient contributions of every path (eq:sum-over-children). Leaves that ask for
it (``requires_grad=True``) receive their gradient in ``.grad``, an array on
the same device as ``.data``. After the walk the graph is released, so the
intermediate arrays each op saved for its backward pass are freed and memory
does not grow from step to step.

This module holds the tensor, ``backward`` and ``grad``, and the elementary
operations behind Python's operators (``+ - * / ** @``, indexing,
reductions, reshapes); the nodes and the walk itself are in
``npgpt.autograd.graph``. The coarse fused operations a network is made of
(softmax, layer norm, attention, cross-entropy ...) live in
``npgpt.functional``.
"""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Optional, Union

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from npgpt import backend
from npgpt.autograd.graph import Leaf, Node, _backpropagate, _node_of
from npgpt.backend import Array

# What the elementary ops accept as an operand: a Tensor, or a constant (an array of either
# backend, or a Python number, which takes the dtype and device of the other operand).
Operand = Union["Tensor", Array, float]
# The axes of a reduction: one, several, or every axis (None).
Axes = Optional[Union[int, tuple[int, ...]]]

_grad_enabled = True


@contextlib.contextmanager
def no_grad() -> Iterator[None]:
    """Inside ``with no_grad():`` operations record no graph (inference mode)."""
    global _grad_enabled
    previous, _grad_enabled = _grad_enabled, False
    try:
        yield
    finally:
        _grad_enabled = previous


def is_grad_enabled() -> bool:
    return _grad_enabled


def _describe(t: Tensor) -> str:
    return f"Tensor(shape={tuple(t.shape)}, dtype={t.dtype}, device={t.device!r})"


class Tensor:
    """An array with an optional gradient and the recipe that produced it."""

    __slots__ = ("data", "grad", "requires_grad", "_node", "name", "__weakref__")
    # Make ``ndarray + Tensor`` call ``Tensor.__radd__`` instead of NumPy's ``__add__``.
    __array_priority__ = 1000

    def __init__(self, data: Tensor | Array | ArrayLike, requires_grad: bool = False,
                 name: Optional[str] = None) -> None:
        if isinstance(data, Tensor):
            data = data.data
        if not (isinstance(data, np.ndarray) or backend.is_cupy_array(data)):
            data = np.asarray(data)
        if requires_grad and data.dtype.kind != "f":
            raise TypeError(f"only floating-point tensors can require gradients, got dtype {data.dtype}")
        self.data: Array = data
        self.grad: Optional[Array] = None
        self.requires_grad = bool(requires_grad)
        self._node: Optional[Node | Leaf] = None     # the op's Node, or a Leaf once a graph uses it
        self.name = name

    # ------------------------------------------------------------------ basics
    shape = property(lambda self: self.data.shape)
    ndim = property(lambda self: self.data.ndim)
    dtype = property(lambda self: self.data.dtype)
    size = property(lambda self: self.data.size)
    device = property(lambda self: backend.device_of(self.data))
    T = property(lambda self: self.transpose())
    is_leaf = property(lambda self: not isinstance(self._node, Node))

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        grad = ", requires_grad=True" if self.requires_grad else ""
        body = np.array2string(backend.to_numpy(self.data), precision=4, threshold=20, prefix="tensor(")
        return f"tensor({body}, dtype={self.dtype}, device={self.device!r}{grad})"

    def numpy(self) -> np.ndarray:
        """The data as a NumPy array on the host (a copy when on a GPU)."""
        return backend.to_numpy(self.data)

    def item(self) -> float | int:
        if self.size != 1:
            raise ValueError(f"item() needs a tensor with one element, got shape {tuple(self.shape)}")
        return self.data.reshape(()).item()

    def tolist(self) -> list | float | int:
        return self.numpy().tolist()

    def detach(self) -> Tensor:
        """The same data, cut from the graph (no gradient flows through it)."""
        return Tensor(self.data)

    def to(self, device: str) -> Tensor:
        """This tensor on ``device`` ("cpu" or "cuda"); ``self`` if already there."""
        if backend.check_device(device) == self.device:
            return self
        moved = Tensor(backend.to_device(self.data, device), requires_grad=self.requires_grad, name=self.name)
        if self.grad is not None:
            moved.grad = backend.to_device(self.grad, device)
        return moved

    def astype(self, dtype: DTypeLike) -> Tensor:
        """A differentiable cast (the gradient is cast back)."""
        source = self.dtype
        return _make(self.data.astype(dtype), (self,), lambda g: (g.astype(source),))

    # --------------------------------------------------------------- backward
    def backward(self, grad: Tensor | Array | None = None, retain_graph: bool = False) -> None:
        """Fill ``.grad`` of every leaf this tensor depends on (docs/autograd.md eq:sum-over-children).

        ``grad`` is ``dL/dself``; it may be omitted only for a one-element
        tensor (a loss), where it is 1. Gradients add up across calls until
        cleared, as in PyTorch. The graph is freed afterwards unless
        ``retain_graph=True``. To get gradients *returned* instead of added
        into ``.grad``, use :func:`grad`.
        """
        backward(self, grad, retain_graph=retain_graph)

    # ---------------------------------------------------------- operators
    def __add__(self, other: Operand) -> Tensor: return add(self, other)
    def __radd__(self, other: Operand) -> Tensor: return add(other, self)
    def __sub__(self, other: Operand) -> Tensor: return sub(self, other)
    def __rsub__(self, other: Operand) -> Tensor: return sub(other, self)
    def __mul__(self, other: Operand) -> Tensor: return mul(self, other)
    def __rmul__(self, other: Operand) -> Tensor: return mul(other, self)
    def __truediv__(self, other: Operand) -> Tensor: return div(self, other)
    def __rtruediv__(self, other: Operand) -> Tensor: return div(other, self)
    def __pow__(self, other: Operand) -> Tensor: return power(self, other)
    def __rpow__(self, other: Operand) -> Tensor: return power(other, self)
    def __matmul__(self, other: Operand) -> Tensor: return matmul(self, other)
    def __rmatmul__(self, other: Operand) -> Tensor: return matmul(other, self)
    def __neg__(self) -> Tensor: return neg(self)
    def __getitem__(self, index: Any) -> Tensor: return getitem(self, index)

    # Comparisons give plain boolean arrays: they are not differentiable.
    def __lt__(self, other: Operand) -> Array: return self.data < _data(other)
    def __le__(self, other: Operand) -> Array: return self.data <= _data(other)
    def __gt__(self, other: Operand) -> Array: return self.data > _data(other)
    def __ge__(self, other: Operand) -> Array: return self.data >= _data(other)

    def sum(self, axis: Axes = None, keepdims: bool = False) -> Tensor: return sum_(self, axis, keepdims)
    def mean(self, axis: Axes = None, keepdims: bool = False) -> Tensor: return mean(self, axis, keepdims)
    def max(self, axis: Axes = None, keepdims: bool = False) -> Tensor: return max_(self, axis, keepdims)
    def reshape(self, *shape: int | Sequence[int]) -> Tensor: return reshape(self, shape[0] if len(shape) == 1 else shape)

    def transpose(self, *axes: int | Sequence[int]) -> Tensor:
        return transpose(self, axes[0] if len(axes) == 1 else (axes or None))

    def swapaxes(self, a: int, b: int) -> Tensor: return swapaxes(self, a, b)
    def split(self, indices_or_sections: int | Sequence[int], axis: int = 0) -> list[Tensor]:
        return split(self, indices_or_sections, axis)

    def exp(self) -> Tensor: return exp(self)
    def log(self) -> Tensor: return log(self)
    def tanh(self) -> Tensor: return tanh(self)
    def sqrt(self) -> Tensor: return sqrt(self)
    def masked_fill(self, mask: Tensor | Array, value: float | Array) -> Tensor: return masked_fill(self, mask, value)


def accumulate_grad(leaf: Tensor, grad: Array, owned: bool = False) -> None:
    """``leaf.grad += grad``, creating ``.grad`` from ``grad`` the first time.

    From a copy, unless ``owned``: the same gradient array may also flow to
    other nodes (``a + b`` hands one array to both), and a later in-place
    ``+=`` must not change theirs. ``owned=True`` says nothing else refers
    to ``grad`` (the walk made it, or an op declared it ``fresh``), so it
    becomes ``.grad`` itself: for GPT-2's tied embedding that saves a
    154 MB copy.
    """
    if leaf.grad is None:
        leaf.grad = grad if owned else grad.copy()
    else:
        leaf.grad += grad


def _output_gradient(output: Tensor, grad: Tensor | Array | None) -> Array:
    """The gradient to start the walk from at ``output``: 1 for a scalar, else ``grad`` checked."""
    if not output.requires_grad:
        raise RuntimeError(f"backward() on {_describe(output)}, which does not require grad "
                           "(no input had requires_grad=True, or it was computed under no_grad())")
    xp = backend.array_module(output.data)
    if grad is None:
        if output.size != 1:
            raise ValueError(f"backward() on a non-scalar {_describe(output)} needs an explicit "
                             "gradient of the same shape: t.backward(grad)")
        return xp.ones_like(output.data)
    grad = grad.data if isinstance(grad, Tensor) else xp.asarray(grad, dtype=output.dtype)
    if grad.shape != output.shape:
        raise ValueError(f"backward(): gradient of shape {tuple(grad.shape)} given for {_describe(output)}")
    return grad


def backward(output: Tensor, grad: Tensor | Array | None = None, *, retain_graph: bool = False,
             on_leaf: Callable[[Tensor, Array, bool], None] = accumulate_grad) -> None:
    """Backpropagate from ``output``, handing each leaf's gradient to ``on_leaf(leaf, g, owned)`` once complete.

    ``t.backward()`` is ``backward(t)``: ``on_leaf`` defaults to
    ``accumulate_grad`` (``leaf.grad += g``). Another ``on_leaf`` decides
    itself where gradients go -- ``npgpt.training.parallel`` adds the shards'
    gradients into ``.grad`` in a fixed order while the walk goes on, so a
    thread never holds a full set of gradients of its own. Unless
    ``owned`` is True, ``g`` may be an array that other nodes also
    received: copy it before changing it.
    """
    _backpropagate([(output, _output_gradient(output, grad))], retain_graph, on_leaf=on_leaf)


def grad(outputs: Tensor | Iterable[Tensor], inputs: Tensor | Iterable[Tensor],
         grad_outputs: Tensor | Array | Sequence[Tensor | Array | None] | None = None, retain_graph: bool = False,
         allow_unused: bool = False) -> list[Optional[Array]]:
    """The gradients of ``outputs`` with respect to ``inputs``, returned; ``.grad`` is not touched.

    ``npgpt.grad(loss, [w, b])`` is ``[dL/dw, dL/db]`` as arrays (as
    ``torch.autograd.grad``). ``outputs`` is a tensor or a list of them
    (their gradients are summed, each seeded with the matching entry of
    ``grad_outputs``, default 1 for a scalar); ``inputs`` a tensor or a
    list, leaves or intermediate results. An input the outputs do not
    depend on is an error, or ``None`` with ``allow_unused=True``. Because
    nothing is written into shared ``.grad`` arrays, threads can take
    gradients of separate graphs over the same parameters at the same time
    (``npgpt.training.parallel`` does).
    """
    outputs, inputs, grad_outputs = _grad_arguments(outputs, inputs, grad_outputs)
    wanted = {id(_node_of(x)): i for i, x in enumerate(inputs)}
    found: list[Optional[Array]] = [None] * len(inputs)

    def on_node(node: Tensor, g: Array) -> None:
        i = wanted.get(id(node))
        if i is not None:
            found[i] = g

    _backpropagate([(o, _output_gradient(o, g)) for o, g in zip(outputs, grad_outputs)], retain_graph,
                   on_leaf=lambda leaf, g, owned: None, on_node=on_node)
    missing = [i for i, g in enumerate(found) if g is None]
    if missing and not allow_unused:
        raise ValueError(f"grad(): the outputs do not depend on input(s) {missing}; pass allow_unused=True "
                         "to get None for them")
    return _each_its_own(found)


def _grad_arguments(outputs: Tensor | Iterable[Tensor], inputs: Tensor | Iterable[Tensor],
                    grad_outputs: Any) -> tuple[list[Tensor], list[Tensor], list[Any]]:
    """:func:`grad`'s arguments as three lists, checked: one seed per output, inputs that require grad."""
    outputs = [outputs] if isinstance(outputs, Tensor) else list(outputs)
    inputs = [inputs] if isinstance(inputs, Tensor) else list(inputs)
    if grad_outputs is None:
        grad_outputs = [None] * len(outputs)
    elif isinstance(grad_outputs, Tensor) or hasattr(grad_outputs, "shape"):
        grad_outputs = [grad_outputs]
    if len(grad_outputs) != len(outputs):
        raise ValueError(f"grad(): {len(grad_outputs)} grad_outputs for {len(outputs)} outputs")
    for i, x in enumerate(inputs):
        if not isinstance(x, Tensor) or not x.requires_grad:
            raise ValueError(f"grad(): input {i} ({_describe(x) if isinstance(x, Tensor) else type(x).__name__}) "
                             "does not require grad")
    return outputs, inputs, list(grad_outputs)


def _each_its_own(gradients: list[Optional[Array]]) -> list[Optional[Array]]:
    """The walk may hand one array to two inputs (``x + y`` with both asked for): copy the repeats, so
    that a caller who updates one gradient in place does not change the other."""
    seen = set()
    for i, g in enumerate(gradients):
        if g is not None:
            if id(g) in seen:
                gradients[i] = g.copy()
            seen.add(id(g))
    return gradients


def tensor(data: Tensor | Array | ArrayLike, requires_grad: bool = False, dtype: Optional[DTypeLike] = None,
           device: Optional[str] = None) -> Tensor:
    """Make a tensor from a list, scalar or array (``npgpt.tensor``).

    Python floats become float32 (the working precision of the library)
    unless ``dtype`` says otherwise; arrays keep their dtype.
    """
    if isinstance(data, Tensor):
        data = data.data
    if dtype is None and not hasattr(data, "dtype"):
        probe = np.asarray(data)
        dtype = np.float32 if probe.dtype.kind == "f" else None
    array = backend.to_device(data, device if device is not None else backend.device_of(data))
    # Copy, as torch.tensor does: later in-place updates must not alias the caller's array.
    return Tensor(array.astype(dtype if dtype is not None else array.dtype, copy=True), requires_grad=requires_grad)


def _make(data: Array, parents: tuple[Tensor, ...], backward: Callable[[Array], tuple],
          fresh: bool = False) -> Tensor:
    """Wrap an op's result; record the graph only when a gradient can flow.

    ``fresh=True`` declares that every array ``backward`` returns is new and
    referenced nowhere else once the graph is freed (not a view, not the
    incoming gradient, not an array the closure keeps for a second call),
    so the walk may add other gradients into it in place.
    """
    out = Tensor(data)
    if _grad_enabled and any(p.requires_grad for p in parents):
        out.requires_grad = True
        out._node = Node(backward, tuple(_node_of(p) for p in parents), fresh)
    return out


def _data(x: Any) -> Any:
    return x.data if isinstance(x, Tensor) else x


def as_tensor(x: Operand, like: Optional[Tensor] = None) -> Tensor:
    """``x`` as a Tensor; Python numbers take ``like``'s dtype and device."""
    if isinstance(x, Tensor):
        return x
    if like is not None:
        xp = backend.array_module(like.data)
        if isinstance(x, numbers.Number):
            # Filled on the device (a kernel argument), not copied there as asarray(x) would be.
            return Tensor(xp.full((), x, dtype=like.dtype))
        if backend.device_of(x) != like.device:
            raise ValueError(f"cannot combine a {backend.device_of(x)} array with {_describe(like)}; "
                             "move one of them with .to(device)")
        return Tensor(xp.asarray(x))
    return Tensor(x)     # an array stays where it is; anything else becomes a NumPy array


def _check_same_device(op: str, *tensors: Tensor) -> None:
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        described = ", ".join(_describe(t) for t in tensors)
        raise ValueError(f"{op}: tensors are on different devices ({described}); move them with .to(device)")


def unbroadcast(grad: Array, shape: Sequence[int]) -> Array:
    """Sum ``grad`` down to ``shape``: the backward of NumPy broadcasting (eq:broadcast-backward).

    A value broadcast along an axis was used once per position on that axis,
    so its gradient is the sum over that axis.
    """
    if grad.shape == tuple(shape):
        return grad
    extra = grad.ndim - len(shape)
    axes = tuple(range(extra)) + tuple(i + extra for i, n in enumerate(shape) if n == 1 and grad.shape[i + extra] != 1)
    return grad.sum(axis=axes, keepdims=True).reshape(shape) if axes else grad.reshape(shape)


def _binary(op: str, a: Operand, b: Operand) -> tuple[Tensor, Tensor]:
    """Common preamble of the binary ops: wrap numbers, check devices and shapes."""
    a = as_tensor(a, like=b if isinstance(b, Tensor) else None)
    b = as_tensor(b, like=a)
    _check_same_device(op, a, b)
    try:
        np.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        raise ValueError(f"{op}: shapes {tuple(a.shape)} and {tuple(b.shape)} cannot be broadcast together") from None
    return a, b


# ========================================================== elementary ops
def add(a: Operand, b: Operand) -> Tensor:
    """``a + b``; gradient 1 to each input, summed over broadcast axes."""
    a, b = _binary("add", a, b)
    sa, sb = a.shape, b.shape            # the closure keeps shapes, not the tensors (nor their data)
    return _make(a.data + b.data, (a, b), lambda g: (unbroadcast(g, sa), unbroadcast(g, sb)))


def sub(a: Operand, b: Operand) -> Tensor:
    """``a - b``; gradients ``g`` and ``-g``."""
    a, b = _binary("sub", a, b)
    sa, sb = a.shape, b.shape
    return _make(a.data - b.data, (a, b), lambda g: (unbroadcast(g, sa), unbroadcast(-g, sb)))


def mul(a: Operand, b: Operand) -> Tensor:
    """``a * b``; gradients ``g * b`` and ``g * a``."""
    a, b = _binary("mul", a, b)
    return _make(a.data * b.data, (a, b),
                 lambda g: (unbroadcast(g * b.data, a.shape) if a.requires_grad else None,
                            unbroadcast(g * a.data, b.shape) if b.requires_grad else None))


def div(a: Operand, b: Operand) -> Tensor:
    """``a / b``; gradients ``g / b`` and ``-g a / b^2``."""
    a, b = _binary("div", a, b)
    out = a.data / b.data
    return _make(out, (a, b),
                 lambda g: (unbroadcast(g / b.data, a.shape) if a.requires_grad else None,
                            unbroadcast(-g * out / b.data, b.shape) if b.requires_grad else None))


def power(a: Operand, b: Operand) -> Tensor:
    """``a ** b``; gradients ``g b a^(b-1)`` and ``g a^b log a``."""
    a, b = _binary("power", a, b)
    xp = backend.array_module(a.data)
    out = a.data ** b.data

    def backward(g: Array) -> tuple[Optional[Array], Optional[Array]]:
        ga = unbroadcast(g * b.data * a.data ** (b.data - 1), a.shape) if a.requires_grad else None
        gb = None
        if b.requires_grad:
            # d(a^b)/db = a^b log a; defined as 0 where a^b is 0 (a = 0, b > 0).
            log_a = xp.log(xp.where(a.data > 0, a.data, 1))
            gb = unbroadcast(g * out * log_a, b.shape)
        return ga, gb

    return _make(out, (a, b), backward)


def neg(a: Tensor) -> Tensor:
    """``-a``; gradient ``-g``."""
    return _make(-a.data, (a,), lambda g: (-g,))


def matmul(a: Operand, b: Operand) -> Tensor:
    """``a @ b`` for (..., n, k) @ (..., k, m), batch axes broadcast (eq:matmul-backward).

    Gradients: ``dL/da = g @ b^T`` and ``dL/db = a^T @ g``, summed over any
    broadcast batch axes. 1-D operands are treated as a row / a column, as
    NumPy does.
    """
    a, b = as_tensor(a, like=b if isinstance(b, Tensor) else None), as_tensor(b, like=a if isinstance(a, Tensor) else None)
    _check_same_device("matmul", a, b)
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError(f"matmul: operands must have at least one axis, got {tuple(a.shape)} and {tuple(b.shape)}")
    k_a, k_b = a.shape[-1], b.shape[-2] if b.ndim > 1 else b.shape[0]
    if k_a != k_b:
        raise ValueError(f"matmul: inner dimensions differ, {tuple(a.shape)} @ {tuple(b.shape)} ({k_a} != {k_b})")
    if b.ndim == 2 and a.ndim > 2:
        # (..., n, k) @ (k, m): one large 2-D GEMM over all rows is far faster than a
        # batch of small ones, forwards and backwards (the LM head is exactly this case).
        a2 = a.data.reshape(-1, k_a)
        out = (a2 @ b.data).reshape(a.shape[:-1] + (b.shape[1],))

        def backward(g: Array) -> tuple[Optional[Array], Optional[Array]]:
            g2 = g.reshape(-1, g.shape[-1])
            ga = (g2 @ b.data.T).reshape(a.shape) if a.requires_grad else None
            gb = a2.T @ g2 if b.requires_grad else None
            return ga, gb

        return _make(out, (a, b), backward)

    a2 = a.data[None, :] if a.ndim == 1 else a.data     # (k,) -> (1, k)
    b2 = b.data[:, None] if b.ndim == 1 else b.data     # (k,) -> (k, 1)
    out = a2 @ b2
    if a.ndim == 1:
        out = out[..., 0, :]
    if b.ndim == 1:
        out = out[..., 0]

    def backward(g: Array) -> tuple[Optional[Array], Optional[Array]]:
        if b.ndim == 1:              # undo the squeezes in reverse order
            g = g[..., None]
        if a.ndim == 1:
            g = g[..., None, :]
        ga = unbroadcast(g @ b2.swapaxes(-1, -2), a2.shape).reshape(a.shape) if a.requires_grad else None
        gb = unbroadcast(a2.swapaxes(-1, -2) @ g, b2.shape).reshape(b.shape) if b.requires_grad else None
        return ga, gb

    return _make(out, (a, b), backward)


def getitem(a: Tensor, index: Any) -> Tensor:
    """``a[index]`` (slices, integers, integer and boolean arrays).

    Gradient: ``g`` placed back where the elements came from; elements picked
    more than once receive the sum (a scatter-add).
    """
    index = _data(index.data if isinstance(index, Tensor) else index)
    if isinstance(index, tuple):
        index = tuple(_data(i) for i in index)
    try:
        out = a.data[index]
    except IndexError as exc:
        raise IndexError(f"index {index!r} is invalid for {_describe(a)}: {exc}") from None

    shape = a.shape

    def backward(g: Array) -> tuple[Array]:
        xp = backend.array_module(g)
        full = xp.zeros(shape, dtype=g.dtype)
        parts = index if isinstance(index, tuple) else (index,)
        if any(hasattr(p, "shape") or isinstance(p, list) for p in parts):
            backend.scatter_add(full, index, g)   # advanced indexing may repeat positions
        else:
            full[index] = g                        # basic slicing never repeats one
        return (full,)

    return _make(out, (a,), backward)


def _normalize_axes(axis: Axes, ndim: int) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(ndim))
    axes = axis if isinstance(axis, tuple) else (axis,)
    for ax in axes:
        if not -ndim <= ax < max(ndim, 1):
            raise ValueError(f"axis {ax} is out of range for a tensor with {ndim} axes")
    return tuple(ax % max(ndim, 1) for ax in axes)


def _expand_like(g: Array, shape: tuple[int, ...], axes: tuple[int, ...], keepdims: bool) -> Array:
    """Re-insert reduced axes so ``g`` broadcasts against the input shape."""
    if not keepdims:
        for ax in sorted(axes):
            g = g.reshape(g.shape[:ax] + (1,) + g.shape[ax:])
    return g


def sum_(a: Tensor, axis: Axes = None, keepdims: bool = False) -> Tensor:
    """``sum(a, axis)``; gradient ``g`` broadcast back over the summed axes."""
    axes = _normalize_axes(axis, a.ndim)
    out = a.data.sum(axis=axes, keepdims=keepdims)
    xp = backend.array_module(a.data)
    shape = a.shape
    return _make(out, (a,), lambda g: (xp.broadcast_to(_expand_like(g, shape, axes, keepdims), shape).copy(),))


def mean(a: Tensor, axis: Axes = None, keepdims: bool = False) -> Tensor:
    """``mean(a, axis)``; gradient ``g / n`` with ``n`` the number of averaged elements."""
    axes = _normalize_axes(axis, a.ndim)
    count = 1
    for ax in axes:
        count *= a.shape[ax]
    return sum_(a, axis, keepdims) * (1.0 / max(count, 1))


def max_(a: Tensor, axis: Axes = None, keepdims: bool = False) -> Tensor:
    """``max(a, axis)``; the gradient goes to the maximal elements, split evenly between ties."""
    axes = _normalize_axes(axis, a.ndim)
    if a.size == 0:
        raise ValueError(f"max() of an empty {_describe(a)}")
    out = a.data.max(axis=axes, keepdims=keepdims)

    def backward(g: Array) -> tuple[Array]:
        kept = _expand_like(out, a.shape, axes, keepdims)
        winners = (a.data == kept).astype(g.dtype)
        winners /= winners.sum(axis=axes, keepdims=True)
        return (winners * _expand_like(g, a.shape, axes, keepdims),)

    return _make(out, (a,), backward)


def reshape(a: Tensor, shape: int | Sequence[int]) -> Tensor:
    """A new view of the same elements; gradient reshaped back."""
    shape = tuple(shape) if not isinstance(shape, int) else (shape,)
    try:
        out = a.data.reshape(shape)
    except ValueError:
        raise ValueError(f"cannot reshape {_describe(a)} ({a.size} elements) into shape {shape}") from None
    source = a.shape
    return _make(out, (a,), lambda g: (g.reshape(source),))


def transpose(a: Tensor, axes: Optional[Sequence[int]] = None) -> Tensor:
    """Permute axes (reverse them by default); gradient permuted back."""
    axes = tuple(range(a.ndim))[::-1] if axes is None else tuple(ax % a.ndim for ax in axes)
    if sorted(axes) != list(range(a.ndim)):
        raise ValueError(f"transpose: {axes} is not a permutation of the axes of {_describe(a)}")
    # The inverse permutation, computed by the backward pass only (no_grad decoding never needs it).
    return _make(a.data.transpose(axes), (a,), lambda g: (g.transpose(tuple(sorted(range(len(axes)), key=axes.__getitem__))),))


def swapaxes(a: Tensor, axis1: int, axis2: int) -> Tensor:
    """Exchange two axes; the gradient exchanges them back."""
    return _make(a.data.swapaxes(axis1, axis2), (a,), lambda g: (g.swapaxes(axis1, axis2),))


def concat(tensors: Iterable[Tensor | Array], axis: int = 0) -> Tensor:
    """Join tensors along an existing axis; the gradient is split back."""
    tensors = [as_tensor(t) for t in tensors]
    if not tensors:
        raise ValueError("concat() needs at least one tensor")
    _check_same_device("concat", *tensors)
    xp = backend.array_module(tensors[0].data)
    try:
        out = xp.concatenate([t.data for t in tensors], axis=axis)
    except ValueError:
        shapes = [tuple(t.shape) for t in tensors]
        raise ValueError(f"concat: shapes {shapes} do not match outside axis {axis}") from None
    bounds = np.cumsum([t.shape[axis] for t in tensors])[:-1].tolist()
    return _make(out, tuple(tensors), lambda g: tuple(xp.split(g, bounds, axis=axis)))


def stack(tensors: Iterable[Tensor | Array], axis: int = 0) -> Tensor:
    """Join equally-shaped tensors along a new axis."""
    tensors = [as_tensor(t) for t in tensors]
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) != 1:
        raise ValueError(f"stack: all tensors need the same shape, got {sorted(shapes)}")
    axis = axis % (tensors[0].ndim + 1)
    return concat([reshape(t, t.shape[:axis] + (1,) + t.shape[axis:]) for t in tensors], axis=axis)


def split(a: Tensor, indices_or_sections: int | Sequence[int], axis: int = 0) -> list[Tensor]:
    """Cut a tensor into pieces along ``axis`` (``numpy.split``'s arguments)."""
    n = a.shape[axis]
    if isinstance(indices_or_sections, int):
        if indices_or_sections <= 0 or n % indices_or_sections:
            raise ValueError(f"split: axis {axis} of length {n} cannot be cut into {indices_or_sections} equal parts")
        step = n // indices_or_sections
        bounds = list(range(step, n, step))
    else:
        bounds = list(indices_or_sections)
    edges = [0] + bounds + [n]
    pieces = []
    for start, stop in zip(edges[:-1], edges[1:]):
        index = [slice(None)] * a.ndim
        index[axis] = slice(start, stop)
        pieces.append(getitem(a, tuple(index)))
    return pieces


def exp(a: Tensor) -> Tensor:
    """``e^a``; gradient ``g e^a`` (reuses the output)."""
    xp = backend.array_module(a.data)
    out = xp.exp(a.data)
    return _make(out, (a,), lambda g: (g * out,))


def log(a: Tensor) -> Tensor:
    """``ln a``; gradient ``g / a``."""
    xp = backend.array_module(a.data)
    return _make(xp.log(a.data), (a,), lambda g: (g / a.data,))


def tanh(a: Tensor) -> Tensor:
    """``tanh a``; gradient ``g (1 - tanh^2 a)``."""
    xp = backend.array_module(a.data)
    out = xp.tanh(a.data)
    return _make(out, (a,), lambda g: (g * (1 - out * out),))


def sqrt(a: Tensor) -> Tensor:
    """``sqrt a``; gradient ``g / (2 sqrt a)``."""
    xp = backend.array_module(a.data)
    out = xp.sqrt(a.data)
    return _make(out, (a,), lambda g: (g / (2 * out),))


def where(condition: Tensor | Array, a: Operand, b: Operand) -> Tensor:
    """Pick ``a`` where ``condition`` is true, else ``b``; gradients masked accordingly."""
    condition = _data(condition)
    a = as_tensor(a, like=b if isinstance(b, Tensor) else None)
    b = as_tensor(b, like=a)
    _check_same_device("where", a, b)
    xp = backend.array_module(a.data, b.data)
    condition = xp.asarray(condition)
    if condition.dtype != bool:
        raise TypeError(f"where: condition must be boolean, got dtype {condition.dtype}")
    out = xp.where(condition, a.data, b.data)
    zero = xp.zeros((), dtype=out.dtype)
    return _make(out, (a, b),
                 lambda g: (unbroadcast(xp.where(condition, g, zero), a.shape) if a.requires_grad else None,
                            unbroadcast(xp.where(condition, zero, g), b.shape) if b.requires_grad else None))


def masked_fill(a: Tensor, mask: Tensor | Array, value: float | Array) -> Tensor:
    """``a`` with ``value`` written where ``mask`` is true (no gradient flows there)."""
    return where(mask, as_tensor(value, like=a), a)
