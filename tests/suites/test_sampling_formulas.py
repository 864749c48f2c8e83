"""Property tests of the formulas of docs/generation.md, one per equation, against npgpt.generation.

Each test names the equation it checks. The filters are exercised on random logit rows
(hypothesis) and on a small GPT; float64 references are computed here, independently of the
module's own softmax.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import npgpt
import npgpt.functional as F
from npgpt import GPT, GPTConfig, generation

# Logits on a grid of quarters: ties are exact ties and distinct logits differ by >= 0.25, so
# "the largest" and "the k-th largest" are never decided by a rounding error.
logit_rows = arrays(np.float64, st.tuples(st.integers(1, 4), st.integers(2, 12)),
                    elements=st.integers(-32, 32).map(lambda v: v / 4))


def reference_softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def small_model():
    return GPT(GPTConfig(vocab_size=23, block_size=12, n_layer=2, n_head=2, n_embd=16), seed=3).eval()


class ScriptedRng:
    """Stands in for numpy's Generator: ``random(n)`` returns chosen numbers in [0, 1)."""

    def __init__(self, values):
        self.values = np.asarray(values, dtype=np.float64)

    def random(self, n):
        return self.values[:n]


# --------------------------------------------------------------------------- eq:sequence-probability
def test_log_probability_of_a_text_is_the_sum_of_next_token_log_probabilities(small_model):
    # docs/generation.md eq:sequence-probability: log p(x_1..n) = sum_t log p(x_t | x_<t). The factors computed one
    # step at a time, through the KV cache as generation does, add up to the one-pass value.
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 23, size=(2, 10))
    with npgpt.no_grad():
        logp = F.log_softmax(small_model(ids[:, :-1])).numpy().astype(np.float64)     # (B, T-1, V)
        one_pass = logp[np.arange(2)[:, None], np.arange(9)[None], ids[:, 1:]].sum(axis=1)
        cache = small_model.new_cache(2)
        stepwise = np.zeros(2)
        for t in range(9):
            z = small_model(ids[:, t:t + 1], cache=cache).numpy()[:, -1].astype(np.float64)
            stepwise += np.log(reference_softmax(z)[np.arange(2), ids[:, t + 1]])
    np.testing.assert_allclose(stepwise, one_pass, rtol=1e-5)


def test_sequence_probabilities_are_a_distribution_over_all_continuations():
    # docs/generation.md eq:sequence-probability: the product of conditionals sums to 1 over every sequence.
    model = GPT(GPTConfig(vocab_size=4, block_size=4, n_layer=1, n_head=1, n_embd=8), seed=0).eval()
    grid = np.array(np.meshgrid(*[np.arange(4)] * 3, indexing="ij")).reshape(3, -1).T     # all 64 x_2..x_4
    ids = np.concatenate([np.zeros((64, 1), dtype=np.int64), grid], axis=1)             # prompt x_1 = 0
    with npgpt.no_grad():
        p = reference_softmax(small := model(ids[:, :-1]).numpy().astype(np.float64))
    assert small.shape == (64, 3, 4)
    total = np.prod(p[np.arange(64)[:, None], np.arange(3)[None], ids[:, 1:]], axis=1).sum()
    assert total == pytest.approx(1.0, abs=1e-6)


# --------------------------------------------------------------------------- eq:greedy
@given(logit_rows)
def test_greedy_is_the_argmax_of_the_logits(z):
    # docs/generation.md eq:greedy: x_{t+1} = argmax_v z_v, the same as the argmax of the softmax.
    np.testing.assert_array_equal(generation.greedy(z), np.argmax(z, axis=-1))
    np.testing.assert_array_equal(generation.greedy(z), np.argmax(reference_softmax(z), axis=-1))
    np.testing.assert_array_equal(generation.next_token(z), np.argmax(z, axis=-1))


def test_greedy_generation_takes_the_argmax_at_every_step(small_model):
    # docs/generation.md eq:greedy, in the loop: rerunning the model on the output, each generated
    # token is the argmax of the logits at the position before it.
    prompt = np.array([[1, 5, 7], [2, 2, 9]])
    out = small_model.generate(prompt, max_new_tokens=6)
    with npgpt.no_grad():
        logits = small_model(out[:, :-1]).numpy()
    np.testing.assert_array_equal(out[:, 3:], logits[:, 2:].argmax(axis=-1))


