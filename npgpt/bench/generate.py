"""generate-124M: greedy decoding with the KV cache on GPT-2 small (124M parameters).

The workload: GPT-2 small's configuration, random weights (seed 0), float32, batch 1, a
16-token prompt, 64 new tokens chosen greedily with the KV cache. Reports ``prompt_ms`` (the
forward pass over the prompt that yields the first new token), ``tokens_per_s`` (the new
tokens after that one, each a one-token forward pass, per second) and the peak resident
memory. ``--compare torch`` saves the weights, loads them into Hugging Face transformers'
``GPT2LMHeadModel`` (PyTorch eager, default thread count) and decodes the same prompt in the
same process with its KV cache, reporting its figures, the speed ratio and whether both chose
the same tokens.

Each decoded token reads every weight once (498 MB), so the speed is bounded by memory
bandwidth; see docs/model.md, section "The KV cache".
"""

from __future__ import annotations

import argparse
import inspect
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from npgpt.bench.common import peak_rss_mb

if TYPE_CHECKING:
    from npgpt.model import GPT


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompt-tokens", type=int, default=16, help="prompt length (default 16)")
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens to generate (default 64)")
    parser.add_argument("--compare", choices=["torch"], default=None, help="also run transformers (PyTorch eager)")


def _timed_steps(steps: Iterable[object]) -> list[float]:
    """Seconds taken by each item of an iterator of decoding steps."""
    times, start = [], time.perf_counter()
    for _ in steps:
        now = time.perf_counter()
        times.append(now - start)
        start = now
    return times


def run_npgpt(model: GPT, prompt: np.ndarray, new_tokens: int) -> tuple[list[float], list[int]]:
    from npgpt import generation

    ids = []

    def steps() -> Iterator[None]:
        for token in generation.stream(model, prompt, new_tokens):
            ids.append(int(token[0]))
            yield

    list(generation.stream(model, prompt, 4))          # warm-up: pages the weights in
    return _timed_steps(steps()), ids


def run_torch(directory: str | os.PathLike, prompt: np.ndarray, new_tokens: int) -> tuple[list[float], list[int], int]:
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    hf = transformers.GPT2LMHeadModel.from_pretrained(directory).eval()
    # transformers 5 renamed the KV cache argument and output from past_key_values to cache.
    new_api = "cache" in inspect.signature(hf.forward).parameters
    cache_kw = "cache" if new_api else "past_key_values"

    def steps(n: int, ids: list[int]) -> Iterator[None]:
        # Like npgpt's loop: the time up to a step's yield covers the forward
        # pass that produced its token (the prompt pass for the first one).
        with torch.no_grad():
            out = hf(torch.from_numpy(prompt), use_cache=True)
            for i in range(n):
                token = out.logits[:, -1].argmax(-1, keepdim=True)           # (1, 1)
                ids.append(int(token[0, 0]))
                yield
                if i + 1 < n:
                    past = out.cache if new_api else out.past_key_values
                    out = hf(token, use_cache=True, **{cache_kw: past})

    list(steps(4, []))                                   # warm-up
    ids = []
    times = _timed_steps(steps(new_tokens, ids))
    return times, ids, torch.get_num_threads()


def run(args: argparse.Namespace) -> dict[str, Any]:
    from npgpt.model import GPT, GPTConfig

    model = GPT(GPTConfig(), seed=0).eval()
    prompt = np.random.default_rng(0).integers(0, model.config.vocab_size, (1, args.prompt_tokens))
    times, ids = run_npgpt(model, prompt, args.new_tokens)
    decode = sum(times[1:])
    result = {
        "workload": "generate-124M",
        "prompt_tokens": args.prompt_tokens,
        "new_tokens": args.new_tokens,
        "prompt_ms": round(1000 * times[0], 1),
        "tokens_per_s": round((len(times) - 1) / decode, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    if args.compare == "torch":
        with tempfile.TemporaryDirectory() as directory:
            model.save_pretrained(directory)
            del model
            torch_times, torch_ids, threads = run_torch(directory, prompt, args.new_tokens)
        torch_decode = sum(torch_times[1:])
        result.update({
            "torch_prompt_ms": round(1000 * torch_times[0], 1),
            "torch_tokens_per_s": round((len(torch_times) - 1) / torch_decode, 1),
            "torch_threads": threads,
            "speed_ratio_vs_torch": round(torch_decode / decode, 3),
            "same_ids_as_torch": torch_ids == ids,
        })
    return result
