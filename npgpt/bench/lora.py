"""A LoRA training step against a full fine-tuning step, in npgpt and in PyTorch + peft.

The model is npgpt-small's shape (vocab 8,192, block 128, 4 layers, 4 heads, n_embd 256), batch 8
of 128 random tokens, float32, dropout 0, AdamW. Four sides, each in a process of its own so that
each peak resident memory is its own:

* ``npgpt-full``: every weight trains;
* ``npgpt-lora``: ``apply_lora`` (rank ``--rank``, alpha 2r, on c_attn, c_proj and c_fc), the rest frozen;
* ``torch-full``: ``transformers``' GPT2LMHeadModel of the same shape, every weight trains;
* ``torch-lora``: the same wrapped by ``peft.get_peft_model`` with the same LoRA settings.

Reports tokens/s (median step over ``--steps`` after ``--warmup``), peak RSS and trainable
parameters of each, and the ratios: LoRA against full fine-tuning within each library, and
npgpt's LoRA step against peft's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import Any

import numpy as np

from npgpt.bench.common import peak_rss_mb
from npgpt.bench.train import _batch, _time_steps

SHAPE = dict(vocab_size=8192, block_size=128, seq_len=128, n_layer=4, n_head=4, n_embd=256, batch_size=8)
TARGETS = ("c_attn", "c_proj", "c_fc")
SIDES = ("npgpt-full", "npgpt-lora", "torch-full", "torch-lora")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=10, help="measured steps (default 10)")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured steps first (default 3)")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank (default 8; alpha is 2 r)")
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)       # one side, in a child


def _npgpt_side(lora_rank: int, steps: int, warmup: int) -> dict[str, Any]:
    from npgpt import backend
    from npgpt.finetuning import lora
    from npgpt.model import GPT, GPTConfig
    from npgpt.training import parallel
    from npgpt.training.optim import AdamW, param_groups

    backend.retain_freed_memory()               # as the training commands do
    model = GPT(GPTConfig(**{k: v for k, v in SHAPE.items() if k not in ("seq_len", "batch_size")}))
    if lora_rank:
        lora.apply_lora(model, lora.LoRAConfig(rank=lora_rank, alpha=2 * lora_rank, targets=TARGETS))
    optimizer = AdamW(param_groups(model, weight_decay=0.1), lr=3e-4)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    rng = np.random.default_rng(0)

    def step() -> float:
        x, y = _batch(rng, SHAPE)
        loss = parallel.forward_backward(model.loss, (x, y), params)
        optimizer.step()
        optimizer.zero_grad()
        return loss

    seconds, loss = _time_steps(step, steps, warmup)
    trainable, total = lora.trainable_parameters(model)
    return {"seconds": seconds, "loss": float(loss), "trainable": trainable, "total": total}


def _torch_side(lora_rank: int, steps: int, warmup: int) -> dict[str, Any]:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=SHAPE["vocab_size"], n_positions=SHAPE["block_size"], n_layer=SHAPE["n_layer"],
                        n_head=SHAPE["n_head"], n_embd=SHAPE["n_embd"], resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0)
    model: Any = GPT2LMHeadModel(config)
    if lora_rank:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=lora_rank, lora_alpha=2 * lora_rank, target_modules=list(TARGETS),
                                                 lora_dropout=0.0, fan_in_fan_out=True))
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=3e-4, weight_decay=0.1)
    rng = np.random.default_rng(0)

    def step() -> float:
        x, y = (torch.from_numpy(a) for a in _batch(rng, SHAPE))
        logits = model(input_ids=x).logits
        loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    seconds, loss = _time_steps(step, steps, warmup)
    return {"seconds": seconds, "loss": float(loss), "trainable": sum(p.numel() for p in trainable),
            "total": sum(p.numel() for p in model.parameters())}


def _side_in_child(args: argparse.Namespace, side: str) -> dict[str, Any]:
    command = [sys.executable, "-m", "npgpt.bench", "lora", "--json", "--side", side, "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--rank", str(args.rank)]
    out = subprocess.run(command, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"npgpt.bench lora: the {side} side failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.steps < 1 or args.warmup < 0 or args.rank < 1:
        raise SystemExit("npgpt.bench lora: --steps and --rank must be >= 1 and --warmup >= 0")
    if args.side:
        library, kind = args.side.split("-")
        rank = args.rank if kind == "lora" else 0
        result = (_npgpt_side if library == "npgpt" else _torch_side)(rank, args.steps, args.warmup)
        result["peak_rss_mb"] = round(peak_rss_mb(), 1)
        return result
    tokens = SHAPE["batch_size"] * SHAPE["seq_len"]
    sides = {side: _side_in_child(args, side) for side in SIDES}
    result: dict[str, Any] = {"workload": "lora-small", "rank": args.rank, "targets": ",".join(TARGETS),
                              "tokens_per_step": tokens}
    for side, m in sides.items():
        key = side.replace("-", "_")
        result[f"{key}_tokens_per_s"] = round(tokens / m["seconds"], 1)
        result[f"{key}_peak_rss_mb"] = m["peak_rss_mb"]
        result[f"{key}_trainable"] = m["trainable"]
    result["trainable_share_npgpt"] = round(sides["npgpt-lora"]["trainable"] / sides["npgpt-lora"]["total"], 5)

    def ratio(a: str, b: str, what: str) -> float:
        if what == "speed":
            return round(sides[b]["seconds"] / sides[a]["seconds"], 3)
        return round(sides[a]["peak_rss_mb"] / sides[b]["peak_rss_mb"], 3)

    result.update({
        "npgpt_lora_vs_full_speed": ratio("npgpt-lora", "npgpt-full", "speed"),
        "npgpt_lora_vs_full_rss": ratio("npgpt-lora", "npgpt-full", "rss"),
        "torch_lora_vs_full_speed": ratio("torch-lora", "torch-full", "speed"),
        "torch_lora_vs_full_rss": ratio("torch-lora", "torch-full", "rss"),
        "npgpt_lora_vs_peft_speed": ratio("npgpt-lora", "torch-lora", "speed"),
        "npgpt_lora_vs_peft_rss": ratio("npgpt-lora", "torch-lora", "rss"),
        "median_step_ms": {side: round(1000 * m["seconds"], 1) for side, m in sides.items()},
    })
    return result


__all__ = ["run", "add_arguments"]
