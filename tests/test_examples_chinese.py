"""The Chinese examples run end to end at a toy size, write only under --out, and record what they measured.

The recorded figures (docs/benchmarks.md, docs/zh/) come from the examples' default settings,
which train for many minutes; here each stage runs for a few steps on a few hundred poems or
reviews, to prove that the recipe works from a clean checkout, not to reproduce the figures.
"""

import json
import pathlib
import subprocess
import sys

import pytest

from npgpt import datasets

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = ["--vocab-size", "300", "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--batch-size", "2"]


def needs(name):
    try:
        datasets.fetch(name)
    except datasets.DatasetUnavailable as e:
        pytest.skip(f"{name} cannot be fetched here: {e}")


def run(tmp_path, script, *args):
    """Run an example from an empty working directory; return (stdout, files it made there)."""
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / script), *args], cwd=work,
                          capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout, sorted(p.name for p in work.iterdir())


@pytest.mark.parametrize("script", ["tang_poems.py", "chinese_sentiment.py"])
def test_help_states_the_defaults(script):
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / script), "--help"], capture_output=True,
                          text=True, timeout=60)
    text = " ".join(proc.stdout.split())                  # argparse wraps lines where it likes
    assert proc.returncode == 0 and "--out OUT" in text and "BPE vocabulary (default: 4096)" in text


@pytest.mark.slow
def test_tang_poems_trains_measures_and_writes_quatrains(tmp_path):
    needs("chinese-poetry")
    out = tmp_path / "tang"
    stdout, made = run(tmp_path, "tang_poems.py", "--out", str(out), "--limit", "400", "--max-steps", "3",
                       "--samples", "3", *TINY)
    assert made == []                                     # nothing written outside --out
    record = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert record["poems"] == {"training": 392, "held_out": 8}
    assert record["steps"] == 3 and record["bits_per_character"] > 0
    assert record["bytes_per_token"]["trained"] > 1.0
    good, total = record["well_formed"]
    assert 0 <= good <= total <= 3
    samples = (out / "samples.txt").read_text(encoding="utf-8")
    heads = [line for line in samples.splitlines() if line[:2] in ("✓ ", "✗ ")]
    assert len(heads) == total and all(h[2:] in ("五言絕句", "七言絕句") for h in heads)   # one per sample
    assert "bits per character" in stdout and "well-formed quatrains" in stdout


@pytest.mark.slow
def test_chinese_sentiment_compares_on_one_seeded_split(tmp_path):
    needs("chinese-reviews")
    out = tmp_path / "sent"
    stdout, made = run(tmp_path, "chinese_sentiment.py", "--out", str(out), "--limit", "300",
                       "--pretrain-steps", "2", "--epochs", "1", "--max-length", "32", *TINY)
    assert made == []
    record = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert record["split"] == [240, 30, 30] and record["seed"] == 0
    for model in ("baseline", "gpt"):
        assert 0.0 <= record[model]["accuracy"] <= 1.0 and 0.0 <= record[model]["f1"] <= 1.0
    assert record["gpt"]["pretrain_steps"] == 2
    assert "char 1-3-gram logistic regression" in stdout
