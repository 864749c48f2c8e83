"""The examples run as a reader would run them, on the model that ships with npgpt."""

import pathlib
import re
import subprocess
import sys

import numpy as np

import npgpt

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_shipped_model_loads_by_name_and_is_small():
    files = list((ROOT / "npgpt" / "io" / "pretrained" / "npgpt-small").iterdir())
    assert sum(f.stat().st_size for f in files) < 20 * 2**20             # ships inside the package
    model = npgpt.GPT.from_pretrained("npgpt-small")
    tokenizer = npgpt.Tokenizer.from_pretrained("npgpt-small")
    assert model.wte.weight.dtype == np.float32                          # stored float16, upcast on load
    assert model.config.vocab_size == tokenizer.vocab_size


def test_next_word_example_prints_ranked_probabilities():
    proc = subprocess.run([sys.executable, "examples/next_word.py", "--top", "5"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = re.findall(r"^\s+(\d)\s+('.*?'|\".*?\")\s+(0\.\d{4})$", proc.stdout, re.M)
    assert [int(rank) for rank, _, _ in rows] == [1, 2, 3, 4, 5]
    probs = [float(p) for _, _, p in rows]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 1.0 + 1e-3
    assert "The cat sits on the" in proc.stdout and "Greedy continuation" in proc.stdout


def test_next_word_agrees_with_the_library():
    model = npgpt.GPT.from_pretrained("npgpt-small")
    tokenizer = npgpt.Tokenizer.from_pretrained("npgpt-small")
    ids = tokenizer.encode("The cat sits on the")
    with npgpt.no_grad():
        probs = npgpt.F.softmax(model(np.array([ids]))[0, -1]).numpy()
    best = tokenizer.decode([int(np.argmax(probs))])
    proc = subprocess.run([sys.executable, "examples/next_word.py", "--top", "1", "--continue-tokens", "0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert repr(best) in proc.stdout
