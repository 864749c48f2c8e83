"""tokenizer: GPT-2 encoding MB/s vs tiktoken on SOTU, and BPE training time vs HF tokenizers.

Encoding: the whole State of the Union corpus (10.8 MB) with GPT-2's vocabulary, each repeat
from a cold start (a fresh npgpt Tokenizer with an empty word cache; tiktoken's
``encode_ordinary`` on one thread), repeats interleaved so both see the same machine load. The
ids of both are compared in the same run. Training: vocab 16,384 on the first 5 MB of SOTU (whole
speeches, the last one cut), npgpt's ``Tokenizer.train`` against Hugging Face ``tokenizers``'
``BpeTrainer`` with the ByteLevel pre-tokenizer (which uses all its threads). Medians of
``--repeats`` runs; ratios are npgpt's speed over the reference's (1.0 = as fast).

``--scaling`` measures how cost grows instead (``scaling_rows``), and fits the exponent ``k`` of
``cost ~ size**k`` (``bench.common.fit_exponent``): BPE training time against corpus size, and the
encoding time of the inputs that make one huge pre-token (a run of one character, text without
spaces), where a naive merge loop is quadratic.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from collections.abc import Iterable
from typing import Any

from npgpt.bench.common import fit_exponent, median, peak_rss_mb
from npgpt.tokenizer import ENDOFTEXT, GPT2_ENDOFTEXT_ID, GPT2_PATTERN


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeats", type=int, default=3, help="measured runs of each side (default 3)")
    parser.add_argument("--train-mb", type=float, default=5.0, help="training text in MB (default 5)")
    parser.add_argument("--vocab-size", type=int, default=16384, help="training vocabulary (default 16384)")
    parser.add_argument("--scaling", action="store_true",
                        help="measure cost against input size instead (training and pathological encodes)")
    parser.add_argument("--train-sizes", type=_sizes, default=TRAIN_SIZES_MB, metavar="MB,MB,...",
                        help=f"--scaling: training corpus sizes in MB (default {','.join(map(str, TRAIN_SIZES_MB))})")
    parser.add_argument("--encode-sizes", type=_sizes, default=ENCODE_SIZES_MB, metavar="MB,MB,...",
                        help=f"--scaling: pathological input sizes in MB (default {','.join(map(str, ENCODE_SIZES_MB))})")
    parser.add_argument("--scaling-vocab-size", type=int, default=4096,
                        help="--scaling: training vocabulary (default 4096)")


TRAIN_SIZES_MB = (1, 2, 5, 10, 20)
ENCODE_SIZES_MB = (0.125, 0.25, 0.5, 1)
TIKTOKEN_LIMIT_S = 20.0       # --scaling: a tiktoken encode this slow is not repeated at larger sizes


def _sizes(text: str) -> tuple[float, ...]:
    try:
        sizes = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes in MB separated by commas, got {text!r}") from None
    if len(sizes) < 2 or min(sizes) <= 0:
        raise argparse.ArgumentTypeError(f"expected at least two positive sizes, got {text!r}")
    return sizes


def first_bytes(documents: Iterable[str], n_bytes: int) -> list[str]:
    """Whole documents from the start until ``n_bytes`` UTF-8 bytes, the last one cut to fit."""
    out, total = [], 0
    for doc in documents:
        raw = doc.encode("utf-8")
        if total + len(raw) >= n_bytes:
            out.append(raw[:n_bytes - total].decode("utf-8", errors="ignore"))
            break
        out.append(doc)
        total += len(raw)
    return out


def tiktoken_gpt2(path: str | os.PathLike) -> Any:
    """tiktoken's GPT-2 ``Encoding`` from a local ``gpt2.tiktoken`` ranks file, offline."""
    os.environ["TIKTOKEN_CACHE_DIR"] = ""       # offline, and no cached copy written
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    return tiktoken.Encoding(name="gpt2-offline", pat_str=GPT2_PATTERN,
                             mergeable_ranks=load_tiktoken_bpe(str(path)), special_tokens={ENDOFTEXT: GPT2_ENDOFTEXT_ID})