# --------------------------------------------------------------------------- eq:inverse-cdf
def test_inverse_cdf_picks_the_first_token_whose_cumulative_mass_reaches_u():
    # docs/generation.md eq:inverse-cdf: x = min{i : c_i >= u}; token i owns the interval (c_{i-1}, c_i].
    p = np.array([0.5, 0.25, 0.0, 0.25])
    z = np.log(np.where(p > 0, p, 1e-300))[None].repeat(6, axis=0)
    # sample() uses u = 1 - random(): random() = 0.6 -> u = 0.4 -> token 0, and so on.
    u = np.array([0.4, 0.5, 0.5000001, 0.75, 0.7500001, 1.0])
    picks = generation.sample(z, ScriptedRng(1.0 - u))
    np.testing.assert_array_equal(picks, [0, 0, 1, 1, 3, 3])       # token 2 (p = 0) is never chosen


@settings(max_examples=25, deadline=None)
@given(arrays(np.float64, st.integers(2, 8), elements=st.floats(-4, 4, allow_nan=False, width=64)))
def test_sampled_frequencies_match_the_probabilities(z):
    # docs/generation.md eq:inverse-cdf: P(x = i) = p_i; 20,000 draws, within 5 standard errors.
    n = 20_000
    p = reference_softmax(z)
    picks = generation.sample(np.repeat(z[None], n, axis=0), np.random.default_rng(0))
    freq = np.bincount(picks, minlength=len(z)) / n
    assert np.all(np.abs(freq - p) <= 5 * np.sqrt(p * (1 - p) / n) + 1e-12)


def test_filtered_tokens_are_never_sampled():
    # docs/generation.md eq:inverse-cdf: a -inf logit has probability 0, an empty interval.
    z = np.array([[0.0, 1.0, -np.inf, 2.0, -np.inf]]).repeat(5000, axis=0)
    picks = generation.sample(z, np.random.default_rng(1))
    assert not np.isin(picks, [2, 4]).any()


# --------------------------------------------------------------------------- eq:temperature
@given(logit_rows, st.floats(0.05, 20.0))
def test_temperature_is_a_power_of_the_probabilities(z, tau):
    # docs/generation.md eq:temperature: softmax(z / tau) = p^(1/tau) / sum p^(1/tau).
    q = F.softmax_array(generation.apply_temperature(z, tau))
    p = reference_softmax(z)
    log_powered = np.log(p) / tau
    expected = reference_softmax(log_powered)
    np.testing.assert_allclose(q, expected, rtol=1e-9, atol=1e-12)


@given(logit_rows)
def test_temperature_keeps_the_order_and_moves_between_greedy_and_uniform(z):
    # docs/generation.md eq:temperature: the order of the probabilities never changes; entropy grows with
    # tau; tau -> 0 is one-hot on the argmax (when it is unique), tau -> inf uniform.
    def entropy(q):
        return -(q * np.log(np.clip(q, 1e-300, None))).sum(axis=-1)

    taus = [0.01, 0.3, 1.0, 3.0, 1000.0]
    qs = [F.softmax_array(generation.apply_temperature(z, t)) for t in taus]
    ents = np.array([entropy(q) for q in qs])
    assert np.all(np.diff(ents, axis=0) >= -1e-9)
    for q in qs:
        np.testing.assert_array_equal(np.argmax(q, axis=-1), np.argmax(z, axis=-1))
    np.testing.assert_allclose(qs[-1], 1 / z.shape[-1], atol=0.02)
    top2 = np.sort(z, axis=-1)[:, -2:]
    unique = top2[:, 1] - top2[:, 0] > 0.5
    np.testing.assert_allclose(qs[0][unique].max(axis=-1), 1.0, atol=1e-6)


# --------------------------------------------------------------------------- eq:top-k
@given(logit_rows, st.integers(1, 14))
def test_top_k_keeps_the_logits_at_least_the_kth_largest(z, k):
    # docs/generation.md eq:top-k: K_k = {v : z_v >= z_(k)}; the rest become -inf, kept logits unchanged.
    kept = np.isfinite(generation.top_k_filter(z, k))
    kth = np.sort(z, axis=-1)[:, ::-1][:, min(k, z.shape[-1]) - 1:min(k, z.shape[-1])]
    np.testing.assert_array_equal(kept, z >= kth)
    assert np.all(kept.sum(axis=-1) >= min(k, z.shape[-1]))
    np.testing.assert_array_equal(generation.top_k_filter(z, k)[kept], z[kept])


