"""Data parallelism over CPU threads: shards of one batch, computed at the same time.

Companion of ``docs/performance.md`` (section "Two cores, two shards").

NumPy runs elementwise work (GELU, layer norm, softmax, the optimizer) on a
single core, and a large share of a small GPT's step is such work. Splitting
the batch into ``workers`` shards and running each shard's forward and
backward pass in its own Python thread keeps every core busy: NumPy releases
the GIL inside ufuncs and BLAS calls, so the threads really run in parallel.
Each thread uses single-threaded BLAS (two threads of two-threaded BLAS on
two cores would only fight).

The gradient of the full-batch mean loss is the weighted sum of the shards'
gradients (docs/performance.md eq:shard-gradients):

    dL/dθ = Σ_k (n_k / N) dL_k/dθ,

where shard ``k`` holds ``n_k`` of the ``N`` sequences. Each thread walks
its own graph back (``npgpt.autograd.backward``) and hands over each
parameter's gradient the moment it is complete; it is added into ``.grad``
in shard order -- shard 0's first, then shard 1's, whichever thread finished
first -- so the result does not depend on thread timing and training stays
bit-for-bit reproducible. A shard's gradient is freed once it is added:
the threads never hold a second full set of gradients (for GPT-2 small,
500 MB each).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Optional

import numpy as np

from npgpt import backend
from npgpt.autograd import Tensor, accumulate_grad, backward, no_grad
from npgpt.backend import Array, default_workers, speed  # default_workers: read here by engine and optim too


def forward_backward(loss_fn: Callable[..., Tensor], batch: Sequence[Array], params: Iterable[Tensor],
                     workers: Optional[int] = None, as_array: bool = False) -> float | Array:
    """Compute ``loss_fn(*batch)`` and add its gradients into ``p.grad`` of ``params``, sharded over threads.

    ``batch`` is a tuple of arrays whose first axis is the batch (token ids
    and targets; or ids, attention mask and labels). ``loss_fn`` must return
    a scalar Tensor that is a **mean** over the sequences it is given (as
    ``F.cross_entropy`` is when every target counts). Each thread runs the
    backward walk of its shard's loss, weighted by the shard's share of the
    batch (eq:shard-gradients), and hands every leaf gradient to an in-order adder
    (``_OrderedSum``) instead of writing ``.grad`` itself, so the sums are
    added into ``.grad`` in shard order whatever order the threads finish in.
    Returns the full-batch loss as a float; with ``as_array=True``
    as a 0-d float64 array on the parameters' device instead, so that a
    caller who sums the losses of several batches reads them from a GPU
    with one copy, not one per batch.

    With ``workers=1``, or a batch of one sequence, or on a GPU (where one
    stream already keeps the device busy), this is simply
    ``loss_fn(*batch).backward()``. The batch may then be on the host: the
    model checks it there and copies it to its device.
    """
    batch = tuple(batch)
    params = [p for p in params if p.requires_grad]
    shards = _shards("forward_backward", batch, workers, params)
    if shards is None:
        loss = loss_fn(*batch)
        loss.backward()
        return loss.data.astype(backend.array_module(loss.data).float64) if as_array else loss.item()

    size = batch[0].shape[0]
    sums = _OrderedSum(params, len(shards))

    def run_shard(k: int) -> float:
        rows = shards[k]
        loss = loss_fn(*(a[rows] for a in batch)) * ((rows.stop - rows.start) / size)
        backward(loss, on_leaf=lambda leaf, g, owned: sums.add(k, leaf, g, owned))
        return loss.item()

    total = _sum_over_shards(run_shard, len(shards))
    sums.finish()
    return np.asarray(total, dtype=np.float64) if as_array else total


def mean_loss(loss_fn: Callable[..., Tensor], batch: Sequence[Array], workers: Optional[int] = None,
              params: Iterable[Tensor] = ()) -> float:
    """``loss_fn(*batch)`` as a float, without a graph, its shards computed at the same time (evaluation).

    The same split as :func:`forward_backward` and the same weighting (eq:shard-gradients
    for the loss itself: ``L = sum_k (B_k / B) L_k``), under ``no_grad``. As there, ``loss_fn``
    must return a **mean** over the sequences it is given in which every target counts (a masked
    loss is not a mean over rows), and the model must be in eval mode (the threads would share
    dropout's generator). With one worker, a batch of one sequence, or on a GPU (``params``: the
    model's parameters, whose device decides it, as the batch may still be on the host), simply
    ``loss_fn(*batch).item()``. The shards' losses are added in shard order, so the result does
    not depend on which thread finished first.
    """
    batch = tuple(batch)
    shards = _shards("mean_loss", batch, workers, list(params))
    with no_grad():
        if shards is None:
            return loss_fn(*batch).item()
        size = batch[0].shape[0]

        def run_shard(k: int) -> float:
            rows = shards[k]
            return loss_fn(*(a[rows] for a in batch)).item() * ((rows.stop - rows.start) / size)

        return _sum_over_shards(run_shard, len(shards))


def _shards(caller: str, batch: tuple[Array, ...], workers: Optional[int], params: list[Tensor]) -> list[slice] | None:
    """The rows of each of ``workers`` shards of ``batch`` (its arrays checked to share their first
    axis), or None where one pass is right: one worker, one sequence, or a GPU (the device of
    ``params``, or of the batch when there are none)."""
    size = batch[0].shape[0]
    if any(a.shape[0] != size for a in batch):
        raise ValueError(f"{caller}: the arrays of a batch must share their first axis, got "
                         f"{[tuple(a.shape) for a in batch]}")
    workers = min(default_workers() if workers is None else int(workers), size)
    if workers <= 1 or not speed.threads_pay(batch[0], *(p.data for p in params[:1])):
        return None
    return [slice(size * k // workers, size * (k + 1) // workers) for k in range(workers)]


def _sum_over_shards(run_shard: Callable[[int], float], count: int) -> float:
    """``run_shard(k)`` for every shard on the pool's threads, each with one-threaded BLAS (two
    threads of two-threaded BLAS on two cores would only fight); the results added in shard order,
    so the sum does not depend on which thread finished first."""
    with backend.blas_threads(1):
        futures = [speed.thread_pool(count).submit(run_shard, k) for k in range(count)]
        results = [f.result() for f in futures]
    total = 0.0
    for result in results:
        total += result
    return total


class _OrderedSum:
    """Adds the shards' gradients into ``.grad`` in shard order, each as soon as its turn has come.

    Shard ``k``'s gradient of a parameter waits only until shards
    ``0..k-1`` have delivered theirs; then it is added (``.grad`` is
    created from shard 0's, or from the first one to arrive in order) and
    dropped. One lock per parameter keeps the additions of one parameter
    in order while different parameters are added at the same time.
    """

    def __init__(self, params: list[Tensor], shards: int) -> None:
        self.shards = shards
        self.params = {id(p): p for p in params}
        self.waiting = {id(p): [None] * shards for p in params}   # delivered, not yet added
        self.added = {id(p): 0 for p in params}                    # shards 0..added-1 are in .grad
        self.locks = {id(p): threading.Lock() for p in params}

    def add(self, shard: int, leaf: Tensor, g: Array, owned: bool = False) -> None:
        key = id(leaf)
        if key not in self.params:      # a leaf that is not being trained (requires_grad input data)
            return
        with self.locks[key]:
            self.waiting[key][shard] = (g, owned)
            self._add_waiting(key)

    def finish(self) -> None:
        """After every shard: add what still waits (a parameter some shard did not reach), in order."""
        for key in self.waiting:
            self._add_waiting(key, past_gaps=True)

    def _add_waiting(self, key: int, past_gaps: bool = False) -> None:
        """Add the waiting gradients of one parameter in shard order, up to the first shard not yet delivered
        (or past such gaps, once every shard is done)."""
        waiting = self.waiting[key]
        for k in range(self.added[key], self.shards):
            if waiting[k] is not None:
                accumulate_grad(self.params[key], *waiting[k])
                waiting[k] = None
            elif not past_gaps:
                self.added[key] = k
                return
        self.added[key] = self.shards
