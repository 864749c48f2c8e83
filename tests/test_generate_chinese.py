"""``npgpt generate`` prints Chinese whole when a character's UTF-8 bytes are split across tokens.

A byte-level BPE token is a byte string: with a few merges learnt from a Chinese line, 月 (e6 9c
88) is cut as ``e6 | 9c | 88 e5 85 89``, the last token holding the end of 月 and all of 光.
Printing each token as it comes would show U+FFFD for the halves; the command holds the bytes of
an unfinished character back (``npgpt.tokenizer.StreamDecoder``) until the token that completes it.
"""

import numpy as np
import pytest

from npgpt import GPT, GPTConfig, Tokenizer, generation
from npgpt.apps.cli import main

LINE = "床前明月光，疑是地上霜。"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random GPT with a tokenizer that cuts Chinese characters across tokens."""
    directory = tmp_path_factory.mktemp("zh-model")
    tokenizer = Tokenizer.train(LINE * 3, 256 + 1 + 6, show_progress=False)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=16))
    model.save_pretrained(directory)
    tokenizer.save(directory)
    return directory


def fixed_output(monkeypatch, tokenizer, continuations):
    """Make the model 'say' ``continuations[row]`` (then <|endoftext|>): the printing is under test."""
    eos = tokenizer.special_tokens["<|endoftext|>"]
    rows = [tokenizer.encode(text) + [eos] for text in continuations]

    def steps(n):
        for t in range(n):
            yield np.array([row[t] if t < len(row) else eos for row in rows], dtype=np.int64)

    def length(settings):           # the command passes its flags as a GenerationConfig
        return settings["generation_config"].max_new_tokens

    def stream(model, ids, **settings):
        return steps(length(settings))

    def generate(model, ids, **settings):
        return np.concatenate([ids, np.stack(list(steps(length(settings))), axis=1)], axis=1)

    monkeypatch.setattr(generation, "stream", stream)
    monkeypatch.setattr(generation, "generate", generate)
    return rows


@pytest.mark.parametrize("streaming", ["--stream", "--no-stream"])
def test_split_characters_print_whole(model_dir, monkeypatch, capsys, streaming):
    tokenizer = Tokenizer.from_pretrained(model_dir)
    rows = fixed_output(monkeypatch, tokenizer, ["明月光，疑是地上霜。"])
    pieces = [tokenizer.decode([i]) for i in rows[0][:-1]]
    assert any("\ufffd" in piece for piece in pieces)            # the cut this test is about
    assert main(["generate", "--model", str(model_dir), "--max-new-tokens", "40", streaming, "床前"]) == 0
    assert capsys.readouterr().out == LINE + "\n"


def test_several_chinese_prompts_print_whole_and_in_order(model_dir, monkeypatch, capsys, tmp_path):
    tokenizer = Tokenizer.from_pretrained(model_dir)
    fixed_output(monkeypatch, tokenizer, ["明月光，", "地上霜。"])
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("床前\n疑是\n", encoding="utf-8")
    assert main(["generate", "--model", str(model_dir), "--max-new-tokens", "20", "--prompts", str(prompts)]) == 0
    assert capsys.readouterr().out == ("==> prompt 1 of 2 <==\n床前明月光，\n\n"
                                       "==> prompt 2 of 2 <==\n疑是地上霜。\n")


def test_a_real_model_streams_exactly_what_it_generates(model_dir, capsys):
    """No stand-in: whatever bytes the random model emits, the streamed text is the decoded ids."""
    argv = ["generate", "--model", str(model_dir), "--max-new-tokens", "30", "--seed", "1", "床前"]
    assert main(argv + ["--stream"]) == 0
    streamed = capsys.readouterr().out
    assert main(argv + ["--no-stream"]) == 0
    assert capsys.readouterr().out == streamed
    model, tokenizer = GPT.from_pretrained(model_dir), Tokenizer.from_pretrained(model_dir)
    ids = np.array([tokenizer.encode("床前")])
    out = generation.generate(model, ids, 30, do_sample=True, seed=1,
                              eos_token_id=tokenizer.special_tokens["<|endoftext|>"])[0, ids.shape[1]:].tolist()
    eos = tokenizer.special_tokens["<|endoftext|>"]
    out = out[:out.index(eos)] if eos in out else out
    assert streamed == "床前" + tokenizer.decode(out) + "\n"
