"""The autograd engine: every elementary op's gradient against finite differences (float64),
plus the engine's own behaviour (accumulation, no_grad, graph release, errors)."""

import gc
import weakref

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import npgpt
from npgpt import autograd, backend
from npgpt.autograd.gradcheck import check_gradients

small_shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=4)
broadcast_pairs = hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, min_side=1, max_side=4)


def randn(xp, shape, seed, low=None):
    a = np.random.default_rng(seed).standard_normal(shape)
    if low is not None:                      # keep away from singular points (log, sqrt, division)
        a = np.abs(a) + low
    return xp.asarray(a, dtype=np.float64)


# ------------------------------------------------------------------ binary ops with broadcasting
# docs/autograd.md eq:broadcast-backward: the gradient of a broadcast operand is summed over the broadcast axes.
@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "pow"])
@given(shapes=broadcast_pairs, seed=st.integers(0, 2**16))
def test_binary_op_gradients_with_broadcasting(xp, op, shapes, seed):
    a_shape, b_shape = shapes.input_shapes
    a = randn(xp, a_shape, seed, low=0.5 if op == "pow" else None)
    b = randn(xp, b_shape, seed + 1, low=0.5 if op in ("div", "pow") else None)
    fn = {"add": lambda x, y: x + y, "sub": lambda x, y: x - y, "mul": lambda x, y: x * y,
          "div": lambda x, y: x / y, "pow": lambda x, y: x ** y}[op]
    check_gradients(fn, a, b)


@given(shapes=st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(1, 4)),
       batch=st.sampled_from([(), (1,), (3,), (2, 1)]), b_batch=st.sampled_from([(), (1,)]),
       seed=st.integers(0, 2**16))
def test_matmul_gradient_with_batch_broadcasting(xp, shapes, batch, b_batch, seed):
    # docs/autograd.md eq:matmul-backward: dA = G B^T, dB = A^T G, summed over broadcast batch axes.
    n, k, m = shapes
    check_gradients(lambda x, y: x @ y, randn(xp, batch + (n, k), seed), randn(xp, b_batch + (k, m), seed + 1))


@pytest.mark.parametrize("a_shape,b_shape", [((3,), (3,)), ((3,), (3, 2)), ((2, 3), (3,)), ((4, 2, 3), (3,))])
def test_matmul_with_vectors(xp, a_shape, b_shape):
    check_gradients(lambda x, y: x @ y, randn(xp, a_shape, 0), randn(xp, b_shape, 1))


def test_chain_rule_through_a_composition():
    # docs/autograd.md eq:chain-rule: d/dx tanh(x^2) = (1 - tanh^2(x^2)) * 2x, one local derivative per op.
    x = npgpt.tensor([0.3, -1.2], requires_grad=True, dtype=np.float64)
    (x * x).tanh().sum().backward()
    xv = np.array([0.3, -1.2])
    np.testing.assert_allclose(x.grad, (1 - np.tanh(xv ** 2) ** 2) * 2 * xv, rtol=1e-12)


def test_central_differences_have_second_order_error():
    # docs/autograd.md eq:central-difference: the error of the central difference shrinks like eps^2.
    from npgpt.autograd.gradcheck import numerical_gradient

    x = np.array([0.7])
    exact = 3 * 0.7 ** 2 + np.cos(0.7)
    errors = [abs(numerical_gradient(lambda a: (a ** 3 + np.sin(a)).sum(), [x], 0, eps)[0] - exact)
              for eps in (1e-2, 1e-3)]
    assert 50 < errors[0] / errors[1] < 200       # 10x smaller eps -> ~100x smaller error


def test_gradient_check_catches_a_wrong_backward():
    def wrong_square(t):                            # forward x^2, backward claims 3x
        return autograd.core._make(t.data ** 2, (t,), lambda g: (3 * t.data * g,))

    with pytest.raises(AssertionError, match="argument 0: analytic gradient"):
        check_gradients(wrong_square, np.array([1.0, 2.0]))


# ------------------------------------------------------------------------------ unary ops
@pytest.mark.parametrize("name,fn,low", [
    ("neg", lambda x: -x, None), ("exp", lambda x: x.exp(), None), ("log", lambda x: x.log(), 0.2),
    ("tanh", lambda x: x.tanh(), None), ("sqrt", lambda x: x.sqrt(), 0.2),
    ("pow_scalar", lambda x: x ** 3, None), ("rdiv", lambda x: 2.0 / x, 0.5), ("rsub", lambda x: 1.0 - x, None),
    ("astype", lambda x: x.astype(np.float64) * 2, None),
])
@given(shape=small_shapes, seed=st.integers(0, 2**16))
def test_unary_op_gradients(xp, name, fn, low, shape, seed):
    check_gradients(fn, randn(xp, shape, seed, low=low))


