"""A strict stand-in for CuPy that runs without a GPU: test infrastructure, not shipped with npgpt.

``install()`` puts it into ``sys.modules`` as ``cupy`` and ``cupyx`` (with ``cupy.cuda``,
``cupy.cuda.runtime`` and ``cupy.random``) and reports one CUDA device, so
``npgpt.backend.cuda_available()`` is True and every "cuda" code path of npgpt runs on the host.

Its arrays keep their values in a NumPy array, but they are not NumPy arrays (nor a subclass):
what CuPy refuses, the stand-in refuses too.

* ``numpy.asarray(x)``, ``numpy.array(x)`` and ``x.__array__()`` raise ``TypeError``: the host
  gets a copy only through ``x.get()`` or ``cupy.asnumpy(x)``.
* Arithmetic and ufuncs that mix a device array with a ``numpy.ndarray`` raise ``TypeError``, in
  either operand order; Python and NumPy scalars are fine, as they are in CuPy.
* NumPy functions called on device arrays dispatch as CuPy's ``__array_function__`` and
  ``__array_ufunc__`` do: to the function of the same name in this module, or ``TypeError`` where
  it has none (``numpy.add.at`` on a device array, for one).
* Reductions and indexing return 0-d device arrays, never NumPy scalars.
* Integer-array indices wrap around instead of raising ``IndexError`` (CuPy does not check them);
  ``empty`` arrays hold garbage (NaN, or a large integer), not zeros.
* Only names that the real CuPy has are exposed (``tests/suites/test_fake_cupy.py`` checks them against
  the installed package).

Every copy between host and device is counted: ``transfers()`` returns the cumulative counts
``{"to_host": n, "to_device": m}``, ``transfer_log()`` where each was made, and
``reset_transfers()`` sets them back to zero. Device -> host: ``.get()``, ``cupy.asnumpy``,
``.item()``, ``.tolist()``, ``float()``/``int()``/``bool()`` of an array, printing one, and the
synchronisations a boolean mask or ``nonzero`` costs (the host must learn how many elements
are selected). Host -> device: ``cupy.asarray``/``cupy.array`` of host data (Python numbers
included: CuPy allocates device memory and copies them), ``.set()``, and host arrays or lists
used as indices or as values of an indexed assignment.

Every call that would launch a kernel on a GPU is counted too, with the bytes it reads and
writes: ``kernels()`` returns ``{"launches", "bytes_read", "bytes_written"}``, ``reset_kernels()``
sets them to zero, ``kernel_sites()`` counts launches by the line of npgpt that made them (after
``count_sites(True)``). A call launches a kernel when it writes an ``out=`` array, an indexed
assignment, a fill or a scatter, or returns an array that shares no memory with its inputs
(an elementwise op, a reduction, a product, a copy, a gather); views (``reshape`` of a
contiguous array, ``transpose``, slicing, ``astype`` to the same type without a copy) and
``empty`` launch none. Bytes read are the sizes of the device arrays it is given (the view as
given: a broadcast row counts its own size), bytes written the size of what it writes. That is
the traffic of an unfused kernel per call, no more: caches and cuBLAS's tiling are not modelled.

``cupy.fuse`` is emulated: the function runs on proxies that carry NumPy values, as CuPy 14's
classic tracer (``cupy/_core/fusion.pyx``) runs it on its own; what that tracer cannot compile
into one kernel is refused (``TypeError``, ``AttributeError``), and each call counts one launch
that reads every array argument once and writes the outputs and the arguments assigned in place.

CUDA graphs are emulated (``Stream.begin_capture``/``end_capture``, ``Graph.launch``): under capture
each call runs (the calls after it need its values) and is recorded with a replay, the same NumPy
function on the same arrays writing into the same outputs, Python numbers as they were at capture.
``end_capture`` then undoes the capture as a GPU never ran it: arrays written that existed before
get their contents back, arrays allocated under capture hold garbage until a launch. A host read or
a host -> device copy inside capture raises ``cudaErrorStreamCaptureUnsupported`` (CuPy's
``CUDARuntimeError``), a synchronisation too; a call with no replay is refused. A launch counts
one launch; ``replayed_nodes()`` counts the kernels it replayed, and the bytes are theirs.
Memory, as CUDA's graphs see it: CuPy's ``Graph`` keeps no array alive, so the replays hold their
arrays as addresses (weak references to the allocation). What a call allocates under capture (a
gather's result, a view of fresh memory, included) is the graph's, held by the private pool of
``using_allocator(pool.malloc)``; an allocation under capture from the default pool (no
``using_allocator``, or the default pool's ``malloc``) raises ``CUDARuntimeError``. A launch raises
before it runs anything if memory it reads or writes was freed since the capture: an array of the
program that Python dropped, or the pool's blocks after ``free_all_blocks`` (or the pool's end).
It does not choose which block a pool would hand out next, so a fault shows as that error at the
launch, not as the wrong values a GPU would compute.

What it cannot show: speed, memory limits, the numerics of cuBLAS and of CuPy's
reductions (the values are NumPy's), the random streams of cuRAND, whether NVRTC compiles the
code ``cupy.fuse`` generates.
"""

from __future__ import annotations

import functools
import importlib.machinery
import sys
import threading
import types
import warnings
import weakref
from typing import Any

import numpy as np

__all__ = ["install", "uninstall", "installed", "transfers", "reset_transfers", "transfer_log", "ndarray", "kernels",
           "reset_kernels", "count_sites", "kernel_sites", "graph_nodes", "replayed_nodes"]

# ------------------------------------------------------------------------------------ counting
_counts = {"to_host": 0, "to_device": 0}
_log: list[tuple[str, str, int]] = []      # (kind, where, bytes) of the most recent transfers
_lock = threading.Lock()
_LOG_LIMIT = 10_000


def transfers() -> dict[str, int]:
    """Cumulative counts of copies: ``{"to_host": device -> host, "to_device": host -> device}``."""
    with _lock:
        return dict(_counts)


def reset_transfers() -> None:
    """Set both counts to zero and forget the log."""
    with _lock:
        for key in _counts:
            _counts[key] = 0
        _log.clear()


def transfer_log() -> list[tuple[str, str, int]]:
    """``(kind, "file:line in function", bytes)`` of each transfer since the last reset (oldest first)."""
    with _lock:
        return list(_log)


_FUSE_FILE = "/npgpt/backend/fuse.py".replace("/", __import__("os").sep)


def _caller() -> str:
    """The first frame outside this file: the code that asked for the transfer."""
    frame = sys._getframe(1)
    # npgpt's fusion wrapper is skipped too: a fused kernel's launch belongs to the op that calls it.
    while frame is not None and (frame.f_code.co_filename == __file__ or frame.f_code.co_filename.endswith(_FUSE_FILE)):
        frame = frame.f_back
    if frame is None:
        return "?"
    return f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}"


def _record(kind: str, nbytes: int) -> None:
    if _capturing():
        _refuse_in_capture("a device -> host copy" if kind == "to_host" else "a host -> device copy")
    where = _caller()
    with _lock:
        _counts[kind] += 1
        _log.append((kind, where, int(nbytes)))
        if len(_log) > _LOG_LIMIT:
            del _log[: len(_log) - _LOG_LIMIT]


# ----------------------------------------------------------------------- kernels
_kernels = {"launches": 0, "bytes_read": 0, "bytes_written": 0}
_replayed = {"nodes": 0}                  # kernels run by CUDA graph launches (each launch counts one)
_sites: dict[str, int] = {}
_count_sites = False


def kernels() -> dict[str, int]:
    """Cumulative ``{"launches", "bytes_read", "bytes_written"}`` of the kernels a GPU would have run (a CUDA
    graph's launch is one launch, with its kernels' bytes; ``replayed_nodes()`` counts those kernels)."""
    with _lock:
        return dict(_kernels)


def reset_kernels() -> None:
    """Set the kernel counts (and the per-site counts) to zero."""
    with _lock:
        for key in _kernels:
            _kernels[key] = 0
        _replayed["nodes"] = 0
        _sites.clear()


def replayed_nodes() -> int:
    """The kernels that CUDA graph launches ran since ``reset_kernels`` (the launches count one each)."""
    with _lock:
        return _replayed["nodes"]


def count_sites(on: bool = True) -> None:
    """Also count launches per calling line (``kernel_sites()``); slower, for finding where they come from."""
    global _count_sites
    _count_sites = bool(on)


def kernel_sites() -> dict[str, int]:
    """Launches by ``"file:line in function"`` of the first caller outside this file, most first."""
    with _lock:
        return dict(sorted(_sites.items(), key=lambda kv: -kv[1]))


def _launch(read: int, written: int, replay: Any = None, nodes: int = 0) -> None:
    """Count one kernel; inside a stream capture, record it as a node of the graph instead (``replay``
    recomputes it into the same arrays; a call that cannot say how to replay itself is refused)."""
    if _capturing():
        _capture.graph._add(read, written, replay)
        return
    where = _caller() if _count_sites else None
    with _lock:
        _kernels["launches"] += 1
        _kernels["bytes_read"] += int(read)
        _kernels["bytes_written"] += int(written)
        _replayed["nodes"] += nodes
        if where is not None:
            _sites[where] = _sites.get(where, 0) + 1


