"""The textbook byte-level BPE encoder: GPT-2's pattern as published and a merge loop of twenty lines.

Companion of ``docs/tokenizer.md`` (section "The merge algorithm"). This is the encoder the chapter
describes, written for reading, with no cache and no cleverness; ``Tokenizer.encode_ordinary``
(``npgpt.tokenizer.bpe``: a factored pattern, an ASCII fast path, word and chunk caches, a heap
for long words) must return exactly what :func:`encode` returns, and the tests check it on
random text for a trained vocabulary and for GPT-2's. So the fast path can be read against this
one, as tiktoken's ``_educational.py`` sits beside its Rust core.

    table = MergeTable.of(Tokenizer.from_pretrained("gpt2"))
    encode("The cat sat.", table)          # [464, 3797, 3332, 13]
"""

from __future__ import annotations

from typing import Any, NamedTuple

import regex

# GPT-2's pre-tokenizer as OpenAI published it (encoder.py). Merges never cross the pieces it
# cuts. Alternatives are tried left to right at each position:
#   's 't 're 've 'm 'll 'd     English contractions, split off the word before them
#   ' ?\p{L}+'                  a run of letters, with the single space before it if any
#   ' ?\p{N}+'                  a run of digits (any script), with its space
#   ' ?[^\s\p{L}\p{N}]+'        a run of punctuation/symbols, with its space
#   '\s+(?!\S)'                 whitespace, but leave the last space to the next word
#   '\s+'                       the one whitespace character left before a non-space that the
#                               previous rule gave up (e.g. a newline before a word)
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
_PIECES = regex.compile(GPT2_PATTERN)


def pretokenize(text: str) -> list[str]:
    """The pieces GPT-2's pattern cuts ``text`` into, in order (they join back to ``text``)."""
    return _PIECES.findall(text)


class MergeTable(NamedTuple):
    """What encoding needs from a vocabulary, built from the tokenizer's public facts.

    ``byte_ids[b]``: the id of the one-byte token ``b``; ``ranks[(a, b)]``: the rank of the merge
    of ids ``a`` and ``b`` (the first, if a pair is listed twice); ``made[r]``: the id merge ``r``
    makes (the token whose bytes are those of ``a`` then ``b``).
    """

    byte_ids: list[int]
    ranks: dict[tuple[int, int], int]
    made: list[int]

    @classmethod
    def of(cls, tokenizer: Any) -> MergeTable:
        """The table of a ``Tokenizer`` (anything with ``merges``, ``special_tokens``, ``vocab_size``
        and ``token_bytes``)."""
        specials = set(tokenizer.special_tokens.values())
        id_of = {tokenizer.token_bytes(i): i for i in range(tokenizer.vocab_size) if i not in specials}
        ranks: dict[tuple[int, int], int] = {}
        made = []
        for r, (a, b) in enumerate(tokenizer.merges):
            ranks.setdefault((a, b), r)
            made.append(id_of[tokenizer.token_bytes(a) + tokenizer.token_bytes(b)])
        return cls([id_of[bytes([b])] for b in range(256)], ranks, made)


def merge(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """``ids`` with every occurrence of ``pair``, left to right, replaced by ``new_id``."""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def encode(text: str, table: MergeTable) -> list[int]:
    """The ids of ``text`` (special tokens are ordinary text here, as in ``encode_ordinary``).

    For each piece: start from its bytes; while some adjacent pair has a merge, merge every
    occurrence of the pair with the lowest rank (docs/tokenizer.md, "The merge algorithm").
    """
    ids = []
    for piece in pretokenize(text):
        parts = [table.byte_ids[b] for b in piece.encode("utf-8")]
        while len(parts) >= 2:
            pairs = [p for p in zip(parts, parts[1:]) if p in table.ranks]
            if not pairs:
                break
            best = min(pairs, key=table.ranks.__getitem__)
            parts = merge(parts, best, table.made[table.ranks[best]])
        ids += parts
    return ids
