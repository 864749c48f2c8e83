"""npgpt.backend.fuse and the CuPy stand-in's emulation of ``cupy.fuse`` (docs/gpu.md, "The launch and traffic budget").

Four things are checked:

* the stand-in traces a fused function as CuPy's classic tracer (``cupy/_core/fusion.pyx``) does:
  one launch per call, the values NumPy computes running the function unfused, and a refusal
  (``TypeError``/``AttributeError``/``ValueError``) for what that tracer cannot compile into one
  kernel, each refusal a case the tracer's source refuses;
* every fused kernel of npgpt traces on the stand-in (one launch), and gives there exactly what
  it gives on NumPy;
* every fused kernel of npgpt traces under the installed CuPy's own tracer (no GPU needed) into one
  kernel whose outputs have NumPy's types;
* each fused kernel computes its documented formula, written out here independently in float64.
"""

import json
import math
import os
import pathlib
import pickle
import subprocess
import sys

import fake_cupy
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import npgpt.functional as F
from npgpt import generation
from npgpt.backend import speed
from npgpt.backend.fuse import Fused, fuse
from npgpt.training import optim

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def cp():
    was = fake_cupy.installed()
    module = fake_cupy.install()
    fake_cupy.reset_kernels()
    yield module
    if not was:
        fake_cupy.uninstall()


def rows(seed, shape=(3, 5), dtype=np.float64):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# ------------------------------------------------------------------ the wrapper on NumPy
def test_on_numpy_the_kernel_function_itself_runs_with_numpy_as_its_module():
    seen = []

    def kernel(xp, a, k):
        seen.append(xp)
        s = a * k
        xp.exp(s, out=s)
        return s

    a = rows(0)
    got = fuse(kernel)(a, 0.5)
    assert seen == [np] and isinstance(fuse(kernel), Fused)
    assert np.array_equal(got, np.exp(a * 0.5))


def test_a_fused_kernel_pickles_by_reference_as_the_function_it_replaces():
    assert pickle.loads(pickle.dumps(F._gelu_forward)) is F._gelu_forward
    assert F._gelu_forward.__name__ == "_gelu_forward" and "GELU" in F._gelu_forward.__doc__


# ------------------------------------------------------------------ the stand-in's tracer
def test_a_fused_chain_is_one_launch_reading_its_inputs_once_and_writing_its_outputs(cp):
    def chain(xp, a, b, k):
        s = a * a
        s *= k
        xp.exp(s, out=s)
        return s + b, s

    a, b = rows(0, (4, 6), np.float32), rows(1, (6,), np.float32)
    y, s = fuse(chain)(cp.asarray(a), cp.asarray(b), 0.1)
    counted = fake_cupy.kernels()
    assert counted == {"launches": 1, "bytes_read": a.nbytes + b.nbytes, "bytes_written": 2 * a.nbytes}
    assert np.array_equal(y.get(), chain(np, a, b, 0.1)[0]) and y.dtype == np.float32
    assert np.array_equal(s.get(), chain(np, a, b, 0.1)[1])
    # Unfused, the same chain is four launches.
    fake_cupy.reset_kernels()
    chain(cp, cp.asarray(a), cp.asarray(b), 0.1)
    assert fake_cupy.kernels()["launches"] == 4


def test_one_reduction_with_a_pre_map_and_a_post_map_is_one_launch(cp):
    def kernel(xp, a, b):
        return xp.sqrt(xp.sum(a * b, axis=-1) + 1.0)

    a, b = rows(2, (4, 6)), rows(2, (4, 6))
    got = fuse(kernel)(cp.asarray(a), cp.asarray(b))
    assert fake_cupy.kernels()["launches"] == 1
    assert np.array_equal(got.get(), np.sqrt((a * a).sum(axis=-1) + 1.0)) and got.shape == (4,)


def test_in_place_writes_into_an_argument_land_in_it_and_are_counted(cp):
    def scale(xp, a, k):
        a *= k

    a = rows(4)
    x = cp.asarray(a)
    assert fuse(scale)(x, 3.0) is None
    assert np.array_equal(x.get(), a * 3.0)
    assert fake_cupy.kernels() == {"launches": 1, "bytes_read": a.nbytes, "bytes_written": a.nbytes}


def test_results_have_the_kernels_shape_a_smaller_value_comes_back_broadcast(cp):
    # As CuPy's ElementwiseKernel: every output has the shape of all array arguments broadcast.
    got = fuse(lambda xp, row, full: row * 2.0)(cp.asarray(rows(5, (3, 1))), cp.asarray(rows(6, (3, 4))))
    assert got.shape == (3, 4)