def _device_arrays(obj: Any, found: list) -> list:
    """The NumPy arrays behind the device arrays in ``obj`` (lists, tuples and dicts searched)."""
    if type(obj) is ndarray:
        found.append(obj._a)
    elif type(obj) in (list, tuple):
        for v in obj:
            _device_arrays(v, found)
    elif type(obj) is dict:
        for v in obj.values():
            _device_arrays(v, found)
    return found


def _count_call(inputs: list, result: Any, out: Any = None, reads: bool = True, replay: Any = None) -> None:
    """Count one kernel if the call wrote ``out`` or made an array that is not a view of its inputs."""
    if type(out) is ndarray:
        written = out._a
    else:
        made = [a for a in _device_arrays(result, []) if not any(np.may_share_memory(a, i) for i in inputs)]
        if not made:
            return                                  # a view (or views) of the inputs: no kernel
        if _capture.graph is not None and _capturing():
            _capture.graph._allocate(made)          # fresh memory, owning or not (a gather's is a view)
        written = made
    written = written if isinstance(written, list) else [written]
    _launch(sum(a.nbytes for a in inputs) if reads else 0, sum(a.nbytes for a in written), replay)


# -------------------------------------------------------------------- arrays in and out
# CuPy's kernels take Python and NumPy scalars as arguments (no copy); anything else that is not
# a device array is refused with this message.
_SCALAR_TYPES = frozenset([bool, int, float, complex] + [t for t in set(np.sctypeDict.values()) if issubclass(t, np.generic)])


def _unsupported(x: Any) -> TypeError:
    return TypeError(f"Unsupported type {type(x)}")


def _dev(x: Any) -> Any:
    """The NumPy array behind a device argument (recursively in lists, tuples, dicts); host arrays refused."""
    if type(x) is ndarray:
        return x._a
    if type(x) is _Var:
        raise _refuse("this call on a proxy")
    if isinstance(x, np.ndarray):
        raise _unsupported(x)
    if type(x) in (list, tuple):
        return type(x)(_dev(v) for v in x)
    if type(x) is dict:
        return {k: _dev(v) for k, v in x.items()}
    return x


def _new(a: np.ndarray) -> ndarray:
    out = ndarray.__new__(ndarray)
    out._a = a
    if _capture.graph is not None and a.flags.owndata and _capturing():
        _capture.graph._allocate([a])         # memory allocated under capture: the graph's own
    return out


def _wrap(r: Any) -> Any:
    """A routine's result as CuPy would give it: arrays (0-d for scalars) on the device."""
    if isinstance(r, np.ndarray):
        return _new(r)
    if isinstance(r, np.generic):
        return _new(np.asarray(r))
    if type(r) is tuple:
        return tuple(_wrap(v) for v in r)
    if type(r) is list:
        return [_wrap(v) for v in r]
    return r


def _holds_device_array(obj: Any) -> bool:
    if type(obj) is ndarray:
        return True
    if type(obj) in (list, tuple):
        return any(_holds_device_array(v) for v in obj)
    return False


def _upload(obj: Any, dtype: Any = None, ndmin: int = 0) -> ndarray:
    """Host data to the device: always a copy, and counted (``cupy.asarray`` of a number too)."""
    if _holds_device_array(obj):        # a list of device arrays is assembled on the device
        made = _new(np.array(_dev(obj), dtype=dtype, ndmin=ndmin))
        replay = _replay(_recorded(np.array, _dev(obj), dtype=dtype, ndmin=ndmin), made)
        _count_call(_device_arrays(obj, []), made, replay=replay)
        return made
    host = np.array(obj, dtype=dtype, ndmin=ndmin)
    if host.dtype == object:
        raise ValueError(f"Unsupported dtype {host.dtype}")
    _record("to_device", host.nbytes)
    return _new(host)


