"""Sharded forward/backward over threads: the same gradients as one pass, reproducibly."""


import numpy as np
import pytest

import npgpt
import npgpt.functional as F
from npgpt import backend
from npgpt.training import parallel


def tiny_lm(seed=0, V=11, C=8):
    rng = np.random.default_rng(seed)
    wte = npgpt.tensor(rng.standard_normal((V, C)) * 0.3, requires_grad=True, dtype=np.float64)
    w = npgpt.tensor(rng.standard_normal((C, C)) * 0.3, requires_grad=True, dtype=np.float64)
    b = npgpt.tensor(np.zeros(C), requires_grad=True, dtype=np.float64)

    def loss_fn(x, y):
        h = F.gelu(F.linear(F.embedding(x, wte), w, b))
        return F.cross_entropy(h @ wte.T, y)

    return loss_fn, [wte, w, b]


@pytest.mark.parametrize("workers", [2, 3])
def test_sharded_gradients_equal_the_full_batch_gradients(workers):
    # docs/performance.md eq:shard-gradients: dL/dθ = Σ_k (n_k/N) dL_k/dθ
    tokens = np.random.default_rng(1).integers(0, 11, size=(5, 7))
    x, y = tokens[:, :-1], tokens[:, 1:]
    loss_fn, params = tiny_lm()
    full = loss_fn(x, y)
    full.backward()
    expected = [p.grad.copy() for p in params]
    for p in params:
        p.grad = None
    loss = parallel.forward_backward(loss_fn, (x, y), params, workers=workers)
    assert loss == pytest.approx(full.item(), rel=1e-12)
    for p, g in zip(params, expected):
        np.testing.assert_allclose(p.grad, g, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("workers", [1, 2, 3, 9])
def test_the_sharded_mean_loss_equals_the_full_batch_loss_and_records_no_graph(workers):
    # docs/performance.md eq:shard-gradients, for the loss itself: L = Σ_k (n_k/N) L_k (5 rows: uneven shards)
    tokens = np.random.default_rng(2).integers(0, 11, size=(5, 7))
    x, y = tokens[:, :-1], tokens[:, 1:]
    loss_fn, params = tiny_lm()
    recorded = []

    def watched(*batch):
        loss = loss_fn(*batch)
        recorded.append(loss.requires_grad)
        return loss

    got = parallel.mean_loss(watched, (x, y), workers=workers)
    assert got == pytest.approx(loss_fn(x, y).item(), rel=1e-12)
    assert len(recorded) == min(workers, 5) and not any(recorded)     # one call per shard, each under no_grad
    assert all(p.grad is None for p in params)
    assert parallel.mean_loss(loss_fn, (x, y), workers=workers) == got   # the same sum, in shard order


@pytest.mark.gpu
def test_the_mean_loss_of_a_gpu_model_stays_on_the_calling_thread_though_the_batch_is_on_the_host(cuda):
    # CuPy's current device is per thread: a model on a GPU is evaluated where the caller runs, never sharded.
    import threading

    from npgpt.model import GPT, GPTConfig

    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8), seed=0).eval()
    model.to(cuda)
    tokens = np.random.default_rng(3).integers(0, 11, size=(4, 7))      # host ids, as npgpt train passes them
    threads = []

    def watched(x, y):
        threads.append(threading.current_thread())
        return model.loss(x, y)

    got = parallel.mean_loss(watched, (tokens[:, :-1], tokens[:, 1:]), workers=2, params=model.parameters())
    assert threads == [threading.main_thread()]
    assert got == pytest.approx(model.loss(tokens[:, :-1], tokens[:, 1:]).item(), rel=1e-6)


def test_the_mean_loss_refuses_a_batch_whose_arrays_disagree_on_their_first_axis():
    loss_fn, _ = tiny_lm()
    with pytest.raises(ValueError, match="share their first axis"):
        parallel.mean_loss(loss_fn, (np.zeros((3, 4), int), np.zeros((2, 4), int)), workers=2)


def test_sharded_gradients_are_bit_reproducible():
    tokens = np.random.default_rng(2).integers(0, 11, size=(8, 9))
    runs = []
    for _ in range(3):
        loss_fn, params = tiny_lm()
        parallel.forward_backward(loss_fn, (tokens[:, :-1], tokens[:, 1:]), params, workers=2)
        runs.append([p.grad.copy() for p in params])
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            np.testing.assert_array_equal(a, b)


def test_gradients_add_to_existing_ones_like_backward():
    tokens = np.random.default_rng(3).integers(0, 11, size=(4, 5))
    loss_fn, params = tiny_lm()
    parallel.forward_backward(loss_fn, (tokens[:, :-1], tokens[:, 1:]), params, workers=2)
    once = [p.grad.copy() for p in params]
    parallel.forward_backward(loss_fn, (tokens[:, :-1], tokens[:, 1:]), params, workers=2)
    for p, g in zip(params, once):
        np.testing.assert_allclose(p.grad, 2 * g, rtol=1e-12)


def test_blas_threads_limits_and_restores_the_previous_limit():
    # Without the limit the shards' BLAS threads would compete for the same cores; afterwards the
    # user's own setting (e.g. OPENBLAS_NUM_THREADS=1) must come back, not the core count.
    if backend.blas_thread_count() == 0:
        pytest.skip("NumPy's BLAS is not visible to threadpoolctl here")
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):            # the user's own limit
        with backend.blas_threads(2):
            a = np.ones((64, 64)) @ np.ones((64, 64))
        assert backend.blas_thread_count() == 1
    assert a[0, 0] == 64.0
    with backend.blas_threads(1):
        assert backend.blas_thread_count() == 1
