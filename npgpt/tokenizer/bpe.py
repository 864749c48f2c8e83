"""The byte-level BPE core: GPT-2's pre-tokenizer, the byte-to-unicode map and the merge loops.

Shared by training (npgpt/tokenizer/train.py), the file formats (formats.py) and the Tokenizer
(core.py). Explained in docs/tokenizer.md, sections "Bytes", "Pre-tokens" and "Encoding fast".
"""

from __future__ import annotations

import array
import heapq
import itertools
import re
from collections.abc import Sequence

import regex

# GPT-2's pre-tokenizer as published (GPT2_PATTERN) and the textbook encoder are in
# npgpt.tokenizer.reference; this module holds the fast path, tested equal to them.
ENDOFTEXT = "<|endoftext|>"
# How a special token is spelled: <|name|>, no whitespace. Such a marker is not text anyone writes by
# chance, so recognising it never swallows ordinary text ("the", " "); GPT-2's files spell theirs so.
SPECIAL_SHAPE = regex.compile(r"<\|\S+\|>")
GPT2_ENDOFTEXT_ID = 50256          # its id in GPT-2's 50,257-token vocabulary: the last one
# The same pattern, factored so that `regex` runs it ~10% faster (tests check they agree). The
# order of two alternatives only matters where both can match, and a letter run (which starts
# with a letter or a space) never can where a contraction (which starts with ') does; so the
# commonest alternative goes first, and the contractions share one group.
_PRETOKENIZE = regex.compile(r""" ?\p{L}+|'(?:[sdmt]|ll|ve|re)| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
# On ASCII text \p{L} is [A-Za-z], \p{N} is [0-9] and \s is [\t\n\v\f\r ], and Python's built-in
# `re` runs this spelled-out twin ~1.7x faster than `regex` runs the Unicode one.
_ASCII_PRETOKENIZE = re.compile(
    r""" ?[A-Za-z]+|'(?:[sdmt]|ll|ve|re)| ?[0-9]+| ?[^\t\n\x0b\x0c\r A-Za-z0-9]+"""
    r"""|[\t\n\x0b\x0c\r ]+(?![^\t\n\x0b\x0c\r ])|[\t\n\x0b\x0c\r ]+""")
_NON_ASCII = re.compile(r"[^\x00-\x7f]+")

# A vocabulary as ``Tokenizer(...)`` takes it and the readers and the trainer return it:
# ``(tokens, merges, special_tokens)``, the bytes of every id, the merges as pairs of ids in
# rank order, and {special token text: id}.
Vocabulary = tuple[list[bytes], list[tuple[int, int]], dict[str, int]]


def _safe_cut(text: str, start: int, step: int) -> int:
    """A position p (searching from ``start`` backwards if step < 0, else forwards) where the
    pre-tokenization of text[:p] + text[p:] equals that of text: text[p] is a space and text[p-1]
    is not whitespace, so the pre-token before p ends at p-1 whatever follows, and the pattern
    (which has no look-behind) matches text[p:] as it would inside the whole text."""
    if step < 0:
        p = text.rfind(" ", 0, start)
        while p > 0 and text[p - 1].isspace():
            p = text.rfind(" ", 0, p)
        return max(p, 0)
    p = text.find(" ", start)
    while p != -1 and text[p - 1].isspace():
        p = text.find(" ", p + 1)
    return len(text) if p == -1 else p


def pretokenize(text: str) -> list[str]:
    """GPT-2's pre-tokens of ``text``: ``regex.findall(GPT2_PATTERN, text)``, only faster.

    ASCII stretches go to the ``re`` twin of the pattern; each stretch holding non-ASCII
    characters, widened to safe cut points, goes to ``regex``.
    """
    if text.isascii():
        return _ASCII_PRETOKENIZE.findall(text)
    regions = []                               # [start, end) spans for the Unicode pattern
    for m in _NON_ASCII.finditer(text):
        if regions and m.start() < regions[-1][1]:
            continue
        a, b = _safe_cut(text, m.start(), -1), _safe_cut(text, m.end(), +1)
        if regions and a <= regions[-1][1]:
            regions[-1][1] = b
        else:
            regions.append([a, b])
    words, pos = [], 0
    for a, b in regions:
        words += _ASCII_PRETOKENIZE.findall(text, pos, a)
        words += _PRETOKENIZE.findall(text, a, b)
        pos = b
    words += _ASCII_PRETOKENIZE.findall(text, pos)
    return words