def _garbage(a: np.ndarray) -> np.ndarray:
    """Fill freshly "allocated" memory with values no correct program reads."""
    if a.dtype.kind in "fc":
        a.fill(np.nan)
    elif a.dtype.kind in "iu":
        a.fill(np.iinfo(a.dtype).max // 3)
    elif a.dtype.kind == "b":
        a.fill(True)
    return a


# ------------------------------------------------------------------------------ indexing
def _index(shape: tuple[int, ...], index: Any) -> tuple[tuple, bool]:
    """A CuPy index as the equivalent NumPy index, and whether it is advanced.

    Host arrays and lists in the index are copied to the device first (counted); integer arrays
    wrap around (CuPy's take/scatter kernels use ``index % dim``); a boolean mask costs a
    synchronisation, since the host must learn how many elements it selects.
    """
    return _numpy_index(shape, _index_items(index))


def _index_items(index: Any) -> list:
    """The items of a CuPy index with device arrays as their NumPy arrays, host arrays copied (counted)."""
    items = list(index) if type(index) is tuple else [index]
    out = []
    for s in items:
        if type(s) is ndarray:
            out.append(s._a)
        elif s is None or s is Ellipsis or isinstance(s, slice):
            out.append(s)
        elif isinstance(s, (list, tuple, np.ndarray)) or isinstance(s, (bool, np.bool_)):
            host = np.array(s)
            if isinstance(s, (list, tuple)) and host.size == 0:
                host = host.astype(np.int32)       # an empty list means no indices, not an empty mask
            if host.dtype.kind not in "biu":
                raise IndexError("only integers, slices (`:`), ellipsis (`...`),numpy.newaxis (`None`) and "
                                 "integer or boolean arrays are valid indices")
            _record("to_device", host.nbytes)
            out.append(host)
        else:
            out.append(s)                          # a Python or NumPy integer: a view, as in NumPy
    return out


def _numpy_index(shape: tuple[int, ...], items: list) -> tuple[tuple, bool]:
    """``_index_items``'s items as a NumPy index for ``shape`` (integer arrays wrapped), and whether it is advanced."""
    out = list(items)
    consumed = sum((s.ndim if s.dtype == bool else 1) if isinstance(s, np.ndarray) else 1
                   for s in out if s is not None and s is not Ellipsis)
    axis, advanced = 0, False
    for k, s in enumerate(out):
        if s is None:
            continue
        if s is Ellipsis:
            axis += max(len(shape) - consumed, 0)
            continue
        if isinstance(s, np.ndarray):
            advanced = True
            if s.dtype == bool:
                _record("to_host", 4)
                axis += s.ndim
                continue
            if s.dtype.kind not in "iu":
                raise IndexError(f"arrays used as indices must be of integer or boolean type. (actual: {s.dtype.type})")
            if axis < len(shape) and shape[axis] > 0:
                out[k] = s % shape[axis]
        axis += 1
    return tuple(out), advanced


def _gather(a: np.ndarray, shape: tuple, items: list) -> np.ndarray:
    return a[_numpy_index(shape, items)[0]]


def _scatter(a: np.ndarray, shape: tuple, items: list, value: Any) -> None:
    a[_numpy_index(shape, items)[0]] = value


def _indexed_value(value: Any, advanced: bool, dtype: np.dtype) -> Any:
    """The value of ``a[index] = value`` as CuPy takes it (see ``_scatter_op`` and ``fill`` in CuPy)."""
    if type(value) is ndarray:
        return value._a
    if isinstance(value, (np.ndarray, list, tuple)):
        if advanced:                               # CuPy copies the host values to the device
            return _upload(value, dtype=dtype)._a
        if isinstance(value, np.ndarray) and value.ndim == 0:
            return value.item()
        if isinstance(value, np.ndarray):
            raise ValueError("non-scalar numpy.ndarray cannot be used for fill")
        raise _unsupported(value)
    return value


# ------------------------------------------------------------------------------- the array
def _should_use_rop(x: Any, y: Any) -> bool:
    """CuPy's rule for a binary operator whose right operand is not a device array (see its core.pyx)."""
    try:
        y_ufunc = y.__array_ufunc__
    except AttributeError:
        return getattr(x, "__array_priority__", 0) < getattr(y, "__array_priority__", 0)
    return y_ufunc is None


def _binary(name: str) -> tuple:
    def op(self, other):
        if type(other) is ndarray:
            return _MODULE_FUNCS[name](self, other)
        if _should_use_rop(self, other):
            return NotImplemented
        return getattr(np, name)(self, other)      # NumPy dispatches back to __array_ufunc__

    def rop(self, other):
        return _MODULE_FUNCS[name](other, self)

    def iop(self, other):
        return _MODULE_FUNCS[name](self, other, out=self)

    return op, rop, iop


def _compare(name: str):
    def op(self, other):
        if type(other) is ndarray:
            return _MODULE_FUNCS[name](self, other)
        if not _should_use_rop(self, other):
            if isinstance(other, np.ndarray) and other.ndim == 0:
                other = other.item()
            return getattr(np, name)(self, other)
        return NotImplemented
    return op


class ndarray:  # noqa: N801  (CuPy's name)
    """A device array of the stand-in: a NumPy array that the host may only read through ``get()``."""

    __slots__ = ("_a",)
    __array_priority__ = 100
    __hash__ = None

    def __init__(self, shape, dtype=float, memptr=None, strides=None, order="C"):
        if memptr is not None or strides is not None:
            raise NotImplementedError("the CuPy stand-in does not model memory pointers")
        self._a = _garbage(np.empty(shape, dtype=dtype, order=order))

    # ------------------------------------------------------------------ attributes
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    strides = property(lambda self: self._a.strides)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    T = property(lambda self: _new(self._a.T))
    mT = property(lambda self: _new(self._a.mT))
    real = property(lambda self: _new(self._a.real))
    imag = property(lambda self: _new(self._a.imag))

    # --------------------------------------------------------------- to the host
    def get(self, stream=None, order="C", out=None, blocking=True):
        """A copy on the host (counted)."""
        _record("to_host", self.nbytes)
        host = np.array(self._a, order=order, copy=True)
        if out is not None:
            if not isinstance(out, np.ndarray):
                raise TypeError("Only numpy.ndarray can be obtained fromcupy.ndarray")
            if out.dtype != self.dtype or out.shape != self.shape:
                raise TypeError(f"{out.dtype} {out.shape} array cannot be obtained from {self.dtype} {self.shape} array")
            out[...] = host
            return out
        return host

    def set(self, arr, stream=None):
        """Copy a host array of the same shape and dtype into this one (counted)."""
        if not isinstance(arr, np.ndarray):
            raise TypeError("Only numpy.ndarray can be set to cupy.ndarray")
        if arr.dtype != self.dtype:
            raise TypeError(f"{arr.dtype} array cannot be set to {self.dtype} array")
        if arr.shape != self.shape:
            raise ValueError(f"Shape mismatch. Old shape: {self.shape}, new shape: {arr.shape}")
        _record("to_device", arr.nbytes)
        self._a[...] = arr

    def item(self):
        if self.size != 1:
            raise ValueError("can only convert an array of size 1 to a Python scalar")
        return self.get().item()

    def tolist(self):
        return self.get().tolist()

    def tobytes(self, order="C"):
        return self.get().tobytes(order)

    def tofile(self, fid, sep="", format="%s"):  # noqa: A002  (CuPy's name)
        self.get().tofile(fid, sep, format)

    def __int__(self):
        return int(self.get())

    def __float__(self):
        return float(self.get())

    def __complex__(self):
        return complex(self.get())

    def __bool__(self):
        if self.size == 0:
            warnings.warn("The truth value of an empty array is ambiguous. Returning False, but in future "
                          "this will result in an error. Use `array.size > 0` to check that an array is not "
                          "empty.", DeprecationWarning, stacklevel=2)
            return False
        if self.size == 1:
            return bool(self.get())
        raise ValueError("The truth value of an array with more than one element is ambiguous. Use a.any() or a.all()")

    def __repr__(self):
        return repr(self.get())

    def __str__(self):
        return str(self.get())

    def __format__(self, format_spec):
        return format(self.get(), format_spec)

    def __reduce__(self):
        return _MODULE_FUNCS["array"], (self.get(),)

    def __array__(self, dtype=None, copy=None):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct "
                        "a NumPy array explicitly.")

    # --------------------------------------------------------------- containers
    def __len__(self):
        if self.ndim == 0:
            raise TypeError("len() of unsized object")
        return self.shape[0]

    def __iter__(self):
        if self.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(self.shape[0]))

    def __getitem__(self, index):
        items = _index_items(index)
        np_index, advanced = _numpy_index(self.shape, items)
        made = _wrap(self._a[np_index])
        if advanced:                                # a gather kernel; basic indexing is a view
            if _capture.graph is not None and _capturing():
                _capture.graph._allocate([made._a])     # a view of fresh memory (NumPy's gathers transpose)
            replay = _replay(_recorded(_gather, self._a, self.shape, items), made)
            _launch(sum(a.nbytes for a in np_index if isinstance(a, np.ndarray)) + made.nbytes, made.nbytes, replay)
        return made

    def __setitem__(self, index, value):
        items = _index_items(index)
        np_index, advanced = _numpy_index(self.shape, items)
        target = self._a[np_index]
        _before_write(self._a if advanced else target)
        v = _indexed_value(value, advanced, self.dtype)
        self._a[np_index] = v
        read = sum(a.nbytes for a in np_index if isinstance(a, np.ndarray))
        # At replay: the index arrays' and the value's contents as they are then.
        _launch(read + (value.nbytes if type(value) is ndarray else 0), target.nbytes,
                _recorded(_scatter, self._a, self.shape, items, v))

    def scatter_add(self, slices, value):
        """``cupyx.scatter_add(self, slices, value)``: repeated indices add up."""
        np_index, advanced = _index(self.shape, slices)
        v = _indexed_value(value, True, self.dtype)
        if advanced:
            if self.dtype.type not in (np.int32, np.float16, np.float32, np.float64, np.uint32, np.uint64):
                raise TypeError("scatter_add only supports int32, float16, float32, float64, uint32, uint64, as data type")
            np.add.at(self._a, np_index, v)
        else:
            np.add(self._a[np_index], v, out=self._a[np_index])
        n = np.asarray(v).nbytes
        _launch(2 * n + sum(a.nbytes for a in np_index if isinstance(a, np.ndarray)), n)

    def fill(self, value):
        if type(value) is ndarray:
            if value.ndim != 0:
                raise ValueError("non-scalar cupy.ndarray cannot be used for fill")
            value = value._a
        elif isinstance(value, np.ndarray):
            if value.ndim != 0:
                raise ValueError("non-scalar numpy.ndarray cannot be used for fill")
            value = value.item()
        elif type(value) not in _SCALAR_TYPES:
            raise _unsupported(value)
        _before_write(self._a)
        self._a.fill(value)
        _launch(0, self.nbytes, _recorded(np.ndarray.fill, self._a, value))

    def dot(self, b, out=None):
        if type(b) is not ndarray:
            raise TypeError(f"Argument 'b' has incorrect type (expected cupy._core.core._ndarray_base, got {type(b).__name__})")
        return _MODULE_FUNCS["dot"](self, b, out=out)

    def nonzero(self):
        _record("to_host", 8)                       # the number of nonzero elements sets the shape
        return _wrap(self._a.nonzero())

    def take(self, indices, axis=None, out=None):
        idx = indices._a if type(indices) is ndarray else (indices if np.isscalar(indices) else _upload(indices)._a)
        result = np.take(self._a, idx, axis=axis, mode="wrap", out=None if out is None else out._a)
        made = out if out is not None else _wrap(result)
        _launch(np.asarray(idx).nbytes + made.nbytes, made.nbytes)
        return made

    def put(self, indices, values, mode="wrap"):
        idx = indices._a if type(indices) is ndarray else _upload(indices)._a
        vals = values._a if type(values) is ndarray else _upload(values, dtype=self.dtype)._a
        np.put(self._a, idx, vals, mode=mode)
        _launch(idx.nbytes + vals.nbytes, vals.nbytes)

    def ptp(self, axis=None, out=None, keepdims=False):
        return _MODULE_FUNCS["ptp"](self, axis=axis, out=out, keepdims=keepdims)

    def __copy__(self):
        return _new(self._a.copy())

    def __deepcopy__(self, memo):
        return _new(self._a.copy())

    # ------------------------------------------------------------- NumPy protocols
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        inout = inputs
        if "out" in kwargs:
            out = kwargs["out"]
            if len(out) != 1:
                raise ValueError("The 'out' parameter must have exactly one array value")
            inout += out
            kwargs["out"] = out[0]
        if method != "__call__":
            return NotImplemented                   # numpy.add.at(device array, ...) and the like
        name = ufunc.__name__
        func = _MODULE_FUNCS.get(name)
        if func is None:
            return NotImplemented
        for x in inout:
            if not (type(x) is ndarray or type(x) in _SCALAR_TYPES or isinstance(x, np.ndarray)):
                return NotImplemented
        if name in ("greater", "greater_equal", "less", "less_equal", "equal", "not_equal"):
            inputs = tuple(x.item() if isinstance(x, np.ndarray) and x.ndim == 0 else x for x in inputs)
        return func(*inputs, **kwargs)              # a numpy.ndarray among them: TypeError there

    def __array_function__(self, func, types, args, kwargs):
        try:
            module = functools.reduce(getattr, func.__module__.split(".")[1:], _cupy)
            ours = getattr(module, func.__name__)
        except AttributeError:
            return NotImplemented
        if ours is func:
            return NotImplemented
        for t in types:
            if t not in (ndarray, np.ndarray):
                return NotImplemented
        return ours(*args, **kwargs)

    # ------------------------------------------------------------------ operators
    def __neg__(self):
        return _MODULE_FUNCS["negative"](self)

    def __pos__(self):
        return self

    def __abs__(self):
        return _MODULE_FUNCS["absolute"](self)

    def __invert__(self):
        return _MODULE_FUNCS["invert"](self)

    def __matmul__(self, other):
        if type(other) is not ndarray and _should_use_rop(self, other):
            return NotImplemented
        return _MODULE_FUNCS["matmul"](self, other)

    def __rmatmul__(self, other):
        return _MODULE_FUNCS["matmul"](other, self)


