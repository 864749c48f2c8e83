"""The GPT-2 model: configuration, names and shapes, causality, gradients, KV cache (its checked inputs:
tests/test_inputs.py)."""

import math

import numpy as np
import pytest

import npgpt.functional as F
from npgpt import backend, nn
from npgpt.autograd import Tensor, no_grad
from npgpt.model import GPT, GPTConfig, KVCache

TINY = dict(vocab_size=61, block_size=16, n_layer=2, n_head=2, n_embd=16)


def tiny(seed=0, **overrides):
    return GPT(GPTConfig(**{**TINY, **overrides}), seed=seed).eval()


def ids(B=2, T=7, V=61, seed=0):
    return np.random.default_rng(seed).integers(0, V, (B, T))


# ------------------------------------------------------------------ config
@pytest.mark.parametrize("field, value, message", [
    ("n_embd", 30, "n_embd .30. must be divisible by n_head .4."),
    ("n_layer", 0, "n_layer must be a positive integer"),
    ("vocab_size", 2.5, "vocab_size must be a positive integer"),
    ("block_size", -1, "block_size must be a positive integer"),
    ("n_head", True, "n_head must be a positive integer"),
    ("dropout", 1.0, r"dropout must be in \[0, 1\)"),
    ("dropout", -0.1, r"dropout must be in \[0, 1\)"),
    ("layer_norm_epsilon", 0.0, "layer_norm_epsilon must be positive"),
])
def test_config_validation_names_the_field(field, value, message):
    kwargs = dict(n_head=4, n_embd=32)
    kwargs[field] = value
    with pytest.raises(ValueError, match=message):
        GPTConfig(**kwargs)


def test_gpt2_small_has_124_439_808_parameters():
    # docs/model.md eq:parameter-count: V C + P C + L (12 C^2 + 13 C) + 2 C
    assert GPTConfig().num_parameters() == 124_439_808


@pytest.mark.parametrize("cfg", [TINY, dict(vocab_size=7, block_size=3, n_layer=1, n_head=1, n_embd=4),
                                 dict(vocab_size=100, block_size=32, n_layer=3, n_head=4, n_embd=24)])
def test_parameter_count_formula_matches_the_allocated_model(cfg):
    # docs/model.md eq:parameter-count, checked against the parameters actually allocated
    config = GPTConfig(**cfg)
    assert GPT(config).num_parameters() == config.num_parameters()


@pytest.mark.slow
def test_gpt2_small_allocates_exactly_that_many_parameters():
    model = GPT(GPTConfig())
    assert model.num_parameters() == 124_439_808
    assert model.wte.weight.shape == (50257, 768) and model.h[11].mlp.c_fc.weight.shape == (768, 3072)


def test_parameter_names_are_hugging_faces():
    names = [n for n, _ in tiny(n_layer=1).named_parameters()]
    assert names == ["wte.weight", "wpe.weight",
                     "h.0.ln_1.weight", "h.0.ln_1.bias", "h.0.attn.c_attn.weight", "h.0.attn.c_attn.bias",
                     "h.0.attn.c_proj.weight", "h.0.attn.c_proj.bias", "h.0.ln_2.weight", "h.0.ln_2.bias",
                     "h.0.mlp.c_fc.weight", "h.0.mlp.c_fc.bias", "h.0.mlp.c_proj.weight", "h.0.mlp.c_proj.bias",
                     "ln_f.weight", "ln_f.bias"]
    shapes = {n: p.shape for n, p in tiny(n_layer=1).named_parameters()}
    assert shapes["h.0.attn.c_attn.weight"] == (16, 48) and shapes["h.0.mlp.c_proj.weight"] == (64, 16)


def test_gpt2_initialisation():
    model = GPT(GPTConfig(vocab_size=500, block_size=64, n_layer=4, n_head=4, n_embd=128), seed=1)
    sd = model.state_dict()
    assert abs(sd["wte.weight"].std() - 0.02) < 1e-3 and abs(sd["h.0.attn.c_attn.weight"].std() - 0.02) < 1e-3
    residual = 0.02 / math.sqrt(2 * 4)
    assert abs(sd["h.2.attn.c_proj.weight"].std() - residual) < 1e-3
    assert abs(sd["h.2.mlp.c_proj.weight"].std() - residual) < 1e-3
    assert all(np.all(v == 0) for k, v in sd.items() if k.endswith(".bias"))
    assert np.all(sd["ln_f.weight"] == 1) and all(v.dtype == np.float32 for v in sd.values())
    same = GPT(GPTConfig(vocab_size=500, block_size=64, n_layer=4, n_head=4, n_embd=128), seed=1)
    other = GPT(GPTConfig(vocab_size=500, block_size=64, n_layer=4, n_head=4, n_embd=128), seed=2)
    assert np.array_equal(same.wte.weight.data, sd["wte.weight"])
    assert not np.array_equal(other.wte.weight.data, sd["wte.weight"])


