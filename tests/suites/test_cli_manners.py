"""What a new user meets first on the command line, through the real ``npgpt`` command in a subprocess.

Short runs work with the default settings; Ctrl-C and SIGTERM stop with a
checkpoint and one line; usage errors show the subcommand's usage and suggest
the flag that was meant; outputs are not overwritten by accident; bad input
names the file.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from npgpt.apps.cli import build_parser, main

TEXT = ("ROMEO:\nBut, soft! what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n"
        "Arise, fair sun, and kill the envious moon,\nWho is already sick and pale with grief.\n\n"
        "JULIET:\nO Romeo, Romeo! wherefore art thou Romeo?\nDeny thy father and refuse thy name.\n\n") * 10
SMALL = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "4",
         "--eval-iters", "1"]


def npgpt(*args, **kwargs):
    """Run the installed command line as a user would: ``python -m npgpt ARGS``."""
    return subprocess.run([sys.executable, "-m", "npgpt", *map(str, args)], capture_output=True, text=True,
                          timeout=300, **kwargs)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("manners")
    corpus = root / "corpus.txt"
    corpus.write_text(TEXT)
    assert main(["tokenizer", "train", "--input", str(corpus), "--vocab-size", "300", "--out", str(root / "tok")]) == 0
    assert main(["prepare", "--input", str(corpus), "--tokenizer", str(root / "tok"), "--out", str(root / "data"),
                 "--quiet"]) == 0
    return root


# ------------------------------------------------------------ short runs
def test_a_short_run_works_with_the_default_warmup_and_min_lr(prepared, tmp_path):
    proc = npgpt("train", "--data", prepared / "data", "--out", tmp_path / "run", "--max-steps", "3",
                 "--lr", "1e-5", "--quiet", *SMALL)
    assert proc.returncode == 0, proc.stderr
    config = json.loads((tmp_path / "run" / "checkpoint" / "trainer_state.json").read_text())["train_config"]
    assert config["warmup_steps"] == 0 and config["min_lr"] == pytest.approx(1e-6)   # min(100, 3 // 10), lr / 10


def test_setting_errors_name_the_flag(prepared, tmp_path):
    proc = npgpt("train", "--data", prepared / "data", "--out", tmp_path / "run", "--max-steps", "30",
                 "--warmup-steps", "100")
    assert proc.returncode == 1
    assert proc.stderr.strip() == "npgpt: error: --warmup-steps must lie in 0..max_steps (30), got 100"
    proc = npgpt("train", "--data", prepared / "data", "--out", tmp_path / "run2", "--lr", "1e-3", "--min-lr", "1")
    assert proc.returncode == 1 and "--min-lr must lie in 0..lr" in proc.stderr and "TrainConfig" not in proc.stderr


def _all_parsers(parser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from _all_parsers(child)


def test_every_flag_has_help_text_that_shows_its_default_once():
    for parser in _all_parsers(build_parser()):
        for action in parser._actions:
            if not action.option_strings or action.help == "==SUPPRESS==":
                continue
            assert action.help, f"{parser.prog} {action.option_strings[0]} has no help"
            assert action.help.count("default") <= 1, f"{parser.prog} {action.option_strings[0]}: {action.help}"
            if action.default not in (None, "", False, argparse.SUPPRESS):        # a real default is shown
                assert "default" in action.help, f"{parser.prog} {action.option_strings[0]}: {action.help}"


# --------------------------------------------------------------- Ctrl-C
def _start_and_signal(argv, signum, ready, stream="stderr"):
    """Start ``npgpt ARGV``, wait for a line of ``stream`` containing ``ready``, send ``signum``.

    Returns (exit status, stderr, stdout).
    """
    proc = subprocess.Popen([sys.executable, "-m", "npgpt", *map(str, argv)], stderr=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = []
    deadline = time.time() + 120
    for line in getattr(proc, stream):
        lines.append(line)
        if ready in line:
            break
        assert time.time() < deadline, "".join(lines)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    seen = "".join(lines)
    return proc.returncode, (seen + err if stream == "stderr" else err), (seen + out if stream == "stdout" else out)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_training_with_a_checkpoint_and_one_line(prepared, tmp_path, signum):
    run = tmp_path / "run"
    rc, err, _ = _start_and_signal(["train", "--data", prepared / "data", "--out", run, "--max-steps", "100000",
                                    "--log-interval", "1", "--eval-interval", "100000", *SMALL], signum,
                                   ready="step      2/")
    assert rc == 128 + signum, err
    assert "Traceback" not in err
    state = json.loads((run / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] >= 2
    assert f"stopped at step {state['step']}; continue with: npgpt train --out {run} --resume" in err
    proc = npgpt("train", "--out", run, "--resume", "--stop-at", state["step"] + 2, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((run / "checkpoint" / "trainer_state.json").read_text())["step"] == state["step"] + 2


@pytest.mark.slow
def test_a_signal_stops_finetuning_and_keeps_a_classifier(prepared, tmp_path):
    from npgpt.finetuning.classifier import GPTClassifier

    data = tmp_path / "reviews.csv"
    rows = ["text,label"] + [f"{'good' if i % 2 else 'bad'} film number {i},{i % 2}" for i in range(2000)]
    data.write_text("\n".join(rows) + "\n")
    assert main(["train", "--data", str(prepared / "data"), "--out", str(tmp_path / "pre"), "--max-steps", "2",
                 "--quiet", *SMALL]) == 0
    rc, err, out = _start_and_signal(["finetune", "--model", tmp_path / "pre" / "checkpoint", "--data", data,
                                      "--out", tmp_path / "clf", "--batch-size", "2", "--epochs", "50"],
                                     signal.SIGINT, ready="fine-tuning", stream="stdout")
    assert rc == 130, err
    assert "Traceback" not in err and "stopped at step" in err
    assert GPTClassifier.from_pretrained(tmp_path / "clf").labels == ["0", "1"]


# ---------------------------------------------------------- usage errors
def test_a_misspelled_flag_gets_the_subcommands_usage_and_a_suggestion(tmp_path):
    proc = npgpt("train", "--out", tmp_path / "run", "--max_steps", "30")
    assert proc.returncode == 2
    assert proc.stderr.startswith("usage: npgpt train")
    assert "did you mean --max-steps?" in proc.stderr.splitlines()[-1]
    proc = npgpt("tokenizer", "train", "--input", "a.txt", "--vocab-size", "300", "--out", "t", "--vocab_size", "3")
    assert proc.returncode == 2 and proc.stderr.startswith("usage: npgpt tokenizer train")
    assert "did you mean --vocab-size?" in proc.stderr


def test_version():
    from npgpt import __version__

    proc = npgpt("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"npgpt {__version__}"


@pytest.mark.parametrize("flag,value", [("--temperature", "-1"), ("--top-k", "-5"), ("--top-k", "0"),
                                        ("--top-p", "-0.1"), ("--top-p", "1.5"), ("--max-new-tokens", "-3"),
                                        ("--seed", "-1")])
def test_bad_sampling_flags_are_usage_errors_not_silently_greedy(flag, value, capsys):
    assert main(["generate", "--model", "npgpt-small", flag, value, "hello"]) == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: expected" in err and "usage: npgpt generate" in err


# ----------------------------------------------------------- overwriting
def test_outputs_are_not_overwritten_without_overwrite(prepared, tmp_path):
    corpus = prepared / "corpus.txt"
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    commands = [["tokenizer", "train", "--input", corpus, "--vocab-size", "300", "--out", taken],
                ["prepare", "--input", corpus, "--tokenizer", prepared / "tok", "--out", taken, "--quiet"],
                ["finetune", "--model", prepared / "tok", "--data", corpus, "--out", taken]]
    for argv in commands:
        proc = npgpt(*argv)
        assert proc.returncode == 1, argv
        assert proc.stderr.strip().endswith(f"{taken} is not empty: choose another --out, or pass --overwrite")
    assert [p.name for p in taken.iterdir()] == ["notes.txt"]
    assert npgpt(*commands[0], "--overwrite").returncode == 0
    assert (taken / "vocab.json").is_file() and (taken / "notes.txt").read_text() == "mine"


# --------------------------------------------------------------- inputs
def test_tokenizer_train_reports_its_true_size_and_refuses_empty_input(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    proc = npgpt("tokenizer", "train", "--input", empty, "--vocab-size", "300", "--out", tmp_path / "t0")
    assert proc.returncode == 1 and "empty" in proc.stderr and "Traceback" not in proc.stderr
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("ab ab ab")                       # only a handful of pairs to merge
    proc = npgpt("tokenizer", "train", "--input", tiny, "--vocab-size", "5000", "--out", tmp_path / "t1")
    assert proc.returncode == 0, proc.stderr
    from npgpt.tokenizer import Tokenizer

    size = Tokenizer.from_pretrained(tmp_path / "t1").vocab_size
    assert size < 5000 and f"saved a tokenizer of {size:,} tokens" in proc.stdout


def test_non_utf8_input_names_the_file_and_line(prepared, tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("first line\ncaf\xe9\n".encode("latin-1"))
    proc = npgpt("tokenizer", "train", "--input", bad, "--vocab-size", "300", "--out", tmp_path / "t")
    assert proc.returncode == 1 and f"input file {bad} is not UTF-8 text: line 2" in proc.stderr
    table = tmp_path / "reviews.csv"
    table.write_bytes("text,label\ngood,1\ncaf\xe9,0\n".encode("latin-1"))
    proc = npgpt("finetune", "--model", prepared / "tok", "--data", table, "--out", tmp_path / "clf")
    assert proc.returncode == 1 and f"data file {table} is not UTF-8 text: line 3" in proc.stderr


def test_generate_warns_when_it_cuts_the_prompt(prepared, tmp_path):
    assert main(["train", "--data", str(prepared / "data"), "--out", str(tmp_path / "run"), "--max-steps", "1",
                 "--quiet", *SMALL]) == 0
    prompt = "Romeo, Romeo! wherefore art thou Romeo? " * 4                # > 16 tokens, the block size
    proc = npgpt("generate", "--model", tmp_path / "run" / "checkpoint", "--max-new-tokens", "3", prompt)
    assert proc.returncode == 0, proc.stderr
    assert "and the model's context is 16: it sees only the last 16" in proc.stderr
    assert proc.stdout.startswith(prompt)
    short = npgpt("generate", "--model", tmp_path / "run" / "checkpoint", "--max-new-tokens", "3", "Romeo")
    assert short.returncode == 0 and "warning" not in short.stderr


# ------------------------------------------------------ fine-tuning labels
def _labelled(path, rows):
    path.write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in rows))
    return path


def test_finetune_refuses_a_label_column_that_looks_like_scores(prepared, tmp_path):
    data = _labelled(tmp_path / "scores.csv", [(f"review {i}", f"{i * 0.37:.2f}") for i in range(40)])
    proc = npgpt("finetune", "--model", prepared / "tok", "--data", data, "--out", tmp_path / "clf")
    assert proc.returncode == 1
    assert "40 distinct labels" in proc.stderr and "--allow-many-classes" in proc.stderr
    assert not (tmp_path / "clf").exists()


def test_label_counts_and_rare_class_warnings():
    from npgpt.finetuning.labelled import label_counts

    raw = ["pos"] * 30 + ["neg"] * 28 + ["postive"]
    counts, warnings = label_counts(raw, source="r.csv")
    assert counts == {"pos": 30, "neg": 28, "postive": 1}
    assert warnings == ["class 'postive' has only 1 example in r.csv"]
    with pytest.raises(ValueError, match="5 distinct labels .* 5 of them occur once"):
        label_counts(["1.5", "2.25", "0.1", "3", "4"])
    assert len(label_counts(["1.5", "2.25", "0.1", "3", "4"], allow_many_classes=True)[0]) == 5
    assert label_counts(["a", "b"])[0] == {"a": 1, "b": 1}     # two classes of one: too few, but not refused


@pytest.mark.slow
def test_finetune_prints_label_counts_and_warns_about_a_typo(prepared, tmp_path):
    assert main(["train", "--data", str(prepared / "data"), "--out", str(tmp_path / "pre"), "--max-steps", "1",
                 "--quiet", *SMALL]) == 0
    rows = [(f"good film {i}", "pos") for i in range(20)] + [(f"bad film {i}", "neg") for i in range(20)]
    data = _labelled(tmp_path / "r.csv", rows + [("fine film", "postive")])
    proc = npgpt("finetune", "--model", tmp_path / "pre" / "checkpoint", "--data", data, "--out", tmp_path / "clf",
                 "--epochs", "1", "--batch-size", "8")
    assert proc.returncode == 0, proc.stderr
    assert "label counts: neg 20, pos 20, postive 1" in proc.stdout
    assert "npgpt: warning: class 'postive' has only 1 example" in proc.stderr
