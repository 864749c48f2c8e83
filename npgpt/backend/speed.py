"""The CPU speed policy: every trick that makes the CPU path fast, each with what it buys.

Companion of ``docs/performance.md``. The rest of npgpt computes the same numbers with or
without these switches; what changes is how long it takes. So they live here, in one place an
engineer can read without the book, and the teaching path (``functional``, ``model``,
``generation``) only asks this module what to do. Device questions ("is this a GPU?") are
answered here and in ``npgpt.backend``, nowhere else.

Each knob, where it acts, and what it buys (measured on the project's 2-core machine,
docs/performance.md):

* ``retain_freed_memory``, the C allocator: ~9,000 -> ~3,500 page faults and 30-50 -> ~13 ms of
  kernel time per train-small step;
* ``blas_threads(1)`` inside each thread-shard: the shards' BLAS threads no longer fight over
  the same two cores;
* ``default_workers`` and ``thread_pool``: one shard per core, threads made once (slow to start);
* ``threads_pay``: threads on the CPU only, where a GPU stream already keeps the device busy;
* ``reading_is_free``: shortcuts that need a value in Python (skip a product by a loss scale of 1)
  on the host only; on a GPU the read itself would wait for the device;
* ``ADAMW_BLOCK``: the CPU AdamW update in 1 MB slices that stay in the L3 cache;
* ``FLAT_OPTIMIZER_MAX_MEAN_ELEMENTS`` and ``flat_optimizer``: small parameters updated through one
  flat buffer per group (nanoGPT's CPU recipe: the AdamW step ~2.2 -> ~1.7 ms);
* ``HEAD_BLOCK_BYTES``: the fused head and loss ~66 MB of logits at a time for GPT-2, not
  (B*T, 50,257) at once;
* ``HEAD_COPY_MIN_ROW_STEPS`` and ``copy_decoding_head``: GPT-2's decoding head 5.9 -> 4.4 ms per
  step at batch 1, 17.3 -> 11.5 ms at batch 8, from a contiguous copy that costs ~65 ms;
* ``HEAD_WEIGHT_FIRST_ROWS`` and ``head_weight_first``: 2-16 rows without that copy through the
  table as the left operand: npgpt-small's verifying passes 1.64 -> 1.01 ms each;
* ``PANEL_BYTES``, ``PANEL_ROWS``, ``PANEL_MIN_MODEL_BYTES`` and ``panel_weights``: prompt lookup's
  verifying pass over 2-16 rows through weights copied into cache-sized panels
  (``npgpt.generation.panels``): GPT-2's 48 trunk products 41-63 -> 15-35 ms on one core, where one
  row costs 17 ms; not for a model whose weights fit the cache (npgpt-small: slower at every width);
* ``share_work``, ``PANEL_CLAIM_BYTES``, ``PANEL_SHARE_MIN_FLOPS`` and ``panel_workers``: the
  verifying pass's larger products shared between both cores, one-threaded BLAS each: GPT-2's head
  over 16 rows 28.6 -> 15.1 ms, over 8 rows 16.9 -> 8.1 ms.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from npgpt.backend.fuse import fuse

# Elements of a parameter updated at a time on the CPU: 1 MB per float32 array, so a block's weight,
# gradient, moments and scratch (5 MB) stay in the level-3 cache through every pass of an update.
ADAMW_BLOCK = 2**18
# The optimizer's update over one flat buffer per parameter group (``npgpt.training.optim.FlatGroup``)
# instead of parameter by parameter: on a GPU always (one launch per pass); on the CPU where the
# parameters are small on average, so that the ~13 calls per parameter cost more than copying the
# gradients into the flat buffer once a step. Measured, the AdamW step: nanoGPT's recipe (52 arrays,
# a mean of 16 K numbers) 2.2-3.0 -> 1.7-1.8 ms in its training loop. Alone, with fresh gradients and
# the clipping norm per parameter, train-small (a mean of 102 K) read 9.5-13.1 ms apart and 9.7-10.5
# flat in three runs (no clear gain), GPT-2 (841 K) 202 apart and 234 flat: they stay per parameter.
FLAT_OPTIMIZER_MAX_MEAN_ELEMENTS = 2**16

# Rows of logits a fused head computes at a time: one (rows, V) float32 block of about this size.
# For GPT-2's vocabulary that is ~330 rows (66 MB); BLAS itself splits the inner dimension into
# blocks of a few hundred, so accumulating dW block by block costs it little.
HEAD_BLOCK_BYTES = 64 * 2**20

# On a GPU the block is as large as this: each block is some twenty kernel launches (the logits'
# product, max, exp, sums, the gradient's two products), and memory is not short there. GPT-2 at
# 8,192 tokens (1.6 GB of logits) goes through in one block instead of 25; PyTorch eager holds
# three (N, V) arrays for the same step.
GPU_HEAD_BLOCK_BYTES = 2 * 2**30

# A decoding step multiplies each sequence's last hidden row by the tied table, z = h wte^T. Read
# through the transpose, wte (V, C) streams slower than a contiguous (C, V) matrix, and for a few
# rows OpenBLAS repacks it at every step: GPT-2's head costs 5.9 ms per step at batch 1 and 17.3 ms
# at batch 8 through the transpose, 4.4 and 11.5 ms from a copy. The copy (154 MB for GPT-2)
# takes ~65 ms to make, so a generation makes one when it has at least this many rows x steps.
HEAD_COPY_MIN_ROW_STEPS = 64
# Without that copy, a few rows at a time (prompt lookup's verifying pass of 2-16 tokens) are faster
# through the table as the product's left operand, (wte h^T)^T, which OpenBLAS streams once, than
# through h wte^T, which it repacks: npgpt-small's (8,192 x 256) head in its 32-token open-ended
# prompt-lookup generation, 7 passes of 4 rows on average, 1.64 -> 1.01 ms a pass (11.9 -> 7.9 ms).
# Measured in decoding on that table only (alone, GPT-2's 154 MB table was within ~15% either way:
# 2 rows 16.2 -> 14.0 ms, 8 rows 17.4 -> 17.6 on two threads), so tables larger than
# HEAD_WEIGHT_FIRST_MAX_BYTES keep the plain product.
HEAD_WEIGHT_FIRST_ROWS = range(2, 17)
HEAD_WEIGHT_FIRST_MAX_BYTES = 32 * 2**20


def _on_gpu(array: Any) -> bool:
    if type(array) is np.ndarray:   # the common case, answered without the import below (~1 us a call)
        return False
    from npgpt import backend  # here: npgpt.backend imports this module

    return backend.is_cupy_array(array)


def threads_pay(*arrays: Any) -> bool:
    """Do Python threads speed up work on these arrays? On the CPU, yes (two cores, two shards);
    on a GPU, no: one stream already keeps the device busy, and threads would only queue."""
    return not any(_on_gpu(a) for a in arrays)


def reading_is_free(array: Any) -> bool:
    """Can a value be read into Python without waiting? On the host, yes; from a GPU every read is
    a copy that waits for the device's queue (docs/gpu.md), so a shortcut that needs the value is
    taken on the CPU only."""
    return not _on_gpu(array)


def head_block_bytes(weight: Any) -> int:
    """How many bytes of logits the fused head makes at a time: ``HEAD_BLOCK_BYTES`` on the CPU (the
    cache), ``GPU_HEAD_BLOCK_BYTES`` on a GPU (fewer launches)."""
    return GPU_HEAD_BLOCK_BYTES if _on_gpu(weight) else HEAD_BLOCK_BYTES


def one_kernel_mean(array: Any) -> bool:
    """Take a mean with ``mean`` (one reduction kernel on a GPU, where each launch costs ~5 us), not as a
    sum and a division (the CPU's way: ``mean``'s Python wrapper costs ~10 us, the same numbers)?"""
    return _on_gpu(array)


# Prompt lookup's verifying pass multiplies 2 to 16 rows by each weight. OpenBLAS packs the whole
# weight at every such call, through a strided copy slower than the memory: GPT-2's 48 trunk
# products cost 17 ms for one row (a gemv) but 41/43/49/63 ms for 2/4/8/16 rows (one core, 2/3 of
# it packing). From a copy in contiguous column panels of PANEL_BYTES each (fits the level-2
# cache with BLAS's packed copy of it), 15/17/22/35 ms; panels of 128 KB or 512 KB measured slower.
# The copy costs ~100 ms for GPT-2's trunk (340 MB), a handful of one-token steps, so a generation
# makes it only when it has at least PANEL_MIN_STEPS tokens to produce. And only for a model of at
# least PANEL_MIN_MODEL_BYTES of weights: a small model's weights sit in the cache, packing them is
# cheap, and the panels only cost. npgpt-small (21 MB) measured slower through panels at every width
# but 2 rows in one of two runs (16 rows: 7.3 against 4.8 ms a pass) besides a 7-15 ms copy; a 27 MiB
# trunk gained under 1 ms a pass at 2-4 rows against a 36 ms copy; a 72 MiB trunk 2-3 ms a pass at
# 2-8 rows against a ~140 ms copy (~50 passes to repay it); GPT-2's 340 MB trunk ~18-39 ms a pass at
# 2 rows and 4-26 ms at 16 (eight runs in one morning, two versions), against a ~90-190 ms copy.
PANEL_BYTES = 256 * 2**10
PANEL_ROWS = range(2, 17)
PANEL_MIN_STEPS = 16
PANEL_MIN_MODEL_BYTES = 128 * 2**20
# The panels' products are small (GPT-2: 1,512 a pass through the trunk's panels and 629 through the
# head's). OpenBLAS runs those of 8 or more rows, and a row's products with the head's panels, on
# both threads, which meet at the end of each: on a busy machine (load 7 on 2 cores) a thread
# waits for its descheduled partner at every one, and a 16-token pass took 231 ms with 2 threads
# against 116 ms with 1 (the plain one-token step: 568 against 61 ms). The verifying pass runs its
# BLAS on this many threads.
PANEL_BLAS_THREADS = 1
# ... and shares them out instead: every product of a verifying pass (and the panels' copy) is cut
# into claims of about PANEL_CLAIM_BYTES of weights, which the calling thread and the pool's helpers
# take one at a time (``share_work``), each with BLAS on one thread. Both cores then work on the
# pass (docs/performance.md, "The verifying pass on both cores"). Products below
# PANEL_SHARE_MIN_FLOPS stay on the calling thread: shared, GPT-2's trunk products measured no
# faster for 2-4 rows and at most ~1.15x for 8-16 (a pass meets its helper 48 times), so only its
# MLP products are shared, from ~14 rows; its head, 77M FLOP a row, halves from 8 rows on; and a
# small model's products are cheaper than a meeting.
PANEL_CLAIM_BYTES = 2**20
PANEL_SHARE_MIN_FLOPS = 64 * 10**6


def flat_optimizer(array: Any, elements: int, parameters: int) -> bool:
    """Should an optimizer step over ``parameters`` arrays of ``elements`` numbers in all go through flat
    buffers? On a GPU, yes; on the CPU when the mean array holds at most ``FLAT_OPTIMIZER_MAX_MEAN_ELEMENTS``."""
    return _on_gpu(array) or elements <= FLAT_OPTIMIZER_MAX_MEAN_ELEMENTS * parameters


def panel_weights(weight: Any, steps: int, model_bytes: int) -> bool:
    """Should a prompt-lookup generation of ``steps`` tokens copy the weights (``model_bytes`` in all)
    into panels (``npgpt.generation.panels``)? On the CPU, for at least ``PANEL_MIN_STEPS`` tokens of
    a model of at least ``PANEL_MIN_MODEL_BYTES``; on a GPU a few-row product is one kernel that
    reads the weight once already."""
    return not _on_gpu(weight) and steps >= PANEL_MIN_STEPS and model_bytes >= PANEL_MIN_MODEL_BYTES


def head_weight_first(weight: Any, rows: int) -> bool:
    """Should ``rows`` hidden states go through the tied head ``weight`` as ``(weight h^T)^T``? On the
    CPU for ``HEAD_WEIGHT_FIRST_ROWS`` and a table of at most ``HEAD_WEIGHT_FIRST_MAX_BYTES``; a GPU's
    product reads the table once either way."""
    return (not _on_gpu(weight) and rows in HEAD_WEIGHT_FIRST_ROWS
            and weight.nbytes <= HEAD_WEIGHT_FIRST_MAX_BYTES)


def copy_decoding_head(weight: Any, rows: int, steps: int) -> bool:
    """Should a generation of ``rows`` x ``steps`` make a contiguous copy of the tied head ``weight``?
    On the CPU when the work is large enough to repay the copy (``HEAD_COPY_MIN_ROW_STEPS``)."""
    return not _on_gpu(weight) and rows * steps >= HEAD_COPY_MIN_ROW_STEPS


def panel_workers(weight: Any, work: float) -> int:
    """How many threads (the caller included) share a panelled product of ``work`` floating-point
    operations, or the copy of a weight of ``work`` bytes into panels: one on a GPU or below
    ``PANEL_SHARE_MIN_FLOPS``, else the cores this process may use."""
    if _on_gpu(weight) or work < PANEL_SHARE_MIN_FLOPS:
        return 1
    return default_workers()


_pools: dict[int, ThreadPoolExecutor] = {}


def thread_pool(workers: int) -> ThreadPoolExecutor:
    """The process's pool of ``workers`` threads (made once, kept: threads are slow to start)."""
    if workers not in _pools:
        _pools[workers] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="npgpt-shard")
    return _pools[workers]


