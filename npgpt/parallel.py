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

where shard ``k`` holds ``n_k`` of the ``N`` sequences. Each thread collects
its leaf gradients privately (``backward(grad_sink=...)``); they are summed in
shard order afterwards, so the result does not depend on thread timing and
training stays bit-for-bit reproducible.
"""

import os
from concurrent.futures import ThreadPoolExecutor

from npgpt import backend
from npgpt.autograd import accumulate_grad

_pools = {}


def default_workers():
    """One worker per available CPU core."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _pool(workers):
    if workers not in _pools:
        _pools[workers] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="npgpt-shard")
    return _pools[workers]


def forward_backward(loss_fn, inputs, targets, workers=None):
    """Compute ``loss_fn(inputs, targets)`` and its gradients, sharded over threads.

    ``loss_fn(x, y)`` must return a scalar Tensor that is a **mean** over the
    sequences of ``x`` (as ``F.cross_entropy`` is when every target counts).
    ``inputs`` and ``targets`` are arrays whose first axis is the batch. The
    gradients are *added* to the parameters' ``.grad``, like ``backward()``.
    Returns the full-batch loss as a float.

    With ``workers=1``, or a batch of one sequence, or on a GPU (where one
    stream already keeps the device busy), this is simply
    ``loss_fn(inputs, targets).backward()``.
    """
    workers = default_workers() if workers is None else int(workers)
    batch = inputs.shape[0]
    workers = min(workers, batch)
    if workers <= 1 or backend.device_of(inputs) != "cpu":
        loss = loss_fn(inputs, targets)
        loss.backward()
        return loss.item()

    bounds = [batch * k // workers for k in range(workers + 1)]
    shards = [(bounds[k], bounds[k + 1]) for k in range(workers)]

    def run_shard(start, stop):
        loss = loss_fn(inputs[start:stop], targets[start:stop]) * ((stop - start) / batch)
        sink = {}
        loss.backward(grad_sink=sink)
        return loss.item(), sink

    with backend.blas_threads(1):
        results = [f.result() for f in [_pool(workers).submit(run_shard, a, b) for a, b in shards]]

    # Sum in shard order (not completion order): bit-reproducible gradients.
    total = 0.0
    for loss, sink in results:
        total += loss
        for leaf, grad in sink.values():
            accumulate_grad(leaf, grad)
    return total