@given(shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4), data=st.data())
def test_reductions_over_any_axis(xp, shape, data):
    axis = data.draw(st.one_of(st.none(), st.integers(-len(shape), len(shape) - 1)))
    keepdims = data.draw(st.booleans())
    seed = data.draw(st.integers(0, 2**16))
    a = randn(xp, shape, seed)
    check_gradients(lambda x: x.sum(axis=axis, keepdims=keepdims), a)
    check_gradients(lambda x: x.mean(axis=axis, keepdims=keepdims), a)
    check_gradients(lambda x: x.max(axis=axis, keepdims=keepdims), a)   # continuous data: no ties


def test_max_splits_the_gradient_between_ties(xp):
    x = npgpt.tensor(xp.asarray([1.0, 3.0, 3.0]), requires_grad=True)
    x.max().backward()
    np.testing.assert_allclose(backend.to_numpy(x.grad), [0.0, 0.5, 0.5])


@given(seed=st.integers(0, 2**16))
def test_shape_op_gradients(xp, seed):
    a = randn(xp, (2, 3, 4), seed)
    check_gradients(lambda x: x.reshape(4, 6) * 1.5, a)
    check_gradients(lambda x: x.transpose(2, 0, 1), a)
    check_gradients(lambda x: x.T, a)
    check_gradients(lambda x: x.swapaxes(0, 2), a)
    check_gradients(lambda x: x[1:, ::2, 1], a)
    check_gradients(lambda x: x[xp.asarray([0, 1, 0]), :, xp.asarray([3, 3, 0])], a)  # repeated picks add up
    check_gradients(lambda x: x[x.data > 0] * 2, a)


@given(seed=st.integers(0, 2**16), axis=st.integers(-2, 1))
def test_concat_stack_split_gradients(xp, seed, axis):
    a, b = randn(xp, (2, 3), seed), randn(xp, (2, 3), seed + 1)
    check_gradients(lambda x, y: npgpt.concat([x, y * 2], axis=axis), a, b)
    check_gradients(lambda x, y: npgpt.stack([x, y], axis=axis), a, b)
    check_gradients(lambda x: npgpt.concat(npgpt.split(x, [1], axis=axis)[::-1], axis=axis), a)
    check_gradients(lambda x: x.split(3, axis=1)[2] * 3, a)


@given(seed=st.integers(0, 2**16))
def test_where_and_masked_fill_gradients(xp, seed):
    a, b = randn(xp, (3, 4), seed), randn(xp, (4,), seed + 1)
    cond = xp.asarray(np.random.default_rng(seed).random((3, 4)) > 0.5)
    check_gradients(lambda x, y: npgpt.where(cond, x, y), a, b)
    check_gradients(lambda x: x.masked_fill(cond, -5.0), a)


# ------------------------------------------------------------------------- the engine itself
def test_gradients_accumulate_across_uses_and_calls():
    # docs/autograd.md eq:sum-over-children: a value used twice receives the sum of both paths' gradients.
    x = npgpt.tensor([2.0, -1.0], requires_grad=True)
    (x * x + x).sum().backward()
    np.testing.assert_allclose(x.grad, [5.0, -1.0])
    (x * 3).sum().backward()                      # a second backward adds, as in PyTorch
    np.testing.assert_allclose(x.grad, [8.0, 2.0])


def test_shared_gradient_arrays_are_not_aliased_between_leaves():
    a = npgpt.tensor([1.0], requires_grad=True)
    b = npgpt.tensor([1.0], requires_grad=True)
    (a + b).sum().backward()
    (a * 5).sum().backward()
    np.testing.assert_allclose(a.grad, [6.0])
    np.testing.assert_allclose(b.grad, [1.0])


def test_backward_with_explicit_upstream_gradient():
    x = npgpt.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    (x * x).backward(np.array([[1.0, 0.0], [0.5, 2.0]], dtype=np.float32))
    np.testing.assert_allclose(x.grad, [[2.0, 0.0], [3.0, 16.0]])


def test_grad_has_the_same_backend_and_dtype():
    x = npgpt.tensor(np.ones((2, 2), dtype=np.float32), requires_grad=True)
    (x * 2).sum().backward()
    assert type(x.grad) is np.ndarray and x.grad.dtype == np.float32