class _Claims:
    """Work items ``0 .. count - 1`` claimed one at a time by whichever thread asks first (``share_work``)."""

    def __init__(self, work: Callable[[int], None], count: int):
        self.work, self.count = work, count
        self.claimed = self.done = 0
        self.lock = threading.Lock()
        self.finished = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        """Claim and do items until none is left; the thread that finishes the last one says so."""
        while True:
            with self.lock:
                i = self.claimed
                self.claimed += 1
            if i >= self.count:
                return
            try:
                self.work(i)
            except BaseException as exc:        # noqa: BLE001 -- handed to the caller by ``share_work``
                self.error = exc
            with self.lock:
                self.done += 1
                if self.done == self.count:
                    self.finished.set()


def share_work(work: Callable[[int], None], count: int, workers: int) -> None:
    """``work(i)`` for every ``i`` in ``range(count)``, on the calling thread and ``workers - 1`` of the pool's.

    Each thread claims the next item when it is free, so the items need not cost the same, and a
    helper that starts late (or is descheduled) only does fewer of them: the caller waits at the end
    for the items already claimed, never for a helper to start. An exception in any item is raised
    here once every claimed item is done. The items must write to separate memory.
    """
    if workers <= 1 or count <= 1:
        for i in range(count):
            work(i)
        return
    claims = _Claims(work, count)
    pool = thread_pool(workers)
    for _ in range(workers - 1):
        pool.submit(claims.run)
    claims.run()
    claims.finished.wait()
    if claims.error is not None:
        raise claims.error


