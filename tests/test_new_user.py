"""What a new user hits (issue 29): progress while fine-tuning, a classifier usable from the command
line, warnings about slow paths, and messages that point the right way. Each test goes through the
real command (``npgpt.apps.cli.main``) where the behaviour is a command's."""

from __future__ import annotations

import csv

import pytest
from tiny_models import tiny_bpe_model_dir

from npgpt.model import GPT


def toy_reviews(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    import numpy as np

    rng = np.random.default_rng(seed)
    good, bad = ["great", "fine", "lovely", "superb"], ["awful", "dull", "bad", "boring"]
    texts, labels = [], []
    for _ in range(n):
        y = int(rng.integers(2))
        word = (good if y else bad)[int(rng.integers(4))]
        texts.append(f"the film was {word} and the plot was {word}")
        labels.append("pos" if y else "neg")
    return texts, labels


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny pretrained-model directory: a BPE tokenizer and a GPT with its vocabulary."""
    texts, _ = toy_reviews(200, seed=5)
    return tiny_bpe_model_dir(tmp_path_factory.mktemp("lm"), texts)


def write_reviews(path, n=120, seed=0):
    texts, labels = toy_reviews(n, seed)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(zip(texts, labels))
    return path


def cli(*argv) -> int:
    from npgpt.apps import cli as npgpt_cli

    return npgpt_cli.main([str(a) for a in argv])


@pytest.fixture(scope="module")
def classifier_dir(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("clf") / "clf"
    data = write_reviews(out.parent / "reviews.csv", 160)
    assert cli("finetune", "--model", model_dir, "--data", data, "--out", out, "--epochs", "3", "--lr", "3e-3",
               "--batch-size", "16") == 0
    return out


# ---------------------------------------------------------------- 1. fine-tuning is not silent
def test_finetune_prints_progress_lines_and_says_when_it_validates(model_dir, tmp_path, capsys):
    data = write_reviews(tmp_path / "reviews.csv", 64)
    status = cli("finetune", "--model", model_dir, "--data", data, "--out", tmp_path / "clf", "--epochs", "2",
                 "--batch-size", "8", "--log-interval", "2")
    out = capsys.readouterr().out
    assert status == 0
    steps = [line for line in out.splitlines() if line.startswith("step ") and "tok/s" in line]
    # 58 training texts, batches of 8: 8 steps an epoch, 16 in all; a line every 2 steps after the first
    assert len(steps) >= 6, out
    assert all("ETA" in line and "loss" in line for line in steps)
    assert "validating on 6 texts..." in out
    assert "validating the best classifier" in out


def test_finetune_log_interval_must_be_positive(model_dir, tmp_path, capsys):
    data = write_reviews(tmp_path / "reviews.csv", 20)
    assert cli("finetune", "--model", model_dir, "--data", data, "--out", tmp_path / "o", "--log-interval", "0") == 1
    assert "npgpt: error: --log-interval must be a positive integer, got 0" in capsys.readouterr().err


# ---------------------------------------------------------------- 2. a classifier usable from the command line
def test_classify_prints_label_and_probabilities_per_text(classifier_dir, capsys):
    assert cli("classify", classifier_dir, "the film was great and the plot was great",
               "the film was awful and the plot was awful") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "label\tp(neg)\tp(pos)\ttext"
    rows = [line.split("\t") for line in lines[1:]]
    assert [r[0] for r in rows] == ["pos", "neg"]
    for r in rows:
        assert abs(float(r[1]) + float(r[2]) - 1) < 2e-4
        assert r[0] == ("pos" if float(r[2]) > float(r[1]) else "neg")


def test_classify_input_file_to_tsv_matches_the_python_method(classifier_dir, tmp_path, capsys):
    from npgpt import GPTClassifier, Tokenizer

    texts, _ = toy_reviews(10, seed=3)
    (tmp_path / "in.txt").write_text("\n".join(texts[:5]) + "\n\n" + "\n".join(texts[5:]) + "\n")
    assert cli("classify", classifier_dir, "--input", tmp_path / "in.txt", "--output", tmp_path / "out.tsv") == 0
    rows = [line.split("\t") for line in (tmp_path / "out.tsv").read_text().splitlines()[1:]]
    classifier = GPTClassifier.from_pretrained(classifier_dir)
    expected = classifier.classify(texts, Tokenizer.from_pretrained(classifier_dir))
    assert [r[3] for r in rows] == texts                       # blank line skipped, order kept
    assert [r[0] for r in rows] == [e.label for e in expected]
    assert [float(r[2]) for r in rows] == pytest.approx([e.probabilities["pos"] for e in expected], abs=1e-4)
    assert expected[0].score == max(expected[0].probabilities.values())


def test_classify_refuses_texts_and_input_together_and_a_language_model(classifier_dir, model_dir, tmp_path, capsys):
    (tmp_path / "in.txt").write_text("a text\n")
    assert cli("classify", classifier_dir, "x", "--input", tmp_path / "in.txt") == 1
    assert "give TEXT arguments or --input FILE (not both)" in capsys.readouterr().err
    assert cli("classify", classifier_dir) == 1
    capsys.readouterr()
    assert cli("classify", model_dir, "some text") == 1
    err = capsys.readouterr().err
    assert "npgpt: error:" in err and "classifier" in err


# ---------------------------------------------------------------- 6. messages that point the right way
def test_a_classifier_given_to_generate_is_named_as_one(classifier_dir, capsys):
    assert cli("generate", "--model", classifier_dir, "--max-new-tokens", "2", "the film") == 1
    err = capsys.readouterr().err
    assert "is a classifier (GPT2ForSequenceClassification), not a language model" in err
    assert f"npgpt classify {classifier_dir} TEXT" in err and "unexpected tensors" not in err


def test_a_language_model_given_to_classify_says_to_fine_tune_it(model_dir, capsys):
    assert cli("classify", model_dir, "some text") == 1
    err = capsys.readouterr().err
    assert "is a language model, not a classifier: fine-tune one first with `npgpt finetune" in err


def test_dtype_float64_is_refused_for_what_it_is(tmp_path, capsys):
    assert cli("train", "--data", tmp_path, "--out", tmp_path / "run", "--dtype", "float64") == 1
    err = capsys.readouterr().err
    assert "--dtype must be one of float32, float16, got 'float64' (training runs in float32" in err
    assert "bfloat16" not in err


def test_an_unknown_extension_points_a_command_line_user_to_format(model_dir, tmp_path, capsys):
    (tmp_path / "reviews.txt").write_text("text\tlabel\na\tb\n")
    assert cli("finetune", "--model", model_dir, "--data", tmp_path / "reviews.txt", "--out", tmp_path / "o") == 1
    assert "--format csv|tsv|jsonl on the command line" in capsys.readouterr().err


def test_a_mistyped_subcommand_gets_a_suggestion(capsys):
    assert cli("generat", "--model", "m", "x") == 2
    assert "invalid choice: 'generat'" in (err := capsys.readouterr().err) and "(did you mean generate?)" in err


def test_generate_given_text_says_to_encode_it_first(model_dir):
    model = GPT.from_pretrained(model_dir)
    with pytest.raises(TypeError, match=r"token ids are needed, not text \('text'\): encode it first"):
        model.generate("text", max_new_tokens=2)


def test_decode_of_a_batch_says_to_decode_row_by_row(model_dir):
    import numpy as np

    from npgpt.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_pretrained(model_dir)
    for batch in (np.array([[1, 2], [3, 4]]), [[1, 2], [3, 4]]):
        with pytest.raises(ValueError, match=r"decode takes one sequence of ids.*row by row"):
            tokenizer.decode(batch)
    assert tokenizer.decode(np.array([104, 105])) == "hi"


def test_paths_here_get_local_advice_not_the_hub(model_dir, tmp_path, monkeypatch, capsys):
    import shutil

    monkeypatch.chdir(tmp_path)
    shutil.copytree(model_dir, tmp_path / "run" / "checkpoint")
    assert cli("generate", "--model", "run", "x") == 1                    # a run directory, not its checkpoint
    assert "run is a training run's directory, not a checkpoint: its checkpoint is in run/checkpoint" in \
        capsys.readouterr().err
    for typo in ("run/chekpoint", "rnu/checkpoint", "./rnu"):
        assert cli("generate", "--model", typo, "x") == 1
        err = capsys.readouterr().err
        assert "Hub" not in err, err
    assert cli("generate", "--model", "run/chekpoint", "x") == 1
    assert "did you mean run/checkpoint?" in capsys.readouterr().err


# ---------------------------------------------------------------- 4. speed surprises get a word
def test_generating_past_the_context_warns_once_through_the_command(model_dir):
    import subprocess
    import sys

    # A process of its own: pytest would catch the warning before it reaches stderr.
    run = subprocess.run([sys.executable, "-m", "npgpt", "generate", "--model", str(model_dir), "--max-new-tokens",
                          "70", "--temperature", "0", "the film"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    err = run.stderr
    assert err.count("npgpt: warning: generating past the model's context of 64 tokens") == 1, err
    assert "UserWarning" not in err


def test_generating_within_the_context_does_not_warn(model_dir):
    import warnings

    import numpy as np

    model = GPT.from_pretrained(model_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.generate(np.array([[1, 2, 3]]), max_new_tokens=61)          # 64 tokens: the whole context, no more
    from npgpt.generation import ContextWindowWarning

    with pytest.warns(ContextWindowWarning, match="from new token 62 on"):
        model.generate(np.array([[1, 2, 3]]), max_new_tokens=62)


def test_float16_on_a_cpu_is_said_to_be_meant_for_gpus(tmp_path, capsys):
    cli("train", "--data", tmp_path / "absent", "--out", tmp_path / "run", "--dtype", "float16")
    assert "npgpt: warning: --dtype float16 is meant for GPUs" in capsys.readouterr().err


# ---------------------------------------------------------------- 5. MPI without mpi4py
def test_a_rank_without_mpi4py_gets_one_line_saying_what_to_install(tmp_path):
    import os
    import subprocess
    import sys

    hidden = tmp_path / "site" / "mpi4py"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('No module named mpi4py')\n")
    env = dict(os.environ, PMI_RANK="0", PMI_SIZE="2",
               PYTHONPATH=os.pathsep.join([str(tmp_path / "site"), *filter(None, [os.environ.get("PYTHONPATH")])]))
    run = subprocess.run([sys.executable, "-m", "npgpt", "train", "--data", str(tmp_path / "data"), "--out",
                          str(tmp_path / "run")], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines() == [
        'npgpt: error: this process was started by an MPI launcher (mpiexec) but mpi4py is not installed: '
        'pip install -e ".[mpi]" (it brings mpi4py and an mpiexec)']


# ---------------------------------------------------------------- 7. loss curves
def test_plot_names_a_mistyped_run_before_asking_for_matplotlib(tmp_path, monkeypatch, capsys):
    from npgpt.training import plot

    monkeypatch.setattr(plot, "matplotlib_available", lambda: False)
    assert cli("plot", tmp_path / "rnu", "--out", tmp_path / "c.png") == 1
    err = capsys.readouterr().err
    assert "rnu/log.jsonl does not exist" in err and "matplotlib" not in err
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "log.jsonl").write_text('{"step": 1, "train_loss": 2.0}\n')
    assert cli("plot", tmp_path / "run", "--out", tmp_path / "c.png") == 1
    assert 'matplotlib is not installed (pip install -e ".[viz]"' in capsys.readouterr().err


def test_finetune_says_where_the_curve_is_or_why_there_is_none(model_dir, tmp_path, monkeypatch, capsys):
    from npgpt.training import plot

    data = write_reviews(tmp_path / "reviews.csv", 40)
    assert cli("finetune", "--model", model_dir, "--data", data, "--out", tmp_path / "a", "--epochs", "1") == 0
    assert f"loss curve: {tmp_path / 'a' / plot.FIGURE_NAME}" in capsys.readouterr().out
    monkeypatch.setattr(plot, "matplotlib_available", lambda: False)
    assert cli("finetune", "--model", model_dir, "--data", data, "--out", tmp_path / "b", "--epochs", "1") == 0
    assert f"not drawing {plot.FIGURE_NAME}: matplotlib is not installed" in capsys.readouterr().out


def test_train_says_once_why_there_is_no_curve_and_where_it_is(tmp_path, monkeypatch, capsys):
    from npgpt.training import plot

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("To be, or not to be, that is the question.\n" * 60)
    assert cli("tokenizer", "train", "--input", corpus, "--vocab-size", "280", "--out", tmp_path / "tok") == 0
    assert cli("prepare", "--input", corpus, "--tokenizer", tmp_path / "tok", "--out", tmp_path / "data", "--quiet") == 0
    tiny = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "4",
            "--max-steps", "12", "--eval-interval", "4", "--eval-iters", "1", "--log-interval", "2"]
    capsys.readouterr()
    assert cli("train", "--data", tmp_path / "data", "--out", tmp_path / "a", *tiny) == 0
    assert f"loss curve: {tmp_path / 'a' / plot.FIGURE_NAME}" in capsys.readouterr().err
    monkeypatch.setattr(plot, "matplotlib_available", lambda: False)
    assert cli("train", "--data", tmp_path / "data", "--out", tmp_path / "b", *tiny) == 0
    err = capsys.readouterr().err
    assert err.count(f"not drawing {plot.FIGURE_NAME}: matplotlib is not installed") == 1, err


# ---------------------------------------------------------------- 8. examples
EXAMPLES = __import__("pathlib").Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("script", ["next_word.py", "sentiment.py", "train_npgpt_small.py"])
def test_examples_help_shows_their_defaults(script):
    import subprocess
    import sys

    run = subprocess.run([sys.executable, str(EXAMPLES / script), "--help"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "(default: " in run.stdout and "(default: None)" not in run.stdout


def test_the_recipe_never_overwrites_the_shipped_model_by_default(tmp_path):
    import subprocess
    import sys

    shipped = EXAMPLES.parent / "npgpt" / "io" / "pretrained" / "npgpt-small"
    run = subprocess.run([sys.executable, str(EXAMPLES / "train_npgpt_small.py"), "--out", str(shipped),
                          "--run-dir", str(tmp_path), "--export-only"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "pass --replace-shipped to replace it" in run.stderr
    run = subprocess.run([sys.executable, str(EXAMPLES / "train_npgpt_small.py")], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 2 and "--run-dir" in run.stderr            # a place of the user's choosing
