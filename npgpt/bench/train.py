"""Training steps (forward, cross-entropy, backward, AdamW) of a GPT: train-small and train-124m.

* **train-small**: vocab 8,192, block 128, 4 layers, 4 heads, n_embd 256, batch 8.
* **train-124m**: GPT-2 small exactly (vocab 50,257, block 1,024, 12 layers, 12 heads,
  n_embd 768), sequences of 256 tokens, batch 4.

Both float32, dropout 0, random tokens (seed 0), AdamW (weight decay 0.1). Reports the median
step time over ``--steps`` steps after ``--warmup`` steps, tokens/s, the model FLOPs
utilisation (MFU) against ``--peak-flops``, the peak resident memory and where npgpt's memory
goes (parameters, gradients, Adam moments, activations, temporaries; ``memory_breakdown``).
``--compare torch`` runs the same model written in PyTorch eager, each side in a process of its
own (so that each peak RSS is its own), ``--pairs`` times (default 5) with the order alternating, and
reports each pair's speed ratio, their median and their interquartile range.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from npgpt.backend import default_workers
from npgpt.bench.common import child_result, find_mpiexec, median, peak_rss_mb, quartiles, side_in_child
from npgpt.training.flops import DEFAULT_PEAK_FLOPS, flops_per_token, model_flops_utilisation

if TYPE_CHECKING:
    from npgpt.autograd import Tensor

WORKLOADS = {
    "train-small": dict(vocab_size=8192, block_size=128, seq_len=128, n_layer=4, n_head=4, n_embd=256,
                        batch_size=8, steps=10, warmup=3),
    # One thread with two-threaded BLAS: two shards are faster but each holds its own LM-head
    # gradient, which takes the peak memory above PyTorch's (docs/performance.md).
    "train-124m": dict(vocab_size=50257, block_size=1024, seq_len=256, n_layer=12, n_head=12, n_embd=768,
                       batch_size=4, steps=4, warmup=1, workers=1),
}
WORKLOAD = WORKLOADS["train-small"]
# Pairs of runs with --compare: a shared machine's speed drifts by +-30% within minutes, so one pair can
# say 0.74x or 1.06x for the same code (/work/shared/PERF_NOTES.md); the median of five is the figure.
DEFAULT_PAIRS = 5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workload", dest="train_workload", choices=sorted(WORKLOADS), default="train-small",
                        help="the model and batch (default train-small)")
    parser.add_argument("--steps", type=int, default=None,
                        help="measured steps (default 10 for train-small, 4 for train-124m)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="unmeasured steps first (default 3 for train-small, 1 for train-124m)")
    parser.add_argument("--pairs", type=int, default=None,
                        help="with --compare: run npgpt and the reference this many times each, alternating "
                             "which goes first, and report every pair's ratio, their median and interquartile "
                             f"range (default {DEFAULT_PAIRS})")
    parser.add_argument("--no-memory", action="store_true",
                        help="skip the memory breakdown (an extra, untimed step traced by tracemalloc)")
    parser.add_argument("--scaling", action="store_true",
                        help="how a step's time grows with the sequence length: train-small's model at T = "
                             "128, 256, 512, 1024 (batch 8), with the fitted exponent (docs/benchmarks.md)")
    parser.add_argument("--side", choices=["npgpt", "torch"], help=argparse.SUPPRESS)   # one side, in a child
    parser.add_argument("--peak-flops", type=float, default=DEFAULT_PEAK_FLOPS,
                        help=f"peak float32 FLOP/s of the machine for the MFU (default {DEFAULT_PEAK_FLOPS:.3g}: a 2-core "
                             "Zen 4's measured matmul peak, see docs/benchmarks.md)")
    parser.add_argument("--compare", choices=["torch"], default=None, help="also run PyTorch eager")
    parser.add_argument("--one-core", action="store_true",
                        help="each side on one thread (npgpt: one shard, one-threaded BLAS; PyTorch: "
                             "set_num_threads(1)): the code's efficiency, apart from how a loaded machine "
                             "schedules threads")
    parser.add_argument("--workers", type=int, default=None,
                        help="threads the batch is sharded over (default: one per core; 1 for train-124m; see "
                             "npgpt.training.parallel)")
    parser.add_argument("--ranks", type=int, default=1,
                        help="also run as this many MPI ranks x 1 thread (mpiexec) and report the ratio ranks / "
                             "one process with as many threads (docs/distributed.md)")
    parser.add_argument("--rank-worker", action="store_true", help=argparse.SUPPRESS)   # what mpiexec runs


def _batch(rng: np.random.Generator, cfg: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    tokens = rng.integers(0, cfg["vocab_size"], size=(cfg["batch_size"], cfg["seq_len"] + 1))
    return tokens[:, :-1], tokens[:, 1:]


def _model_config(cfg: dict[str, int]) -> Any:
    from npgpt.model import GPTConfig

    return GPTConfig(vocab_size=cfg["vocab_size"], block_size=cfg["block_size"], n_layer=cfg["n_layer"],
                     n_head=cfg["n_head"], n_embd=cfg["n_embd"], dropout=0.0)


def _time_steps(step: Callable[[], float], steps: int, warmup: int) -> tuple[float, float]:
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        loss = step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return median(times), loss


def run_npgpt(cfg: dict[str, int], steps: int, warmup: int, workers: Optional[int] = None,
              memory: bool = False) -> tuple[float, float, dict[str, float]]:
    """npgpt's side: (median step seconds, last loss, memory breakdown in MB, or {} without ``memory``)."""
    from npgpt import backend
    from npgpt.model import GPT
    from npgpt.training import parallel
    from npgpt.training.optim import AdamW, param_groups

    backend.retain_freed_memory()                 # as `npgpt train` does
    model = GPT(_model_config(cfg))
    optimizer = AdamW(param_groups(model, weight_decay=0.1), lr=3e-4)
    params = model.parameters()
    rng = np.random.default_rng(0)

    def loss_fn(x: np.ndarray, y: np.ndarray) -> Tensor:
        return model.loss(x, y)

    def step() -> float:
        x, y = _batch(rng, cfg)
        loss = parallel.forward_backward(loss_fn, (x, y), params, workers=workers)
        optimizer.step()
        optimizer.zero_grad()
        return loss

    seconds, loss = _time_steps(step, steps, warmup)
    breakdown = memory_breakdown(model, optimizer, loss_fn, _batch(rng, cfg)) if memory else {}
    return seconds, loss, breakdown


