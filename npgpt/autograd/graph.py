"""The graph behind a ``Tensor``: its nodes, and the backward walk over them.

Companion of ``docs/autograd.md`` (section "The chain rule, applied backwards").

Every op on tensors that needs a gradient records a ``Node``: its backward
function and its parents' nodes. A tensor no op computed that needs a
gradient (a parameter) has a ``Leaf``; one that needs none is ``CONSTANT``.
``_backpropagate`` walks the nodes from an output back to the leaves
(docs/autograd.md eq:sum-over-children); the memory policy of the gradients that meet on
the way is ``GradientSum``'s. The ``Tensor`` and the elementary ops live in
``npgpt.autograd.core``; this module needs none of them, only their
``requires_grad`` and ``_node``.
"""

from __future__ import annotations

import threading
import weakref
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Optional, Union

from npgpt import backend
from npgpt.backend import Array

if TYPE_CHECKING:
    from npgpt.autograd.core import Tensor

__all__ = ["Node", "Leaf", "Constant", "CONSTANT", "RowGradient", "GradientSum"]


class Node:
    """What the graph keeps of a tensor an op computed: how to pass its gradient back -- not its data.

    ``backward`` maps ``dL/dy`` to the gradients of the parents (the chain
    rule, eq:chain-rule); ``parents`` are the parents' nodes. PyTorch calls this the
    ``grad_fn``. Because children hold nodes, not tensors, an intermediate
    array lives only as long as the program or a backward closure needs it.
    ``fresh`` is the op's promise that every array ``backward`` returns is
    new and seen nowhere else, so the walk may add other gradients into it
    in place (see ``GradientSum``).
    """

    __slots__ = ("backward", "parents", "fresh", "__weakref__")
    requires_grad = True

    def __init__(self, backward: Callable[[Array], tuple], parents: tuple, fresh: bool = False) -> None:
        self.backward, self.parents, self.fresh = backward, parents, fresh

    def release(self) -> None:
        """Drop the closure and the parents: the arrays the op saved for its backward pass are freed."""
        self.backward, self.parents = _released, ()


class Leaf:
    """The node of a tensor no op computed that needs a gradient (a parameter, an input).

    The walk hands a leaf's gradient to its caller instead of passing it on.
    It keeps its tensor through a weak reference, so a tensor the program
    has dropped is not kept alive by a graph, nor by a reference cycle.
    """

    __slots__ = ("tensor", "__weakref__")
    requires_grad = True
    parents: tuple = ()
    fresh = False

    def __init__(self, tensor: Tensor) -> None:
        self.tensor = weakref.ref(tensor)


class Constant:
    """The node of an input that needs no gradient: the walk never goes there."""

    __slots__ = ()
    requires_grad = False
    parents: tuple = ()


CONSTANT = Constant()
GraphNode = Union[Node, Leaf, Constant]
_new_leaf = threading.Lock()      # two threads must not give one parameter two leaves


def _released(g: Array) -> tuple:
    raise RuntimeError("backward through a graph that was already walked and freed: call backward(retain_graph=True) "
                       "the first time to walk it twice")


def _node_of(t: Tensor) -> GraphNode:
    """The graph's handle on ``t``: the node that computed it, its ``Leaf``, or ``CONSTANT`` without a gradient."""
    if not t.requires_grad:
        return CONSTANT
    if t._node is None:
        with _new_leaf:
            if t._node is None:
                t._node = Leaf(t)
    return t._node


class RowGradient:
    """A gradient that is zero except in some rows: ``dL/dW`` of a lookup ``W[ids]`` (docs/model.md eq:embedding).

    An embedding's backward returns one instead of a dense (V, C) array
    mostly of zeros. The walk adds its rows straight into the other
    gradient of the same weight when there is one -- GPT-2's tied ``wte``
    also gets the LM head's -- and makes it dense only when it is alone:
    for GPT-2 small that saves two 154 MB arrays per backward pass.
    """

    __slots__ = ("ids", "rows", "shape")

    def __init__(self, ids: Array, rows: Array, shape: tuple[int, ...]) -> None:
        self.ids, self.rows, self.shape = ids, rows, tuple(shape)

    @property
    def dtype(self) -> Any:
        return self.rows.dtype

    def add_into(self, dense: Array) -> Array:
        """``dense[ids] += rows`` (repeated ids summed), in place; returns ``dense``."""
        return backend.scatter_add(dense, self.ids, self.rows)

    def dense(self) -> Array:
        """The full gradient: zeros with the rows added."""
        return self.add_into(backend.array_module(self.rows).zeros(self.shape, dtype=self.rows.dtype))


