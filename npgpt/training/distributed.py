"""Data parallelism over processes and machines: MPI (mpi4py), with NCCL for CuPy arrays.

Companion of ``docs/distributed.md``.

``mpiexec -n N npgpt train ...`` starts N copies of the same program, the
*ranks*. Each holds the whole model. Every optimizer step, each rank takes
its slice of the same global batch (every rank draws the global batch with
the same seeded sampler, so no data has to be sent), computes the gradient
of its share of the loss, and one collective operation, the all-reduce,
sums the gradients across ranks. Every rank then holds the gradient of the
global batch and takes the same update, so the weights stay identical
without ever being sent. That is the whole of data parallelism; the
engineering is in doing the all-reduce with few, large messages:

* gradients are flattened into a few large **buckets** (``BUCKET_BYTES``)
  and reduced with one collective per bucket, not one per parameter
  (latency is paid per message);
* on NumPy arrays through MPI (``Allreduce``); on CuPy arrays through NCCL
  (``cupy.cuda.nccl``) when it is there, else through MPI directly from
  device memory when mpi4py reports a CUDA-aware MPI, else staged through
  the host.

``--shard-optimizer`` is ZeRO stage 1 (Rajbhandari et al. 2020): each rank
keeps AdamW's moments only for the parameters it *owns* (about 1/N of them,
:func:`partition`); gradients are reduce-scattered so that each rank
receives the summed gradients of what it owns, it updates those
parameters, and an all-gather sends every rank the updated weights. Two
float32 moments per parameter are most of a trainer's memory after the
activations, so this saves ``2 (N-1)/N`` of them per rank.

Without MPI (no mpi4py, or a plain ``npgpt train``), :func:`world` is a
world of one, and the training step runs on ``SINGLE_PROCESS``, a
:class:`ProcessGroup` whose every method does nothing; under ``mpiexec`` it
runs on a :class:`DataParallel` group over the world.

Depends on ``npgpt.backend``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from npgpt import backend
from npgpt.backend import Array

__all__ = ["World", "world", "local_rank", "use_device", "MPINotInstalled", "ProcessGroup", "SINGLE_PROCESS", "DataParallel",
           "process_group", "BUCKET_BYTES", "partition", "OptimizerShard", "Link", "NVLINK", "INFINIBAND",
           "data_parallel_step"]

BUCKET_BYTES = 32 * 2 ** 20      # a few large messages: 32 MiB of float32 gradients per collective

# Environment variables by which MPI launchers (MPICH/Hydra, Open MPI, PMIx, Slurm's PMI) tell a process it is a rank.
_LAUNCHER_VARIABLES = ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS")
# ... and the ones by which they say which rank a process is *on its own machine* (Open MPI, MPICH/Hydra
# and Intel MPI, PMI/PMIx launchers, Slurm's srun, MVAPICH2), first found wins.
_LOCAL_RANK_VARIABLES = ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "PMI_LOCAL_RANK", "PMIX_LOCAL_RANK",
                         "SLURM_LOCALID", "MV2_COMM_WORLD_LOCAL_RANK", "LOCAL_RANK")


class World:
    """The ranks of this job: ``rank``, ``size``, and the collectives the trainer needs.

    A world of one (``comm`` is ``None``) does nothing in every collective.
    """

    def __init__(self, comm: Any = None) -> None:
        self.comm = comm
        self.rank = comm.Get_rank() if comm is not None else 0
        self.size = comm.Get_size() if comm is not None else 1
        self._nccl: Any = None

    @property
    def is_main(self) -> bool:
        """Rank 0 logs and writes checkpoints."""
        return self.rank == 0

    def __repr__(self) -> str:
        return f"World(rank={self.rank}, size={self.size})"

    # ------------------------------------------------------------- batches
    def rows(self, batch_size: int) -> slice:
        """This rank's rows of a global batch: contiguous, sizes differing by at most one."""
        start = batch_size * self.rank // self.size
        stop = batch_size * (self.rank + 1) // self.size
        return slice(start, stop)

    # --------------------------------------------------------- collectives
    def sum_floats(self, values: Sequence[float]) -> list[float]:
        """Sum a few Python floats across ranks (losses, counts)."""
        if self.comm is None:
            return [float(v) for v in values]
        buf = np.asarray(values, dtype=np.float64)
        self._allreduce(buf)
        return [float(v) for v in buf]

    def all_equal(self, value: Any) -> bool:
        """Whether every rank holds the same (picklable) value: a cheap check of agreement."""
        if self.comm is None:
            return True
        values = self.comm.allgather(value)
        return all(v == values[0] for v in values)

    def broadcast(self, value: Any, root: int = 0) -> Any:
        """``value`` of rank ``root`` on every rank (a picklable object)."""
        return value if self.comm is None else self.comm.bcast(value, root=root)

    def gather(self, value: Any, root: int = 0) -> Optional[list[Any]]:
        """Every rank's ``value`` as a list on ``root`` (``None`` elsewhere)."""
        return [value] if self.comm is None else self.comm.gather(value, root=root)

    def barrier(self) -> None:
        if self.comm is not None:
            self.comm.Barrier()

    def abort(self, code: int = 1) -> None:
        """End every rank of the job now (a failure on one rank must not leave the others waiting)."""
        if self.comm is not None:
            self.comm.Abort(code)

    def use_local_gpu(self) -> Optional[int]:
        """Make GPU ``local_rank() % GPUs`` this process's current device; the number chosen, or ``None``.

        Under ``mpiexec -n 8`` on one machine every rank would otherwise use
        GPU 0 (CuPy's default), and NCCL refuses two ranks on one GPU. A world
        of one, or a machine without CuPy, changes nothing.
        """
        if self.comm is None:
            return None
        cupy = backend._import_cupy()
        if cupy is None:
            return None
        count = cupy.cuda.runtime.getDeviceCount()
        if count < 1:
            return None
        number = local_rank() % count
        cupy.cuda.Device(number).use()
        return number

    def allreduce_grads(self, params: Sequence[Any]) -> None:
        """Sum ``p.grad`` over ranks, in place, bucketed (a parameter without a gradient counts as 0)."""
        if self.comm is None:
            return
        for bucket in _buckets(params):
            flat = _flatten([p.grad if p.grad is not None else _zeros_like(p.data) for p in bucket])
            self._allreduce(flat)
            _unflatten(flat, bucket, "grad")

    def reduce_scatter_grads(self, params: Sequence[Any], owners: Sequence[int]) -> None:
        """ZeRO-1: each rank ends with the summed gradients of the parameters it owns (others' set to None).

        ``params`` must be ordered by owner (:func:`partition` orders them so).
        """
        if self.comm is None:
            return
        counts = [sum(int(p.size) for p, o in zip(params, owners) if o == r) for r in range(self.size)]
        flat = _flatten([p.grad if p.grad is not None else _zeros_like(p.data) for p in params])
        mine = [p for p, o in zip(params, owners) if o == self.rank]
        xp = backend.array_module(flat)
        out = xp.empty(counts[self.rank], dtype=flat.dtype)
        self._collective("Reduce_scatter", flat, out, counts)
        _unflatten(out, mine, "grad")
        for p, o in zip(params, owners):
            if o != self.rank:
                p.grad = None

    def allgather_params(self, params: Sequence[Any], owners: Sequence[int]) -> None:
        """ZeRO-1: every rank receives the updated weights of every owner (params ordered by owner)."""
        if self.comm is None:
            return
        counts = [sum(int(p.size) for p, o in zip(params, owners) if o == r) for r in range(self.size)]
        mine = [p for p, o in zip(params, owners) if o == self.rank]
        xp = backend.array_module(params[0].data)
        local = _flatten([p.data for p in mine]) if mine else xp.empty(0, dtype=params[0].data.dtype)
        full = xp.empty(sum(counts), dtype=local.dtype)
        self._collective("Allgatherv", local, full, counts)
        _unflatten(full, params, "data")

    # ----------------------------------------------------------- transport
    def _allreduce(self, buf: Array) -> None:
        if backend.is_cupy_array(buf):
            nccl = self._nccl_comm()
            if nccl is not None:
                import cupy
                from cupy.cuda import nccl as nccl_module

                nccl.allReduce(buf.data.ptr, buf.data.ptr, buf.size, _nccl_dtype(nccl_module, buf.dtype),
                               nccl_module.NCCL_SUM, cupy.cuda.get_current_stream().ptr)
                return
            if not _cuda_aware():
                host = backend.to_numpy(buf)
                self._mpi_allreduce(host)
                buf[...] = backend.to_device(host, "cuda")
                return
            _finish_device_work()
        self._mpi_allreduce(buf)

    def _mpi_allreduce(self, buf: Array) -> None:
        from mpi4py import MPI

        self.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)

    def _collective(self, name: str, send: Array, recv: Array, counts: list[int]) -> None:
        """Reduce_scatter / Allgatherv through MPI (device arrays staged through the host unless CUDA-aware)."""
        from mpi4py import MPI

        staged = backend.is_cupy_array(send) and not _cuda_aware()
        s = backend.to_numpy(send) if staged else send
        r = np.empty(recv.shape, dtype=recv.dtype) if staged else recv
        if backend.is_cupy_array(send) and not staged:
            _finish_device_work()
        if name == "Reduce_scatter":
            self.comm.Reduce_scatter(s, r, recvcounts=counts, op=MPI.SUM)
        else:
            displacements = [int(sum(counts[:i])) for i in range(len(counts))]
            self.comm.Allgatherv(s, [r, counts, displacements, _mpi_type(MPI, r.dtype)])
        if staged:
            recv[...] = backend.to_device(r, "cuda")

    def _nccl_comm(self) -> Any:
        """A NCCL communicator over the same ranks (one GPU each), made once; ``None`` without NCCL.

        CuPy 14's ``cupy.cuda.nccl`` imports even where libnccl is missing: it
        then says ``available = False`` and has none of NCCL's names, so the
        flag, not an ``ImportError``, says whether NCCL is there. Every rank
        decides alike (the same flag is broadcast from rank 0), so no rank
        waits for a communicator the others never make.
        """
        if self._nccl is None:
            try:
                from cupy.cuda import nccl
                usable = bool(getattr(nccl, "available", False)) and hasattr(nccl, "NcclCommunicator")
            except ImportError:
                usable = False
            if not self.broadcast(usable):
                self._nccl = False
                return None
            uid = self.broadcast(nccl.get_unique_id() if self.is_main else None)
            self._nccl = nccl.NcclCommunicator(self.size, uid, self.rank)
        return self._nccl or None


