"""A dependency-free progress bar: ``label [#########.....] 61.0% 4.21 MB/s 3.2s``.

Used by the tokenizer trainer, ``npgpt prepare`` and, on a terminal, by
``npgpt train`` (step, loss, tokens/s and ETA after the bar; the log lines are
printed above it with :meth:`Progress.message`). On a terminal it is
redrawn in place, at most ten times a second. Elsewhere (a log file, CI) it
stays silent for short work and, once the work has taken 2 s, writes one line
every 5 s: long jobs show signs of life without flooding a log.

Companion of ``docs/training.md`` (section "The log line and MFU").
"""

from __future__ import annotations

import sys
import time
from typing import Optional, TextIO


def format_seconds(seconds: float) -> str:
    """``75`` -> ``'1m15s'``, ``3725`` -> ``'1h02m05s'``: the ETA of a progress line."""
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class Progress:
    """``Progress(total, label)``; call ``update(done)`` as work completes, then ``close()``.

    ``unit="B"`` shows a rate in MB/s (``done`` counts bytes); otherwise the
    bar shows ``done/total``. ``enabled=False`` makes every call a no-op.
    """

    WIDTH = 30

    def __init__(self, total: int, label: str, enabled: bool = True, unit: Optional[str] = None,
                 stream: Optional[TextIO] = None) -> None:
        self.total, self.label, self.enabled, self.unit = max(int(total), 1), label, enabled, unit
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.done = 0
        self.start = time.perf_counter()
        self.last = float("-inf")               # when the bar was last drawn
        self.drawn = False
        self.note = ""

    def update(self, done: int, final: bool = False, note: Optional[str] = None) -> None:
        """Record progress ``done`` (of ``total``); ``note`` is shown after the bar (e.g. a loss)."""
        self.done = done
        if note is not None:
            self.note = note
        if not self.enabled:
            return
        now = time.perf_counter()
        if not final:
            if self.tty and now - self.last < 0.1:
                return
            if not self.tty and (now - self.start < 2 or now - self.last < 5):
                return
        self.last, self.drawn = now, True
        elapsed = now - self.start
        frac = min(done / self.total, 1.0)
        filled = int(round(self.WIDTH * frac))
        amount = f"{done / max(elapsed, 1e-9) / 1e6:.2f} M{self.unit}/s" if self.unit else f"{done}/{self.total}"
        line = f"{self.label} [{'#' * filled}{'.' * (self.WIDTH - filled)}] {100 * frac:5.1f}% {amount} {elapsed:.1f}s"
        if self.note:
            line += f" | {self.note}"
        self.stream.write(("\r\033[K" + line) if self.tty else (line + "\n"))
        self.stream.flush()

    def message(self, text: str) -> None:
        """Print a line of text; on a terminal above the bar, which is then drawn again under it."""
        if self.tty and self.drawn:
            self.stream.write("\r\033[K" + text + "\n")
            self.last = float("-inf")
            self.update(self.done, final=True)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Draw the final state (only if the bar was shown at all) and end the line."""
        if self.enabled and self.drawn:
            self.update(self.done, final=True)
            if self.tty:
                self.stream.write("\n")
                self.stream.flush()
