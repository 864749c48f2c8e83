"""Prompt-lookup decoding (npgpt/generation/prompt_lookup.py; docs/generation.md, "Prompt lookup").

The claim under test: with ``prompt_lookup=N`` greedy decoding gives exactly the ids of plain
greedy decoding, token for token, while verifying several guessed tokens per forward pass.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npgpt import generation
from npgpt.generation import prompt_lookup
from npgpt.model import GPT, GPTConfig


def small(seed=0, vocab=40, block=96, layers=2, heads=2, embd=32):
    return GPT(GPTConfig(vocab_size=vocab, block_size=block, n_layer=layers, n_head=heads, n_embd=embd), seed=seed)


def counting_passes(model):
    """Wrap ``model.trunk`` to count its calls (forward passes); returns the list of each call's width."""
    widths = []
    trunk = model.trunk

    def counted(idx, **kwargs):
        widths.append(idx.shape[1])
        return trunk(idx, **kwargs)

    model.trunk = counted
    return widths


# ------------------------------------------------------------ the guess
def test_propose_takes_the_most_recent_earlier_occurrence_of_the_longest_ngram():
    h = np.array([5, 1, 2, 3, 9, 9, 1, 2, 3, 7, 8, 4, 2, 3])
    # The last 3-gram (4, 2, 3) never occurred before; the 2-gram (2, 3) did, last at index 7.
    assert prompt_lookup.propose(h, 3).tolist() == [7, 8, 4]
    assert prompt_lookup.propose(h, 1).tolist() == [7]
    # The 3-gram (1, 2, 3) at index 0: what follows runs into the end, so it repeats with period 3.
    assert prompt_lookup.propose(np.array([1, 2, 3, 1, 2, 3]), 7).tolist() == [1, 2, 3, 1, 2, 3, 1]
    assert prompt_lookup.propose(np.array([4, 1, 2, 3, 1, 2, 3]), 2).tolist() == [1, 2]
    assert prompt_lookup.propose(h, 0).tolist() == []


def test_propose_refuses_ngram_sizes_below_one():
    for sizes in [(), (0,), (2, -1)]:
        with pytest.raises(ValueError, match="at least 1"):
            prompt_lookup.propose(np.array([1, 2, 1, 2]), 3, sizes)


def test_propose_without_a_match_guesses_nothing():
    assert prompt_lookup.propose(np.array([1, 2, 3, 4]), 5).tolist() == []
    assert prompt_lookup.propose(np.array([7]), 5).tolist() == []
    assert prompt_lookup.propose(np.array([7, 7]), 5).tolist() == [7] * 5  # the 1-gram 7 at index 0, repeating


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 3), max_size=40), st.integers(0, 12),
       st.sampled_from([(3, 2, 1), (2, 1), (1,), (4, 2)]))
def test_propose_equals_the_search_written_out_n_gram_by_n_gram(history, max_tokens, sizes):
    # The definition (docs/generation.md, "Prompt lookup"), spelled out: for n in order, the latest start
    # i with i + n < L whose n tokens equal the last n; the tokens from i + n on, repeated to max_tokens.
    # (A small alphabet: many matches.)
    h = np.array(history, dtype=np.int64)
    L, expected = len(h), []
    for n in sizes:
        starts = [i for i in range(L - n) if max_tokens > 0 and h[i:i + n].tolist() == h[L - n:].tolist()]
        if starts:
            tail = h[starts[-1] + n:].tolist()
            expected = [tail[j % len(tail)] for j in range(max_tokens)]
            break
    assert prompt_lookup.propose(h, max_tokens, sizes).tolist() == expected


# ------------------------------------------------------- exactness
prompts = st.one_of(
    st.lists(st.integers(0, 39), min_size=1, max_size=30),                        # random text
    st.tuples(st.lists(st.integers(0, 39), min_size=1, max_size=6), st.integers(1, 30))   # a repeated phrase
      .map(lambda pr: (pr[0] * 30)[:max(pr[1], len(pr[0]))]))


@settings(max_examples=150)
@given(seed=st.integers(0, 2**16), prompt=prompts, new=st.integers(0, 50), lookup=st.integers(1, 16),
       layers=st.integers(1, 3))
def test_prompt_lookup_gives_plain_greedy_ids_token_for_token(seed, prompt, new, lookup, layers):
    model = small(seed, layers=layers)
    ids = np.array([prompt])
    plain = generation.generate(model, ids, new)
    assert np.array_equal(generation.generate(model, ids, new, prompt_lookup=lookup), plain)
    streamed = list(generation.stream(model, ids, new, prompt_lookup=lookup))
    assert np.array_equal(np.concatenate(streamed) if streamed else np.zeros(0, int), plain[0, len(prompt):])


@given(seed=st.integers(0, 2**16), prompt=prompts, eos=st.integers(0, 39), least=st.integers(0, 10))
def test_prompt_lookup_keeps_eos_and_min_new_tokens(seed, prompt, eos, least):
    model = small(seed, layers=1)
    ids = np.array([prompt])
    settings = dict(eos_token_id=eos, min_new_tokens=least)
    plain = generation.generate(model, ids, 40, **settings)
    assert np.array_equal(generation.generate(model, ids, 40, prompt_lookup=8, **settings), plain)


def test_a_repetitive_text_is_verified_several_tokens_a_pass():
    # A random model soon repeats itself; the repeats are guessed, verified and accepted.
    model = small(3)
    ids = np.array([[1, 2, 3, 4, 5, 6] * 4])
    plain = generation.generate(model, ids, 60)
    widths = counting_passes(model)
    looked_up = generation.generate(model, ids, 60, prompt_lookup=10)
    assert np.array_equal(looked_up, plain)
    assert max(widths[1:]) > 1                  # guesses were verified...
    assert len(widths) < 60 / 2                 # ...and accepted: fewer than half the passes of plain decoding


