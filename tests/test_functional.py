"""The fused ops of npgpt.functional: gradients vs finite differences (float64), the documented
formulas as properties, float32 accuracy, numerical stability and input errors."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import npgpt
import npgpt.functional as F
from npgpt import backend
from npgpt.autograd.gradcheck import check_gradients
from npgpt.io.inputs import as_array, check_token_ids

shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=5)
seeds = st.integers(0, 2**16)


def randn(xp, shape, seed, scale=1.0):
    return xp.asarray(np.random.default_rng(seed).standard_normal(shape) * scale, dtype=np.float64)


def ints(xp, shape, high, seed):
    return xp.asarray(np.random.default_rng(seed).integers(0, high, size=shape))


def host(a):
    return backend.to_numpy(as_array(a))


# =================================================================== gradient checks (float64)
@given(shape=shapes, out=st.integers(1, 4), bias=st.booleans(), seed=seeds)
def test_linear_gradient(xp, shape, out, bias, seed):
    x, w, b = randn(xp, shape, seed), randn(xp, (shape[-1], out), seed + 1), randn(xp, (out,), seed + 2)
    if bias:
        check_gradients(F.linear, x, w, b)
    else:
        check_gradients(lambda x, w: F.linear(x, w), x, w)


@given(shape=shapes, data=st.data())
def test_softmax_and_log_softmax_gradients(xp, shape, data):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    x = randn(xp, shape, data.draw(seeds))
    check_gradients(lambda t: F.softmax(t, axis=axis), x)
    check_gradients(lambda t: F.log_softmax(t, axis=axis), x)


@given(shape=shapes, seed=seeds)
def test_gelu_and_sigmoid_gradients(xp, shape, seed):
    x = randn(xp, shape, seed, scale=2.0)
    check_gradients(F.gelu, x)
    check_gradients(F.sigmoid, x)


@given(shape=shapes, seed=seeds)
def test_layer_norm_gradient(xp, shape, seed):
    C = shape[-1]
    if C == 1:   # the variance of one element is 0: the output is b whatever x is
        shape = shape[:-1] + (2,)
        C = 2
    x, w, b = randn(xp, shape, seed), randn(xp, (C,), seed + 1), randn(xp, (C,), seed + 2)
    check_gradients(F.layer_norm, x, w, b, rtol=1e-4)


@given(ids_shape=hnp.array_shapes(min_dims=1, max_dims=2, max_side=5), V=st.integers(1, 6), seed=seeds)
def test_embedding_gradient_adds_repeated_ids(xp, ids_shape, V, seed):
    ids = ints(xp, ids_shape, V, seed)          # small V: ids repeat
    check_gradients(lambda w: F.embedding(ids, w), randn(xp, (V, 3), seed))


@given(lead=hnp.array_shapes(min_dims=1, max_dims=2, max_side=4), V=st.integers(2, 6), seed=seeds)
def test_cross_entropy_gradient_with_ignored_targets(xp, lead, V, seed):
    targets = np.random.default_rng(seed).integers(0, V, size=lead)
    targets.reshape(-1)[0] = targets.reshape(-1)[0]           # at least one counted row
    if targets.size > 1:
        targets.reshape(-1)[-1] = -100                        # and one ignored row
    check_gradients(lambda z: F.cross_entropy(z, xp.asarray(targets)), randn(xp, lead + (V,), seed))


@given(shape=shapes, seed=seeds)
def test_binary_cross_entropy_gradient(xp, shape, seed):
    y = xp.asarray(np.random.default_rng(seed).integers(0, 2, size=shape).astype(np.float64))
    check_gradients(lambda z: F.binary_cross_entropy_with_logits(z, y), randn(xp, shape, seed, scale=3.0))


@given(B=st.integers(1, 2), H=st.integers(1, 2), Tq=st.integers(1, 4), extra=st.integers(0, 2),
       D=st.integers(1, 4), causal=st.booleans(), seed=seeds)
def test_attention_gradient(xp, B, H, Tq, extra, D, causal, seed):
    Tk = Tq + extra                           # Tq < Tk: the queries are the last positions (KV cache)
    q, k, v = randn(xp, (B, H, Tq, D), seed), randn(xp, (B, H, Tk, D), seed + 1), randn(xp, (B, H, Tk, D), seed + 2)
    check_gradients(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, causal=causal), q, k, v)


@given(B=st.integers(1, 2), H=st.integers(1, 2), T=st.integers(1, 4), D=st.integers(1, 3), seed=seeds)
def test_packed_attention_gradient(xp, B, H, T, D, seed):
    """docs/model.md eq:attention and eq:causal-mask on q, k, v packed as one (3, B, H, T, D) tensor: one gradient array."""
    check_gradients(lambda qkv: F.packed_attention(qkv)[0], randn(xp, (3, B, H, T, D), seed))


@pytest.mark.parametrize("dropout_p", [0.0, 0.3])
def test_packed_attention_equals_the_split_call_bit_for_bit(xp, dropout_p):
    qkv = npgpt.Tensor(xp.asarray(np.random.default_rng(4).standard_normal((3, 2, 2, 5, 4)).astype(np.float32)),
                       requires_grad=True)
    g = xp.asarray(np.random.default_rng(5).standard_normal((2, 2, 5, 4)).astype(np.float32))
    y, P = F.packed_attention(qkv, dropout_p=dropout_p, rng=xp.random.default_rng(6))
    y.backward(g)
    packed = backend.to_numpy(qkv.grad)
    qkv.grad = None
    split = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], return_weights=True, dropout_p=dropout_p,
                                           rng=xp.random.default_rng(6))
    split[0].backward(g)
    assert backend.to_numpy(y.data).tobytes() == backend.to_numpy(split[0].data).tobytes()
    assert backend.to_numpy(P).tobytes() == backend.to_numpy(split[1]).tobytes()
    assert packed.tobytes() == backend.to_numpy(qkv.grad).tobytes()
    with pytest.raises(ValueError, match=r"qkv must be \(3, B, H, T, D\)"):
        F.packed_attention(qkv[0])


def test_attention_gradient_with_padding_mask(xp):
    q, k, v = (randn(xp, (2, 1, 4, 3), s) for s in range(3))
    mask = xp.asarray([[1, 1, 1, 1], [0, 1, 1, 1]], dtype=bool)[:, None, None, :]   # row 2 is left-padded
    check_gradients(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask), q, k, v)


@pytest.mark.parametrize("causal", [True, False])
def test_attention_dropout_gradient_with_a_fixed_mask(xp, causal):
    # A fresh generator with the same seed for every call: the same mask in the backward pass
    # and in each finite-difference evaluation.
    q, k, v = randn(xp, (2, 2, 3, 4), 0), randn(xp, (2, 2, 5, 4), 1), randn(xp, (2, 2, 5, 4), 2)
    mask = xp.asarray([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]], dtype=bool)[:, None, None, :]
    check_gradients(lambda q, k, v: F.scaled_dot_product_attention(
        q, k, v, causal=causal, attn_mask=mask, dropout_p=0.4, rng=xp.random.default_rng(3)), q, k, v)


def test_attention_dropout_drops_the_probabilities_as_dropout_would(xp):
    q, k, v = (npgpt.Tensor(randn(xp, (2, 3, 6, 4), seed)) for seed in (4, 5, 6))
    out, P = F.scaled_dot_product_attention(q, k, v, return_weights=True, dropout_p=0.3,
                                            rng=xp.random.default_rng(9))
    dropped = F.dropout(npgpt.Tensor(P), 0.3, rng=xp.random.default_rng(9)).data    # the same draws
    np.testing.assert_allclose(host(out), host(dropped @ v.data), rtol=1e-12, atol=1e-12)
    assert (host(dropped) == 0).any() and not (host(P) == 0).all()
    plain = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0)
    np.testing.assert_allclose(host(plain), host(P @ v.data), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="dropout probability must be in"):
        F.scaled_dot_product_attention(q, k, v, dropout_p=1.0)


def test_softmax_array_is_the_forward_of_softmax(xp):
    x = randn(xp, (3, 7), 0, scale=30.0).astype(np.float32)
    np.testing.assert_array_equal(host(F.softmax_array(x)), host(F.softmax(npgpt.Tensor(x))))
    y = x.copy()
    out = F.softmax_array(y, overwrite=True)
    assert out is y and np.allclose(host(y).sum(-1), 1, atol=1e-6)
    with pytest.raises(TypeError, match="floating-point"):
        F.softmax_array(xp.arange(3))


def test_embedding_trusts_its_ids_and_the_entry_points_check_them(xp):
    # F.embedding reads no values (a device copy on a GPU); npgpt.inputs checks ids where they enter.
    w = npgpt.Tensor(randn(xp, (5, 3), 0))
    np.testing.assert_array_equal(host(F.embedding(xp.asarray([[4, 0]]), w)), host(w.data)[[[4, 0]]])
    with pytest.raises(ValueError, match="token id 5 is out of range"):
        check_token_ids(xp.asarray([[5]]), 5)


def test_dropout_gradient_uses_the_same_mask(xp):
    x = randn(xp, (4, 5), 0)
    check_gradients(lambda t: F.dropout(t, 0.3, training=True, rng=xp.random.default_rng(7)), x)


# ====================================================================== documented formulas
@given(shape=shapes, shift=st.floats(-50, 50), seed=seeds)
def test_softmax_rows_sum_to_one_and_ignore_constant_shifts(xp, shape, shift, seed):
    # docs/model.md eq:softmax: softmax is a distribution and invariant to adding a constant.
    x = randn(xp, shape, seed)
    p = host(F.softmax(npgpt.tensor(x)))
    np.testing.assert_allclose(p.sum(axis=-1), 1.0, rtol=1e-12)
    assert (p >= 0).all()
    np.testing.assert_allclose(host(F.softmax(npgpt.tensor(x + shift))), p, rtol=1e-9, atol=1e-15)


@given(lead=hnp.array_shapes(min_dims=1, max_dims=2, max_side=4), V=st.integers(2, 6), C=st.integers(1, 4),
       block_rows=st.integers(1, 5), seed=seeds)
def test_linear_cross_entropy_gradient(xp, lead, V, C, block_rows, seed):
    targets = np.random.default_rng(seed).integers(0, V, size=lead)
    if targets.size > 1:
        targets.reshape(-1)[-1] = -100                        # one ignored row
    y = xp.asarray(targets)
    check_gradients(lambda h, w: F.linear_cross_entropy(h, w, y, block_rows=block_rows),
                    randn(xp, lead + (C,), seed), randn(xp, (V, C), seed + 1))


@given(N=st.integers(1, 9), V=st.integers(2, 7), C=st.integers(1, 4), block_rows=st.integers(1, 10),
       scale=st.sampled_from([1.0, 0.25, 1024.0]), seed=seeds)
def test_linear_cross_entropy_equals_the_head_then_the_loss(xp, N, V, C, block_rows, scale, seed):
    # docs/training.md eq:cross-entropy-loss with z = h W^T: the fused op is exactly linear then cross_entropy,
    # in value and in both gradients, however the rows are split into blocks and whatever
    # scalar multiplies the loss afterwards (a loss scale, 1/K of accumulation).
    h, w = randn(xp, (N, C), seed), randn(xp, (V, C), seed + 1)
    y = np.random.default_rng(seed).integers(0, V, size=N)
    y[0] = -100 if N > 1 else y[0]
    y = xp.asarray(y)
    results = []
    for fused in (True, False):
        ht, wt = npgpt.tensor(h, requires_grad=True), npgpt.tensor(w, requires_grad=True)
        loss = (F.linear_cross_entropy(ht, wt, y, block_rows=block_rows) if fused
                else F.cross_entropy(F.linear(ht, wt.T), y)) * scale
        loss.backward()
        results.append((host(loss), host(ht.grad), host(wt.grad)))
    for fused, plain in zip(*results):
        np.testing.assert_allclose(fused, plain, rtol=1e-12, atol=1e-15)


def test_linear_cross_entropy_records_no_graph_without_grad():
    h = npgpt.tensor(np.ones((3, 2)), requires_grad=True)
    w = npgpt.tensor(np.ones((4, 2)), requires_grad=True)
    with npgpt.no_grad():
        loss = F.linear_cross_entropy(h, w, np.array([0, 1, 3]))
    assert not loss.requires_grad
    assert float(loss.item()) == pytest.approx(math.log(4))


@given(shape=shapes, seed=seeds)
def test_log_softmax_is_log_of_softmax(xp, shape, seed):
    # docs/model.md eq:log-softmax
    x = npgpt.tensor(randn(xp, shape, seed))
    np.testing.assert_allclose(host(F.log_softmax(x)), np.log(host(F.softmax(x))), rtol=1e-10, atol=1e-12)


@given(N=st.integers(1, 6), V=st.integers(2, 7), seed=seeds)
def test_cross_entropy_is_mean_negative_log_probability(xp, N, V, seed):
    # docs/training.md eq:cross-entropy-loss: L = -1/N sum_i log p_i[y_i], ignored targets excluded from the mean.
    z = randn(xp, (N, V), seed)
    y = np.random.default_rng(seed).integers(0, V, size=N)
    y[0] = -100 if N > 1 else y[0]
    p = host(F.softmax(npgpt.tensor(z)))
    counted = [i for i in range(N) if y[i] != -100]
    expected = -np.mean([math.log(p[i, y[i]]) for i in counted])
    assert host(F.cross_entropy(npgpt.tensor(z), xp.asarray(y))) == pytest.approx(expected, rel=1e-10)


@given(shape=shapes, seed=seeds)
def test_binary_cross_entropy_matches_its_definition(xp, shape, seed):
    # docs/finetuning.md eq:bce: L = -mean[y log s(z) + (1-y) log(1-s(z))], s = sigmoid (eq:sigmoid)
    z = randn(xp, shape, seed)
    y = np.random.default_rng(seed).integers(0, 2, size=shape).astype(np.float64)
    s = 1 / (1 + np.exp(-host(z)))
    np.testing.assert_allclose(host(F.sigmoid(npgpt.tensor(z))), s, rtol=1e-12)
    expected = -np.mean(y * np.log(s) + (1 - y) * np.log(1 - s))
    got = host(F.binary_cross_entropy_with_logits(npgpt.tensor(z), xp.asarray(y)))
    assert got == pytest.approx(expected, rel=1e-10)


@given(shape=st.tuples(st.integers(1, 4), st.integers(2, 8)), seed=seeds)
def test_layer_norm_output_has_zero_mean_unit_variance(xp, shape, seed):
    # docs/model.md eq:layer-norm: before the affine part, each row has mean 0 and variance 1 (up to eps).
    x = randn(xp, shape, seed, scale=5.0) + 3.0
    C = shape[-1]
    ones, zeros = npgpt.tensor(xp.ones(C)), npgpt.tensor(xp.zeros(C))
    y = host(F.layer_norm(npgpt.tensor(x), ones, zeros, eps=0.0))
    np.testing.assert_allclose(y.mean(axis=-1), 0.0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=-1), 1.0, rtol=1e-10)
    w, b = randn(xp, (C,), seed + 1), randn(xp, (C,), seed + 2)
    affine = host(F.layer_norm(npgpt.tensor(x), npgpt.tensor(w), npgpt.tensor(b), eps=0.0))
    np.testing.assert_allclose(affine, y * host(w) + host(b), rtol=1e-10, atol=1e-12)


@given(shape=shapes, seed=seeds)
def test_gelu_is_gpt2s_tanh_formula(xp, shape, seed):
    # docs/model.md eq:gelu
    x = host(randn(xp, shape, seed, scale=3.0))
    expected = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    np.testing.assert_allclose(host(F.gelu(npgpt.tensor(xp.asarray(x)))), expected, rtol=1e-12, atol=1e-15)


def test_linear_and_embedding_formulas(xp):
    # docs/model.md eq:affine (y = xW + b) and eq:embedding (y = W[ids])
    x, w, b = randn(xp, (2, 3, 4), 0), randn(xp, (4, 5), 1), randn(xp, (5,), 2)
    np.testing.assert_allclose(host(F.linear(npgpt.tensor(x), npgpt.tensor(w), npgpt.tensor(b))),
                               host(x) @ host(w) + host(b), rtol=1e-12)
    ids = xp.asarray([[3, 0], [4, 3]])
    np.testing.assert_array_equal(host(F.embedding(ids, npgpt.tensor(w.T))), host(w.T)[host(ids)])


def explicit_attention(q, k, v, causal):
    """The formula written out, loop by loop: docs/model.md eq:attention and eq:causal-mask."""
    B, H, Tq, D = q.shape
    Tk = k.shape[2]
    out = np.zeros_like(q)
    for b in range(B):
        for h in range(H):
            for i in range(Tq):
                scores = np.array([q[b, h, i] @ k[b, h, j] / math.sqrt(D) for j in range(Tk)])
                if causal:
                    scores[i + Tk - Tq + 1:] = -np.inf
                weights = np.exp(scores - scores.max())
                weights /= weights.sum()
                out[b, h, i] = sum(weights[j] * v[b, h, j] for j in range(Tk))
    return out


@given(Tq=st.integers(1, 4), extra=st.integers(0, 3), D=st.integers(1, 5), causal=st.booleans(), seed=seeds)
def test_attention_equals_the_explicit_formula(xp, Tq, extra, D, causal, seed):
    # docs/model.md eq:attention: softmax(Q K^T / sqrt(D) + M) V, with eq:causal-mask, the causal mask M
    Tk = Tq + extra
    q, k, v = randn(xp, (2, 2, Tq, D), seed), randn(xp, (2, 2, Tk, D), seed + 1), randn(xp, (2, 2, Tk, D), seed + 2)
    got = F.scaled_dot_product_attention(npgpt.tensor(q), npgpt.tensor(k), npgpt.tensor(v), causal=causal)
    np.testing.assert_allclose(host(got), explicit_attention(host(q), host(k), host(v), causal), rtol=1e-10, atol=1e-12)


@given(T=st.integers(2, 6), t=st.data(), seed=seeds)
def test_attention_is_causal(xp, T, t, seed):
    # docs/model.md eq:causal-mask: the output at position t does not depend on inputs after t.
    pos = t.draw(st.integers(0, T - 2))
    q, k, v = (randn(xp, (1, 2, T, 3), seed + i) for i in range(3))
    before = host(F.scaled_dot_product_attention(*(npgpt.tensor(a) for a in (q, k, v))))
    k2, v2 = k.copy(), v.copy()
    k2[:, :, pos + 1:] += 10.0
    v2[:, :, pos + 1:] -= 7.0
    after = host(F.scaled_dot_product_attention(npgpt.tensor(q), npgpt.tensor(k2), npgpt.tensor(v2)))
    np.testing.assert_allclose(after[:, :, :pos + 1], before[:, :, :pos + 1], rtol=1e-12)
    assert not np.allclose(after[:, :, pos + 1:], before[:, :, pos + 1:])


def test_attention_weights_are_returned_and_causal(xp):
    q, k, v = (npgpt.tensor(randn(xp, (1, 2, 4, 3), s)) for s in range(3))
    _, P = F.scaled_dot_product_attention(q, k, v, return_weights=True)
    P = host(P)
    np.testing.assert_allclose(P.sum(-1), 1.0, rtol=1e-12)
    assert (np.triu(P[0, 0], k=1) == 0).all()


def test_dropout_keeps_the_expectation_and_is_identity_in_eval(xp):
    x = npgpt.tensor(xp.ones((200, 200), dtype=np.float32))
    y = host(F.dropout(x, 0.25, training=True, rng=xp.random.default_rng(0)))
    assert set(np.unique(y)) <= {0.0, np.float32(1 / 0.75)}
    assert abs(y.mean() - 1.0) < 0.02 and abs((y == 0).mean() - 0.25) < 0.02
    assert F.dropout(x, 0.25, training=False) is x


# ======================================================== float32 accuracy and stability
FLOAT32_CASES = {
    "linear": (lambda a, b, c: F.linear(a, b, c), [(3, 8, 16), (16, 12), (12,)]),
    "softmax": (lambda a: F.softmax(a), [(4, 9, 33)]),
    "log_softmax": (lambda a: F.log_softmax(a), [(4, 33)]),
    "gelu": (lambda a: F.gelu(a), [(5, 40)]),
    "sigmoid": (lambda a: F.sigmoid(a), [(5, 40)]),
    "layer_norm": (lambda a, b, c: F.layer_norm(a, b, c), [(4, 6, 32), (32,), (32,)]),
    "attention": (lambda a, b, c: F.scaled_dot_product_attention(a, b, c), [(2, 3, 7, 8)] * 3),
}


@pytest.mark.parametrize("name", sorted(FLOAT32_CASES))
def test_float32_forward_agrees_with_float64(xp, name):
    fn, arg_shapes = FLOAT32_CASES[name]
    args64 = [randn(xp, s, i) for i, s in enumerate(arg_shapes)]
    ref = host(fn(*[npgpt.tensor(a) for a in args64]))
    got = host(fn(*[npgpt.tensor(a.astype(np.float32)) for a in args64]))
    assert got.dtype == np.float32
    rel = np.abs(got - ref).max() / np.abs(ref).max()      # relative to the output's scale
    assert rel < 1e-5, f"{name}: relative error {rel:.2e}"


def test_float32_losses_agree_with_float64(xp):
    z = randn(xp, (6, 50), 0, scale=3.0)
    y = ints(xp, (6,), 50, 1)
    ce64 = host(F.cross_entropy(npgpt.tensor(z), y))
    ce32 = host(F.cross_entropy(npgpt.tensor(z.astype(np.float32)), y))
    assert abs(ce32 - ce64) / ce64 < 1e-5
    t = xp.asarray(np.random.default_rng(2).integers(0, 2, (6, 50)).astype(np.float64))
    b64 = host(F.binary_cross_entropy_with_logits(npgpt.tensor(z), t))
    b32 = host(F.binary_cross_entropy_with_logits(npgpt.tensor(z.astype(np.float32)), t))
    assert abs(b32 - b64) / b64 < 1e-5


def test_no_overflow_at_huge_logits(xp):
    z = npgpt.tensor(xp.asarray([[1e4, 0.0, -1e4], [-1e4, -1e4, 1e4]], dtype=np.float32), requires_grad=True)
    for out in (F.softmax(z), F.log_softmax(z), F.sigmoid(z)):
        assert np.isfinite(host(out)).all()
    loss = F.cross_entropy(z, xp.asarray([1, 2]))
    assert host(loss) == pytest.approx(1e4 / 2, rel=1e-6)     # row 1 misses by 1e4, row 2 is right
    loss.backward()
    assert np.isfinite(host(z.grad)).all()
    bce = F.binary_cross_entropy_with_logits(z, xp.zeros((2, 3), dtype=np.float32))
    assert np.isfinite(host(bce))


# Logits of magnitude 1e4 in float32, against the same float32 values computed in float64.
# float32 has a spacing of 2**-10 ~ 1e-3 at 1e4: any probability formed as exp(z - lse), with
# lse = m + log(sum exp(z - m)) rounded to that spacing, carries a relative error of up to
# 5e-4; formed as exp(z - m) / sum, it is accurate to a few ulps (about 1e-7).
def large_logit_rows(V=96, seed=0):
    rng = np.random.default_rng(seed)
    rows = [np.concatenate([[1e4, 1e4 - 1, 1e4 - 3, -1e4], 1e4 - 5 - 20 * rng.random(V - 4)]),
            1e4 + 3 * rng.standard_normal(V),          # every logit near +1e4
            -1e4 + 3 * rng.standard_normal(V),         # every logit near -1e4
            1e4 * rng.standard_normal(V),              # random, scaled large: nearly one-hot
            1e3 * rng.standard_normal(V),
            np.where(rng.random(V) < 0.5, 5e3 + rng.standard_normal(V), 1e4 * rng.standard_normal(V)),
            3 * rng.standard_normal(V)]                # moderate
    return np.stack(rows).astype(np.float32)


def value_and_grad(fn, z, g=None):
    t = npgpt.tensor(z, requires_grad=True)
    out = fn(t)
    out.backward(g)
    return host(out).astype(np.float64), host(t.grad).astype(np.float64)


def relative_to_largest(got, ref):
    return np.abs(got - ref).max() / np.abs(ref).max()


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_float32_softmax_family_at_large_logits_agrees_with_float64(xp, name):
    # docs/model.md eq:softmax and eq:log-softmax, each evaluated in float32 and in float64
    z = large_logit_rows()
    g = np.random.default_rng(1).standard_normal(z.shape).astype(np.float32)
    fn = getattr(F, name)
    out32, grad32 = value_and_grad(fn, xp.asarray(z), xp.asarray(g))
    out64, grad64 = value_and_grad(fn, xp.asarray(z, dtype=np.float64), xp.asarray(g, dtype=np.float64))
    if name == "softmax":    # every probability to a few ulps of its own size (or underflowing to ~0)
        np.testing.assert_allclose(out32, out64, rtol=2e-6, atol=1e-30)
    else:                    # log-probabilities as large as -2e4: a few ulps of each, or of 1
        np.testing.assert_allclose(out32, out64, rtol=5e-7, atol=1e-6)
    assert relative_to_largest(grad32, grad64) < 2e-6


def test_float32_cross_entropy_at_large_logits_agrees_with_float64(xp):
    # docs/training.md eq:cross-entropy-loss in float32 and in float64, row by row and as a batch mean
    z = large_logit_rows()
    targets = np.argsort(-z, axis=1)[:, 2]     # the third most likely token: losses of 1.8 .. 1e4
    targets[0] = 3                             # and one that misses by 2e4
    z32, z64 = xp.asarray(z), xp.asarray(z, dtype=np.float64)
    for i in range(len(z)):                    # one row counted at a time: its own loss
        only_i = xp.asarray(np.where(np.arange(len(z)) == i, targets, -100))
        ce = lambda t, only_i=only_i: F.cross_entropy(t, only_i)
        (loss32, grad32), (loss64, grad64) = value_and_grad(ce, z32), value_and_grad(ce, z64)
        assert abs(loss32 - loss64) <= 5e-7 * max(abs(loss64), 1.0), f"row {i}: loss {loss32} vs {loss64}"
        assert relative_to_largest(grad32, grad64) < 2e-6, f"row {i}"
    ce = lambda t: F.cross_entropy(t, xp.asarray(targets))
    (loss32, grad32), (loss64, grad64) = value_and_grad(ce, z32), value_and_grad(ce, z64)
    assert loss32 == pytest.approx(loss64, rel=2e-7)
    assert relative_to_largest(grad32, grad64) < 2e-6


def test_float32_binary_cross_entropy_at_large_logits_agrees_with_float64(xp):
    # docs/finetuning.md eq:bce: no log-sum-exp here, but the same inputs must not hurt it either
    z = large_logit_rows()
    y = np.random.default_rng(2).integers(0, 2, z.shape)
    bce = lambda t: F.binary_cross_entropy_with_logits(t, xp.asarray(y, dtype=t.dtype))
    (loss32, grad32), (loss64, grad64) = value_and_grad(bce, xp.asarray(z)), \
        value_and_grad(bce, xp.asarray(z, dtype=np.float64))
    assert loss32 == pytest.approx(loss64, rel=1e-6)
    assert relative_to_largest(grad32, grad64) < 2e-6


def test_fully_masked_attention_rows_are_finite(xp):
    q, k, v = (npgpt.tensor(randn(xp, (1, 1, 3, 2), s).astype(np.float32)) for s in range(3))
    nothing = xp.zeros((1, 1, 1, 3), dtype=bool)
    out = F.scaled_dot_product_attention(q, k, v, causal=False, attn_mask=nothing)
    np.testing.assert_array_equal(host(out), 0.0)


# ================================================================================ bad input
def test_clear_errors_for_bad_input():
    x = npgpt.tensor(np.ones((2, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"linear: input \(2, 3\) does not fit weight \(4, 5\)"):
        F.linear(x, npgpt.tensor(np.ones((4, 5))))
    with pytest.raises(TypeError, match="embedding: ids must be integers, got dtype float32"):
        F.embedding(np.ones(3, dtype=np.float32), npgpt.tensor(np.ones((5, 2))))
    with pytest.raises(ValueError, match="token id 9 is out of range: valid ids are 0..4"):
        check_token_ids(np.array([1, 9]), 5)
    with pytest.raises(ValueError, match=r"targets of shape \(3,\) do not match logits \(2, 3\)"):
        F.cross_entropy(x, np.array([0, 1, 2]))
    with pytest.raises(TypeError, match="targets must be integers"):
        F.cross_entropy(x, np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="target ids must lie in 0..2"):
        F.cross_entropy(x, np.array([0, 3]))
    with pytest.raises(ValueError, match="every target equals ignore_index"):
        F.cross_entropy(x, np.array([-100, -100]))
    with pytest.raises(ValueError, match=r"q must be \(B, H, T, D\)"):
        F.scaled_dot_product_attention(x, x, x)
    with pytest.raises(ValueError, match="dropout probability must be in"):
        F.dropout(x, 1.0)
    with pytest.raises(ValueError, match=r"weight of shape \(2,\) does not fit input \(2, 3\)"):
        F.layer_norm(x, npgpt.tensor(np.ones(2)), npgpt.tensor(np.ones(3)))
    with pytest.raises(TypeError, match="softmax: expected a floating-point tensor"):
        F.softmax(npgpt.tensor([1, 2]))
    w = npgpt.tensor(np.ones((4, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"hidden \(2, 3\) does not fit weight \(3, 4\)"):
        F.linear_cross_entropy(x, w.T, np.array([0, 1]))
    with pytest.raises(ValueError, match=r"targets of shape \(3,\) do not match hidden \(2, 3\)"):
        F.linear_cross_entropy(x, w, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="target ids must lie in 0..3"):
        F.linear_cross_entropy(x, w, np.array([0, 4]))
    with pytest.raises(ValueError, match="block_rows must be >= 1"):
        F.linear_cross_entropy(x, w, np.array([0, 1]), block_rows=0)
