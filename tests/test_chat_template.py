"""The chat template (npgpt/tokenizer/chat.py, docs/agent.md "Chat templates and special tokens").

npgpt renders its ChatML template in Python; ``transformers`` renders the same Jinja string that
npgpt saves in tokenizer_config.json. The two must give the same text for every conversation.
"""

import hashlib
import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import npgpt
from npgpt.finetuning.sft import add_chat_tokens, resize_token_embeddings
from npgpt.tokenizer import chat
from npgpt.tokenizer.chat import IM_END, IM_START, ChatTemplateError


@pytest.fixture(scope="module")
def small():
    """npgpt-small with the role markers added: (model, chat tokenizer, plain tokenizer)."""
    plain = npgpt.Tokenizer.from_pretrained("npgpt-small")
    model, tok = add_chat_tokens(npgpt.GPT.from_pretrained("npgpt-small"), plain)
    return model, tok, plain


@pytest.fixture(scope="module")
def hf_tokenizer(small, tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    directory = tmp_path_factory.mktemp("chat-tok")
    small[1].save(directory)
    return transformers.AutoTokenizer.from_pretrained(str(directory))


# Contents without special-token text (a content's "<|im_end|>" is tested on its own below).
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30).filter(lambda t: "<|" not in t)
message = st.fixed_dictionaries({"role": st.sampled_from(chat.ROLES), "content": text})
conversation = st.lists(message, min_size=1, max_size=5)


def test_chatml_text_literally(small):
    tok = small[1]
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."}]
    assert tok.render_chat(msgs) == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                                     "<|im_start|>assistant\nHello.<|im_end|>\n")
    assert tok.render_chat(msgs[:2], add_generation_prompt=True).endswith("Hi<|im_end|>\n<|im_start|>assistant\n")


def test_version_one_is_frozen():
    """A saved model renders with the template it was saved with: version 1 never changes."""
    assert hashlib.sha256(chat.TEMPLATES[1].encode()).hexdigest()[:16] == "a21fca44d395dd34"
    assert chat.template_version(chat.CHATML_V1) == 1 and chat.template_version("{{ x }}") is None
    assert "npgpt chat template v1" in chat.CHATML_V1


@given(conversation, st.booleans())
def test_transformers_renders_the_same_text(small, hf_tokenizer, messages, add_generation_prompt):
    ours = small[1].render_chat(messages, add_generation_prompt=add_generation_prompt)
    theirs = hf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    assert ours == theirs


@given(conversation, st.booleans())
def test_ids_are_the_rendered_texts_ids(small, hf_tokenizer, messages, add_generation_prompt):
    """Without marker text in a content, the ids are those of the rendered text with the markers special,
    and those transformers gives for it."""
    tok = small[1]
    rendered = tok.render_chat(messages, add_generation_prompt=add_generation_prompt)
    ids = tok.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
    assert ids == tok.encode(rendered, allowed_special={IM_START, IM_END})
    assert ids == hf_tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == rendered


@given(conversation)
def test_trained_tokens_are_the_assistant_answers(small, messages):
    """In each message's span, the flagged tokens are the content and <|im_end|> of an assistant message
    (plus, at most, the tail of its header that a token straddling the two carries in), nothing else."""
    tok = small[1]
    ids, trained = chat.encode(tok, messages)
    assert len(ids) == len(trained)
    starts = [k for k, i in enumerate(ids) if i == tok.special_tokens[IM_START]] + [len(ids)]
    assert len(starts) == len(messages) + 1
    for m, a, b in zip(messages, starts, starts[1:]):
        flagged = tok.decode_bytes([i for i, t in zip(ids[a:b], trained[a:b]) if t])
        if m["role"] != "assistant":
            assert flagged == b""
            continue
        answer = m["content"].encode() + IM_END.encode()
        assert flagged.endswith(answer) and (b"assistant\n" + answer).endswith(flagged)


def test_trained_mask_exactly():
    tok = add_chat_tokens(npgpt.GPT(npgpt.GPTConfig(vocab_size=8192, block_size=8, n_layer=1, n_head=1, n_embd=4)),
                          npgpt.Tokenizer.from_pretrained("npgpt-small"))[1]
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yes."}]
    ids, trained = chat.encode(tok, msgs)
    assert tok.decode_bytes([i for i, t in zip(ids, trained) if t]) == b"Yes.<|im_end|>"
    assert tok.decode_bytes([i for i, t in zip(ids, trained) if not t]) == \
        b"<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n\n"


def test_marker_text_in_a_content_stays_ordinary(small):
    tok = small[1]
    ids = tok.apply_chat_template([{"role": "user", "content": "end it <|im_end|> now"}])
    assert ids.count(tok.end_of_turn_id) == 1            # only the template's own marker
    assert tok.decode(ids).count(IM_END) == 2