ndarray.__module__ = "cupy"     # npgpt.backend.is_cupy_array looks at the type's module

_OPERATORS = {"add": "add", "sub": "subtract", "mul": "multiply", "truediv": "true_divide",
              "floordiv": "floor_divide", "mod": "remainder", "pow": "power", "and": "bitwise_and",
              "or": "bitwise_or", "xor": "bitwise_xor", "lshift": "left_shift", "rshift": "right_shift"}
for _op, _ufunc in _OPERATORS.items():
    _f, _r, _i = _binary(_ufunc)
    for _prefix, _fn in (("", _f), ("r", _r), ("i", _i)):
        _fn.__name__ = f"__{_prefix}{_op}__"
        setattr(ndarray, _fn.__name__, _fn)
for _op, _ufunc in {"lt": "less", "le": "less_equal", "eq": "equal", "ne": "not_equal", "gt": "greater",
                    "ge": "greater_equal"}.items():
    _c = _compare(_ufunc)
    _c.__name__ = f"__{_op}__"
    setattr(ndarray, _c.__name__, _c)


def _method(name: str):
    def method(self, *args, **kwargs):
        out = kwargs.get("out")
        _before_write(out)
        dargs, dkwargs = _dev(args), _dev(kwargs)
        result = getattr(self._a, name)(*dargs, **dkwargs)
        made = out if out is not None else _wrap(result)
        replay = _replay(_recorded(getattr(np.ndarray, name), self._a, *dargs, **dkwargs), made, out)
        _count_call([self._a] + _inputs(args, kwargs), made, out, replay=replay)
        return made
    method.__name__ = method.__qualname__ = name
    return method


for _name in ("all", "any", "argmax", "argmin", "argpartition", "argsort", "astype", "clip", "conj", "conjugate",
              "copy", "cumprod", "cumsum", "diagonal", "flatten", "max", "mean", "min", "partition", "prod", "ravel",
              "repeat", "reshape", "round", "searchsorted", "sort", "squeeze", "std", "sum", "swapaxes", "trace",
              "transpose", "var", "view"):
    setattr(ndarray, _name, _method(_name))


# ------------------------------------------------------------------------------ routines
# Routines that write a new array without reading their arguments' values.
_CREATION = frozenset("zeros ones full zeros_like ones_like full_like arange linspace eye identity tri".split())


def _inputs(args: tuple, kwargs: dict) -> list:
    """The device arrays a call reads: its arguments, less an ``out=`` it only writes."""
    return _device_arrays(args, _device_arrays({k: v for k, v in kwargs.items() if k != "out"}, []))


def _routine(name: str, numpy_func: Any = None, result: Any = _wrap):
    numpy_func = numpy_func if numpy_func is not None else getattr(np, name)
    reads = name not in _CREATION

    def routine(*args, **kwargs):
        if _fusing.trace is not None:
            return _traced_routine(name, args, kwargs)
        out = kwargs.get("out")
        _before_write(out)
        dargs, dkwargs = _dev(args), _dev(kwargs)
        value = numpy_func(*dargs, **dkwargs)
        made = out if type(out) is ndarray else result(value)
        replay = _replay(_recorded(numpy_func, *dargs, **dkwargs), made, out)
        _count_call(_inputs(args, kwargs), made, out, reads, replay)
        return made
    routine.__name__ = routine.__qualname__ = name
    routine.__module__ = "cupy"
    routine.__doc__ = f"``numpy.{name}`` on device arrays (the CuPy stand-in)."
    return routine


_UFUNCS = ("add subtract multiply divide true_divide floor_divide power negative positive absolute exp expm1 log "
           "log1p log2 log10 sqrt square reciprocal tanh sinh cosh sin cos tan arctan maximum minimum fmax fmin "
           "equal not_equal less less_equal greater greater_equal logical_and logical_or logical_not logical_xor "
           "bitwise_and bitwise_or bitwise_xor invert left_shift right_shift isfinite isinf isnan sign floor ceil "
           "trunc rint remainder mod fmod").split()
_ROUTINES = ("clip sum mean max min amax amin argmax argmin cumsum cumprod prod std var sort argsort partition "
             "argpartition take_along_axis concatenate stack vstack hstack broadcast_to broadcast_arrays reshape "
             "ravel transpose swapaxes moveaxis expand_dims squeeze tril triu flip roll repeat tile pad dot matmul "
             "einsum outer tensordot all any isclose searchsorted round around zeros ones full zeros_like ones_like "
             "full_like arange linspace eye identity tri copy atleast_1d atleast_2d diagonal trace ptp").split()


def _check_kth(kth: Any) -> None:
    """CuPy's partition takes ``kth`` as a Python ``int`` or a sequence of them; a NumPy integer is
    neither (``isinstance(numpy.int64(3), int)`` is False), so CuPy tries to iterate it and fails."""
    if not isinstance(kth, int) and not isinstance(kth, (list, tuple)):
        raise TypeError(f"'{type(kth).__name__}' object is not iterable")


def _kth_checked(name: str, routine: Any) -> Any:
    def checked(a, kth, *args, **kwargs):
        _check_kth(kth)
        return routine(a, kth, *args, **kwargs)
    checked.__name__ = checked.__qualname__ = name
    checked.__module__, checked.__doc__ = routine.__module__, routine.__doc__
    return checked


def _to_device_result(value: Any) -> ndarray:
    return _new(np.asarray(value))


def _synchronising(name: str):
    """A routine whose result's shape depends on the data: CuPy reads a count back to the host."""
    inner = _routine(name)

    def routine(*args, **kwargs):
        _record("to_host", 8)
        return inner(*args, **kwargs)
    routine.__name__ = routine.__qualname__ = name
    routine.__module__ = "cupy"
    return routine


def where(condition, x=None, y=None):
    if _fusing.trace is not None and x is not None and y is not None:
        return _trace_ufunc("where", (condition, x, y), {})
    if x is None and y is None:
        _record("to_host", 8)
        return _wrap(np.nonzero(_dev(condition)))
    if x is None or y is None:
        raise ValueError("Must provide both 'x' and 'y' or neither.")
    made = _wrap(np.where(*_dev((condition, x, y))))
    _count_call(_device_arrays((condition, x, y), []), made, replay=_replay(_recorded(np.where, *_dev((condition, x, y))), made))
    return made


def copyto(dst, src, casting="same_kind", where=None):
    if _fusing.trace is not None:          # CuPy traces it as an elementwise copy, or a where into dst
        if where is None:
            return _trace_ufunc("copy", (src,), {"out": dst})
        return _trace_ufunc("where", (where, src, dst), {"out": dst})
    if type(dst) is not ndarray:
        raise _unsupported(dst)
    _before_write(dst)
    args = (dst._a, _dev(src))
    kwargs = dict(casting=casting, where=True if where is None else _dev(where))
    np.copyto(*args, **kwargs)
    _launch(sum(a.nbytes for a in _device_arrays((src, where), [])), dst.nbytes, _recorded(np.copyto, *args, **kwargs))


def split(ary, indices_or_sections, axis=0):
    if isinstance(indices_or_sections, np.ndarray):      # CuPy reads the cut points on the host
        indices_or_sections = indices_or_sections.tolist()
    return _wrap(np.split(_dev(ary), indices_or_sections, axis))


def array_split(ary, indices_or_sections, axis=0):
    if isinstance(indices_or_sections, np.ndarray):
        indices_or_sections = indices_or_sections.tolist()
    return _wrap(np.array_split(_dev(ary), indices_or_sections, axis))


def empty(shape, dtype=float, order="C"):
    return _new(_garbage(np.empty(shape, dtype=dtype, order=order)))


def empty_like(prototype, dtype=None, order="K", subok=None, shape=None):
    return _new(_garbage(np.empty_like(_dev(prototype), dtype=dtype, order=order, shape=shape)))


def asarray(a, dtype=None, order=None, *, blocking=False):
    if type(a) is ndarray:
        if dtype is None or np.dtype(dtype) == a.dtype:
            return a
        made = _new(a._a.astype(dtype))
        _launch(a.nbytes, made.nbytes, _replay(_recorded(np.ndarray.astype, a._a, dtype), made))
        return made
    return _upload(a, dtype)


def array(obj, dtype=None, copy=True, order="K", subok=False, ndmin=0, *, blocking=False):
    if type(obj) is ndarray:
        made = _new(np.array(obj._a, dtype=dtype, copy=copy, order=order, ndmin=ndmin))
        _count_call([obj._a], made, replay=_replay(_recorded(np.array, obj._a, dtype=dtype, order=order, ndmin=ndmin), made))
        return made
    return _upload(obj, dtype, ndmin)


def ascontiguousarray(a, dtype=None):
    if type(a) is ndarray:
        made = _new(np.ascontiguousarray(a._a, dtype=dtype))
        _count_call([a._a], made, replay=_replay(_recorded(np.ascontiguousarray, a._a, dtype=dtype), made))
        return made
    return _upload(a, dtype)