def memory_breakdown(model: Any, optimizer: Any, loss_fn: Callable[..., Tensor], batch: tuple) -> dict[str, float]:
    """Where a training step's memory goes, in MB (docs/performance.md, "Where the memory goes").

    Parameters, gradients and Adam's moments are counted from the arrays.
    Read with ``tracemalloc`` (NumPy reports its allocations to it) on one
    untimed step of the whole batch in one thread: ``activations``, what
    the graph holds when the forward pass ends (every array saved for the
    backward pass, and the loss); ``step_peak``, the most the step had
    allocated at any moment on top of the parameters and Adam's moments
    (activations not yet freed, gradients, temporaries). ``baseline_rss``
    is the process before the model existed: the interpreter, NumPy and its
    BLAS. Peak RSS is about baseline + parameters + moments + step peak.
    """
    import tracemalloc

    mb = 1e6
    params = model.parameters()
    out = {"parameters": sum(p.data.nbytes for p in params) / mb,
           "gradients": sum(p.data.nbytes for p in params) / mb,
           "adam_moments": sum(a.nbytes for state in optimizer.state.values()
                               for k, a in state.items() if k != "step") / mb}
    optimizer.zero_grad()
    tracemalloc.start()
    try:
        loss = loss_fn(*batch)
        out["activations"] = tracemalloc.get_traced_memory()[0] / mb
        loss.backward()
        del loss
        optimizer.step()
        out["step_peak"] = tracemalloc.get_traced_memory()[1] / mb
    finally:
        tracemalloc.stop()
    optimizer.zero_grad()
    out["baseline_rss"] = _BASELINE_RSS_MB
    return {k: round(v, 1) for k, v in out.items()}


