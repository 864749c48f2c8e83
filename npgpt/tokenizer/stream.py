"""Decoding token ids one at a time, as a model produces them (docs/tokenizer.md, "Streaming text").

A byte-level BPE token is a byte string, and nothing makes its boundaries fall between
characters: GPT-2 spells "日" (UTF-8 ``e6 97 a5``) as the tokens ``b" \\xe6"`` and ``b"\\x97\\xa5"``.
Decoding each token on its own therefore prints U+FFFD for the halves of such a character.
``StreamDecoder`` keeps the bytes of an unfinished character until the token that completes it
arrives, so every piece it returns is whole text.
"""

from __future__ import annotations

import codecs
import operator
from typing import Any, SupportsIndex


class StreamDecoder:
    """Turns token ids, pushed one at a time, into text that can be printed at once.

    ``push(i)`` returns the text that the bytes seen so far complete, and holds back the bytes of
    a character that is not finished yet (at most three: a UTF-8 character is at most four bytes).
    ``flush()`` ends the stream: it returns what was held back, as U+FFFD if those bytes never
    became a character, and makes the decoder ready for a new stream. For any ids,

        "".join(d.push(i) for i in ids) + d.flush() == tokenizer.decode(ids)

    Typical use with ``npgpt.generation.stream``, which yields a (B,) array of ids per step:

        decoder = StreamDecoder(tokenizer)
        for step in generation.stream(model, prompt, 100):
            print(decoder.push(int(step[0])), end="", flush=True)
        print(decoder.flush())

    Args:
        tokenizer (npgpt.Tokenizer): or anything with ``token_bytes(i: int) -> bytes`` that
            raises ValueError for an id it does not have.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    @property
    def pending(self) -> bytes:
        """The bytes held back (``bytes``): the start of a character whose remaining bytes have
        not been pushed yet; ``b""`` when everything pushed has been returned as text."""
        return self._utf8.getstate()[0]

    def push(self, token_id: SupportsIndex) -> str:
        """Add one token; return the text (``str``, possibly ``""``) that it completes.

        Args:
            token_id (int): an id of the tokenizer (a NumPy integer is fine).

        Raises:
            TypeError: ``token_id`` is not an integer (e.g. a whole array of ids).
            ValueError: the tokenizer has no id ``token_id``; the decoder's state is unchanged.
        """
        try:
            i = operator.index(token_id)
        except TypeError:
            raise TypeError(f"push takes one integer token id, got {type(token_id).__name__}"
                            f" (for a step of generation.stream, pass int(step[row]))") from None
        try:
            data = self.tokenizer.token_bytes(i)    # npgpt.Tokenizer: ValueError naming the id
        except (IndexError, KeyError):
            raise ValueError(f"token id {i} is not an id of this tokenizer") from None
        return self._utf8.decode(data)

    def flush(self) -> str:
        """End the stream: return the held-back bytes as text (``str``; U+FFFD for each
        incomplete character, ``""`` when nothing is held back) and reset the decoder."""
        text = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        return text

    def __repr__(self) -> str:
        return f"StreamDecoder(pending={self.pending!r})"
