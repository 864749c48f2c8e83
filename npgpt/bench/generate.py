"""generate-124M: greedy decoding with the KV cache on GPT-2 small (124M parameters).

The workload: GPT-2 small's configuration, random weights (seed 0), float32, a 16-token
prompt, 64 new tokens chosen greedily with the KV cache, in two shapes:

* **batch 1**: ``prompt_ms`` (the forward pass over the prompt that yields the first new
  token), ``tokens_per_s`` (the new tokens after that one, each a one-token forward pass, per
  second) and the peak resident memory;
* **batch B** (``--batch``, default 8; 0 skips it): B different prompts of different lengths
  (the longest ``--prompt-tokens``), left-padded with an attention mask, all decoded together;
  ``batch_tokens_per_s`` counts every row's tokens after the first step.

Each decoded step reads every weight once (``weight_mb_per_token``, 495 MB: all but the rows of
the position table it does not use), so batch 1 is bounded by memory bandwidth. The run measures
that bound on this machine (``roofline_gb_s``: a 256 MiB ``x @ W`` in the layout the model uses,
both cores) and the time the model's own 49 matrix products take alone (``gemv_floor_ms``), and
reports how close decoding comes: ``achieved_gb_s`` (weight bytes per token times tokens/s) and
its ``fraction_of_roofline``.

``--compare torch`` saves the weights, loads them into Hugging Face transformers'
``GPT2LMHeadModel`` (PyTorch eager, default thread count) and decodes the same prompts in the
same process: batch 1 with its KV cache in a loop like npgpt's, batch B with its own batched
``generate`` (same padding and mask); it reports its figures, the speed ratios and whether both
chose the same tokens. ``--repeats N`` runs the workloads N times, with ``--compare`` in pairs
alternating which of the two goes first, and reports medians, ranges and the median of the
paired ratios (the machine's speed drifts: only runs made side by side compare).

``--scaling`` measures instead how a decoding step's cost grows with the context
(``--contexts``, default 64 ... 1024 tokens), with the KV cache and without it (every step
recomputes the whole context), keeping each context's fastest step over two rounds, and fits the
exponent of each series (``fit_exponent``). See docs/model.md, section "The KV cache", and
docs/generation.md, "What a step costs".

``--prompt-lookup N`` measures instead prompt-lookup decoding (``npgpt.generation.prompt_lookup``) against
plain greedy decoding (``prompt_lookup_workload``): the same ids, and the time of each, in pairs
alternating which runs first, on an input-grounded task (quote a given passage) and on open-ended
text, with the shipped ``npgpt-small`` and with GPT-2 124M random weights; and the cost of a
verifying pass over k tokens against a one-token step (``verify_cost``: through the weights'
panels, as prompt lookup runs it, and plainly, as before them). With ``--compare torch``,
transformers' ``generate(prompt_lookup_num_tokens=N)`` on the same model and prompt too. Each side of a
pair sums as many generations as last about ``--sample-seconds`` (``generations_per_sample``; 0: one).
A task's ``passes`` counts the model's passes in one generation with prompt lookup, the prompt's
included (plain greedy's count is ``new_tokens``); ``prompt_pass_ms`` is a one-token generation, the
prompt's pass and the head, which both sides pay (plain greedy makes no copy of the head for fewer
than ``speed.HEAD_COPY_MIN_ROW_STEPS`` tokens, prompt lookup makes the weights' panels instead:
``verify_cost``'s ``panel_copy_ms``).

``fastest_step_ms`` (and ``torch_fastest_step_ms``) is the quickest single step of all the runs:
on a shared machine, what a step costs when nothing else runs. ``peak_rss_mb`` is the whole
process's: with ``--compare`` it holds transformers' copy of the model too.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import math
import os
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from npgpt.bench.common import fit_exponent, median, peak_rss_mb, quartiles

if TYPE_CHECKING:
    from npgpt.model import GPT

ENDOFTEXT = 50256          # GPT-2's <|endoftext|>: the eos and padding id of the batched workload


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompt-tokens", type=int, default=16, help="prompt length (default 16)")
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens to generate (default 64)")
    parser.add_argument("--batch", type=int, default=8, help="rows of the batched workload (default 8; 0 skips it)")
    parser.add_argument("--compare", choices=["torch"], default=None, help="also run transformers (PyTorch eager)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs of each workload (default 1); with --compare, pairs alternating which runs first")
    parser.add_argument("--scaling", action="store_true",
                        help="measure a step's cost against the context length instead, with and without the cache")
    parser.add_argument("--contexts", default="64,128,256,512,1024",
                        help="context lengths of --scaling, comma-separated (default 64,128,256,512,1024)")
    parser.add_argument("--prompt-lookup", type=int, default=None, metavar="N",
                        help="measure prompt-lookup decoding (N guessed tokens) against plain greedy instead")
    parser.add_argument("--sample-seconds", type=float, default=LOOKUP_SAMPLE_SECONDS, metavar="S",
                        help="with --prompt-lookup: each side of a pair sums as many generations as last about S "
                             f"seconds (default {LOOKUP_SAMPLE_SECONDS}; 0: one generation a side)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads of the matrix products, npgpt's BLAS and PyTorch alike (default: each "
                             "library's own; 1 is steadier on a busy machine)")


def _timed_steps(steps: Iterable[object]) -> list[float]:
    """Seconds taken by each item of an iterator of decoding steps."""
    times, start = [], time.perf_counter()
    for _ in steps:
        now = time.perf_counter()
        times.append(now - start)
        start = now
    return times


def run_npgpt(model: GPT, prompt: np.ndarray, new_tokens: int,
              attention_mask: np.ndarray | None = None, **settings: Any) -> tuple[list[float], list[list[int]] | list[int]]:
    """Decode greedily, timing each step: ``(seconds per step, ids)``.

    ``ids`` is the list of new ids for a one-row prompt, else one list per row.
    """
    from npgpt import generation

    rows: list[list[int]] = []

    def steps() -> Iterator[None]:
        for token in generation.stream(model, prompt, new_tokens, attention_mask=attention_mask, **settings):
            rows.append(token.tolist())
            yield

    list(generation.stream(model, prompt, 4, attention_mask=attention_mask, **settings))   # warm-up: pages the weights in
    times = _timed_steps(steps())
    per_row = [list(r) for r in zip(*rows)]
    return times, per_row[0] if len(prompt) == 1 else per_row


def load_torch(directory: str | os.PathLike) -> Any:
    """transformers' ``GPT2LMHeadModel`` from the checkpoint npgpt saved, in eval mode."""
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers.GPT2LMHeadModel.from_pretrained(directory).eval()


