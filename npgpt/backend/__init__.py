"""The array backend: NumPy on the CPU, CuPy on an NVIDIA GPU.

Companion of ``docs/backend.md``.

npgpt never switches a global "current device". Instead, as in Chainer and
DeZero, **the array module follows the data**: every op asks its input which
module made it (``xp = array_module(x)``) and calls ``xp.exp``, ``xp.matmul``
... on it. NumPy and CuPy share almost all of their API, so the same op code
runs on both. The few places where they differ live here, in this one module,
and nowhere else:

* scatter-add (``np.add.at`` on NumPy; a one-hot matrix product on CuPy,
  whose ``cupyx.scatter_add`` is nondeterministic), used by the backward
  pass of an embedding lookup;
* moving arrays between host and device (``cupy.asarray`` / ``.get()``);
* finding out whether CuPy and a GPU are usable at all;
* the CPU speed policy (``npgpt.backend.speed``): how many threads, how the
  BLAS and the allocator behave, the block sizes, when a copy pays.

Devices are named ``"cpu"`` (NumPy) and ``"cuda"`` (CuPy, the current GPU).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Optional

import numpy as np

# An array of either backend: a ``numpy.ndarray`` on the CPU or a ``cupy.ndarray`` on a GPU.
# ``Any``, because CuPy is optional (its type cannot be named without importing it) and the two
# array types share no base class. The annotations of the whole package use this alias.
Array = Any

DEVICES = ("cpu", "cuda")

_CUPY_HINT = (
    "install CuPy through the GPU extra for the machine's CUDA: `pip install -e \".[gpu]\"` (CUDA 13, cupy-cuda13x) or "
    "`pip install -e \".[gpu-cuda12]\"` (CUDA 12, cupy-cuda12x with its CUDA libraries), on a machine with an "
    "NVIDIA GPU and driver (`nvidia-smi` prints the driver's CUDA version)"
)

_cupy = None           # the cupy module once imported successfully
_cupy_error = None     # why it could not be imported (str), once tried


def _import_cupy() -> Optional[ModuleType]:
    """Import CuPy lazily: most users never need it and importing it is slow."""
    global _cupy, _cupy_error
    if _cupy is None and _cupy_error is None:
        try:
            import cupy  # noqa: F401  (optional dependency)

            _cupy = cupy
        except Exception as exc:  # ImportError, or a broken CUDA install
            _cupy_error = f"{type(exc).__name__}: {exc}"
    return _cupy


_cuda_checked: Optional[str] = None    # "" once a GPU has computed; else why not (checked once)


def cuda_unavailable_reason() -> Optional[str]:
    """Why npgpt cannot compute on a GPU here, in words; ``None`` when it can.

    Counting devices is not enough: a machine can see a GPU yet fail at the
    first kernel (NVRTC, which compiles CuPy's kernels, missing or of the
    wrong CUDA version) or the first matrix product (cuBLAS missing). So the
    first call runs one tiny elementwise kernel and one tiny GEMM on the
    current device and checks their results; the answer is kept.
    """
    global _cuda_checked
    cupy = _import_cupy()
    if cupy is None:
        return f"CuPy could not be imported ({_cupy_error})"
    if _cuda_checked is None:
        _cuda_checked = _try_the_device(cupy)
    return _cuda_checked or None


def _try_the_device(cupy: ModuleType) -> str:
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return f"the CUDA driver did not answer ({type(exc).__name__}: {exc})"
    if count < 1:
        return "CuPy sees no CUDA GPU"
    steps = (("an elementwise kernel (compiled by NVRTC)", lambda: cupy.arange(4, dtype=cupy.float32) * 2 + 1,
              [1.0, 3.0, 5.0, 7.0]),
             ("a matrix product (cuBLAS)", lambda: cupy.ones((2, 3), dtype=cupy.float32) @ cupy.ones((3, 2), dtype=cupy.float32),
              [[3.0, 3.0], [3.0, 3.0]]))
    for what, compute, expected in steps:
        try:
            got = compute().get().tolist()
        except Exception as exc:
            return f"{what} failed on the GPU ({type(exc).__name__}: {exc})"
        if got != expected:
            return f"{what} computed {got} instead of {expected}"
    return ""


def cuda_available() -> bool:
    """True when CuPy imports, sees a CUDA device and computes a tiny kernel and GEMM right on it.

    :func:`cuda_unavailable_reason` says why not.
    """
    return cuda_unavailable_reason() is None


def _require_cuda() -> ModuleType:
    cupy = _import_cupy()
    if cupy is None:
        raise RuntimeError(f"device 'cuda' needs CuPy, which could not be imported ({_cupy_error}); {_CUPY_HINT}")
    reason = cuda_unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"device 'cuda' was asked for but cannot be used: {reason}; {_CUPY_HINT}")
    return cupy


def check_device(device: Optional[str]) -> str:
    """Validate a device name and return it in canonical form."""
    if device is None:
        return "cpu"
    if not isinstance(device, str):
        raise TypeError(f"device must be a string, 'cpu' or 'cuda', not {type(device).__name__}")
    name = device.lower()
    if name.startswith("cuda:"):  # accept "cuda:0" for the current device, as users type it
        name = "cuda"
    if name not in DEVICES:
        raise ValueError(f"unknown device {device!r}; npgpt knows {DEVICES}")
    if name == "cuda":
        _require_cuda()
    return name


def device_name() -> str:
    """The name CUDA reports for the current GPU ("NVIDIA H100 80GB HBM3" ...); "cpu" without one."""
    if not cuda_available():
        return "cpu"
    runtime = _cupy.cuda.runtime
    name = runtime.getDeviceProperties(runtime.getDevice())["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


def is_cupy_array(x: Any) -> bool:
    """True for a ``cupy.ndarray``, checked without importing CuPy."""
    kind = type(x)
    return kind is not np.ndarray and kind.__module__.split(".")[0] == "cupy"


def array_module(*arrays: Any) -> ModuleType:
    """The module (``numpy`` or ``cupy``) that owns the given arrays.

    ``xp = array_module(x)`` is the first line of every op that creates new
    arrays: code written against ``xp`` then runs on either device.
    """
    for a in arrays:
        if is_cupy_array(a):
            return _cupy if _cupy is not None else _import_cupy()
    return np


def device_of(array: Any) -> str:
    """``"cuda"`` for a CuPy array, ``"cpu"`` otherwise."""
    return "cuda" if is_cupy_array(array) else "cpu"


def to_device(array: Any, device: Optional[str]) -> Array:
    """Copy an array to a device (a no-op when it is already there)."""
    device = check_device(device)
    if device == "cpu":
        return array.get() if is_cupy_array(array) else np.asarray(array)
    cupy = _require_cuda()
    return cupy.asarray(array)


def to_numpy(array: Any) -> np.ndarray:
    """A NumPy array on the host, whatever the backend (copies from a GPU)."""
    return array.get() if is_cupy_array(array) else np.asarray(array)


def read_scalars(*values: Any, kind: type = float) -> list[Any]:
    """Python numbers (``kind``: ``float`` or ``int``) from 0-d arrays and numbers; ``None`` stays ``None``.

    The GPU arrays among ``values`` are read in one copy to the host, not one each: every copy
    from a GPU waits for the device to finish its queue (docs/gpu.md), so a step that needs its
    loss, its gradient norm and an overflow flag pays that wait once.
    """
    on_device = [v for v in values if is_cupy_array(v)]
    read = iter(())
    if on_device:
        xp = array_module(on_device[0])
        dtype = xp.float64 if kind is float else xp.int64
        read = iter(to_numpy(xp.stack([xp.asarray(v, dtype=dtype) for v in on_device])).tolist())
    return [None if v is None else kind(next(read) if is_cupy_array(v) else v) for v in values]


# The one-hot blocks of a deterministic scatter-add hold at most this many numbers (256 MB of float32).
ONE_HOT_BLOCK = 2 ** 26


def scatter_add(target: Array, indices: Any, values: Array) -> Array:
    """``target[indices] += values`` with repeated indices summed, in place.

    Plain fancy-index ``+=`` keeps only the last write of a repeated index,
    which would lose gradient when a token appears twice in a batch. NumPy
    spells the unbuffered version ``np.add.at``, which adds in index order.
    On CuPy, ``cupyx.scatter_add`` is ``atomicAdd``: repeated ids are summed
    in whatever order the threads arrive, so two runs differ in the last
    bits. For the case that matters (rows of a table chosen by one integer
    array: an embedding's gradient) npgpt sums by a one-hot matrix product
    instead, deterministic on a given GPU (:func:`add_rows`). Other index
    kinds on CuPy (tuples of arrays) still use ``cupyx.scatter_add``.
    """
    if is_cupy_array(target):
        if not isinstance(indices, tuple) and target.ndim >= 1:
            ids = array_module(target).asarray(indices)     # ids given on the host: to the device once
            if ids.dtype.kind in "iu":
                return add_rows(target, ids, values)
        import cupyx

        cupyx.scatter_add(target, indices, values)
    elif speed.rows_by_product(target, indices):
        add_rows(target, np.asarray(indices), values)   # a small table: the one-hot product is faster
    else:
        # np.add.at is the unbuffered add; NumPy >= 2 has a fast path for it.
        np.add.at(target, indices, values)
    return target


def overflow_expected() -> Any:
    """A context in which a float overflowing to ``inf`` is intended (``exp`` of a large number whose
    reciprocal is meant to be 0): NumPy would warn, CuPy never checks."""
    return np.errstate(over="ignore")


def add_rows(target: Array, ids: Array, values: Array) -> Array:
    """``target[ids] += values``, repeated ids summed by a matrix product: ``target += onehot(ids)^T values``.

    Shapes: ``target`` (V, ...), ``ids`` any integer shape ``S`` (negative ids count from the end),
    ``values`` ``S + (...)``. Row ``v`` of the product is ``sum_n [ids_n = v] values_n``, a GEMM
    whose order of additions is fixed, so the result is the same on every run (no atomics). The
    one-hot matrix is built in blocks of rows of ``target``, at most :data:`ONE_HOT_BLOCK` numbers
    each: ``ceil(V N / ONE_HOT_BLOCK)`` products for ``N`` ids (7 for GPT-2's vocabulary and 8,192
    tokens), ``2 V N C`` FLOPs in all.
    """
    xp = array_module(target, ids)
    V = target.shape[0]
    ids = ids.reshape(-1)
    ids = xp.where(ids < 0, ids + V, ids)
    rows = values.reshape(ids.size, -1)                          # (N, C)
    # A 2-D table is written in place; another shape through a (V, C) array added at the end (a
    # reshape of a strided array would be a copy, and writes into it would be lost).
    table = target if target.ndim == 2 else xp.zeros((V, rows.shape[1]), dtype=target.dtype)
    block = max(1, ONE_HOT_BLOCK // max(1, ids.size))
    for start in range(0, V, block):
        stop = min(V, start + block)
        one_hot = (xp.arange(start, stop, dtype=ids.dtype)[:, None] == ids[None, :]).astype(rows.dtype)
        table[start:stop] += one_hot @ rows                      # (b, N) @ (N, C)
    if table is not target:
        target += table.reshape(target.shape)
    return target


def default_rng(seed: Optional[int] = None, xp: ModuleType = np) -> Any:
    """A random generator of the given module (NumPy's or CuPy's)."""
    return xp.random.default_rng(seed)


# The CPU speed policy lives in npgpt.backend.speed; its switches are also reachable from here.
from npgpt.backend import speed  # noqa: E402  (scatter_add asks it which way to add rows)
from npgpt.backend.speed import (  # noqa: E402, F401
    blas_thread_count,
    blas_threads,
    default_workers,
    retain_freed_memory,
)
