"""Training a byte-level BPE vocabulary, incrementally (docs/tokenizer.md, "Training fast").

``Tokenizer.train`` calls ``train_bpe`` here; the result is the tokens, merges and special tokens
that ``Tokenizer(...)`` takes.
"""

from __future__ import annotations

import collections
import heapq
import warnings
from collections.abc import Iterable, Mapping

import regex

from npgpt.tokenizer.bpe import ENDOFTEXT, SPECIAL_SHAPE, Vocabulary, pretokenize
from npgpt.training.progress import Progress

Pair = tuple[int, int]                           # two adjacent ids, left and right
HeapEntry = tuple[int, bytes, bytes, int, int]   # -count, left bytes, right bytes, left id, right id


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
    tokens. Each document is pre-tokenized separately (special tokens inside it also cut it), so
    no merge spans two documents or two pre-tokens.

    The incremental algorithm (docs/tokenizer.md), one function per step: count each distinct
    pre-token once (``count_pretokens``, ``pretoken_words``); keep the count of every adjacent
    pair and, for each pair, the set of words that contain it (``count_pairs``); a heap with
    lazy deletion yields the most frequent pair (``pair_heap``, ``pop_best_pair``); merging it
    rewrites only the words that contain it (``merge_pair``) and adjusts the pair counts by the
    difference (``update_pair_counts``).

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
    words, freq = pretoken_words(count_pretokens(texts, special_tokens))
    tokens = [bytes([b]) for b in range(256)]
    id_of = {t: i for i, t in enumerate(tokens)}
    pair_count, where = count_pairs(words, freq)
    heap = pair_heap(pair_count, tokens)

    target = vocab_size - len(special_tokens)
    merges, done = [], set()
    progress = Progress(target - 256, "training BPE", show_progress)
    while len(tokens) < target:            # one merge a turn: the best pair, its token, what it changes
        best = pop_best_pair(heap, pair_count, tokens, min_frequency)
        if best is None:                   # no pair occurs min_frequency times
            break
        a, b = best
        x = token_id(tokens, id_of, tokens[a] + tokens[b])
        if best not in done:               # a guard: a pair could only come back through a reused id (token_id)
            merges.append(best)
            done.add(best)
        delta = merge_pair(words, freq, where, best, x)
        update_pair_counts(pair_count, heap, tokens, delta)
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


def count_pretokens(texts: str | Iterable[str], special_tokens: list[str]) -> collections.Counter[str]:
    """How often each distinct pre-token occurs in ``texts`` (a str, or an iterable of str
    documents), each document pre-tokenized on its own and cut at every special token first, so
    that no pre-token spans two documents or holds a special token's text.

    Text repeats its words, so the distinct pre-tokens are few (18,500 in 5 MB of speeches): from
    here on training works on them and never looks at the corpus again.

    Raises:
        TypeError: a document is not a str.
        ValueError: there is no text at all (no documents, empty ones, or only special tokens).
    """
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
    return counts


def pretoken_words(counts: Mapping[str, int]) -> tuple[list[list[int]], list[int]]:
    """The words that training merges in: each distinct pre-token of two or more UTF-8 bytes as a
    list of byte ids, with its count alongside (``words[w]`` occurs ``freq[w]`` times).

    A one-byte pre-token holds no pair, so it can never take part in a merge and is left out.
    Raises ``ValueError`` for a pre-token with a lone surrogate, which has no UTF-8 bytes.
    """
    words, freq = [], []
    for word, c in counts.items():
        try:
            raw = word.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"training text contains a lone surrogate in {word!r}") from None
        if len(raw) > 1:
            words.append(list(raw))
            freq.append(c)
    return words, freq


def count_pairs(words: list[list[int]], freq: list[int]) -> tuple[dict[Pair, int], dict[Pair, set[int]]]:
    """``(pair_count, where)``: how often each adjacent pair of ids occurs over all words,
    each word weighted by its count, and the index of the words that hold each pair.

    Both are ``defaultdict``s, so that ``merge_pair`` and ``update_pair_counts`` can add pairs
    the merges make. ``where[pair]`` may list a word that no longer holds the pair (a merge
    that removes a pair from a word does not remove the word from its set); ``merge_pair``
    checks each word it visits.
    """
    pair_count = collections.defaultdict(int)
    where = collections.defaultdict(set)   # pair -> indices of words that (may) contain it
    for w, (word, c) in enumerate(zip(words, freq)):
        for pair in zip(word, word[1:]):
            pair_count[pair] += c
            where[pair].add(w)
    return pair_count, where