_LONG_WORD = 48             # pre-tokens longer than this (in bytes) use the O(n log n) merge loop
_CACHE_LIMIT = 1 << 20      # a cache is cleared when it holds more entries than this ...
_CACHE_KEY_LIMIT = 256      # ... and never stores a key longer than this (a 1 MB run is encoded, not kept)

# The characters `regex` counts as \s (tested against it), spelled out for Python's `re`, whose own
# \s also matches U+001C..U+001F.
_UNICODE_WS = "\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_WS = "\t\n\x0b\x0c\r " + _UNICODE_WS
_WS_CHARS = frozenset(regex.findall(f"[{_WS}]", "".join(map(chr, range(0x3001)))))
_WS_RUN = re.compile(f"[{_WS}]*")
# Whitespace other than the space and the newline: rare, so looked for alone (one fast scan each)
# before its pair with a space is (see ``crowded_runs``).
_RARE_WS = sorted(_WS_CHARS - {" ", "\n"})


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from the 256 byte values to 256 printable characters (docs/tokenizer.md).

    vocab.json and merges.txt are text files, so each token's bytes are written as characters.
    Bytes that are already visible Latin-1 characters map to themselves; the other 68 (controls,
    space, 0x7F-0xA0, soft hyphen) are moved to U+0100 onwards in byte order, so that a space
    becomes 'Ġ' (U+0120) and a newline 'Ċ' (U+010A).
    """
    visible = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, shifted = {}, 0
    for b in range(256):
        if b in visible:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


_BYTE_TO_CHAR = bytes_to_unicode()
_CHAR_TO_BYTE = {c: b for b, c in _BYTE_TO_CHAR.items()}


def token_text(token: bytes) -> str:
    """bytes -> its vocab.json spelling."""
    return "".join(_BYTE_TO_CHAR[b] for b in token)


def token_bytes(text: str) -> bytes:
    """vocab.json spelling -> bytes; KeyError if ``text`` is not a byte-level spelling."""
    return bytes(_CHAR_TO_BYTE[c] for c in text)


def bpe(ids: list[int], ranks: dict[tuple[int, int], int], merged: Sequence[int]) -> list[int]:
    """Apply the merges to one pre-token: ``ids`` (a list, modified) -> its token ids.

    ``ranks`` maps a pair of ids to its merge rank (its position in the merge list) and
    ``merged[rank]`` is the id the pair becomes. Repeatedly the adjacent pair of lowest rank is
    merged, leftmost first. Only the two pairs next to a merge change, so their ranks are updated
    in place instead of recomputing every pair: O(n) per merge, with small constants for the short
    words that make up almost all text. Long pre-tokens go to ``bpe_long``.
    """
    if len(ids) < 2:
        return ids
    if len(ids) > _LONG_WORD:
        return bpe_long(ids, ranks, merged)
    get = ranks.get
    never = len(merged)                        # larger than every rank: "no merge here"
    rs = [get(p, never) for p in zip(ids, ids[1:])]
    while rs:
        r = min(rs)
        if r == never:
            break
        i = rs.index(r)                        # leftmost pair of lowest rank
        x = ids[i] = merged[r]
        del ids[i + 1], rs[i]
        if i < len(rs):
            rs[i] = get((x, ids[i + 1]), never)
        if i:
            rs[i - 1] = get((ids[i - 1], x), never)
    return ids


def bpe_long(ids: list[int], ranks: dict[tuple[int, int], int], merged: Sequence[int]) -> list[int]:
    """The same merges as ``bpe``, in O(n log n) for long pre-tokens (1,000,000 repeated characters).

    Tokens form a linked list; a heap holds the candidate pairs as one int each,
    ``rank << shift | position`` (an int compares and allocates faster than a tuple, and orders
    the same: lowest rank first, ties leftmost first, as in ``bpe``). An entry is stale when its
    left token was merged away or the pair at that position changed; stale entries are skipped
    when popped.
    """
    n = len(ids)
    nxt = list(range(1, n + 1))
    prv = list(range(-1, n - 1))
    get = ranks.get
    shift = n.bit_length()
    low = (1 << shift) - 1
    heap = [r << shift | i for i, r in enumerate(map(get, zip(ids, ids[1:]))) if r is not None]
    heapq.heapify(heap)
    pop, push = heapq.heappop, heapq.heappush
    while heap:
        key = pop(heap)
        r, i = key >> shift, key & low
        a, j = ids[i], nxt[i]
        if a is None or j >= n or get((a, ids[j])) != r:
            continue
        x = ids[i] = merged[r]
        ids[j] = None
        k = nxt[i] = nxt[j]
        if k < n:
            prv[k] = i
            r = get((x, ids[k]))
            if r is not None:
                push(heap, r << shift | i)
        h = prv[i]
        if h >= 0:
            r = get((ids[h], x))
            if r is not None:
                push(heap, r << shift | h)
    return [t for t in ids if t is not None]


class WordCache(dict):
    """pre-token str -> its packed ids (``array(typecode).tobytes()``); a missing key runs the merge
    loop and is stored.

    Subclassing dict with ``__missing__`` keeps every hit a C-level lookup, so a warm cache costs
    no Python code per word (docs/tokenizer.md, "Encoding fast"). Packed bytes, not a tuple of
    ints, so that the ids of many words are joined with one ``b"".join``.
    """

    def __init__(self, ranks: dict[tuple[int, int], int], merged: Sequence[int], byte_ids: Sequence[int],
                 typecode: str) -> None:
        super().__init__()
        self.ranks, self.merged, self.byte_ids, self.typecode = ranks, merged, byte_ids, typecode
        # When the byte tokens have ids below 256 (GPT-2's do, in a shuffled order; trained ones
        # are the byte values), bytes.translate maps a whole word's bytes to ids in C.
        self.table = bytes(byte_ids) if max(byte_ids) < 256 else None

    def __missing__(self, word: str) -> bytes:
        try:
            raw = word.encode("utf-8")
        except UnicodeEncodeError as e:
            bad = word[e.start]
            raise ValueError(f"text contains a lone surrogate {bad!r} (U+{ord(bad):04X}) in {word!r}; "
                             f"it has no UTF-8 encoding") from None
        ids = list(raw.translate(self.table)) if self.table else [self.byte_ids[b] for b in raw]
        packed = array.array(self.typecode, bpe(ids, self.ranks, self.merged)).tobytes()
        if len(word) <= _CACHE_KEY_LIMIT:
            if len(self) >= _CACHE_LIMIT:      # bound the memory on endless novel text
                self.clear()
            self[word] = packed
        return packed


class ChunkCache(dict):
    """chunk str -> the packed ids (as ``WordCache`` packs them) of ``lead + chunk``.

    A chunk is what ``str.split(" ")`` leaves between two spaces; ``lead`` is ``" "`` for every
    chunk but a text's first, whose space the split removed. A miss pre-tokenizes the chunk and
    looks its pre-tokens up in the word cache, so a new chunk made of known words runs no merge
    loop. Values are bytes so that a whole text's ids are one ``b"".join`` (a memcpy per chunk),
    not a Python int per token.
    """

    def __init__(self, words: WordCache, lead: str) -> None:
        super().__init__()
        self.words, self.lead = words, lead

    def __missing__(self, chunk: str) -> bytes:
        text = self.lead + chunk
        words = _ASCII_PRETOKENIZE.findall(text) if text.isascii() else pretokenize(text)
        ids = b"".join(map(self.words.__getitem__, words))
        if len(chunk) <= _CACHE_KEY_LIMIT:
            if len(self) >= _CACHE_LIMIT:
                self.clear()
            self[chunk] = ids
        return ids


class EncodeCaches:
    """A tokenizer's three caches: pre-token -> ids (``words``), and chunk -> ids for a text's first
    chunk (``first``) and for the chunks after a space (``spaced``); all hold packed ids.

    ``mark``, ``entries_since`` and ``add`` let processes that encode with the same vocabulary
    share what each has learned (``npgpt.training.data.prepare`` does, so that of two workers only one pays
    for a new word): an entry depends on its key only, so adding another process's entries never
    changes an id.
    """

    def __init__(self, ranks: dict[tuple[int, int], int], merged: Sequence[int], byte_ids: Sequence[int],
                 typecode: str) -> None:
        self.words = WordCache(ranks, merged, byte_ids, typecode)
        self.first = ChunkCache(self.words, "")
        self.spaced = ChunkCache(self.words, " ")

    def encode(self, text: str) -> bytes:
        """The packed ids of ``text`` (``encode_chunks``)."""
        return encode_chunks(text, self.first, self.spaced)

    def mark(self) -> tuple[int, int, int]:
        """Where the caches stand now, for ``entries_since``."""
        return len(self.words), len(self.first), len(self.spaced)

    def entries_since(self, mark: tuple[int, int, int]) -> tuple[list[tuple[str, bytes]], ...]:
        """The entries added since ``mark`` (the newest ones of each dict, which keeps insertion order)."""
        return tuple(list(itertools.islice(reversed(cache.items()), len(cache) - n)) if len(cache) > n else []
                     for cache, n in zip((self.words, self.first, self.spaced), mark))

    def add(self, entries: tuple[list[tuple[str, bytes]], ...]) -> None:
        """Take entries that ``entries_since`` gave (here or in another process)."""
        for cache, items in zip((self.words, self.first, self.spaced), entries):
            if len(cache) + len(items) > _CACHE_LIMIT:
                cache.clear()
            cache.update(items)


def crowded_runs(text: str) -> list[tuple[int, int]]:
    """The ``[a, b)`` spans, in order, of every whitespace run of ``text`` (as long as it goes)
    with a space after its first character: ``"  "``, ``"\n    "`` before an indented line.

    Found with ``str.find`` of each pair "whitespace, space", which skips the ordinary spaces in
    C: a pattern would stop at every space of the text to reject it, and costs more than the
    rest of a warm encode. Each run is widened to its ends; scanning on from its end keeps the
    search linear however long the run ("\n" * 1_000_000 + " ").
    """
    pairs = ["  ", "\n "] + [c + " " for c in _RARE_WS if c in text]
    found = {pair: i for pair in pairs if (i := text.find(pair)) >= 0}
    runs = []
    while found:
        i = min(found.values())
        a = i
        while a and text[a - 1] in _WS_CHARS:
            a -= 1
        b = _WS_RUN.match(text, i).end()
        runs.append((a, b))
        for pair, j in list(found.items()):
            if j < b:
                j = text.find(pair, b)
                if j < 0:
                    del found[pair]
                else:
                    found[pair] = j
    return runs


def encode_chunks(text: str, first: ChunkCache, spaced: ChunkCache) -> bytes:
    """The packed ids of ``text`` (as ``ChunkCache`` packs them), cut at spaces instead of by the pattern.

    ``str.split(" ")`` runs ~4x faster than the pre-tokenizer's ``findall``, and a chunk between
    two spaces ("nation's", "war.\n\nThe") repeats nearly as often as a word, so its ids are
    cached whole. Cutting before a space is exact where the character before it is not
    whitespace: the pre-token before the cut cannot go on past it, and the pattern has no
    look-behind (``_safe_cut``). Inside a whitespace run with a space after its first character
    (``crowded_runs``) it is not: GPT-2 makes the run, less its last character, one pre-token
    (``\\s+(?!\\S)``); the last character starts the next piece. So those runs are cut out first
    and the text between them is split at its spaces.

    ``first`` caches chunks that start a piece of text, ``spaced`` those that followed a space.
    """
    parts: list[bytes] = []
    start, n = 0, len(text)
    for a, b in crowded_runs(text):
        _split_at_spaces(text[start:a], parts, first, spaced)
        if b == n:                             # the run ends the text: one pre-token
            parts.append(first[text[a:]])
            return b"".join(parts)
        parts.append(first[text[a:b - 1]])     # the run less its last character: one pre-token
        start = b - 1                          # that character starts the next piece
    _split_at_spaces(text[start:], parts, first, spaced)
    return b"".join(parts)


def _split_at_spaces(text: str, parts: list[bytes], first: ChunkCache, spaced: ChunkCache) -> None:
    """Append the packed ids of ``text`` (no crowded space in it) to ``parts``, a chunk at a time."""
    chunks = text.split(" ")
    parts.append(first[chunks[0]])
    parts += map(spaced.__getitem__, itertools.islice(chunks, 1, None))
