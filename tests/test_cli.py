"""The ``npgpt`` command, in-process via ``main([...])``: help, the whole pipeline, exact resume, errors."""

import json
import subprocess
import sys

import numpy as np
import pytest

from npgpt import backend
from npgpt.apps.cli import main

TEXT = ("ROMEO:\nBut, soft! what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n"
        "Arise, fair sun, and kill the envious moon,\nWho is already sick and pale with grief.\n\n"
        "JULIET:\nO Romeo, Romeo! wherefore art thou Romeo?\nDeny thy father and refuse thy name.\n\n") * 10
TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "4",
        "--warmup-steps", "4", "--lr", "3e-3", "--min-lr", "3e-4", "--eval-interval", "10", "--eval-iters", "2",
        "--log-interval", "10", "--quiet"]


@pytest.mark.parametrize("command", [[], ["tokenizer", "train"], ["prepare"], ["train"], ["generate"]],
                         ids=["npgpt", "tokenizer-train", "prepare", "train", "generate"])
def test_every_command_has_help(command, capsys):
    assert main(command + ["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: npgpt") and "--help" in out


def test_python_dash_m_runs_the_same_command():
    proc = subprocess.run([sys.executable, "-m", "npgpt", "train", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "--stop-at K" in proc.stdout and "--resume" in proc.stdout


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    pytest.importorskip("npgpt.tokenizer")
    root = tmp_path_factory.mktemp("cli")
    corpus = root / "corpus.txt"
    corpus.write_text(TEXT)
    assert main(["tokenizer", "train", "--input", str(corpus), "--vocab-size", "300", "--out", str(root / "tok")]) == 0
    assert main(["prepare", "--input", str(corpus), "--tokenizer", str(root / "tok"), "--out", str(root / "data"),
                 "--quiet"]) == 0
    return root


def _weights(model_dir):
    from safetensors.numpy import load_file

    return load_file(model_dir / "model.safetensors")


def test_stop_and_resume_through_the_cli_is_bit_identical(prepared, capsys):
    data = str(prepared / "data")
    assert main(["train", "--data", data, "--out", str(prepared / "one"), "--max-steps", "40", *TINY]) == 0
    assert main(["train", "--data", data, "--out", str(prepared / "two"), "--max-steps", "40", "--stop-at", "20",
                 *TINY]) == 0
    state = json.loads((prepared / "two" / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == 20
    assert main(["train", "--out", str(prepared / "two"), "--max-steps", "40", "--resume", "--quiet"]) == 0
    assert "step 40" in capsys.readouterr().out
    assert main(["train", "--out", str(prepared / "two"), "--resume", "--quiet"]) == 0      # finished: no-op
    assert "nothing to do" in capsys.readouterr().out
    one, two = _weights(prepared / "one" / "checkpoint"), _weights(prepared / "two" / "checkpoint")
    assert one.keys() == two.keys()
    for name in one:
        assert np.array_equal(one[name], two[name]), name


@pytest.mark.slow
def test_the_model_directory_generates_and_loads_everywhere(prepared, capsys):
    run = prepared / "gen"
    assert main(["train", "--data", str(prepared / "data"), "--out", str(run), "--max-steps", "10", *TINY]) == 0
    model_dir = run / "checkpoint"
    assert {"vocab.json", "merges.txt", "config.json", "model.safetensors"} <= {p.name for p in model_dir.iterdir()}
    capsys.readouterr()
    args = ["generate", "--model", str(model_dir), "--max-new-tokens", "12", "--seed", "3", "ROMEO:"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert first.startswith("ROMEO:") and len(first.strip()) > len("ROMEO:")
    assert main(args) == 0
    assert capsys.readouterr().out == first                  # same seed, same text
    assert main(args[:-1] + ["--temperature", "0", "ROMEO:"]) == 0     # greedy

    from npgpt.model import GPT
    from npgpt.tokenizer import Tokenizer

    model = GPT.from_pretrained(model_dir)
    tok = Tokenizer.from_pretrained(model_dir)
    assert model.config.vocab_size == tok.vocab_size == 300
    transformers = pytest.importorskip("transformers")
    hf = transformers.GPT2LMHeadModel.from_pretrained(model_dir)
    assert hf.config.vocab_size == 300


def test_config_file_and_flags(prepared, tmp_path, capsys):
    config = tmp_path / "train.json"
    config.write_text(json.dumps({"n_layer": 1, "n_head": 2, "n_embd": 8, "block_size": 8, "batch_size": 2,
                                  "max_steps": 3, "warmup_steps": 1, "eval_interval": 3, "eval_iters": 1}))
    assert main(["train", "--data", str(prepared / "data"), "--out", str(tmp_path / "run"), "--config", str(config),
                 "--n-embd", "16", "--quiet"]) == 0
    state = json.loads((tmp_path / "run" / "checkpoint" / "trainer_state.json").read_text())
    assert state["model_config"]["n_embd"] == 16 and state["train_config"]["max_steps"] == 3   # flag beats file


def test_user_errors_are_one_line_and_exit_1(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("npgpt: error:") and "npgpt prepare" in err and "Traceback" not in err
    assert main(["train", "--out", str(tmp_path / "run"), "--resume"]) == 1
    assert "no complete checkpoint" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--config", str(bad)]) == 1
    assert "not valid JSON" in capsys.readouterr().err
    if not backend.cuda_available():
        assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--device", "cuda"]) == 1
        assert "CuPy" in capsys.readouterr().err
    assert main(["train", "--max-steps", "x", "--out", "r"]) == 2                       # usage error from argparse
