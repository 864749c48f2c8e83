"""Helpers of the tests of run and output directories (a test helper): the text and the flags of a
one-second run, the environment of a subprocess, and processes that hold a run's lock.

Used by tests/test_rundir.py, tests/test_fileio.py, tests/suites/test_hardening.py and
tests/suites/test_writers.py, with the ``data_dir`` fixture of tests/conftest.py (TEXT, prepared)."""

import os
import pathlib
import subprocess
import sys
import textwrap

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}      # a subprocess imports this tree's npgpt
TEXT = ("To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
        "The slings and arrows of outrageous fortune,\nOr to take arms against a sea of troubles\n"
        "And by opposing end them. To die, to sleep;\nNo more; and by a sleep to say we end\n"
        "The heart-ache and the thousand natural shocks\nThat flesh is heir to: 'tis a consummation\n") * 8
TRAIN_FLAGS = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "4",
               "--warmup-steps", "2", "--eval-interval", "2", "--eval-iters", "1", "--log-interval", "1", "--quiet"]


def holder_process(run, hold_seconds=120):
    """A separate process that holds RUN's lock as a trainer does, until killed; returns it once it holds the lock."""
    script = textwrap.dedent(f"""
        import time
        from npgpt.training import rundir
        with rundir.lock({str(run)!r}):
            print("holding", flush=True)
            time.sleep({hold_seconds})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=ROOT, env=ENV)
    assert proc.stdout.readline().strip() == "holding"
    return proc


def stop_process(proc):
    """Kill ``proc`` (SIGKILL: the kernel releases its locks) and reap it."""
    proc.kill()
    proc.wait(timeout=30)
