"""The array backend: devices, moving data, and the NumPy/CuPy compatibility proof."""

import ast
import pathlib

import numpy as np
import pytest

import npgpt
from npgpt import backend

PACKAGE = pathlib.Path(npgpt.__file__).parent


def test_array_module_follows_the_data():
    assert backend.array_module(np.zeros(3)) is np
    assert backend.device_of(np.zeros(3)) == "cpu"


def test_unknown_device_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        backend.check_device("tpu")
    with pytest.raises(TypeError, match="device must be a string"):
        backend.check_device(3)


@pytest.mark.skipif(backend.cuda_available(), reason="this machine has a GPU")
def test_cuda_without_gpu_says_how_to_install():
    with pytest.raises(RuntimeError, match=r"pip install -e \"\.\[gpu\]\""):
        npgpt.tensor([1.0, 2.0]).to("cuda")


def test_to_cpu_is_identity_on_cpu():
    t = npgpt.tensor([1.0, 2.0])
    assert t.to("cpu") is t
    assert t.device == "cpu"


def test_scatter_add_sums_repeated_indices(xp):
    target = xp.zeros((3, 2))
    backend.scatter_add(target, xp.asarray([0, 2, 0]), xp.ones((3, 2)))
    np.testing.assert_array_equal(backend.to_numpy(target), [[2, 2], [0, 0], [1, 1]])


def test_round_trip_between_devices(xp):
    t = npgpt.tensor(xp.arange(6.0).reshape(2, 3), requires_grad=True)
    moved = t.to("cuda" if xp is not np else "cpu").to("cpu")
    np.testing.assert_array_equal(moved.numpy(), np.arange(6.0).reshape(2, 3))


# ------------------------------------------------------------------------------------------
# The GPU swap cannot silently break: every function the compute path calls through the
# array module ``xp`` must exist in CuPy, and NumPy itself may be called only for host-side
# bookkeeping (dtypes, shapes), never on the data.
COMPUTE_MODULES = ["autograd/core.py", "functional.py", "nn.py", "model.py", "generation/__init__.py", "training/optim.py",
                   "training/parallel.py"]
HOST_SIDE_NUMPY = {
    # dtypes and type checks
    "ndarray", "float16", "float32", "float64", "int32", "int64", "uint16", "uint32", "uint64", "bool_", "dtype",
    "issubdtype", "floating", "integer", "finfo", "iinfo",
    # shapes and small host-side bookkeeping on Python lists/tuples
    "broadcast_shapes", "cumsum", "argsort", "prod", "array2string",
    # turning user input (lists, scalars) into arrays before it meets the device
    "asarray", "random", "zeros",
}


def _attribute_chains(tree, root):
    """Every ``root.a`` / ``root.a.b`` attribute chain used in a module's code."""
    chains = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            parts = []
            inner = node
            while isinstance(inner, ast.Attribute):
                parts.append(inner.attr)
                inner = inner.value
            if isinstance(inner, ast.Name) and inner.id == root:
                chains.add(".".join(reversed(parts)))
    return chains


def _compute_sources():
    for name in COMPUTE_MODULES:
        path = PACKAGE / name
        # a module that moved must fail here, not be skipped: the check would silently shrink
        assert path.exists(), f"compute module {path} not found: update COMPUTE_MODULES"
        yield name, ast.parse(path.read_text())


def test_every_xp_function_exists_in_cupy():
    cupy = pytest.importorskip("cupy", reason="CuPy's package is needed to compare APIs (it imports without a GPU)")
    missing = []
    for name, tree in _compute_sources():
        for chain in _attribute_chains(tree, "xp"):
            obj = cupy
            for part in chain.split("."):
                if not hasattr(obj, part):
                    missing.append(f"{name}: xp.{chain}")
                    break
                obj = getattr(obj, part)
    assert not missing, "functions used through xp that CuPy lacks: " + ", ".join(sorted(missing))


# Functions at the file boundary: they take the host arrays a safetensors file gives (or make the
# host arrays one is written from) and move them to or from the device themselves, so NumPy is the
# right module there. (The CuPy stand-in's device tests check that they do move them.)
FILE_BOUNDARY = {"hf_tensors", "load_hf_tensors", "hf_state_dict"}


