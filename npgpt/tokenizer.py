"""Byte-level byte-pair encoding (BPE) in the GPT-2 style: training, encoding, GPT-2's own files.

The companion chapter is docs/tokenizer.md. In one paragraph: text is UTF-8 encoded, so every
string is a sequence of bytes and the 256 byte values are the first tokens; nothing is ever
"unknown". A regular expression first cuts text into pre-tokens (words, numbers, punctuation runs,
whitespace), and merges never cross a pre-token. Training repeatedly finds the most frequent
adjacent pair of tokens and adds their concatenation as a new token; the ordered list of merges
*is* the tokenizer. Encoding replays the merges on each pre-token, lowest rank first.

Pure Python plus ``regex`` (for ``\\p{L}`` and ``\\p{N}``): the tokenizer stands alone, imports
nothing else of npgpt except ``npgpt.datasets`` to fetch GPT-2's vocabulary for ``"gpt2"``.

    tok = Tokenizer.from_pretrained("gpt2")
    tok.encode("The cat sits on the mat.")        # [464, 3797, 10718, 319, 262, 2603, 13]
    tok = Tokenizer.train(texts, vocab_size=4096)
    tok.save("my-tokenizer")                      # Hugging Face's vocab.json + merges.txt layout
"""

import base64
import collections
import heapq
import itertools
import json
import os
import pathlib
import re
import sys
import tempfile
import time
import warnings

import regex

# GPT-2's pre-tokenizer. Alternatives are tried left to right at each position:
#   's 't 're 've 'm 'll 'd     English contractions, split off the word before them
#   ' ?\p{L}+'                  a run of letters, with the single space before it if any
#   ' ?\p{N}+'                  a run of digits (any script), with its space
#   ' ?[^\s\p{L}\p{N}]+'        a run of punctuation/symbols, with its space
#   '\s+(?!\S)'                 whitespace, but leave the last space to the next word
#   '\s+'                       whatever whitespace remains (at the end of the text)
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
ENDOFTEXT = "<|endoftext|>"
FORMAT_VERSION = 1          # written to tokenizer_config.json as "npgpt_tokenizer_format"
_REFERENCE_PRETOKENIZE = regex.compile(GPT2_PATTERN)
# The same pattern, factored so that `regex` runs it ~10% faster (tests check they agree):
# letters first (only the contractions could match where ' ?\p{L}' does not, and they start
# with an apostrophe, which no letter run does), contractions as one group.
_PRETOKENIZE = regex.compile(r""" ?\p{L}+|'(?:[sdmt]|ll|ve|re)| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
# On ASCII text \p{L} is [A-Za-z], \p{N} is [0-9] and \s is [\t\n\v\f\r ], and Python's built-in
# `re` runs this spelled-out twin ~1.7x faster than `regex` runs the Unicode one.
_ASCII_PRETOKENIZE = re.compile(
    r""" ?[A-Za-z]+|'(?:[sdmt]|ll|ve|re)| ?[0-9]+| ?[^\t\n\x0b\x0c\r A-Za-z0-9]+"""
    r"""|[\t\n\x0b\x0c\r ]+(?![^\t\n\x0b\x0c\r ])|[\t\n\x0b\x0c\r ]+""")
_NON_ASCII = re.compile(r"[^\x00-\x7f]+")


def _safe_cut(text, start, step):
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


def pretokenize(text):
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
_CACHE_LIMIT = 1 << 20      # the per-pre-token cache is cleared when it holds more entries


def bytes_to_unicode():
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


def _token_text(token):
    """bytes -> its vocab.json spelling."""
    return "".join(_BYTE_TO_CHAR[b] for b in token)


def _token_bytes(text):
    """vocab.json spelling -> bytes; KeyError if ``text`` is not a byte-level spelling."""
    return bytes(_CHAR_TO_BYTE[c] for c in text)


def _bpe(ids, ranks, merged):
    """Apply the merges to one pre-token: ``ids`` (a list, modified) -> its token ids.

    ``ranks`` maps a pair of ids to its merge rank (its position in the merge list) and
    ``merged[rank]`` is the id the pair becomes. Repeatedly the adjacent pair of lowest rank is
    merged, leftmost first. Only the two pairs next to a merge change, so their ranks are updated
    in place instead of recomputing every pair: O(n) per merge, with small constants for the short
    words that make up almost all text. Long pre-tokens go to ``_bpe_long``.
    """
    if len(ids) < 2:
        return ids
    if len(ids) > _LONG_WORD:
        return _bpe_long(ids, ranks, merged)
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