def test_a_reduction_reduces_its_value_broadcast_to_the_kernels_shape(cp):
    column, full = rows(7, (3, 1)), rows(8, (3, 4))
    got = fuse(lambda xp, c, f: xp.sum(c, axis=-1))(cp.asarray(column), cp.asarray(full))
    assert np.allclose(got.get(), 4 * column[:, 0])


def test_python_numbers_take_the_arrays_type_as_in_numpy_2(cp):
    got = fuse(lambda xp, a, k: a * k + 0.5)(cp.asarray(rows(9, dtype=np.float32)), 0.25)
    assert got.dtype == np.float32


def test_numbers_computed_in_the_kernel_are_float64_and_widen_a_float32_array(cp):
    # A number computed from an argument inside the kernel is a traced float64 value (CuPy: not weak).
    got = fuse(lambda xp, a, k: a * (1.0 - k))(cp.asarray(rows(10, dtype=np.float32)), 0.25)
    assert got.dtype == np.float64


def test_without_a_device_array_the_plain_function_runs(cp):
    assert cp.fuse(lambda a, b: a + b)(2, 3) == 5
    assert fake_cupy.kernels()["launches"] == 0


REFUSED = {
    "keepdims": lambda xp, a: xp.sum(a, axis=-1, keepdims=True),
    "a second reduction": lambda xp, a: xp.sum(xp.sum(a, axis=-1)),
    "a pre-map value after the reduction": lambda xp, a: xp.sum(a, axis=-1) + a,
    "an argument after the reduction": lambda xp, a, k=None: xp.sum(a, axis=-1),   # replaced below
    "a reduction as a method": lambda xp, a: a.sum(),
    "mean": lambda xp, a: xp.mean(a),
    "numpy's own ufunc": lambda xp, a: np.exp(a),
    "a dtype keyword": lambda xp, a: xp.subtract(1.0, a, dtype=a.dtype),
    "shape": lambda xp, a: a.shape,
    "indexing": lambda xp, a: a[0],
    "a truth value": lambda xp, a: a if a > 0 else -a,
    "a host array": lambda xp, a: a * np.ones(5),
    "a routine that is not a ufunc": lambda xp, a: xp.matmul(a, a),
}


def _after_reduction_uses_argument(xp, a, k):
    return xp.sum(a, axis=-1) * k


@pytest.mark.parametrize("what", sorted(REFUSED))
def test_what_cupys_tracer_cannot_compile_is_refused(cp, what):
    x = cp.asarray(rows(11))
    if what == "an argument after the reduction":
        with pytest.raises(TypeError, match="Shape mismatch"):
            fuse(_after_reduction_uses_argument)(x, 2.0)
        return
    with pytest.raises((TypeError, AttributeError)):
        fuse(REFUSED[what])(x)


def test_a_device_array_from_outside_the_function_is_refused(cp):
    outside = cp.asarray(rows(12))
    with pytest.raises(TypeError, match="not an argument"):
        fuse(lambda xp, a: a * outside)(cp.asarray(rows(13)))


def test_a_host_array_as_an_argument_is_refused(cp):
    with pytest.raises(TypeError, match="Invalid argument type"):
        fuse(lambda xp, a, b: a + b)(cp.asarray(rows(14)), [1.0, 2.0])