def test_logits_shape_and_tied_head():
    model = tiny()
    x = ids()
    logits = model(x)
    assert isinstance(logits, Tensor) and logits.shape == (2, 7, 61)
    # The LM head is wte^T: recompute the last step by hand from the blocks' output.
    with no_grad():
        h = model.wte(x) + model.wpe(np.arange(7))
        for block in model.h:
            h, _ = block(h)
        expected = model.ln_f(h).data @ model.wte.weight.data.T
    np.testing.assert_allclose(logits.data, expected, rtol=1e-5, atol=1e-6)


def test_block_is_pre_ln_residual():
    # docs/model.md eq:pre-ln-block: x' = x + attn(ln_1(x)); y = x' + mlp(ln_2(x'))
    block = tiny().h[0]
    x = Tensor(np.random.default_rng(0).standard_normal((2, 5, 16)).astype(np.float32))
    y, _ = block(x)
    a, _ = block.attn(block.ln_1(x))
    x1 = x.data + a.data
    expected = x1 + block.mlp(block.ln_2(x1)).data
    np.testing.assert_allclose(y.data, expected, rtol=1e-5, atol=1e-6)
    # and the MLP is c_proj(gelu(c_fc(.))) with GPT-2's tanh GELU (docs/model.md eq:gelu)
    z = np.random.default_rng(1).standard_normal((3, 16)).astype(np.float32)
    u = z @ block.mlp.c_fc.weight.data + block.mlp.c_fc.bias.data
    g = 0.5 * u * (1 + np.tanh(math.sqrt(2 / math.pi) * (u + 0.044715 * u ** 3)))
    np.testing.assert_allclose(block.mlp(z).data, g @ block.mlp.c_proj.weight.data + block.mlp.c_proj.bias.data,
                               rtol=1e-4, atol=1e-6)


def test_an_untrained_model_has_a_loss_close_to_log_V():
    model = tiny()
    x, y = ids(seed=1), ids(seed=2)
    loss = F.cross_entropy(model(x), y)                  # the caller computes the loss
    assert loss.shape == ()
    # an untrained model predicts roughly uniformly: loss close to log V
    assert abs(loss.item() - math.log(61)) < 0.2


def test_forward_returns_only_the_logits_and_refuses_the_old_targets_argument():
    model = tiny()
    assert isinstance(model(ids()), Tensor)
    with pytest.raises(TypeError, match="targets"):
        model(ids(), targets=ids())
    with pytest.raises(TypeError, match="return_attention"):
        model(ids(), return_attention=True)


def test_forward_is_the_head_of_the_trunk_and_ln_f_runs_once():
    model = tiny()
    x = ids()
    calls = []
    ln_f = model.ln_f.forward
    model.ln_f.forward = lambda h: calls.append(1) or ln_f(h)
    hidden = model.trunk(x)
    assert hidden.shape == (2, 7, 16) and len(calls) == 1
    logits = model(x)
    assert len(calls) == 2                               # one final layer norm per forward pass
    np.testing.assert_array_equal(logits.data, model.lm_head(hidden).data)
    np.testing.assert_array_equal(model.lm_head(hidden).data, F.linear(hidden, model.wte.weight.T).data)
    # the same with a padding mask and position ids: forward takes the trunk's arguments
    mask = np.ones((2, 7), np.int64)
    mask[1, :3] = 0
    pos = np.maximum(np.cumsum(mask, 1) - 1, 0)
    np.testing.assert_array_equal(model(x, attention_mask=mask, position_ids=pos).data,
                                  model.lm_head(model.trunk(x, attention_mask=mask, position_ids=pos)).data)


def test_full_model_is_causal():
    # docs/model.md eq:causal-mask: logits at positions <= t do not depend on tokens after t
    model = tiny()
    x = ids(B=1, T=12)
    base = model(x).data
    for t in (0, 5, 10):
        changed = x.copy()
        changed[0, t + 1:] = (changed[0, t + 1:] + 7) % 61
        out = model(changed).data
        np.testing.assert_array_equal(out[:, :t + 1], base[:, :t + 1])
        assert not np.allclose(out[:, t + 1:], base[:, t + 1:])


def test_return_attention_shapes_rows_and_causal_zeros():
    # docs/model.md eq:attention and eq:causal-mask: each row of P is a distribution over positions <= its own
    model = tiny()
    hidden, attentions = model.trunk(ids(B=3, T=6), return_attention=True)
    assert len(attentions) == 2
    for P in attentions:
        assert P.shape == (3, 2, 6, 6)
        np.testing.assert_allclose(P.sum(-1), 1, rtol=1e-5)
        assert np.all(P[..., np.triu_indices(6, 1)[0], np.triu_indices(6, 1)[1]] == 0)
    np.testing.assert_array_equal(hidden.data, model.trunk(ids(B=3, T=6)).data)