@pytest.mark.parametrize("messages, problem", [
    ([{"role": "robot", "content": "x"}], "role 'robot'"),
    ([{"role": "user", "content": 3}], "string 'content'"),
    ([{"role": "user"}], "string 'content'"),
    (["hello"], "must be an object"),
    ("hello", "list of messages"),
])
def test_bad_messages_are_named(small, messages, problem):
    with pytest.raises(ChatTemplateError, match=problem):
        small[1].render_chat(messages)


def test_without_a_template_the_error_says_how_to_add_one(small):
    plain = small[2]
    assert plain.chat_template is None and plain.end_of_turn_id is None
    for call in (plain.render_chat, plain.apply_chat_template):
        with pytest.raises(ChatTemplateError, match="add_chat_tokens"):
            call([{"role": "user", "content": "hi"}])


def test_saved_and_reloaded(small, tmp_path):
    model, tok, plain = small
    tok.save(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["chat_template"] == chat.CHATML_V1
    model.save_pretrained(tmp_path)
    again = npgpt.Tokenizer.from_pretrained(tmp_path)
    assert again == tok and again.chat_template == chat.CHATML_V1
    assert again.special_tokens[IM_START] == plain.vocab_size and again.end_of_turn_id == plain.vocab_size + 1
    reloaded = npgpt.GPT.from_pretrained(tmp_path)
    assert reloaded.config.vocab_size == tok.vocab_size
    np.testing.assert_array_equal(reloaded.wte.weight.numpy(), model.wte.weight.numpy())


def test_hugging_faces_other_places_for_a_template(small, tmp_path):
    """A list of named templates (the one named 'default' is used), and chat_template.jinja."""
    small[2].save(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config["chat_template"] = [{"name": "tool_use", "template": "x"}, {"name": "default", "template": chat.CHATML_V1}]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    assert npgpt.Tokenizer.from_pretrained(tmp_path).chat_template == chat.CHATML_V1
    (tmp_path / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    assert npgpt.Tokenizer.from_pretrained(tmp_path).render_chat([{"role": "user", "content": "ab"}]) == "ab"
    config["chat_template"] = 7
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    (tmp_path / "chat_template.jinja").unlink()
    with pytest.raises(npgpt.tokenizer.TokenizerFileError, match="chat_template must be"):
        npgpt.Tokenizer.from_pretrained(tmp_path)


def test_a_foreign_template_renders_as_transformers_does(small, tmp_path):
    transformers = pytest.importorskip("transformers")
    template = ("{% for m in messages %}{% if m['role'] == 'user' %}User: {{ m['content'] }}\n"
                "{% else %}Bot: {{ m['content'] }}\n{% endif %}{% endfor %}"
                "{% if add_generation_prompt %}Bot:{% endif %}")
    tok = npgpt.Tokenizer(*(lambda t: ([t.token_bytes(i) for i in range(t.vocab_size)], t.merges, t.special_tokens))(
        small[2]), chat_template=template)
    tok.save(tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    assert tok.render_chat(msgs, add_generation_prompt=True) == \
        hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == "User: hi\nBot: yo\nBot:"
    assert tok.end_of_turn_id is None
    bad = npgpt.Tokenizer(*(lambda t: ([t.token_bytes(i) for i in range(t.vocab_size)], t.merges, t.special_tokens))(
        small[2]), chat_template="{{ raise_exception('no system role') }}")
    with pytest.raises(ChatTemplateError, match="no system role"):
        bad.render_chat(msgs)


def test_new_rows_are_the_mean_and_old_ones_stay(small):
    """docs/agent.md eq:new-row-mean: each new row is the mean of the old rows, which are kept exactly."""
    model, tok, plain = small
    base = npgpt.GPT.from_pretrained("npgpt-small").wte.weight.numpy()
    grown = model.wte.weight.numpy()
    assert grown.shape == (plain.vocab_size + 2, base.shape[1])
    np.testing.assert_array_equal(grown[:plain.vocab_size], base)
    np.testing.assert_allclose(grown[plain.vocab_size:], np.repeat(base.astype(np.float64).mean(0, keepdims=True), 2, 0),
                               rtol=0, atol=1e-7)
    # The tied head grew with the table: the old tokens' logits are exactly the base model's.
    ids = np.array([plain.encode("The cat sits on the")])
    with npgpt.no_grad():
        new = model(ids).numpy()
        old = npgpt.GPT.from_pretrained("npgpt-small")(ids).numpy()
    assert new.shape[-1] == plain.vocab_size + 2
    np.testing.assert_array_equal(new[..., :plain.vocab_size], old)


def test_resizing_refuses_what_it_cannot_do(small):
    model = npgpt.GPT(npgpt.GPTConfig(vocab_size=300, block_size=8, n_layer=1, n_head=1, n_embd=4))
    with pytest.raises(ValueError, match=">= the model's 300"):
        resize_token_embeddings(model, 299)
    with pytest.raises(ValueError, match="300 token rows but the tokenizer has 8192"):
        add_chat_tokens(model, small[2])
    assert resize_token_embeddings(model, 300).config.vocab_size == 300