def _hf_train(documents: list[str], vocab_size: int) -> tuple[float, int]:
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers, trainers

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=[ENDOFTEXT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    start = time.perf_counter()
    hf.train_from_iterator(documents, trainer)
    return time.perf_counter() - start, hf.get_vocab_size()


def pathological_text(kind: str, n_bytes: int, seed: int = 0) -> str:
    """``n_bytes`` of text that GPT-2's pattern makes one pre-token (or one whitespace run).

    ``"a"``, ``"space"``, ``"newline"``: one character repeated; ``"letters"``: random lowercase
    letters; ``"no-spaces"``: SOTU with its whitespace removed (real words run together)."""
    if kind in ("a", "space", "newline"):
        return {"a": "a", "space": " ", "newline": "\n"}[kind] * n_bytes
    if kind == "letters":
        rng = random.Random(seed)
        return "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=n_bytes))
    if kind == "no-spaces":
        from npgpt import datasets

        text = "".join(datasets.load_text("sotu").encode("ascii", "ignore").decode().split())
        return (text * (n_bytes // len(text) + 1))[:n_bytes]
    raise ValueError(f"unknown pathological text {kind!r}")


PATHOLOGICAL = ("a", "space", "newline", "letters", "no-spaces")


def scaling_rows(train_sizes_mb: Iterable[float] = TRAIN_SIZES_MB, encode_sizes_mb: Iterable[float] = ENCODE_SIZES_MB,
                 vocab_size: int = 4096, with_tiktoken: bool = True) -> dict[str, Any]:
    """Cost against input size: ``{"train": {...}, "encode": {kind: {...}}}``, each with its rows
    and the fitted exponent (1 = linear, 2 = quadratic).

    Training: ``Tokenizer.train(documents, vocab_size)`` on the first MB of SOTU + Shakespeare +
    Moby-Dick (17 MB; larger sizes repeat it from the start). Encoding: ``encode_ordinary`` of each
    ``pathological_text`` with a fresh GPT-2 tokenizer (such a pre-token is never cached anyway),
    best of two; tiktoken's time beside it, until one of its encodes takes ``TIKTOKEN_LIMIT_S`` or
    fails (its regex engine overflows its stack on some of these inputs: ``tiktoken_error``).
    """
    from npgpt import datasets
    from npgpt.tokenizer import Tokenizer

    documents = [d for name in ("sotu", "shakespeare", "moby-dick") for d in datasets.load_documents(name)]
    train_rows = []
    for mb in train_sizes_mb:
        n_bytes, pool = int(mb * 1e6), documents
        while sum(len(d) for d in pool) < n_bytes:      # characters ~ bytes for this English
            pool = pool + documents
        texts = first_bytes(pool, n_bytes)
        start = time.perf_counter()
        trained = Tokenizer.train(texts, vocab_size, show_progress=False)
        train_rows.append({"mb": mb, "seconds": round(time.perf_counter() - start, 3), "vocab": trained.vocab_size})

    gpt2 = Tokenizer.from_pretrained("gpt2")
    enc = tiktoken_gpt2(datasets.fetch("gpt2-tiktoken")) if with_tiktoken else None
    encode: dict[str, Any] = {}
    for kind in PATHOLOGICAL:
        rows, tiktoken_ok = [], enc is not None
        for mb in encode_sizes_mb:
            text = pathological_text(kind, int(mb * 1e6))
            times = []
            for _ in range(2):
                fresh = Tokenizer([gpt2.token_bytes(i) for i in range(len(gpt2))], gpt2.merges, gpt2.special_tokens)
                start = time.perf_counter()
                ids = fresh.encode_ordinary(text)
                times.append(time.perf_counter() - start)
            row = {"mb": mb, "seconds": round(min(times), 4), "tokens": len(ids)}
            if tiktoken_ok:
                start = time.perf_counter()
                try:
                    ref = enc.encode_ordinary(text)
                except BaseException as exc:   # tiktoken's Rust panics are BaseExceptions
                    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                        raise
                    row["tiktoken_error"] = f"{type(exc).__name__}: {str(exc)[:120]}"
                    tiktoken_ok = False
                else:
                    row["tiktoken_seconds"] = round(time.perf_counter() - start, 4)
                    row["ids_equal_tiktoken"] = ids == ref
                    tiktoken_ok = row["tiktoken_seconds"] < TIKTOKEN_LIMIT_S
            rows.append(row)
        entry = {"rows": rows, "exponent": round(fit_exponent([r["mb"] for r in rows], [r["seconds"] for r in rows]), 2)}
        timed = [r for r in rows if "tiktoken_seconds" in r]
        if len(timed) >= 2:
            entry["tiktoken_exponent"] = round(fit_exponent([r["mb"] for r in timed],
                                                            [r["tiktoken_seconds"] for r in timed]), 2)
        encode[kind] = entry
    return {
        "train": {"vocab_size": vocab_size, "rows": train_rows,
                  "exponent": round(fit_exponent([r["mb"] for r in train_rows], [r["seconds"] for r in train_rows]), 2)},
        "encode": encode,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from npgpt import datasets
    from npgpt.tokenizer import Tokenizer

    if args.scaling:
        return {"scaling": scaling_rows(args.train_sizes, args.encode_sizes, args.scaling_vocab_size),
                "peak_rss_mb": round(peak_rss_mb(), 1)}

    documents = datasets.load_documents("sotu")
    text = "\n".join(documents)
    mb = len(text.encode("utf-8")) / 1e6
    start = time.perf_counter()
    gpt2 = Tokenizer.from_pretrained("gpt2")
    load_npgpt = time.perf_counter() - start
    start = time.perf_counter()
    enc = tiktoken_gpt2(datasets.fetch("gpt2-tiktoken"))
    load_tiktoken = time.perf_counter() - start

    ours, warm, theirs, ids, ref = [], [], [], None, None
    for _ in range(args.repeats):
        fresh = Tokenizer([gpt2.token_bytes(i) for i in range(len(gpt2))], gpt2.merges,
                          gpt2.special_tokens)     # a new tokenizer: an empty word cache
        start = time.perf_counter()
        ids = fresh.encode_ordinary(text)
        ours.append(time.perf_counter() - start)
        start = time.perf_counter()
        ref = enc.encode_ordinary(text)
        theirs.append(time.perf_counter() - start)
        start = time.perf_counter()
        fresh.encode_ordinary(text)             # again: every pre-token is now cached
        warm.append(time.perf_counter() - start)

    train_docs = first_bytes(documents, int(args.train_mb * 1e6))
    ours_train, hf_train, vocab, hf_vocab = [], [], None, None
    for _ in range(args.repeats):
        start = time.perf_counter()
        vocab = Tokenizer.train(train_docs, args.vocab_size, show_progress=False).vocab_size
        ours_train.append(time.perf_counter() - start)
        seconds, hf_vocab = _hf_train(train_docs, args.vocab_size)
        hf_train.append(seconds)

    return {
        "corpus": "sotu (233 speeches)",
        "corpus_mb": round(mb, 2),
        "tokens": len(ids),
        "encode_npgpt_mb_s": round(mb / median(ours), 2),
        "encode_npgpt_warm_mb_s": round(mb / median(warm), 2),
        "encode_tiktoken_mb_s": round(mb / median(theirs), 2),
        "encode_ratio": round(median(theirs) / median(ours), 3),
        "encode_warm_ratio": round(median(theirs) / median(warm), 3),
        "ids_equal_tiktoken": ids == ref,
        "load_npgpt_s": round(load_npgpt, 3),
        "load_tiktoken_s": round(load_tiktoken, 3),
        "train_mb": round(sum(len(d.encode("utf-8")) for d in train_docs) / 1e6, 2),
        "train_vocab_npgpt": vocab,
        "train_vocab_hf": hf_vocab,
        "train_npgpt_s": round(median(ours_train), 3),
        "train_hf_s": round(median(hf_train), 3),
        "train_ratio": round(median(hf_train) / median(ours_train), 3),
        "repeats": args.repeats,
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