def test_attention_dropout_is_drawn_inside_the_fused_attention_op():
    # Training mode: the block's attention drops probabilities in F.scaled_dot_product_attention,
    # with the generator of its attn_dropout module; the same draws applied by hand agree.
    model = tiny(dropout=0.5, seed=1).train()
    attn = model.h[0].attn
    x = Tensor(np.random.default_rng(0).standard_normal((2, 5, 16)).astype(np.float32))
    attn.resid_dropout.p = 0.0                            # only the attention dropout is on
    y, P = attn(x)
    state = attn.attn_dropout.get_rng_state()
    assert state == {"seed": attn.attn_dropout.seed, "draws": 1}
    from npgpt.backend import philox

    replay = philox.uniform(P.size, attn.attn_dropout.seed, 0).reshape(P.shape)    # draw 0 of the module
    keep = (replay >= 0.5).astype(np.float32) / np.float32(0.5)
    q, k, v = attn.c_attn(x).split(3, axis=2)
    v = v.data.reshape(2, 5, 2, 8).transpose(0, 2, 1, 3)
    by_hand = ((P * keep) @ v).transpose(0, 2, 1, 3).reshape(2, 5, 16)
    expected = by_hand @ attn.c_proj.weight.data + attn.c_proj.bias.data
    np.testing.assert_allclose(y.data, expected, rtol=1e-5, atol=1e-6)
    assert (keep == 0).any() and np.all(P[..., np.triu_indices(5, 1)[0], np.triu_indices(5, 1)[1]] == 0)


def test_dropout_seeds_are_children_of_the_model_seed():
    model = tiny(seed=3, dropout=0.1)
    seeds = [m.seed for _, m in model.named_modules() if isinstance(m, nn.Dropout)]
    assert len(seeds) == 1 + 3 * 2 and len(set(seeds)) == len(seeds)       # all distinct
    first_child = lambda seed: int(np.random.SeedSequence(seed).spawn(1)[0].generate_state(1, np.uint64)[0])
    assert model.drop.seed == first_child(first_child(3))    # child 0 of child 0 of the seed
    assert [m.seed for _, m in tiny(seed=3, dropout=0.1).named_modules() if isinstance(m, nn.Dropout)] == seeds
    assert model.drop.seed not in [m.seed for _, m in tiny(seed=4).named_modules() if isinstance(m, nn.Dropout)]


def test_dropout_only_in_training_mode_and_reproducible():
    x = ids()
    a, b = tiny(seed=3, dropout=0.2), tiny(seed=3, dropout=0.2)
    np.testing.assert_array_equal(a(x).data, a(x).data)          # eval: deterministic
    a.train(), b.train()
    first = a(x).data
    np.testing.assert_array_equal(first, b(x).data)              # same seeds, same masks
    assert not np.allclose(first, a(x).data)                     # masks change between calls
    loss = F.cross_entropy(a(x), x)
    loss.backward()
    assert a.h[0].attn.c_attn.weight.grad is not None


def test_finite_difference_gradient_of_the_loss_float64():
    """The whole model's backward pass against central differences (docs/autograd.md eq:central-difference)."""
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8), seed=4).eval()
    rng = np.random.default_rng(0)
    for p in model.parameters():      # float64, and non-trivial layer-norm gains and biases
        p.data = p.data.astype(np.float64) + 0.1 * rng.standard_normal(p.shape)
    x, y = rng.integers(0, 11, (2, 6)), rng.integers(0, 11, (2, 6))

    def loss_value():
        with no_grad():
            return F.cross_entropy(model(x), y).item()

    F.cross_entropy(model(x), y).backward()
    eps = 1e-6
    for name in ("wte.weight", "wpe.weight", "h.0.attn.c_attn.weight", "h.1.attn.c_proj.bias",
                 "h.1.mlp.c_fc.weight", "h.0.ln_1.weight", "ln_f.bias"):
        p = dict(model.named_parameters())[name]
        flat = p.data.reshape(-1)
        for j in rng.choice(flat.size, size=min(4, flat.size), replace=False):
            saved = flat[j]
            flat[j] = saved + eps
            plus = loss_value()
            flat[j] = saved - eps
            minus = loss_value()
            flat[j] = saved
            numeric = (plus - minus) / (2 * eps)
            analytic = p.grad.reshape(-1)[j]
            assert abs(analytic - numeric) <= 1e-7 + 1e-5 * abs(numeric), (name, j, analytic, numeric)


