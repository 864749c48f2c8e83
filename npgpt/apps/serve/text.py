"""From a choice's tokens to the text a client receives: whole characters, cut exactly at a stop string.

Two things keep text back while a sequence is generated:

* a character whose UTF-8 bytes are split across tokens (``StreamDecoder``);
* an ending that could be the start of a stop string: with ``stop=["\\n\\n"]`` a
  text ending in one ``"\\n"`` is held until the next token shows whether the
  stop string follows. A client therefore never receives text that a stop
  string later cuts off, and the final text ends exactly before the stop string.

Each token is released with its log-probabilities once its text is released
(a token that straddles the cut is released with the text before the cut).
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from npgpt.tokenizer.stream import StreamDecoder


@dataclass
class Piece:
    """Text released by one step of one choice, and the tokens it came from.

    ``tokens``: for each released token, ``(text, logprob, top)`` where ``top`` is a
    list of ``(text, logprob)`` alternatives, most likely first (``logprob`` None
    when the request asked for no log-probabilities).
    """

    text: str
    tokens: list[tuple[str, float | None, list[tuple[str, float]]]] = field(default_factory=list)


class TextStream:
    """Turns the tokens of one choice into released text (see the module's docstring)."""

    def __init__(self, tokenizer: Any, stops: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.stops = tuple(stops)
        self.decoder = StreamDecoder(tokenizer)
        self.text = ""            # everything decoded so far (whole characters)
        self.released = 0         # characters of self.text handed to the client
        self.pending: list[tuple[int, int, Any]] = []    # (start, end, token entry) not yet released
        self.stopped = False

    def push(self, token_id: int, logprob: float | None = None, top: Sequence[tuple[int, float]] = ()) -> Piece:
        """Add one generated token; return what can be released now. After a stop string
        matched, ``stopped`` is True and the text ends right before the stop string."""
        start = len(self.text)
        self.text += self.decoder.push(token_id)
        entry = (self.tokenizer.decode([token_id]), logprob, [(self.tokenizer.decode([i]), lp) for i, lp in top])
        self.pending.append((start, len(self.text), entry))
        cut = self._first_stop(start)
        if cut is not None:
            self.stopped = True
            self.text = self.text[:cut]
            return self._release(cut, everything_before=cut)
        return self._release(len(self.text) - self._held())

    def finish(self) -> Piece:
        """The sequence ended (length, an end token, or a stop string): release what is left."""
        if not self.stopped:
            self.text += self.decoder.flush()
        return self._release(len(self.text), everything_before=len(self.text) + 1)

    # ------------------------------------------------------------------
    def _first_stop(self, start: int) -> int | None:
        """Where the earliest stop string begins, looking only where the new token can complete one."""
        best = None
        for s in self.stops:
            at = self.text.find(s, max(0, start - len(s) + 1))
            if at != -1 and (best is None or at < best):
                best = at
        return best

    def _held(self) -> int:
        """How many final characters might begin a stop string (the longest such suffix)."""
        held = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.text)), held, -1):
                if self.text.endswith(s[:k]):
                    held = k
                    break
        return held

    def _release(self, end: int, everything_before: int | None = None) -> Piece:
        """Release ``text[released:end]`` and the tokens whose text is released: those that end by
        ``end`` or, at the end of a sequence, those that start before ``everything_before``."""
        end = max(end, self.released)
        piece = Piece(self.text[self.released:end])
        self.released = end
        keep = []
        for start, stop, entry in self.pending:
            if stop <= end or (everything_before is not None and start < everything_before):
                piece.tokens.append(entry)
            else:
                keep.append((start, stop, entry))
        self.pending = keep if everything_before is None else []
        return piece