def run_torch(hf: Any, prompt: np.ndarray, new_tokens: int) -> tuple[list[float], list[int], int]:
    """transformers' model decoding greedily with its KV cache in a loop like npgpt's: ``(seconds per step, ids, threads)``."""
    import torch

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


def run_torch_batched(hf: Any, ids: np.ndarray, mask: np.ndarray, new_tokens: int,
                      pad_id: int = ENDOFTEXT) -> tuple[list[float], list[list[int]]]:
    """transformers' own batched ``generate`` (greedy, left-padded, eos = pad = ``pad_id``), timed per step.

    A streamer's ``put`` is called with the prompt, then once per step with the new
    tokens (on the CPU, at once): the gaps between the calls are the steps' times.
    """
    import torch
    import transformers

    class Clock(transformers.generation.streamers.BaseStreamer):
        def __init__(self) -> None:
            self.stamps: list[float] = []

        def put(self, value: Any) -> None:
            self.stamps.append(time.perf_counter())

        def end(self) -> None:
            pass

    def generate(n: int, clock: Clock | None = None) -> np.ndarray:
        with torch.no_grad():
            return hf.generate(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), max_new_tokens=n,
                               do_sample=False, eos_token_id=pad_id, pad_token_id=pad_id,
                               streamer=clock).numpy()

    generate(4)                                          # warm-up
    clock = Clock()
    out = generate(new_tokens, clock)
    return list(np.diff(clock.stamps)), out[:, ids.shape[1]:].tolist()


