"""Conversation files for supervised fine-tuning (npgpt/finetuning/conversations.py, docs/agent.md)."""

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import npgpt
from npgpt.finetuning import conversations as conv
from npgpt.finetuning.conversations import IGNORE_INDEX, DataError
from npgpt.tokenizer.chat import with_chat_tokens


@pytest.fixture(scope="module")
def tok():
    return with_chat_tokens(npgpt.Tokenizer.from_pretrained("npgpt-small"))


def write(tmp_path, lines, name="chats.jsonl"):
    path = tmp_path / name
    path.write_bytes(b"".join((line if isinstance(line, bytes) else line.encode()) + b"\n" for line in lines))
    return path


def test_both_conventions_read(tok, tmp_path):
    path = write(tmp_path, [
        json.dumps({"messages": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"},
                                 {"role": "assistant", "content": "Hello!"}]}),
        "",
        json.dumps({"prompt": "Define cat.", "response": "A small feline.", "system": "Be brief."}),
        json.dumps({"prompt": "Define dog.", "response": "A canine.", "id": 7}),      # extra keys are ignored
    ])
    examples = conv.load(path, tok, block_size=128)
    assert [e.line for e in examples] == [1, 3, 4]
    assert tok.decode(examples[1].ids) == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nDefine cat."
                                           "<|im_end|>\n<|im_start|>assistant\nA small feline.<|im_end|>\n")


@pytest.mark.parametrize("line, rule", [
    (json.dumps({"messages": []}), "empty conversation"),
    (json.dumps({"messages": [{"role": "user", "content": "Hi"}]}), "no assistant turn"),
    (json.dumps({"messages": [{"role": "wizard", "content": "Hi"}]}), "role 'wizard'"),
    (json.dumps({"messages": [{"role": "user", "content": ["Hi"]}]}), "string 'content'"),
    (json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"},
                              {"role": "assistant", "content": "c"}]}), "system message may only come first"),
    (json.dumps({"prompt": "Hi"}), "'response' must be a string"),
    (json.dumps({"prompt": "Hi", "response": "Yo", "messages": []}), "not both"),
    (json.dumps({"text": "Hi"}), "needs 'messages', or 'prompt' and 'response'"),
    (json.dumps(["Hi"]), "must be a JSON object"),
    ("{not json", "not valid JSON"),
    (b'{"prompt": "caf\xe9", "response": "x"}', "not UTF-8 \\(byte 0xe9 at column 16\\)"),
])
def test_a_bad_line_is_refused_with_file_line_and_rule(tok, tmp_path, line, rule):
    good = json.dumps({"prompt": "a", "response": "b"})
    path = write(tmp_path, [good, line])
    with pytest.raises(DataError, match=rf"^{tmp_path}/chats\.jsonl:2: .*{rule}"):
        conv.load(path, tok, block_size=128)


def test_an_empty_file_is_refused(tok, tmp_path):
    with pytest.raises(DataError, match="no conversations"):
        conv.load(write(tmp_path, ["", "  "]), tok, block_size=128)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        conv.load(tmp_path / "missing.jsonl", tok, block_size=128)


def test_the_truncation_rule_drops_oldest_exchanges_keeps_the_system_prompt(tok):
    messages = [{"role": "system", "content": "S"}]
    for k in range(6):
        messages += [{"role": "user", "content": f"question {k} " * 5}, {"role": "assistant", "content": f"answer {k}"}]
    full = conv.tokenize(tok, messages, 10_000)
    assert full.dropped_exchanges == 0
    cut = conv.tokenize(tok, messages, len(full.ids) - 1)
    assert cut.dropped_exchanges == 1
    text = tok.decode(cut.ids)
    assert text.startswith("<|im_start|>system\nS<|im_end|>") and "question 0" not in text and "answer 5" in text
    assert len(cut.ids) <= len(full.ids) - 1


def test_a_line_too_long_even_after_the_rule_names_the_rule(tok, tmp_path):
    path = write(tmp_path, [json.dumps({"prompt": "word " * 200, "response": "ok"})])
    with pytest.raises(DataError, match=r"chats\.jsonl:1: .* tokens, more than the 65 that fit .* truncation rule "
                                        r"\(a conversation longer than the context loses its oldest exchanges"):
        conv.load(path, tok, block_size=64)


@given(st.lists(st.tuples(st.text(max_size=12), st.text(max_size=12)), min_size=1, max_size=4),
       st.integers(1, 4), st.integers(0, 2**31))
def test_batches_hold_targets_only_where_the_assistant_speaks(tok, pairs, batch_size, seed):
    """docs/agent.md eq:sft-targets: the target at t is token t + 1 where the assistant says it, else the ignore index."""
    examples = [conv.tokenize(tok, [{"role": "user", "content": p}, {"role": "assistant", "content": r}], 10_000)
                for p, r in pairs]
    sampler = conv.ConversationSampler(examples, batch_size, conv.pad_id_of(tok), seed=seed)
    picked = sampler.next_examples()
    x, y = conv.collate(picked, conv.pad_id_of(tok))
    assert x.shape == y.shape == (batch_size, max(len(e.ids) for e in picked) - 1)
    for row, e in enumerate(picked):
        n = len(e.ids) - 1
        np.testing.assert_array_equal(x[row, :n], e.ids[:-1])
        expected = [e.ids[t + 1] if e.trained[t + 1] else IGNORE_INDEX for t in range(n)]
        np.testing.assert_array_equal(y[row, :n], expected)
        assert (y[row, n:] == IGNORE_INDEX).all()               # padding is never a target
        assert (y[row] != IGNORE_INDEX).sum() >= 1             # every row has something to learn


def test_the_sampler_resumes_exactly(tok):
    examples = [conv.tokenize(tok, [{"role": "user", "content": str(k)}, {"role": "assistant", "content": "x" * k}],
                              1000) for k in range(7)]
    a = conv.ConversationSampler(examples, 3, 0, seed=5)
    for _ in range(4):
        a.next()
    b = conv.ConversationSampler(examples, 3, 0, seed=5)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    for _ in range(5):
        xa, ya = a.next()
        xb, yb = b.next()
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    with pytest.raises(ValueError, match="the data or the seed changed"):
        conv.ConversationSampler(examples[:5], 3, 0, seed=5).load_state_dict(a.state_dict())
    # Every conversation comes once per epoch.
    c = conv.ConversationSampler(examples, 7, 0, seed=1)
    assert sorted(id(e) for e in c.next_examples()) == sorted(id(e) for e in examples)


def test_split_is_fixed_and_disjoint(tok):
    examples = [conv.Example([1, 2], [False, True], line=k) for k in range(20)]
    train, val = conv.split(examples, 0.1, seed=3)
    assert len(val) == 2 and len(train) == 18 and not {e.line for e in train} & {e.line for e in val}
    assert [e.line for e in conv.split(examples, 0.1, seed=3)[1]] == [e.line for e in val]
