"""The verifying pass's weights in panels (npgpt/generation/panels.py; docs/generation.md, "The verifying pass").

The claims under test: the panelled product is ``x W`` (docs/generation.md eq:panels) to float32
rounding, for any shape, padding included; the model's linear layers use the panels only while
they are attached, for 2-16 rows and without gradients; a pass over k tokens through the panels
gives the logits of k one-token steps; and prompt lookup with the panels chooses exactly the
tokens of plain greedy decoding.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from npgpt import generation, nn
from npgpt.autograd import Tensor, no_grad
from npgpt.backend import speed
from npgpt.generation import panels
from npgpt.model import GPT, GPTConfig


def small(seed=0, vocab=40, block=96, layers=2, heads=2, embd=32):
    return GPT(GPTConfig(vocab_size=vocab, block_size=block, n_layer=layers, n_head=heads, n_embd=embd), seed=seed).eval()


# ------------------------------------------------------------ the product
@given(st.integers(0, 2**32 - 1), st.integers(1, 20), st.integers(1, 70), st.integers(1, 90),
       st.sampled_from([64, 1024, 4096, 2**20]))
def test_the_panelled_product_is_x_times_w(seed, rows, fan_in, fan_out, panel_bytes):
    # docs/generation.md eq:panels: x W = [x W_0 | x W_1 | ... | x W_{P-1}], W_p = W[:, p w:(p+1) w].
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((fan_in, fan_out)).astype(np.float32)
    x = rng.standard_normal((rows, fan_in)).astype(np.float32)
    got = panels.PanelledWeight(W, panel_bytes).matmul(x)
    assert got.shape == (rows, fan_out) and got.dtype == np.float32
    np.testing.assert_allclose(got, x.astype(np.float64) @ W.astype(np.float64), rtol=1e-5, atol=1e-5 * fan_in)


def test_the_panels_are_the_columns_of_w_side_by_side_the_last_padded_with_zeros():
    W = np.arange(3 * 40, dtype=np.float32).reshape(3, 40)
    p = panels.PanelledWeight(W, panel_bytes=16 * 3 * 4)             # 16 columns a panel: 16 + 16 + 8
    assert p.panels.shape == (3, 3, 16)
    for i in range(3):
        np.testing.assert_array_equal(p.panels[i, :, :min(16, 40 - 16 * i)], W[:, 16 * i:16 * (i + 1)])
    assert not p.panels[2, :, 8:].any()
    assert panels.PanelledWeight(W).panels.shape == (1, 3, 40)        # a small weight is one panel
    with pytest.raises(ValueError, match="2-D"):
        panels.PanelledWeight(W[0])


def test_a_panel_is_a_multiple_of_16_columns_and_about_the_policys_size():
    W = np.zeros((768, 3072), np.float32)
    p = panels.PanelledWeight(W)
    P, K, width = p.panels.shape
    assert width % 16 == 0 and P * width >= 3072 and K == 768
    assert speed.PANEL_BYTES // 2 < K * width * 4 <= speed.PANEL_BYTES


@given(st.integers(1, 200), st.sampled_from([1, 2, 3, 4]), st.integers(1, 2**21))
def test_the_claims_cut_the_panels_into_consecutive_ranges_a_multiple_of_the_workers(count, workers, claim_bytes):
    # speed.share_work hands the ranges out; together they must be every panel once, in order.
    p = panels.PanelledWeight(np.zeros((4, 16 * count), np.float32), panel_bytes=16 * 4 * 4)
    assert p.panels.shape[0] == count
    real = speed.PANEL_CLAIM_BYTES
    try:
        speed.PANEL_CLAIM_BYTES = claim_bytes
        p._claims.clear()
        claims = p.claims(workers)
    finally:
        speed.PANEL_CLAIM_BYTES = real
    assert claims[0][0] == 0 and claims[-1][1] == count
    assert all(start < stop for start, stop in claims)
    assert all(stop == start for (_, stop), (start, _) in zip(claims, claims[1:]))     # consecutive
    if workers == 1:
        assert len(claims) == 1
    elif count >= workers:
        assert len(claims) % workers == 0 or len(claims) == count


def test_the_product_shared_between_threads_is_the_product_on_one_bit_for_bit(monkeypatch):
    # Each range of panels is its own product, by the same kernel whichever thread runs it: the
    # threads change the time, never a bit of the result (and so never a greedy choice).
    rng = np.random.default_rng(0)
    W = rng.standard_normal((96, 1000)).astype(np.float32)
    x = rng.standard_normal((16, 96)).astype(np.float32)
    p = panels.PanelledWeight(W, panel_bytes=16 * 96 * 4)
    monkeypatch.setattr(speed, "PANEL_CLAIM_BYTES", 3 * 16 * 96 * 4)
    one = p.matmul(x)
    monkeypatch.setattr(speed, "panel_workers", lambda weight, flops: 3)
    p._claims.clear()
    assert len(p.claims(3)) > 3
    shared = p.matmul(x)
    np.testing.assert_array_equal(shared, one)
    monkeypatch.setattr(speed, "panel_workers", lambda weight, flops: 1)
    np.testing.assert_array_equal(panels.PanelledWeight(W, panel_bytes=16 * 96 * 4).panels, p.panels)  # the copy too


# ------------------------------------------------------------ the linear layers
def test_a_linear_layer_uses_its_panels_for_2_to_16_rows_without_gradients_only():
    rng = np.random.default_rng(0)
    layer = nn.Linear(24, 40, rng=rng)
    layer.bias.data[:] = rng.standard_normal(40).astype(np.float32)
    calls = []
    p = panels.PanelledWeight(layer.weight.data, panel_bytes=16 * 24 * 4)
    product = p.matmul
    p.matmul = lambda x: (calls.append(x.shape[0]), product(x))[1]
    layer.panels = p
    for T in (1, 2, 16, 17):
        x = rng.standard_normal((1, T, 24)).astype(np.float32)
        want = x @ layer.weight.data + layer.bias.data
        with no_grad():
            got = layer(x)
        assert isinstance(got, Tensor) and got.shape == (1, T, 40)
        np.testing.assert_allclose(got.data, want, rtol=1e-5, atol=1e-5)
    assert calls == [2, 16]                        # one row and 17 rows took the plain product
    x = Tensor(rng.standard_normal((1, 4, 24)).astype(np.float32), requires_grad=True)
    layer(x).sum().backward()                      # with gradients: F.linear, and its backward
    assert calls == [2, 16] and x.grad is not None and layer.weight.grad is not None


def test_attached_hands_the_panels_over_for_the_block_only_even_when_it_raises():
    model = small()
    made = panels.ModelPanels(model)
    linears = [m for _, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert len(made.linears) == len(linears) == 4 * model.config.n_layer
    with made.attached():
        assert all(m.panels is not None for m in linears)
    assert all(m.panels is None for m in linears)
    with pytest.raises(RuntimeError), made.attached():
        raise RuntimeError("a pass that fails")
    assert all(m.panels is None for m in linears)


# ------------------------------------------------------------ the model's pass
@pytest.mark.parametrize("k", [2, 5, 16])
def test_a_k_token_pass_through_the_panels_gives_the_logits_of_k_one_token_steps(k):
    model = small(seed=3)
    ids = np.random.default_rng(k).integers(0, 40, (1, 20 + k))
    made = panels.ModelPanels(model, panel_bytes=16 * 32 * 4)          # several panels per weight
    with no_grad():
        cache = model.new_cache(1, 20 + k)
        model.trunk(ids[:, :20], cache=cache)
        steps = [model.lm_head(model.trunk(ids[:, t:t + 1], cache=cache)[0]).data for t in range(20, 20 + k)]
        cache.length = 20
        with made.attached():
            hidden = model.trunk(ids[:, 20:], cache=cache)
        wide = model.lm_head(hidden[0], made.head).data
    assert wide.shape == (k, 40)
    np.testing.assert_allclose(wide, np.concatenate(steps), rtol=1e-5, atol=1e-5)


def test_the_policy_makes_panels_on_the_cpu_for_long_enough_generations_of_large_models_in_float32_only(
        monkeypatch):
    model = small()
    weight_bytes = sum(p.data.nbytes for p in model.parameters())
    assert panels.for_generation(model, 100) is None                # its weights sit in the cache: no panels
    monkeypatch.setattr(speed, "PANEL_MIN_MODEL_BYTES", weight_bytes)  # as if it were as large as the threshold
    assert panels.for_generation(model, speed.PANEL_MIN_STEPS) is not None
    assert panels.for_generation(model, speed.PANEL_MIN_STEPS - 1) is None
    monkeypatch.setattr(speed, "PANEL_MIN_MODEL_BYTES", weight_bytes + 1)
    assert panels.for_generation(model, 100) is None
    monkeypatch.setattr(speed, "PANEL_MIN_MODEL_BYTES", 0)
    model.set_compute_dtype("float16")
    assert panels.for_generation(model, 100) is None


@given(st.integers(0, 2**32 - 1), st.sampled_from([1, 3, 10]), st.sampled_from([None, 2, 3]))
def test_prompt_lookup_through_the_panels_chooses_the_tokens_of_plain_greedy_decoding(seed, lookup, workers):
    # workers: the products and the panels' copy shared between that many threads, however
    # small (None: as the speed policy says, which keeps this small model's products on one thread).
    real_workers = speed.panel_workers
    asked = []
    if workers is not None:
        speed.panel_workers = lambda array, flops: asked.append(flops) or workers
    try:
        got, plain, panels_made = _lookup_through_panels_and_plain_greedy(seed, lookup)
    finally:
        speed.panel_workers = real_workers
    assert panels_made == 1                        # the generation did go through the panels
    assert workers is None or asked                # ... and, when forced, shared its products
    np.testing.assert_array_equal(got, plain)


def _lookup_through_panels_and_plain_greedy(seed, lookup):
    """Plain greedy ids, prompt lookup's ids through small panels, and how many panel sets were made."""
    rng = np.random.default_rng(seed)
    model = small(seed=seed % 7)
    unit = rng.integers(0, 40, int(rng.integers(2, 9)))
    prompt = np.concatenate([np.resize(unit, int(rng.integers(8, 30))), rng.integers(0, 40, 3)])[None]
    n = 40
    plain = generation.generate(model, prompt, n)
    made = []
    real, real_min_bytes = panels.ModelPanels, speed.PANEL_MIN_MODEL_BYTES
    try:
        panels.ModelPanels = lambda m: made.append(real(m, panel_bytes=16 * 32 * 4)) or made[-1]
        speed.PANEL_MIN_MODEL_BYTES = 0            # this small model through the panels all the same
        got = generation.generate(model, prompt, n, prompt_lookup=lookup)
    finally:
        panels.ModelPanels, speed.PANEL_MIN_MODEL_BYTES = real, real_min_bytes
    return got, plain, len(made)


@pytest.mark.gpu
def test_the_panelled_product_runs_on_cupy_and_the_policy_keeps_it_off_the_gpu():
    from tests.conftest import require_cuda

    require_cuda()
    import cupy

    rng = np.random.default_rng(0)
    W, x = rng.standard_normal((24, 50)).astype(np.float32), rng.standard_normal((3, 24)).astype(np.float32)
    got = panels.PanelledWeight(cupy.asarray(W), panel_bytes=16 * 24 * 4).matmul(cupy.asarray(x))
    assert isinstance(got, cupy.ndarray)
    np.testing.assert_allclose(cupy.asnumpy(got), x @ W, rtol=1e-5, atol=1e-5)
    assert not speed.panel_weights(cupy.asarray(W), 1000, 2**40)