@functools.cache
def _threadpool_controller() -> Any:
    """threadpoolctl's view of the BLAS/OpenMP libraries loaded in this process (found once)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def default_workers() -> int:
    """The CPU cores this process may run on (its affinity on Linux, else the machine's count).

    The one default for how many threads share a batch (``npgpt.training.parallel``) and how
    many processes encode a corpus (``npgpt.training.data``).
    """
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def blas_threads(n: int) -> Iterator[None]:
    """Run the block with NumPy's BLAS limited to ``n`` threads; the previous limit comes back after.

    ``npgpt.training.parallel`` runs shards of a batch in Python threads; each GEMM
    must then use one core, or the BLAS threads of two shards fight over the
    same two cores (and OpenBLAS workers spin after each call). NumPy has no
    API for its BLAS's thread count; ``threadpoolctl`` finds the loaded
    library (OpenBLAS, MKL, BLIS) and calls its own setter, and restores what
    was set before, including a user's ``OPENBLAS_NUM_THREADS``.
    """
    with _threadpool_controller().limit(limits=int(n), user_api="blas"):
        yield


def blas_thread_count() -> int:
    """The thread count of NumPy's BLAS now (the largest, if several BLAS libraries are loaded); 0 if none."""
    counts = [info["num_threads"] for info in _threadpool_controller().info() if info["user_api"] == "blas"]
    return max(counts, default=0)


# glibc's mallopt parameters (malloc.h); other C libraries have no such call.
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


@functools.cache
def retain_freed_memory() -> bool:
    """Ask the C allocator to keep freed memory for reuse instead of handing it back to the kernel.

    Why: a training step allocates and frees the same large arrays every
    step. glibc serves a large request (above 128 KB to 32 MB, adaptively)
    with a fresh ``mmap`` and unmaps it on ``free``, and worker threads get
    heaps of their own that it trims; each new page then costs a page fault
    in which the kernel zeroes it. Measured on train-small: ~9,000 faults
    and 30-50 ms of kernel time per step, one tenth of the step's CPU time
    (docs/performance.md, "Memory the kernel zeroes"). With ``mmap``
    disabled, trimming off and one arena, freed blocks are reused and a
    step costs ~3,500 faults and ~13 ms. The peak is unchanged: memory
    freed after the peak simply stays mapped, as a caching allocator keeps it.

    Process-wide and once; ``npgpt train``, ``npgpt finetune`` and the
    benchmarks call it. Returns whether it took effect (False where the C
    library is not glibc, e.g. macOS or musl).
    """
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0) and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) and mallopt(_M_ARENA_MAX, 1))


