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
gradients (docs/performance.md eq. 1):

    dL/dθ = Σ_k (n_k / N) dL_k/dθ,

where shard ``k`` holds ``n_k`` of the ``N`` sequences. Each thread takes
its gradients with ``npgpt.grad``, which returns them instead of writing
``.grad``; they are summed in shard order afterwards, so the result does not depend on thread timing and
training stays bit-for-bit reproducible.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import numpy as np

from npgpt import backend
from npgpt.autograd import Tensor, accumulate_grad, grad
from npgpt.backend import Array

_pools: dict[int, ThreadPoolExecutor] = {}


def default_workers() -> int:
    """One worker per available CPU core."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _pool(workers: int) -> ThreadPoolExecutor:
    if workers not in _pools:
        _pools[workers] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="npgpt-shard")
    return _pools[workers]


def forward_backward(loss_fn: Callable[..., Tensor], batch: Sequence[Array], params: Iterable[Tensor],
                     workers: Optional[int] = None, as_array: bool = False) -> float | Array:
    """Compute ``loss_fn(*batch)`` and add its gradients into ``p.grad`` of ``params``, sharded over threads.

    ``batch`` is a tuple of arrays whose first axis is the batch (token ids
    and targets; or ids, attention mask and labels). ``loss_fn`` must return
    a scalar Tensor that is a **mean** over the sequences it is given (as
    ``F.cross_entropy`` is when every target counts). Each thread takes its
    shard's gradients with ``npgpt.grad`` (nothing shared is written while
    the threads run); they are weighted (eq. 1) and added into ``.grad`` in
    shard order. Returns the full-batch loss as a float; with ``as_array=True``
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
    workers = default_workers() if workers is None else int(workers)
    size = batch[0].shape[0]
    if any(a.shape[0] != size for a in batch):
        raise ValueError(f"forward_backward: the arrays of a batch must share their first axis, got "
                         f"{[tuple(a.shape) for a in batch]}")
    workers = min(workers, size)
    on_cpu = all(p.device == "cpu" for p in params[:1]) and backend.device_of(batch[0]) == "cpu"
    if workers <= 1 or not on_cpu:
        loss = loss_fn(*batch)
        loss.backward()
        return loss.data.astype(backend.array_module(loss.data).float64) if as_array else loss.item()

    bounds = [size * k // workers for k in range(workers + 1)]

    def run_shard(start: int, stop: int) -> tuple[float, list[Optional[Array]]]:
        loss = loss_fn(*(a[start:stop] for a in batch)) * ((stop - start) / size)
        return loss.item(), grad(loss, params, allow_unused=True)

    with backend.blas_threads(1):
        futures = [_pool(workers).submit(run_shard, bounds[k], bounds[k + 1]) for k in range(workers)]
        results = [f.result() for f in futures]

    # Sum in shard order (not completion order): bit-reproducible gradients.
    total = 0.0
    for loss, grads in results:
        total += loss
        for p, g in zip(params, grads):
            if g is not None:
                accumulate_grad(p, g)
    return np.asarray(total, dtype=np.float64) if as_array else total
