"""nanogpt-char: nanoGPT's own CPU recipe, npgpt against the same model and loop in PyTorch eager.

nanoGPT's README trains a character-level Shakespeare model on a laptop CPU with::

    python train.py config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20
        --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128
        --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0

with the config's learning rate 1e-3 decaying (cosine) to 1e-4 after 100 warmup steps, AdamW
betas (0.9, 0.99), weight decay 0.1, gradient clipping at 1.0, one micro-batch per step, and an
evaluation (``eval_iters`` batches of each split) every 250 steps. This workload runs exactly
that recipe (``RECIPE``) on character-level ids of the Shakespeare corpus npgpt fetches, made as
nanoGPT's ``data/shakespeare_char/prepare.py`` makes them (the sorted characters are the
vocabulary; the first 90% of the text trains, the last 10% validates), written as nanoGPT's
``train.bin``/``val.bin``/``meta.pkl`` and read back through npgpt's reader of that format
(``npgpt.io.token_formats``).

Both sides start from the same weights (npgpt's initialisation, copied into the PyTorch model),
draw the same batches and evaluate on the same batches, so their validation losses differ only
by float32 rounding. The model is npgpt's GPT-2 (biases on, the tanh GELU, embeddings not
decayed), written again in PyTorch by ``npgpt.bench.train.torch_gpt``; nanoGPT's own defaults
differ in three details (``bias=False``, the erf GELU, decay on the embeddings) that do not
change the work of a step. Each side runs in a process of its own, ``--pairs`` times, the order
alternating; the figure is the median ratio of the wall times to ``--iters`` iterations
(evaluations included, as nanoGPT's run includes them). The load of the machine is reported.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

from npgpt.bench.common import child_result, find_mpiexec, median, quartiles, side_in_child

RECIPE = dict(batch_size=12, block_size=64, n_layer=4, n_head=4, n_embd=128, dropout=0.0, max_iters=2000,
              lr_decay_iters=2000, learning_rate=1e-3, min_lr=1e-4, beta1=0.9, beta2=0.99, weight_decay=0.1,
              grad_clip=1.0, warmup_iters=100, eval_interval=250, eval_iters=20)
SEED = 1337                 # nanoGPT's torch.manual_seed; here the seed of npgpt's weights and of the batches


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--iters", type=int, default=RECIPE["max_iters"],
                        help="iterations per run (default 2000, the recipe's; the schedule stays the recipe's)")
    parser.add_argument("--pairs", type=int, default=1,
                        help="runs of each side, alternating which goes first (default 1)")
    parser.add_argument("--workers", type=int, default=None,
                        help="threads npgpt shards each batch over (default: one per core, as npgpt train)")
    parser.add_argument("--no-compare", action="store_true", help="run npgpt only")
    parser.add_argument("--one-core", action="store_true",
                        help="each side on one thread (npgpt: one shard, one-threaded BLAS; PyTorch: "
                             "set_num_threads(1)): the code's efficiency, apart from how a loaded machine "
                             "schedules threads")
    parser.add_argument("--ranks", type=int, default=1,
                        help="npgpt's side as this many MPI ranks (mpiexec) of one thread each, every rank its "
                             "rows of each batch (docs/distributed.md): processes share no interpreter lock")
    parser.add_argument("--data", default=None, help=argparse.SUPPRESS)          # a prepared directory, in a child
    parser.add_argument("--side", choices=["npgpt", "torch"], help=argparse.SUPPRESS)


# ------------------------------------------------------------------ data
def write_char_dataset(out_dir: pathlib.Path, text: str | None = None) -> pathlib.Path:
    """Character-level ``text`` (default: the Shakespeare corpus) in nanoGPT's layout: ``train.bin``,
    ``val.bin`` (uint16) and ``meta.pkl``.

    As nanoGPT's ``shakespeare_char/prepare.py``: the vocabulary is the sorted set of characters,
    ``stoi``/``itos`` map between them and ids, the first 90% of the ids train and the rest validate.
    """
    import pickle

    from npgpt.datasets import load_text

    text = load_text("shakespeare") if text is None else text
    chars = sorted(set(text))
    stoi = {ch: i for i, ch in enumerate(chars)}
    ids = np.array([stoi[ch] for ch in text], dtype=np.uint16)
    cut = int(len(ids) * 0.9)
    out_dir.mkdir(parents=True, exist_ok=True)
    ids[:cut].tofile(out_dir / "train.bin")
    ids[cut:].tofile(out_dir / "val.bin")
    meta = {"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": stoi}
    with open(out_dir / "meta.pkl", "wb") as f:       # our own file: writing a pickle is safe, reading one is not
        pickle.dump(meta, f)
    return out_dir


class Batches:
    """nanoGPT's ``get_batch``: ``batch_size`` random windows of ``block_size + 1`` ids, from a seeded generator."""

    def __init__(self, tokens: np.ndarray, seed: int) -> None:
        self.tokens, self.rng = tokens, np.random.default_rng(seed)
        self.offsets = np.arange(RECIPE["block_size"] + 1)

    def next(self) -> tuple[np.ndarray, np.ndarray]:
        starts = self.rng.integers(0, len(self.tokens) - RECIPE["block_size"], size=RECIPE["batch_size"])
        windows = np.asarray(self.tokens[starts[:, None] + self.offsets], dtype=np.int64)
        return windows[:, :-1], windows[:, 1:]


