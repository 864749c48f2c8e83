"""prepare: ``npgpt prepare`` of ~100 MB of English against a nanoGPT-style tiktoken pipeline.

The corpus is every document of SOTU, Shakespeare and Moby-Dick (17 MB, fetched by
``npgpt.datasets``), repeated in that order until ``--mb`` MB, written as text files (one file per
repetition, documents separated by ``<|endoftext|>``) into a temporary directory. Both sides start
from those files and end with ``train.bin`` / ``val.bin`` on disk, GPT-2's vocabulary:

* npgpt: ``npgpt.training.data.prepare(files, tokenizer, out, workers=N)`` with a fresh ``Tokenizer``
  (empty caches; loading the vocabulary is not timed);
* the reference, as nanoGPT's ``prepare.py`` does it: read the files, cut the same documents
  (``data.split_documents``), tiktoken's ``encode_ordinary_batch(docs, num_threads=N)``, append
  ``<|endoftext|>`` to each, keep each document's last 10% for validation as npgpt does, one
  ``np.concatenate`` per split as uint16, ``tofile``.

Each run is a fresh Python process (so each side's peak memory is its own), the sides alternate
and swap which goes first in every pair; the files of both must be byte-identical. Ratios are
npgpt's speed over the reference's (1.0 = as fast): the median of the pairs, and their range.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile
import time
from typing import Any

from npgpt.bench.common import median

CORPORA = ("sotu", "shakespeare", "moby-dick")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mb", type=float, default=100.0, help="corpus size in MB (default 100)")
    parser.add_argument("--workers", type=int, default=2, help="processes / threads of each side (default 2)")
    parser.add_argument("--pairs", type=int, default=3, help="measured (npgpt, tiktoken) pairs (default 3)")


def write_corpus(directory: pathlib.Path, mb: float) -> tuple[list[pathlib.Path], int, int]:
    """The benchmark's text files in ``directory``: (paths, documents, bytes)."""
    from npgpt import datasets
    from npgpt.training.data import EOT

    documents = [d for name in CORPORA for d in datasets.load_documents(name)]
    paths, count, total, target = [], 0, 0, int(mb * 1e6)
    while total < target:
        chosen = []
        for doc in documents:
            if total >= target:
                break
            chosen.append(doc)
            total += len(doc.encode("utf-8"))
        path = directory / f"corpus-{len(paths):03d}.txt"
        path.write_text(EOT.join(chosen), encoding="utf-8")
        paths.append(path)
        count += len(chosen)
    return paths, count, total


def run_npgpt(paths: list[str], out: str, workers: int) -> float:
    """Seconds of ``data.prepare`` from the files to the token files, with a fresh GPT-2 tokenizer."""
    from npgpt.tokenizer import Tokenizer
    from npgpt.training import data

    gpt2 = Tokenizer.from_pretrained("gpt2")
    fresh = Tokenizer([gpt2.token_bytes(i) for i in range(len(gpt2))], gpt2.merges, gpt2.special_tokens)
    start = time.perf_counter()
    data.prepare(paths, fresh, out, val_fraction=0.1, progress=False, workers=workers)
    return time.perf_counter() - start


def run_tiktoken(paths: list[str], out: str, workers: int) -> float:
    """Seconds of the nanoGPT-style pipeline from the files to the token files."""
    import numpy as np

    from npgpt import datasets
    from npgpt.bench.tokenizer import tiktoken_gpt2
    from npgpt.training.data import split_documents

    enc = tiktoken_gpt2(datasets.fetch("gpt2-tiktoken"))
    eot = enc.eot_token
    start = time.perf_counter()
    docs = [d for p in paths for d in split_documents(pathlib.Path(p).read_text(encoding="utf-8"))]
    ids = enc.encode_ordinary_batch(docs, num_threads=workers)
    train, val = [], []
    for row in ids:
        row.append(eot)
        n_train = len(row) - int(len(row) * 0.1)
        train.append(np.array(row[:n_train], dtype=np.uint16))
        val.append(np.array(row[n_train:], dtype=np.uint16))
    out_dir = pathlib.Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    np.concatenate(train).tofile(out_dir / "train.bin")
    np.concatenate(val).tofile(out_dir / "val.bin")
    return time.perf_counter() - start


def _child(side: str, paths: list[str], out: str, workers: int) -> None:
    """One measured run in this (fresh) process: prints seconds and peak RSS as JSON."""
    import resource

    seconds = (run_npgpt if side == "npgpt" else run_tiktoken)(paths, out, workers)
    kib = 1024 * 1024 if sys.platform == "darwin" else 1024
    print(json.dumps({"seconds": seconds,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / kib,
                      "peak_rss_worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / kib}))


def _measure(side: str, paths: list[pathlib.Path], out: pathlib.Path, workers: int) -> dict[str, Any]:
    code = "import sys, json; from npgpt.bench.prepare import _child; _child(*json.loads(sys.argv[1]))"
    arg = json.dumps([side, [str(p) for p in paths], str(out), workers])
    done = subprocess.run([sys.executable, "-c", code, arg], capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"the {side} run failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.workers < 1 or args.pairs < 1:
        raise SystemExit("--workers and --pairs must be >= 1")
    with tempfile.TemporaryDirectory(prefix="npgpt-bench-prepare-") as tmp:
        root = pathlib.Path(tmp)
        paths, documents, total = write_corpus(root, args.mb)
        mb = total / 1e6
        runs: dict[str, list[dict[str, Any]]] = {"npgpt": [], "tiktoken": []}
        identical = True
        for pair in range(args.pairs):
            order = ("npgpt", "tiktoken") if pair % 2 == 0 else ("tiktoken", "npgpt")
            for side in order:
                runs[side].append(_measure(side, paths, root / side, args.workers))
            identical = identical and all(
                (root / "npgpt" / f).read_bytes() == (root / "tiktoken" / f).read_bytes()
                for f in ("train.bin", "val.bin"))
        tokens = sum((root / "npgpt" / f).stat().st_size // 2 for f in ("train.bin", "val.bin"))
    ours = [r["seconds"] for r in runs["npgpt"]]
    theirs = [r["seconds"] for r in runs["tiktoken"]]
    ratios = [t / o for o, t in zip(ours, theirs)]
    return {
        "corpus": "+".join(CORPORA) + " repeated",
        "corpus_mb": round(mb, 1),
        "documents": documents,
        "tokens": tokens,
        "workers": args.workers,
        "npgpt_s": round(median(ours), 2),
        "tiktoken_s": round(median(theirs), 2),
        "npgpt_mb_s": round(mb / median(ours), 1),
        "tiktoken_mb_s": round(mb / median(theirs), 1),
        "ratio": round(median(ratios), 3),
        "ratio_range": [round(min(ratios), 3), round(max(ratios), 3)],
        "ids_identical": identical,
        "npgpt_peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs["npgpt"]), 1),
        "npgpt_worker_peak_rss_mb": round(max(r["peak_rss_worker_mb"] for r in runs["npgpt"]), 1),
        "tiktoken_peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs["tiktoken"]), 1),
        "pairs": args.pairs,
        "runs_s": {side: [round(r["seconds"], 2) for r in rs] for side, rs in runs.items()},
    }
