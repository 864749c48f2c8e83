"""train-small: full training steps (forward, cross-entropy, backward, AdamW) of a small GPT.

The workload: vocab 8,192, block 128, 4 layers, 4 heads, n_embd 256, batch 8, float32,
dropout 0, random tokens (seed 0). Reports the median step time over ``--steps`` steps after
``--warmup`` steps, tokens/s, the model FLOPs utilisation (MFU) against ``--peak-flops``, and
the peak resident memory. ``--compare torch`` runs the same model, written in PyTorch eager,
in the same process afterwards, and reports the speed ratio.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from npgpt.bench.common import median, peak_rss_mb
from npgpt.flops import DEFAULT_PEAK_FLOPS, flops_per_token, model_flops_utilisation
from npgpt.parallel import default_workers

if TYPE_CHECKING:
    from npgpt.autograd import Tensor

WORKLOAD = dict(vocab_size=8192, block_size=128, n_layer=4, n_head=4, n_embd=256, batch_size=8)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=10, help="measured steps (default 10)")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured steps first (default 3)")
    parser.add_argument("--peak-flops", type=float, default=DEFAULT_PEAK_FLOPS,
                        help=f"peak float32 FLOP/s of the machine for the MFU (default {DEFAULT_PEAK_FLOPS:.3g}: a 2-core "
                             "Zen 4's measured matmul peak, see docs/benchmarks.md)")
    parser.add_argument("--compare", choices=["torch"], default=None, help="also run PyTorch eager")
    parser.add_argument("--workers", type=int, default=None,
                        help="threads the batch is sharded over (default: one per core; see npgpt.parallel)")
    parser.add_argument("--ranks", type=int, default=1,
                        help="also run as this many MPI ranks x 1 thread (mpiexec) and report the ratio ranks / "
                             "one process with as many threads (docs/distributed.md)")
    parser.add_argument("--rank-worker", action="store_true", help=argparse.SUPPRESS)   # what mpiexec runs


def _batch(rng: np.random.Generator, cfg: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    tokens = rng.integers(0, cfg["vocab_size"], size=(cfg["batch_size"], cfg["block_size"] + 1))
    return tokens[:, :-1], tokens[:, 1:]


def _time_steps(step: Callable[[], float], steps: int, warmup: int) -> tuple[float, float]:
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        loss = step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return median(times), loss


def run_npgpt(cfg: dict[str, int], steps: int, warmup: int, workers: Optional[int] = None) -> tuple[float, float, int]:
    import npgpt.functional as F
    from npgpt import parallel
    from npgpt.model import GPT, GPTConfig
    from npgpt.optim import AdamW, param_groups

    model = GPT(GPTConfig(vocab_size=cfg["vocab_size"], block_size=cfg["block_size"], n_layer=cfg["n_layer"],
                          n_head=cfg["n_head"], n_embd=cfg["n_embd"], dropout=0.0))
    optimizer = AdamW(param_groups(model, weight_decay=0.1), lr=3e-4)
    params = model.parameters()
    rng = np.random.default_rng(0)

    def loss_fn(x: np.ndarray, y: np.ndarray) -> Tensor:
        return F.cross_entropy(model(x), y)

    def step() -> float:
        x, y = _batch(rng, cfg)
        loss = parallel.forward_backward(loss_fn, (x, y), params, workers=workers)
        optimizer.step()
        optimizer.zero_grad()
        return loss

    seconds, loss = _time_steps(step, steps, warmup)
    return seconds, loss, flops_per_token(model)


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

    return TorchGPT().to(device)


def run_torch(cfg: dict[str, int], steps: int, warmup: int) -> tuple[float, float, int]:
    import torch
    from torch import nn

    model = torch_gpt(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
    rng = np.random.default_rng(0)

    def step() -> float:
        x, y = (torch.from_numpy(a) for a in _batch(rng, cfg))
        logits = model(x)
        loss = nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    seconds, loss = _time_steps(step, steps, warmup)
    return seconds, loss, torch.get_num_threads()


def run_ranks(cfg: dict[str, int], steps: int, warmup: int) -> dict[str, float]:
    """Inside ``mpiexec``: the same steps data-parallel over the world (global batch ``batch_size``).

    Also times the gradient all-reduce alone, the communication the scaling
    model of docs/distributed.md predicts.
    """
    import npgpt.functional as F
    from npgpt import backend, distributed, engine
    from npgpt.model import GPT, GPTConfig
    from npgpt.optim import AdamW, param_groups

    world = distributed.world()
    model = GPT(GPTConfig(vocab_size=cfg["vocab_size"], block_size=cfg["block_size"], n_layer=cfg["n_layer"],
                          n_head=cfg["n_head"], n_embd=cfg["n_embd"], dropout=0.0))
    optimizer = AdamW(param_groups(model, weight_decay=0.1), lr=3e-4)
    rng = np.random.default_rng(0)

    def loss_fn(x: np.ndarray, y: np.ndarray) -> Tensor:
        return F.cross_entropy(model(x), y)

    def step() -> float:
        return engine.optimizer_step(optimizer, loss_fn, [_batch(rng, cfg)], 3e-4, 1.0, workers=1, world=world).loss

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
    import json
    import shutil
    import subprocess
    import sys

    mpiexec = shutil.which("mpiexec")
    if mpiexec is None:
        raise SystemExit("npgpt.bench train --ranks: mpiexec not found (pip install -e \".[mpi]\")")
    out = subprocess.run([mpiexec, "-n", str(ranks), sys.executable, "-m", "npgpt.bench", "train", "--json",
                          "--rank-worker", "--steps", str(steps), "--warmup", str(warmup)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[0])


def run(args: argparse.Namespace) -> dict[str, Any]:
    cfg = WORKLOAD
    if args.rank_worker:
        from npgpt import distributed

        result = run_ranks(cfg, args.steps, args.warmup)
        if not distributed.world().is_main:
            raise SystemExit(0)                    # rank 0 reports for the job
        return result
    tokens = cfg["batch_size"] * cfg["block_size"]
    seconds, loss, fpt = run_npgpt(cfg, args.steps, args.warmup, args.workers)
    result = {
        "workload": "train-small",
        "step_ms": round(1000 * seconds, 1),
        "tokens_per_s": round(tokens / seconds, 1),
        "mfu": round(model_flops_utilisation(tokens / seconds, fpt, args.peak_flops), 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "final_loss": round(loss, 4),
        "workers": args.workers or default_workers(),
        "flops_per_token": fpt,
    }
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
    if args.compare == "torch":
        torch_seconds, torch_loss, threads = run_torch(cfg, args.steps, args.warmup)
        result.update({
            "torch_step_ms": round(1000 * torch_seconds, 1),
            "torch_tokens_per_s": round(tokens / torch_seconds, 1),
            "torch_threads": threads,
            "speed_ratio_vs_torch": round(torch_seconds / seconds, 3),
        })
    return result
