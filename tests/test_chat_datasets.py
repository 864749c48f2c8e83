"""Conversations and the WordNet instruction set (npgpt/datasets/chat.py, docs/agent.md "Real data")."""

import json

import pytest

import npgpt
from npgpt import datasets
from npgpt.datasets import chat
from npgpt.finetuning import conversations
from npgpt.tokenizer.chat import with_chat_tokens


def fetched(name):
    try:
        return datasets.fetch(name)
    except (datasets.DatasetUnavailable, datasets.ChecksumMismatch) as exc:
        pytest.skip(f"{name} cannot be fetched here: {exc}")


def test_the_held_out_rule_is_a_hash_of_the_key():
    keys = [f"word{k}" for k in range(2000)]
    share = sum(map(chat.held_out, keys)) / len(keys)
    assert 0.07 < share < 0.13                                          # about a tenth
    assert chat.held_out("break") and not chat.held_out("take")         # fixed forever, whatever the order
    with pytest.raises(ValueError, match="split must be one of train, heldout, all"):
        chat._keep("x", "test")


def fake_wordnet(directory):
    """A two-synset WordNet in the real files' layout (byte offsets, licence lines, hex word counts)."""
    directory.mkdir()
    licence = "  1 This software and database is being provided to you\n"
    synsets = ['02124272 05 n 02 cat 0 true_cat 0 000 | feline mammal usually having thick soft fur; "the cat sat"',
               '09999999 05 n 01 lantern 0 000 | light in a transparent case; "a lantern swung"; "she lit the lantern"']
    data, offsets = licence, []
    for line in synsets:
        offsets.append(len(data.encode("latin-1")))
        data += line.replace(line[:8], f"{offsets[-1]:08d}", 1) + "  \n"
    (directory / "data.noun").write_bytes(data.encode("latin-1"))
    index = licence + f"cat n 1 0 1 1 {offsets[0]:08d}  \nlantern n 1 0 1 0 {offsets[1]:08d}  \n"
    (directory / "index.noun").write_text(index, encoding="latin-1")
    for pos in ("verb", "adj", "adv"):
        (directory / f"index.{pos}").write_text(licence)
        (directory / f"data.{pos}").write_text(licence)
    return directory


def test_the_instruction_set_from_wordnet_files(tmp_path):
    directory = fake_wordnet(tmp_path / "wn")
    entries = chat.wordnet_entries(directory)
    assert [e["word"] for e in entries] == ["cat", "lantern"]          # the tagged word first
    assert entries[0] == {"word": "cat", "pos": "noun", "definition": "feline mammal usually having thick soft fur",
                          "tagged": 1, "examples": ["the cat sat"], "synonyms": ["true cat"]}
    assert chat.wordnet_records(directory) == [
        {"prompt": "Define cat.", "response": "feline mammal usually having thick soft fur"},
        {"prompt": "Use cat in a sentence.", "response": "the cat sat"},
        {"prompt": "Give a synonym of cat.", "response": "true cat"},
        {"prompt": "Define lantern.", "response": "light in a transparent case"},
        {"prompt": "Use lantern in a sentence.", "response": "a lantern swung"}]
    assert len(chat.wordnet_records(directory, max_words=1)) == 3
    with pytest.raises(ValueError, match="max_words must be a positive integer"):
        chat.wordnet_records(directory, max_words=0)


def test_chatterbot_files_become_alternating_turns(tmp_path):
    pytest.importorskip("yaml")
    (tmp_path / "a.yml").write_text("categories:\n- x\nconversations:\n- - Hello\n  - Hi there\n  - How are you?\n"
                                    "- - Only one line\n- A string, not a list\n- - Q\n  - A\n")
    skipped = []
    rows = chat.chatterbot_records(tmp_path, "all", skipped)
    assert rows == [{"messages": [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi there"}]},
                    {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}]
    assert skipped == ["a.yml: conversation 2"]


def test_the_pinned_chatterbot_conversations():
    pytest.importorskip("yaml")
    english, chinese = fetched("chatterbot-english"), fetched("chatterbot-chinese")
    assert (english / "license.md").is_file() and (chinese / "license.md").is_file()      # the licence beside
    skipped = []
    train = chat.records("chatterbot-english", english, "train", skipped=skipped)
    held = chat.records("chatterbot-english", english, "heldout")
    assert (len(train), len(held)) == (1940, 85) and skipped == ["trivia.yml: conversation 13"]
    assert not {r["messages"][0]["content"] for r in train} & {r["messages"][0]["content"] for r in held}
    zh = chat.records("chatterbot-chinese", chinese, "all")
    assert len(zh) == 467 and zh[0]["messages"][0]["content"] == "什么是ai"
    for r in train + zh:
        conversations.messages_of(r)                      # every record is a valid SFT line


def test_the_pinned_instruction_set_holds_out_whole_words(tmp_path):
    directory = fetched("wordnet")
    assert (directory / "LICENSE").read_text().startswith("WordNet Release 3.0")
    train = chat.wordnet_records(directory, "train", max_words=300)
    held = chat.wordnet_records(directory, "heldout", max_words=300)
    word = lambda r: r["prompt"].split()[-1].rstrip(".") if r["prompt"].startswith("Define") else r["prompt"].split()[
        -4 if "sentence" in r["prompt"] else -1].rstrip(".")                                   # noqa: E731
    assert not {word(r) for r in train} & {word(r) for r in held}
    assert train[0] == {"prompt": "Define take.", "response": "carry out"}
    assert {"prompt": "Give a synonym of break.", "response": "interrupt"} in held


def test_export_writes_jsonl_that_sft_reads(tmp_path):
    pytest.importorskip("yaml")
    fetched("chatterbot-chinese")
    out = tmp_path / "zh.jsonl"
    summary = datasets.export_chat(out, "chatterbot-chinese", "heldout")
    assert summary == f"wrote {out}: 32 chatterbot-chinese conversations (heldout)"
    tok = with_chat_tokens(npgpt.Tokenizer.from_pretrained("npgpt-small"))
    assert len(conversations.load(out, tok, block_size=128)) == 32
    assert json.loads(out.read_text().splitlines()[0])["messages"][1]["role"] == "assistant"
    with pytest.raises(FileExistsError, match="exists"):
        datasets.export_chat(out, "chatterbot-chinese")
    with pytest.raises(ValueError, match="name the file .jsonl"):
        datasets.export_chat(tmp_path / "zh.csv", "chatterbot-chinese")
    assert datasets.main(["export", "chat", str(tmp_path / "x.jsonl"), "--source", "chatterbot-chinese",
                          "--max-words", "3"]) == 1
    assert datasets.main(["export", "movie-reviews", str(tmp_path / "m.tsv"), "--split", "train"]) == 1