def test_no_grad_records_nothing():
    x = npgpt.tensor([1.0], requires_grad=True)
    with npgpt.no_grad():
        y = x * 2
        assert not npgpt.is_grad_enabled()
    assert npgpt.is_grad_enabled()
    assert not y.requires_grad and y.is_leaf


def test_detach_cuts_the_graph():
    x = npgpt.tensor([3.0], requires_grad=True)
    y = (x * x).detach() * x
    y.sum().backward()
    np.testing.assert_allclose(x.grad, [9.0])      # d(c x)/dx with c = 9 treated as a constant


def test_graph_is_released_after_backward():
    # The saved intermediates must be freed: nothing may keep the graph alive after backward.
    x = npgpt.tensor(np.ones(1000), requires_grad=True)
    hidden = x.exp()
    ref = weakref.ref(hidden)
    loss = (hidden * 2).sum()
    del hidden
    gc.collect()
    assert ref() is not None                       # held by the graph until backward
    loss.backward()
    gc.collect()
    assert ref() is None
    assert loss._node.parents == ()
    with pytest.raises(RuntimeError, match="already walked and freed.*retain_graph=True"):
        loss.backward()


def test_the_graph_keeps_nodes_not_the_tensors_its_backward_does_not_need():
    # A sum's backward needs only shapes: once the program drops the intermediate tensors, their
    # arrays are freed before the backward pass (the residual stream of a network is such a sum).
    x = npgpt.tensor(np.ones(1000), requires_grad=True)
    shifted = x + 1.0
    array = weakref.ref(shifted.data)
    loss = (shifted + x).sum()
    del shifted
    gc.collect()
    assert array() is None
    loss.backward()
    np.testing.assert_allclose(x.grad, 2.0)


def test_retain_graph_allows_a_second_backward():
    x = npgpt.tensor([2.0], requires_grad=True)
    y = (x * x).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_allclose(x.grad, [8.0])


def test_deep_graphs_do_not_hit_the_recursion_limit():
    x = npgpt.tensor([1.0], requires_grad=True)
    y = x
    for _ in range(5000):
        y = y * 1.0 + 0.0
    y.sum().backward()
    np.testing.assert_allclose(x.grad, [1.0])


def test_numpy_item_tolist():
    t = npgpt.tensor([[1.5]])
    assert t.item() == 1.5 and t.tolist() == [[1.5]]
    assert isinstance(t.numpy(), np.ndarray)
    assert t.dtype == np.float32


def test_numpy_array_on_the_left_dispatches_to_tensor():
    x = npgpt.tensor([1.0, 2.0], requires_grad=True)
    y = np.array([3.0, 4.0], dtype=np.float32) * x
    assert isinstance(y, npgpt.Tensor)
    y.sum().backward()
    np.testing.assert_allclose(x.grad, [3.0, 4.0])


# ----------------------------------------------------------------------------------- errors
def test_backward_on_a_non_scalar_needs_a_gradient():
    x = npgpt.tensor(np.ones((2, 3)), requires_grad=True)
    with pytest.raises(ValueError, match=r"non-scalar Tensor\(shape=\(2, 3\)"):
        (x * 2).backward()


def test_backward_without_requires_grad():
    with pytest.raises(RuntimeError, match="does not require grad"):
        npgpt.tensor([1.0]).sum().backward()


def test_wrong_upstream_gradient_shape():
    x = npgpt.tensor(np.ones((2, 3)), requires_grad=True)
    with pytest.raises(ValueError, match=r"gradient of shape \(3,\)"):
        (x * 2).backward(np.ones(3))


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"add: shapes \(2, 3\) and \(4,\) cannot be broadcast"):
        npgpt.tensor(np.ones((2, 3))) + npgpt.tensor(np.ones(4))
    with pytest.raises(ValueError, match=r"matmul: inner dimensions differ, \(2, 3\) @ \(4, 5\)"):
        npgpt.tensor(np.ones((2, 3))) @ npgpt.tensor(np.ones((4, 5)))
    with pytest.raises(ValueError, match=r"cannot reshape .* into shape \(7,\)"):
        npgpt.tensor(np.ones((2, 3))).reshape(7)


def test_integer_tensors_cannot_require_grad():
    with pytest.raises(TypeError, match="only floating-point tensors"):
        npgpt.tensor([1, 2], requires_grad=True)


def test_bad_index_and_axis_are_clear():
    t = npgpt.tensor(np.ones((2, 3)))
    with pytest.raises(IndexError, match=r"invalid for Tensor\(shape=\(2, 3\)"):
        t[5]
    with pytest.raises(ValueError, match="axis 4 is out of range"):
        t.sum(axis=4)


