"""The training loop: batches -> loss -> gradients -> AdamW, with logs, validation and exact resume.

Companion of ``docs/training.md``.

``Trainer(config).train()`` minimises the mean negative log-likelihood of the
next token (docs/training.md eq:cross-entropy-loss), the negative of the pre-training
objective ``L = sum_i log p(x_i | x_<i)`` (eq:log-likelihood). Each optimizer step:

1. sets the learning rate from the warmup + cosine schedule (eq:lr-schedule);
2. sums the gradients of ``grad_accum`` micro-batches, each loss scaled by
   ``1 / grad_accum``, so the result is the gradient of the mean over all of
   them (eq:grad-accumulation);
3. clips the global gradient norm (eq:grad-clip) and stops with an error naming the
   step if the loss or the norm is not finite (before the weights are
   touched: the last checkpoint stays good);
4. takes an AdamW step (eq:adam-first-moment to eq:adam-update).

Every ``log_interval`` steps it prints one line (loss, learning rate,
gradient norm, tokens/s, MFU, ETA); every ``eval_interval`` steps it
measures the validation loss and perplexity (eq:perplexity) and writes a checkpoint.
``RUN_DIR/log.jsonl`` and ``RUN_DIR/loss.csv`` keep the curve.

A checkpoint is the directory ``RUN_DIR/checkpoint``: the model in Hugging
Face's GPT-2 layout, the tokenizer files, ``optimizer.safetensors`` (Adam's
moments) and ``trainer_state.json`` (step, sampler and dropout generator
states, configs). It is assembled in a temporary directory, flushed to disk
and swapped in with renames, so a crash at any moment leaves a complete
checkpoint behind. Resuming restores every piece of state that influences
the next step, so N steps + resume + N steps gives the same weights, bit for
bit, as 2N steps in one go.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import shutil
import sys
import time
from collections.abc import Callable, Collection
from typing import Any, ClassVar, NoReturn, Optional

from npgpt import backend
from npgpt.autograd import Tensor, no_grad
from npgpt.backend import Array
from npgpt.finetuning import lora
from npgpt.io import fileio, hf_gpt2
from npgpt.io.checkpoint import WEIGHTS_NAME, CheckpointError, read_tensors
from npgpt.model import GPT, GPTConfig
from npgpt.training import distributed, engine, parallel, plot, rundir, settings
from npgpt.training.data import BatchSampler, TokenFile, load_meta, tokenizer_digest, tokenizer_dir
from npgpt.training.engine import TrainingDiverged
from npgpt.training.flops import DEFAULT_PEAK_FLOPS, device_peak_flops, flops_per_token, model_flops_utilisation
from npgpt.training.interrupt import GracefulStop
from npgpt.training.mixed_precision import NO_LOSS_SCALING, GradScaler
from npgpt.training.optim import param_groups
from npgpt.training.progress import Progress, format_seconds
from npgpt.training.rundir import CHECKPOINT_DIR, find_checkpoint
from npgpt.training.settings import setting

__all__ = ["RunSettings", "TrainConfig", "Trainer", "train", "TrainingDiverged", "find_checkpoint", "flops_per_token",
           "CHECKPOINT_DIR", "DEFAULT_PEAK_FLOPS"]

CURVE_SECONDS = 30.0       # the loss-curve picture is redrawn at most this often
# A validation loss beyond this is divergence: exp(loss), the perplexity, overflows a float64 (log of
# its largest value, 709.78); a uniform guess over GPT-2's 50,257 tokens scores 10.8.
MAX_VAL_LOSS = math.log(sys.float_info.max)
_MODEL_FIELDS = ("n_layer", "n_head", "n_embd", "block_size", "dropout")


@dataclasses.dataclass
class RunSettings(settings.Settings):
    """The settings :class:`Trainer`'s loop reads, shared by the commands that train with it
    (``TrainConfig``, ``npgpt.finetuning.sft.SFTConfig``): the run's length and batches, its log
    lines, validation runs and checkpoints, the seed, and where and on how many threads it runs."""

    FLAGS_TITLE: ClassVar[str] = "the run: batches, steps, logs, checkpoints"

    batch_size: int = setting(8, "sequences per micro-batch")
    grad_accum: int = setting(1, "micro-batches summed per optimizer step")
    max_steps: int = setting(1000, "total optimizer steps of the run (the LR schedule spans them)")
    eval_interval: int = setting(100, "steps between validation runs and checkpoints")
    eval_iters: int = setting(10, "batches per validation run")
    log_interval: int = setting(10, "steps between log lines")
    checkpoint_interval: int = setting(0, "steps between checkpoints (0: at every evaluation)")
    seed: int = setting(1337, "seed of the initial weights, the batches and dropout")
    device: str = setting("cpu", "cpu or cuda")
    shard_optimizer: bool = setting(False, "under mpiexec: keep 1/N of AdamW's moments on each rank (ZeRO-1)")
    workers: int = setting(0, "threads to split each batch over (0: one per core when possible)")
    peak_flops: float = setting(DEFAULT_PEAK_FLOPS, "peak FLOP/s of the machine, for the MFU "
                                                    "(default: a 2-core Zen 4)")

    def check_run(self) -> None:
        """Refuse bad values with a ``ConfigError`` naming the setting (``eval_iters`` is each command's own)."""
        owner = type(self).__name__
        settings.require_positive_ints(owner, self, ("batch_size", "grad_accum", "max_steps", "eval_interval",
                                                     "log_interval"))
        settings.require_non_negative(owner, self, ("checkpoint_interval", "workers"))
        if self.peak_flops <= 0:
            settings.fail(owner, "peak_flops", f"{{name}} must be positive, got {self.peak_flops}")


@dataclasses.dataclass
class TrainConfig(lora.LoRASettings, settings.OptimizerSettings, RunSettings):
    """Everything that defines a training run (saved in every checkpoint).

    ``max_steps`` is the run's total length: the learning-rate schedule spans
    it. ``stop_at`` ends this invocation early, after step ``stop_at``, with a
    checkpoint; ``--resume`` continues to ``max_steps``. ``workers`` is the
    number of threads the batch is split over (0 = one per core, on a CPU and
    without dropout; see ``npgpt.training.parallel``). ``warmup_steps`` and ``min_lr``
    default to ``None``, which means "fit the run": ``min(100, max_steps // 10)``
    warmup steps and ``lr / 10``, so that any ``max_steps`` and any ``lr`` make a
    valid run (the resolved values are what a checkpoint stores). The loop's settings are
    :class:`RunSettings`, shared with ``npgpt sft``; the optimizer's and the precision's are
    ``npgpt.training.settings.OptimizerSettings``, shared with fine-tuning.
    """

    KIND: ClassVar[str] = "training"

    data_dir: str = setting("", "directory made by `npgpt prepare` (not needed with --resume)")
    out_dir: str = setting("", "run directory for checkpoints and logs")
    # model
    n_layer: int = setting(4, "Transformer blocks")
    n_head: int = setting(4, "attention heads per block")
    n_embd: int = setting(128, "width of the residual stream")
    block_size: int = setting(128, "context length T in tokens")
    dropout: float = setting(0.0, "dropout probability")
    tokenizer_dir: str = setting("", "tokenizer to store with the checkpoints (default: the data directory's)")
    init_from: str = setting("", "start from this model instead of random weights: its weights, architecture and "
                                 "tokenizer (a directory, npgpt-small, or a Hugging Face Hub id with the hub extra); "
                                 "the data must be prepared with its tokenizer, and --block-size may only shrink it")

    def __post_init__(self) -> None:
        def fail(field: str, template: str) -> NoReturn:
            settings.fail("TrainConfig", field, template)

        settings.require_positive_ints("TrainConfig", self, ("n_layer", "n_head", "n_embd", "block_size", "eval_iters"))
        self.check_run()
        self.check_optimizer()
        self.warmup_steps = self.warmup_for(self.max_steps)      # stored resolved, in every checkpoint
        settings.check_dropout("TrainConfig", self)
        self.check_lora()
        if self.lora_rank and not self.init_from:
            fail("lora_rank", "{name} adapts a pretrained model: give --init-from too")


# ================================================================= starting from a model
ARCHITECTURE = ("n_layer", "n_head", "n_embd")


def start_from(config: TrainConfig, given: Optional[Collection[str]] = None) -> tuple[TrainConfig, GPT]:
    """The model named by ``config.init_from``, and ``config`` with its architecture (docs/training.md,
    "Starting from a pretrained model").

    ``given`` names the settings that were set on purpose (the command line knows); by default,
    those that differ from ``TrainConfig``'s defaults. An architecture setting given with another
    value than the model's is refused, and so is a ``block_size`` larger than the model's; a smaller
    one crops the position table (``GPT.crop_block_size``). ``dropout`` is a training setting and
    applies. The data directory must hold tokens of the model's own tokenizer: the check compares
    the tokenizer saved with the data to the model's, and a mismatch names both.
    """
    from npgpt.tokenizer import Tokenizer

    name = config.init_from
    defaults = TrainConfig()
    if given is None:
        given = {f for f in ARCHITECTURE + ("block_size",) if getattr(config, f) != getattr(defaults, f)}
    model = GPT.from_pretrained(name)
    arch = model.config
    for field in ARCHITECTURE:
        if field in given and getattr(config, field) != getattr(arch, field):
            settings.fail("TrainConfig", field, f"{{name}}={getattr(config, field)} would change the architecture "
                                                f"of {name} ({field}={getattr(arch, field)}); with init_from the "
                                                "architecture is the model's: drop the setting")
    block_size = config.block_size if "block_size" in given else arch.block_size
    if block_size > arch.block_size:
        settings.fail("TrainConfig", "block_size", f"{{name}}={block_size} is longer than the {arch.block_size} "
                                                   f"positions {name} was trained with; it may only shrink")
    model.crop_block_size(block_size).set_dropout(config.dropout)
    try:
        tokenizer = Tokenizer.from_pretrained(name)
    except (FileNotFoundError, ValueError) as exc:
        raise FileNotFoundError(f"{name} holds no tokenizer, so its data cannot be checked: {exc}") from None
    _check_same_tokenizer(config.data_dir, tokenizer, name)
    resolved = dataclasses.replace(config, block_size=block_size,
                                   **{f: getattr(arch, f) for f in ARCHITECTURE})
    return resolved, model


def _same_tokenizer(a: pathlib.Path, b: pathlib.Path) -> bool:
    """Do two tokenizer directories hold the same vocabulary, merges and special tokens (in any layout)?"""
    from npgpt.tokenizer import Tokenizer

    return Tokenizer.from_pretrained(a) == Tokenizer.from_pretrained(b)


def _describe(tokenizer: Any) -> str:
    specials = ", ".join(sorted(tokenizer.special_tokens))
    return f"{tokenizer.vocab_size:,} ids, {len(tokenizer.merges):,} merges, special tokens {specials or 'none'}"


def _check_same_tokenizer(data_dir: str, tokenizer: Any, name: str) -> None:
    """Refuse a data directory whose tokens were made by another tokenizer than ``name``'s, naming both."""
    from npgpt.tokenizer import Tokenizer

    meta = load_meta(data_dir)
    directory = tokenizer_dir(data_dir, meta)          # checked against the digest prepare recorded
    fix = f"prepare the data with the model's tokenizer: npgpt prepare --tokenizer {name} --input ... --out DIR"
    if directory is None:
        if int(meta["vocab_size"]) != tokenizer.vocab_size:
            raise ValueError(f"{data_dir} holds ids of a {int(meta['vocab_size']):,}-id vocabulary, but {name}'s "
                             f"tokenizer has {_describe(tokenizer)}; {fix}")
        return                    # no saved tokenizer to compare: the sizes agree, which is all we can check
    data_tokenizer = Tokenizer.from_pretrained(directory)
    same = (data_tokenizer.vocab_size == tokenizer.vocab_size and data_tokenizer.merges == tokenizer.merges
            and data_tokenizer.special_tokens == tokenizer.special_tokens
            and all(data_tokenizer.token_bytes(i) == tokenizer.token_bytes(i) for i in range(tokenizer.vocab_size)))
    if not same:
        raise ValueError(f"{data_dir} was prepared with another tokenizer than {name}'s: the data's ({directory}) has "
                         f"{_describe(data_tokenizer)}; {name}'s has {_describe(tokenizer)}; {fix}")


# ================================================================= trainer
class _Pace:
    """The clock and counters of one invocation of the loop, for its speed figures and its summary.

    Since the loop began: the steps, for the ETA and the mean tokens/s; since the last log line:
    the steps and their summed loss, for that line's mean loss and tokens/s. And the last training
    and validation losses.
    """

    def __init__(self, tokens_per_step: int, max_steps: int, start_step: int) -> None:
        self.tokens_per_step, self.max_steps, self.start_step = tokens_per_step, max_steps, start_step
        self.started = self.interval_start = time.perf_counter()
        self.steps_done, self.interval_steps, self.interval_loss = 0, 0, 0.0
        self.train_loss: Optional[float] = None
        self.val_loss: Optional[float] = None

    def count(self, loss: float) -> None:
        """One more step, of training loss ``loss``."""
        self.steps_done += 1
        self.interval_steps += 1
        self.interval_loss += loss
        self.train_loss = loss

    def tokens_per_s(self, elapsed: float) -> float:
        """The mean speed of the ``elapsed`` seconds since the loop began."""
        return self.steps_done * self.tokens_per_step / max(elapsed, 1e-9)

    def eta(self, step: int, elapsed: float) -> float:
        """Seconds to ``max_steps`` from ``step``, at the mean pace of the ``elapsed`` seconds so far."""
        return (self.max_steps - step) * elapsed / self.steps_done

    def end_interval(self, now: float) -> tuple[float, float]:
        """The mean loss and the tokens/s since the last log line; the next interval starts ``now``."""
        loss = self.interval_loss / self.interval_steps
        tok_s = self.interval_steps * self.tokens_per_step / max(now - self.interval_start, 1e-9)
        self.interval_start, self.interval_steps, self.interval_loss = now, 0, 0.0
        return loss, tok_s

    def summary(self, step: int, stopped_by: Optional[int]) -> dict[str, Any]:
        """What ``Trainer.train`` returns: the step reached, the steps taken, the time, the mean speed,
        the signal that stopped the run (or None) and the last losses."""
        elapsed = time.perf_counter() - self.started
        return {"step": step, "steps": step - self.start_step, "seconds": elapsed,
                "tokens_per_s": self.tokens_per_s(elapsed),
                "stopped_by": stopped_by, "train_loss": self.train_loss, "val_loss": self.val_loss}


class Trainer:
    """Holds the model, optimizer, samplers and run directory of one training run.

    ``Trainer(config)`` starts a new run (the run directory must not hold a
    checkpoint yet); ``Trainer.resume(run_dir, **overrides)`` continues one.
    ``log`` is a function that receives each text line (default: print to stderr). ``given``: the
    settings set on purpose, for ``start_from`` (the command line passes the flags it was given).
    """

    def __init__(self, config: TrainConfig, log: Optional[Callable[[str], None]] = None,
                 _state: Optional[tuple[pathlib.Path, dict[str, Any]]] = None,
                 given: Optional[Collection[str]] = None) -> None:
        self._setup_logging(config, log)
        if config.batch_size < self.world.size:
            raise ValueError(f"--batch-size {config.batch_size} is the global batch and must be at least the "
                             f"number of ranks ({self.world.size})")
        self.run_dir = pathlib.Path(config.out_dir)
        if not config.data_dir:
            raise ValueError("TrainConfig.data_dir is empty: point it at a directory made by `npgpt prepare`")
        if not config.out_dir:
            raise ValueError("TrainConfig.out_dir is empty: name a run directory for checkpoints and logs")
        self.meta = load_meta(config.data_dir)
        self.train_tokens = TokenFile(config.data_dir, "train")
        self.val_tokens = TokenFile(config.data_dir, "val")
        if config.init_from and (_state is None or config.lora_rank):   # the model, its architecture, its tokenizer
            config, model = start_from(config, given)
            self.config = config
            self.model_config = model.config
            if config.lora_rank:        # the base frozen; a resumed run takes its adapters back
                self._attach_lora(model, _state[0] if _state is not None else None)
        else:
            vocab_size = int(_state[1]["model_config"]["vocab_size"]) if _state else int(self.meta["vocab_size"])
            self.model_config = GPTConfig(vocab_size=vocab_size, block_size=config.block_size,
                                          n_layer=config.n_layer, n_head=config.n_head, n_embd=config.n_embd,
                                          dropout=config.dropout)
            model = GPT(self.model_config, seed=config.seed)
        for split in (self.train_tokens, self.val_tokens):
            if len(split) < config.block_size + 1:
                raise ValueError(f"{split.path} holds {len(split):,} tokens, fewer than block_size + 1 = "
                                 f"{config.block_size + 1}; use a smaller --block-size or more text")
        self._choose_device(config)
        self.model = model.to(self.device)
        self.model.train()
        self.sampler = BatchSampler(self.train_tokens.tokens, config.batch_size, config.block_size, seed=config.seed)
        self._setup_optimizer()
        self.tokenizer_dir = self._tokenizer_dir()
        if _state is not None:
            self._restore(*_state)

    def _choose_device(self, config: Any) -> None:
        """``self.device``, and the peak FLOP/s of the MFU: the GPU's own unless ``peak_flops`` was set."""
        # under mpiexec: one GPU per rank of this machine, before any GPU work
        self.device = distributed.use_device(config.device, self.world)
        self.peak_flops = config.peak_flops
        if self.device == "cuda" and config.peak_flops == DEFAULT_PEAK_FLOPS:
            self.peak_flops = device_peak_flops(backend.device_name(), config.dtype) or config.peak_flops

    def _setup_logging(self, config: Any, log: Optional[Callable[[str], None]]) -> None:
        """The config, the MPI world and where log lines go (shared with ``npgpt.finetuning.sft``)."""
        self.config = config
        # Under mpiexec: N ranks, each with the whole model and 1/N of every global batch (npgpt.training.distributed).
        self.world = distributed.world()
        self.log = log if log is not None else (lambda line: print(line, file=sys.stderr, flush=True))
        # On a terminal, a bar redrawn every step, with the log lines above it; in a log file
        # (or with a log function given), one line per --log-interval.
        self._bar: Optional[Progress] = None
        if log is None and self.world.is_main and sys.stderr.isatty():
            self._bar = Progress(config.max_steps, "train", stream=sys.stderr)
            self.log = self._bar.message
        if not self.world.is_main:          # rank 0 logs and writes; the others compute
            self.log = lambda line: None

    def _setup_optimizer(self) -> None:
        """Mixed precision, AdamW (sharded under ZeRO-1), the step counter and the worker threads, for
        ``self.model`` on its device (shared with ``npgpt.finetuning.sft``)."""
        config = self.config
        self.scaler: Optional[GradScaler] = None
        self._can_draw: Optional[bool] = None          # matplotlib importable? (asked once)
        self._curve_drawn = float("-inf")
        self.last_step_skipped = False
        if config.dtype != "float32":     # mixed precision: float16 products, float32 master weights
            self.model.set_compute_dtype(config.dtype)
            self.scaler = GradScaler()
        groups = param_groups(self.model, config.weight_decay)
        self.shard: Optional[distributed.OptimizerShard] = None
        if config.shard_optimizer and self.world.size > 1:     # ZeRO-1: this rank's moments only
            self.shard = distributed.OptimizerShard(list(self.model.named_parameters()), self.world)
            groups = _owned_groups(groups, self.shard.owned_names)
        self.group = distributed.process_group(self.world, self.shard)   # the step's ranks: one, or DataParallel
        self.optimizer = config.adamw(groups)
        self.step = 0
        self.flops_per_token = flops_per_token(self.model)
        # Dropout makes a step single-threaded; the model's own and LoRA's count alike.
        self.workers = engine.choose_workers(config.workers or (1 if self.world.size > 1 else 0), self.device,
                                             lora.max_dropout(self.model))

    # ------------------------------------------------------------- set-up
    def _tokenizer_dir(self) -> Optional[pathlib.Path]:
        """The tokenizer to store with the checkpoints: the data directory's own, checked against the
        digest prepare recorded, or ``--tokenizer DIR``, which must be that same tokenizer."""
        own = tokenizer_dir(self.config.data_dir, self.meta, log=self.log)
        if not self.config.tokenizer_dir:
            return own
        path = pathlib.Path(self.config.tokenizer_dir)
        if not path.is_dir():
            raise FileNotFoundError(f"tokenizer directory {path} does not exist")
        if own is not None and tokenizer_digest(path) != tokenizer_digest(own) and not _same_tokenizer(path, own):
            raise ValueError(f"--tokenizer {path} is not the tokenizer that made the token ids of "
                             f"{self.config.data_dir} (that is {own}); leave --tokenizer out, or prepare the data "
                             "with this one")
        return path

    @classmethod
    def resume(cls, run_dir: str | os.PathLike, log: Optional[Callable[[str], None]] = None,
               **overrides: Any) -> Trainer:
        """Continue the run in ``run_dir`` from its newest complete checkpoint.

        ``overrides`` may change settings that do not alter the model
        (``max_steps``, ``stop_at`` is passed to ``train``, intervals ...); the
        schedule follows a changed ``max_steps``, so only an unchanged config
        reproduces the uninterrupted run exactly.
        """
        run_dir = pathlib.Path(run_dir)
        checkpoint, state = rundir.checkpoint_to_resume(run_dir)
        values = dict(state["train_config"])
        for key, value in overrides.items():
            if value is None:
                continue
            if key in _MODEL_FIELDS and value != values[key]:
                raise ValueError(f"cannot resume with {key}={value}: the checkpoint's model has {key}={values[key]}")
            values[key] = value
        values["out_dir"] = str(run_dir)
        return cls(TrainConfig.from_dict(values), log=log, _state=(checkpoint, state))

    def _attach_lora(self, model: GPT, checkpoint: Optional[pathlib.Path]) -> None:
        """LoRA adapters on ``model`` (``--lora-rank``): new ones, or those of ``checkpoint`` when resuming."""
        if checkpoint is not None:
            lora.load_adapter(model, checkpoint / lora.CHECKPOINT_ADAPTER)
        else:
            lora.apply_lora(model, self.config.lora_config(seed=self.config.seed))
            self.log(lora.describe_trainable(model))

    def _restore(self, checkpoint: pathlib.Path, state: dict[str, Any]) -> None:
        weights = checkpoint / WEIGHTS_NAME
        if not self.config.lora_rank:        # a LoRA run's saved weights are merged: its base came from init_from
            hf_gpt2.load_hf_tensors(self.model, read_tensors(weights), weights)
        rundir.load_optimizer(self.optimizer, checkpoint / rundir.OPTIMIZER_NAME)
        try:     # the sampler's, the dropout generators' and the scaler's states, as saved
            self.sampler.load_state_dict(state["sampler"])
            rundir.restore_dropout_states(self.model, state.get("dropout_rngs") or {})
            if self.scaler is not None and state.get("grad_scaler"):
                self.scaler.load_state_dict(state["grad_scaler"])
            self.step = int(state["step"])
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            raise CheckpointError(f"{checkpoint / rundir.STATE_NAME} holds a state npgpt cannot continue from "
                                  f"({type(exc).__name__}: {exc})") from None
        self.log(f"resumed from {checkpoint} at step {self.step}")

    # ---------------------------------------------------------------- loss
    def _loss_fn(self, scale: float) -> Callable[[Array, Array], Tensor]:
        def loss_fn(x: Array, y: Array) -> Tensor:
            return self.model.loss(x, y) * scale
        return loss_fn

    def evaluate(self) -> float:
        """Mean validation loss over ``eval_iters`` fixed batches (the same ones every time).

        A fresh sampler with a fixed seed draws them, so successive
        evaluations are comparable and evaluation consumes no training state.
        """
        c = self.config
        sampler = BatchSampler(self.val_tokens.tokens, c.batch_size, c.block_size, seed=c.seed + 1)
        self.model.eval()
        total = 0.0
        batches = (sampler.next() for _ in range(c.eval_iters))
        with no_grad():
            for (x, y), share in self.group.local_batches(batches):      # under mpiexec: this rank's rows
                # host ids: checked, then copied; sharded over threads as a training step is (both cores)
                total += parallel.mean_loss(self.model.loss, (x, y), self.workers, self.model.parameters()) * share
        self.model.train()
        return self.group.sum(total) / c.eval_iters

    def validate(self) -> float:
        """``evaluate()``, with a loss no model that is learning reaches treated as divergence.

        A non-finite loss, or one beyond ``MAX_VAL_LOSS`` (where the perplexity ``exp(loss)``
        overflows a float; a uniform guess over a vocabulary of 50,257 scores 10.8), raises
        ``TrainingDiverged`` naming the last good checkpoint, as a non-finite training loss does.
        """
        val = self.evaluate()
        if not math.isfinite(val) or val > MAX_VAL_LOSS:
            raise self._diverged(f"training diverged at step {self.step}: validation loss {val:.6g}")
        return val

    def _diverged(self, what: str) -> TrainingDiverged:
        last = rundir.find_checkpoint(self.run_dir)
        where = (f"the last good checkpoint is {last} (step {rundir.read_state(last)['step']})"
                 if last is not None else "no checkpoint was written yet")
        return TrainingDiverged(f"{what}; {where}. Lower the learning rate (--lr) or increase the warmup "
                                "(--warmup-steps) and resume.")

    def train_step(self) -> tuple[float, float, float]:
        """One optimizer step over ``grad_accum`` micro-batches; returns (loss, grad norm, lr).

        With mixed precision a step whose gradients overflowed float16 is
        skipped (``npgpt.training.engine``); it still counts as a step (its batches
        were drawn) and is logged with ``"skipped": true``.
        """
        c = self.config
        lr = c.learning_rate(self.step, c.max_steps)
        loss_fn = self._loss_fn(1.0 / c.grad_accum)      # eq:grad-accumulation: each micro-batch weighs 1/K
        # Host arrays: the model checks the ids there and copies each array to its device once.
        batches = (self.sampler.next() for _ in range(c.grad_accum))
        try:
            result = engine.optimizer_step(self.optimizer, loss_fn, batches, lr, c.grad_clip, self.workers,
                                           step=self.step + 1, scaler=self.scaler or NO_LOSS_SCALING,
                                           group=self.group)
        except TrainingDiverged as exc:
            raise self._diverged(str(exc)) from None
        self.step += 1
        self.last_step_skipped = result.skipped
        return result.loss, result.grad_norm, lr

    # ---------------------------------------------------------------- loop
    def tokens_per_step(self) -> int:
        """Tokens one optimizer step trains on: the tokens/s, MFU and tokens-seen figures count these."""
        c = self.config
        return c.batch_size * c.block_size * c.grad_accum

    def train(self, stop_at: Optional[int] = None) -> dict[str, Any]:
        """Train until ``max_steps`` (or ``stop_at``); returns a dict of final figures.

        Ctrl-C or SIGTERM (``npgpt.training.interrupt``) finishes the step in progress,
        writes a checkpoint and returns early; ``"stopped_by"`` in the result
        is then the signal's number (else ``None``).
        """
        # One writer per run directory (rank 0 under MPI): a second trainer is refused before it
        # touches the logs or the staging directories.
        with rundir.lock(self.run_dir, enabled=self.world.is_main), GracefulStop() as stop:
            if self.step > 0:            # resumed: the log rows after the checkpoint are redone
                self._truncate_logs(self.step)
            try:
                if self.world.size == 1:
                    return self._train(stop_at, stop)
                with backend.blas_threads(1):       # one BLAS thread per rank: the ranks share the cores
                    return self._train(stop_at, stop)
            except Exception as exc:
                if fileio.disk_full(exc):
                    raise self._disk_full(exc) from exc
                raise

    def _disk_full(self, exc: BaseException) -> OSError:
        """A full disk or a file-size limit, naming the file and the checkpoint that is still whole."""
        code = exc.errno if isinstance(exc, OSError) and exc.errno else fileio.errno_of(exc)
        last = rundir.find_checkpoint(self.run_dir)
        intact = (f"the previous checkpoint {last} (step {rundir.read_state(last)['step']}) is intact"
                  if last is not None else f"{self.run_dir} holds no checkpoint yet")
        filename = getattr(exc, "filename", None) or self.run_dir
        return OSError(code, f"{os.strerror(code)}; {intact}", str(filename))

    def _train(self, stop_at: Optional[int], stop: GracefulStop) -> dict[str, Any]:
        """The loop: one optimizer step after another, each followed by its row in the logs and, when
        due, a log line, a validation run and a checkpoint, until ``stop_at`` (or ``max_steps``).

        Ctrl-C / SIGTERM (``stop``): the step in progress is finished, a checkpoint written, and we return.
        """
        c = self.config
        end = self._begin(stop_at)
        pace = _Pace(self.tokens_per_step(), c.max_steps, self.step)
        saved_step = self.step if self.step > 0 else None     # a resumed run has its checkpoint already
        checkpoint_every = c.checkpoint_interval or c.eval_interval
        while self.step < end and not stop.requested:
            loss, norm, lr = self.train_step()
            pace.count(loss)
            self._show_progress(loss, pace)
            row = self._step_row(loss, norm, lr, pace)
            if self.step % c.log_interval == 0 or self.step == end:
                self._log_line(row, pace)
            if self.step % c.eval_interval == 0 or self.step == c.max_steps:
                pace.val_loss = self._validate_into(row)
            self._record(row)
            if "tokens_per_s" in row or "val_loss" in row:         # a logged step: refresh the picture
                self._draw_curve(final=self.step == end)
            if self.step % checkpoint_every == 0 or self.step == end:
                self.save_checkpoint()
                saved_step = self.step
        self._finish(stop, saved_step)
        return pace.summary(self.step, stop.signum)

    def _begin(self, stop_at: Optional[int]) -> int:
        """The step this invocation ends after, once the run directory is ready: the model's line in the
        log and, for a new run, the untrained model's validation loss (step 0 of the curve)."""
        c = self.config
        end = c.max_steps if stop_at is None else min(int(stop_at), c.max_steps)
        if stop_at is not None and stop_at <= self.step:
            raise ValueError(f"stop_at={stop_at} is not after the current step {self.step}")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.world.is_main:
            rundir.remove_stale(self.run_dir)
        if self.step == 0 and rundir.find_checkpoint(self.run_dir) is not None:
            raise FileExistsError(f"{self.run_dir} already holds a checkpoint: resume it (--resume) "
                                  "or choose another --out")
        n_params = self.model.num_parameters()
        self.log(f"model: {n_params:,} parameters, {self.model_config.n_layer} layers, {self.model_config.n_head} "
                 f"heads, n_embd {self.model_config.n_embd}, vocab {self.model_config.vocab_size:,}, "
                 f"block {self.model_config.block_size}; {self.tokens_per_step():,} tokens per step, "
                 f"{self.workers} worker(s), device {self.device}")
        if self.step == 0:
            val = self.validate()
            self._record({"step": 0, "val_loss": val, "val_ppl": math.exp(val)})
            self._log_validation(val)
        return end

    def _show_progress(self, loss: float, pace: _Pace) -> None:
        """On a terminal, move the progress bar to the step just taken (tokens/s and ETA since the start)."""
        if self._bar is not None:
            elapsed = time.perf_counter() - pace.started
            self._bar.update(self.step, note=f"step {self.step} | loss {loss:.4f} | "
                             f"{pace.tokens_per_s(elapsed):,.0f} tok/s | ETA "
                             f"{format_seconds(pace.eta(self.step, elapsed))}")

    def _step_row(self, loss: float, norm: float, lr: float, pace: _Pace) -> dict[str, Any]:
        """The step's row of ``log.jsonl``: what every step records (the log line and validation add theirs)."""
        row = {"step": self.step, "tokens": self.step * pace.tokens_per_step, "train_loss": loss, "lr": lr,
               "grad_norm": norm}
        if self.scaler is not None:
            row.update(loss_scale=self.scaler.scale, skipped=self.last_step_skipped)
        return row

    def _log_line(self, row: dict[str, Any], pace: _Pace) -> None:
        """The log line of the steps since the last one (mean loss, speed, MFU, ETA); adds the speed to ``row``."""
        now = time.perf_counter()
        loss, tok_s = pace.end_interval(now)
        mfu = model_flops_utilisation(tok_s, self.flops_per_token, self.peak_flops)
        row.update(tokens_per_s=tok_s, mfu=mfu)
        self.log(f"step {self.step:>6d}/{self.config.max_steps} | loss {loss:.4f} | lr {row['lr']:.2e} | "
                 f"norm {row['grad_norm']:.3f} | {tok_s:,.0f} tok/s | MFU {100 * mfu:.1f}% | "
                 f"ETA {format_seconds(pace.eta(self.step, now - pace.started))}"
                 + (f" | loss scale {self.scaler.scale:g}" if self.scaler is not None else ""))

    def _validate_into(self, row: dict[str, Any]) -> float:
        """The validation loss, logged and added to ``row`` with its perplexity (eq:perplexity)."""
        val = self.validate()
        row.update(val_loss=val, val_ppl=math.exp(val))
        self._log_validation(val)
        return val

    def _log_validation(self, val: float) -> None:
        """The log line of a validation run: its loss and perplexity at this step."""
        self.log(f"step {self.step:>6d}/{self.config.max_steps} | val loss {val:.4f} | val ppl {math.exp(val):.2f}")

    def _finish(self, stop: GracefulStop, saved_step: Optional[int]) -> None:
        """After the loop: a stopped run gets a checkpoint of its last step (if the loop did not just
        write one) and a line saying how to go on; the progress bar closes."""
        if stop.requested and saved_step != self.step:
            self.save_checkpoint()
            self._draw_curve(final=True)
        if stop.requested:
            self.log(f"{stop.name}: stopped at step {self.step} with a checkpoint; continue with --resume")
        if self._bar is not None:
            self._bar.close()

    # ------------------------------------------------------------ logging
    def _record(self, row: dict[str, Any]) -> None:
        """Append a row to log.jsonl and loss.csv (step, train loss, val loss, lr); rank 0 only."""
        if not self.world.is_main:
            return
        with fileio.naming(self.run_dir / "log.jsonl"), open(self.run_dir / "log.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        csv_path = self.run_dir / "loss.csv"
        new = not csv_path.exists()
        with fileio.naming(csv_path), open(csv_path, "a") as f:
            if new:
                f.write("step,train_loss,val_loss,lr\n")
            cells = [row["step"]] + [("" if row.get(k) is None else f"{row[k]:.6g}")
                                     for k in ("train_loss", "val_loss", "lr")]
            f.write(",".join(str(x) for x in cells) + "\n")

    def _draw_curve(self, final: bool = False) -> None:
        """Redraw ``RUN_DIR/loss_curve.png`` (``npgpt.training.plot``) when matplotlib is there; rank 0 only.

        At most every ``CURVE_SECONDS`` (drawing takes a tenth of a second;
        a fast run logs many times a second), and always at the end.
        """
        now = time.perf_counter()
        if not self.world.is_main or (not final and now - self._curve_drawn < CURVE_SECONDS):
            return
        if self._can_draw is None:
            self._can_draw = plot.matplotlib_available()
            if not self._can_draw:            # said once: the run goes on without its picture
                self.log(f"not drawing {plot.FIGURE_NAME}: {plot.NO_MATPLOTLIB}")
        if self._can_draw:
            figure = plot.plot_runs([self.run_dir], self.run_dir / plot.FIGURE_NAME, title=str(self.run_dir))
            self._curve_drawn = now
            if final:
                self.log(f"loss curve: {figure}")

    def _truncate_logs(self, step: int) -> None:
        """Drop log rows after ``step``: a run killed after its last checkpoint redoes those steps."""
        if not self.world.is_main:
            return
        rundir.truncate_logs(self.run_dir, step)      # a torn last row (full disk, kill) is dropped

    # --------------------------------------------------------- checkpoint
    def _gathered_optimizer_state(self) -> Optional[dict[str, Any]]:
        """AdamW's state as one unsharded dict on rank 0 (every rank must call this under ZeRO-1)."""
        optimizer_state = self.optimizer.state_dict()
        if self.shard is not None:
            optimizer_state = _merge_shards(self.world.gather(optimizer_state),
                                            param_groups(self.model, self.config.weight_decay))
        return optimizer_state

    def save_checkpoint(self) -> Optional[pathlib.Path]:
        """Write ``RUN_DIR/checkpoint`` atomically (``npgpt.training.rundir``); returns its path.

        Under MPI every rank calls this (with a sharded optimizer the moments
        are gathered from all of them into the usual single-file layout, so
        any number of ranks can resume), and rank 0 writes; others return None.
        """
        optimizer_state = self._gathered_optimizer_state()
        if not self.world.is_main:
            return None

        def write_files(staging: pathlib.Path) -> None:
            with lora.merged_view(self.model):           # with LoRA: the adapters folded in
                self.model.save_pretrained(staging)
            if self.config.lora_rank:                     # and the adapter itself, in PEFT's format
                lora.save_adapter(self.model, staging / lora.CHECKPOINT_ADAPTER, base_model=self.config.init_from)
            if self.tokenizer_dir is not None:
                for item in sorted(self.tokenizer_dir.iterdir()):
                    if item.is_file():
                        shutil.copy2(item, staging / item.name)
            rundir.save_optimizer(optimizer_state, staging / rundir.OPTIMIZER_NAME)

        c = self.config
        state = {"step": self.step, "train_config": c.to_dict(), "model_config": self.model_config.to_dict(),
                 "sampler": self.sampler.state_dict(), "dropout_rngs": rundir.dropout_states(self.model),
                 "grad_scaler": self.scaler.state_dict() if self.scaler is not None else None,
                 "data_meta": self.meta, "tokens_seen": self.step * c.batch_size * c.block_size * c.grad_accum}
        return rundir.write_checkpoint(self.run_dir, write_files, state)


def _owned_groups(groups: list[dict[str, Any]], owned: set[str]) -> list[dict[str, Any]]:
    """``param_groups`` restricted to the parameters this rank owns (ZeRO-1); empty groups are kept."""
    kept = []
    for group in groups:
        pairs = [(n, p) for n, p in zip(group["names"], group["params"]) if n in owned]
        kept.append({**group, "names": [n for n, _ in pairs], "params": [p for _, p in pairs]})
    return kept


def _merge_shards(states: Optional[list[dict[str, Any]]], full_groups: list[dict[str, Any]]) -> Optional[dict]:
    """The optimizer state of an unsharded run, from every rank's shard (on rank 0; None elsewhere)."""
    if states is None:
        return None
    merged = dict(states[0])
    merged["state"] = {name: entry for s in states for name, entry in s["state"].items()}
    merged["param_groups"] = [{**{k: v for k, v in states[0]["param_groups"][i].items() if k != "names"},
                               "names": list(group["names"])} for i, group in enumerate(full_groups)]
    return merged


def train(config: Optional[TrainConfig] = None, stop_at: Optional[int] = None, resume: bool = False,
          log: Optional[Callable[[str], None]] = None, **settings: Any) -> tuple[Trainer, dict[str, Any]]:
    """Train (or with ``resume=True`` continue) a run; returns ``(trainer, summary)``.

    ``train(data_dir=..., out_dir=..., max_steps=200)`` or ``train(TrainConfig(...))``.
    """
    if resume:
        run_dir = settings.pop("out_dir", None) or (config.out_dir if config is not None else None)
        if run_dir is None:
            raise ValueError("train(resume=True) needs out_dir, the run directory to continue")
        trainer = Trainer.resume(run_dir, log=log, **settings)    # only the settings given explicitly change
    else:
        config = config if config is not None else TrainConfig(**settings)
        trainer = Trainer(config, log=log)
    return trainer, trainer.train(stop_at=stop_at)