def test_top_k_of_distinct_logits_keeps_exactly_k_and_one_is_greedy():
    # docs/generation.md eq:top-k: with no ties, |K_k| = k; k = 1 leaves only the argmax.
    z = np.random.default_rng(0).standard_normal((50, 30))
    for k in (1, 5, 29, 30):
        assert (np.isfinite(generation.top_k_filter(z, k)).sum(axis=-1) == k).all()
    picks = generation.next_token(z, generation.SamplingConfig(do_sample=True, top_k=1), rng=np.random.default_rng(0))
    np.testing.assert_array_equal(picks, z.argmax(axis=-1))


# --------------------------------------------------------------------------- eq:renormalise
@given(logit_rows, st.integers(1, 14), st.floats(0.05, 1.0))
def test_filtering_then_softmax_renormalises_the_kept_probabilities(z, k, top_p):
    # docs/generation.md eq:renormalise: softmax of the filtered logits = p_v [v in S] / sum_{u in S} p_u.
    p = reference_softmax(z)
    for filtered in (generation.top_k_filter(z, k), generation.top_p_filter(z, top_p)):
        kept = np.isfinite(filtered)
        expected = np.where(kept, p, 0.0) / np.where(kept, p, 0.0).sum(axis=-1, keepdims=True)
        np.testing.assert_allclose(F.softmax_array(filtered), expected, rtol=1e-9, atol=1e-12)


def test_top_k_with_temperature_renormalises_the_tempered_distribution():
    # docs/generation.md eq:renormalise (with eq:temperature): top-k does not depend on tau; the kept tokens get
    # the tempered probabilities, renormalised; next_token samples from exactly that.
    z = np.array([[2.0, 1.0, 0.5, -1.0]])
    for tau in (0.5, 3.0):
        kept = np.isfinite(generation.top_k_filter(generation.apply_temperature(z, tau), 2))
        np.testing.assert_array_equal(kept, [[True, True, False, False]])
    n = 40_000
    picks = generation.next_token(np.repeat(z, n, axis=0),
                                  generation.SamplingConfig(do_sample=True, temperature=3.0, top_k=2),
                                  rng=np.random.default_rng(0))
    expected = reference_softmax(z[0, :2] / 3.0)
    freq = np.bincount(picks, minlength=4)[:2] / n
    np.testing.assert_allclose(freq, expected, atol=0.01)


# --------------------------------------------------------------------------- eq:top-p
@given(logit_rows, st.floats(0.01, 0.999))
def test_top_p_keeps_the_shortest_prefix_whose_mass_reaches_p(z, top_p):
    # docs/generation.md eq:top-p: n* = min{n : sum_{m<=n} p_(m) >= p}; V_p = the n* most likely
    # tokens (plus any tied with the last one).
    p = reference_softmax(z)
    kept = np.isfinite(generation.top_p_filter(z, top_p))
    for row in range(z.shape[0]):
        sorted_p = np.sort(p[row])[::-1]
        n_star = int(np.argmax(np.cumsum(sorted_p) >= top_p - 1e-12)) + 1
        threshold = np.sort(z[row])[::-1][n_star - 1]
        np.testing.assert_array_equal(kept[row], z[row] >= threshold)
        assert p[row][kept[row]].sum() >= top_p - 1e-9                        # reaches p ...
        smallest = p[row][kept[row]].min()
        if kept[row].sum() == n_star:                                          # ... and is the shortest
            assert p[row][kept[row]].sum() - smallest < top_p + 1e-9


def test_top_p_adapts_the_number_of_candidates_to_the_models_certainty():
    # docs/generation.md eq:top-p: a confident row keeps one token, a flat row keeps many.
    sure = np.log(np.array([[0.97, 0.01, 0.01, 0.01]]))
    flat = np.log(np.array([[0.26, 0.25, 0.25, 0.24]]))
    assert np.isfinite(generation.top_p_filter(sure, 0.9)).sum() == 1
    assert np.isfinite(generation.top_p_filter(flat, 0.9)).sum() == 4
    assert np.isfinite(generation.top_p_filter(flat, 1.0)).all()
