"""Loss-curve pictures of runs (npgpt.training.plot; `npgpt plot`), drawn from log.jsonl."""

import json

import pytest

from npgpt.training.plot import moving_average, plot_runs, read_log

pytest.importorskip("matplotlib")
PNG = b"\x89PNG\r\n\x1a\n"


def fake_run(path, steps=30, tokens_per_step=512, torn=False):
    path.mkdir(parents=True)
    rows = [{"step": 0, "val_loss": 5.0}]
    rows += [{"step": s, "train_loss": 5.0 - s / 20, "tokens": s * tokens_per_step} for s in range(1, steps + 1)]
    rows += [{"step": steps, "val_loss": 3.6}]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if torn:
        text += '{"step": 31, "train_lo'               # what a full disk leaves behind
    (path / "log.jsonl").write_text(text)
    return path


def test_moving_average_is_the_mean_of_the_window():
    assert moving_average([1.0, 2.0, 3.0, 4.0], 2) == [1.0, 1.5, 2.5, 3.5]


def test_read_log_skips_a_torn_last_line_but_not_a_torn_middle(tmp_path):
    run = fake_run(tmp_path / "run", torn=True)
    assert read_log(run)[-1] == {"step": 30, "val_loss": 3.6}
    (run / "log.jsonl").write_text('{"step": 1\n{"step": 2}\n')
    with pytest.raises(ValueError, match="line 1: not valid JSON"):
        read_log(run)


def test_several_runs_on_one_figure(tmp_path):
    a = fake_run(tmp_path / "a")
    b = fake_run(tmp_path / "b", tokens_per_step=1024)
    out = plot_runs([a, b], tmp_path / "figs" / "cmp.png", title="two runs")
    assert out.read_bytes().startswith(PNG)
    assert [p.name for p in (tmp_path / "figs").iterdir()] == ["cmp.png"]        # no temporary file left


def test_npgpt_plot_command(tmp_path, capsys):
    from npgpt.apps.cli import main

    a = fake_run(tmp_path / "a")
    assert main(["plot", str(a), "--out", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").read_bytes().startswith(PNG)
    assert main(["plot", str(tmp_path / "missing"), "--out", str(tmp_path / "d.png")]) == 1
    assert "log.jsonl does not exist" in capsys.readouterr().err


def test_training_draws_its_loss_curve_into_the_run_directory(tmp_path):
    from char_tokenizer import CharTokenizer

    from npgpt.training import data
    from npgpt.training.train import TrainConfig, train

    text = "to be or not to be, that is the question. " * 40
    data.prepare_documents([text], CharTokenizer(text), tmp_path / "data", val_fraction=0.2, progress=False)
    train(TrainConfig(data_dir=str(tmp_path / "data"), out_dir=str(tmp_path / "run"), n_layer=1, n_head=1,
                      n_embd=8, block_size=8, batch_size=2, max_steps=4, log_interval=2, eval_interval=4,
                      eval_iters=1), log=lambda line: None)
    assert (tmp_path / "run" / "loss_curve.png").read_bytes().startswith(PNG)
    assert read_log(tmp_path / "run")[1]["tokens"] == 2 * 8           # step 1: batch 2 x 8 tokens
