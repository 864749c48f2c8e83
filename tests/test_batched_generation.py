"""Batched generation: left-padded prompts with an attention mask, per-row seeds, eos and padding,
max_length, min_new_tokens, the repetition penalty; transformers' generate as the reference;
Tokenizer.encode_batch; and ``npgpt generate --prompts`` through the real command."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from npgpt import generation
from npgpt.io import inputs
from npgpt.model import GPT, GPTConfig
from npgpt.tokenizer import Tokenizer

ROOT = pathlib.Path(__file__).resolve().parents[1]
V = 41
LENGTHS = [3, 7, 5, 1]


def tiny(seed=0, block_size=16):
    return GPT(GPTConfig(vocab_size=V, block_size=block_size, n_layer=2, n_head=2, n_embd=16), seed=seed).eval()


def batch(lengths=LENGTHS, pad=V - 1, seed=0):
    """Left-padded prompts of the given lengths: (ids, mask, [each row's own tokens])."""
    rng = np.random.default_rng(seed)
    rows = [rng.integers(0, V - 1, n) for n in lengths]
    T = max(lengths)
    ids = np.full((len(rows), T), pad, dtype=np.int64)
    mask = np.zeros((len(rows), T), dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, T - len(row):] = row
        mask[i, T - len(row):] = 1
    return ids, mask, rows


def assert_rows_alone(model, out, rows, n, filler=None, **settings):
    """Each row of the batched ``out`` equals that row generated alone (then ``filler`` after its end)."""
    T = max(map(len, rows))
    for i, row in enumerate(rows):
        seed = settings.get("seed")
        own = {**settings, "seed": seed[i]} if isinstance(seed, list) else settings
        alone = model.generate(row[None], n, **own)[0, len(row):]
        got = out[i, T:]
        np.testing.assert_array_equal(got[:len(alone)], alone, err_msg=f"row {i}")
        if filler is not None:
            assert np.all(got[len(alone):] == filler), f"row {i} after its end"


# ----------------------------------------------------------- padding and the mask
@pytest.mark.parametrize("use_cache", [True, False], ids=["cached", "uncached"])
def test_each_left_padded_row_comes_out_as_generated_alone(use_cache):
    # 7 + 20 tokens > block_size 16: the context is cropped and the cache rebuilt, padding included
    model = tiny()
    ids, mask, rows = batch()
    out = model.generate(ids, 20, attention_mask=mask, use_cache=use_cache)
    assert out.shape == (4, 27)
    np.testing.assert_array_equal(out[:, :7], ids)
    assert_rows_alone(model, out, rows, 20)


def test_what_the_padding_holds_changes_nothing_and_without_the_mask_it_would():
    model = tiny()
    ids, mask, rows = batch(pad=0)
    other, _, _ = batch(pad=17)
    a = model.generate(ids, 10, attention_mask=mask)
    b = model.generate(other, 10, attention_mask=mask)
    np.testing.assert_array_equal(a[:, 7:], b[:, 7:])
    unmasked = model.generate(ids, 10)                 # padding read as tokens: the short rows change
    assert not np.array_equal(unmasked[:, 7:], a[:, 7:])
    np.testing.assert_array_equal(unmasked[1], a[1])   # the row without padding does not


def test_positions_come_from_the_mask_and_the_trunk_sees_the_growing_mask(monkeypatch):
    model = tiny()
    ids, mask, _ = batch([2, 4])
    calls = []
    trunk = model.trunk
    monkeypatch.setattr(model, "trunk", lambda x, **kw: calls.append(kw) or trunk(x, **kw))
    model.generate(ids, 3, attention_mask=mask)
    first, second, third = calls
    np.testing.assert_array_equal(first["position_ids"], [[0, 0, 0, 1], [0, 1, 2, 3]])   # cumsum - 1, pads at 0
    np.testing.assert_array_equal(first["attention_mask"], mask)
    np.testing.assert_array_equal(second["position_ids"], [[2], [4]])
    np.testing.assert_array_equal(second["attention_mask"], np.c_[mask, [1, 1]])    # cached pads stay hidden
    np.testing.assert_array_equal(third["position_ids"], [[3], [5]])
    assert third["attention_mask"].shape == (2, 6)


def test_a_mask_without_padding_is_the_unpadded_path():
    model = tiny()
    ids = batch([5, 5])[0]
    np.testing.assert_array_equal(model.generate(ids, 8, attention_mask=np.ones_like(ids)), model.generate(ids, 8))
    np.testing.assert_array_equal(model.generate(ids, 8, attention_mask=np.ones(ids.shape, bool)),
                                  model.generate(ids, 8))


@pytest.mark.parametrize("settings", [dict(), dict(temperature=0.7, top_k=10, top_p=0.9)], ids=["plain", "filtered"])
def test_per_row_seeds_sample_each_row_as_alone(settings):
    model = tiny()
    ids, mask, rows = batch()
    seeds = [11, 12, 13, 14]
    out = model.generate(ids, 12, attention_mask=mask, do_sample=True, seed=seeds, **settings)
    assert_rows_alone(model, out, rows, 12, do_sample=True, seed=seeds, **settings)
    again = generation.generate(model, ids, 12, attention_mask=mask, do_sample=True, seed=seeds, **settings)
    np.testing.assert_array_equal(out, again)
    # one int seeds one generator for the whole batch: row 0 then draws differently from alone
    shared = model.generate(ids, 12, attention_mask=mask, do_sample=True, seed=11, **settings)
    assert not np.array_equal(shared, out)


def test_row_generators_draw_what_each_rows_own_generator_draws():
    gens = generation.RowGenerators([1, 2])
    draws = np.stack([gens.random(2) for _ in range(3)])
    np.testing.assert_array_equal(draws[:, 0], np.random.default_rng(1).random(3))
    np.testing.assert_array_equal(draws[:, 1], np.random.default_rng(2).random(3))
    with pytest.raises(ValueError, match="2 generators"):
        gens.random(3)


# ------------------------------------------------------------------ eos and padding
def new_tokens(model, ids, mask, n, **settings):
    """Greedy ``(row, step j >= 1, token)`` where a row emits a token for the first time, row by row."""
    free = model.generate(ids, n, attention_mask=mask, **settings)[:, ids.shape[1]:]
    return [(r, j, int(free[r, j])) for r in range(len(free)) for j in range(1, n) if free[r, j] not in free[r, :j]]


def test_a_finished_row_emits_the_pad_id_and_the_loop_stops_when_every_row_has():
    model = tiny()
    ids, mask, rows = batch()
    r, j, eos = new_tokens(model, ids, mask, 12)[0]
    out = model.generate(ids, 12, attention_mask=mask, eos_token_id=eos, pad_token_id=V - 1)
    assert out[r, 7 + j] == eos and np.all(out[r, 8 + j:] == V - 1) and np.all(out[r, 7:7 + j] != eos)
    assert_rows_alone(model, out, rows, 12, filler=V - 1, eos_token_id=eos)
    without_pad = model.generate(ids, 12, attention_mask=mask, eos_token_id=eos)
    assert np.all(without_pad[r, 7 + j:] == eos)                    # no pad id: eos is the filler
    single = model.generate(ids[r:r + 1], 12, attention_mask=mask[r:r + 1], eos_token_id=eos, pad_token_id=V - 1)
    assert single.shape == (1, 7 + j + 1)                           # every row ended: stopped early


def test_eos_may_be_several_ids():
    model = tiny()
    ids, mask, rows = batch()
    found = new_tokens(model, ids, mask, 12)
    ends = sorted({found[0][2], found[-1][2]})
    assert len(ends) == 2 and found[0][0] != found[-1][0]
    out = model.generate(ids, 12, attention_mask=mask, eos_token_id=ends, pad_token_id=0)
    assert_rows_alone(model, out, rows, 12, filler=0, eos_token_id=ends)
    assert np.isin(out[found[0][0], 7:], ends).any() and np.isin(out[found[-1][0], 7:], ends).any()


def test_max_length_counts_the_prompt_and_its_padding():
    model = tiny()
    ids, mask, _ = batch()
    out = model.generate(ids, attention_mask=mask, max_length=12)
    assert out.shape == (4, 12)
    np.testing.assert_array_equal(out, model.generate(ids, 5, attention_mask=mask))
    assert model.generate(ids, max_length=7).shape == (4, 7)
    with pytest.raises(ValueError, match="not both"):
        model.generate(ids, 5, max_length=12)
    with pytest.raises(ValueError, match="max_length must be an integer >= the prompt's length 7"):
        model.generate(ids, max_length=6)
    with pytest.raises(ValueError, match="give max_new_tokens"):
        model.generate(ids)


def test_min_new_tokens_holds_eos_back_until_then():
    model = tiny()
    ids, mask, _ = batch()
    first = model.generate(ids, 1, attention_mask=mask)[:, -1]
    eos = int(first[0])                                       # row 0 would end at once
    ended = model.generate(ids, 6, attention_mask=mask, eos_token_id=eos, pad_token_id=0)
    assert ended[0, 7] == eos
    held = model.generate(ids, 6, attention_mask=mask, eos_token_id=eos, pad_token_id=0, min_new_tokens=3)
    assert np.all(held[:, 7:10] != eos)
    # step 0 is the argmax with eos's logit at -inf
    logits = model(ids, attention_mask=mask, position_ids=np.maximum(mask.cumsum(1) - 1, 0)).data[:, -1]
    logits[:, eos] = -np.inf
    np.testing.assert_array_equal(held[:, 7], logits.argmax(-1))
    # without an eos id min_new_tokens has nothing to hold back
    np.testing.assert_array_equal(model.generate(ids, 6, attention_mask=mask, min_new_tokens=3),
                                  model.generate(ids, 6, attention_mask=mask))


# --------------------------------------------------------------- repetition penalty
def test_repetition_penalty_divides_positive_and_multiplies_negative_logits_of_seen_tokens():
    # docs/generation.md eq:repetition-penalty: z/theta for a seen token with z >= 0, z*theta for z < 0, unseen unchanged
    z = np.array([[2.0, -1.0, 0.5, 3.0], [1.0, 1.0, -2.0, 0.0]], np.float32)
    out = generation.apply_repetition_penalty(z, np.array([[0, 1, 1], [2, 3, 2]]), 2.0)
    np.testing.assert_array_equal(out, [[1.0, -2.0, 0.5, 3.0], [1.0, 1.0, -4.0, 0.0]])
    np.testing.assert_array_equal(generation.apply_repetition_penalty(z, np.array([[0], [1]]), 1.0), z)
    with pytest.raises(ValueError, match="repetition_penalty must be a number > 0"):
        generation.apply_repetition_penalty(z, np.array([[0], [1]]), 0.0)


def test_repetition_penalty_matches_transformers_processor():
    # docs/generation.md eq:repetition-penalty, as transformers' RepetitionPenaltyLogitsProcessor computes it
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    rng = np.random.default_rng(0)
    z = rng.standard_normal((3, 50)).astype(np.float32)
    seen = rng.integers(0, 50, (3, 9))
    for penalty in (0.7, 1.3, 2.5):
        ref = transformers.RepetitionPenaltyLogitsProcessor(penalty)(torch.from_numpy(seen), torch.from_numpy(z))
        np.testing.assert_array_equal(generation.apply_repetition_penalty(z, seen, penalty), ref.numpy())


def test_the_penalty_counts_the_prompt_and_new_tokens_but_not_padding():
    model = tiny()
    ids, mask, rows = batch()
    plain = model.generate(ids, 12, attention_mask=mask)
    out = model.generate(ids, 12, attention_mask=mask, repetition_penalty=3.0)
    assert not np.array_equal(out, plain)
    assert_rows_alone(model, out, rows, 12, repetition_penalty=3.0)   # so the padding id is not penalised
    # step by step: each new token is the argmax of the penalised logits of what precedes it
    row = rows[1][None]
    gen = model.generate(row, 6, repetition_penalty=3.0)
    for t in range(row.shape[1], gen.shape[1]):
        z = generation.apply_repetition_penalty(model(gen[:, :t]).data[:, -1], gen[:, :t], 3.0)
        assert gen[0, t] == z.argmax(-1)[0]


# ------------------------------------------------------------------ against transformers
@pytest.fixture(scope="module")
def hf_pair(tmp_path_factory):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    model = GPT(GPTConfig(vocab_size=V, block_size=32, n_layer=2, n_head=2, n_embd=16), seed=3).eval()
    rng = np.random.default_rng(0)      # larger weights than GPT-2's init: less repetitive continuations
    for name, p in model.named_parameters():
        gain = 1.0 if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name == "ln_f.weight" else 0.0
        p.data = (gain + 0.3 * rng.standard_normal(p.shape)).astype(np.float32)
    directory = tmp_path_factory.mktemp("tiny-gpt")
    model.save_pretrained(directory)
    return torch, model, transformers.GPT2LMHeadModel.from_pretrained(directory).eval()


HF_SETTINGS = {
    "greedy": dict(max_new_tokens=12),
    "max_length": dict(max_length=16),
    "eos_pad": dict(max_new_tokens=12, eos_token_id="one", pad_token_id=0),
    "eos_list_min_new": dict(max_new_tokens=12, eos_token_id="several", pad_token_id=0, min_new_tokens=4),
    "penalty": dict(max_new_tokens=12, repetition_penalty=1.8),
    "penalty_below_one": dict(max_new_tokens=12, repetition_penalty=0.6, eos_token_id="one", pad_token_id=0),
}


@pytest.mark.parametrize("name", list(HF_SETTINGS))
def test_left_padded_greedy_generation_equals_transformers(hf_pair, name):
    torch, model, hf = hf_pair
    # transformers penalises the padding id too (it is in input_ids); a pad id that is in every
    # prompt is penalised by both, so the two agree whatever the penalty does
    ids, mask, _ = batch([3, 7, 5, 2], pad=0, seed=0)
    ids[:, -2] = 0
    settings = dict(HF_SETTINGS[name])
    if "eos_token_id" in settings:            # tokens that some rows produce after their first step
        found = [f for f in new_tokens(model, ids, mask, 12, repetition_penalty=settings.get("repetition_penalty", 1.0))
                 if f[2] != 0]
        ends = sorted({found[0][2], found[-1][2]})
        settings["eos_token_id"] = ends[0] if settings["eos_token_id"] == "one" else ends
    ours = model.generate(ids, attention_mask=mask, **settings)
    with torch.no_grad():
        theirs = hf.generate(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), do_sample=False,
                             **settings).numpy()
    np.testing.assert_array_equal(ours, theirs)
    if "eos_token_id" in settings:
        assert np.isin(ours[:, ids.shape[1]:], settings["eos_token_id"]).any()     # an eos was really produced


# ------------------------------------------------------------------ checked once
@pytest.mark.parametrize("kwargs, error, message", [
    (dict(attention_mask=np.array([[1, 1, 0], [1, 1, 1]])), ValueError, "pad on the left"),
    (dict(attention_mask=np.array([[0, 0, 0], [1, 1, 1]])), ValueError, "all padding"),
    (dict(attention_mask=np.ones((2, 4), int)), ValueError, r"attention_mask has shape \(2, 4\)"),
    (dict(attention_mask=np.array([[0, 2, 1], [1, 1, 1]])), ValueError, "only 0"),
    (dict(seed=[1, 2, 3]), ValueError, "seed has 3 entries for a batch of 2 rows"),
    (dict(pad_token_id=V), ValueError, "pad_token_id 41 is outside"),
    (dict(eos_token_id=[3, -1]), ValueError, "eos_token_id -1 is outside"),
    (dict(eos_token_id=[]), ValueError, "empty list"),
    (dict(min_new_tokens=-1), ValueError, "min_new_tokens must be an integer >= 0"),
    (dict(repetition_penalty=0), ValueError, "repetition_penalty must be a number > 0"),
    (dict(repetition_penalty=float("nan")), ValueError, "repetition_penalty must be a number > 0"),
])
def test_bad_settings_are_refused_before_the_first_step(kwargs, error, message):
    model = tiny()
    ids = np.array([[1, 2, 3], [4, 5, 6]])
    with pytest.raises(error, match=message):
        generation.stream(model, ids, 3, **kwargs)           # at once, not when the iterator runs


def test_the_batched_loop_checks_nothing_per_token(monkeypatch):
    model = tiny()
    ids, mask, _ = batch()
    calls = {"mask": 0, "ids": 0}
    check_mask, check_ids = inputs.check_attention_mask, inputs.check_token_ids

    def count(name, check):
        def counted(*args, **kwargs):
            calls[name] += 1
            return check(*args, **kwargs)
        return counted

    monkeypatch.setattr(inputs, "check_attention_mask", count("mask", check_mask))
    monkeypatch.setattr(inputs, "check_token_ids", count("ids", check_ids))
    steps = generation.stream(model, ids, 14, attention_mask=mask, do_sample=True, seed=[1, 2, 3, 4], top_k=5,
                              repetition_penalty=1.2, eos_token_id=[3, 4], pad_token_id=0, min_new_tokens=2)
    assert calls == {"mask": 1, "ids": 1}
    list(steps)                                                 # crosses block_size: the cache is rebuilt
    assert calls == {"mask": 1, "ids": 1}


# ------------------------------------------------------------------ the tokenizer
@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.from_pretrained("npgpt-small")


def test_encode_batch_pads_left_with_a_mask(tokenizer):
    texts = ["The cat", "Once upon a time there was", "Hi"]
    ids, mask = tokenizer.encode_batch(texts, padding="left")
    rows = [tokenizer.encode(t) for t in texts]
    assert ids.dtype == mask.dtype == np.int64 and ids.shape == mask.shape == (3, max(map(len, rows)))
    eot = tokenizer.special_tokens["<|endoftext|>"]
    for row, r_ids, r_mask in zip(rows, ids, mask):
        n = len(row)
        assert r_ids[r_ids.size - n:].tolist() == row and np.all(r_ids[:r_ids.size - n] == eot)
        assert r_mask.tolist() == [0] * (r_ids.size - n) + [1] * n
    right, right_mask = tokenizer.encode_batch(texts, padding="right", pad_token_id=7)
    assert right[0].tolist() == rows[0] + [7] * (ids.shape[1] - len(rows[0]))
    np.testing.assert_array_equal(right_mask, mask[:, ::-1])
    assert tokenizer.encode_batch(texts) == rows                     # no padding: lists, as before
    assert tokenizer.encode_batch(["<|endoftext|>"], padding="left", allowed_special="all")[0].tolist() == [[eot]]


def test_encode_batch_pads_with_zero_without_endoftext_and_checks_its_arguments(tokenizer):
    bare = Tokenizer(tokenizer._tokens[:256], [])
    ids, mask = bare.encode_batch(["ab", "c"], padding="left")
    assert ids.tolist() == [[97, 98], [0, 99]] and mask.tolist() == [[1, 1], [0, 1]]
    with pytest.raises(ValueError, match="padding must be"):
        tokenizer.encode_batch(["a"], padding="middle")
    with pytest.raises(ValueError, match="out of range"):
        tokenizer.encode_batch(["a"], padding="left", pad_token_id=10**6)
    with pytest.raises(ValueError, match="only used with padding"):
        tokenizer.encode_batch(["a"], pad_token_id=0)


def test_an_encoded_batch_generates_each_prompt_as_alone(tokenizer):
    model = tiny()          # ids fit: clip the tokenizer's ids into the tiny vocabulary
    texts = ["To be", "or not to be, that is"]
    ids, mask = tokenizer.encode_batch(texts, padding="left")
    ids = ids % V
    out = model.generate(ids, 6, attention_mask=mask)
    for i, text in enumerate(texts):
        alone = np.array([tokenizer.encode(text)]) % V
        np.testing.assert_array_equal(out[i, ids.shape[1]:], model.generate(alone, 6)[0, alone.shape[1]:])


# ------------------------------------------------------------------ the command
def npgpt_command(*args):
    """Run the installed ``npgpt`` command (its console script, else ``python -m npgpt``)."""
    exe = pathlib.Path(sys.executable).with_name("npgpt")
    prefix = [str(exe)] if exe.exists() else [sys.executable, "-m", "npgpt"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(prefix + list(args), capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)


@pytest.mark.slow
def test_generate_command_continues_every_prompt_of_a_file(tmp_path):
    prompts = ["ROMEO:", "", "The whale", "To be, or not to be"]
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(prompts) + "\n")
    common = ["generate", "--model", "npgpt-small", "--max-new-tokens", "8", "--seed", "5", "--temperature", "0.8"]
    batched = npgpt_command(*common, "--prompts", str(path))
    assert batched.returncode == 0, batched.stderr
    blocks = batched.stdout.split("==> prompt ")[1:]
    assert [b.split(" <==\n", 1)[0] for b in blocks] == ["1 of 3", "2 of 3", "3 of 3"]     # blank line skipped
    for text, block in zip([p for p in prompts if p], blocks):
        alone = npgpt_command(*common, text)
        assert alone.returncode == 0, alone.stderr
        assert block.split(" <==\n", 1)[1].rstrip("\n") == alone.stdout.rstrip("\n")    # same text as alone
    unstreamed = npgpt_command(*common, "--prompts", str(path), "--no-stream")
    assert unstreamed.stdout == batched.stdout
    help_text = npgpt_command("generate", "--help").stdout
    assert "--prompts FILE" in help_text and "--no-stream" in help_text
    both = npgpt_command("generate", "--model", "npgpt-small", "--prompts", str(path), "ROMEO:")
    assert both.returncode == 1 and "not both" in both.stderr
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    refused = npgpt_command("generate", "--model", "npgpt-small", "--prompts", str(empty))
    assert refused.returncode == 1 and "no prompt" in refused.stderr


def _spy_on_generation(monkeypatch):
    """Record the prompt ids of each call of ``generation.generate`` / ``generation.stream`` (the real ones run)."""
    calls = []
    for name in ("generate", "stream"):
        real = getattr(generation, name)

        def spy(model, ids, *args, _real=real, **kwargs):
            calls.append((np.asarray(ids), np.asarray(kwargs["attention_mask"])))
            return _real(model, ids, *args, **kwargs)
        monkeypatch.setattr(generation, name, spy)
    return calls


@pytest.mark.parametrize("stream", ["--stream", "--no-stream"])
def test_a_prompts_file_is_generated_in_batches_with_the_same_text(tmp_path, monkeypatch, capsys, stream):
    """A prompts file of any length runs in batches of --batch-size (all in one batch held a 10 MB file's
    292,428 rows at once); the text is what one batch gives, numbered over the whole file."""
    from npgpt.apps.cli import main

    path = tmp_path / "prompts.txt"
    path.write_text("ROMEO:\nThe whale\n\nTo be\nOnce upon\nA\n")
    common = ["generate", "--model", "npgpt-small", "--max-new-tokens", "4", "--seed", "5", "--prompts", str(path),
              stream]
    calls = _spy_on_generation(monkeypatch)
    assert main([*common, "--batch-size", "2"]) == 0
    batched = capsys.readouterr().out
    assert [len(ids) for ids, _ in calls] == [2, 2, 1]
    calls.clear()
    assert main([*common, "--batch-size", "64"]) == 0
    assert [len(ids) for ids, _ in calls] == [5]
    assert capsys.readouterr().out == batched
    assert [b.split(" <==")[0] for b in batched.split("==> prompt ")[1:]] == [f"{i} of 5" for i in range(1, 6)]


def test_prompts_are_encoded_as_prepare_encoded_the_training_text(tmp_path, monkeypatch, capsys):
    """`npgpt prepare` turns a typed <|endoftext|> into the token and every other special token's text into
    ordinary text; `npgpt generate` must encode a prompt the same way, or "<|sep|>" becomes an id the model
    never saw in training."""
    from npgpt.apps.cli import main
    from npgpt.tokenizer import ENDOFTEXT
    from npgpt.training import data

    text = "the cat sat on the mat. " * 40
    tok = Tokenizer.train(text, 266, special_tokens=(ENDOFTEXT, "<|sep|>"), show_progress=False)
    model_dir = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=8)).save_pretrained(
        tmp_path / "model")
    tok.save(model_dir)
    prompt = "the cat<|sep|>sat<|endoftext|>on the"
    (tmp_path / "doc.txt").write_text(prompt)
    meta = data.prepare([tmp_path / "doc.txt"], tok, tmp_path / "data", val_fraction=0.01, progress=False, workers=1)
    prepared = np.concatenate([np.fromfile(tmp_path / "data" / f"{s}.bin", dtype=meta["dtype"]) for s in ("train", "val")])
    calls = _spy_on_generation(monkeypatch)
    assert main(["generate", "--model", str(model_dir), "--max-new-tokens", "2", "--seed", "1", prompt]) == 0
    capsys.readouterr()
    (ids, _), = calls
    # prepare appends <|endoftext|> after the last document; the prompt has none there
    assert ids[0].tolist() == prepared[:-1].tolist()
    assert tok.special_tokens["<|sep|>"] not in ids[0].tolist() and tok.special_tokens[ENDOFTEXT] in ids[0].tolist()