def test_rejected_guesses_are_dropped_from_the_cache():
    # Guesses are made, many are wrong, and the output still matches: the cache was cut back.
    rejected = 0
    for seed in range(6):
        model = small(seed)
        ids = np.random.default_rng(seed).integers(0, 5, (1, 40))     # a small alphabet: many 1-gram matches
        plain = generation.generate(model, ids, 40)
        widths = counting_passes(model)
        assert np.array_equal(generation.generate(model, ids, 40, prompt_lookup=6), plain)
        # Each pass after the prompt's fed 1 + k tokens and yielded 1 + a (a <= k accepted); all but the
        # prompt's pass yielded the 39 tokens after the first, so what was fed beyond that was rejected.
        rejected += sum(widths[1:]) - 39
    assert rejected


def test_after_wrong_guesses_in_a_row_it_rests_1_3_then_7_steps(monkeypatch):
    # Every guess wrong (one token off the plain greedy choice): guesses at steps 1, 3, 7, 15, 23, 31 of 32;
    # the others are one-token passes, and the ids are still plain greedy's.
    model = small(1)
    ids = np.random.default_rng(1).integers(0, 40, (1, 8))
    plain = generation.generate(model, ids, 32)
    vocab = model.config.vocab_size
    guessed = []

    def wrong(history, max_tokens, ngram_sizes=prompt_lookup.NGRAM_SIZES):
        guessed.append(len(history))
        return np.array([(int(plain[0, len(history)]) + 1) % vocab]) if max_tokens else np.empty(0, np.int64)

    monkeypatch.setattr(prompt_lookup, "propose", wrong)
    widths = counting_passes(model)
    assert np.array_equal(generation.generate(model, ids, 32, prompt_lookup=4), plain)
    assert [n - 8 for n in guessed] == [1, 3, 7, 15, 23, 31]
    assert widths[1:].count(2) == 5 and widths[1:].count(1) == 31 - 5   # the last guess had no room (max_tokens 0)


# ---------------------------------------------------------- refusals
@pytest.mark.parametrize("settings, message", [
    (dict(do_sample=True), "greedy decoding only"),
    (dict(repetition_penalty=1.2), "repetition_penalty"),
    (dict(use_cache=False), "use_cache=True"),
    (dict(max_new_tokens=90), "block_size 96"),
])
def test_what_prompt_lookup_cannot_do_is_refused_clearly(settings, message):
    settings = {"max_new_tokens": 5, **settings}
    with pytest.raises(ValueError, match=message):
        generation.generate(small(), np.array([[1, 2, 3, 4, 5, 6, 7, 8]]), prompt_lookup=4, **settings)
    with pytest.raises(ValueError, match=message):          # the stream refuses at once, not when consumed
        generation.stream(small(), np.array([[1, 2, 3, 4, 5, 6, 7, 8]]), prompt_lookup=4, **settings)


def test_batches_and_padding_are_refused():
    model = small()
    with pytest.raises(ValueError, match="one unpadded row at a time, got 2 rows"):
        generation.generate(model, np.array([[1, 2], [3, 4]]), 5, prompt_lookup=4)
    with pytest.raises(ValueError, match="with padding"):
        generation.generate(model, np.array([[0, 2, 3]]), 5, prompt_lookup=4, attention_mask=np.array([[0, 1, 1]]))


@pytest.mark.parametrize("value", [-1, 2.5, True, "3"])
def test_a_bad_prompt_lookup_value_is_named(value):
    with pytest.raises(ValueError, match="prompt_lookup must be an integer >= 0"):
        generation.GenerationConfig(prompt_lookup=value)


def test_zero_or_none_is_plain_decoding():
    model = small()
    ids = np.array([[1, 2, 3]])
    plain = generation.generate(model, ids, 10, do_sample=True, seed=1)
    for off in (0, None):
        assert np.array_equal(generation.generate(model, ids, 10, do_sample=True, seed=1, prompt_lookup=off), plain)


@pytest.mark.gpu
def test_prompt_lookup_on_the_gpu_gives_the_cpu_ids():
    from conftest import require_cuda

    require_cuda()
    from npgpt import backend

    model = small(3)
    ids = np.array([[1, 2, 3, 4, 5, 6] * 4])
    plain = generation.generate(model, ids, 30)
    on_gpu = generation.generate(model.to("cuda"), ids, 30, prompt_lookup=8)
    assert np.array_equal(backend.to_numpy(on_gpu), plain)


# ---------------------------------------------------------------- CLI
@pytest.mark.slow
def test_the_cli_flag_prints_the_plain_greedy_text(capsys):
    from npgpt.apps.cli import main

    prompt = "ROMEO: O Juliet, O Juliet, wherefore art thou? Say it again: O Juliet,"
    args = ["generate", "--model", "npgpt-small", "--temperature", "0", "--max-new-tokens", "24", prompt]
    assert main(args) == 0
    plain = capsys.readouterr().out
    assert main(args[:-1] + ["--prompt-lookup", "8", prompt]) == 0
    assert capsys.readouterr().out == plain
    assert main(args[:3] + ["--prompt-lookup", "8", prompt]) != 0        # sampling (the default temperature 1)
    assert "--prompt-lookup is exact for greedy decoding only" in capsys.readouterr().err