class GradientSum:
    """The gradients of the nodes the walk has not reached yet, each the sum of the shares that arrived.

    This is where the walk's memory policy lives, so the walk itself is the
    chain rule and nothing else:

    * a share is summed into an array nothing else can see -- one this
      object made, or one an op declared ``fresh`` -- instead of into a
      third array (IEEE addition is commutative: which array receives the
      sum changes no bit). ``in_place=False`` (``retain_graph``) trusts no
      op's promise, since a second walk would see the same arrays again;
    * a ``RowGradient`` is added row by row into the weight's dense
      gradient and made dense only when it arrives alone;
    * ``pop`` says whether the caller may keep the array (``owned``).
    """

    def __init__(self, xp: Any, in_place: bool = True) -> None:
        self.xp, self.in_place = xp, in_place
        self.pending: dict[int, Any] = {}     # id(node) -> the sum so far (an array or a RowGradient)
        self.owned: set[int] = set()          # ids whose sum nothing else refers to: it may be written into

    def add(self, node: GraphNode, share: Any, fresh: bool = False) -> None:
        """Add ``share`` (``None``: nothing) to the gradient of ``node`` (nothing if it needs none)."""
        if share is None or not node.requires_grad:
            return
        if not isinstance(share, RowGradient):
            share = self.xp.asarray(share)      # NumPy turns 0-d results into scalars; keep arrays
        key, fresh = id(node), fresh and self.in_place
        if key not in self.pending:
            self.pending[key] = share
            if fresh:
                self.owned.add(key)
            return
        self.pending[key] = self._sum(self.pending[key], key in self.owned, share, fresh)
        self.owned.add(key)

    def pop(self, node: GraphNode) -> tuple[Optional[Array], bool]:
        """``(dL/dnode, owned)``, forgotten here; ``(None, False)`` if no gradient reached ``node``."""
        key = id(node)
        g, owned = self.pending.pop(key, None), key in self.owned
        self.owned.discard(key)
        if isinstance(g, RowGradient):
            return g.dense(), True
        return g, owned

    @staticmethod
    def _sum(total: Any, total_owned: bool, share: Any, share_fresh: bool) -> Any:
        """``total + share``, written into one of them if nothing else sees it (either may be a RowGradient)."""
        if isinstance(total, RowGradient):
            total, total_owned, share, share_fresh = share, share_fresh, total, True
        if isinstance(share, RowGradient):
            if isinstance(total, RowGradient):
                total, total_owned = total.dense(), True
            return share.add_into(total if total_owned else total.copy())
        if total.shape == share.shape and total.dtype == share.dtype:
            if total_owned:
                total += share                   # into the walk's own array
                return total
            if share_fresh:
                share += total                   # into the op's new array
                return share
        return total + share


def _topological_order(roots: list[GraphNode]) -> list[GraphNode]:
    """Nodes that need a gradient, each after all of its parents (iterative DFS from ``roots``).

    Iterative rather than recursive so that deep graphs (many layers, long
    generation loops) cannot hit Python's recursion limit.
    """
    order, visited = [], set()
    stack = [(root, False) for root in reversed(roots)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        for parent in node.parents:
            if parent.requires_grad and id(parent) not in visited:
                stack.append((parent, False))
    return order


def _backward_order(roots: list[GraphNode]) -> list[GraphNode]:
    """The order of the walk: each node after every node that uses it, a leaf right after the last one.

    The reverse of the topological order, so that a node's gradient is
    complete (every path summed) when it is reached -- except that a leaf (a
    parameter) comes as soon as the last node that uses it is done, not
    where the topological order has it, which for most parameters is the
    very end: otherwise every gradient of the model would wait in the
    ``GradientSum`` until the walk ends (with two threads, two full sets at
    once). A leaf whose tensor the program has dropped is left out: no one
    can read its gradient.
    """
    order = _topological_order(roots)
    uses = Counter(id(p) for node in order for p in node.parents if isinstance(p, Leaf))
    walk = [node for node in order if isinstance(node, Leaf) and not uses[id(node)]]   # roots only
    for node in reversed(order):
        if isinstance(node, Leaf):
            continue
        walk.append(node)
        for parent in node.parents:
            if isinstance(parent, Leaf):
                uses[id(parent)] -= 1
                if uses[id(parent)] == 0:
                    walk.append(parent)
    return [node for node in walk if not isinstance(node, Leaf) or node.tensor() is not None]


def _backpropagate(seeds: list[tuple[Tensor, Array]], retain_graph: bool, on_leaf: Callable[..., None],
                   on_node: Optional[Callable[[GraphNode, Array], None]] = None) -> None:
    """The reverse walk (docs/autograd.md eq:sum-over-children) from ``seeds``, a list of ``(output, dL/doutput)``.

    ``on_leaf(tensor, g, owned)`` receives each leaf's gradient once it is
    complete (``owned``: nothing else refers to ``g``); ``on_node(node,
    g)``, if given, every node's (``grad`` reads intermediate gradients so).
    Unless ``retain_graph``, each node is released once it has passed its
    gradient on, freeing the arrays its op saved.
    """
    roots = [_node_of(output) for output, _ in seeds]
    sums = GradientSum(backend.array_module(seeds[0][1]), in_place=not retain_graph)
    for root, (_, g) in zip(roots, seeds):
        sums.add(root, g)
    for node in _backward_order(roots):
        g, owned = sums.pop(node)                       # complete: every path into it is summed
        if g is None:
            continue
        if on_node is not None:
            on_node(node, g)
        if isinstance(node, Leaf):                      # a parameter: its gradient goes to the caller
            on_leaf(node.tensor(), g, owned)
            continue
        for parent, share in zip(node.parents, node.backward(g)):   # the chain rule: dL/dx_k = g dy/dx_k
            sums.add(parent, share, node.fresh)
        if not retain_graph:
            node.release()