def _lr(step: int) -> float:
    from npgpt.training.optim import cosine_schedule

    r = RECIPE
    return cosine_schedule(step, r["lr_decay_iters"], r["learning_rate"], r["warmup_iters"], r["min_lr"])


def _model_config(vocab_size: int) -> Any:
    from npgpt.model import GPTConfig

    r = RECIPE
    return GPTConfig(vocab_size=vocab_size, block_size=r["block_size"], n_layer=r["n_layer"], n_head=r["n_head"],
                     n_embd=r["n_embd"], dropout=r["dropout"])


# ------------------------------------------------------------- the loop
def _train(step_fn: Any, eval_fn: Any, train: np.ndarray, val: np.ndarray, iters: int,
           eval_iters: int = RECIPE["eval_iters"]) -> dict[str, Any]:
    """nanoGPT's loop: evaluate at every ``eval_interval`` (step 0 and the last included), step, repeat.

    ``step_fn(x, y, lr) -> loss`` and ``eval_fn(batches) -> mean loss``. Returns the wall time
    of the whole loop, the median step time and the evaluations.
    """
    batches, eval_batches = Batches(train, SEED), {"train": Batches(train, SEED + 1), "val": Batches(val, SEED + 2)}
    evals, step_times = [], []
    start = time.perf_counter()
    for it in range(iters + 1):
        if it % RECIPE["eval_interval"] == 0 or it == iters:
            evals.append({"iter": it, **{split: eval_fn([b.next() for _ in range(eval_iters)])
                                         for split, b in eval_batches.items()}})
        if it == iters:
            break
        t = time.perf_counter()
        loss = step_fn(*batches.next(), _lr(it))
        step_times.append(time.perf_counter() - t)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "step_ms": 1000 * median(step_times), "last_loss": loss, "evals": evals,
            "val_loss": evals[-1]["val"]}