def asnumpy(a, stream=None, order="C", out=None, *, blocking=True):
    if type(a) is ndarray:
        return a.get(stream=stream, order=order, out=out)
    if out is not None:
        out[...] = a
        return out
    return np.asarray(a, order=order)


def get_array_module(*args):
    return _cupy if any(type(a) is ndarray for a in args) else np


def array2string(a, *args, **kwargs):
    return np.array2string(asnumpy(a), *args, **kwargs)


def array_repr(arr, max_line_width=None, precision=None, suppress_small=None):
    return np.array_repr(asnumpy(arr), max_line_width, precision, suppress_small)


def array_str(arr, max_line_width=None, precision=None, suppress_small=None):
    return np.array_str(asnumpy(arr), max_line_width, precision, suppress_small)


def result_type(*arrays_and_dtypes):
    return np.result_type(*(a.dtype if type(a) is ndarray else a for a in arrays_and_dtypes))


def shape(a):
    return a.shape if type(a) is ndarray else np.shape(a)


def ndim(a):
    return a.ndim if type(a) is ndarray else np.ndim(a)


_MODULE_FUNCS: dict[str, Any] = {}
for _name in _UFUNCS + _ROUTINES:
    _MODULE_FUNCS[_name] = _routine(_name)
for _name in ("array_equal", "allclose", "count_nonzero"):    # CuPy answers with a 0-d device array
    _MODULE_FUNCS[_name] = _routine(_name, result=_to_device_result)
for _name in ("nonzero", "argwhere", "flatnonzero", "unique"):
    _MODULE_FUNCS[_name] = _synchronising(_name)
for _fn in (where, copyto, split, array_split, empty, empty_like, asarray, array, ascontiguousarray, asnumpy,
            get_array_module, array2string, array_repr, array_str, result_type, shape, ndim):
    _fn.__module__ = "cupy"
    _MODULE_FUNCS[_fn.__name__] = _fn
_MODULE_FUNCS["abs"] = _MODULE_FUNCS["absolute"]
for _name in ("partition", "argpartition"):
    _MODULE_FUNCS[_name] = _kth_checked(_name, _MODULE_FUNCS[_name])
    setattr(ndarray, _name, _kth_checked(_name, getattr(ndarray, _name)))

# Types and constants that CuPy takes over from NumPy unchanged.
_NUMPY_NAMES = ("bool_ int8 int16 int32 int64 uint8 uint16 uint32 uint64 float16 float32 float64 complex64 "
                "complex128 intp dtype finfo iinfo issubdtype isscalar can_cast integer floating signedinteger "
                "unsignedinteger number generic inexact newaxis inf nan pi e").split()


# ------------------------------------------------------------------------------ cupy.fuse
# CuPy's classic tracer (cupy/_core/fusion.pyx) runs the fused function once per argument types on
# proxies that record each ufunc call, and compiles what it recorded into one ElementwiseKernel, or
# one ReductionKernel when the function calls one reduction (elementwise "pre-map" before it,
# elementwise "post-map" on its result). What it cannot trace it hands to its newer tracer
# (new_fusion), whose launches the stand-in does not model: the stand-in refuses those functions.
# The proxies here carry the NumPy value each op computes, so the function's results are what
# NumPy computes running it unfused, in the same order; one launch is counted per call.
class _FuseState(threading.local):
    trace = None                              # the _Trace of the fused call being traced, if any


_fusing = _FuseState()


class _Trace:
    def __init__(self, shape: tuple) -> None:
        self.shape = shape                    # the kernel's shape: its array arguments broadcast
        self.reduced = None                   # after the reduction: the reduced shape
        self.written: list = []               # arguments written in place


def _refuse(what: str) -> TypeError:
    return TypeError(f"cupy.fuse cannot trace {what} (the CuPy stand-in refuses what CuPy's fusion.pyx "
                     "cannot compile into one kernel)")


class _Var:
    """A tracing proxy (CuPy's ``_FusionVarArray``/``_FusionVarScalar``) holding the NumPy value it stands for."""

    __slots__ = ("_v", "_post", "_array", "_arg")
    __array_ufunc__ = None                    # numpy.exp(proxy) raises: CuPy's proxies do not take NumPy's ufuncs

    def __init__(self, value: Any, post: bool, array: bool, arg: bool = False) -> None:
        self._v, self._post, self._array, self._arg = value, post, array, arg

    dtype = property(lambda self: np.result_type(self._v))
    ndim = property(lambda self: np.ndim(self._v) if self._array else -1)

    def __getattr__(self, name):
        raise AttributeError(f"cupy.fuse's proxies have no .{name} (a fused function sees no shapes, values or "
                             "methods but astype and copy; call the module's functions)")

    def __array__(self, dtype=None, copy=None):
        raise _refuse("a NumPy function on a proxy (call the fused module's own functions)")

    def __bool__(self):
        raise _refuse("a proxy's truth value (a Python `if` on an array)")

    def __float__(self):
        raise _refuse("float() of a proxy")

    __int__ = __index__ = __complex__ = __float__

    def __len__(self):
        raise _refuse("len() of a proxy")

    def __getitem__(self, index):
        raise _refuse("indexing a proxy")

    def __setitem__(self, index, value):
        if index is not Ellipsis and index != slice(None):
            raise ValueError("The fusion supports `[...]` or `[:]`.")
        _trace_ufunc("copy", (value,), {"out": self})

    def astype(self, dtype, order=None, casting=None, subok=None, copy=True):
        if order is not None or casting is not None or subok is not None:
            raise TypeError("order, casting and subok are not supported yet")
        if not copy and self.dtype == np.dtype(dtype):
            return self
        return _trace_ufunc("astype", (self,), {}, dtype=np.dtype(dtype))

    def copy(self):
        return _trace_ufunc("copy", (self,), {})

    def __neg__(self):
        return _trace_ufunc("negative", (self,), {})

    def __invert__(self):
        return _trace_ufunc("invert", (self,), {})


def _var_operator(ufunc: str) -> tuple:
    def op(self, other):
        return _trace_ufunc(ufunc, (self, other), {})

    def rop(self, other):
        return _trace_ufunc(ufunc, (other, self), {})

    def iop(self, other):
        if not self._array:                   # CuPy's scalar proxies have no in-place operators: Python rebinds
            return _trace_ufunc(ufunc, (self, other), {})
        return _trace_ufunc(ufunc, (self, other), {"out": self})

    return op, rop, iop


for _op, _ufunc in _OPERATORS.items():
    for _prefix, _fn in zip(("", "r", "i"), _var_operator(_ufunc)):
        setattr(_Var, f"__{_prefix}{_op}__", _fn)
for _op, _ufunc in {"lt": "less", "le": "less_equal", "eq": "equal", "ne": "not_equal", "gt": "greater",
                    "ge": "greater_equal"}.items():
    setattr(_Var, f"__{_op}__", _var_operator(_ufunc)[0])
_Var.__hash__ = None


def _traced_var(x: Any, trace: _Trace) -> _Var:
    """An operand of a traced call as a proxy: a proxy of the current phase, or a Python/NumPy scalar constant."""
    if type(x) is _Var:
        if x._post != (trace.reduced is not None):
            raise _refuse("an operation mixing values from before and after the reduction (CuPy: 'Shape mismatch')")
        return x
    if isinstance(x, (bool, int, float, complex, np.generic)):
        return _Var(x, trace.reduced is not None, False)
    if type(x) is ndarray:
        raise _refuse("a device array that is not an argument of the fused function (a closure's, a global's)")
    raise _refuse(f"an operand of type {type(x).__name__} (Unsupported type)")


# The functions besides the ufuncs that fusion.pyx traces, with their number of inputs.
_FUSED_EXTRA_NIN = {"where": 3, "clip": 3, "copy": 1, "astype": 1}
_FUSED_REDUCTIONS = frozenset("sum prod max min amax amin all any".split())


def _trace_ufunc(name: str, args: tuple, kwargs: dict, dtype: Any = None) -> Any:
    trace = _fusing.trace
    nin = _FUSED_EXTRA_NIN.get(name) or getattr(np, name).nin
    kwargs = dict(kwargs)
    outs = list(args[nin:]) + ([kwargs.pop("out")] if kwargs.get("out") is not None else [])
    kwargs.pop("out", None)
    if kwargs:
        raise _refuse(f"cupy.{name} with the keyword(s) {sorted(kwargs)} (a fused ufunc takes only out=)")
    if len(args) < nin or len(outs) > 1:
        raise ValueError("invalid number of arguments")
    ins = [_traced_var(a, trace) for a in args[:nin]]
    out = _traced_var(outs[0], trace) if outs else None
    if out is not None and (not out._array or out.ndim < max(v.ndim for v in ins)):
        raise _refuse("an out= that is not an array of the kernel's shape ('return arrays must be of ArrayType')")
    values = [v._v for v in ins]
    if name == "astype":
        value = np.asarray(values[0]).astype(dtype)
    elif name == "copy":
        value = np.copy(values[0])
    elif name in ("where", "clip"):
        value = getattr(np, name)(*values)
    else:
        value = getattr(np, name)(*values, out=None if out is None else out._v)
    if out is not None:
        if out._v is not value:               # where, clip, copy, astype into out: an elementwise copy
            np.copyto(out._v, value, casting="same_kind")
        if out._arg and not any(out._v is w for w in trace.written):
            trace.written.append(out._v)
        return out
    is_array = any(v._array for v in ins)
    return _Var(np.asarray(value) if is_array else value, trace.reduced is not None, is_array)


