"""The progress bar: drawn in place on a terminal, sparse in logs, silent when disabled."""

import io

from npgpt.training.progress import Progress


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
    # "\r" returns to the line's start and ESC[K clears it (a shorter line leaves no tail behind).
    assert text.startswith("\r\033[Ktokenizing [###############...............]  50.0%")
    assert "100.0%" in text and "MB/s" in text and text.endswith("\n")


def test_short_work_is_silent_in_a_log():
    stream = io.StringIO()
    bar = Progress(10, "training BPE", stream=stream)
    bar.update(10)
    bar.close()
    assert stream.getvalue() == ""


def test_long_work_writes_whole_lines_in_a_log(monkeypatch):
    clock = iter([0.0, 3.0, 4.0, 9.0, 9.5])
    monkeypatch.setattr("npgpt.training.progress.time.perf_counter", lambda: next(clock))
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


def test_a_message_goes_above_the_bar_which_is_drawn_again():
    stream = Terminal()
    bar = Progress(10, "train", stream=stream)
    bar.update(3, final=True, note="loss 2.5")
    bar.message("step 3 | val loss 2.4")
    out = stream.getvalue()
    assert out.count("train [") == 2 and "| loss 2.5" in out
    assert out.index("step 3 | val loss 2.4\n") < out.rindex("train [")      # the log line, then the bar


def test_training_on_a_terminal_shows_a_bar_with_loss_rate_and_eta(tmp_path, monkeypatch):
    from char_tokenizer import CharTokenizer

    from npgpt.training import data
    from npgpt.training.train import TrainConfig, train

    text = "to be or not to be, that is the question. " * 40
    data.prepare_documents([text], CharTokenizer(text), tmp_path / "data", val_fraction=0.2, progress=False)
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    train(TrainConfig(data_dir=str(tmp_path / "data"), out_dir=str(tmp_path / "run"), n_layer=1, n_head=1, n_embd=8,
                      block_size=8, batch_size=2, max_steps=6, log_interval=3, eval_interval=6, eval_iters=1))
    out = terminal.getvalue()
    assert "\r" in out and "train [" in out
    assert "| step 6 | loss " in out and " tok/s | ETA " in out
    assert "step      3/6 | loss" in out                  # the log line of the interval, above the bar
