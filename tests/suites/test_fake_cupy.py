"""The CuPy stand-in (tests/fake_cupy.py) is as strict as CuPy, exposes only CuPy's names, and counts copies.

These tests run in every pass: they use the stand-in's modules directly, or install it for the
length of one test. The API comparison reads the names of the installed real CuPy in a
subprocess (it imports without a GPU), so it is not fooled by the stand-in in ``sys.modules``.
"""

import copy
import json
import operator
import subprocess
import sys

import fake_cupy
import numpy as np
import pytest

import npgpt
import npgpt.functional as F
from npgpt import backend

cp = fake_cupy.MODULES["cupy"]

# Which of the stand-in's names the real CuPy has, asked of a fresh interpreter that never saw the
# stand-in. hasattr, not dir(): CuPy creates some names (cupy.random.Generator) on first access.
_REAL_API = r"""
import functools, json, sys
import cupy, cupyx, cupy.cuda.runtime
wanted = json.load(sys.stdin)
objects = {"cupy": cupy, "cupyx": cupyx, "cupy.cuda": cupy.cuda, "cupy.cuda.runtime": cupy.cuda.runtime,
           "cupy.random": cupy.random, "ndarray": cupy.ndarray, "Generator": cupy.random.Generator,
           "XORWOW": cupy.random.XORWOW, "BitGenerator": cupy.random.BitGenerator}
print(json.dumps({key: [n for n in names if hasattr(objects[key], n)] for key, names in wanted.items()}))
"""


def _names(obj, dunders=False):
    names = {n for n in dir(obj) if not n.startswith("_")}
    if dunders:                                  # the protocols a class implements itself
        names |= {n for n in vars(obj) if n.startswith("__") and n not in ("__slots__", "__dict__", "__weakref__")}
    return names


STAND_IN = {**{name: _names(module) for name, module in fake_cupy.MODULES.items()},
            "ndarray": _names(fake_cupy.ndarray, dunders=True), "Generator": _names(cp.random.Generator),
            "XORWOW": _names(cp.random.XORWOW), "BitGenerator": _names(cp.random.BitGenerator)}
STAND_IN["cupy"] |= {"nditer"}        # a name CuPy lacks, asked about too: the check must be able to fail


@pytest.fixture(scope="module")
def real_api():
    """For each object of the stand-in, the subset of its names that the real CuPy's counterpart has."""
    wanted = json.dumps({key: sorted(names) for key, names in STAND_IN.items()})
    proc = subprocess.run([sys.executable, "-c", _REAL_API], input=wanted, capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"the real CuPy does not import here: {proc.stderr.strip().splitlines()[-1:]}")
    return {key: set(names) for key, names in json.loads(proc.stdout).items()}


@pytest.fixture
def installed():
    """The stand-in installed for this test (left installed if the whole session runs on it)."""
    was = fake_cupy.installed()
    module = fake_cupy.install()
    yield module
    if not was:
        fake_cupy.uninstall()


def _public(obj):
    return {n for n in dir(obj) if not n.startswith("_")}


# ------------------------------------------------------------------------ only CuPy's names
@pytest.mark.parametrize("name", ["cupy", "cupyx", "cupy.cuda", "cupy.cuda.runtime", "cupy.random", "ndarray",
                                  "Generator", "XORWOW", "BitGenerator"])
def test_every_name_of_the_stand_in_exists_in_the_real_cupy(real_api, name):
    extra = STAND_IN[name] - real_api[name] - ({"nditer"} if name == "cupy" else set())
    assert not extra, f"{name} of the stand-in has names the real CuPy lacks: {sorted(extra)}"


def test_the_api_check_can_fail(real_api):
    # The stand-in was asked about nditer too: the real CuPy has no nditer, so offering it would fail.
    assert "nditer" in STAND_IN["cupy"] and "nditer" not in real_api["cupy"]


def test_the_names_npgpt_needs_are_real_cupy_names(real_api):
    assert {"default_rng", "Generator"} <= real_api["cupy.random"]
    assert "scatter_add" in real_api["cupyx"] and "getDeviceCount" in real_api["cupy.cuda.runtime"]
    assert {"random", "standard_normal"} <= real_api["Generator"] and "state" in real_api["XORWOW"]
    # a Generator instance adds one public attribute, bit_generator, which CuPy's __init__ sets too
    assert _public(cp.random.default_rng(0)) - _public(cp.random.Generator) == {"bit_generator"}


# ------------------------------------------------------------------------- as strict as CuPy
def test_device_arrays_are_not_numpy_arrays_and_refuse_implicit_conversion():
    a = cp.asarray(np.arange(6.0).reshape(2, 3))
    assert not isinstance(a, np.ndarray) and type(a).__module__ == "cupy" and backend.is_cupy_array(a)
    for convert in (np.asarray, np.array, lambda x: x.__array__(), lambda x: np.ascontiguousarray(x)):
        with pytest.raises(TypeError):
            convert(a)


