"""Deterministic by design (issue 26 item 2; docs/gpu.md "Deterministic by design").

Embedding gradients on CuPy are summed by a one-hot matrix product (``backend.add_rows``), not by
``cupyx.scatter_add``'s atomics; dropout masks are Philox of (seed, draw) (tests/test_philox.py),
the same on every device.
"""

import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import npgpt
from npgpt import backend, nn


@given(V=st.integers(1, 12), C=st.integers(1, 5), ids=st.lists(st.integers(-12, 11), min_size=1, max_size=30),
       block=st.sampled_from([1, 7, 2 ** 26]))
def test_add_rows_is_the_scatter_add_of_repeated_ids(V, C, ids, block):
    """docs/model.md eq:embedding's backward: row v of dL/dW sums the rows of g whose id is v."""
    ids = np.array([i % V - (V if i < 0 else 0) for i in ids])          # valid ids, some negative
    values = np.random.default_rng(len(ids)).standard_normal((len(ids), C))
    expected = np.zeros((V, C))
    np.add.at(expected, ids, values)
    old = backend.ONE_HOT_BLOCK
    backend.ONE_HOT_BLOCK = block                                       # many blocks, or one
    try:
        got = backend.add_rows(np.zeros((V, C)), ids, values)
    finally:
        backend.ONE_HOT_BLOCK = old
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_add_rows_takes_any_shape_of_ids_and_table(xp):
    ids = xp.asarray(np.array([[0, 2], [2, 2]]))
    values = xp.asarray(np.arange(4 * 6, dtype=np.float64).reshape(2, 2, 3, 2))     # (2, 2) ids of (3, 2) rows
    table = xp.asarray(np.ones((3, 3, 2)))
    expected = np.ones((3, 3, 2))
    np.add.at(expected, np.array([[0, 2], [2, 2]]), np.arange(24, dtype=np.float64).reshape(2, 2, 3, 2))
    assert backend.add_rows(table, ids, values) is table
    np.testing.assert_array_equal(backend.to_numpy(table), expected)


@pytest.mark.gpu
def test_embedding_gradients_on_the_device_never_use_atomics(monkeypatch, cuda):
    import cupyx

    def atomic(*args, **kwargs):
        raise AssertionError("cupyx.scatter_add (atomicAdd, nondeterministic) was called")
    monkeypatch.setattr(cupyx, "scatter_add", atomic)
    weight = npgpt.tensor(np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32), device="cuda",
                          requires_grad=True)
    ids = np.array([[1, 3, 1, 1], [3, 9, 0, 1]])
    out = npgpt.functional.embedding(ids, weight)
    (out * out).sum().backward()
    expected = np.zeros((10, 4), np.float32)
    np.add.at(expected, ids, 2 * backend.to_numpy(weight.data)[ids])
    np.testing.assert_allclose(backend.to_numpy(weight.grad), expected, rtol=1e-6)
    assert "cupyx" in sys.modules


def test_dropout_masks_are_the_same_bits_on_every_device(xp):
    """Philox of (seed, draw): the mask of draw n does not depend on the device (docs/gpu.md eq:philox-round)."""
    on_host, here = nn.Dropout(0.3, seed=2024), nn.Dropout(0.3, seed=2024)
    ones = np.ones((3, 17), np.float32)
    for _ in range(3):
        a = on_host(npgpt.Tensor(ones)).data
        b = backend.to_numpy(here(npgpt.Tensor(xp.asarray(ones))).data)
        assert a.tobytes() == b.tobytes()


def test_dropout_resumes_at_draw_n_without_drawing_the_first_n():
    # O(1) resume: the state at draw 10**12 is a number, and the next mask is computed at once.
    x = npgpt.Tensor(np.ones((4, 4), np.float32))
    far = nn.Dropout(0.5, seed=5)
    far.set_rng_state({"seed": 5, "draws": 10 ** 12})
    from npgpt.backend import philox

    keep = philox.uniform(16, 5, 10 ** 12).reshape(4, 4) >= 0.5
    np.testing.assert_array_equal(far(x).data != 0, keep)
    assert far.get_rng_state() == {"seed": 5, "draws": 10 ** 12 + 1}


