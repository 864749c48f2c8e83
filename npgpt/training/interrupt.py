"""Stopping a long run cleanly on Ctrl-C (SIGINT) or SIGTERM.

Companion of ``docs/training.md`` (section "Stopping and resuming").

A training loop that is killed in the middle of a step loses the work since
its last checkpoint, and Python's default answer to Ctrl-C, a
``KeyboardInterrupt`` raised wherever the interpreter happens to be, prints a
long traceback through NumPy. :class:`GracefulStop` turns the first signal
into a request the loop polls between steps: the loop finishes the step it is
in, writes a checkpoint and returns; the command line then prints one line
and exits with the conventional status ``128 + signal number`` (130 for
Ctrl-C, 143 for SIGTERM). A second signal means "now": it raises
``KeyboardInterrupt`` at once, and the last complete checkpoint stays intact
because checkpoints are written atomically.

Signal handlers can only be installed from the main thread; elsewhere (a
loop run from a worker thread) the context manager installs nothing and the
default behaviour stays.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Optional

__all__ = ["GracefulStop", "exit_status"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def exit_status(signum: int) -> int:
    """The shell's convention for a process ended by signal ``signum``: ``128 + signum``."""
    return 128 + int(signum)


class GracefulStop:
    """``with GracefulStop() as stop: ... if stop.requested: save and leave``.

    ``stop.signum`` is the first signal received (``None`` until then) and
    ``stop.name`` its name (``"SIGINT"``). The previous handlers are restored
    on exit.
    """

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> Optional[str]:
        return None if self.signum is None else signal.Signals(self.signum).name

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.signum is not None:          # the second signal: stop now
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for signum in _SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, kind: Optional[type], value: Optional[BaseException],
                 traceback: Optional[TracebackType]) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
