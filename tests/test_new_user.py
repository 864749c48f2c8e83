"""What a new user hits (issue 29): progress while fine-tuning, a classifier usable from the command
line, warnings about slow paths, and messages that point the right way. Each test goes through the
real command (``npgpt.apps.cli.main``) where the behaviour is a command's."""

from __future__ import annotations

import csv

import pytest

from npgpt.model import GPT, GPTConfig


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
    from npgpt.tokenizer import Tokenizer

    texts, _ = toy_reviews(200, seed=5)
    tokenizer = Tokenizer.train(texts, 300, show_progress=False)
    directory = tmp_path_factory.mktemp("lm")
    GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=32)).save_pretrained(directory)
    tokenizer.save(directory)
    return directory


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