def run_npgpt(data_dir: pathlib.Path, iters: int, workers: int | None, eval_iters: int = RECIPE["eval_iters"],
              one_core: bool = False) -> dict[str, Any]:
    """npgpt's side. Under ``mpiexec`` (``--ranks``) every rank takes its rows of each batch and the
    gradients are summed over the ranks, as ``mpiexec -n N npgpt train`` does; each rank one thread."""
    from npgpt import backend
    from npgpt.io import token_formats
    from npgpt.model import GPT
    from npgpt.training import distributed, engine, parallel
    from npgpt.training.optim import AdamW, param_groups

    backend.retain_freed_memory()                             # as `npgpt train` does
    data = token_formats.read_nanogpt_dir(data_dir)
    model = GPT(_model_config(data.vocab_size), seed=SEED)
    r = RECIPE
    optimizer = AdamW(param_groups(model, r["weight_decay"]), lr=r["learning_rate"], betas=(r["beta1"], r["beta2"]),
                      weight_decay=r["weight_decay"])
    world = distributed.world()
    group = distributed.process_group(world) if world.size > 1 else distributed.SINGLE_PROCESS
    if world.size > 1:
        workers, one_core = 1, True                           # one thread a rank
        if not world.is_main:                                 # one JSON line for the parent: rank 0's
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (this process's stdout until it exits)
    workers = backend.default_workers() if workers is None else workers       # one shard per core, as `npgpt train`

    def step_fn(x: np.ndarray, y: np.ndarray, lr: float) -> float:
        return engine.optimizer_step(optimizer, model.loss, [(x, y)], lr, r["grad_clip"], workers=workers,
                                     group=group).loss

    def eval_fn(batches: list) -> float:       # as `npgpt train` evaluates: each batch sharded as a step is
        model.eval()
        total = sum(parallel.mean_loss(model.loss, rows, workers, model.parameters()) * share
                    for rows, share in group.local_batches(batches))
        model.train()
        return group.sum(total) / len(batches)

    with backend.blas_threads(1) if one_core else contextlib.nullcontext():
        out = _train(step_fn, eval_fn, data.train, data.val, iters, eval_iters)
    cpu = world.sum_floats([_cpu_seconds()])[0]                # every rank's CPU time: what the run cost
    return {**out, "workers": workers, "ranks": world.size, "cpu_seconds": cpu}


def _copy_npgpt_weights(torch_model: Any, vocab_size: int) -> None:
    """Give the PyTorch model npgpt's initial weights (``GPT(config, seed=SEED)``), so both sides start equal."""
    import torch

    from npgpt.model import GPT

    mine = dict(GPT(_model_config(vocab_size), seed=SEED).named_parameters())
    names = {"c_attn": "attn.c_attn", "c_proj": "attn.c_proj", "c_fc": "mlp.c_fc", "mlp_proj": "mlp.c_proj"}
    with torch.no_grad():
        for name, p in torch_model.named_parameters():
            parts = name.split(".")
            if parts[0] == "h" and parts[2] in names:
                source = mine[".".join(parts[:2] + [names[parts[2]], parts[3]])].data
                source = source.T if parts[3] == "weight" else source     # npgpt stores (in, out), torch (out, in)
            else:
                source = mine[name].data
            p.copy_(torch.from_numpy(np.ascontiguousarray(source)))


def run_torch(data_dir: pathlib.Path, iters: int, eval_iters: int = RECIPE["eval_iters"],
              one_core: bool = False) -> dict[str, Any]:
    import torch

    if one_core:
        torch.set_num_threads(1)
    from npgpt.bench.train import torch_gpt
    from npgpt.io import token_formats

    data = token_formats.read_nanogpt_dir(data_dir)
    r = RECIPE
    model = torch_gpt(dict(r, vocab_size=data.vocab_size))
    _copy_npgpt_weights(model, data.vocab_size)
    # npgpt's groups (npgpt.training.optim.param_groups): decay on the linear layers' matrices only.
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and not n.startswith(("wte", "wpe"))]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and not n.startswith(("wte", "wpe")))]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": r["weight_decay"]},
                                   {"params": rest, "weight_decay": 0.0}],
                                  lr=r["learning_rate"], betas=(r["beta1"], r["beta2"]))

    def loss_of(x: np.ndarray, y: np.ndarray) -> Any:
        logits = model(torch.from_numpy(x))
        return torch.nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), torch.from_numpy(y).reshape(-1))

    def step_fn(x: np.ndarray, y: np.ndarray, lr: float) -> float:
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = loss_of(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), r["grad_clip"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    def eval_fn(batches: list) -> float:
        model.eval()
        with torch.no_grad():
            total = sum(loss_of(x, y).item() for x, y in batches)
        model.train()
        return total / len(batches)

    out = _train(step_fn, eval_fn, data.train, data.val, iters, eval_iters)
    return {**out, "threads": torch.get_num_threads(), "cpu_seconds": _cpu_seconds()}


def _cpu_seconds() -> float:
    """User + system CPU time of this process so far: what the run cost the machine, whatever its load."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ------------------------------------------------------------- the runs
def _side_in_child(args: argparse.Namespace, side: str, data_dir: pathlib.Path) -> dict[str, Any]:
    flags = ["--data", str(data_dir), "--iters", str(args.iters)]
    if args.workers is not None:
        flags += ["--workers", str(args.workers)]
    if args.one_core:
        flags.append("--one-core")
    if side == "npgpt" and args.ranks > 1:
        return _ranks_in_child(args.ranks, flags)
    return child_result("nanogpt-char", side, side_in_child("nanogpt-char", side, flags))


def _ranks_in_child(ranks: int, flags: list[str], timeout: float | None = None) -> dict[str, Any]:
    """npgpt's side as ``mpiexec -n ranks``: rank 0 prints the JSON line (the others' stdout goes to
    /dev/null). A rank that fails aborts them all (``run``), and a run that did not get the ranks it
    asked for (an ``mpiexec`` of another MPI than mpi4py's starts worlds of one) is refused."""
    command = [find_mpiexec("nanogpt-char"), "-n", str(ranks), sys.executable, "-m", "npgpt.bench", "nanogpt-char", "--json",
               "--side", "npgpt", *flags]
    out = child_result("nanogpt-char", "npgpt (mpiexec)",
                       subprocess.run(command, capture_output=True, text=True, timeout=timeout))
    if out.get("ranks") != ranks:
        raise SystemExit(f"npgpt.bench nanogpt-char --ranks {ranks}: the run had {out.get('ranks')} rank(s); "
                         "is mpiexec the one of mpi4py's MPI?")
    return out


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"seconds": [round(r["seconds"], 2) for r in runs], "cpu_seconds": [round(r["cpu_seconds"], 1) for r in runs],
            "step_ms": round(median(r["step_ms"] for r in runs), 2),
            "val_loss": round(runs[0]["val_loss"], 4), "evals": runs[0]["evals"]}


