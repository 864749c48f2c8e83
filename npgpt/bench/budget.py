"""The launch and traffic budget of a GPU train step and of a decoded token, counted on the CuPy stand-in.

``python -m npgpt.bench gpu --count --json`` (docs/gpu.md, "The launch and traffic budget").
No GPU is needed: the workloads run on the CuPy stand-in of the test suite
(``tests/fake_cupy.py``, so a source checkout is needed), which counts every call that would
launch a kernel on a GPU, the bytes each reads and writes, and every host <-> device copy.

* **train step** of GPT-2 124M at T 1,024, batch 8, float32: the batch's copy to the device,
  forward, fused head and loss, backward, the gradient norm and clipping, AdamW, zeroing.
  The second step is counted (the first creates AdamW's moments).
* **greedy token** of GPT-2 124M at batch 1 with the KV cache: the third token after a
  16-token prompt (the forward of one position, the argmax, the token read to the host).

How the figures for 124M at batch 8 are obtained without holding its activations (a
(8, 12, 1024, 1024) attention array is 403 MB, a layer keeps several): launches do not
depend on the widths or on T (an op is one launch whatever its size), only on the number of
layers, heads and parameters and on the row count N = B T, through the two loops that cut
their work in blocks (the fused head: rows of ~64 MB of logits; the embedding gradient's
one-hot blocks: ``ceil(V / floor(2**26 / N))``). So the launches are counted on GPT-2's
structure (12 layers, 12 heads, vocabulary 50,257) made narrow (n_embd 48) at B 64, T 128
(N = 8,192, as B 8, T 1,024), and once at the full width at B 1, T 1,024 against the narrow
model at B 8, T 128 (both N = 1,024), which must agree within 1% (a few launches differ with
the data: which targets need a check, how many groups have gradients). Bytes are counted on the full
124M at T 1,024 with B 1 and B 2 and extrapolated to B 8 linearly (every array is either
independent of B or proportional to it; the blocked loops above round their block counts
up, which the extrapolation smooths: a difference below 0.3% of the total).

The floors are what an H100 SXM could not beat: the FLOPs at its dense peak, the bytes at
its memory bandwidth (NVIDIA H100 Tensor Core GPU datasheet: 67 TFLOP/s float32, 989 TFLOP/s
float16/bfloat16 tensor cores without sparsity, HBM3 3.35 TB/s).
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys
import time
from typing import Any

import numpy as np

from npgpt.training.flops import DEVICE_PEAKS, flops_per_token

__all__ = ["H100", "count", "load_stand_in", "train_step_counts", "greedy_token_counts"]

H100 = {"device": "NVIDIA H100 SXM5 80GB", "float32_flops": dict(DEVICE_PEAKS)["H100"]["float32"],
        "float16_flops": dict(DEVICE_PEAKS)["H100"]["float16"], "bytes_per_s": 3.35e12,
        "source": "NVIDIA H100 Tensor Core GPU datasheet (SXM5: FP32 67 TFLOPS, FP16/BF16 tensor 989 TFLOPS "
                  "dense, HBM3 3.35 TB/s)"}

GPT2 = dict(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768)
NARROW = dict(GPT2, n_embd=48)          # GPT-2's structure, 1/16 of its width: the same launches
QUICK = dict(vocab_size=512, block_size=64, n_layer=2, n_head=2, n_embd=64)


def load_stand_in() -> Any:
    """The CuPy stand-in module (``tests/fake_cupy.py`` of the source checkout), imported once."""
    if "fake_cupy" in sys.modules:
        return sys.modules["fake_cupy"]
    path = pathlib.Path(__file__).resolve().parents[2] / "tests" / "fake_cupy.py"
    if not path.is_file():
        raise SystemExit(f"npgpt.bench gpu --count runs on the CuPy stand-in {path}, which only a source checkout "
                         "has (git clone, then pip install -e .)")
    spec = importlib.util.spec_from_file_location("fake_cupy", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["fake_cupy"] = module
    spec.loader.exec_module(module)
    return module


def _measure(stand_in: Any, work: Any) -> dict[str, int]:
    """Launches, bytes and copies of one call of ``work`` on the stand-in."""
    stand_in.reset_kernels()
    stand_in.reset_transfers()
    work()
    k, t = stand_in.kernels(), stand_in.transfers()
    return {"launches": k["launches"], "graph_nodes": stand_in.replayed_nodes(), "bytes_read": k["bytes_read"],
            "bytes_written": k["bytes_written"],
            "bytes": k["bytes_read"] + k["bytes_written"], "to_device": t["to_device"], "to_host": t["to_host"]}


def train_step_counts(stand_in: Any, cfg: dict[str, int], batch: int, T: int) -> dict[str, int]:
    """The counts of the second float32 train step (AdamW, clipping at 1.0) of a GPT of ``cfg``."""
    from npgpt.backend import to_device
    from npgpt.model import GPT, GPTConfig
    from npgpt.training import engine
    from npgpt.training.optim import AdamW, param_groups

    model = GPT(GPTConfig(**cfg), seed=0).to("cuda")
    model.train()
    optimizer = AdamW(param_groups(model, 0.1), lr=3e-4)
    host = np.random.default_rng(0).integers(0, cfg["vocab_size"], (batch, T + 1))

    def step() -> None:
        tokens = to_device(host, "cuda")
        engine.optimizer_step(optimizer, model.loss, [(tokens[:, :-1], tokens[:, 1:])], 3e-4, 1.0, workers=1)

    step()
    return _measure(stand_in, step)


def greedy_token_counts(stand_in: Any, cfg: dict[str, int], cuda_graph: bool = False,
                        new_tokens: int = 8) -> dict[str, int]:
    """The counts of the third greedy token (batch 1, KV cache) after a 16-token prompt, of ``new_tokens``.

    ``cuda_graph``: decoded by ``generate(..., cuda_graph=True)``, each token one replay of the
    captured step (``npgpt.generation.cuda_graph``); its cache holds ``capacity(16 + new_tokens)``
    positions, all read every token. ``graph_nodes`` counts the kernels the replay runs.
    """
    from npgpt.generation import stream
    from npgpt.model import GPT, GPTConfig

    model = GPT(GPTConfig(**cfg), seed=0).to("cuda").eval()
    prompt = np.random.default_rng(0).integers(0, cfg["vocab_size"], (1, 16))
    tokens = stream(model, prompt, new_tokens, cuda_graph=cuda_graph)
    next(tokens)                           # the prompt
    next(tokens)
    counts = _measure(stand_in, lambda: next(tokens))
    tokens.close()
    return counts


def _graph_token(stand_in: Any, cfg: dict[str, int], plain: dict[str, int]) -> dict[str, Any]:
    """The same token decoded as one CUDA graph replay: with 8 new tokens (a cache of 32 positions) and
    with ``block_size - 16`` (the whole context: the largest static cache), beside the plain token."""
    from npgpt.generation.cuda_graph import capacity

    short = greedy_token_counts(stand_in, cfg, cuda_graph=True)
    full = greedy_token_counts(stand_in, cfg, cuda_graph=True, new_tokens=cfg["block_size"] - 16)
    return {**short, "cache_positions": capacity(16 + 8, cfg["block_size"]), "live_positions": 18,
            "launches_without_graph": plain["launches"], "extra_bytes": short["bytes"] - plain["bytes"],
            "whole_context": {"cache_positions": cfg["block_size"], "launches": full["launches"],
                              "graph_nodes": full["graph_nodes"], "bytes": full["bytes"],
                              "extra_bytes": full["bytes"] - plain["bytes"]}}


def _floors(flops: float, moved: float, dtype: str = "float32") -> dict[str, float]:
    return {"flop_floor_ms": round(1e3 * flops / H100[f"{dtype}_flops"], 3),
            "byte_floor_ms": round(1e3 * moved / H100["bytes_per_s"], 3)}


def count(quick: bool = False) -> dict[str, Any]:
    """The budget of GPT-2 124M (``quick``: of a tiny model, to test the code paths; no meaning)."""
    stand_in = load_stand_in()
    was_installed = stand_in.installed()
    stand_in.install()
    start = time.perf_counter()
    try:
        if quick:
            train = train_step_counts(stand_in, QUICK, 2, 32)
            token = greedy_token_counts(stand_in, QUICK)
            result = {"config": QUICK, "batch": 2, "block_size": 32, "train_step": train, "greedy_token": token,
                      "greedy_token_cuda_graph": _graph_token(stand_in, QUICK, token)}
        else:
            result = _full(stand_in)
    finally:
        if not was_installed:
            stand_in.uninstall()
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def _full(stand_in: Any) -> dict[str, Any]:
    """GPT-2 124M: launches from the narrow model at N = 8,192, bytes extrapolated from B 1 and 2."""
    from npgpt.model import GPTConfig

    launches = train_step_counts(stand_in, NARROW, 64, 128)
    check_narrow = train_step_counts(stand_in, NARROW, 8, 128)
    one, two = (train_step_counts(stand_in, GPT2, b, 1024) for b in (1, 2))
    if abs(check_narrow["launches"] - one["launches"]) > 0.01 * one["launches"]:
        raise RuntimeError(f"the narrow model launched {check_narrow['launches']} kernels at N = 1024, GPT-2 "
                           f"{one['launches']}: the launch count depends on the widths, and the budget's method fails")
    train = {"launches": launches["launches"], "to_device": launches["to_device"], "to_host": launches["to_host"]}
    for key in ("bytes_read", "bytes_written", "bytes"):
        train[key] = one[key] + 7 * (two[key] - one[key])
    tokens = 8 * 1024
    flops = flops_per_token(GPTConfig(**GPT2)) * tokens
    train.update(flops=flops, **_floors(flops, train["bytes"]))
    token = greedy_token_counts(stand_in, GPT2)
    token_flops = 2 * (GPTConfig(**GPT2).num_parameters() - GPT2["block_size"] * GPT2["n_embd"])
    token.update(flops=token_flops, **_floors(token_flops, token["bytes"]))
    graph = _graph_token(stand_in, GPT2, token)
    graph.update(flops=token_flops, **_floors(token_flops, graph["bytes"]))
    graph["whole_context"]["byte_floor_ms"] = _floors(token_flops, graph["whole_context"]["bytes"])["byte_floor_ms"]
    return {"config": GPT2, "batch": 8, "block_size": 1024, "dtype": "float32", "floors_on": H100,
            "train_step": train, "greedy_token": token, "greedy_token_cuda_graph": graph,
            "method": {"launches": "counted on GPT-2's structure at n_embd 48, B 64, T 128 (N = 8,192); the same "
                                   "at N = 1,024 as the full width (checked)",
                       "bytes": "full 124M at T 1,024, B 1 and 2, extrapolated linearly to B 8",
                       "train_launches_n1024": one["launches"], "narrow_launches_n1024": check_narrow["launches"],
                       "train_bytes_b1": one["bytes"],
                       "train_bytes_b2": two["bytes"]}}