# GELU's gate s = sigmoid(2u) is kept for the backward pass when it is at most this large: the
# backward pass then makes 9 passes over the activation instead of 16 (recomputing s costs an exp
# and six more). Measured on nanoGPT's CPU recipe (docs/performance.md). Above it (train-124m,
# 4 x 256 tokens: 12.6 MB a layer, 151 MB in all) the memory is worth more than the ~1% of a step.
GELU_KEEP_GATE_BYTES = 8 * 2**20


def keep_gelu_gate(gate: Any) -> bool:
    """Should ``F.gelu`` keep its gate ``s`` for the backward pass (``GELU_KEEP_GATE_BYTES``)?

    Always on a GPU: recomputing ``s`` there is seven more kernel launches per layer and seven
    passes over the activation, and a GPU's memory holds the gates (GPT-2 at 8 x 1,024 tokens:
    1.2 GB in all, of 80 GB); it also keeps the launch count independent of the widths
    (docs/gpu.md, "The launch and traffic budget")."""
    return _on_gpu(gate) or int(gate.nbytes) <= GELU_KEEP_GATE_BYTES


# ------------------------------------------------------------------ sums as products with ones
# NumPy reduces along a short last axis one row at a time: summing the rows of a (3072, 64) float32
# array (attention's probabilities, nanoGPT's recipe) takes 84 us, the product with a vector of ones
# (one BLAS gemv) 12 us; the rows of (768, 128) (a layer norm) 29 -> 7 us; the columns 19 -> 6 us.
# The sums are the same up to float32 rounding (BLAS adds in a different order). Other dtypes
# (float16, bfloat16, integers) keep NumPy's reduction: BLAS has no kernel for them.
_BLAS_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