OPERATORS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv, "**": operator.pow,
             "@": operator.matmul, "<": operator.lt, "==": operator.eq}


@pytest.mark.parametrize("op", list(OPERATORS))
def test_mixing_a_device_array_with_a_host_array_raises_in_both_orders(op):
    apply = OPERATORS[op]
    a = cp.asarray(np.ones((3, 3)))
    for left, right in ((a, np.ones((3, 3))), (np.ones((3, 3)), a)):
        with pytest.raises(TypeError):
            apply(left, right)
    if op in "+-*/**":                                 # (CuPy compares with a 0-d host array's item)
        with pytest.raises(TypeError):
            apply(a, np.ones(()))                     # a 0-d host array is a host array too


def test_in_place_ops_and_ufuncs_with_host_arrays_raise():
    a = cp.zeros(3)
    with pytest.raises(TypeError):
        a += np.ones(3)
    with pytest.raises(TypeError):
        np.add(a, np.ones(3))
    with pytest.raises(TypeError):
        np.multiply(np.ones(3), 2.0, out=a)
    with pytest.raises(TypeError):
        cp.concatenate([a, np.ones(3)])


def test_scalars_mix_freely_as_in_cupy():
    a = cp.asarray(np.array([1.0, 2.0], np.float32))
    for value in (2.0 * a, a * 2, a / np.float32(2), a + True, 1 - a, np.float64(3) * a):
        assert type(value) is fake_cupy.ndarray
    assert (a * 2.0).dtype == np.float32              # a Python float is weak, as NEP 50 says
    assert (a > 1.5).dtype == bool and type(np.exp(a)) is fake_cupy.ndarray   # ufuncs dispatch


def test_numpy_functions_dispatch_like_cupys_array_function():
    a = cp.arange(6.0).reshape(2, 3)
    assert type(np.concatenate([a, a])) is fake_cupy.ndarray
    assert type(np.sum(a)) is fake_cupy.ndarray and np.sum(a).ndim == 0      # 0-d, never a NumPy scalar
    with pytest.raises(TypeError):
        np.add.at(a, cp.asarray([0]), 1.0)          # CuPy has no ufunc.at through NumPy: cupyx.scatter_add
    with pytest.raises(TypeError):
        np.nditer(a)                                 # not in CuPy at all


def test_reductions_and_indexing_give_device_arrays():
    a = cp.arange(6).reshape(2, 3)
    for value in (a.sum(), a.max(), a[0, 1], a.argmax(), cp.dot(a[0], a[1])):
        assert type(value) is fake_cupy.ndarray and value.ndim == 0


def test_integer_array_indices_wrap_around_as_in_cupy():
    a = cp.arange(4)
    assert a[cp.asarray([5, -1])].get().tolist() == [1, 3]
    with pytest.raises(IndexError):
        a[7]                                         # a scalar index is still checked


def test_empty_arrays_are_garbage_not_zeros():
    assert np.isnan(cp.empty(3).get()).all()
    assert (cp.empty_like(cp.zeros(2, np.int64)).get() != 0).all()


# ------------------------------------------------------------------------------- counting
def test_every_kind_of_copy_is_counted():
    fake_cupy.reset_transfers()
    a = cp.asarray(np.arange(4.0))                   # host -> device
    b = cp.array([1.0, 2.0, 3.0, 4.0])               # host -> device
    c = cp.asarray(2.0)                               # a number is copied too
    assert fake_cupy.transfers() == {"to_host": 0, "to_device": 3}
    _ = (a + b, a * c, a.sum(), cp.asarray(a), a.copy())     # on the device: nothing crosses
    assert fake_cupy.transfers() == {"to_host": 0, "to_device": 3}
    reads = [a.get(), cp.asnumpy(b), a[0].item(), float(c), int(a[1]), bool(a[2]), a.tolist(), repr(a), str(a),
             f"{c}", a[a > 1], a.nonzero()]
    assert len(reads) == 12 and fake_cupy.transfers() == {"to_host": 12, "to_device": 3}
    a[np.array([0, 1])] = np.array([7.0, 8.0])        # a host index and host values: two copies
    assert fake_cupy.transfers() == {"to_host": 12, "to_device": 5}
    assert [kind for kind, _, _ in fake_cupy.transfer_log()].count("to_device") == 5
    assert "test_fake_cupy.py" in fake_cupy.transfer_log()[0][1]     # where the copy was asked for


def _launches(work):
    fake_cupy.reset_kernels()
    work()
    return fake_cupy.kernels()


