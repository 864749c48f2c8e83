"""The progress bar: drawn in place on a terminal, sparse in logs, silent when disabled."""

import io

from npgpt.progress import Progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_bar_draws_in_place_on_a_terminal():
    stream = Terminal()
    bar = Progress(1000, "tokenizing", unit="B", stream=stream)
    bar.update(500)
    bar.update(1000)                       # within 0.1 s of the last draw: skipped
    bar.close()                            # ...but the final state is always drawn
    text = stream.getvalue()
    assert text.startswith("\rtokenizing [###############...............]  50.0%")
    assert "100.0%" in text and "MB/s" in text and text.endswith("\n")


def test_short_work_is_silent_in_a_log():
    stream = io.StringIO()
    bar = Progress(10, "training BPE", stream=stream)
    bar.update(10)
    bar.close()
    assert stream.getvalue() == ""


def test_long_work_writes_whole_lines_in_a_log(monkeypatch):
    clock = iter([0.0, 3.0, 4.0, 9.0, 9.5])
    monkeypatch.setattr("npgpt.progress.time.perf_counter", lambda: next(clock))
    stream = io.StringIO()
    bar = Progress(100, "training BPE", stream=stream)
    bar.update(10)                         # t=3: past 2 s, first line
    bar.update(20)                         # t=4: within 5 s of the last line, skipped
    bar.update(90)                         # t=9: a new line
    bar.close()                            # t=9.5: the final state
    lines = stream.getvalue().splitlines()
    assert [line.split("] ")[1].split()[1] for line in lines] == ["10/100", "90/100", "90/100"]


def test_disabled_bar_writes_nothing():
    stream = Terminal()
    bar = Progress(5, "x", enabled=False, stream=stream)
    bar.update(5)
    bar.close()
    assert stream.getvalue() == ""
