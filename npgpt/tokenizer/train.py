"""Training a byte-level BPE vocabulary, incrementally (docs/tokenizer.md, "Training fast").

``Tokenizer.train`` calls ``train_bpe`` here; the result is the tokens, merges and special tokens
that ``Tokenizer(...)`` takes.
"""

from __future__ import annotations

import collections
import heapq
import warnings
from collections.abc import Iterable

import regex

from npgpt.tokenizer.bpe import ENDOFTEXT, SPECIAL_SHAPE, Vocabulary, pretokenize
from npgpt.training.progress import Progress


def check_special_tokens(special_tokens: Iterable[str]) -> list[str]:
    """The special tokens to train with, each once, in order; each must be spelled ``<|name|>``
    (``bpe.SPECIAL_SHAPE``: no whitespace), else a ``ValueError`` naming it.

    A special token replaces its text wherever it is allowed (``npgpt generate`` allows
    ``<|endoftext|>`` in prompts). Spelled as ordinary text ("the", " ", "e") it would turn that
    text into an id the training data never held, and "e" or "" cannot even be saved: vocab.json
    would spell two tokens alike. The marker form rules both out, so whatever ``train`` accepts,
    ``save`` writes and ``from_pretrained`` reads back unchanged.
    """
    tokens = []
    for s in special_tokens:
        if not isinstance(s, str):
            raise TypeError(f"a special token must be a str, got {type(s).__name__}")
        if not SPECIAL_SHAPE.fullmatch(s):
            raise ValueError(f"special token {s!r:.60} is not spelled <|name|> (a name without whitespace between "
                             "'<|' and '|>', like <|endoftext|>): a special token spelled as ordinary text would "
                             "replace that text wherever it is allowed")
        tokens.append(s)
    return list(dict.fromkeys(tokens))


def train_bpe(texts: str | Iterable[str], vocab_size: int, *, special_tokens: Iterable[str] = (ENDOFTEXT,),
              min_frequency: int = 2, show_progress: bool = True) -> Vocabulary:
    """Learn ``(tokens, merges, special_tokens)`` for ``vocab_size`` ids from ``texts``
    (a str, or an iterable of str documents).

    Ids 0..255 are the bytes, then the learned tokens in the order learned, then the special
    tokens. Each
    document is pre-tokenized separately (special tokens inside it also cut it), so no merge
    spans two documents or two pre-tokens.

    The incremental algorithm (docs/tokenizer.md): count each distinct pre-token once; keep
    the count of every adjacent pair and, for each pair, the set of words that contain it; a
    max-heap with lazy deletion yields the most frequent pair; merging it rewrites only the
    words that contain it and adjusts the pair counts by the difference.

    Tie-break: among pairs of equal count, the pair whose byte strings (left, then right) are
    lexicographically smallest is merged first, so the result never depends on id numbering
    or on dictionary order. Training stops early, with a warning saying why, when no pair
    occurs ``min_frequency`` times; the vocabulary is then smaller than ``vocab_size``, and
    ``len(tokenizer)`` / ``tokenizer.vocab_size`` report its real size.

    Raises:
        ValueError: ``vocab_size`` leaves no room for the bytes and special tokens, the texts
            hold no text at all (empty, or only special tokens), or a special token is not
            spelled ``<|name|>`` (``check_special_tokens``).
    """
    special_tokens = check_special_tokens(special_tokens)
    if vocab_size < 256 + len(special_tokens):
        raise ValueError(f"vocab_size={vocab_size} is below the 256 byte tokens plus "
                         f"{len(special_tokens)} special tokens")
    documents = [texts] if isinstance(texts, str) else texts
    cut = regex.compile("|".join(map(regex.escape, special_tokens))) if special_tokens else None
    counts = collections.Counter()
    for doc in documents:
        if not isinstance(doc, str):
            raise TypeError(f"training texts must be str, got {type(doc).__name__}")
        for piece in cut.split(doc) if cut else (doc,):
            counts.update(pretokenize(piece))
    if not counts:
        raise ValueError("there is no text to train on: the training texts are empty (or hold only "
                         "special tokens), so not even one byte can be counted")

    # Each distinct pre-token of 2+ bytes becomes a word: a list of ids, with its count.
    words, freq = [], []
    for word, c in counts.items():
        try:
            raw = word.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"training text contains a lone surrogate in {word!r}") from None
        if len(raw) > 1:
            words.append(list(raw))
            freq.append(c)
    tokens = [bytes([b]) for b in range(256)]
    id_of = {t: i for i, t in enumerate(tokens)}
    pair_count = collections.defaultdict(int)
    where = collections.defaultdict(set)   # pair -> indices of words that (may) contain it
    for w, (word, c) in enumerate(zip(words, freq)):
        for pair in zip(word, word[1:]):
            pair_count[pair] += c
            where[pair].add(w)
    heap = [(-c, tokens[a], tokens[b], a, b) for (a, b), c in pair_count.items()]
    heapq.heapify(heap)

    target = vocab_size - len(special_tokens)
    merges, done = [], set()
    progress = Progress(target - 256, "training BPE", show_progress)
    while len(tokens) < target and heap:
        neg, _, _, a, b = heapq.heappop(heap)
        c = pair_count.get((a, b), 0)
        if c != -neg:                      # stale entry: counts only fall, re-queue the true one
            if c:
                heapq.heappush(heap, (-c, tokens[a], tokens[b], a, b))
            continue
        if c < min_frequency:
            break
        joined = tokens[a] + tokens[b]
        x = id_of.get(joined)              # two different pairs can spell the same bytes
        if x is None:
            x = id_of[joined] = len(tokens)
            tokens.append(joined)
        if (a, b) not in done:
            merges.append((a, b))
            done.add((a, b))
        delta = collections.defaultdict(int)
        for w in where.pop((a, b)):
            old, c_w = words[w], freq[w]
            new, i, n = [], 0, len(old)
            while i < n:
                if i + 1 < n and old[i] == a and old[i + 1] == b:
                    new.append(x)
                    i += 2
                else:
                    new.append(old[i])
                    i += 1
            if len(new) == n:              # the word no longer holds the pair
                continue
            for pair in zip(old, old[1:]):
                delta[pair] -= c_w
            for pair in zip(new, new[1:]):
                delta[pair] += c_w
                if x in pair:
                    where[pair].add(w)
            words[w] = new
        for pair, d in delta.items():
            if d:
                total = pair_count[pair] + d
                if total:
                    pair_count[pair] = total
                else:
                    del pair_count[pair]
                if d > 0:                  # only pairs with the new token can grow
                    heapq.heappush(heap, (-total, tokens[pair[0]], tokens[pair[1]], *pair))
        progress.update(len(tokens) - 256)
    progress.update(len(tokens) - 256)
    progress.close()
    if len(tokens) < target:
        warnings.warn(f"training stopped at {len(tokens) + len(special_tokens)} of vocab_size={vocab_size} "
                      f"tokens: no remaining pair occurs min_frequency={min_frequency} times "
                      f"(the text is too small or too repetitive for this vocabulary)", stacklevel=3)
    specials = {}
    for s in special_tokens:
        specials[s] = len(tokens)
        tokens.append(s.encode("utf-8"))
    return tokens, merges, specials