# ------------------------------------------------------------------ npgpt's kernels on the stand-in
def _kernel_cases():
    a, b, g = rows(20, (4, 6)), rows(21, (4, 6)), rows(22, (4, 6))
    w, bias, m = rows(23, (6,)), rows(24, (6,)), rows(25, (4, 1))
    var = np.abs(rows(26, (4, 1))) + 0.1
    gate = 1.0 / (1.0 + np.exp(-a))
    hidden = np.triu(np.ones((4, 6), dtype=bool), 1)
    return {
        "gelu forward": (F._gelu_forward, (a,)),
        "gelu backward": (F._gelu_backward, (a, gate, g)),
        "inverse std": (F._inverse_std, (var, 1e-5)),
        "normalise": (F._normalise, (a, m, w, bias)),
        "normalise without gain or bias": (F._normalise, (a, m, None, None)),
        "layer norm dx": (F._layer_norm_dx, (a, m, b, var, m)),
        "inverse std of rows": (F._inverse_std_of_rows(1e-5), (a, m, 1.0 / 6)),
        "centre and normalise": (F._centre_and_normalise, (a, m, var, w, bias)),
        "mean of product": (F._mean_of_product, (a, b, 1.0 / 6)),
        "exp shifted": (F._exp_shifted, (a, m)),
        "exp shifted in place": (F._exp_shifted_in_place, (a, m)),
        "scale and hide": (F._scale_and_hide, (a, 0.125, hidden)),
        "scale, no mask": (F._scale_and_hide, (a, 0.125, None)),
        "scores gradient": (F._scores_gradient, (a, m, b, 0.125)),
        "row sums of product": (speed._row_sums_of_product, (a, b)),
        "column sums of product": (speed._column_sums_of_product, (a, b)),
        "adamw": (optim._adamw_kernel, (a, g, b, var * np.ones(6), None, 0.9, 0.1, 0.95, 0.05, 0.999, 1.2, 1e-8, -1e-3)),
        "store pair": (generation._store_pair, (np.zeros((4, 6)), np.zeros((4, 6)), g, b)),
        "adamw with scratch": (optim._adamw_kernel, (a, g, b, var * np.ones(6), np.empty((4, 6)), 0.9, 0.1, 0.95,
                                                     0.05, None, 1.2, 1e-8, -1e-3)),
    }


def cast_case(args, dtype):
    """A case's arguments with its float arrays in ``dtype`` (masks stay boolean)."""
    return [x.astype(dtype) if isinstance(x, np.ndarray) and x.dtype != bool else x for x in args]


@pytest.mark.parametrize("case", sorted(_kernel_cases()))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_each_kernel_traces_as_one_launch_and_equals_numpy_bit_for_bit(cp, case, dtype):
    fake_cupy.reset_kernels()
    _check_on_the_device(cp, case, dtype, lambda d, h: np.array_equal(d, h))
    assert fake_cupy.kernels()["launches"] == 1


@pytest.mark.gpu
@pytest.mark.parametrize("case", sorted(_kernel_cases()))
def test_each_kernel_compiles_and_runs_on_the_device_as_on_numpy(cuda, case):
    # On a GPU, cupy.fuse compiles each kernel (NVRTC) and runs it: float32 to a few ulps of NumPy's
    # (CUDA's exp and sqrt are not NumPy's). Under the stand-in: exactly, as above.
    import cupy

    _check_on_the_device(cupy, case, np.float32, lambda d, h: np.allclose(d, h, rtol=1e-5, atol=1e-6))


def _check_on_the_device(xp, case, dtype, same):
    """Run a kernel case on NumPy and on ``xp``'s arrays; its outputs and what it wrote into its
    arguments must be ``same`` (and of the same types)."""
    kernel, args = _kernel_cases()[case]
    cast = cast_case(args, dtype)
    host = [x.copy() if isinstance(x, np.ndarray) else x for x in cast]
    device = [xp.asarray(x) if isinstance(x, np.ndarray) else x for x in cast]
    want, got = kernel(*host), kernel(*device)
    want = want if isinstance(want, tuple) else (want,)
    got = got if isinstance(got, tuple) else (got,)
    for w, d in zip(want, got):
        if w is None:
            assert d is None
            continue
        d = d.get()
        assert d.dtype == np.asarray(w).dtype
        assert same(d, np.broadcast_to(w, d.shape)), case
    for h, d in zip(host, device):      # what the kernel wrote into its arguments
        if isinstance(h, np.ndarray) and h.dtype != bool and h.ndim and d.shape == h.shape:
            assert same(d.get(), h), case