def _trace_reduction(name: str, args: tuple, kwargs: dict) -> _Var:
    trace = _fusing.trace
    kwargs = dict(kwargs)
    axis = args[1] if len(args) > 1 else kwargs.pop("axis", None)
    if kwargs.pop("keepdims", False):
        raise _refuse(f"cupy.{name} with keepdims=True (NotImplementedError in fusion)")
    if any(v is not None for v in kwargs.values()) or len(args) > 2:
        raise _refuse(f"cupy.{name} with {sorted(k for k, v in kwargs.items() if v is not None)} (only axis=)")
    if not (axis is None or isinstance(axis, (int, tuple))) or type(axis) is bool:
        raise _refuse(f"cupy.{name} along an axis that is not a Python int or tuple (a traced value?)")
    if trace.reduced is not None:
        raise _refuse("a second reduction (CuPy: 'Multiple reduction is not implemented yet')")
    arg = _traced_var(args[0], trace)
    if not arg._array:
        raise _refuse(f"cupy.{name} of a scalar")
    # The kernel reduces the value broadcast to the kernel's shape.
    full = np.broadcast_to(arg._v, trace.shape)
    value = np.asarray(getattr(np, name)(full, axis=axis))
    trace.reduced = value.shape
    return _Var(value, True, value.ndim > 0)


def _traced_routine(name: str, args: tuple, kwargs: dict) -> Any:
    if name in _FUSED_REDUCTIONS:
        return _trace_reduction(name, args, kwargs)
    if name in _FUSED_EXTRA_NIN or name in _UFUNCS:         # CuPy's elementwise ufuncs (not matmul)
        return _trace_ufunc(name, args, kwargs)
    raise _refuse(f"cupy.{name}")


class Fusion:
    """``cupy.fuse``'s result: the function traced on proxies and counted as one kernel per call."""

    def __init__(self, func: Any, name: Any = None) -> None:
        self.func = func
        self.name = name or func.__name__

    def __repr__(self):
        return f"<Fusion '{self.name}'>"

    def __call__(self, *args):
        if _fusing.trace is not None:         # a fused function called inside another: inlined, as in CuPy
            return self.func(*args)
        if not any(type(a) is ndarray for a in args):
            return self.func(*args)           # no device array: CuPy calls the plain function
        for a in args:
            if not (type(a) is ndarray or a is None or isinstance(a, (bool, int, float, complex, np.generic))):
                raise TypeError(f"Invalid argument type for '{self.name}': ({type(a)})")
        arrays = [a._a for a in args if type(a) is ndarray]
        _before_write(*arrays)                # an argument may be assigned in place
        values = [a._a if type(a) is ndarray else a for a in args]
        result, trace = self._trace(values)
        return self._results(result, trace, arrays, values)

    def _trace(self, values: list) -> tuple[Any, _Trace]:
        """Run the function on proxies of ``values`` (the arguments, device arrays as their NumPy arrays)."""
        trace = _Trace(np.broadcast_shapes(*(a.shape for a in values if isinstance(a, np.ndarray))))
        proxies = [None if a is None else _Var(a, False, True, arg=True) if isinstance(a, np.ndarray)
                   else _Var(a, False, False) for a in values]
        _fusing.trace = trace
        try:
            result = self.func(*proxies)
        finally:
            _fusing.trace = None
        return result, trace

    def _results(self, result: Any, trace: _Trace, arrays: list, values: list) -> Any:
        single = not isinstance(result, tuple)
        returned = [result] if single else list(result)
        shape = trace.shape if trace.reduced is None else trace.reduced
        made = []
        for v in returned:
            if v is None:
                continue
            if type(v) is not _Var:
                raise TypeError(f"Fusion function can't return {type(v)}")
            _traced_var(v, trace)             # a pre-map value returned after the reduction: refused
            made.append(_new(np.array(np.broadcast_to(v._v, shape), dtype=v.dtype)))
        _launch(sum(a.nbytes for a in arrays), sum(m.nbytes for m in made) + sum(w.nbytes for w in trace.written),
                self._replayer(values, [m._a for m in made]))
        if result is None:
            return None
        found = iter(made)
        out = [None if v is None else next(found) for v in returned]
        return out[0] if single else tuple(out)

    def _replayer(self, values: list, targets: list) -> Any:
        """Under stream capture: the kernel again on the arguments' values at replay, into the same outputs."""
        if _capture.graph is None:
            return None
        held = _held((values, targets))

        def replay():
            values, targets = _deref(held)
            result, _ = self._trace(values)
            returned = [v for v in (result if isinstance(result, tuple) else (result,)) if v is not None]
            for target, v in zip(targets, returned):
                target[...] = np.broadcast_to(v._v, target.shape)
        return replay


def fuse(*args, **kwargs):
    """``cupy.fuse``: as a decorator, bare or with ``kernel_name=``."""
    def wrapper(f, kernel_name=None):
        return functools.update_wrapper(Fusion(f, kernel_name), f)

    if len(args) == 1 and not kwargs and callable(args[0]):
        return wrapper(args[0])
    return lambda f: wrapper(f, *args, **kwargs)


fuse.__module__ = Fusion.__module__ = "cupy"


# ------------------------------------------------------------------------------ random
class BitGenerator:
    """Base of the stand-in's bit generators (CuPy's keep their state on the device)."""

    def __init__(self, seed=None):
        if isinstance(seed, np.ndarray) or type(seed) is ndarray:
            raise TypeError("the CuPy stand-in takes an int seed")
        # Philox, not NumPy's default PCG64: like cuRAND's XORWOW, a stream unlike the CPU's.
        self._numpy = np.random.Generator(np.random.Philox(seed))

    def random_raw(self, size=None, out=False):
        raw = _new(np.asarray(self._numpy.integers(0, 2 ** 32, size=size, dtype=np.uint32)))
        return raw if out else None


BitGenerator.__module__ = "cupy.random"


class XORWOW(BitGenerator):
    """Stands in for CuPy's default bit generator."""

    def __init__(self, seed=None, *, size=-1):
        super().__init__(seed)

    def state(self):
        """A device pointer to the state, as CuPy's (not a dict: it cannot be read or set from the host)."""
        return id(self)


XORWOW.__module__ = "cupy.random"


class Generator:
    """``cupy.random.Generator``: only the methods the real one implements, drawing device arrays."""

    def __init__(self, bit_generator):
        if not isinstance(bit_generator, BitGenerator):
            raise TypeError("Generator needs a cupy.random BitGenerator")
        self.bit_generator = bit_generator

    def _host(self) -> np.random.Generator:
        return self.bit_generator._numpy

    def random(self, size=None, dtype=np.float64, out=None):
        dtype = np.dtype(dtype)
        # CuPy draws float64 for 'd' and float32 for anything else, then casts.
        draws = np.asarray(self._host().random(size=() if size is None else size,
                                              dtype=np.float64 if dtype.char == "d" else np.float32))
        if out is not None:
            if type(out) is not ndarray:
                raise TypeError("out must be a cupy.ndarray")
            out._a[...] = draws
            return out
        return _new(draws.astype(dtype, copy=False))

    def standard_normal(self, size=None, dtype=np.float64, out=None):
        dtype = np.dtype(dtype)
        if dtype.char not in "fd":
            raise TypeError(f"Unsupported dtype {dtype.name} for standard_normal")
        draws = np.asarray(self._host().standard_normal(size=() if size is None else size, dtype=dtype))
        if out is not None:
            out._a[...] = draws
            return out
        return _new(draws)

    def uniform(self, low=0.0, high=1.0, size=None, dtype=np.float64):
        low, high = _dev(asarray(low)), _dev(asarray(high))
        size = np.broadcast_shapes(low.shape, high.shape) if size is None else size
        dtype = np.dtype(dtype)
        draws = self._host().random(size=size, dtype=np.float64 if dtype.char == "d" else np.float32)
        return _new(np.asarray(low + (high - low) * draws).astype(dtype, copy=False))

    def integers(self, low, high=None, size=None, dtype=np.int64, endpoint=False):
        low, high = (0, int(low)) if high is None else (int(low), int(high))
        draws = self._host().integers(low, high, size=() if size is None else size, dtype=dtype, endpoint=endpoint)
        return _new(np.asarray(draws))


Generator.__module__ = "cupy.random"


def _drawing(method: Any) -> Any:
    """A generator method that counts its draws as one kernel writing them (cuRAND's)."""
    @functools.wraps(method)
    def draw(self, *args, **kwargs):
        made = method(self, *args, **kwargs)
        _launch(0, made.nbytes)
        return made
    return draw


