"""Generation: the logit filters' properties, the sampler, and the loop (cache, eos, cropping)."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import npgpt
import npgpt.functional as F
from npgpt import generation
from npgpt.backend import speed
from npgpt.model import GPT, GPTConfig


def tiny(seed=0, block_size=16):
    return GPT(GPTConfig(vocab_size=41, block_size=block_size, n_layer=2, n_head=2, n_embd=16), seed=seed).eval()


def prompt(B=2, T=5, seed=0):
    return np.random.default_rng(seed).integers(0, 41, (B, T))


logit_rows = st.integers(0, 2**32 - 1).map(
    lambda s: (np.random.default_rng(s).standard_normal((3, 17)) * 3).astype(np.float32))


# ----------------------------------------------------------------- filters
def test_greedy_is_argmax():
    z = np.array([[0.1, 2.0, -1.0], [5.0, 4.0, 6.0]], np.float32)
    assert generation.greedy(z).tolist() == [1, 2]


@given(logit_rows, st.integers(1, 20))
def test_top_k_keeps_exactly_the_k_largest(z, k):
    out = generation.top_k_filter(z, k)
    kept = np.isfinite(out)
    assert np.all(kept.sum(-1) == min(k, 17))          # no ties in continuous random logits
    for row, keep in zip(z, kept):
        assert row[keep].min() >= row[~keep].max(initial=-np.inf)
    np.testing.assert_array_equal(out[kept], z[kept])


@given(logit_rows, st.floats(0.01, 1.0))
def test_top_p_keeps_the_smallest_prefix_with_mass_at_least_p(z, p):
    # docs/model.md eq:sampling-top-p: the nucleus is the shortest most-likely prefix with mass >= p
    out = generation.top_p_filter(z, p)
    probs = F.softmax_array(z.astype(np.float64))
    for row, prow, orow in zip(z, probs, out):
        kept = np.isfinite(orow)
        order = np.argsort(-row)
        n = kept.sum()
        assert set(np.flatnonzero(kept)) == set(order[:n])                 # a most-likely prefix
        assert prow[kept].sum() >= p - 1e-6                                 # reaching p ...
        assert n == 1 or prow[order[:n - 1]].sum() < p + 1e-6              # ... and no longer than needed
        np.testing.assert_array_equal(orow[kept], row[kept])


def test_top_p_one_keeps_everything_and_tiny_p_keeps_the_argmax():
    z = prompt(3, 9).astype(np.float32)
    assert np.all(np.isfinite(generation.top_p_filter(z + 0.1 * np.arange(9), 1.0)))
    out = generation.top_p_filter(z + 0.01 * np.arange(9), 1e-9)
    assert np.all(np.isfinite(out).sum(-1) == 1)


def test_temperature_scales_log_probabilities():
    # docs/model.md eq:sampling-temperature: p_i(tau) proportional to exp(z_i / tau)
    z = np.array([[1.0, 2.0, 4.0]], np.float32)
    for tau in (0.5, 1.0, 3.0):
        p = F.softmax_array(generation.apply_temperature(z, tau))
        expected = np.exp(z / tau) / np.exp(z / tau).sum()
        np.testing.assert_allclose(p, expected, rtol=1e-6)
    sharp = F.softmax_array(generation.apply_temperature(z, 0.1))
    flat = F.softmax_array(generation.apply_temperature(z, 100.0))
    assert sharp[0, 2] > 0.99 and flat.max() - flat.min() < 0.02


def test_sampler_frequencies_follow_the_distribution_and_never_pick_masked_tokens():
    z = np.log(np.array([[0.5, 0.3, 0.2, 0.0]], np.float64) + 1e-300).astype(np.float32)
    z[0, 3] = -np.inf
    rng = np.random.default_rng(0)
    draws = np.array([generation.sample(np.repeat(z, 500, 0), rng) for _ in range(8)]).ravel()
    freq = np.bincount(draws, minlength=4) / draws.size
    np.testing.assert_allclose(freq[:3], [0.5, 0.3, 0.2], atol=0.02)
    assert freq[3] == 0


def test_sampler_is_reproducible_with_a_seed():
    z = prompt(4, 41).astype(np.float32)
    a = generation.sample(z, np.random.default_rng(5))
    b = generation.sample(z, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kwargs, message", [
    (dict(temperature=0), "temperature must be > 0"),
    (dict(temperature=-1.0), "temperature must be > 0"),
    (dict(top_k=0), "top_k must be an integer >= 1"),
    (dict(top_k=2.5), "top_k must be an integer >= 1"),
    (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
    (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
    (dict(max_new_tokens=-1), "max_new_tokens must be an integer >= 0"),
])
def test_generate_validates_its_arguments(kwargs, message):
    model = tiny()
    kwargs = {"max_new_tokens": 3, **kwargs}
    n = kwargs.pop("max_new_tokens")
    with pytest.raises(ValueError, match=message):
        model.generate(prompt(), n, do_sample=True, **kwargs)


def test_generate_validates_the_prompt():
    model = tiny()
    with pytest.raises(TypeError, match="integers"):
        model.generate(prompt().astype(float), 2)
    with pytest.raises(ValueError, match="token id 99 is out of range"):
        model.generate(np.array([[99] + [1] * 20]), 2)      # out of range even outside the window
    with pytest.raises(ValueError, match="2-D"):
        model.generate(np.array([1, 2]), 2)
    with pytest.raises(ValueError, match="eos_token_id 41 is outside"):
        model.generate(prompt(), 2, eos_token_id=41)


# -------------------------------------------------------------------- loop
def test_greedy_generation_appends_argmax_tokens():
    model = tiny()
    x = prompt()
    out = model.generate(x, 6)
    assert out.shape == (2, 11) and out.dtype == x.dtype
    np.testing.assert_array_equal(out[:, :5], x)
    for t in range(5, 11):       # every new token is the argmax of the model on what precedes it
        np.testing.assert_array_equal(out[:, t], model(out[:, :t]).data[:, -1].argmax(-1))
    np.testing.assert_array_equal(model.generate(x, 0), x)


@pytest.mark.parametrize("sampling", [dict(), dict(do_sample=True, seed=3),
                                      dict(do_sample=True, seed=4, temperature=0.7, top_k=10, top_p=0.9)])
def test_cached_and_uncached_generation_agree_across_block_size(sampling):
    # block_size 16, prompt 5 + 30 new tokens: the context is cropped and the cache rebuilt
    model = tiny()
    x = prompt()
    cached = model.generate(x, 30, **sampling)
    uncached = model.generate(x, 30, use_cache=False, **sampling)
    assert cached.shape == (2, 35)
    np.testing.assert_array_equal(cached, uncached)


def test_long_prompt_is_cropped_to_block_size():
    model = tiny()
    x = prompt(T=40)
    out = model.generate(x, 3)
    np.testing.assert_array_equal(out[:, :40], x)
    np.testing.assert_array_equal(out[:, 40], model(x[:, -16:]).data[:, -1].argmax(-1))


def test_same_seed_same_sample_and_different_seed_different_sample():
    model = tiny()
    x = prompt()
    a = model.generate(x, 20, do_sample=True, seed=1)
    np.testing.assert_array_equal(a, model.generate(x, 20, do_sample=True, seed=1))
    assert not np.array_equal(a, model.generate(x, 20, do_sample=True, seed=2))


def test_top_k_one_sampling_is_greedy():
    model = tiny()
    x = prompt()
    np.testing.assert_array_equal(model.generate(x, 8, do_sample=True, top_k=1, seed=0), model.generate(x, 8))


def test_rows_that_hit_eos_keep_emitting_it_and_the_loop_stops():
    model = tiny()
    x = prompt(B=3)
    free = model.generate(x, 12)
    # a token that row 0 emits for the first time at new step j >= 1
    j = next(j for j in range(1, 12) if free[0, 5 + j] not in free[0, 5:5 + j])
    eos = int(free[0, 5 + j])
    out = model.generate(x, 12, eos_token_id=eos)
    for row, free_row in zip(out, free):
        new = row[5:]
        hits = np.flatnonzero(new == eos)
        if hits.size:
            first = hits[0]
            np.testing.assert_array_equal(new[:first], free_row[5:5 + first])   # unchanged before eos
            assert np.all(new[first:] == eos)                                 # eos as padding after
    assert np.all(out[0, 5 + j:] == eos) and np.all(out[0, 5:5 + j] != eos)
    # all rows done -> early stop: a single row that emits eos at step j stops there
    single = model.generate(x[:1], 12, eos_token_id=eos)
    assert single.shape == (1, 5 + j + 1)


def test_stream_yields_one_token_per_step_and_checks_arguments_at_once():
    model = tiny()
    with pytest.raises(ValueError, match="temperature"):
        generation.stream(model, prompt(), 4, do_sample=True, temperature=0.0)
    sampling = generation.SamplingConfig(True, np.float32(0.5))
    assert generation.next_token(np.zeros((1, 3), np.float32), sampling, rng=np.random.default_rng(0)).shape == (1,)
    steps = list(generation.stream(model, prompt(), 4))
    assert len(steps) == 4 and all(s.shape == (2,) for s in steps)
    np.testing.assert_array_equal(np.stack(steps, 1), model.generate(prompt(), 4)[:, 5:])


def test_generation_leaves_grad_mode_on():
    from npgpt.autograd import is_grad_enabled

    tiny().generate(prompt(), 2)
    assert is_grad_enabled()
    assert math.isfinite(F.cross_entropy(tiny()(prompt()), prompt()).item())


def test_benchmark_loop_times_every_step_and_decodes_greedily():
    from npgpt.bench.generate import run_npgpt

    model = tiny()
    x = prompt(B=1)
    times, ids = run_npgpt(model, x, 6)
    assert len(times) == 6 and all(t > 0 for t in times)
    assert ids == model.generate(x, 6)[0, 5:].tolist()


# ------------------------------------------------------- checked once, at the boundary
@pytest.mark.parametrize("kwargs, message", [
    (dict(temperature=0), "temperature must be > 0"),
    (dict(temperature=True), "temperature must be > 0"),
    (dict(top_k=0), "top_k must be an integer >= 1"),
    (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
])
def test_sampling_config_is_checked_when_it_is_made(kwargs, message):
    with pytest.raises(ValueError, match=message):
        generation.SamplingConfig(do_sample=True, **kwargs)
    config = generation.SamplingConfig(do_sample=True, temperature=0.5, top_k=3, top_p=0.9)
    with pytest.raises(AttributeError):
        config.temperature = 0.0                 # frozen: it cannot become invalid later


def test_the_decoding_loop_checks_nothing_per_token(monkeypatch):
    from npgpt.io import inputs

    model = tiny()
    calls = {"sampling": 0, "ids": 0}
    check_sampling, check_ids = generation.check_sampling_args, inputs.check_token_ids

    def count_sampling(*args, **kwargs):
        calls["sampling"] += 1
        return check_sampling(*args, **kwargs)

    def count_ids(*args, **kwargs):
        calls["ids"] += 1
        return check_ids(*args, **kwargs)

    monkeypatch.setattr(generation, "check_sampling_args", count_sampling)
    monkeypatch.setattr(inputs, "check_token_ids", count_ids)
    steps = generation.stream(model, prompt(), 12, do_sample=True, temperature=0.8, top_k=5, top_p=0.9, seed=0)
    before = dict(calls)
    assert before["sampling"] >= 1 and before["ids"] == 1        # the prompt and the settings, once
    assert len(list(steps)) == 12                                 # 12 tokens, past block_size: cache rebuilt
    assert calls == before                                        # ... and not one check more
    # the public filters still check their argument when called on their own
    with pytest.raises(ValueError, match="top_k"):
        generation.top_k_filter(np.zeros((1, 4), np.float32), 0)
    with pytest.raises(ValueError, match="top_p"):
        generation.top_p_filter(np.zeros((1, 4), np.float32), 0.0)


def test_generation_runs_the_trunk_and_the_head_on_the_last_position_only(monkeypatch):
    model = tiny()
    shapes = []
    head = model.lm_head
    monkeypatch.setattr(model, "lm_head", lambda h, decoding=None: shapes.append(h.shape) or head(h, decoding))
    out = model.generate(prompt(B=2, T=5), 3)
    assert shapes == [(2, 16)] * 3
    np.testing.assert_array_equal(out[:, 5], model(prompt(B=2, T=5)).data[:, -1].argmax(-1))


# ------------------------------------------------------- the decoding step's cache
def test_a_cached_chunk_after_cached_tokens_equals_the_full_pass():
    # docs/model.md eq:kv-cache with several new queries at once: causal among them, all cached keys visible
    from npgpt.autograd import no_grad

    model = tiny()
    x = prompt(B=2, T=9)
    with no_grad():
        cache = model.new_cache(2, capacity=9)
        parts = [model(x[:, :3], cache=cache).data, model(x[:, 3:7], cache=cache).data,
                 model(x[:, 7:8], cache=cache).data, model(x[:, 8:9], cache=cache).data]
    np.testing.assert_allclose(np.concatenate(parts, axis=1), model(x).data, rtol=1e-5, atol=1e-6)
    assert cache.length == 9 and cache.capacity == 9


def test_kv_cache_update_stores_k_and_v_after_the_cached_positions_and_returns_all():
    from npgpt.generation import KVCache

    config = tiny().config                            # n_embd 16, 2 heads of 8
    rng = np.random.default_rng(0)
    k1, v1, k2, v2 = (rng.standard_normal((2, 2, n, 8)).astype(np.float32) for n in (3, 3, 1, 1))
    cache = KVCache(config, 2, capacity=5)
    k_all, v_all = cache.update(1, npgpt.tensor(k1), npgpt.tensor(v1))
    np.testing.assert_array_equal(k_all.data, k1)
    cache.length = 3
    k_all, v_all = cache.update(1, npgpt.tensor(k2), npgpt.tensor(v2))
    np.testing.assert_array_equal(k_all.data, np.concatenate([k1, k2], axis=2))
    np.testing.assert_array_equal(v_all.data, np.concatenate([v1, v2], axis=2))
    assert k_all.shape == (2, 2, 4, 8) and not np.any(cache.keys[0])          # other layers untouched
    with pytest.raises(ValueError, match="do not fit a cache of capacity 5"):
        cache.update(1, npgpt.tensor(k1), npgpt.tensor(v1))


def test_the_generation_cache_holds_only_the_positions_it_will_use(monkeypatch):
    model = tiny()
    capacities = []
    new_cache = model.new_cache
    monkeypatch.setattr(model, "new_cache", lambda B, capacity=None: capacities.append(capacity) or new_cache(B, capacity))
    model.generate(prompt(), 3)
    model.generate(prompt(), 30)                      # past block_size 16: the window slides, the cache is full-size
    assert capacities == [8, 16]


# ------------------------------------------------------- the benchmark's helpers
def test_benchmark_batched_prompts_are_left_padded_and_decoded_per_row():
    from npgpt.bench.generate import padded_prompts, run_npgpt

    model = tiny()
    ids, mask = padded_prompts(4, 6, 41, pad_id=40)
    assert ids.shape == mask.shape == (4, 6) and mask.sum(1).tolist() == [6, 5, 4, 3]
    assert np.all(ids[mask == 0] == 40) and np.all(np.diff(mask, axis=1) >= 0)          # padding on the left
    times, rows = run_npgpt(model, ids, 5, attention_mask=mask)
    assert len(times) == 5 and len(rows) == 4
    assert rows == model.generate(ids, 5, attention_mask=mask)[:, 6:].tolist()


def test_benchmark_weight_bytes_count_every_weight_but_the_unused_position_rows():
    from npgpt.bench.generate import weight_bytes_per_token

    model = tiny()
    config = model.config
    assert weight_bytes_per_token(model) == 4 * (config.num_parameters() - (config.block_size - 1) * config.n_embd)


def test_benchmark_scaling_rows_time_both_series_and_fit_their_exponents():
    from npgpt.bench.generate import scaling_rows

    result = scaling_rows(tiny(block_size=32), [8, 16, 32], cached_steps=2, uncached_steps=1, rounds=1)
    assert [r["context"] for r in result["rows"]] == [8, 16, 32]
    assert all(r["cached_ms"] > 0 and r["uncached_ms"] > 0 and r["attention_ms"] > 0 for r in result["rows"])
    assert {"exponent_cached", "exponent_attention", "exponent_uncached"} <= set(result)


def test_benchmark_batched_transformers_run_chooses_the_same_ids(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from npgpt.bench.generate import load_torch, padded_prompts, run_npgpt, run_torch_batched

    model = tiny(block_size=32)
    model.save_pretrained(tmp_path)
    ids, mask = padded_prompts(3, 5, 41, pad_id=40)
    _, ours = run_npgpt(model, ids, 6, attention_mask=mask, eos_token_id=40, pad_token_id=40)
    times, theirs = run_torch_batched(load_torch(tmp_path), ids, mask, 6, pad_id=40)
    assert len(times) == 6 and theirs == ours


def test_a_generation_with_the_head_copied_chooses_the_same_tokens(monkeypatch):
    # The decoding head (wte^T made contiguous, GPT.decoding_weight) is the same matrix in
    # another layout: the logits agree to rounding and greedy decoding picks the same ids.
    model = tiny(seed=3, block_size=32)
    prompts = np.random.default_rng(1).integers(0, model.config.vocab_size, (3, 5))
    monkeypatch.setattr(speed, "HEAD_COPY_MIN_ROW_STEPS", 10**9)
    plain = model.generate(prompts, 12)
    assert model.decoding_weight(3, 12) is None
    monkeypatch.setattr(speed, "HEAD_COPY_MIN_ROW_STEPS", 1)
    head = model.decoding_weight(3, 12)
    w = model.wte.weight.data
    assert head.flags.c_contiguous and np.array_equal(head, w.T)
    hidden = npgpt.tensor(np.random.default_rng(2).standard_normal((3, w.shape[1])).astype(w.dtype))
    np.testing.assert_allclose(model.lm_head(hidden, head).data, model.lm_head(hidden).data, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(model.generate(prompts, 12), plain)
    model.set_compute_dtype("float16")
    assert model.decoding_weight(3, 12) is None       # mixed precision keeps its own head


# ------------------------------------------------------------------ GenerationConfig
def test_a_generation_config_gives_what_its_fields_as_keywords_give():
    model, ids = tiny(), prompt()
    config = generation.GenerationConfig(max_new_tokens=6, do_sample=True, temperature=0.8, top_k=5,
                                         repetition_penalty=1.3, eos_token_id=[3, 4], pad_token_id=0)
    as_keywords = generation.generate(model, ids, 6, do_sample=True, temperature=0.8, top_k=5, repetition_penalty=1.3,
                                      eos_token_id=[3, 4], pad_token_id=0, seed=7)
    np.testing.assert_array_equal(generation.generate(model, ids, generation_config=config, seed=7), as_keywords)
    steps = list(generation.stream(model, ids, generation_config=config, seed=7))
    np.testing.assert_array_equal(np.stack(steps, axis=1), as_keywords[:, ids.shape[1]:])


def test_keywords_override_the_config_and_max_new_tokens_replaces_its_max_length():
    model, ids = tiny(), prompt()
    config = generation.GenerationConfig(max_length=ids.shape[1] + 2)
    assert generation.generate(model, ids, generation_config=config).shape[1] == ids.shape[1] + 2
    assert generation.generate(model, ids, 5, generation_config=config).shape[1] == ids.shape[1] + 5
    greedy = generation.generate(model, ids, 4)
    sampled = generation.GenerationConfig(max_new_tokens=4, do_sample=True, temperature=5.0)
    np.testing.assert_array_equal(generation.generate(model, ids, generation_config=sampled, do_sample=False), greedy)


def test_a_generation_config_is_checked_when_made_and_names_the_setting():
    with pytest.raises(ValueError, match="temperature must be > 0"):
        generation.GenerationConfig(temperature=0)
    with pytest.raises(ValueError, match="not both"):
        generation.GenerationConfig(max_new_tokens=3, max_length=9)
    with pytest.raises(ValueError, match="repetition_penalty"):
        generation.GenerationConfig(repetition_penalty=-1.0)
    with pytest.raises(TypeError, match=r"unknown generation setting\(s\) \['top_q'\]"):
        generation.generate(tiny(), prompt(), 3, top_q=0.9)
    with pytest.raises(TypeError, match="generation_config must be a GenerationConfig"):
        generation.generate(tiny(), prompt(), 3, generation_config={"do_sample": True})
    assert generation.GenerationConfig(eos_token_id=[1, 2]).eos_token_id == (1, 2)     # hashable: a server groups by it