# ------------------------------------------------------------------ npgpt's kernels under the real CuPy's tracer
# Without a GPU CuPy cannot allocate, but an array over memory it does not own (a pointer that is
# never read) is enough for its classic tracer to run: it records the ufuncs and resolves their
# types, building the ElementwiseKernel or ReductionKernel that a GPU would compile (NVRTC, which
# this test never calls). In a fresh interpreter, so that the stand-in installed in this one is
# not in the way.
_REAL_TRACE = r"""
import json, sys
import numpy as np
sys.path.insert(0, "tests")
import cupy
import test_fuse
try:                                  # CuPy's internals, as of CuPy 14: a later CuPy may move them
    from cupy._core import fusion, _fusion_thread_local
    state = _fusion_thread_local.thread_local
    fusion._FusionHistory.get_fusion
except (ImportError, AttributeError) as error:
    print(json.dumps({"_skip": f"CuPy {cupy.__version__} has no classic tracer where CuPy 14 has it ({error})"}))
    sys.exit(0)

def unowned(x):
    memory = cupy.cuda.UnownedMemory(1 << 20, max(x.nbytes, 1), None, device_id=0)
    return cupy.ndarray(x.shape, dtype=x.dtype, memptr=cupy.cuda.MemoryPointer(memory, 0))

found = {}
for case, (kernel, args) in test_fuse._kernel_cases().items():
    for dtype in ("float32", "float64"):
        cast = test_fuse.cast_case(args, np.dtype(dtype))
        fused = kernel._on(cupy)                  # cupy.fuse of the very closure npgpt calls
        history = fusion._FusionHistory()
        state.history, state.is_old_fusing = history, True
        try:
            made, _ = history.get_fusion(fused.func, [unowned(x) if isinstance(x, np.ndarray) else x for x in cast],
                                         fused.name)
            found[case + "/" + dtype] = {"kind": type(made).__name__, "out": [str(p.dtype) for p in made.out_params],
                                         "written": [p.name for p in made.in_params if not p.is_const]}
        except Exception as error:
            found[case + "/" + dtype] = {"error": type(error).__name__ + ": " + str(error)}
        finally:
            state.history, state.is_old_fusing = None, False
print(json.dumps(found))
"""


@pytest.fixture(scope="module")
def real_traces():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("NPGPT_FAKE_CUDA", None)
    proc = subprocess.run([sys.executable, "-c", _REAL_TRACE], capture_output=True, text=True, cwd=ROOT, env=env)
    if proc.returncode != 0 and "No module named 'cupy'" in proc.stderr:
        pytest.skip("the real CuPy is not installed here")
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    if "_skip" in found:
        pytest.skip(found["_skip"])
    return found


@pytest.mark.parametrize("case", sorted(_kernel_cases()))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_each_kernel_traces_under_cupys_own_tracer_into_one_kernel_of_numpys_types(real_traces, case, dtype):
    traced = real_traces[f"{case}/{np.dtype(dtype).name}"]
    assert "error" not in traced, traced.get("error")
    kernel, args = _kernel_cases()[case]
    want = kernel(*cast_case(args, np.dtype(dtype)))
    want = [] if want is None else list(want) if isinstance(want, tuple) else [want]
    reduces = any(word in case for word in ("sums", "mean", "of rows"))
    assert traced["kind"] == ("ReductionKernel" if reduces else "ElementwiseKernel")
    assert traced["out"] == [str(np.asarray(w).dtype) for w in want]      # CuPy's types are NumPy's
    assert bool(traced["written"]) == (not want or case.split()[0] == "normalise")  # in place where meant


# ------------------------------------------------------------------ the kernels' formulas, in float64
finite = st.floats(-6, 6, allow_nan=False, width=64)


@settings(max_examples=40, deadline=None)
@given(st.lists(finite, min_size=1, max_size=12))
def test_gelu_kernels_compute_the_tanh_gelu_and_its_derivative(values):
    # docs/model.md eq:gelu: y = x/2 (1 + tanh(c (x + 0.044715 x^3))); the derivative by hand.
    x = np.array(values)
    c = math.sqrt(2 / math.pi)
    t = np.tanh(c * (x + 0.044715 * x ** 3))
    y, s = F._gelu_forward(x)
    assert np.allclose(y, 0.5 * x * (1 + t), rtol=1e-12, atol=1e-14)
    assert np.allclose(s, 0.5 * (1 + t), rtol=1e-12, atol=1e-14)
    g = np.linspace(-1, 1, x.size)
    dy = 0.5 * (1 + t) + 0.5 * x * (1 - t ** 2) * c * (1 + 3 * 0.044715 * x ** 2)
    assert np.allclose(F._gelu_backward(x, s, g), g * dy, rtol=1e-10, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2 ** 31), st.integers(1, 5), st.integers(2, 9))