def pair_heap(pair_count: Mapping[Pair, int], tokens: list[bytes]) -> list[HeapEntry]:
    """A heap (``heapq``, smallest first) of ``(-count, left bytes, right bytes, left id, right id)``,
    one entry per pair: its top is the pair to merge next, the most frequent one, and among
    equal counts the one whose byte strings (left, then right) sort first (the tie-break of
    ``train_bpe``). The ids come last only to name the pair; they never decide the order.
    """
    heap = [(-c, tokens[a], tokens[b], a, b) for (a, b), c in pair_count.items()]
    heapq.heapify(heap)
    return heap


def pop_best_pair(heap: list[HeapEntry], pair_count: Mapping[Pair, int],
                  tokens: list[bytes], min_frequency: int) -> Pair | None:
    """Pop the pair to merge next off ``heap``, or None when no pair occurs ``min_frequency`` times.

    Lazy deletion: a heap cannot change an entry's count in place, so an entry whose count is no
    longer ``pair_count``'s is stale, and is pushed back with the true count (or dropped, at
    zero) before popping again. A stale entry can only overstate its pair's count, since the
    counts that grow are pushed as they grow (``update_pair_counts``), so the first entry that
    is up to date is the true best pair.
    """
    while heap:
        neg, _, _, a, b = heapq.heappop(heap)
        c = pair_count.get((a, b), 0)
        if c != -neg:                      # stale entry: counts only fall, re-queue the true one
            if c:
                heapq.heappush(heap, (-c, tokens[a], tokens[b], a, b))
            continue
        return (a, b) if c >= min_frequency else None
    return None


def token_id(tokens: list[bytes], id_of: dict[bytes, int], joined: bytes) -> int:
    """The id of the merged token ``joined``: a new id appended to ``tokens`` (and ``id_of``), or
    the existing one if these bytes are in the vocabulary already.

    In ``train_bpe`` the second case does not arise: every merge is applied to every word in one
    order, left to right, so two different pairs never spell the same bytes (``c``+``at`` in one
    word and ``ca``+``t`` in another; docs/tokenizer.md, "Training fast", says why), and every
    merge makes a new token. The look-up is a guard all the same: a vocabulary must never hold the
    same bytes under two ids (Hugging Face's trainer reuses the id, as this would).
    """
    x = id_of.get(joined)
    if x is None:
        x = id_of[joined] = len(tokens)
        tokens.append(joined)
    return x


def merge_pair(words: list[list[int]], freq: list[int], where: dict[Pair, set[int]], pair: Pair,
               x: int) -> dict[Pair, int]:
    """Replace every occurrence of ``pair`` by the id ``x`` in the words that hold it, left to
    right, and return how the pair counts change: ``{pair: difference}``.

    Only the words of ``where[pair]`` are visited (the entry is used up). Each rewritten word
    subtracts its old pairs and adds its new ones, times its count; the pairs it gains all hold
    ``x``, so only those are added to the index ``where``.
    """
    a, b = pair
    delta = collections.defaultdict(int)
    for w in where.pop(pair):
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
        for p in zip(old, old[1:]):
            delta[p] -= c_w
        for p in zip(new, new[1:]):
            delta[p] += c_w
            if x in p:
                where[p].add(w)
        words[w] = new
    return delta


def update_pair_counts(pair_count: dict[Pair, int], heap: list[HeapEntry],
                       tokens: list[bytes], delta: Mapping[Pair, int]) -> None:
    """Add a merge's ``delta`` (from ``merge_pair``) to ``pair_count``, deleting the counts that
    reach zero, and push each count that grew onto ``heap``.

    Only pairs that hold the new token can grow; the entries of those that shrink go stale
    instead, and ``pop_best_pair`` fixes them when they come to the top.
    """
    for pair, d in delta.items():
        if d:
            total = pair_count[pair] + d
            if total:
                pair_count[pair] = total
            else:
                del pair_count[pair]
            if d > 0:                  # only pairs with the new token can grow
                heapq.heappush(heap, (-total, tokens[pair[0]], tokens[pair[1]], *pair))
