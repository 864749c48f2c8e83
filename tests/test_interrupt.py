"""Ctrl-C and SIGTERM (npgpt.training.interrupt; docs/training.md, "Stopping a run: Ctrl-C"): the first
signal is a request the loop polls between steps, the second stops at once. The commands' own
stops, with a checkpoint and one line, are tested through the CLI in tests/suites/test_cli_manners.py."""

import os
import signal
import time

import pytest


def test_stop_request_is_polled_between_steps():
    """GracefulStop turns the first signal into a request and the second into KeyboardInterrupt."""
    from npgpt.training.interrupt import GracefulStop, exit_status

    with GracefulStop() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        assert stop.requested and stop.name == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler        # restored
    assert exit_status(signal.SIGINT) == 130 and exit_status(signal.SIGTERM) == 143