def test_layer_norm_kernels_compute_eq_layer_norm_and_its_gradient(seed, n, c):
    # docs/model.md eq:layer-norm: xhat = (x - mu) / sqrt(var + eps), y = xhat w + b;
    # dL/dx = r (h - mean(h) - xhat mean(h xhat)), h = g w.
    x, g, w, b = rows(seed, (n, c)), rows(seed + 1, (n, c)), rows(seed + 2, (c,)), rows(seed + 3, (c,))
    eps = 1e-5
    mu = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    r = F._inverse_std(var, eps)
    assert np.allclose(r, 1 / np.sqrt(var + eps), rtol=1e-14)
    xhat = x - mu
    y = F._normalise(xhat, r, w, b)
    assert np.allclose(xhat, (x - mu) / np.sqrt(var + eps), rtol=1e-12, atol=1e-14)
    assert np.allclose(y, (x - mu) / np.sqrt(var + eps) * w + b, rtol=1e-12, atol=1e-14)
    # The GPU's forward: r straight from a fused reduction, xhat and y from one kernel.
    r_rows = F._inverse_std_of_rows(eps)(x, mu, 1.0 / c)
    assert np.allclose(r_rows, 1 / np.sqrt(var[:, 0] + eps), rtol=1e-12)
    xhat2, y2 = F._centre_and_normalise(x, mu, r_rows[:, None], w, b)
    assert np.allclose(xhat2, xhat, rtol=1e-12, atol=1e-14) and np.allclose(y2, y, rtol=1e-12, atol=1e-14)
    h = g * w
    got = F._layer_norm_dx(h, h.mean(-1, keepdims=True), xhat, (h * xhat).mean(-1, keepdims=True), r)
    want = (h - h.mean(-1, keepdims=True) - xhat * (h * xhat).mean(-1, keepdims=True)) / np.sqrt(var + eps)
    assert np.allclose(got, want, rtol=1e-10, atol=1e-12)
    assert np.allclose(F._mean_of_product(h, xhat, 1.0 / c), (h * xhat).mean(-1), rtol=1e-12, atol=1e-14)
    assert np.allclose(speed._row_sums_of_product(h, xhat), (h * xhat).sum(-1), rtol=1e-12, atol=1e-14)
    assert np.allclose(speed._column_sums_of_product(g, xhat), (g * xhat).sum(0), rtol=1e-12, atol=1e-14)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2 ** 31), st.integers(1, 6))
def test_attention_kernels_compute_eq_softmax_and_its_gradient(seed, t):
    # docs/model.md eq:softmax and eq:causal-mask; dS = P (dP - sum(dP P)) s.
    scores, dP = rows(seed, (2, t, t)), rows(seed + 1, (2, t, t))
    hidden = np.triu(np.ones((t, t), dtype=bool), 1)
    scaled = scores.copy()
    F._scale_and_hide(scaled, 0.5, hidden)
    assert np.array_equal(scaled, np.where(hidden, np.finfo(np.float64).min, scores * 0.5))
    m = scaled.max(-1, keepdims=True)
    e = F._exp_shifted(scaled, m)
    assert np.allclose(e, np.exp(scaled - m), rtol=1e-14)
    P = e / e.sum(-1, keepdims=True)
    want = P * (dP - (dP * P).sum(-1, keepdims=True)) * 0.5
    F._scores_gradient(dP, (dP * P).sum(-1, keepdims=True), P, 0.5)
    assert np.allclose(dP, want, rtol=1e-10, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2 ** 31), st.integers(1, 50), st.sampled_from([0.0, 0.1]))
def test_the_adamw_kernel_computes_eq_adam_update(seed, t, wd):
    # docs/training.md eq:adam-first-moment to eq:adam-update, with eq:decoupled-weight-decay.
    w, g, m, v = rows(seed, (7,)), rows(seed + 1, (7,)), rows(seed + 2, (7,)), np.abs(rows(seed + 3, (7,)))
    lr, b1, b2, eps = 1e-2, 0.9, 0.95, 1e-8
    m_new = b1 * m + (1 - b1) * g
    v_new = b2 * v + (1 - b2) * g * g
    w_new = w * (1 - lr * wd) - lr * (m_new / (1 - b1 ** t)) / (np.sqrt(v_new / (1 - b2 ** t)) + eps)
    state = {"step": t, "exp_avg": m, "exp_avg_sq": v}
    group = {"lr": lr, "weight_decay": wd, "eps": eps, "betas": (b1, b2)}
    optim.AdamW(_one_param(), lr=lr)._update(w, g, state, group, np.empty(7))
    assert np.allclose(m, m_new, rtol=1e-12) and np.allclose(v, v_new, rtol=1e-12)
    assert np.allclose(w, w_new, rtol=1e-10, atol=1e-13)


def _one_param():
    from npgpt.autograd.core import Tensor

    return [Tensor(np.zeros(1), requires_grad=True)]
