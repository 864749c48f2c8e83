"""Formulas of docs/model.md that are not a single op: multi-head attention written out.

The reference is computed here with NumPy, one head and one sequence at a time, from the
module's weights, and compared in float64 with npgpt's ``CausalSelfAttention``.
"""

import numpy as np

import npgpt
from npgpt.model import GPT, GPTConfig


def one_head(Q, K, V):
    """softmax(Q K^T / sqrt(d) + M) V for one sequence and one head (docs/model.md eq:attention and eq:causal-mask)."""
    T, d = Q.shape
    S = Q @ K.T / np.sqrt(d) + np.where(np.tril(np.ones((T, T), dtype=bool)), 0.0, -np.inf)
    P = np.exp(S - S.max(axis=1, keepdims=True))
    return (P / P.sum(axis=1, keepdims=True)) @ V


def test_multi_head_attention_is_the_concatenated_heads_times_w_o_and_the_sum_over_heads():
    # docs/model.md eq:multi-head: MultiHead(X) = [A_1 ... A_H] W_O + b_O = sum_h A_h W_O^(h) + b_O, with
    # A_h the attention of head h's columns of Q = X W_Q + b_Q, K and V; c_attn packs W_Q, W_K, W_V.
    config = GPTConfig(vocab_size=7, block_size=8, n_layer=1, n_head=4, n_embd=12)
    attn = GPT(config, seed=0).eval().h[0].attn
    rng = np.random.default_rng(0)
    for p in attn.parameters():                  # float64, biases too: every term of eq:multi-head counts
        p.data = rng.standard_normal(p.shape) * 0.5
    X = rng.standard_normal((2, 6, 12))          # (B, T, C)
    with npgpt.no_grad():
        library, _ = attn(npgpt.Tensor(X))
    W_qkv, b_qkv = attn.c_attn.weight.data, attn.c_attn.bias.data
    W_o, b_o = attn.c_proj.weight.data, attn.c_proj.bias.data
    H, d = 4, 3
    for b in range(2):
        Q, K, V = np.split(X[b] @ W_qkv + b_qkv, 3, axis=1)
        heads = [one_head(Q[:, h * d:(h + 1) * d], K[:, h * d:(h + 1) * d], V[:, h * d:(h + 1) * d])
                 for h in range(H)]
        concatenated = np.concatenate(heads, axis=1) @ W_o + b_o
        summed = sum(heads[h] @ W_o[h * d:(h + 1) * d] for h in range(H)) + b_o
        np.testing.assert_allclose(library.numpy()[b], concatenated, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(concatenated, summed, rtol=1e-10, atol=1e-12)