# ------------------------------------------------------- dropout keyed by (step, micro-batch)
def _mask(module, xp, shape=(5, 9)):
    return backend.to_numpy(module(npgpt.Tensor(xp.ones(shape, dtype=np.float32))).data)


def test_a_keyed_mask_depends_on_seed_step_micro_batch_and_draw_only(xp):
    """docs/gpu.md eq:philox-round under nn.dropout_key: mask d of micro-batch j at step s is Philox(seed; s, j, d)."""
    from npgpt.backend import philox

    fresh, used = nn.Dropout(0.5, seed=31), nn.Dropout(0.5, seed=31)
    for _ in range(7):                                   # draws before the key: they change nothing
        _mask(used, xp)
    with nn.dropout_key(4, 1):
        masks = [_mask(fresh, xp) for _ in range(2)]
    with nn.dropout_key(4, 1):
        assert all((_mask(used, xp) == m).all() for m in masks)
    keep = philox.uniform(45, 31, 4 + (1 << 32), draw=1).reshape(5, 9) >= 0.5
    np.testing.assert_array_equal(masks[1] != 0, keep)
    with nn.dropout_key(4, 2):
        other_micro = _mask(fresh, xp)
    with nn.dropout_key(5, 1):
        other_step = _mask(fresh, xp)
    for other in (other_micro, other_step, masks[1]):
        assert not np.array_equal(other, masks[0])
    assert not np.array_equal(_mask(nn.Dropout(0.5, seed=31), xp), masks[0])      # unkeyed: another stream
    with pytest.raises(ValueError, match="micro_batch must be a whole number"):
        nn.dropout_key(1, -1)


def test_the_same_keyed_masks_on_numpy_and_on_the_device(cuda):
    import cupy

    host, device = nn.Dropout(0.3, seed=2 ** 63 + 1), nn.Dropout(0.3, seed=2 ** 63 + 1)
    with nn.dropout_key(2 ** 32 - 1, 3):
        for _ in range(2):
            assert _mask(host, np).tobytes() == _mask(device, cupy).tobytes()


def test_a_training_step_resumed_anywhere_draws_the_masks_of_the_uninterrupted_run():
    """The step keys each micro-batch's masks: a model that drew any number of masks before, or
    none, computes the same step 9 (loss, gradient, new weights) from the same weights."""
    from npgpt.model import GPT, GPTConfig
    from npgpt.training import engine
    from npgpt.training.optim import AdamW

    def step(model, micro_batches, at):
        opt = AdamW(model.named_parameters(), lr=1e-2)
        rng = np.random.default_rng(0)
        batches = [(lambda t: (t[:, :-1], t[:, 1:]))(rng.integers(0, 32, (2, 9))) for _ in range(micro_batches)]
        result = engine.optimizer_step(opt, model.loss, batches, 1e-2, 1.0, workers=1, step=at)
        return result.loss, model.wte.weight.data.copy()

    cfg = GPTConfig(vocab_size=32, block_size=8, n_layer=2, n_head=2, n_embd=16, dropout=0.4)
    resumed, uninterrupted = GPT(cfg, seed=3).train(), GPT(cfg, seed=3).train()
    for _ in range(5):                                   # masks drawn before: a longer history
        uninterrupted.loss(np.zeros((2, 8), np.int64), np.zeros((2, 8), np.int64))
    loss, weights = step(resumed, 2, at=9)
    again, same = step(uninterrupted, 2, at=9)
    assert loss == again and np.array_equal(weights, same)
    other, _ = step(GPT(cfg, seed=3).train(), 2, at=10)
    assert other != loss                                 # another step, other masks