@functools.lru_cache(maxsize=64)
def _ones(n: int, dtype: np.dtype) -> np.ndarray:
    """A read-only host vector of ``n`` ones: made once per length, as the sums below need it at every call."""
    ones = np.ones(n, dtype=dtype)
    ones.flags.writeable = False
    return ones


def row_sums(a: Any) -> Any:
    """``a.sum(axis=-1, keepdims=True)``, computed as ``a @ ones`` where BLAS can."""
    if a.dtype not in _BLAS_DTYPES or _on_gpu(a):     # a GPU: one reduction kernel, not ones + a GEMM
        return a.sum(axis=-1, keepdims=True)
    return (a @ _ones(a.shape[-1], a.dtype))[..., None]


def row_dots(a: Any, b: Any) -> Any:
    """``(a * b).sum(axis=-1, keepdims=True)`` for arrays of one shape: the dot product of each pair of rows."""
    if _on_gpu(a):              # a GPU: one reduction kernel whose pre-map is the product (npgpt.backend.fuse)
        return _row_sums_of_product(a, b)[..., None]
    if a.dtype not in _BLAS_DTYPES:
        return (a * b).sum(axis=-1, keepdims=True)
    return np.einsum("...i,...i->...", a, b)[..., None]


def column_sums(a: Any) -> Any:
    """``a.sum`` over every axis but the last (a bias's or a gain's gradient), as ``ones @ a``."""
    a2 = a.reshape(-1, a.shape[-1])
    if a.dtype not in _BLAS_DTYPES or _on_gpu(a):     # a GPU: one reduction kernel, not ones + a GEMM
        return a2.sum(axis=0)
    return _ones(a2.shape[0], a.dtype) @ a2


def column_dots(a: Any, b: Any) -> Any:
    """``column_sums(a * b)`` for arrays of one shape (a gain's gradient ``sum g xhat``); one fused
    reduction kernel on a GPU instead of a product and a sum."""
    if _on_gpu(a):
        return _column_sums_of_product(a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1]))
    return column_sums(a * b)


@fuse
def _row_sums_of_product(xp: Any, a: Any, b: Any) -> Any:
    """``sum(a b)`` along the last axis: the product is the reduction's pre-map, one kernel under ``cupy.fuse``."""
    return xp.sum(a * b, axis=-1)


@fuse
def _column_sums_of_product(xp: Any, a: Any, b: Any) -> Any:
    """``sum(a b)`` along the first axis of 2-D arrays, one kernel under ``cupy.fuse``."""
    return xp.sum(a * b, axis=0)


# An embedding's gradient adds one row per token into its table. np.add.at costs ~10 ns a number
# whatever the table; the one-hot product (npgpt.backend.add_rows) 2 V N C FLOPs, so it wins for small
# tables: 768 rows into a (65, 128) table (nanoGPT's characters) 984 -> 219 us, into (64, 128)
# positions 1,010 -> 183 us; into train-small's (8192, 256) it would lose, 2.5 ms against 60.
ONE_HOT_MAX_ROWS = 256


def rows_by_product(target: Any, indices: Any) -> bool:
    """Should ``backend.scatter_add`` add rows into the host table ``target`` by a one-hot product?"""
    import numpy as np

    if isinstance(indices, tuple) or target.ndim != 2 or target.dtype.kind != "f":
        return False
    return target.shape[0] <= ONE_HOT_MAX_ROWS and np.asarray(indices).dtype.kind in "iu"