def _npgpt_side(data_dir: pathlib.Path, args: argparse.Namespace) -> dict[str, Any]:
    """``run_npgpt`` in a child; under ``mpiexec`` a rank that fails aborts the others, which would
    otherwise wait in the next all-reduce for ever."""
    from npgpt.training import distributed

    try:
        return run_npgpt(data_dir, args.iters, 1 if args.one_core else args.workers, one_core=args.one_core)
    except BaseException:
        world = distributed.world()
        if world.size > 1:
            world.abort(1)
        raise


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.iters < 1 or args.pairs < 1 or args.ranks < 1:
        raise SystemExit("npgpt.bench nanogpt-char: --iters, --pairs and --ranks must be >= 1")
    if args.side:
        data_dir = pathlib.Path(args.data)
        if args.side == "npgpt":
            return _npgpt_side(data_dir, args)
        return run_torch(data_dir, args.iters, one_core=args.one_core)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="npgpt-nanogpt-char-") as tmp:
        data_dir = write_char_dataset(pathlib.Path(tmp))
        sides = ["npgpt"] if args.no_compare else ["npgpt", "torch"]
        runs: dict[str, list[dict[str, Any]]] = {s: [] for s in sides}
        for pair in range(args.pairs):                 # alternate who goes first: the machine drifts
            for side in (sides if pair % 2 == 0 else sides[::-1]):
                runs[side].append(_side_in_child(args, side, data_dir))
    result = {"workload": "nanogpt-char", "iters": args.iters, "one_core": args.one_core, "recipe": RECIPE,
              "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in os.getloadavg()],
              "npgpt": {**_summary(runs["npgpt"]), "workers": runs["npgpt"][0]["workers"],
                        "ranks": runs["npgpt"][0].get("ranks", 1)}}
    if "torch" in runs:
        ratios = [t["seconds"] / m["seconds"] for m, t in zip(runs["npgpt"], runs["torch"])]
        result["torch"] = {**_summary(runs["torch"]), "threads": runs["torch"][0]["threads"]}
        result["speed_ratios"] = [round(x, 3) for x in ratios]
        result["speed_ratio_vs_torch"] = round(median(ratios), 3)
        result["speed_ratio_iqr"] = [round(q, 3) for q in quartiles(ratios)]
        result["cpu_ratio_vs_torch"] = round(median(t["cpu_seconds"] / m["cpu_seconds"]
                                                    for m, t in zip(runs["npgpt"], runs["torch"])), 3)
        result["val_loss_diff"] = round(result["npgpt"]["val_loss"] - result["torch"]["val_loss"], 4)
    return result