def padded_prompts(rows: int, longest: int, vocab_size: int, pad_id: int = ENDOFTEXT,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` different random prompts of lengths from ``longest`` down to about half of it, left-padded.

    Returns ``(ids, mask)`` (int64 (rows, longest)): padding holds ``pad_id`` and mask 0.
    """
    rng = np.random.default_rng(seed)
    lengths = np.linspace(longest, max(1, longest // 2), rows).round().astype(int)
    ids = np.full((rows, longest), pad_id, dtype=np.int64)
    mask = np.zeros((rows, longest), dtype=np.int64)
    for i, n in enumerate(lengths):
        ids[i, longest - n:] = rng.integers(0, vocab_size, n)
        mask[i, longest - n:] = 1
    return ids, mask


# ------------------------------------------------------------ how close to the bandwidth
def weight_bytes_per_token(model: GPT) -> int:
    """Bytes of weights one decoding step reads: every parameter, but one row of the position table."""
    wpe = model.wpe.weight
    total = sum(p.data.nbytes for p in model.parameters())
    return total - wpe.data.nbytes + wpe.data.nbytes // wpe.shape[0]


def _best_seconds(f: Any, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - start)
    return best


def roofline_gb_s(mib: int = 256, repeats: int = 5) -> float:
    """GB/s of one large one-row product ``x @ W``, W (in, out) float32 of ``mib`` MiB, BLAS on every core.

    The streaming rate a decoding step could reach at best on this machine: the
    same kind of product, on a matrix far larger than the caches, with no Python
    in between.
    """
    n_in = 4096
    w = np.ones((n_in, mib * 2**20 // (4 * n_in)), dtype=np.float32)
    x = np.ones((1, n_in), dtype=np.float32)
    return w.nbytes / _best_seconds(lambda: x @ w, repeats) / 1e9


def gemv_floor_ms(model: GPT, repeats: int = 5) -> float:
    """Milliseconds of a step's matrix products alone: the blocks' 48 and the LM head, one row each.

    The model's own weights, nothing else: a step's time minus this is what
    everything else costs (attention, layer norm, GELU, Python).
    """
    from npgpt.autograd import Tensor, no_grad

    C = model.config.n_embd
    weights = [p.data for name, p in model.named_parameters() if name.startswith("h.") and p.data.ndim == 2]
    rows = {n: np.ones((1, n), dtype=np.float32) for n in {w.shape[0] for w in weights}}
    hidden = Tensor(np.ones((1, C), dtype=np.float32))

    def products() -> None:
        for w in weights:
            rows[w.shape[0]] @ w
        model.lm_head(hidden)

    with no_grad():
        return 1000 * _best_seconds(products, repeats)


# ------------------------------------------------------------ the workloads
def _per_second(times: list[float], rows: int = 1) -> float:
    """Tokens per second after the first step (the prompt's pass): ``rows`` tokens per step."""
    return rows * (len(times) - 1) / sum(times[1:])


def _spread(values: list[float], digits: int) -> dict[str, Any]:
    """Median, range and interquartile range (NumPy's default percentiles) of a set of pair ratios."""
    return {"median": round(median(values), digits), "range": [round(min(values), digits), round(max(values), digits)],
            "iqr": [round(q, digits) for q in quartiles(values)]}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The batch-1 and batch-B workloads, ``--repeats`` times; with ``--compare torch`` paired with
    transformers, alternating which of the two runs first.

    The machine is shared and its speed drifts: a ratio comes from runs made
    side by side, and the median over pairs (with its range) is reported.
    """
    from npgpt.backend import retain_freed_memory

    retain_freed_memory()       # as `npgpt generate` does: the decoding head's copy reuses freed memory
    workload = prompt_lookup_workload if args.prompt_lookup else scaling if args.scaling else _run
    if args.threads is None:
        return workload(args)
    from npgpt.backend import blas_threads

    if args.compare == "torch":
        import torch

        torch.set_num_threads(args.threads)
    with blas_threads(args.threads):
        return workload(args)


def _run(args: argparse.Namespace) -> dict[str, Any]:
    from npgpt.model import GPT, GPTConfig

    model = GPT(GPTConfig(), seed=0).eval()
    V = model.config.vocab_size
    prompt = np.random.default_rng(0).integers(0, V, (1, args.prompt_tokens))
    batch = padded_prompts(args.batch, args.prompt_tokens, V) if args.batch else None
    settings = dict(eos_token_id=ENDOFTEXT, pad_token_id=ENDOFTEXT)
    hf = None
    if args.compare == "torch":
        with tempfile.TemporaryDirectory() as directory:
            model.save_pretrained(directory)
            hf = load_torch(directory)

    def ours() -> dict[str, Any]:
        times, ids = run_npgpt(model, prompt, args.new_tokens)
        out = {"times": times, "ids": ids}
        if batch is not None:
            out["batch_times"], out["batch_ids"] = run_npgpt(model, batch[0], args.new_tokens,
                                                              attention_mask=batch[1], **settings)
        return out

    def theirs() -> dict[str, Any]:
        times, ids, threads = run_torch(hf, prompt, args.new_tokens)
        out = {"times": times, "ids": ids, "threads": threads}
        if batch is not None:
            out["batch_times"], out["batch_ids"] = run_torch_batched(hf, batch[0], batch[1], args.new_tokens)
        return out

    pairs = []
    for r in range(args.repeats):
        if hf is None:
            pairs.append((ours(), None))
        elif r % 2:
            t = theirs()
            pairs.append((ours(), t))
        else:
            pairs.append((ours(), theirs()))
    tokens_per_s = [_per_second(o["times"]) for o, _ in pairs]
    weight_bytes = weight_bytes_per_token(model)
    achieved = weight_bytes * median(tokens_per_s) / 1e9
    roofline = roofline_gb_s()
    first = pairs[0][0]
    result: dict[str, Any] = {
        "workload": "generate-124M",
        "threads": args.threads,
        "prompt_tokens": args.prompt_tokens,
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "prompt_ms": round(1000 * median([o["times"][0] for o, _ in pairs]), 1),
        "tokens_per_s": round(median(tokens_per_s), 1),
        "tokens_per_s_range": [round(min(tokens_per_s), 1), round(max(tokens_per_s), 1)],
        "ms_per_token": round(1000 / median(tokens_per_s), 2),
        "fastest_step_ms": round(1000 * min(min(o["times"][1:]) for o, _ in pairs), 2),
        "gemv_floor_ms": round(gemv_floor_ms(model), 2),
        "weight_mb_per_token": round(weight_bytes / 1e6, 1),
        "achieved_gb_s": round(achieved, 1),
        "roofline_gb_s": round(roofline, 1),
        "fraction_of_roofline": round(achieved / roofline, 3),
    }
    if batch is not None:
        batch_rate = [_per_second(o["batch_times"], args.batch) for o, _ in pairs]
        result.update({
            "batch": args.batch,
            "batch_prompt_ms": round(1000 * median([o["batch_times"][0] for o, _ in pairs]), 1),
            "batch_tokens_per_s": round(median(batch_rate), 1),
            "batch_tokens_per_s_range": [round(min(batch_rate), 1), round(max(batch_rate), 1)],
        })
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    if hf is not None:
        torch_rate = [_per_second(t["times"]) for _, t in pairs]
        ratio = [_per_second(o["times"]) / _per_second(t["times"]) for o, t in pairs]
        result.update({
            "torch_prompt_ms": round(1000 * median([t["times"][0] for _, t in pairs]), 1),
            "torch_tokens_per_s": round(median(torch_rate), 1),
            "torch_tokens_per_s_range": [round(min(torch_rate), 1), round(max(torch_rate), 1)],
            "torch_fastest_step_ms": round(1000 * min(min(t["times"][1:]) for _, t in pairs), 2),
            "torch_threads": pairs[0][1]["threads"],
            "speed_ratio_vs_torch": round(median(ratio), 3),
            "speed_ratio_range": [round(min(ratio), 3), round(max(ratio), 3)],
            "same_ids_as_torch": all(o["ids"] == t["ids"] == first["ids"] for o, t in pairs),
        })
        if batch is not None:
            torch_batch = [_per_second(t["batch_times"], args.batch) for _, t in pairs]
            batch_ratio = [_per_second(o["batch_times"]) / _per_second(t["batch_times"]) for o, t in pairs]
            result.update({
                "batch_torch_prompt_ms": round(1000 * median([t["batch_times"][0] for _, t in pairs]), 1),
                "batch_torch_tokens_per_s": round(median(torch_batch), 1),
                "batch_torch_tokens_per_s_range": [round(min(torch_batch), 1), round(max(torch_batch), 1)],
                "batch_speed_ratio_vs_torch": round(median(batch_ratio), 3),
                "batch_speed_ratio_range": [round(min(batch_ratio), 3), round(max(batch_ratio), 3)],
                "batch_same_ids_as_torch": all(o["batch_ids"] == t["batch_ids"] == first["batch_ids"]
                                               for o, t in pairs),
            })
    return result


# ------------------------------------------------------------ cost growth
def step_ms(model: GPT, context: int, steps: int, use_cache: bool) -> list[float]:
    """Milliseconds of each of ``steps`` decoding steps whose context ends at ``context`` tokens.

    The prompt is ``context - steps`` tokens and the ``steps`` timed steps after
    the first (the prompt's pass) end at ``context`` tokens; ``use_cache=False``
    makes each of them run the model over the whole context again.
    """
    prompt = np.random.default_rng(context).integers(0, model.config.vocab_size, (1, context - steps))
    times, _ = run_npgpt(model, prompt, steps + 1, use_cache=use_cache)
    return [1000 * t for t in times[1:]]


def attention_ms(model: GPT, context: int, repeats: int = 20) -> float:
    """Milliseconds of one decoding step's attention alone (all layers): one query against ``context`` cached keys."""
    import npgpt.functional as F
    from npgpt.autograd import Tensor, no_grad

    H, C = model.config.n_head, model.config.n_embd
    rng = np.random.default_rng(0)
    q = Tensor(rng.standard_normal((1, H, 1, C // H), dtype=np.float32))
    k, v = (Tensor(rng.standard_normal((1, H, context, C // H), dtype=np.float32)) for _ in range(2))

    def layers() -> None:
        for _ in range(model.config.n_layer):
            F.scaled_dot_product_attention(q, k, v, causal=False, return_weights=True)

    with no_grad():
        return 1000 * _best_seconds(layers, repeats)


def scaling_rows(model: GPT, contexts: Sequence[int], cached_steps: int = 8, uncached_steps: int = 2,
                 rounds: int = 2) -> dict[str, Any]:
    """A decoding step's cost against the context length, with and without the KV cache, and the fitted exponents.

    With the cache a step reads every weight once (constant) and attends over
    the cached keys (linear in the context): nearly flat until the cache's bytes
    approach the weights'. Without it a step runs the model over the whole
    context: linear in the context for the matrix products, plus attention's
    quadratic term, which for GPT-2 small stays below a quarter of the work at
    1024 tokens (``T / 6C``).

    The contexts are measured ``rounds`` times in turn and each row keeps its
    fastest step: on a shared machine a slow step says how busy the machine
    was, the fastest what the step costs.
    """
    cached: dict[int, list[float]] = {c: [] for c in contexts}
    uncached: dict[int, list[float]] = {c: [] for c in contexts}
    for _ in range(rounds):
        for context in contexts:
            cached[context] += step_ms(model, context, cached_steps, True)
            uncached[context] += step_ms(model, context, uncached_steps, False)
    rows = [{"context": int(c), "cached_ms": round(min(cached[c]), 2), "attention_ms": round(attention_ms(model, c), 3),
             "uncached_ms": round(min(uncached[c]), 1)} for c in contexts]
    sizes = [r["context"] for r in rows]
    return {
        "rows": rows,
        "exponent_cached": round(fit_exponent(sizes, [r["cached_ms"] for r in rows]), 3),
        "exponent_attention": round(fit_exponent(sizes, [r["attention_ms"] for r in rows]), 3),
        "exponent_uncached": round(fit_exponent(sizes, [r["uncached_ms"] for r in rows]), 3),
    }


def scaling(args: argparse.Namespace) -> dict[str, Any]:
    from npgpt.model import GPT, GPTConfig

    contexts = [int(c) for c in args.contexts.split(",")]
    model = GPT(GPTConfig(), seed=0).eval()
    if max(contexts) > model.config.block_size:
        raise SystemExit(f"--contexts: at most block_size = {model.config.block_size} tokens")
    return {"workload": "generate-124M-scaling", "model": "GPT-2 small (124M), random weights",
            "threads": args.threads, **scaling_rows(model, contexts)}


# ------------------------------------------------------------ prompt lookup
PASSAGE = ("Friends, Romans, countrymen, lend me your ears; I come to bury Caesar, not to praise him. "
           "The evil that men do lives after them; the good is oft interred with their bones; so let it be "
           "with Caesar. The noble Brutus hath told you Caesar was ambitious: if it were so, it was a "
           "grievous fault, and grievously hath Caesar answer'd it.")
LOOKUP_SAMPLE_SECONDS = 0.5
QUOTE_PROMPT = f"{PASSAGE}\n\n{PASSAGE[:40]}"     # the passage, then its start again: go on quoting
OPEN_PROMPT = "The history of the city begins in the"


def _timed_generate(model: GPT, ids: np.ndarray, new_tokens: int, lookup: int) -> tuple[float, np.ndarray]:
    from npgpt import generation

    start = time.perf_counter()
    out = generation.generate(model, ids, new_tokens, prompt_lookup=lookup)
    return time.perf_counter() - start, out[0, ids.shape[1]:]


def _timed_hf(hf: Any, ids: np.ndarray, new_tokens: int, lookup: int) -> tuple[float, np.ndarray]:
    import torch

    kw = {"prompt_lookup_num_tokens": lookup} if lookup else {}
    start = time.perf_counter()
    with torch.no_grad():
        out = hf.generate(torch.from_numpy(ids), attention_mask=torch.ones_like(torch.from_numpy(ids)),
                          max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                          pad_token_id=0, **kw)
    return time.perf_counter() - start, out[0, ids.shape[1]:].numpy()


def _lookup_task(model: GPT, ids: np.ndarray, args: argparse.Namespace, hf: Any = None) -> dict[str, Any]:
    """Plain greedy vs prompt lookup on one prompt, ``--repeats`` pairs alternating which runs first."""
    # npgpt-small's context is 128 tokens; prompt lookup works within it (transformers' verifying
    # pass may reach N + 1 positions past the last token: leave it that room).
    N = args.prompt_lookup
    n = min(args.new_tokens, model.config.block_size - ids.shape[1] - N - 1)
    # Warm-up, both ways: pages the weights in, and the panels' memory (the first time a process
    # touches 0.5 GB of new memory the kernel zeroes it page by page: 0.25-1 s here).
    _timed_generate(model, ids, 4, 0)
    _timed_generate(model, ids, n, N)
    # A small model's generation lasts ~0.1 s, shorter than the machine's swings: each side of a pair
    # is then the sum of as many generations as make ~--sample-seconds (GPT-2's: one).
    runs = max(1, math.ceil(args.sample_seconds / _timed_generate(model, ids, n, 0)[0]))
    plain_s, lookup_s, same = [], [], True
    for r in range(args.repeats):
        order = (0, N) if r % 2 == 0 else (N, 0)
        got = {k: [_timed_generate(model, ids, n, k) for _ in range(runs)] for k in order}
        plain_s.append(sum(t for t, _ in got[0]))
        lookup_s.append(sum(t for t, _ in got[N]))
        same &= all(bool(np.array_equal(got[0][0][1], ids_)) for _, ids_ in got[N])
    # How much of the output the guesses covered: passes the verifying loop made.
    from npgpt.generation import prompt_lookup

    widths = []
    trunk = model.trunk
    model.trunk = lambda idx, **kw: (widths.append(idx.shape[1]), trunk(idx, **kw))[1]
    try:
        _timed_generate(model, ids, n, N)
    finally:
        del model.trunk
    # The prompt's pass, paid by both sides: a generation of one token is that pass and the head.
    prompt_s = median(_timed_generate(model, ids, 1, 0)[0] for _ in range(3))
    out = {"prompt_tokens": int(ids.shape[1]), "prompt_pass_ms": round(1000 * prompt_s, 1), "new_tokens": n, "same_ids": same,
           "passes": len(widths), "tokens_per_pass": round(n / len(widths), 2),
           "generations_per_sample": runs,
           "plain_tokens_per_s": round(n * runs / median(plain_s), 1),
           "lookup_tokens_per_s": round(n * runs / median(lookup_s), 1),
           "speedup": _spread([p / q for p, q in zip(plain_s, lookup_s)], 2)}
    del prompt_lookup
    if hf is not None:
        _timed_hf(hf, ids, 4, 0)
        hf_plain, hf_lookup, ours_again, hf_same = [], [], [], True
        # Each side of a pair sums the same number of generations as above (``runs``): one ~0.1 s
        # generation of npgpt-small is shorter than the machine's swings.
        for r in range(args.repeats):
            order = ("ours", "hf") if r % 2 == 0 else ("hf", "ours")
            for who in order:
                if who == "ours":
                    ours_again.append(sum(_timed_generate(model, ids, n, N)[0] for _ in range(runs)))
                    continue
                plain_runs = [_timed_hf(hf, ids, n, 0) for _ in range(runs)]
                lookup_runs = [_timed_hf(hf, ids, n, N) for _ in range(runs)]
                hf_plain.append(sum(t for t, _ in plain_runs))
                hf_lookup.append(sum(t for t, _ in lookup_runs))
                hf_same &= all(bool(np.array_equal(p, q)) for (_, p), (_, q) in zip(plain_runs, lookup_runs))
        out.update({"torch_plain_tokens_per_s": round(n * runs / median(hf_plain), 1),
                    "torch_lookup_tokens_per_s": round(n * runs / median(hf_lookup), 1),
                    "torch_lookup_same_ids": hf_same,
                    "lookup_vs_torch_lookup": _spread([t / o for t, o in zip(hf_lookup, ours_again)], 2)})
    return out


def verify_cost(model: GPT, context: int = 256, widths: Sequence[int] = (1, 2, 4, 8, 16),
                repeats: int = 7) -> dict[str, float]:
    """Median ms of one pass over ``w`` new tokens after ``context`` cached ones (trunk and head), for
    each ``w``, three ways, interleaved so that drift hits all alike (the cache is cut back after each):
    ``step_ms_w_tokens`` as prompt lookup's verifying pass runs it (the weights' panels,
    ``npgpt.generation.panels``, BLAS on ``speed.PANEL_BLAS_THREADS``, the larger products shared
    between threads by ``speed.share_work``); ``plain_step_ms_w_tokens``
    plainly (the products on the weights themselves, BLAS on its own threads: the one-token step of
    plain greedy decoding, and the wide pass before the panels); ``plain_1t_step_ms_w_tokens`` the
    same on one BLAS thread. ``cost_w_vs_1`` divides by the plain one-token step, ``cost_w_vs_1_1t``
    by the plain one-token step on one thread (on a busy machine two BLAS threads can be far slower)."""
    from npgpt.autograd import no_grad
    from npgpt.backend import speed
    from npgpt.generation import panels

    V = model.config.vocab_size
    ids = np.random.default_rng(1).integers(0, V, (1, context + max(widths)))
    cache = model.new_cache(1, context + max(widths))
    start = time.perf_counter()
    panelled = panels.ModelPanels(model)
    out: dict[str, float] = {"panel_copy_ms": round(1000 * (time.perf_counter() - start), 1)}
    head = model.decoding_weight(1, 64)
    ways = {"": (panelled.attached, panelled.head), "plain_": (contextlib.nullcontext, head),
            "plain_1t_": (lambda: speed.blas_threads(1), head)}
    times: dict[tuple[str, int], list[float]] = {(way, w): [] for way in ways for w in widths}
    with no_grad():
        model.trunk(ids[:, :context], cache=cache)
        for r in range(repeats):
            for w in widths:                   # interleaved, and alternating which way goes first
                for way in sorted(ways, reverse=bool(r % 2)):
                    attached, decoding = ways[way]
                    start = time.perf_counter()
                    with attached():
                        hidden = model.trunk(ids[:, context:context + w], cache=cache)
                        model.lm_head(hidden[0], decoding).data.argmax(axis=-1)
                    times[way, w].append(time.perf_counter() - start)
                    cache.length = context
    one, one_1t = median(times["plain_", widths[0]]), median(times["plain_1t_", widths[0]])
    for w in widths:
        for way in ways:
            out[f"{way}step_ms_{w}_tokens"] = round(1000 * median(times[way, w]), 1)
        out[f"cost_{w}_vs_1"] = round(median(times["", w]) / one, 2)
        out[f"cost_{w}_vs_1_1t"] = round(median(times["", w]) / one_1t, 2)
        out[f"plain_cost_{w}_vs_1"] = round(median(times["plain_", w]) / one, 2)
    return out


def prompt_lookup_workload(args: argparse.Namespace) -> dict[str, Any]:
    """Prompt lookup vs plain greedy: npgpt-small and GPT-2 124M (random weights) on a quoting
    task and on open-ended text; the verifying pass's cost; transformers with ``--compare torch``."""
    from npgpt.model import GPT, GPTConfig
    from npgpt.tokenizer import Tokenizer

    tok = Tokenizer.from_pretrained("npgpt-small")
    quote = np.array([tok.encode(QUOTE_PROMPT)])
    open_ended = np.array([tok.encode(OPEN_PROMPT)])
    result: dict[str, Any] = {"prompt_lookup": args.prompt_lookup, "repeats": args.repeats,
                              "sample_seconds": args.sample_seconds,
                              "load_before": os.getloadavg()[0]}
    models = {"npgpt_small": GPT.from_pretrained("npgpt-small").eval(), "gpt2_124m_random": GPT(GPTConfig(), seed=0).eval()}
    for name, model in models.items():
        hf = None
        if args.compare == "torch":
            with tempfile.TemporaryDirectory() as directory:
                model.save_pretrained(directory)
                hf = load_torch(directory)
        result[f"{name}_quote"] = _lookup_task(model, quote, args, hf)
        result[f"{name}_open"] = _lookup_task(model, open_ended, args, hf)
        del hf
    result["gpt2_124m_random_verify"] = verify_cost(models["gpt2_124m_random"])
    result["load_after"] = os.getloadavg()[0]
    return result
