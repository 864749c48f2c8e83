"""A small offline evaluation set built from what ``npgpt.datasets`` fetches: ``python -m npgpt.apps.eval_tasks DIR``.

Companion of ``docs/agent.md`` (section "Evaluation"). Three files, each a task, plus lm-eval task
YAMLs for the two multiple-choice ones:

* ``shakespeare-heldout.txt``: the tail of every play that npgpt-small never trained on: the last
  tenth of each play's tokens, exactly the validation split ``npgpt prepare`` made for it (its
  tokenizer, ``val_fraction`` 0.1). For ``npgpt eval --text``.
* ``shakespeare-cloze.jsonl``: a line of those tails without its last word, after the line before
  it; the choices are the true last word and three last words of other held-out lines.
* ``wordnet-gloss.jsonl``: a WordNet definition of a held-out word (the words ``npgpt.datasets``
  keeps out of the SFT instruction set), then "Word:"; the choices are the word and three held-out
  words of the same part of speech and a similar frequency.

Every choice of a question is a distinct word, drawn with a fixed seed; ``gold`` is where the
right one landed after shuffling, so that position says nothing.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import sys
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np

from npgpt import datasets
from npgpt.datasets import chat

VAL_FRACTION = 0.1      # npgpt prepare's default, with which npgpt-small's data was split
_LAST_WORD = re.compile(r"^(?P<context>.*\S)\s+(?P<word>[A-Za-z]{3,})[.,;:!?]*$")


def shakespeare_heldout(tokenizer: Any) -> list[str]:
    """The validation tail of every play, as ``npgpt prepare`` cut it: the last ``int(n * 0.1)`` of the
    play's ``n`` tokens (its ids and the closing ``<|endoftext|>``), decoded without that marker."""
    tails = []
    for play in datasets.load_documents("shakespeare"):
        ids = list(tokenizer.encode(play, disallowed_special=()))
        n = len(ids) + 1                      # the stream ends with <|endoftext|>
        tails.append(tokenizer.decode(ids[n - int(n * VAL_FRACTION):]))
    return tails


def _choices(rng: np.random.Generator, right: str, pool: Sequence[str], k: int = 3) -> tuple[list[str], int]:
    """``right`` and ``k`` other distinct words of ``pool``, shuffled; and where ``right`` is."""
    others: list[str] = []
    while len(others) < k:
        word = pool[int(rng.integers(len(pool)))]
        if word.lower() != right.lower() and word.lower() not in {o.lower() for o in others}:
            others.append(word)
    options = [right] + others
    order = rng.permutation(len(options))
    shuffled = [options[i] for i in order]
    return shuffled, int(np.flatnonzero(order == 0)[0])


def shakespeare_cloze(tails: Sequence[str], n: int = 500, seed: int = 0) -> list[dict[str, Any]]:
    """Questions from held-out lines of at least six words that end in a word of three letters or more."""
    items = []
    for tail in tails:
        lines = [line.strip() for line in tail.splitlines()]
        for before, line in zip(lines, lines[1:]):
            match = _LAST_WORD.match(line)
            if match and len(line.split()) >= 6 and before:
                items.append((f"{before}\n{match['context']}", match["word"]))
    rng = np.random.default_rng(seed)
    pool = [word for _, word in items]
    picked = rng.choice(len(items), size=min(n, len(items)), replace=False)
    questions = []
    for i in sorted(int(i) for i in picked):
        context, word = items[i]
        choices, gold = _choices(rng, word, pool)
        questions.append({"context": context, "choices": choices, "gold": gold})
    return questions


def wordnet_gloss(n: int = 500, seed: int = 0, top: int = 6000) -> list[dict[str, Any]]:
    """"Definition: ... / Word:" questions over the held-out words among WordNet's ``top`` most frequent.

    The distractors are held-out words of the same part of speech and of similar frequency (within 20
    places in that part of speech's frequency order): with random ones, a model would win by
    preferring common words, knowing nothing of the definitions.
    """
    ranked = chat.wordnet_entries(datasets.fetch("wordnet"))[:top]          # most frequent first
    entries = [e for e in ranked if chat.held_out(e["word"]) and e["definition"]]
    by_pos: dict[str, list[str]] = {}
    for e in entries:
        by_pos.setdefault(e["pos"], []).append(e["word"])
    rng = np.random.default_rng(seed)
    usable = [e for e in entries if len(by_pos[e["pos"]]) >= 4]
    picked = rng.choice(len(usable), size=min(n, len(usable)), replace=False)
    questions = []
    for i in sorted(int(i) for i in picked):
        e = usable[i]
        same = by_pos[e["pos"]]
        at = same.index(e["word"])
        nearby = same[max(0, at - 20):at + 21]
        choices, gold = _choices(rng, e["word"], nearby)
        questions.append({"context": f"Definition: {e['definition']}\nWord:", "choices": choices, "gold": gold})
    return questions


def _lm_eval_yaml(task: str, data: pathlib.Path) -> str:
    return (f"task: {task}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data.resolve()}\n"
            "test_split: test\noutput_type: multiple_choice\n"
            'doc_to_text: "{{context}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: gold\n'
            "metric_list:\n  - metric: acc\n  - metric: acc_norm\n")


def write(out_dir: str | pathlib.Path, tokenizer: Any, n: int = 500, seed: int = 0,
          plays: Optional[int] = None) -> dict[str, int]:
    """Write the three tasks (and the two lm-eval YAMLs) into ``out_dir``; returns each file's item count.

    ``plays`` keeps the held-out text of the first ``plays`` plays only (a quicker perplexity); the
    cloze questions are drawn from all of them either way.
    """
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tails = shakespeare_heldout(tokenizer)
    kept = tails[:plays] if plays else tails
    (out / "shakespeare-heldout.txt").write_text("\n\n".join(kept), encoding="utf-8")
    counts = {"shakespeare-heldout.txt": len(kept)}
    for name, questions in (("shakespeare-cloze", shakespeare_cloze(tails, n, seed)),
                            ("wordnet-gloss", wordnet_gloss(n, seed))):
        path = out / f"{name}.jsonl"
        path.write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in questions), encoding="utf-8")
        (out / f"{name}.yaml").write_text(_lm_eval_yaml("npgpt_" + name.replace("-", "_"), path))
        counts[path.name] = len(questions)
    return counts


def main(argv: Optional[Sequence[str]] = None) -> int:
    from npgpt.tokenizer import Tokenizer

    parser = argparse.ArgumentParser(prog="python -m npgpt.apps.eval_tasks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", metavar="DIR", help="directory for the task files")
    parser.add_argument("--tokenizer", default="npgpt-small",
                        help="the tokenizer whose validation split the held-out text is (default npgpt-small)")
    parser.add_argument("--questions", type=int, default=500, help="questions per multiple-choice task (default 500)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the questions and their choices (default 0)")
    parser.add_argument("--plays", type=int, default=None,
                        help="held-out text of the first N plays only (default: all 42)")
    args = parser.parse_args(argv)
    if args.questions < 1 or (args.plays is not None and args.plays < 1):
        parser.error("--questions and --plays must be positive")
    counts = write(args.out, Tokenizer.from_pretrained(args.tokenizer), args.questions, args.seed, args.plays)
    for name, count in counts.items():
        print(f"{pathlib.Path(args.out) / name}: {count:,} {'plays' if name.endswith('.txt') else 'questions'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