def test_every_kernel_is_counted_and_views_are_not():
    a = cp.ones((4, 8), dtype=np.float32)                           # 128 bytes
    ids, positive = cp.zeros(2, np.int64), a > 0
    views = (lambda: a.T, lambda: a.reshape(32), lambda: a[1:3], lambda: a.swapaxes(0, 1),
             lambda: a.astype(np.float32, copy=False), lambda: cp.empty((4, 8)), lambda: cp.split(a, 2))
    for view in views:
        assert _launches(view)["launches"] == 0
    kernels = (lambda: a + 1, lambda: cp.add(a, a, out=a), lambda: a.sum(axis=1), lambda: a @ a.T,
               lambda: a.T.reshape(32), lambda: a.copy(), lambda: a.astype(np.float64), lambda: cp.zeros(3),
               lambda: a[ids], lambda: a.__setitem__(0, 2.0), lambda: a.fill(1.0),
               lambda: cp.where(positive, a, 0.0), lambda: cp.exp(a, out=a), lambda: cp.random.default_rng(0).random(3))
    for kernel in kernels:
        assert _launches(kernel)["launches"] == 1
    assert _launches(lambda: a + a) == {"launches": 1, "bytes_read": 256, "bytes_written": 128}
    assert _launches(lambda: cp.multiply(a, a, out=a)) == {"launches": 1, "bytes_read": 256, "bytes_written": 128}
    assert _launches(lambda: a.sum()) == {"launches": 1, "bytes_read": 128, "bytes_written": 4}
    assert _launches(lambda: (a * 2 + 1).sum())["launches"] == 3
    assert _launches(lambda: cp.zeros((2, 2)))["bytes_read"] == 0


def test_launches_are_counted_by_site():
    a = cp.ones(3)
    fake_cupy.count_sites(True)
    try:
        fake_cupy.reset_kernels()
        for _ in range(3):
            a = a * 2
    finally:
        fake_cupy.count_sites(False)
    (site, n), = fake_cupy.kernel_sites().items()
    assert n == 3 and "test_fake_cupy.py" in site


def test_copies_are_copies():
    host = np.zeros(3)
    a = cp.asarray(host)
    host[0] = 1.0
    assert a.get()[0] == 0.0
    back = a.get()
    back[1] = 5.0
    assert a.get()[1] == 0.0
    assert copy.deepcopy(a).get().tolist() == [0.0, 0.0, 0.0]


# ---------------------------------------------------------------------------------- random
def test_generators_draw_device_arrays_reproducibly_and_keep_their_state_on_the_device():
    g1, g2 = cp.random.default_rng(5), cp.random.default_rng(5)
    x, y = g1.random((3, 4), dtype=np.float32), g2.random((3, 4), dtype=np.float32)
    assert type(x) is fake_cupy.ndarray and x.dtype == np.float32
    assert np.array_equal(x.get(), y.get())
    assert not np.array_equal(x.get(), np.random.default_rng(5).random((3, 4), dtype=np.float32))  # not NumPy's stream
    assert not isinstance(g1.bit_generator.state, dict)      # a method returning a device pointer, as CuPy's


# ---------------------------------------------------------------------- npgpt under the stand-in
def test_install_makes_npgpt_see_one_cuda_device(installed):
    assert backend.cuda_available() and backend.check_device("cuda") == "cuda"
    t = npgpt.tensor([1.0, 2.0]).to("cuda")
    assert t.device == "cuda" and backend.array_module(t.data) is installed


def _softmax_with_a_host_mask(x):
    """A deliberately wrong op: the causal mask is built with NumPy, on the host."""
    xp = backend.array_module(x)
    T = x.shape[-1]
    scores = x + np.triu(np.full((T, T), -np.inf), 1)      # fine on the CPU, a hidden copy on a GPU
    e = xp.exp(scores - scores.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_a_deliberately_bad_op_is_caught_on_the_device_but_not_on_the_cpu(installed):
    x = np.random.default_rng(0).standard_normal((2, 4, 4))
    expected = F.softmax_array(x + np.triu(np.full((4, 4), -np.inf), 1))
    np.testing.assert_allclose(_softmax_with_a_host_mask(x), expected)       # the CPU cannot tell
    with pytest.raises(TypeError, match="Unsupported type <class 'numpy.ndarray'>"):
        _softmax_with_a_host_mask(installed.asarray(x))                   # the stand-in can, as CuPy would


def test_a_host_copy_in_an_op_is_caught(installed):
    def bad_gelu_like(t):                                                    # np.asarray silently copies on a GPU
        return npgpt.Tensor(np.tanh(np.asarray(t.data)))

    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array"):
        bad_gelu_like(npgpt.tensor([1.0, 2.0], device="cuda"))


@pytest.mark.skipif(fake_cupy.installed(), reason="the whole session runs on the stand-in")
def test_uninstall_restores_the_machine_as_it_was(installed):
    fake_cupy.uninstall()
    assert not fake_cupy.installed() and sys.modules.get("cupy") is not cp
    fake_cupy.install()                              # the fixture uninstalls again
