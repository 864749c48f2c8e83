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