class MPINotInstalled(RuntimeError):
    """Launched as an MPI rank without mpi4py: a one-line error for the command line, not a traceback."""


def world() -> World:
    """The world this process belongs to: MPI's when launched by ``mpiexec`` (and mpi4py is there), else one rank.

    mpi4py is imported only when a launcher's environment variables say this
    is a rank, so a plain run never initialises MPI.
    """
    if not any(v in os.environ for v in _LAUNCHER_VARIABLES):
        return World()
    try:
        from mpi4py import MPI
    except ImportError:
        raise MPINotInstalled("this process was started by an MPI launcher (mpiexec) but mpi4py is not "
                              "installed: pip install -e \".[mpi]\" (it brings mpi4py and an mpiexec)") from None
    comm = MPI.COMM_WORLD
    return World(comm) if comm.Get_size() > 1 else World()


def use_device(device: Optional[str], ranks: Optional[World] = None) -> str:
    """The checked device name for this process; for a GPU under a launcher, its local GPU made current first.

    ``ranks`` (default: :func:`world`) decides: in a job of several ranks a
    ``"cuda"`` device is GPU ``local_rank() % GPUs`` (``World.use_local_gpu``),
    chosen before any array reaches a GPU, so that ``mpiexec -n 8`` on one
    machine puts each rank on a GPU of its own. Training, SFT and the
    classifier fine-tune all take their device from here.
    """
    if isinstance(device, str) and device.lower().startswith("cuda"):
        (ranks if ranks is not None else world()).use_local_gpu()
    return backend.check_device(device)