def test_mixing_devices_is_a_clear_error(monkeypatch):
    # Simulated without a GPU: one tensor reports "cuda" as its device.
    a, b = npgpt.tensor([1.0]), npgpt.tensor([2.0])
    monkeypatch.setattr(autograd.Tensor, "device", property(lambda self: "cuda" if self is b else "cpu"))
    with pytest.raises(ValueError, match="different devices"):
        autograd.add(a, b)


# ------------------------------------------------------------ npgpt.grad
def test_grad_returns_what_backward_would_store_and_leaves_grad_alone():
    import inspect

    import npgpt

    rng = np.random.default_rng(0)
    w = npgpt.tensor(rng.standard_normal((3, 4)), requires_grad=True, dtype=np.float64)
    b = npgpt.tensor(rng.standard_normal(4), requires_grad=True, dtype=np.float64)
    x = rng.standard_normal((5, 3))

    def loss():
        return ((npgpt.Tensor(x) @ w + b).tanh() ** 2).mean()

    gw, gb = npgpt.grad(loss(), [w, b])
    assert w.grad is None and b.grad is None
    loss().backward()
    np.testing.assert_array_equal(gw, w.grad)
    np.testing.assert_array_equal(gb, b.grad)
    assert "grad_sink" not in inspect.signature(npgpt.Tensor.backward).parameters


def test_grad_of_an_intermediate_tensor_and_of_several_outputs():
    import npgpt

    x = npgpt.tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True, dtype=np.float64)
    h = x * 2.0                                   # intermediate
    y = (h ** 2).sum()                            # dy/dh = 2h = 4x
    (gh,) = npgpt.grad(y, [h], retain_graph=True)
    np.testing.assert_allclose(gh, 4 * x.data)
    z = x.sum()
    (gx,) = npgpt.grad([y, z], [x], grad_outputs=[None, np.array(10.0)])   # 8x + 10
    np.testing.assert_allclose(gx, 8 * x.data + 10)


def test_grad_refuses_unused_inputs_unless_allowed_and_never_aliases():
    import npgpt

    a = npgpt.tensor(np.ones(2), requires_grad=True, dtype=np.float64)
    b = npgpt.tensor(np.ones(2), requires_grad=True, dtype=np.float64)
    c = npgpt.tensor(np.ones(2), requires_grad=True, dtype=np.float64)
    with pytest.raises(ValueError, match=r"do not depend on input\(s\) \[2\]"):
        npgpt.grad((a + b).sum(), [a, b, c])
    ga, gb, gc = npgpt.grad((a + b).sum(), [a, b, c], allow_unused=True)
    assert gc is None and ga is not gb            # a + b hands one array to both: each gets its own
    ga += 1
    np.testing.assert_array_equal(gb, np.ones(2))
    with pytest.raises(ValueError, match="does not require grad"):
        npgpt.grad((a * 2).sum(), [npgpt.tensor(np.ones(2))])


def test_sums_written_in_place_change_no_gradient():
    # docs/autograd.md eq:sum-over-children: where paths meet, their gradients add. The walk writes such sums into
    # arrays nothing else sees (fresh op results, its own sums); the values must be those of plain
    # sums, and a graph kept for a second backward must not have its saved gradients overwritten.
    import npgpt.functional as F

    rng = np.random.default_rng(0)
    h, w = rng.standard_normal((5, 3)), rng.standard_normal((7, 3))
    y = np.array([0, 6, 2, 2, 1])

    def grads(times, retain):
        ht, wt = npgpt.tensor(h, requires_grad=True), npgpt.tensor(w, requires_grad=True)
        emb = F.embedding(np.array([1, 2, 2, 0, 6]), wt)               # wt reached twice (tied)
        x = ht + F.gelu(ht) + emb                                        # ht reached twice, one pass-through
        loss = F.linear_cross_entropy(F.layer_norm(x, None, None), wt, y)
        for i in range(times):
            loss.backward(retain_graph=retain and i < times - 1)
        return ht.grad, wt.grad

    once_h, once_w = grads(1, False)
    twice_h, twice_w = grads(2, True)
    np.testing.assert_allclose(twice_h, 2 * once_h, rtol=1e-12)
    np.testing.assert_allclose(twice_w, 2 * once_w, rtol=1e-12)
    check_gradients(lambda ht, wt: F.linear_cross_entropy(
        F.layer_norm(ht + F.gelu(ht) + F.embedding(np.array([1, 2, 2, 0, 6]), wt), None, None), wt, y), h, w)