_BASELINE_RSS_MB = peak_rss_mb()


def torch_gpt(cfg: dict[str, int], device: str = "cpu") -> Any:
    """The same GPT-2 in PyTorch eager: the reference the train benchmarks (here and ``gpu``) compare with."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    C, H = cfg["n_embd"], cfg["n_head"]

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln_1, self.ln_2 = nn.LayerNorm(C), nn.LayerNorm(C)
            self.c_attn, self.c_proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
            self.c_fc, self.mlp_proj = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            B, T, _ = x.shape
            q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
            q, k, v = (t.view(B, T, H, C // H).transpose(1, 2) for t in (q, k, v))
            y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.c_proj(y.transpose(1, 2).reshape(B, T, C))
            return x + self.mlp_proj(nn.functional.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))

    class TorchGPT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.wte = nn.Embedding(cfg["vocab_size"], C)
            self.wpe = nn.Embedding(cfg["block_size"], C)
            self.h = nn.ModuleList(Block() for _ in range(cfg["n_layer"]))
            self.ln_f = nn.LayerNorm(C)

        def forward(self, idx: torch.Tensor) -> torch.Tensor:
            x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
            for block in self.h:
                x = block(x)
            return self.ln_f(x) @ self.wte.weight.T

    model = TorchGPT()
    with torch.no_grad():             # GPT-2's initialisation (as npgpt's), so the loss starts at log V
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif p.ndim == 2:
                p.normal_(0.0, 0.02)
    return model.to(device)


def run_torch(cfg: dict[str, int], steps: int, warmup: int, memory: bool = False) -> tuple[float, float, dict]:
    """PyTorch's side: (median step seconds, last loss, memory facts in MB, or {} without ``memory``)."""
    import torch
    from torch import nn

    baseline = peak_rss_mb()               # the interpreter, NumPy and PyTorch's libraries
    model = torch_gpt(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
    rng = np.random.default_rng(0)

    def loss_of(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = model(x)
        return nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), y.reshape(-1))

    def step() -> float:
        x, y = (torch.from_numpy(a) for a in _batch(rng, cfg))
        loss = loss_of(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    seconds, loss = _time_steps(step, steps, warmup)
    facts = {}
    if memory:
        # What autograd saves for the backward pass: the storages the saved tensors live in,
        # each counted once (the same storage is often saved by two ops).
        storages = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            storage = t.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
            return t

        x, y = (torch.from_numpy(a) for a in _batch(rng, cfg))
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss_of(x, y).backward()
        optimizer.zero_grad(set_to_none=True)
        facts = {"activations_saved": round(sum(storages.values()) / 1e6, 1), "threads": torch.get_num_threads(),
                 "baseline_rss": round(baseline, 1)}
    return seconds, loss, facts


def run_ranks(cfg: dict[str, int], steps: int, warmup: int) -> dict[str, float]:
    """Inside ``mpiexec``: the same steps data-parallel over the world (global batch ``batch_size``).

    Also times the gradient all-reduce alone, the communication the scaling
    model of docs/distributed.md predicts.
    """
    from npgpt import backend
    from npgpt.model import GPT
    from npgpt.training import distributed, engine
    from npgpt.training.optim import AdamW, param_groups

    world = distributed.world()
    model = GPT(_model_config(cfg))
    optimizer = AdamW(param_groups(model, weight_decay=0.1), lr=3e-4)
    rng = np.random.default_rng(0)

    def loss_fn(x: np.ndarray, y: np.ndarray) -> Tensor:
        return model.loss(x, y)

    def step() -> float:
        return engine.optimizer_step(optimizer, loss_fn, [_batch(rng, cfg)], 3e-4, 1.0, workers=1,
                                     group=distributed.process_group(world)).loss

    with backend.blas_threads(1):
        seconds, loss = _time_steps(step, steps, warmup)
        params = model.parameters()
        for p in params:
            p.grad = np.ones_like(p.data)
        times = []
        for _ in range(steps):
            world.barrier()
            start = time.perf_counter()
            world.allreduce_grads(params)
            times.append(time.perf_counter() - start)
    return {"seconds": seconds, "loss": loss, "allreduce_s": median(times), "ranks": world.size,
            "grad_bytes": sum(int(p.size) * 4 for p in params)}


def _launch_ranks(ranks: int, steps: int, warmup: int) -> dict[str, float]:
    out = subprocess.run([find_mpiexec("train"), "-n", str(ranks), sys.executable, "-m", "npgpt.bench", "train", "--json",
                          "--rank-worker", "--steps", str(steps), "--warmup", str(warmup)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[0])


def _side(args: argparse.Namespace, cfg: dict[str, int], side: str) -> dict[str, Any]:
    """Measure one side in this process: its step time, loss, peak RSS and memory facts."""
    memory = not args.no_memory
    if side == "torch":
        if args.one_core:
            import torch

            torch.set_num_threads(1)
        seconds, loss, facts = run_torch(cfg, args.steps, args.warmup, memory)
    elif args.one_core:
        from npgpt.backend import blas_threads

        with blas_threads(1):
            seconds, loss, facts = run_npgpt(cfg, args.steps, args.warmup, 1, memory)
    else:
        seconds, loss, facts = run_npgpt(cfg, args.steps, args.warmup, args.workers, memory)
    return {"seconds": seconds, "loss": loss, "peak_rss_mb": round(peak_rss_mb(), 1), "memory": facts}


def _side_in_child(args: argparse.Namespace, side: str) -> dict[str, Any]:
    """Run ``_side`` in a fresh interpreter, so that its peak RSS is its own."""
    flags = ["--workload", args.train_workload, "--steps", str(args.steps), "--warmup", str(args.warmup)]
    if args.workers is not None:
        flags += ["--workers", str(args.workers)]
    if args.no_memory:
        flags.append("--no-memory")
    if args.one_core:
        flags.append("--one-core")
    return child_result("train", side, side_in_child("train", side, flags))


SCALING_LENGTHS = (128, 256, 512, 1024)


def run_scaling(steps: int, warmup: int, workers: Optional[int]) -> dict[str, Any]:
    """Step time of train-small's model against the sequence length T (batch 8 throughout).

    The work of a step is ``B T (6 N + 12 L C T)`` FLOPs (docs/performance.md eq:flops-per-token): linear in
    T but for attention's term, which is quadratic, so the fitted exponent of time against T
    should lie a little above 1 and the time per token grow only by attention's share.
    """
    from npgpt.bench.common import fit_exponent

    rows = []
    for T in SCALING_LENGTHS:
        cfg = dict(WORKLOADS["train-small"], block_size=T, seq_len=T)
        seconds, _, _ = run_npgpt(cfg, steps, warmup, workers)
        tokens = cfg["batch_size"] * T
        fpt = flops_per_token(_model_config(cfg), T)
        rows.append({"T": T, "step_ms": round(1000 * seconds, 1), "us_per_token": round(1e6 * seconds / tokens, 2),
                     "flops_per_token": fpt, "mfu": round(model_flops_utilisation(tokens / seconds, fpt), 3)})
    sizes = [r["T"] for r in rows]
    return {"workload": "train-small-vs-T", "rows": rows,
            "exponent_step_vs_T": round(fit_exponent(sizes, [r["step_ms"] for r in rows]), 3),
            "exponent_flops_vs_T": round(fit_exponent(sizes, [r["T"] * r["flops_per_token"] for r in rows]), 3)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.scaling:
        return run_scaling(args.steps or 3, 1 if args.warmup is None else args.warmup, args.workers)
    cfg = WORKLOADS[args.train_workload]
    if args.workers is None:
        args.workers = cfg.get("workers")     # the workload's own choice, else one per core
    args.steps = cfg["steps"] if args.steps is None else args.steps
    args.warmup = cfg["warmup"] if args.warmup is None else args.warmup
    args.pairs = DEFAULT_PAIRS if args.pairs is None else args.pairs
    if args.steps < 1 or args.warmup < 0 or args.pairs < 1:
        raise SystemExit("npgpt.bench train: --steps and --pairs must be >= 1 and --warmup >= 0")
    if args.side:
        return _side(args, cfg, args.side)
    if args.rank_worker:
        from npgpt.training import distributed

        result = run_ranks(cfg, args.steps, args.warmup)
        if not distributed.world().is_main:
            raise SystemExit(0)                    # rank 0 reports for the job
        return result
    tokens = cfg["batch_size"] * cfg["seq_len"]
    fpt = flops_per_token(_model_config(cfg), cfg["seq_len"])
    if args.compare == "torch":
        mine, theirs = [], []
        for pair in range(args.pairs):            # alternate who goes first: the machine drifts
            for side in (("npgpt", "torch") if pair % 2 == 0 else ("torch", "npgpt")):
                (mine if side == "npgpt" else theirs).append(_side_in_child(args, side))
        npgpt_side = mine[len(mine) // 2]
    else:
        npgpt_side = _side(args, cfg, "npgpt")
        mine, theirs = [npgpt_side], []
    seconds = median(m["seconds"] for m in mine)
    result = {
        "workload": args.train_workload,
        "step_ms": round(1000 * seconds, 1),
        "tokens_per_s": round(tokens / seconds, 1),
        "mfu": round(model_flops_utilisation(tokens / seconds, fpt, args.peak_flops), 3),
        "peak_rss_mb": max(m["peak_rss_mb"] for m in mine),
        "final_loss": round(npgpt_side["loss"], 4),
        "workers": 1 if args.one_core else args.workers or default_workers(),
        "one_core": args.one_core,
        "flops_per_token": fpt,
    }
    if npgpt_side["memory"]:
        result["memory_mb"] = npgpt_side["memory"]
    if args.ranks > 1:
        ranked = _launch_ranks(args.ranks, args.steps, args.warmup)
        single, _, _ = run_npgpt(cfg, args.steps, args.warmup, args.ranks)
        one_thread, _, _ = run_npgpt(cfg, args.steps, args.warmup, 1)
        # The scaling model's check (docs/distributed.md): a rank computes 1/N of the batch on one
        # core, then waits for the all-reduce.
        predicted = one_thread / args.ranks + ranked["allreduce_s"]
        result.update({
            "one_thread_step_ms": round(1000 * one_thread, 1),
            "ranks_step_ms": round(1000 * ranked["seconds"], 1),
            "predicted_ranks_step_ms": round(1000 * predicted, 1),
            "ranks": args.ranks,
            "ranks_tokens_per_s": round(tokens / ranked["seconds"], 1),
            "threads_tokens_per_s": round(tokens / single, 1),
            "ratio": round(single / ranked["seconds"], 3),
            "allreduce_ms": round(1000 * ranked["allreduce_s"], 2),
            "grad_mb": round(ranked["grad_bytes"] / 1e6, 1),
        })
    if theirs:
        ratios = [t["seconds"] / m["seconds"] for m, t in zip(mine, theirs)]
        torch_seconds = median(t["seconds"] for t in theirs)
        result.update({
            "torch_step_ms": round(1000 * torch_seconds, 1),
            "torch_tokens_per_s": round(tokens / torch_seconds, 1),
            "torch_final_loss": round(theirs[0]["loss"], 4),
            "torch_peak_rss_mb": max(t["peak_rss_mb"] for t in theirs),
            "speed_ratio_vs_torch": round(median(ratios), 3),
            "speed_ratio_iqr": [round(q, 3) for q in quartiles(ratios)],
            "speed_ratios": [round(r, 3) for r in ratios],
            "pairs": args.pairs,
            "load": [round(x, 2) for x in os.getloadavg()],
            "rss_ratio_vs_torch": round(max(m["peak_rss_mb"] for m in mine) /
                                        max(t["peak_rss_mb"] for t in theirs), 3),
        })
        if theirs[0]["memory"]:
            result["torch_memory_mb"] = theirs[0]["memory"]
    return result