# ---------------------------------------------------------------- KV cache
def test_cached_forward_equals_full_forward():
    # docs/model.md eq:kv-cache: attention of new queries over cached keys gives the full pass's outputs
    model = tiny()
    x = ids(B=2, T=11)
    full = model(x).data
    cache = model.new_cache(2)
    with no_grad():
        parts = [model(x[:, :4], cache=cache).data]
        for t in range(4, 11):
            parts.append(model(x[:, t:t + 1], cache=cache).data)
    assert cache.length == 11
    np.testing.assert_allclose(np.concatenate(parts, axis=1), full, rtol=1e-5, atol=1e-5)


def test_cache_grows_by_slice_assignment_without_reallocation():
    model = tiny()
    cache = model.new_cache(1)
    buffers = [id(k) for k in cache.keys]
    with no_grad():
        model(ids(B=1, T=3), cache=cache)
        model(ids(B=1, T=1), cache=cache)
    assert [id(k) for k in cache.keys] == buffers and cache.keys[0].shape == (1, 2, 16, 8)
    assert np.any(cache.keys[1][:, :, :4] != 0) and np.all(cache.keys[1][:, :, 4:] == 0)


def test_cache_errors():
    model = tiny()
    cache = model.new_cache(2)
    with pytest.raises(RuntimeError, match="no_grad"):
        model(ids(), cache=cache)
    with no_grad():
        model(ids(T=10), cache=cache)
        with pytest.raises(ValueError, match=r"sequence length 7 \(\+ 10 cached positions\) exceeds block_size 16"):
            model(ids(T=7), cache=cache)
        with pytest.raises(ValueError, match="holds 2 sequences but idx has batch 1"):
            model(ids(B=1, T=1), cache=cache)
    small = KVCache(model.config, 1, capacity=2)
    with pytest.raises(ValueError, match="capacity 2"):
        small.update(0, np.zeros((1, 2, 3, 8), np.float32), np.zeros((1, 2, 3, 8), np.float32))


@pytest.mark.gpu
def test_model_on_gpu_matches_cpu():
    if not backend.cuda_available():
        pytest.skip("no GPU")
    model = tiny()
    x = ids()
    cpu = model(x).data
    model.to("cuda")
    gpu = model(x)
    assert gpu.device == "cuda"
    np.testing.assert_allclose(backend.to_numpy(gpu.data), cpu, rtol=1e-4, atol=1e-5)
    out = model.generate(x, 5)
    assert backend.device_of(out) == "cuda"
    model.to("cpu")
    np.testing.assert_array_equal(backend.to_numpy(out), model.generate(x, 5))


def test_module_repr_and_config_dict():
    model = tiny()
    assert "CausalSelfAttention" in repr(model) and model.config.to_dict()["n_embd"] == 16
    with pytest.raises(TypeError, match="GPTConfig"):
        GPT({"n_embd": 16})
    assert isinstance(model.h, nn.ModuleList)


def test_dot_products_of_unit_variance_vectors_have_variance_d_k():
    """docs/model.md eq:score-variance: Var(q . k) = d_k, so scores are divided by sqrt(d_k) (eq:attention)."""
    rng = np.random.default_rng(0)
    for d_k in (4, 16, 64):
        q, k = rng.standard_normal((2, 200_000, d_k))
        scores = (q * k).sum(axis=1)
        assert abs(scores.var() / d_k - 1) < 0.03
        assert abs((scores / math.sqrt(d_k)).var() - 1) < 0.03


def test_init_false_leaves_zeros_for_a_checkpoint_to_fill():
    model = GPT(GPTConfig(**TINY), init=False)
    for name, p in model.named_parameters():
        expected = 1.0 if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name == "ln_f.weight" else 0.0
        assert np.all(p.data == expected), name


@pytest.mark.parametrize("rows", [1, 2, 5, 16, 17])
def test_a_few_rows_through_the_tied_head_without_gradients_give_the_same_logits(rows, monkeypatch):
    """speed.head_weight_first: 2-16 rows under no_grad go through (wte h^T)^T, the same logits as h wte^T."""
    from npgpt.backend import speed

    model = tiny()
    hidden = Tensor(np.random.default_rng(rows).standard_normal((rows, 16)).astype(np.float32), requires_grad=True)
    expected = F.linear(hidden, model.wte.weight.T).data
    asked, policy = [], speed.head_weight_first
    monkeypatch.setattr(speed, "head_weight_first", lambda w, n: asked.append(policy(w, n)) or asked[-1])
    with no_grad():
        got = model.lm_head(hidden).data
    assert asked == [2 <= rows <= 16]                   # the policy was asked, and chose the table-first product
    assert got.flags.c_contiguous and got.shape == (rows, model.config.vocab_size)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert model.lm_head(hidden).requires_grad          # with gradients: the linear op, part of the graph
    assert asked == [2 <= rows <= 16]                   # ... which does not ask