def _bpe_long(ids, ranks, merged):
    """The same merges as ``_bpe``, in O(n log n) for long pre-tokens (100k repeated characters).

    Tokens form a linked list; a heap holds (rank, position) of candidate pairs. An entry is stale
    when its left token was merged away or the pair at that position changed; stale entries are
    skipped when popped. Ties in rank pop leftmost first, as in ``_bpe``.
    """
    n = len(ids)
    nxt = list(range(1, n + 1))
    prv = list(range(-1, n - 1))
    heap = [(ranks[p], i) for i, p in enumerate(zip(ids, ids[1:])) if p in ranks]
    heapq.heapify(heap)
    while heap:
        r, i = heapq.heappop(heap)
        j = nxt[i]
        if ids[i] is None or j >= n or ranks.get((ids[i], ids[j])) != r:
            continue
        x = ids[i] = merged[r]
        ids[j] = None
        k = nxt[i] = nxt[j]
        if k < n:
            prv[k] = i
            if (x, ids[k]) in ranks:
                heapq.heappush(heap, (ranks[x, ids[k]], i))
        if prv[i] >= 0 and (ids[prv[i]], x) in ranks:
            heapq.heappush(heap, (ranks[ids[prv[i]], x], prv[i]))
    return [t for t in ids if t is not None]


class _Progress:
    """A dependency-free progress bar on stderr, drawn on a terminal or once work is slow."""

    def __init__(self, total, label, enabled):
        self.total, self.label, self.enabled = max(total, 1), label, enabled
        self.start = self.last = time.perf_counter()
        self.tty = sys.stderr.isatty()
        self.drawn = False

    def update(self, done):
        if not self.enabled:
            return
        now = time.perf_counter()
        # On a terminal redraw 10 times a second; in a log, one line per 5 s once past 2 s.
        if (self.tty and now - self.last < 0.1) or (not self.tty and (now - self.start < 2 or now - self.last < 5)):
            return
        self.last, self.drawn = now, True
        filled = int(30 * done / self.total)
        line = f"{self.label} [{'#' * filled}{'.' * (30 - filled)}] {done}/{self.total} {now - self.start:.1f}s"
        sys.stderr.write(("\r" + line) if self.tty else (line + "\n"))
        sys.stderr.flush()

    def close(self, done):
        if self.drawn:
            self.last = 0.0
            self.start -= 2
            self.update(done)
            if self.tty:
                sys.stderr.write("\n")


class _WordCache(dict):
    """pre-token str -> tuple of its ids; a missing key runs the merge loop and is stored.

    Subclassing dict with ``__missing__`` keeps every hit a C-level lookup, so a warm cache costs
    no Python code per word (docs/tokenizer.md, "Encoding fast").
    """

    def __init__(self, ranks, merged, byte_ids):
        super().__init__()
        self.ranks, self.merged, self.byte_ids = ranks, merged, byte_ids
        # When the byte tokens have ids below 256 (GPT-2's do, in a shuffled order; trained ones
        # are the byte values), bytes.translate maps a whole word's bytes to ids in C.
        self.table = bytes(byte_ids) if max(byte_ids) < 256 else None

    def __missing__(self, word):
        try:
            raw = word.encode("utf-8")
        except UnicodeEncodeError as e:
            bad = word[e.start]
            raise ValueError(f"text contains a lone surrogate {bad!r} (U+{ord(bad):04X}) in {word!r}; "
                             f"it has no UTF-8 encoding") from None
        ids = list(raw.translate(self.table)) if self.table else [self.byte_ids[b] for b in raw]
        ids = tuple(_bpe(ids, self.ranks, self.merged))
        if len(self) >= _CACHE_LIMIT:          # bound the memory on endless novel text
            self.clear()
        self[word] = ids
        return ids


