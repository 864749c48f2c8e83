"""Fine-tuning steps against peft + PyTorch and TRL: LoRA and SFT (masked loss), tokens/s and peak memory.

The model is npgpt-small's shape (vocab 8,192, block 128, 4 layers, 4 heads, n_embd 256), batch 8
of 128 random tokens, float32, dropout 0, AdamW (lr 3e-4, weight decay 0.1), LoRA rank ``--rank``
with alpha 2r on c_attn, c_proj and c_fc. Six sides, each in a process of its own so that each
peak resident memory is its own:

* ``npgpt-full``: every weight trains; ``npgpt-lora``: ``apply_lora``, the rest frozen;
* ``torch-full``: ``transformers``' GPT2LMHeadModel of the same shape, every weight trains;
  ``torch-lora``: the same wrapped by ``peft.get_peft_model`` with the same LoRA settings;
* ``npgpt-sft``: npgpt's LoRA step on the SFT loss (docs/agent.md eq:sft-loss): the first half of each
  row is the prompt, its targets masked with the ignore index, the second half the answer;
* ``trl-sft``: TRL's ``SFTTrainer`` (``completion_only_loss``, the same rows with TRL's
  ``completion_mask``, peft's LoRA) as a user runs it, timed step by step by a callback
  (needs ``trl``; skipped without it).

The machine drifts while others use it (docs/benchmarks.md, "Measuring a ratio"), so the sides
run in ``--rounds`` rounds, the order reversed every other round, and each ratio is taken within a
round: reported as the median over the rounds with its range. Per side: tokens/s (median step
after ``--warmup``), peak RSS, and the RSS the steps added to the process after the model and the
optimizer were built (``step_rss``: the step's own memory, without the libraries').
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from npgpt.bench.common import child_result, median, peak_rss_mb, side_in_child
from npgpt.bench.train import _batch, _time_steps

SHAPE = dict(vocab_size=8192, block_size=128, seq_len=128, n_layer=4, n_head=4, n_embd=256, batch_size=8)
TARGETS = ("c_attn", "c_proj", "c_fc")
SIDES = ("npgpt-full", "npgpt-lora", "torch-full", "torch-lora", "npgpt-sft", "trl-sft")
PAIRS = {   # ratio name: (side, reference side)
    "npgpt_lora_vs_peft": ("npgpt-lora", "torch-lora"),
    "npgpt_sft_vs_trl": ("npgpt-sft", "trl-sft"),
    "npgpt_lora_vs_full": ("npgpt-lora", "npgpt-full"),
    "peft_lora_vs_full": ("torch-lora", "torch-full"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=10, help="measured steps per side (default 10)")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured steps first (default 3)")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank (default 8; alpha is 2 r)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of all sides, order alternating (default 3)")
    parser.add_argument("--sides", default=",".join(SIDES), help="comma-separated sides to run (default: all six)")
    parser.add_argument("--torch-threads", type=int, default=0,
                        help="PyTorch's threads on the torch and TRL sides (default 0: PyTorch's own choice, one per "
                             "core; 1 holds up far better on a machine other jobs share)")
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)       # one side, in a child


def _rss_mb() -> float:
    """The resident set size now, in MiB (Linux's /proc; 0 where it is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


def _sft_targets(y: np.ndarray) -> np.ndarray:
    """The SFT side's targets: the first half of each row (the prompt) masked with the ignore index."""
    from npgpt.finetuning.conversations import IGNORE_INDEX

    y = y.copy()
    y[:, : y.shape[1] // 2] = IGNORE_INDEX
    return y


def _npgpt_side(lora_rank: int, steps: int, warmup: int, sft: bool = False) -> dict[str, Any]:
    from npgpt import backend
    from npgpt.finetuning import lora
    from npgpt.finetuning.conversations import count_trained
    from npgpt.finetuning.sft import step_loss
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
        if sft:
            y = _sft_targets(y)
            loss_fn = step_loss(model, x.shape[0], count_trained(y))
        else:
            loss_fn = model.loss
        loss = parallel.forward_backward(loss_fn, (x, y), params)
        optimizer.step()
        optimizer.zero_grad()
        return loss

    built = _rss_mb()
    seconds, loss = _time_steps(step, steps, warmup)
    trainable, total = lora.trainable_parameters(model)
    return {"seconds": seconds, "loss": float(loss), "trainable": trainable, "total": total, "built_rss_mb": built}


def _torch_model(lora_rank: int) -> Any:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    threads = int(os.environ.get("NPGPT_BENCH_TORCH_THREADS", "0"))
    if threads:
        torch.set_num_threads(threads)

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=SHAPE["vocab_size"], n_positions=SHAPE["block_size"], n_layer=SHAPE["n_layer"],
                        n_head=SHAPE["n_head"], n_embd=SHAPE["n_embd"], resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0)
    model: Any = GPT2LMHeadModel(config)
    if lora_rank:
        from peft import get_peft_model

        model = get_peft_model(model, _peft_config(lora_rank))
    return model


def _peft_config(lora_rank: int) -> Any:
    from peft import LoraConfig

    return LoraConfig(r=lora_rank, lora_alpha=2 * lora_rank, target_modules=list(TARGETS), lora_dropout=0.0,
                      fan_in_fan_out=True)


def _torch_side(lora_rank: int, steps: int, warmup: int) -> dict[str, Any]:
    import torch

    model = _torch_model(lora_rank)
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

    built = _rss_mb()
    seconds, loss = _time_steps(step, steps, warmup)
    return {"seconds": seconds, "loss": float(loss), "trainable": sum(p.numel() for p in trainable),
            "total": sum(p.numel() for p in model.parameters()), "built_rss_mb": built}


def _trl_side(lora_rank: int, steps: int, warmup: int) -> dict[str, Any]:
    """TRL's SFTTrainer on rows of 128 tokens whose second half is the completion, timed by a callback."""
    import tempfile
    import time

    from datasets import Dataset
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    V, B, T = SHAPE["vocab_size"], SHAPE["batch_size"], SHAPE["seq_len"]
    words = Tokenizer(models.WordLevel({f"t{i}": i for i in range(V)}, unk_token="t0"))   # ids are all it needs
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, pad_token="t0", eos_token="t1")
    rows = B * (steps + warmup)
    ids = np.random.default_rng(0).integers(2, V, size=(rows, T))
    data = Dataset.from_dict({"input_ids": ids.tolist(), "completion_mask": [[0] * (T // 2) + [1] * (T - T // 2)] * rows})
    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.start = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            times.append(time.perf_counter() - self.start)

    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(output_dir=out, per_device_train_batch_size=B, max_steps=steps + warmup, learning_rate=3e-4,
                         weight_decay=0.1, lr_scheduler_type="constant", max_grad_norm=0.0, logging_steps=10**6,
                         save_strategy="no", report_to=[], use_cpu=True, completion_only_loss=True, max_length=T,
                         dataloader_num_workers=0, disable_tqdm=True, seed=0, data_seed=0)
        trainer = SFTTrainer(model=_torch_model(0), args=args, train_dataset=data, processing_class=tokenizer,
                             peft_config=_peft_config(lora_rank), callbacks=[Clock()])
        built = _rss_mb()
        loss = trainer.train().training_loss
    model = trainer.model
    return {"seconds": median(times[warmup:]), "loss": float(loss), "built_rss_mb": built,
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "total": sum(p.numel() for p in model.parameters())}


def _one_side(side: str, rank: int, steps: int, warmup: int) -> dict[str, Any]:
    run: dict[str, Callable[[], dict[str, Any]]] = {
        "npgpt-full": lambda: _npgpt_side(0, steps, warmup),
        "npgpt-lora": lambda: _npgpt_side(rank, steps, warmup),
        "npgpt-sft": lambda: _npgpt_side(rank, steps, warmup, sft=True),
        "torch-full": lambda: _torch_side(0, steps, warmup),
        "torch-lora": lambda: _torch_side(rank, steps, warmup),
        "trl-sft": lambda: _trl_side(rank, steps, warmup),
    }
    result = run[side]()
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    result["step_rss_mb"] = round(result["peak_rss_mb"] - result.pop("built_rss_mb"), 1)
    return result


def _side_in_child(args: argparse.Namespace, side: str) -> dict[str, Any] | None:
    """One side in a fresh process; ``None`` for ``trl-sft`` when ``trl`` is not installed."""
    flags = ["--steps", str(args.steps), "--warmup", str(args.warmup), "--rank", str(args.rank)]
    out = side_in_child("lora", side, flags, env={"NPGPT_BENCH_TORCH_THREADS": str(args.torch_threads)})
    if out.returncode != 0 and side == "trl-sft" and "No module named 'trl'" in out.stderr:
        return None
    result = child_result("lora", side, out)
    print(f"npgpt.bench lora: {side}: {1000 * result['seconds']:.1f} ms a step, peak RSS {result['peak_rss_mb']} MB",
          file=sys.stderr, flush=True)      # a long run shows where it is
    return result


def _check(args: argparse.Namespace) -> list[str]:
    if args.steps < 1 or args.warmup < 0 or args.rank < 1 or args.rounds < 1 or args.torch_threads < 0:
        raise SystemExit("npgpt.bench lora: --steps, --rank and --rounds must be >= 1, --warmup and --torch-threads "
                         ">= 0")
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    unknown = sorted(set(sides) - set(SIDES))
    if unknown or not sides:
        raise SystemExit(f"npgpt.bench lora: unknown --sides {unknown or args.sides!r}; choose from {', '.join(SIDES)}")
    return sides


def run(args: argparse.Namespace) -> dict[str, Any]:
    sides = _check(args)
    if args.side:
        rank = 0 if args.side.endswith("full") else args.rank
        return _one_side(args.side, rank, args.steps, args.warmup)
    rounds = []
    for k in range(args.rounds):                # alternate the order: drift hits both sides of a pair alike
        order = sides if k % 2 == 0 else sides[::-1]
        rounds.append({side: _side_in_child(args, side) for side in order})
    result = summarize(rounds, args.rank)
    result["torch_threads"] = args.torch_threads or "default"
    return result


def summarize(rounds: list[dict[str, dict[str, Any] | None]], rank: int) -> dict[str, Any]:
    """The report: each side's medians over the rounds, and each pair's ratio per round (median, range)."""
    tokens = SHAPE["batch_size"] * SHAPE["seq_len"]
    result: dict[str, Any] = {"workload": "lora-small", "rank": rank, "targets": ",".join(TARGETS),
                              "tokens_per_step": tokens, "rounds": len(rounds)}
    present = [s for s in SIDES if any(r.get(s) for r in rounds)]
    for side in present:
        runs = [r[side] for r in rounds if r.get(side)]
        key = side.replace("-", "_")
        result[f"{key}_tokens_per_s"] = round(median(tokens / m["seconds"] for m in runs), 1)
        result[f"{key}_peak_rss_mb"] = round(median(m["peak_rss_mb"] for m in runs), 1)
        result[f"{key}_step_rss_mb"] = round(median(m["step_rss_mb"] for m in runs), 1)
        result[f"{key}_trainable"] = runs[0]["trainable"]
    if "npgpt-lora" in present:
        first = next(r["npgpt-lora"] for r in rounds if r.get("npgpt-lora"))
        result["trainable_share_npgpt"] = round(first["trainable"] / first["total"], 5)
    for name, (a, b) in PAIRS.items():
        pairs = [(r[a], r[b]) for r in rounds if r.get(a) and r.get(b)]
        if not pairs:
            continue
        for what, of in (("speed", lambda x, y: y["seconds"] / x["seconds"]),
                         ("rss", lambda x, y: x["peak_rss_mb"] / y["peak_rss_mb"]),
                         ("step_rss", lambda x, y: x["step_rss_mb"] / max(y["step_rss_mb"], 1e-9))):
            values = [of(x, y) for x, y in pairs]
            result[f"{name}_{what}"] = round(median(values), 3)
            result[f"{name}_{what}_range"] = [round(min(values), 3), round(max(values), 3)]
    result["median_step_ms"] = {side: round(1000 * median(r[side]["seconds"] for r in rounds if r.get(side)), 1)
                                for side in present}
    return result


__all__ = ["run", "add_arguments", "summarize"]