def local_rank() -> int:
    """This process's rank among the ranks on its own machine, from the launcher's environment (0 if none says)."""
    for name in _LOCAL_RANK_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value:
            if not value.isdigit():
                raise ValueError(f"the launcher's {name}={value!r} is not a local rank (a whole number >= 0)")
            return int(value)
    return 0


class ProcessGroup:
    """The processes one training step runs on, as the step sees them: here, a single one.

    Every batch is this process's whole, nothing is summed over processes,
    and every method does nothing. ``DataParallel`` overrides them for the
    ranks of an ``mpiexec`` job; the training step (``npgpt.training.engine``) calls
    the same methods either way, so it has no ``if many ranks``.
    """

    sum_norm: Optional[Callable[[float], float]] = None   # the norm's sum of squares over ranks (ZeRO-1)

    def parameters(self, optimizer: Any) -> list[Any]:
        """Every parameter that gets a gradient: the optimizer's."""
        return [p for group in optimizer.param_groups for p in group["params"]]

    def local_batches(self, batches: Iterable[Sequence[Array]]) -> Iterator[tuple[Sequence[Array], float]]:
        """``(rows, share)`` of each batch: this process's rows and their share of the batch (here all, 1)."""
        return ((batch, 1.0) for batch in batches)

    def sum_gradients(self, params: Sequence[Any], loss: Any) -> Any:
        """Sum ``p.grad`` and ``loss`` over the processes; returns the loss."""
        return loss

    def sum(self, value: float) -> float:
        """A float summed over the processes."""
        return value

    def share_weights(self) -> None:
        """After the update: send each process the weights others updated (ZeRO-1)."""