class Tokenizer:
    """A byte-level BPE tokenizer: ids of byte strings, an ordered merge list, special tokens.

    ``tokens[i]`` is the byte string of id ``i`` (a special token's is its UTF-8 text);
    ``merges[r] = (a, b)`` says that at rank ``r`` the adjacent ids ``a, b`` become the id whose
    bytes are ``tokens[a] + tokens[b]``. Build one with ``train``, ``from_pretrained`` or
    ``from_tiktoken`` rather than by hand.
    """

    def __init__(self, tokens, merges, special_tokens=None):
        special_tokens = dict(special_tokens or {})
        self._tokens = [bytes(t) for t in tokens]
        self.special_tokens = special_tokens
        self.merges = [tuple(m) for m in merges]
        n = len(self._tokens)
        for s, i in special_tokens.items():
            if not 0 <= i < n or self._tokens[i] != s.encode("utf-8"):
                raise ValueError(f"special token {s!r} has id {i}, which does not hold its text")
        specials = set(special_tokens.values())
        self._id_of = {}                       # bytes -> id, ordinary (non-special) tokens
        for i, t in enumerate(self._tokens):
            if i not in specials:
                if t in self._id_of:
                    raise ValueError(f"ids {self._id_of[t]} and {i} are both the byte string {t!r}")
                self._id_of[t] = i
        missing = [b for b in range(256) if bytes([b]) not in self._id_of]
        if missing:
            raise ValueError(f"a byte-level vocabulary needs all 256 bytes; missing {missing[:8]}")
        self._byte_ids = [self._id_of[bytes([b])] for b in range(256)]
        self._ranks, self._merged = {}, []
        for r, (a, b) in enumerate(self.merges):
            if not (0 <= a < n and 0 <= b < n) or a in specials or b in specials:
                raise ValueError(f"merge {r} ({a}, {b}) uses an id that is not an ordinary token")
            joined = self._tokens[a] + self._tokens[b]
            if joined not in self._id_of:
                raise ValueError(f"merge {r} ({a}, {b}) makes {joined!r}, which is not in the vocabulary")
            self._ranks.setdefault((a, b), r)  # a repeated pair keeps its first (lowest) rank
            self._merged.append(self._id_of[joined])
        self._cache = _WordCache(self._ranks, self._merged, self._byte_ids)

    # ------------------------------------------------------------------ basic facts
    @property
    def vocab_size(self):
        """Number of ids, special tokens included."""
        return len(self._tokens)

    def __repr__(self):
        return (f"Tokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, "
                f"special_tokens={sorted(self.special_tokens)})")

    def token_bytes(self, i):
        """The bytes of id ``i``."""
        self._check_ids([i])
        return self._tokens[i]

    def id_to_token(self, i):
        """The vocab.json spelling of id ``i`` (a special token's plain text)."""
        self._check_ids([i])
        if i in self.special_tokens.values():
            return self._tokens[i].decode("utf-8")
        return _token_text(self._tokens[i])

    def token_to_id(self, token):
        """The id of a vocab.json spelling (``'Ġthe'``) or special token; KeyError if absent."""
        if token in self.special_tokens:
            return self.special_tokens[token]
        try:
            return self._id_of[_token_bytes(token)]
        except KeyError:
            raise KeyError(f"{token!r} is not a token of this vocabulary") from None

    def __eq__(self, other):
        return (isinstance(other, Tokenizer) and self._tokens == other._tokens
                and self.merges == other.merges and self.special_tokens == other.special_tokens)

    # ------------------------------------------------------------------ encoding
    def _encode_words(self, text):
        """Ids of text without special tokens: pre-tokenize, then look each pre-token up.

        Natural text repeats its words (SOTU: 2.0 M pre-tokens, 32 k distinct), so the ids of
        each pre-token are cached; the lookups and the joining of their ids run in C
        (``map``/``chain``), and only a cache miss runs Python code: the merge loop.
        """
        words = pretokenize(text)
        return list(itertools.chain.from_iterable(map(self._cache.__getitem__, words)))

    def encode_ordinary(self, text):
        """Ids of ``text``, every special token's text treated as ordinary text."""
        return self._encode_words(text)

    def encode(self, text, *, allowed_special=frozenset(), disallowed_special="all"):
        """Ids of ``text`` (tiktoken's conventions for special tokens).

        ``allowed_special`` (a set, or ``"all"``): special tokens that become their own id.
        ``disallowed_special`` (``"all"`` or a set): special tokens whose text is an error;
        ``"all"`` means every special token not allowed. Pass ``disallowed_special=()`` to encode
        such text as ordinary characters.
        """
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        specials = self.special_tokens
        allowed = set(specials) if allowed_special == "all" else set(allowed_special)
        disallowed = set(specials) - allowed if disallowed_special == "all" else set(disallowed_special)
        for s in sorted((allowed | disallowed) - set(specials)):
            raise ValueError(f"{s!r} is not a special token of this tokenizer (it has {sorted(specials)})")
        for s in sorted(disallowed):
            if s in text:
                raise ValueError(f"text contains the special token {s!r}, which is not allowed; pass "
                                 f"allowed_special={{{s!r}}} to encode it as id {specials[s]}, or "
                                 f"disallowed_special=() to encode it as ordinary text")
        present = [s for s in allowed if s in text]
        if not present:
            return self._encode_words(text)
        # Longest first, so a special token that contains another one wins.
        pattern = regex.compile("|".join(regex.escape(s) for s in sorted(present, key=len, reverse=True)))
        ids, start = [], 0
        for m in pattern.finditer(text):
            ids += self._encode_words(text[start:m.start()])
            ids.append(specials[m.group()])
            start = m.end()
        return ids + self._encode_words(text[start:])

    def encode_batch(self, texts, **kwargs):
        """``[encode(t, **kwargs) for t in texts]``; the word cache is shared across texts."""
        return [self.encode(t, **kwargs) for t in texts]

    def _encode_reference(self, text):
        """The textbook encoder, kept to test the fast one against: no cache, no cleverness.

        For each pre-token: start from its bytes; while some adjacent pair is in the merge list,
        merge every occurrence (left to right) of the pair with the lowest rank.
        """
        ids = []
        for word in _REFERENCE_PRETOKENIZE.findall(text):
            parts = [self._byte_ids[b] for b in word.encode("utf-8")]
            while len(parts) >= 2:
                pairs = [p for p in zip(parts, parts[1:]) if p in self._ranks]
                if not pairs:
                    break
                best = min(pairs, key=self._ranks.__getitem__)
                new_id, out, i = self._merged[self._ranks[best]], [], 0
                while i < len(parts):
                    if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                        out.append(new_id)
                        i += 2
                    else:
                        out.append(parts[i])
                        i += 1
                parts = out
            ids += parts
        return ids

    # ------------------------------------------------------------------ decoding
    def _check_ids(self, ids):
        n = len(self._tokens)
        if ids and (min(ids) < 0 or max(ids) >= n):
            bad = next(i for i in ids if not 0 <= i < n)
            raise ValueError(f"token id {bad} is out of range: this vocabulary has ids 0..{n - 1}")

    def decode_bytes(self, ids):
        """The bytes that ``ids`` stand for."""
        ids = list(ids)
        self._check_ids(ids)
        return b"".join(map(self._tokens.__getitem__, ids))

    def decode(self, ids, errors="replace"):
        """The text of ``ids``. Ids can cut a character's UTF-8 bytes apart; such bytes become
        U+FFFD by default, and ``errors="strict"`` raises UnicodeDecodeError (a ValueError)."""
        return self.decode_bytes(ids).decode("utf-8", errors=errors)

    # ------------------------------------------------------------------ training
    @classmethod
    def train(cls, texts, vocab_size, *, special_tokens=(ENDOFTEXT,), min_frequency=2, show_progress=True):
        """Learn a tokenizer of ``vocab_size`` ids from ``texts`` (a str or an iterable of str).

        Ids 0..255 are the bytes, then one id per learned merge, then the special tokens. Each
        document is pre-tokenized separately (special tokens inside it also cut it), so no merge
        spans two documents or two pre-tokens.

        The incremental algorithm (docs/tokenizer.md): count each distinct pre-token once; keep
        the count of every adjacent pair and, for each pair, the set of words that contain it; a
        max-heap with lazy deletion yields the most frequent pair; merging it rewrites only the
        words that contain it and adjusts the pair counts by the difference.

        Tie-break: among pairs of equal count, the pair whose byte strings (left, then right) are
        lexicographically smallest is merged first, so the result never depends on id numbering
        or on dictionary order. Training stops early, with a warning saying why, when no pair
        occurs ``min_frequency`` times.
        """
        special_tokens = list(dict.fromkeys(special_tokens))
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
        progress = _Progress(target - 256, "training BPE", show_progress)
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
        progress.close(len(tokens) - 256)
        if len(tokens) < target:
            warnings.warn(f"training stopped at {len(tokens) + len(special_tokens)} of vocab_size={vocab_size} "
                          f"tokens: no remaining pair occurs min_frequency={min_frequency} times "
                          f"(the text is too small or too repetitive for this vocabulary)", stacklevel=2)
        specials = {}
        for s in special_tokens:
            specials[s] = len(tokens)
            tokens.append(s.encode("utf-8"))
        return cls(tokens, merges, specials)

    # ------------------------------------------------------------------ files
    @classmethod
    def from_tiktoken(cls, path, special_tokens=None):
        """Read a ``.tiktoken`` ranks file (``<base64 bytes> <rank>`` per line).

        That format stores each token's rank but not which pair made it; the pair is recovered by
        running BPE on the token's bytes with the lower-ranked merges only, which leaves exactly
        the two parts that the token's own merge joins.
        """
        if special_tokens is None:
            special_tokens = {ENDOFTEXT: 50256}
        ranked = []
        for line_no, line in enumerate(pathlib.Path(path).read_bytes().splitlines(), 1):
            if line.strip():
                try:
                    token, rank = line.split()
                    ranked.append((int(rank), base64.b64decode(token, validate=True)))
                except ValueError as e:
                    raise ValueError(f"{path}:{line_no}: not a '<base64> <rank>' line ({e})") from None
        ranked.sort()
        n = len(ranked) + len(special_tokens)
        tokens = [b""] * n
        for rank, token in ranked:
            if rank >= n:
                raise ValueError(f"{path}: rank {rank} is beyond the {len(ranked)} tokens of the file")
            tokens[rank] = token
        for s, i in special_tokens.items():
            tokens[i] = s.encode("utf-8")
        byte_ids = {t[0]: r for r, t in ranked if len(t) == 1}
        if len(byte_ids) != 256:
            raise ValueError(f"{path}: a byte-level ranks file needs all 256 single bytes")
        merges, ranks, merged = [], {}, []
        for rank, token in ranked:
            if len(token) > 1:
                parts = _bpe([byte_ids[b] for b in token], ranks, merged)
                if len(parts) != 2:
                    raise ValueError(f"{path}: token {token!r} (rank {rank}) is not one merge of lower-ranked tokens")
                ranks[tuple(parts)] = len(merges)
                merges.append(tuple(parts))
                merged.append(rank)
        return cls(tokens, merges, special_tokens)

    @classmethod
    def _from_vocab_files(cls, vocab_path, merges_path, special_names=()):
        """Read vocab.json/encoder.json + merges.txt/vocab.bpe (the two layouts are one format)."""
        vocab = json.loads(pathlib.Path(vocab_path).read_text(encoding="utf-8"))
        n = len(vocab)
        if sorted(vocab.values()) != list(range(n)):
            raise ValueError(f"{vocab_path}: ids must be 0..{n - 1}, each used once")
        tokens, specials = [b""] * n, {}
        for text, i in vocab.items():
            try:
                tokens[i] = _token_bytes(text)
            except KeyError:                   # not a byte-level spelling: an added token
                special_names = (*special_names, text)
            if text in special_names:
                tokens[i], specials[text] = text.encode("utf-8"), i
        merges = []
        for line_no, line in enumerate(pathlib.Path(merges_path).read_text(encoding="utf-8").splitlines(), 1):
            if line.startswith("#version") or not line.strip():
                continue
            parts = line.split(" ")
            if len(parts) != 2 or parts[0] not in vocab or parts[1] not in vocab:
                raise ValueError(f"{merges_path}:{line_no}: {line!r} is not a merge of two tokens of {vocab_path}")
            merges.append((vocab[parts[0]], vocab[parts[1]]))
        # A token that is neither a byte nor made by a merge can only be a special token
        # (OpenAI's encoder.json lists <|endoftext|> without saying so).
        made = {tokens[a] + tokens[b] for a, b in merges}
        for text, i in vocab.items():
            if i not in specials.values() and len(tokens[i]) > 1 and tokens[i] not in made:
                tokens[i], specials[text] = text.encode("utf-8"), i
        return cls(tokens, merges, specials)

    @classmethod
    def from_pretrained(cls, name_or_dir):
        """Load a tokenizer from a directory, a model shipped with npgpt, or ``"gpt2"``.

        A directory may hold Hugging Face's layout (vocab.json + merges.txt, with special tokens
        named in special_tokens_map.json / tokenizer_config.json / added_tokens.json) or OpenAI's
        (encoder.json + vocab.bpe). ``"gpt2"`` fetches GPT-2's files into the npgpt cache
        (npgpt.datasets; raises DatasetUnavailable when that is impossible).
        """
        tried = []
        candidates = [pathlib.Path(name_or_dir)]
        if not os.sep in str(name_or_dir) and str(name_or_dir) not in (".", ".."):
            candidates.append(pathlib.Path(__file__).parent / "pretrained" / str(name_or_dir))
        for path in candidates:
            tried.append(str(path))
            if path.is_dir():
                return cls._from_dir(path)
        if str(name_or_dir) == "gpt2":
            from npgpt import datasets
            return cls._from_dir(datasets.fetch("gpt2-encoder"))
        raise FileNotFoundError(f"no tokenizer {name_or_dir!r}: tried the directories {tried} and the "
                                f"name 'gpt2' (GPT-2's vocabulary, fetched)")

    @classmethod
    def _from_dir(cls, path):
        for vocab, merges in (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe")):
            if (path / vocab).is_file() and (path / merges).is_file():
                return cls._from_vocab_files(path / vocab, path / merges, _special_names(path))
        raise FileNotFoundError(f"{path} holds neither vocab.json + merges.txt nor encoder.json + vocab.bpe")

    def save(self, directory):
        """Write Hugging Face's GPT-2 layout into ``directory`` (created if needed), each file
        atomically: vocab.json, merges.txt, special_tokens_map.json, tokenizer_config.json."""
        directory = pathlib.Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        vocab = {self.id_to_token(i): i for i in range(self.vocab_size)}
        merges = "#version: 0.2\n" + "".join(f"{_token_text(self._tokens[a])} {_token_text(self._tokens[b])}\n"
                                             for a, b in self.merges)
        specials = sorted(self.special_tokens, key=self.special_tokens.get)
        roles = {}
        if specials:                           # GPT-2 uses <|endoftext|> as bos, eos and unk
            main = ENDOFTEXT if ENDOFTEXT in specials else specials[0]
            roles = {"bos_token": main, "eos_token": main, "unk_token": main}
        others = [s for s in specials if s not in roles.values()]
        special_map = {**roles, **({"additional_special_tokens": others} if others else {})}
        config = {"tokenizer_class": "GPT2Tokenizer", "add_prefix_space": False, "errors": "replace",
                  "model_max_length": 1024, "npgpt_tokenizer_format": FORMAT_VERSION, **special_map,
                  "added_tokens_decoder": {str(self.special_tokens[s]): {
                      "content": s, "lstrip": False, "rstrip": False, "normalized": False,
                      "single_word": False, "special": True} for s in specials}}
        files = {"vocab.json": json.dumps(vocab, ensure_ascii=False), "merges.txt": merges,
                 "special_tokens_map.json": json.dumps(special_map, indent=2),
                 "tokenizer_config.json": json.dumps(config, indent=2)}
        for name, text in files.items():
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=directory)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(text)
                os.replace(tmp, directory / name)
            except BaseException:
                os.unlink(tmp)
                raise
        return directory


def _special_names(path):
    """Special-token texts named by a Hugging Face tokenizer directory's json files."""
    names = []

    def add(value):
        if isinstance(value, str):
            names.append(value)
        elif isinstance(value, dict) and "content" in value:
            names.append(value["content"])
        elif isinstance(value, list):
            for v in value:
                add(v)

    for file in ("special_tokens_map.json", "tokenizer_config.json", "added_tokens.json"):
        if (path / file).is_file():
            data = json.loads((path / file).read_text(encoding="utf-8"))
            if file == "added_tokens.json":
                add(list(data))
                continue
            for key, value in data.items():
                if key.endswith("_token") or key == "additional_special_tokens":
                    add(value)
            for value in data.get("added_tokens_decoder", {}).values():
                if value.get("special"):
                    add(value)
    return tuple(names)
