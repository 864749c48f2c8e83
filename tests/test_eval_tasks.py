"""The offline evaluation set (npgpt.apps.eval_tasks): the held-out Shakespeare is exactly the validation
split `npgpt prepare` makes, and every question has distinct choices with the right one at `gold`."""

import numpy as np
import pytest

from npgpt import datasets
from npgpt.apps import eval_tasks
from npgpt.tokenizer import Tokenizer


def need(name):
    if not datasets.is_cached(name):
        pytest.skip(f"the {name} corpus is not fetched: python -m npgpt.datasets fetch {name}")


def test_held_out_shakespeare_is_prepares_validation_split(tmp_path, monkeypatch):
    from npgpt.training import data

    need("shakespeare")
    tokenizer = Tokenizer.from_pretrained("npgpt-small")
    plays = datasets.load_documents("shakespeare")[:2]
    monkeypatch.setattr(datasets, "load_documents", lambda name: plays)
    tails = eval_tasks.shakespeare_heldout(tokenizer)
    data.prepare_documents(plays, tokenizer, tmp_path, val_fraction=eval_tasks.VAL_FRACTION, progress=False,
                           workers=1)
    val = np.asarray(data.load_tokens(tmp_path / "val.bin")).tolist()
    eot = tokenizer.special_tokens["<|endoftext|>"]
    expected = []
    for tail in tails:
        expected += tokenizer.encode(tail, disallowed_special=()) + [eot]
    assert val == expected
    assert all(tail and tail in play for tail, play in zip(tails, plays))


def check(questions):
    for q in questions:
        assert len(q["choices"]) == 4 and len({c.lower() for c in q["choices"]}) == 4
        assert 0 <= q["gold"] < 4 and q["context"]


def test_cloze_questions_end_a_held_out_line():
    tails = ["FIRST LORD.\nHe hath the ring upon his finger now,\nAnd swears the maiden gave it him in love.\n"
             "Second line of the play that ends with music;\nA third that ends with a number seven.",
             "Another play begins with words\nwhere the king speaks of his kingdom tonight\n"
             "and the queen of her garden flowers."]
    questions = eval_tasks.shakespeare_cloze(tails, n=10, seed=0)
    check(questions)
    right = {q["choices"][q["gold"]] for q in questions}      # every line of six words or more, the first excepted
    assert right == {"now", "love", "music", "seven", "tonight", "flowers"}
    q = next(q for q in questions if q["choices"][q["gold"]] == "love")
    assert q["context"] == "He hath the ring upon his finger now,\nAnd swears the maiden gave it him in"
    assert [q["gold"] for q in eval_tasks.shakespeare_cloze(tails, n=10, seed=0)] == [q["gold"] for q in questions]


def test_wordnet_questions_ask_for_held_out_words():
    need("wordnet")
    from npgpt.datasets import chat

    questions = eval_tasks.wordnet_gloss(n=50, seed=1)
    assert len(questions) == 50
    check(questions)
    for q in questions:
        assert q["context"].startswith("Definition: ") and q["context"].endswith("\nWord:")
        assert all(chat.held_out(c) for c in q["choices"])        # never in the SFT instruction set
    golds = np.bincount([q["gold"] for q in questions], minlength=4)
    assert golds.min() >= 5                                      # the right answer's place is shuffled
