"""gpu: npgpt on an NVIDIA GPU through CuPy, against NumPy and PyTorch CUDA, in one run of a few minutes.

What it measures (each figure in the JSON it prints):

* **parity**: GPT-2 124M's logits (random weights, seed 0, float32) for the same
  tokens on CuPy and on NumPy; ``max |diff|`` must be at most 1e-4.
* **train steps** (forward, cross-entropy, backward, AdamW) of train-small
  (vocab 8,192, T 128, 4 layers, n_embd 256, batch 8) and of GPT-2 124M at
  T = 1024 (``--batch`` sequences), in float32 and in float16 mixed precision
  (``GPT.set_compute_dtype`` + loss scaling): median step time, tokens/s,
  MFU against the device's peak for that precision, peak device memory (the
  CuPy memory pool's largest size during the steps).
* **generate-124M**: greedy decoding with the KV cache, batch 1, 16-token
  prompt, tokens/s after the prompt; and the same decoded as one CUDA graph
  replay per token (``cuda_graph=True``): tokens/s and the speed-up.
* **the CUDA graph's check** (``graph_check``), on the shipped npgpt-small (trained: every
  token depends on what it attends to, where a random GPT-2 repeats one token and would not
  notice a wrong key): whether 100 greedy tokens after a real prompt, the cache filled to the
  whole context, equal plain decoding's, and the largest logit difference between one
  replay and the plain step at the same position.
* **PyTorch CUDA** in the same process when torch imports with CUDA: the
  same train steps (eager; float16 through ``torch.autocast`` and its
  ``GradScaler``) and the speed ratio npgpt / PyTorch.

Without CUDA it says so and exits non-zero. ``--count`` needs no GPU: it counts the kernel
launches and bytes of a GPT-2 124M train step and decoded token on the CuPy stand-in, with
their H100 floors (``npgpt.bench.budget``; docs/gpu.md, "The launch and traffic budget"). ``--quick`` shrinks every
workload (2 layers, T 64) so that the code paths can be exercised against the
CuPy stand-in of the test-suite; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from npgpt.bench.common import median
from npgpt.training.flops import device_peak_flops, flops_per_token, model_flops_utilisation

SMALL = dict(vocab_size=8192, block_size=128, n_layer=4, n_head=4, n_embd=256)
GPT2 = dict(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768)
QUICK = dict(vocab_size=512, block_size=64, n_layer=2, n_head=2, n_embd=64)
Array = Any  # a cupy.ndarray

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=5, help="measured steps per workload (default 5)")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured steps first (default 2)")
    parser.add_argument("--batch", type=int, default=8, help="sequences per step of GPT-2 124M at T 1024 (default 8)")
    parser.add_argument("--peak-flops", type=float, nargs=2, default=None, metavar=("FP32", "FP16"),
                        help="the device's peak FLOP/s in float32 and float16 (default: from its name, if known)")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch CUDA comparison")
    parser.add_argument("--quick", action="store_true", help="tiny workloads, to test the code paths (no meaning)")
    parser.add_argument("--count", action="store_true",
                        help="no GPU: count the kernel launches and bytes of a GPT-2 124M train step and decoded "
                             "token on the CuPy stand-in, with their H100 floors (npgpt.bench.budget)")


def _sync() -> None:
    import cupy

    cupy.cuda.Device().synchronize()


def _timed(step: Callable[[], Any], steps: int, warmup: int, sync: Callable[[], None]) -> float:
    """Median seconds of ``step`` after ``warmup`` calls; the device is synchronised around each."""
    times = []
    for i in range(warmup + steps):
        sync()
        start = time.perf_counter()
        step()
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return median(times)


def _pool_peak() -> Callable[[], tuple[int, int]]:
    """A function that samples CuPy's memory pool: the largest (reserved, allocated) bytes seen.

    Reserved is what the pool holds from the driver (``total_bytes``), allocated what arrays use of
    it (``used_bytes``): PyTorch's ``max_memory_reserved`` and ``max_memory_allocated`` are the
    same two measures, and each is compared with its own kind.
    """
    import cupy

    pool = cupy.get_default_memory_pool()
    seen = [(pool.total_bytes(), pool.used_bytes())]

    def sample() -> tuple[int, int]:
        seen.append((pool.total_bytes(), pool.used_bytes()))
        return max(r for r, _ in seen), max(a for _, a in seen)
    return sample


def _model(cfg: dict[str, int], seed: int = 0) -> Any:
    from npgpt.model import GPT, GPTConfig

    return GPT(GPTConfig(**cfg), seed=seed)


def parity(cfg: dict[str, int]) -> float:
    """max |logits_CuPy - logits_NumPy| for one batch of GPT-2-shaped float32 inputs."""
    from npgpt.autograd import no_grad
    from npgpt.backend import to_numpy

    model = _model(cfg)
    ids = np.random.default_rng(1).integers(0, cfg["vocab_size"], (2, min(64, cfg["block_size"])))
    with no_grad():
        host = model(ids).data
        model.to("cuda")
        device = to_numpy(model(ids).data)
    return float(np.abs(device - host).max())


def train_npgpt(cfg: dict[str, int], batch: int, dtype: str, steps: int, warmup: int) -> dict[str, float]:
    """Median train step of npgpt on the GPU; tokens/s, peak pool bytes, loss."""
    from npgpt.backend import to_device
    from npgpt.training import engine
    from npgpt.training.mixed_precision import NO_LOSS_SCALING, GradScaler
    from npgpt.training.optim import AdamW, param_groups

    model = _model(cfg).to("cuda")
    model.train()
    scaler = NO_LOSS_SCALING
    if dtype != "float32":
        model.set_compute_dtype(dtype)
        scaler = GradScaler()
    optimizer = AdamW(param_groups(model, 0.1), lr=3e-4)
    rng = np.random.default_rng(0)
    T = cfg["block_size"]
    peak = _pool_peak()
    losses = []

    def loss_fn(x: Any, y: Any) -> Any:
        return model.loss(x, y)          # the trainer's own loss path (fused head + loss; the ids checked once)

    def step() -> None:
        tokens = to_device(rng.integers(0, cfg["vocab_size"], (batch, T + 1)), "cuda")
        result = engine.optimizer_step(optimizer, loss_fn, [(tokens[:, :-1], tokens[:, 1:])], 3e-4, 1.0,
                                       workers=1, scaler=scaler)
        losses.append(result.loss)
        peak()

    seconds = _timed(step, steps, warmup, _sync)
    reserved, allocated = peak()
    return {"step_ms": 1000 * seconds, "tokens_per_s": batch * T / seconds, "reserved_mb": reserved / 2 ** 20,
            "allocated_mb": allocated / 2 ** 20, "loss": losses[-1], "flops_per_token": flops_per_token(model)}


def train_torch(cfg: dict[str, int], batch: int, dtype: str, steps: int, warmup: int) -> dict[str, float]:
    """The same train step in PyTorch eager on CUDA (float16 through autocast + GradScaler)."""
    import torch
    from torch import nn

    from npgpt.bench.train import torch_gpt

    device = torch.device("cuda")
    model = torch_gpt(cfg, "cuda")
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
    half = dtype == "float16"
    scaler = torch.amp.GradScaler("cuda", enabled=half)
    rng = np.random.default_rng(0)
    T = cfg["block_size"]
    torch.cuda.reset_peak_memory_stats()

    def step() -> None:
        tokens = torch.from_numpy(rng.integers(0, cfg["vocab_size"], (batch, T + 1))).to(device)
        with torch.autocast("cuda", dtype=torch.float16, enabled=half):
            logits = model(tokens[:, :-1])
        loss = nn.functional.cross_entropy(logits.float().view(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    seconds = _timed(step, steps, warmup, torch.cuda.synchronize)
    return {"step_ms": 1000 * seconds, "tokens_per_s": batch * T / seconds,
            "reserved_mb": torch.cuda.max_memory_reserved() / 2 ** 20,
            "allocated_mb": torch.cuda.max_memory_allocated() / 2 ** 20}


def generate_npgpt(cfg: dict[str, int], new_tokens: int = 64, cuda_graph: bool = False) -> tuple[float, list]:
    """Greedy tokens/s after a 16-token prompt, with the KV cache, on the GPU, and the ids.

    ``cuda_graph``: each token one replay of the captured step (``npgpt.generation.cuda_graph``);
    the capture is part of the first step (the prompt's), which is not counted.
    """
    from npgpt.generation import stream

    model = _model(cfg).to("cuda")
    prompt = np.random.default_rng(0).integers(0, cfg["vocab_size"], (1, 16))
    times, ids = [], []
    _sync()
    last = time.perf_counter()
    for token in stream(model, prompt, new_tokens, cuda_graph=cuda_graph):
        _sync()
        now = time.perf_counter()
        times.append(now - last)
        ids.append(token)
        last = now
    return (len(times) - 1) / sum(times[1:]), [int(t[0]) for t in ids]     # the first step is the prompt


GRAPH_CHECK_PROMPT = "To be, or not to be, that is the question:"


def replay_logit_difference(model: Any, prompt: Array) -> float:
    """max |logits of one replay of the captured step - logits of the plain step| at the position after
    ``prompt`` (B, T0) (a device array): the prompt run once, the graph launched once."""
    from npgpt.autograd import no_grad
    from npgpt.backend import array_module, to_numpy
    from npgpt.generation import cuda_graph

    cupy = array_module(prompt)
    B, T0 = prompt.shape
    decoder = cuda_graph.StaticDecoder(model, B, cuda_graph.capacity(T0 + 2, model.config.block_size))
    decoder.logits = cupy.zeros((B, model.config.vocab_size), dtype=np.float32)
    pool = cupy.cuda.MemoryPool()
    with no_grad():
        graph = cuda_graph.captured(decoder, pool)
        first = decoder.prefill(prompt)
        graph.launch(cupy.cuda.get_current_stream())
        replayed = to_numpy(decoder.logits)
        cache = model.new_cache(B, T0 + 1)
        model.trunk(prompt, cache=cache)
        plain = to_numpy(model.lm_head(model.trunk(first[:, None], cache=cache)[:, -1]).data)
    graph = None
    pool.free_all_blocks()
    return float(np.abs(replayed - plain).max())


def graph_check(new_tokens: int = 100, repeats: int = 5) -> dict[str, Any]:
    """The CUDA graph path against plain greedy decoding on npgpt-small (trained, so a wrong key or mask
    changes the ids): the ids of ``new_tokens`` after a line of Hamlet, one replay's logits, and the
    default pool's and the device's memory in use after each of ``repeats`` more graph generations
    (each captures a graph of its own: memory that grows with them is left behind per capture)."""
    import cupy

    from npgpt.backend import to_numpy
    from npgpt.model import GPT
    from npgpt.tokenizer import Tokenizer

    model = GPT.from_pretrained("npgpt-small").to("cuda")
    prompt = np.array([Tokenizer.from_pretrained("npgpt-small").encode(GRAPH_CHECK_PROMPT)])
    new_tokens = min(new_tokens, model.config.block_size - prompt.shape[1])
    plain = to_numpy(model.generate(prompt, new_tokens))
    graph = to_numpy(model.generate(prompt, new_tokens, cuda_graph=True))
    differ = np.flatnonzero((plain != graph).any(axis=0))
    memory = []                     # does a graph generation leave memory behind (a cuBLAS workspace per capture)?
    for _ in range(repeats):
        model.generate(prompt, new_tokens, cuda_graph=True)
        free, total = cupy.cuda.runtime.memGetInfo()
        memory.append({"default_pool_bytes": int(cupy.get_default_memory_pool().total_bytes()),
                       "device_used_bytes": int(total - free)})
    return {"model": "npgpt-small", "prompt_tokens": int(prompt.shape[1]), "new_tokens": new_tokens,
            "ids_match_plain": bool(differ.size == 0),
            "first_differing_position": None if differ.size == 0 else int(differ[0]),
            "max_abs_logit_diff": replay_logit_difference(model, cupy.asarray(prompt)),
            "memory_after_each_repeat": memory}


def generate_both(cfg: dict[str, int], new_tokens: int) -> dict[str, Any]:
    """Plain greedy decoding and the CUDA graph's, tokens/s each (``cfg``'s random model), and the graph's
    check on npgpt-small (``graph_check``). The graph path has never run on a GPU before the first device
    run: an error is recorded, not raised."""
    plain, _ = generate_npgpt(cfg, new_tokens)
    result: dict[str, Any] = {"generate_124m_tokens_per_s": round(plain, 2)}
    try:
        graph, _ = generate_npgpt(cfg, new_tokens, cuda_graph=True)
        result["generate_124m_cuda_graph"] = {"tokens_per_s": round(graph, 2), "speedup": round(graph / plain, 3)}
    except Exception as error:                         # noqa: BLE001  (recorded for the first device run)
        result["generate_124m_cuda_graph"] = {"error": f"{type(error).__name__}: {error}"}
    try:
        result["cuda_graph_check"] = graph_check()
    except Exception as error:                         # noqa: BLE001
        result["cuda_graph_check"] = {"error": f"{type(error).__name__}: {error}"}
    return result


def _peaks(name: str, override: list[float] | None) -> dict[str, float] | None:
    if override:
        return {"float32": override[0], "float16": override[1]}
    known = device_peak_flops(name)
    return None if known is None else {dtype: device_peak_flops(name, dtype) for dtype in ("float32", "float16")}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from npgpt import backend

    if args.count:
        from npgpt.bench import budget

        return {"workload": "gpu-count", **budget.count(quick=args.quick)}
    if not backend.cuda_available():
        print(f"npgpt.bench gpu: no usable CUDA device: {backend.cuda_unavailable_reason()} "
              "(docs/gpu.md, \"Installing\")", file=sys.stderr)
        raise SystemExit(2)
    import cupy

    name = cupy.cuda.runtime.getDeviceProperties(0)["name"]
    name = name.decode() if isinstance(name, bytes) else str(name)
    peaks = _peaks(name, args.peak_flops)
    small, big = (QUICK, QUICK) if args.quick else (SMALL, GPT2)
    steps, warmup = (1, 0) if args.quick else (args.steps, args.warmup)
    result: dict[str, Any] = {"workload": "gpu", "device": name, "cupy": cupy.__version__,
                              "peak_flops": peaks, "quick": bool(args.quick)}
    diff = parity(big)
    result["parity_max_abs_diff"] = diff
    result["parity_ok"] = diff <= 1e-4
    torch_ok = False
    if not args.no_torch:
        try:
            import torch

            torch_ok = torch.cuda.is_available()
            result["torch"] = torch.__version__
        except ImportError:
            torch_ok = False
    for label, cfg, batch in (("train_small", small, 8), ("train_124m", big, args.batch if not args.quick else 2)):
        for dtype in ("float32", "float16"):
            key = f"{label}_{dtype}"
            ours = train_npgpt(cfg, batch, dtype, steps, warmup)
            entry = {k: round(v, 4) if isinstance(v, float) else v for k, v in ours.items()}
            if peaks:
                mfu = model_flops_utilisation(ours["tokens_per_s"], ours["flops_per_token"], peaks[dtype])
                entry["mfu"] = float(f"{mfu:.4g}")        # 4 significant digits: a tiny run's MFU is not 0
            if torch_ok:
                theirs = train_torch(cfg, batch, dtype, steps, warmup)
                entry.update({f"torch_{k}": round(v, 2) for k, v in theirs.items()})
                entry["speed_ratio_vs_torch"] = round(ours["tokens_per_s"] / theirs["tokens_per_s"], 3)
            entry["batch"], entry["block_size"] = batch, cfg["block_size"]
            result[key] = entry
            cupy.get_default_memory_pool().free_all_blocks()
    result.update(generate_both(big, 8 if args.quick else 64))
    return result