SINGLE_PROCESS = ProcessGroup()


class DataParallel(ProcessGroup):
    """The ranks of ``world``: each computes its rows of every global batch, the gradients are summed.

    With a ``shard`` (ZeRO-1) this rank's optimizer holds only the
    parameters it owns: gradients are reduce-scattered to their owners, the
    norm is summed over ranks, and after the update the weights are
    all-gathered.
    """

    def __init__(self, world: World, shard: Optional[OptimizerShard] = None) -> None:
        self.world, self.shard = world, shard
        if shard is not None:
            self.sum_norm = self.sum

    def parameters(self, optimizer: Any) -> list[Any]:
        """All parameters, also those another rank's optimizer shard updates: every one gets a gradient."""
        return self.shard.params if self.shard is not None else super().parameters(optimizer)

    def local_batches(self, batches: Iterable[Sequence[Array]]) -> Iterator[tuple[Sequence[Array], float]]:
        """This rank's rows of each global batch, weighted by their share; a rank with no rows sits it out."""
        for batch in batches:
            size = batch[0].shape[0]
            rows = self.world.rows(size)
            if rows.stop > rows.start:
                yield tuple(a[rows] for a in batch), (rows.stop - rows.start) / size

    def sum_gradients(self, params: Sequence[Any], loss: Any) -> float:
        loss = self.sum(float(loss))
        if self.shard is not None:
            self.world.reduce_scatter_grads(self.shard.params, self.shard.owners)
        else:
            self.world.allreduce_grads(params)
        return loss

    def sum(self, value: float) -> float:
        return self.world.sum_floats([value])[0]

    def share_weights(self) -> None:
        if self.shard is not None:
            self.world.allgather_params(self.shard.params, self.shard.owners)


def process_group(world: World, shard: Optional[OptimizerShard] = None) -> ProcessGroup:
    """The group a training step runs on: ``SINGLE_PROCESS`` for a world of one, else ``DataParallel``."""
    return SINGLE_PROCESS if world.size == 1 else DataParallel(world, shard)


def partition(sizes: Sequence[int], ranks: int) -> list[int]:
    """The owner rank of each parameter, by size, so that every rank owns about 1/ranks of the numbers.

    Greedy: parameters in order, each to the rank with the fewest numbers so
    far (ties to the lowest rank). Deterministic, so every rank computes the
    same assignment without talking.
    """
    load = [0] * ranks
    owners = []
    for size in sizes:
        r = min(range(ranks), key=lambda k: (load[k], k))
        owners.append(r)
        load[r] += int(size)
    return owners


class OptimizerShard:
    """ZeRO-1's bookkeeping: every parameter in owner order, its owner, and this rank's own names.

    ``named``: ``(name, parameter)`` pairs of the whole model. The trainer
    builds its optimizer over ``owned_names`` only.
    """

    def __init__(self, named: Sequence[tuple[str, Any]], world: World) -> None:
        owners = partition([int(p.size) for _, p in named], world.size)
        order = sorted(range(len(named)), key=lambda i: (owners[i], i))
        self.names = [named[i][0] for i in order]
        self.params = [named[i][1] for i in order]
        self.owners = [owners[i] for i in order]
        self.owned_names = {n for n, o in zip(self.names, self.owners) if o == world.rank}