for _name in ("random", "standard_normal", "uniform", "integers"):
    setattr(Generator, _name, _drawing(getattr(Generator, _name)))


def default_rng(seed=None):
    """A ``Generator`` on the stand-in's XORWOW (seeded alike, it draws alike)."""
    if isinstance(seed, Generator):
        return seed
    if isinstance(seed, BitGenerator):
        return Generator(seed)
    return Generator(XORWOW(seed))


# ------------------------------------------------------------------------------- modules
def _module(name: str, doc: str, members: dict[str, Any]) -> types.ModuleType:
    module = types.ModuleType(name, doc)
    module.__dict__.update(members)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)     # importlib.util.find_spec works
    return module


def _get_device_count() -> int:
    return 1


def _get_device() -> int:
    return _current_device


def _is_available() -> bool:
    return True


def _mem_get_info() -> tuple[int, int]:
    """``cudaMemGetInfo``: (free, total) bytes; the stand-in has no device memory."""
    return 0, 0


def _get_device_properties(device: int) -> dict:
    return {"name": b"CuPy stand-in (NumPy)", "totalGlobalMem": 0}


class Device:
    """``cupy.cuda.Device``: the one device; synchronising does nothing (the stand-in is synchronous)."""

    def __init__(self, device: int = 0) -> None:
        self.id = int(device)

    def synchronize(self) -> None:
        if _capture.graph is not None:
            _refuse_in_capture("a device synchronisation")

    def use(self) -> None:
        """Make this the current device; as in CUDA, a number past the devices there is an error."""
        global _current_device
        if not 0 <= self.id < _get_device_count():
            raise RuntimeError(f"cudaErrorInvalidDevice: invalid device ordinal {self.id}")
        _current_device = self.id


class CUDARuntimeError(RuntimeError):
    """``cupy.cuda.runtime.CUDARuntimeError``: what CuPy raises when a CUDA runtime call fails."""


CUDARuntimeError.__module__ = "cupy.cuda.runtime"


def _refuse_in_capture(what: str) -> None:
    raise CUDARuntimeError(f"cudaErrorStreamCaptureUnsupported: operation not permitted when stream is capturing "
                           f"({what} inside a CUDA graph's capture: nothing has run yet, and a graph cannot "
                           "stop for the host at replay)")


class Stream:
    """``cupy.cuda.Stream``: the stand-in runs every op at once, so a stream orders nothing; it counts its
    synchronisations, is the current stream inside ``with``, and captures CUDA graphs (``begin_capture``)."""

    synchronizations = 0
    null: Stream

    def __init__(self, null: bool = False, non_blocking: bool = False, ptds: bool = False, priority: int = 0) -> None:
        self.ptr = 0 if null else id(self)
        self._previous: list = []

    def __enter__(self) -> Stream:
        self._previous.append(_capture.stream)
        _capture.stream = self
        return self

    def __exit__(self, *exc: Any) -> None:
        _capture.stream = self._previous.pop()

    def use(self) -> Stream:
        _capture.stream = self
        return self

    def synchronize(self) -> None:
        if _capture.graph is not None and _capture.graph._stream is self:
            _refuse_in_capture("a stream synchronisation")
        Stream.synchronizations += 1

    def begin_capture(self, mode: Any = None) -> None:
        """Record the calls made on this stream, while it is current, into a graph (``end_capture``)."""
        if self.ptr == 0:
            raise CUDARuntimeError("cudaErrorStreamCaptureUnsupported: the legacy null stream cannot be captured")
        if _capture.graph is not None:
            raise CUDARuntimeError("cudaErrorIllegalState: a capture is already in progress")
        _capture.graph = Graph._begin(self)

    def end_capture(self) -> Graph:
        graph = _capture.graph
        if graph is None or graph._stream is not self:
            raise CUDARuntimeError("cudaErrorIllegalState: this stream is not capturing")
        _capture.graph = None
        graph._end()
        return graph

    def is_capturing(self) -> bool:
        return _capture.graph is not None and _capture.graph._stream is self

    def record(self, event: Any = None) -> Event:
        """An event marking the work queued on this stream so far (the stand-in's work is already done)."""
        return event if event is not None else Event()

    def wait_event(self, event: Event) -> None:
        """Later work on this stream waits for ``event`` (nothing to wait for here)."""
        if type(event) is not Event:
            raise TypeError(f"wait_event needs a cupy.cuda.Event, got {type(event).__name__}")


class Event:
    """``cupy.cuda.Event``: a point in a stream's work; on the stand-in, always reached."""

    done = True

    def synchronize(self) -> None:
        pass


_current_device = 0
_STREAM = Stream(null=True)
Stream.null = _STREAM


def get_current_stream() -> Stream:
    """``cupy.cuda.get_current_stream``: the stream of the innermost ``with stream:``, else the null stream."""
    return _capture.stream or _STREAM


class MemoryPool:
    """``cupy.cuda.MemoryPool``: the stand-in allocates through NumPy, so the pool counts nothing. A private
    pool (not the default one) holds the memory of the CUDA graphs captured through it (``using_allocator``)
    until ``free_all_blocks`` or its own end: then a launch of those graphs fails, as it reads freed memory."""

    def __init__(self, allocator: Any = None) -> None:
        self._blocks: list = []

    def malloc(self, size: int) -> Any:
        raise NotImplementedError("the CuPy stand-in allocates through NumPy, never through a pool")

    def total_bytes(self) -> int:
        return 0

    def used_bytes(self) -> int:
        return 0

    def free_all_blocks(self, stream: Any = None) -> None:
        self._blocks.clear()


_POOL = MemoryPool()


class using_allocator:  # noqa: N801  (CuPy's name)
    """``cupy.cuda.using_allocator(allocator)``: allocations inside ``with`` come from ``allocator`` (a pool's
    ``malloc``). The stand-in allocates through NumPy all the same; under a CUDA graph's capture the
    allocator must be a private pool's ``malloc``, and that pool then holds the graph's memory."""

    def __init__(self, allocator: Any = None) -> None:
        self.allocator = allocator

    def __enter__(self) -> None:
        self._previous = _capture.allocator
        _capture.allocator = self.allocator

    def __exit__(self, *exc: Any) -> None:
        _capture.allocator = self._previous


# ----------------------------------------------------------------------------- CUDA graphs
# Stream capture (cudaStreamBeginCapture) records the kernels a stream is given instead of running
# them; cudaGraphLaunch runs them all again, with the same arguments, on the same memory. The
# stand-in needs the values to go on (shapes, and what the calls after need), so during capture each
# call runs and is recorded with a ``replay``: the same NumPy function on the same arrays (the fixed
# "addresses", held weakly), a Python number as it was at capture. At ``end_capture`` the capture is undone as a
# GPU would never have done it: arrays written that existed before are put back, and memory
# allocated under capture holds garbage until a launch fills it. A host read (or a host -> device
# copy) inside capture raises, as CUDA does; a call the stand-in cannot replay is refused.
class _CaptureState(threading.local):
    graph: Any = None          # the Graph being recorded, if any
    stream: Any = None         # the current stream (``with stream:``); None: the null stream
    allocator: Any = None      # ``using_allocator``'s allocator; None: the default pool


_capture = _CaptureState()


def _capturing() -> bool:
    """Is the current stream capturing? (Calls on another stream run as usual.)"""
    graph = _capture.graph
    return graph is not None and _capture.stream is graph._stream


def _before_write(*arrays: Any) -> None:
    """Under capture: keep what a call is about to write into memory that existed before the capture."""
    if _capture.graph is not None and _capturing():
        _capture.graph._keep([a._a if type(a) is ndarray else a for a in arrays if a is not None])


def _host_arrays(value: Any, found: list) -> list:
    if type(value) in (tuple, list):
        for v in value:
            _host_arrays(v, found)
    else:
        found.append(np.asarray(value))
    return found


def _root(a: np.ndarray) -> np.ndarray:
    """The NumPy array that owns ``a``'s memory (a view's base, its base's base ...): one device allocation."""
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


class _Address:
    """What NumPy needs to rebuild an array on memory it does not own, and the owner, kept while it is used."""

    def __init__(self, interface: dict, owner: np.ndarray) -> None:
        self.__array_interface__, self.owner = interface, owner


class _WeakView:
    """A device array as a CUDA graph holds it: an address, not a reference.

    CuPy's ``Graph`` keeps no array alive: it holds the device addresses its kernels were given. So
    the stand-in's replays hold the arrays they read and write through this, a weak reference to
    the allocation (``_root``) and the view's place in it; ``get`` rebuilds the view while the
    allocation lives and raises once Python has freed it (on a GPU its block would be handed to the
    next allocation, and the replay would read or write someone else's array).
    """

    __slots__ = ("_owner", "_interface", "_where")

    def __init__(self, a: np.ndarray, where: str) -> None:
        self._owner = weakref.ref(_root(a))
        self._interface = dict(a.__array_interface__)
        self._where = where

    def alive(self) -> bool:
        return self._owner() is not None

    def get(self) -> np.ndarray:
        owner = self._owner()
        if owner is None:
            raise CUDARuntimeError(f"the CuPy stand-in: a CUDA graph's kernel (recorded at {self._where}) reads or "
                                   "writes memory freed since the capture; on a GPU that block may already belong "
                                   "to another array (keep every array the graph uses alive as long as the graph)")
        return np.asarray(_Address(self._interface, owner))