def _without_file_boundary(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            node.body = [n for n in node.body if not (isinstance(n, ast.FunctionDef) and n.name in FILE_BOUNDARY)]
    tree.body = [n for n in tree.body if not (isinstance(n, ast.FunctionDef) and n.name in FILE_BOUNDARY)]
    return tree


def test_numpy_is_called_only_for_host_side_bookkeeping():
    offenders = []
    for name, tree in _compute_sources():
        tree = _without_file_boundary(tree)
        for chain in _attribute_chains(tree, "np"):
            if chain.split(".")[0] not in HOST_SIDE_NUMPY:
                offenders.append(f"{name}: np.{chain}")
    assert not offenders, ("NumPy functions called directly in the compute path (use xp = "
                           "backend.array_module(x) instead): " + ", ".join(sorted(offenders)))


def test_the_compatibility_check_catches_a_numpy_only_function():
    # The check above must be able to fail: np.nditer has no CuPy twin.
    cupy = pytest.importorskip("cupy")
    tree = ast.parse("def f(xp, a):\n    for v in xp.nditer(a): xp.exp(v)\n")
    chains = _attribute_chains(tree, "xp")
    assert chains == {"nditer", "exp"}
    assert hasattr(cupy, "exp") and not hasattr(cupy, "nditer")


def test_the_speed_policy_keeps_threads_and_the_head_copy_on_the_cpu(xp):
    """npgpt.backend.speed: threads and the decoding head's copy pay on the CPU only, the copy from 64 rows x steps."""
    from npgpt.backend import speed

    a = xp.zeros(3)
    on_cpu = xp is np
    assert speed.threads_pay(a) is on_cpu and speed.threads_pay(np.zeros(1), a) is on_cpu
    assert speed.copy_decoding_head(a, 8, 8) is on_cpu
    assert not speed.copy_decoding_head(a, 1, speed.HEAD_COPY_MIN_ROW_STEPS - 1)
    assert speed.thread_pool(2) is speed.thread_pool(2)          # made once, kept


@pytest.mark.parametrize("workers", [1, 2, 3])
@pytest.mark.parametrize("count", [0, 1, 2, 7, 40])
def test_share_work_does_every_item_once_on_the_caller_and_the_pools_threads(workers, count):
    """npgpt.backend.speed.share_work: every item done exactly once, whichever thread claims it."""
    import threading

    from npgpt.backend import speed

    done, threads = [], set()

    def work(i):
        done.append(i)                  # list.append is atomic under the GIL
        threads.add(threading.get_ident())

    speed.share_work(work, count, workers)
    assert sorted(done) == list(range(count))
    if workers == 1:
        assert threads <= {threading.get_ident()}       # one worker: the caller alone, no pool


def test_share_work_waits_for_items_claimed_by_a_slow_helper_and_raises_their_error():
    """An item a helper has claimed is waited for (its output is needed), and its exception reaches the caller."""
    import threading
    import time

    from npgpt.backend import speed

    caller, finished = threading.get_ident(), []

    def work(i):
        if threading.get_ident() != caller:
            time.sleep(0.05)            # a helper that is slow to finish its claim
            finished.append(i)
            raise RuntimeError(f"item {i} failed")

    for _ in range(5):                  # the helper usually claims one item of the 200 (it wakes up late)
        finished.clear()
        try:
            speed.share_work(work, 200, 2)
        except RuntimeError as exc:
            assert finished and str(exc) == f"item {finished[-1]} failed"
            return
    pytest.skip("the helper claimed no item in 5 tries (the machine is too busy to test this)")


def test_panel_workers_keeps_small_products_and_gpus_on_one_thread(xp):
    from npgpt.backend import speed

    a = xp.zeros(3)
    big = speed.panel_workers(a, speed.PANEL_SHARE_MIN_FLOPS)
    assert big == (speed.default_workers() if xp is np else 1)
    assert speed.panel_workers(a, speed.PANEL_SHARE_MIN_FLOPS - 1) == 1