# ---------------------------------------------------------- scaling model
@dataclass(frozen=True)
class Link:
    """A network between GPUs: the bandwidth each GPU gets in an all-reduce, and the latency of a message."""

    name: str
    bandwidth: float      # bytes/s per GPU (the "bus bandwidth" NCCL's tests report)
    latency: float        # seconds per message (one step of the ring or of the tree)


# Round figures, assumptions of docs/distributed.md, not measurements: NCCL reaches about 360 GB/s
# of bus bandwidth over NVLink 4 inside an 8-GPU node and about 45 GB/s per GPU across nodes with a
# 400 Gb/s InfiniBand NIC per GPU.
NVLINK = Link("NVLink, 8 GPUs in a node", 360e9, 5e-6)
INFINIBAND = Link("InfiniBand, 400 Gb/s per GPU", 45e9, 15e-6)


def data_parallel_step(params: float, tokens_per_gpu: float, gpus: int, link: Link, peak: float = 989e12,
                       mfu: float = 0.4, grad_bytes: int = 4, bucket: int = BUCKET_BYTES) -> tuple[float, float]:
    """``(compute, all-reduce)`` seconds of one data-parallel step
    (docs/distributed.md eq:compute-time, eq:ring-bandwidth, eq:all-reduce-latency).

    Compute: ``6 N D / (peak * MFU)`` for ``N`` parameters and ``D`` tokens
    per GPU (eq:compute-time). All-reduce: the ring's bandwidth term
    ``2 (n-1)/n * S / beta`` for ``S`` gradient bytes and a bandwidth ``beta`` (eq:ring-bandwidth), plus a latency
    term per bucket, ``2 (n-1) a`` for a ring or ``2 log2(n) a`` for a tree,
    whichever is smaller, as NCCL chooses (eq:all-reduce-latency). No overlap of the two is
    assumed: the efficiency ``compute / (compute + all-reduce)`` is a floor.
    """
    compute = 6 * params * tokens_per_gpu / (peak * mfu)
    size = grad_bytes * params
    if gpus <= 1:
        return compute, 0.0
    buckets = math.ceil(size / bucket)
    bandwidth_term = 2 * (gpus - 1) / gpus * size / link.bandwidth
    latency_term = min(2 * (gpus - 1), 2 * math.log2(gpus)) * link.latency * buckets
    return compute, bandwidth_term + latency_term


# --------------------------------------------------------------- helpers
def _buckets(params: Sequence[Any]) -> list[list[Any]]:
    buckets: list[list[Any]] = [[]]
    size = 0
    for p in params:
        nbytes = int(p.size) * p.data.dtype.itemsize
        if buckets[-1] and size + nbytes > BUCKET_BYTES:
            buckets.append([])
            size = 0
        buckets[-1].append(p)
        size += nbytes
    return [b for b in buckets if b]


def _flatten(arrays: Sequence[Array]) -> Array:
    xp = backend.array_module(*arrays)
    return xp.concatenate([a.reshape(-1) for a in arrays])


def _unflatten(flat: Array, params: Sequence[Any], attribute: str) -> None:
    offset = 0
    for p in params:
        n = int(p.size)
        piece = flat[offset:offset + n].reshape(p.shape)
        if attribute == "grad":
            p.grad = piece.copy()
        else:
            p.data[...] = piece
        offset += n


def _zeros_like(a: Array) -> Array:
    return backend.array_module(a).zeros_like(a)


def _finish_device_work() -> None:
    """Wait for CuPy's current stream: MPI reads device buffers directly, outside CuPy's stream order,
    so the kernels that write them must have finished (mpi4py's CuPy demo does the same)."""
    import cupy

    cupy.cuda.get_current_stream().synchronize()


def _cuda_aware() -> bool:
    try:
        from mpi4py import MPI

        return bool(getattr(MPI, "Query_cuda_support", lambda: False)())
    except Exception:
        return False


def _nccl_dtype(nccl: Any, dtype: Any) -> int:
    return {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64,
            np.dtype(np.float16): nccl.NCCL_FLOAT16}[np.dtype(dtype)]


def _mpi_type(MPI: Any, dtype: Any) -> Any:
    return {np.dtype(np.float32): MPI.FLOAT, np.dtype(np.float64): MPI.DOUBLE}[np.dtype(dtype)]
