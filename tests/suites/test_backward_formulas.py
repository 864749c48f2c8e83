"""The backward passes derived in docs/backward.md, one test per result, against npgpt's ops.

Each test computes the derived formula with NumPy, from the op's inputs alone (nothing is
read from the op's saved arrays), and compares it with the gradient the library's backward pass
returns. Everything runs in float64, so the two agree to rounding (rtol 1e-10), far tighter than
a finite-difference check could tell: a formula that is right only to first order, or a sign
slip in a term that is small on these inputs, fails here.
"""

import math

import numpy as np
import pytest

import npgpt
import npgpt.functional as F
from npgpt import GPT, GPTConfig, nn
from npgpt.training.optim import AdamW

RTOL, ATOL = 1e-10, 1e-12


def leaf(array):
    """A float64 leaf tensor that wants its gradient."""
    return npgpt.Tensor(np.asarray(array, dtype=np.float64), requires_grad=True)


def vjp(output, inputs, g):
    """The library's vector-Jacobian product: dL/d(inputs) for L = sum(output * g)."""
    return npgpt.grad(output, inputs, grad_outputs=g)


def softmax_rows(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# --------------------------------------------------------------------------- linear, eq:linear-backward
def test_linear_layer_gradients_are_g_wT_xT_g_and_the_column_sums_of_g():
    # docs/backward.md eq:linear-backward: dX = G W^T, dW = X^T G, db = sum over rows of G, with the leading
    # axes of a (B, T, in) input flattened into the rows.
    rng = np.random.default_rng(0)
    X, W, b = rng.standard_normal((2, 3, 4)), rng.standard_normal((4, 5)), rng.standard_normal(5)
    G = rng.standard_normal((2, 3, 5))
    x, w, bias = leaf(X), leaf(W), leaf(b)
    gx, gw, gb = vjp(F.linear(x, w, bias), [x, w, bias], G)
    X2, G2 = X.reshape(6, 4), G.reshape(6, 5)
    np.testing.assert_allclose(gx, (G2 @ W.T).reshape(2, 3, 4), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(gw, X2.T @ G2, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(gb, G2.sum(axis=0), rtol=RTOL, atol=ATOL)


def test_linear_weight_gradient_is_a_sum_of_outer_products_one_per_row():
    # docs/backward.md eq:linear-backward, written by index: dW_ij = sum_n X_ni G_nj, i.e. X^T G is the sum
    # over rows n of the outer products x_n g_n^T.
    rng = np.random.default_rng(1)
    X, W, G = rng.standard_normal((7, 3)), rng.standard_normal((3, 2)), rng.standard_normal((7, 2))
    w = leaf(W)
    (gw,) = vjp(F.linear(npgpt.Tensor(X), w), [w], G)
    np.testing.assert_allclose(gw, sum(np.outer(X[n], G[n]) for n in range(7)), rtol=RTOL, atol=ATOL)


# ------------------------------------------------------------------------ softmax, eq:softmax-jacobian, eq:softmax-backward
def test_softmax_jacobian_is_diag_y_minus_y_yT():
    # docs/backward.md eq:softmax-jacobian: dy_i/dx_j = y_i (delta_ij - y_j). The library's backward applied to
    # the basis vectors e_i gives the rows of the Jacobian (J^T e_i); J is symmetric.
    rng = np.random.default_rng(2)
    X = rng.standard_normal(6)
    y = softmax_rows(X)
    J = np.diag(y) - np.outer(y, y)
    x = leaf(X)
    rows = []
    for i in range(6):
        out = F.softmax(x)
        rows.append(vjp(out, [x], np.eye(6)[i])[0])
    np.testing.assert_allclose(np.array(rows), J.T, rtol=RTOL, atol=ATOL)


def test_softmax_vector_product_needs_no_jacobian():
    # docs/backward.md eq:softmax-backward: J^T g = y * (g - <g, y>), row by row, for a (B, T, V) input.
    rng = np.random.default_rng(3)
    X, G = rng.standard_normal((2, 3, 5)) * 3, rng.standard_normal((2, 3, 5))
    y = softmax_rows(X)
    x = leaf(X)
    (gx,) = vjp(F.softmax(x), [x], G)
    np.testing.assert_allclose(gx, y * (G - (G * y).sum(axis=-1, keepdims=True)), rtol=RTOL, atol=ATOL)
    dense = np.stack([np.stack([(np.diag(y[b, t]) - np.outer(y[b, t], y[b, t])).T @ G[b, t] for t in range(3)])
                      for b in range(2)])
    np.testing.assert_allclose(gx, dense, rtol=RTOL, atol=ATOL)


# --------------------------------------------------------------- log-softmax, cross-entropy
def test_log_softmax_gradient_is_g_minus_p_times_the_sum_of_g():
    # docs/backward.md eq:log-softmax-backward: dL/dx = g - softmax(x) sum_j g_j.
    rng = np.random.default_rng(4)
    X, G = rng.standard_normal((4, 7)) * 2, rng.standard_normal((4, 7))
    x = leaf(X)
    (gx,) = vjp(F.log_softmax(x), [x], G)
    np.testing.assert_allclose(gx, G - softmax_rows(X) * G.sum(axis=-1, keepdims=True), rtol=RTOL, atol=ATOL)


def test_cross_entropy_gradient_is_softmax_minus_onehot_over_the_counted_rows():
    # docs/backward.md eq:cross-entropy-backward: dL/dz_n = (p_n - onehot(y_n)) / N for the N counted rows, and 0 for a
    # row whose target is ignore_index.
    rng = np.random.default_rng(5)
    Z = rng.standard_normal((2, 4, 6)) * 2
    targets = np.array([[1, 5, -100, 0], [2, 2, 3, -100]])
    counted = targets != -100
    N = counted.sum()
    z = leaf(Z)
    loss = F.cross_entropy(z, targets)
    (gz,) = npgpt.grad(loss, [z])
    onehot = np.eye(6)[np.where(counted, targets, 0)]
    expected = (softmax_rows(Z) - onehot) * counted[..., None] / N
    np.testing.assert_allclose(gz, expected, rtol=RTOL, atol=ATOL)
    p = softmax_rows(Z)[counted, targets[counted]]
    np.testing.assert_allclose(loss.item(), -np.log(p).mean(), rtol=RTOL)


# ------------------------------------ layer norm, eq:layer-norm-params-backward to eq:layer-norm-backward
def test_layer_norm_jacobian_of_the_normalised_vector():
    # docs/backward.md eq:layer-norm-jacobian: d xhat_i / d x_j = (r / C) (C delta_ij - 1 - xhat_i xhat_j), checked
    # row by row through the backward pass with w = 1, b = 0 and g = e_i.
    rng = np.random.default_rng(6)
    C, eps = 5, 1e-5
    X = rng.standard_normal(C) * 2 + 1
    mu, var = X.mean(), X.var()
    r = 1 / np.sqrt(var + eps)
    xhat = (X - mu) * r
    J = (r / C) * (C * np.eye(C) - 1 - np.outer(xhat, xhat))
    x = leaf(X)
    rows = [vjp(F.layer_norm(x, None, None, eps), [x], np.eye(C)[i])[0] for i in range(C)]
    np.testing.assert_allclose(np.array(rows), J, rtol=RTOL, atol=ATOL)


def test_layer_norm_input_gradient_is_r_times_h_minus_its_two_projections():
    # docs/backward.md eq:layer-norm-backward: dL/dx = r (h - mean(h) - xhat mean(h xhat)), h = g w.
    rng = np.random.default_rng(7)
    X, G = rng.standard_normal((3, 4, 8)) * 3, rng.standard_normal((3, 4, 8))
    W, B = rng.standard_normal(8), rng.standard_normal(8)
    eps = 1e-5
    mu, var = X.mean(-1, keepdims=True), X.var(-1, keepdims=True)
    r = 1 / np.sqrt(var + eps)
    xhat = (X - mu) * r
    h = G * W
    expected = r * (h - h.mean(-1, keepdims=True) - xhat * (h * xhat).mean(-1, keepdims=True))
    x, w, b = leaf(X), leaf(W), leaf(B)
    gx, gw, gb = vjp(F.layer_norm(x, w, b, eps), [x, w, b], G)
    np.testing.assert_allclose(gx, expected, rtol=RTOL, atol=ATOL)
    # docs/backward.md eq:layer-norm-params-backward: the gain and bias collect g * xhat and g over every position.
    np.testing.assert_allclose(gw, (G * xhat).sum(axis=(0, 1)), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(gb, G.sum(axis=(0, 1)), rtol=RTOL, atol=ATOL)


def test_layer_norm_input_gradient_is_orthogonal_to_ones_and_to_xhat():
    # docs/backward.md eq:layer-norm-backward: shifting x by a constant or scaling it about its mean leaves xhat
    # (nearly, for eps > 0) unchanged, so dL/dx has no component along 1 and, with eps = 0,
    # none along xhat.
    rng = np.random.default_rng(8)
    X, G = rng.standard_normal((5, 6)), rng.standard_normal((5, 6))
    x = leaf(X)
    (gx,) = vjp(F.layer_norm(x, None, None, eps=0.0), [x], G)
    xhat = (X - X.mean(-1, keepdims=True)) / X.std(-1, keepdims=True)
    np.testing.assert_allclose(gx.sum(-1), 0, atol=1e-12)
    np.testing.assert_allclose((gx * xhat).sum(-1), 0, atol=1e-12)


# ---------------------------------------------------------------------------- GELU, eq:gelu-backward
def test_gelu_derivative_in_tanh_form():
    # docs/backward.md eq:gelu-backward: GELU'(x) = (1 + t)/2 + x/2 (1 - t^2) c (1 + 3 a x^2),
    # t = tanh(c (x + a x^3)), c = sqrt(2/pi), a = 0.044715.
    X = np.linspace(-6, 6, 49)
    c, a = math.sqrt(2 / math.pi), 0.044715
    t = np.tanh(c * (X + a * X ** 3))
    derivative = (1 + t) / 2 + X / 2 * (1 - t ** 2) * c * (1 + 3 * a * X ** 2)
    x = leaf(X)
    G = np.random.default_rng(9).standard_normal(49)
    (gx,) = vjp(F.gelu(x), [x], G)
    np.testing.assert_allclose(gx, G * derivative, rtol=RTOL, atol=ATOL)
    # the limits the derivation predicts: 0 far left, 1 far right, 1/2 at 0
    assert abs(derivative[0]) < 1e-6 and abs(derivative[-1] - 1) < 1e-6 and derivative[24] == 0.5


# --------------------------------------- attention, eq:attention-values-backward to eq:attention-qk-backward
def attention_reference(Q, K, V, G, keep=None):
    """Forward and backward of causal attention, written from the derived formulas
    (eq:attention-values-backward, eq:attention-scores-backward, eq:attention-qk-backward)."""
    D, T = Q.shape[-1], Q.shape[-2]
    s = 1 / math.sqrt(D)
    S = s * Q @ K.swapaxes(-1, -2) + np.where(np.tril(np.ones((T, T), bool)), 0.0, -np.inf)
    P = softmax_rows(S)
    Pd = P if keep is None else P * keep
    dV = Pd.swapaxes(-1, -2) @ G                                  # eq:attention-values-backward
    dP = G @ V.swapaxes(-1, -2)
    if keep is not None:
        dP = dP * keep                                           # eq:attention-values-backward
    dS = P * (dP - (dP * P).sum(-1, keepdims=True))              # eq:attention-scores-backward
    dQ = s * dS @ K                                              # eq:attention-qk-backward
    dK = s * dS.swapaxes(-1, -2) @ Q                             # eq:attention-qk-backward
    return Pd @ V, dQ, dK, dV, dS


def test_attention_gradients_dv_dp_ds_dq_dk():
    # docs/backward.md eq:attention-values-backward, eq:attention-scores-backward and eq:attention-qk-backward:
    # dV = P^T G, dP = G V^T, dS = P (dP - rowsum(dP P)),
    # dQ = s dS K, dK = s dS^T Q, s = 1/sqrt(D), causal mask.
    rng = np.random.default_rng(10)
    shape = (2, 3, 5, 4)                                         # (B, H, T, D)
    Q, K, V, G = (rng.standard_normal(shape) for _ in range(4))
    out, dQ, dK, dV, dS = attention_reference(Q, K, V, G)
    q, k, v = leaf(Q), leaf(K), leaf(V)
    y = F.scaled_dot_product_attention(q, k, v, causal=True)
    np.testing.assert_allclose(y.data, out, rtol=RTOL, atol=ATOL)
    gq, gk, gv = vjp(y, [q, k, v], G)
    np.testing.assert_allclose(gv, dV, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(gq, dQ, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(gk, dK, rtol=RTOL, atol=ATOL)
    # docs/backward.md eq:attention-scores-backward: no gradient reaches a masked score, and each row of dS sums to 0
    assert np.all(dS[..., np.triu_indices(5, 1)[0], np.triu_indices(5, 1)[1]] == 0)
    np.testing.assert_allclose(dS.sum(-1), 0, atol=1e-12)


def test_attention_gradients_with_dropout_use_the_same_mask():
    # docs/backward.md eq:attention-values-backward with dropout: O = (P * M) V, so dV = (P * M)^T G and dP = (G V^T) * M,
    # M the kept entries over (1 - p); then eq:attention-scores-backward and eq:attention-qk-backward as without dropout.
    rng = np.random.default_rng(11)
    shape, p = (1, 2, 6, 3), 0.3
    Q, K, V, G = (rng.standard_normal(shape) for _ in range(4))
    # the mask the op draws: one float32 uniform per probability, kept where u >= p
    keep = (np.random.default_rng(42).random((1, 2, 6, 6), dtype=np.float32) >= p) / (1 - p)
    out, dQ, dK, dV, _ = attention_reference(Q, K, V, G, keep)
    q, k, v = leaf(Q), leaf(K), leaf(V)
    y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, rng=np.random.default_rng(42))
    np.testing.assert_allclose(y.data, out, rtol=RTOL, atol=ATOL)
    for got, want in zip(vjp(y, [q, k, v], G), (dQ, dK, dV)):
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


# ------------------------------------------------------------------------ embedding, eq:embedding-backward
def test_embedding_gradient_is_a_scatter_add_and_equals_onehot_transpose_g():
    # docs/backward.md eq:embedding-backward: dW_v = sum over positions n with ids_n = v of G_n; the same as the
    # linear rule dW = A^T G for the one-hot matrix A of the ids.
    rng = np.random.default_rng(12)
    V, C = 6, 3
    ids = np.array([[4, 1, 4], [0, 4, 1]])                       # 4 three times, 2, 3, 5 never
    Wt, G = rng.standard_normal((V, C)), rng.standard_normal((2, 3, C))
    w = leaf(Wt)
    (gw,) = vjp(F.embedding(ids, w), [w], G)
    expected = np.zeros((V, C))
    for n, v in enumerate(ids.reshape(-1)):
        expected[v] += G.reshape(-1, C)[n]
    np.testing.assert_allclose(gw, expected, rtol=RTOL, atol=ATOL)
    A = np.eye(V)[ids.reshape(-1)]                               # (N, V) one-hot rows
    np.testing.assert_allclose(gw, A.T @ G.reshape(-1, C), rtol=RTOL, atol=ATOL)
    assert np.all(gw[[2, 3, 5]] == 0)


# ------------------------------------------------------------------------ tied head, eq:tied-head-backward
def test_tied_token_table_gradient_is_the_embedding_part_plus_the_head_part():
    # docs/backward.md eq:tied-head-backward: dL/dW_te = scatter_add(ids, dL/dE) + (dL/dZ)^T H, where E are the
    # token embeddings looked up from W_te, H the final hidden states and Z = H W_te^T the logits.
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8), seed=0)
    for p in model.parameters():
        p.data = p.data.astype(np.float64)
    rng = np.random.default_rng(13)
    ids = rng.integers(0, 11, size=(2, 6))
    targets = rng.integers(0, 11, size=(2, 6))
    W = model.wte.weight
    E = F.embedding(ids, W)                                      # (B, T, C), in the graph
    H = model.trunk(ids, inputs_embeds=E)                        # (B, T, C)
    Z = model.lm_head(H)                                         # (B, T, V)
    loss = F.cross_entropy(Z, targets)
    dW, dE, dZ = npgpt.grad(loss, [W, E, Z])
    embedding_part = np.zeros_like(W.data)
    np.add.at(embedding_part, ids.reshape(-1), dE.reshape(-1, 8))
    head_part = dZ.reshape(-1, 11).T @ H.data.reshape(-1, 8)
    np.testing.assert_allclose(dW, embedding_part + head_part, rtol=1e-9, atol=ATOL)
    assert np.abs(embedding_part).max() > 0.01 and np.abs(head_part).max() > 0.01


# ---------------------------------------------------------------------------- AdamW, eq:adamw-step
def test_adamw_step_is_decay_then_the_bias_corrected_ratio():
    # docs/backward.md eq:adamw-step: theta_t = (1 - lr wd) theta_{t-1} - lr/(1 - b1^t) m_t / (sqrt(v_t/(1 - b2^t)) + eps),
    # over five steps with fresh gradients, for a decayed and an undecayed parameter.
    rng = np.random.default_rng(14)
    lr, (b1, b2), eps, wd = 0.01, (0.9, 0.95), 1e-8, 0.1
    for decay in (wd, 0.0):
        theta0 = rng.standard_normal((3, 4))
        param = nn.Parameter(theta0.copy())
        opt = AdamW([param], lr=lr, betas=(b1, b2), eps=eps, weight_decay=decay)
        theta, m, v = theta0.copy(), np.zeros((3, 4)), np.zeros((3, 4))
        for t in range(1, 6):
            g = rng.standard_normal((3, 4)) * 10.0 ** rng.integers(-3, 2)
            param.grad = g.copy()
            opt.step()
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            theta = (1 - lr * decay) * theta - lr / (1 - b1 ** t) * m / (np.sqrt(v / (1 - b2 ** t)) + eps)
            np.testing.assert_allclose(param.data, theta, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("t", [1, 10, 1000])
def test_adamw_with_a_constant_gradient_moves_each_weight_by_lr(t):
    # docs/backward.md eq:adamw-step: a constant gradient makes m_hat / sqrt(v_hat) = sign(g) at every t,
    # so each weight moves by lr (plus its decay) whatever the size of g.
    param = nn.Parameter(np.zeros(3))
    opt = AdamW([param], lr=0.1, weight_decay=0.0, eps=1e-12)
    for _ in range(t):
        param.grad = np.array([1e-4, -3.0, 500.0])
        opt.step()
    np.testing.assert_allclose(param.data, -0.1 * t * np.sign([1e-4, -3.0, 500.0]), rtol=1e-6)