def _held(obj: Any) -> Any:
    """``obj`` (tuples, lists, dicts searched) with each NumPy array as a ``_WeakView``, the graph's own list
    of them extended (under capture)."""
    if isinstance(obj, np.ndarray):
        view = _WeakView(obj, _caller())
        if _capture.graph is not None:
            _capture.graph._views.append(view)
        return view
    if type(obj) in (list, tuple):
        return type(obj)(_held(v) for v in obj)
    if type(obj) is dict:
        return {k: _held(v) for k, v in obj.items()}
    return obj


def _deref(obj: Any) -> Any:
    """``_held``'s inverse at replay: the arrays rebuilt (raises if one was freed)."""
    if type(obj) is _WeakView:
        return obj.get()
    if type(obj) in (list, tuple):
        return type(obj)(_deref(v) for v in obj)
    if type(obj) is dict:
        return {k: _deref(v) for k, v in obj.items()}
    return obj


def _recorded(func: Any, *args: Any, **kwargs: Any) -> Any:
    """Under capture: ``func(*args, **kwargs)`` as a replay (the NumPy arrays among them held as addresses,
    Python values frozen as they are now). None outside capture."""
    if _capture.graph is None:
        return None
    held = _held((args, kwargs))

    def replay():
        a, k = _deref(held)
        return func(*a, **k)
    return replay


def _replay(compute: Any, made: Any, out: Any = None) -> Any:
    """Under capture: a call's replay. ``compute()`` (``_recorded``) recomputes it from the arrays' current
    values; the result goes into the arrays ``made`` at capture (an ``out=`` it writes itself)."""
    if _capture.graph is None:
        return None
    if type(out) is ndarray:
        return compute
    targets = _held(_device_arrays(made, []))

    def replay():
        for target, value in zip(_deref(targets), _host_arrays(compute(), [])):
            target[...] = value
    return replay


def _private_pool(allocator: Any) -> MemoryPool:
    """The pool behind the allocator of an allocation under capture; anything but a private pool refused."""
    pool = getattr(allocator, "__self__", None)
    if type(pool) is not MemoryPool or pool is _POOL:
        raise CUDARuntimeError(
            "the CuPy stand-in: an array allocated during a CUDA graph's capture from CuPy's default memory pool "
            f"({_caller()}). Once Python frees it, its block goes back to the pool that every later allocation "
            "draws from, while the graph still writes it at every replay: capture inside "
            "cupy.cuda.using_allocator(pool.malloc) with a pool = cupy.cuda.MemoryPool() of the graph's own")
    return pool


class Graph:
    """``cupy.cuda.Graph``: made by ``Stream.end_capture``; ``launch`` replays the captured kernels (one launch).

    Like CuPy's, it keeps no array alive: its memory is the private pool's (``_allocate``), the rest
    the program's, and a launch after either was freed raises (``_WeakView``).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("cupy.cuda.Graph cannot be made directly: capture a stream (Stream.begin_capture)")

    @classmethod
    def _begin(cls, stream: Stream) -> Graph:
        graph = cls.__new__(cls)
        graph._stream, graph._allocator = stream, _capture.allocator
        graph._nodes, graph._made, graph._kept, graph._views = [], {}, [], []
        return graph

    def _add(self, read: int, written: int, replay: Any) -> None:
        if replay is None:
            raise NotImplementedError(f"the CuPy stand-in cannot replay this call in a CUDA graph: {_caller()}")
        self._nodes.append((replay, int(read), int(written)))

    def _allocate(self, arrays: list) -> None:
        """Fresh memory made under capture: the graph's own, held by the private pool it must come from."""
        for a in arrays:
            root = _root(a)
            if id(root) not in self._made:
                _private_pool(_capture.allocator)._blocks.append(root)
                self._made[id(root)] = root

    def _keep(self, arrays: list) -> None:
        for a in arrays:
            if id(_root(a)) not in self._made:
                self._kept.append((a, a.copy()))

    def _end(self) -> None:
        for a, before in reversed(self._kept):    # nothing ran: what existed holds what it held
            a[...] = before
        for a in self._made.values():              # and the graph's memory was never written
            _garbage(a)
        self._kept, self._made = [], {}           # the pool holds the graph's memory, not the graph

    def launch(self, stream: Any = None) -> None:
        """Run every captured kernel again, in order, on the arrays of the capture: one launch. Raises, before
        running any, if an array the graph reads or writes has been freed since the capture."""
        if _capture.graph is not None:
            raise NotImplementedError("the CuPy stand-in does not capture a graph's launch into another graph")
        for view in self._views:
            view.get()
        for replay, _, _ in self._nodes:
            replay()
        _launch(sum(n[1] for n in self._nodes), sum(n[2] for n in self._nodes), nodes=len(self._nodes))

    def upload(self, stream: Any = None) -> None:
        """``cudaGraphUpload``: nothing to do on the host."""


Graph.__module__ = Stream.__module__ = Event.__module__ = MemoryPool.__module__ = using_allocator.__module__ = "cupy.cuda"


def graph_nodes(graph: Graph) -> int:
    """The kernels a captured graph runs per launch (not CuPy's API: the stand-in's count)."""
    return len(graph._nodes)


def get_default_memory_pool() -> MemoryPool:
    return _POOL


_get_device_count.__name__ = "getDeviceCount"
_get_device.__name__ = "getDevice"
_get_device_properties.__name__ = "getDeviceProperties"
_is_available.__name__ = "is_available"
_mem_get_info.__name__ = "memGetInfo"
_runtime = _module("cupy.cuda.runtime", "CUDA runtime of the stand-in: one device, number 0.",
                   {"getDeviceCount": _get_device_count, "getDevice": _get_device,
                    "getDeviceProperties": _get_device_properties, "CUDARuntimeError": CUDARuntimeError,
                    "memGetInfo": _mem_get_info})
_cuda = _module("cupy.cuda", "CUDA of the stand-in.", {"runtime": _runtime, "is_available": _is_available,
                                                      "Device": Device, "MemoryPool": MemoryPool,
                                                      "Stream": Stream, "get_current_stream": get_current_stream,
                                                      "Graph": Graph, "Event": Event,
                                                      "using_allocator": using_allocator})
_random = _module("cupy.random", "Random numbers of the stand-in.",
                  {"default_rng": default_rng, "Generator": Generator, "BitGenerator": BitGenerator, "XORWOW": XORWOW})
_cupy = _module("cupy", "A strict CuPy stand-in for machines without a GPU (tests/fake_cupy.py).",
                {**_MODULE_FUNCS, **{name: getattr(np, name) for name in _NUMPY_NAMES}, "ndarray": ndarray,
                 "cuda": _cuda, "random": _random, "__version__": "0.0.0+stand-in",
                 "get_default_memory_pool": get_default_memory_pool, "fuse": fuse})


def scatter_add(a, slices, value):
    """``a[slices] += value`` with repeated indices summed (``cupyx.scatter_add``)."""
    if type(a) is not ndarray:
        raise TypeError(f"scatter_add needs a cupy.ndarray, got {type(a)}")
    a.scatter_add(slices, value)


scatter_add.__module__ = "cupyx"
_cupyx = _module("cupyx", "cupyx of the stand-in.", {"scatter_add": scatter_add})

MODULES = {"cupy": _cupy, "cupy.cuda": _cuda, "cupy.cuda.runtime": _runtime, "cupy.random": _random,
           "cupyx": _cupyx}
_saved: dict[str, types.ModuleType] = {}


def _is_cupy_name(name: str) -> bool:
    return name in ("cupy", "cupyx") or name.startswith(("cupy.", "cupyx.", "cupy_backends"))


def installed() -> bool:
    return sys.modules.get("cupy") is _cupy


def install() -> types.ModuleType:
    """Register the stand-in as ``cupy``/``cupyx``; npgpt then sees one CUDA device. Returns the ``cupy`` module.

    A real CuPy imported before is put aside (``uninstall`` brings it back), and
    ``npgpt.backend``'s cached view of CuPy is reset, so the order of imports does not matter.
    """
    if not installed():
        for name in [n for n in sys.modules if _is_cupy_name(n)]:
            _saved[name] = sys.modules.pop(name)
        sys.modules.update(MODULES)
    _reset_backend(_cupy, None)
    return _cupy


def uninstall() -> None:
    """Remove the stand-in and restore what ``install`` put aside."""
    if not installed():
        return
    for name in MODULES:
        sys.modules.pop(name, None)
    sys.modules.update(_saved)
    _saved.clear()
    _reset_backend(None, None)


def _reset_backend(cupy: Any, error: Any) -> None:
    backend = sys.modules.get("npgpt.backend")
    if backend is not None:
        backend._cupy, backend._cupy_error, backend._cuda_checked = cupy, error, None
