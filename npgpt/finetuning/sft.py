"""Supervised fine-tuning (SFT) of a language model on conversations (docs/agent.md).

Three parts. Giving a pretrained model the chat template's role markers: the tokenizer gains
``<|im_start|>`` and ``<|im_end|>`` as special tokens (``npgpt.tokenizer.chat.with_chat_tokens``),
and the model's token table grows by as many rows; the LM head is tied to that table, so it grows
with it, and a new row is both the marker's input vector and its output vector. The loss: next-token
cross-entropy on the assistant's tokens only (docs/agent.md eq:sft-loss, eq:sft-targets, eq:sft-grad).
The run: ``SFTTrainer``, the
pretraining loop (``npgpt.training.train.Trainer``) with conversations for batches, behind ``npgpt sft``.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import pathlib
from collections.abc import Callable
from typing import Any, ClassVar, Optional

from npgpt import backend, nn
from npgpt.autograd import Tensor, no_grad
from npgpt.finetuning import conversations, lora
from npgpt.finetuning.conversations import IGNORE_INDEX, count_trained
from npgpt.io.checkpoint import CheckpointError
from npgpt.model import GPT
from npgpt.tokenizer import Tokenizer
from npgpt.tokenizer.chat import IM_END, IM_START, with_chat_tokens
from npgpt.training import engine, rundir, settings
from npgpt.training.mixed_precision import NO_LOSS_SCALING
from npgpt.training.settings import OptimizerSettings, retune, setting
from npgpt.training.train import RunSettings, Trainer


def resize_token_embeddings(model: GPT, vocab_size: int) -> GPT:
    """Grow ``model``'s token table (and so its tied LM head) to ``vocab_size`` rows, in place.

    The new rows are the mean of the old ones (docs/agent.md eq:new-row-mean), as is common (Hewitt
    2021, "Initializing new word embeddings"): a new token's logit is then the average logit, so the
    model's predictions over the old vocabulary barely move, where a random row could take a large
    share of the probability at the start and a zero row would still take ``exp(0)``'s share.
    The old rows are kept exactly. Shrinking is refused: it would drop tokens the model knows.
    """
    old = model.wte.weight.data                       # (V, C)
    V, C = old.shape
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < V:
        raise ValueError(f"vocab_size must be an integer >= the model's {V} tokens, got {vocab_size!r}")
    if vocab_size == V:
        return model
    xp = backend.array_module(old)
    mean = old.astype(xp.float64).mean(axis=0, keepdims=True).astype(old.dtype)     # (1, C)
    grown = xp.concatenate([old, xp.repeat(mean, vocab_size - V, axis=0)], axis=0)   # (vocab_size, C)
    model.wte.weight = nn.Parameter(grown)
    model.wte.num_embeddings = vocab_size
    model.config.vocab_size = vocab_size
    return model


def add_chat_tokens(model: GPT, tokenizer: Tokenizer) -> tuple[GPT, Tokenizer]:
    """Give ``model`` and ``tokenizer`` npgpt's chat template: the tokenizer gains the role markers as
    special tokens (those it lacks) and the template; the model's table grows to match, in place.

    Returns ``(model, chat_tokenizer)``. Save both (``model.save_pretrained(d)``,
    ``chat_tokenizer.save(d)``) and they reload together. The model must have one row per id of the
    tokenizer (a table padded past the vocabulary would give the markers rows that were never trained
    nor initialised as docs/agent.md eq:new-row-mean says, so it is refused).
    """
    if model.config.vocab_size != tokenizer.vocab_size:
        raise ValueError(f"the model has {model.config.vocab_size} token rows but the tokenizer has "
                         f"{tokenizer.vocab_size} ids: add_chat_tokens needs the model's own tokenizer")
    chat_tokenizer = with_chat_tokens(tokenizer)
    resize_token_embeddings(model, chat_tokenizer.vocab_size)
    return model, chat_tokenizer


# ================================================================= the loss
def sft_loss(model: GPT, x: Any, y: Any) -> Tensor:
    """The SFT loss of a batch (docs/agent.md eq:sft-loss): the mean next-token cross-entropy over the targets
    the assistant says, ``y != IGNORE_INDEX``, all rows of the batch together (a long answer weighs
    more than a short one, token for token); every other position contributes nothing, and its
    gradient is exactly zero (eq:sft-grad)."""
    return model.loss(x, y, ignore_index=IGNORE_INDEX)


def step_loss(model: GPT, rows: int, trained: int) -> Callable[[Any, Any], Tensor]:
    """The loss of any slice of a step's batches, weighted so that the step's gradient is eq:sft-loss's over
    the whole step: ``trained`` targets in micro-batches of ``rows`` conversations.

    The engine adds micro-batches' gradients, and splits each micro-batch by rows over threads and
    MPI ranks, weighting a slice of ``n`` rows by ``n / rows`` as if its loss were a mean over rows
    (docs/performance.md eq:shard-gradients). A slice with ``t`` targets and masked mean ``m`` therefore returns
    ``m t rows / (trained n)``: weighted by ``n / rows`` it is its targets' sum over ``trained``, and
    the slices add up to the mean over every target of the step, however the rows were split.
    """
    def loss_fn(x: Any, y: Any) -> Tensor:
        return sft_loss(model, x, y) * (count_trained(y) * rows / (trained * x.shape[0]))
    return loss_fn


# ================================================================= settings
@dataclasses.dataclass
class SFTConfig(lora.LoRASettings, OptimizerSettings, RunSettings):
    """Everything that defines a supervised fine-tuning run (saved in every checkpoint); one flag each.

    The ``lora_*`` settings (``npgpt.finetuning.lora.LoRASettings``) train low-rank adapters on the
    frozen model instead of its weights (docs/agent.md, "LoRA"); the optimizer's and the precision's
    are ``npgpt.training.settings.OptimizerSettings``, with a smaller learning rate and no weight
    decay; the loop's are pretraining's (``npgpt.training.train.RunSettings``), for shorter runs.
    """

    KIND: ClassVar[str] = "SFT"

    model: str = setting("", "the model to fine-tune: a directory, npgpt-small, or a Hub id (hub extra)")
    data: str = setting("", "conversations, one JSON object per line: {\"messages\": [...]} or {\"prompt\", \"response\"}")
    val_data: str = setting("", "held-out conversations (default: --val-fraction of --data, chosen by --seed)")
    out_dir: str = setting("", "run directory for checkpoints and logs")
    val_fraction: float = setting(0.1, "share of --data held out when there is no --val-data")
    block_size: Optional[int] = setting(None, "context length in tokens; may only shrink the model's (default: the "
                                              "model's)")
    dropout: float = setting(0.0, "dropout probability while fine-tuning")
    lora_freeze_markers: bool = setting(False, "with LoRA: keep the rows of the chat markers this run adds frozen "
                                               "(by default they train, as PEFT's trainable_token_indices)")
    # the loop's settings with fine-tuning's defaults: shorter runs, all of the held-out conversations
    batch_size: int = retune(RunSettings, "batch_size", 8, "conversations per micro-batch, each a row padded to the "
                                                           "longest")
    max_steps: int = retune(RunSettings, "max_steps", 300)
    eval_interval: int = retune(RunSettings, "eval_interval", 50)
    eval_iters: int = retune(RunSettings, "eval_iters", 0, "validation batches per run (0: every held-out "
                                                          "conversation)")
    seed: int = retune(RunSettings, "seed", 1337, "seed of the split, the batches and dropout")
    lr: float = retune(OptimizerSettings, "lr", 1e-4)
    weight_decay: float = retune(OptimizerSettings, "weight_decay", 0.0)

    def __post_init__(self) -> None:
        name = "SFTConfig"
        self.check_run()
        settings.require_positive_ints(name, self, ("block_size",), allow_none=True)
        settings.require_non_negative(name, self, ("eval_iters",))
        self.check_optimizer()
        self.warmup_steps = self.warmup_for(self.max_steps)      # stored resolved, in every checkpoint
        settings.check_dropout(name, self)
        if not 0 < self.val_fraction < 1:
            settings.fail(name, "val_fraction", f"{{name}} must lie strictly between 0 and 1, got {self.val_fraction}")
        self.check_lora()


# ================================================================= the trainer
class SFTTrainer(Trainer):
    """Supervised fine-tuning with the pretraining loop (``npgpt.training.train.Trainer``): the same step, logs,
    plots, checkpoints, exact resume, Ctrl-C and MPI; here the batches are padded conversations and
    the loss is eq:sft-loss.

    ``SFTTrainer(config)`` starts a run from ``config.model``: a model without a chat template first
    gets npgpt's (``add_chat_tokens``), and the checkpoint's tokenizer carries it.
    ``SFTTrainer.resume(run_dir)`` continues one.
    """

    def __init__(self, config: SFTConfig, log: Optional[Callable[[str], None]] = None,
                 _state: Optional[tuple[pathlib.Path, dict[str, Any]]] = None) -> None:
        if not config.out_dir:
            raise ValueError("SFTConfig.out_dir is empty: name a run directory for checkpoints and logs")
        if _state is None and not (config.model and config.data):
            raise ValueError("supervised fine-tuning needs a model (--model) and conversations (--data)")
        self._setup_logging(config, log)
        self.run_dir = pathlib.Path(config.out_dir)
        model, config = self._prepare_model(config, _state)
        self.config = config
        self.model_config = model.config
        examples = conversations.load(config.data, self.tokenizer, config.block_size)
        if config.val_data:
            self.train_examples = examples
            self.val_examples = conversations.load(config.val_data, self.tokenizer, config.block_size)
        else:
            self.train_examples, self.val_examples = conversations.split(examples, config.val_fraction, config.seed)
        if config.batch_size < self.world.size:
            raise ValueError(f"--batch-size {config.batch_size} is the global batch and must be at least the "
                             f"number of ranks ({self.world.size})")
        self.pad_id = conversations.pad_id_of(self.tokenizer)
        self.sampler = conversations.ConversationSampler(self.train_examples, config.batch_size, self.pad_id,
                                                         seed=config.seed)
        self._choose_device(config)              # one GPU per rank; the MFU peak of that GPU
        self.model = model.to(self.device)
        self.model.train()
        self._setup_optimizer()
        self.meta = {"train_conversations": len(self.train_examples), "val_conversations": len(self.val_examples)}
        self.tokenizer_dir = None
        if _state is not None:
            self._restore(*_state)

    def _prepare_model(self, config: SFTConfig, _state: Optional[tuple[pathlib.Path, dict[str, Any]]]
                       ) -> tuple[GPT, SFTConfig]:
        """The model to train and ``config`` with its block size: loaded, given the chat tokens if it has
        none, cropped, dropout set, and with LoRA its adapters (new, or the checkpoint's on resume);
        ``self.tokenizer`` is set on the way."""
        source = _state[0] if _state is not None else config.model
        model, self.tokenizer = GPT.from_pretrained(source), Tokenizer.from_pretrained(source)
        if _state is not None and config.lora_rank:
            # A LoRA checkpoint's weights are merged (for npgpt chat); training goes on from the exact
            # base, rebuilt from --model as the run began, and the adapter saved beside the weights.
            model, tokenizer = GPT.from_pretrained(config.model), Tokenizer.from_pretrained(config.model)
            if tokenizer.chat_template is None:
                model, _ = add_chat_tokens(model, tokenizer)
        markers: tuple[int, ...] = ()                  # the ids of the markers this run adds, if any
        if self.tokenizer.chat_template is None:
            model, self.tokenizer = add_chat_tokens(model, self.tokenizer)
            markers = (self.tokenizer.special_tokens[IM_START], self.tokenizer.special_tokens[IM_END])
            self.log(f"{config.model} has no chat template: added npgpt's (ChatML), its role markers "
                     f"{IM_START} and {IM_END} as ids {self.tokenizer.special_tokens[IM_START]} and "
                     f"{self.tokenizer.special_tokens[IM_END]}")
        if config.block_size is None:
            config = dataclasses.replace(config, block_size=model.config.block_size)
        elif config.block_size > model.config.block_size:
            settings.fail("SFTConfig", "block_size", f"{{name}}={config.block_size} is longer than the "
                                                     f"{model.config.block_size} positions of {source}; it may only shrink")
        model.crop_block_size(config.block_size).set_dropout(config.dropout)
        # With LoRA the token table is frozen; the markers' new rows train (eq:trainable-tokens), or they never learn.
        adapter = config.lora_config(seed=config.seed, tokens=() if config.lora_freeze_markers else markers)
        if adapter is not None and _state is not None:
            lora.load_adapter(model, _state[0] / lora.CHECKPOINT_ADAPTER)
        elif adapter is not None:
            lora.apply_lora(model, adapter)
            self.log(lora.describe_trainable(model))
        return model, config

    @classmethod
    def resume(cls, run_dir: str | os.PathLike, log: Optional[Callable[[str], None]] = None,
               **overrides: Any) -> SFTTrainer:
        """Continue the run in ``run_dir`` from its newest checkpoint; ``overrides`` as ``Trainer.resume``."""
        run_dir = pathlib.Path(run_dir)
        checkpoint, state = rundir.checkpoint_to_resume(run_dir)
        if "sft_config" not in state:
            raise ValueError(f"{checkpoint} is not a checkpoint of npgpt sft (resume it with the command that wrote it)")
        values = dict(state["sft_config"])
        for key, value in overrides.items():
            if value is None:
                continue
            if key in ("model", "data", "val_data", "block_size", "val_fraction", "lora_rank", "lora_alpha",
                       "lora_dropout", "lora_targets") and value != values.get(key, value):
                raise ValueError(f"cannot resume with {key}={value}: the run was started with {key}={values[key]}")
            values[key] = value
        values["out_dir"] = str(run_dir)
        return cls(SFTConfig.from_dict(values), log=log, _state=(checkpoint, state))

    def tokens_per_step(self) -> int:
        """Conversations per step times their mean length: what a step trains on, on average (rows
        differ in length, so a single step's count varies around it)."""
        c = self.config
        mean = sum(len(e.ids) - 1 for e in self.train_examples) / len(self.train_examples)
        return max(1, round(c.batch_size * c.grad_accum * mean))

    # ---------------------------------------------------------------- the step
    def evaluate(self) -> float:
        """eq:sft-loss over the held-out conversations (all of them, or ``eval_iters`` batches): the mean
        cross-entropy of every assistant token, the same fixed set every time."""
        c = self.config
        self.model.eval()
        total, count = 0.0, 0
        batches = itertools.islice(conversations.batches(self.val_examples, c.batch_size, self.pad_id),
                                   c.eval_iters or None)
        with no_grad():
            for (x, y), _ in self.group.local_batches(batches):         # under mpiexec: this rank's rows
                n = conversations.count_trained(y)
                if n:
                    total += sft_loss(self.model, x, y).item() * n
                    count += n
        self.model.train()
        return self.group.sum(total) / self.group.sum(float(count))

    def train_step(self) -> tuple[float, float, float]:
        """One optimizer step over ``grad_accum`` micro-batches of conversations: eq:sft-loss over all of
        their assistant tokens (``step_loss``); returns (loss, gradient norm, lr)."""
        c = self.config
        lr = c.learning_rate(self.step, c.max_steps)
        batches = [self.sampler.next() for _ in range(c.grad_accum)]
        trained = sum(conversations.count_trained(y) for _, y in batches)
        result = engine.optimizer_step(self.optimizer, step_loss(self.model, c.batch_size, trained), batches, lr,
                                       c.grad_clip, self.workers, step=self.step + 1,
                                       scaler=self.scaler or NO_LOSS_SCALING, group=self.group)
        self.step += 1
        self.last_step_skipped = result.skipped
        return result.loss, result.grad_norm, lr

    # ---------------------------------------------------------------- checkpoints
    def _restore(self, checkpoint: pathlib.Path, state: dict[str, Any]) -> None:
        rundir.load_optimizer(self.optimizer, checkpoint / rundir.OPTIMIZER_NAME)
        try:
            self.sampler.load_state_dict(state["sampler"])
            rundir.restore_dropout_states(self.model, state.get("dropout_rngs") or {})
            if self.scaler is not None and state.get("grad_scaler"):
                self.scaler.load_state_dict(state["grad_scaler"])
            self.step = int(state["step"])
        except (KeyError, TypeError, AttributeError, IndexError) as exc:
            raise CheckpointError(f"{checkpoint / rundir.STATE_NAME} holds a state npgpt cannot continue from "
                                  f"({type(exc).__name__}: {exc})") from None
        self.log(f"resumed from {checkpoint} at step {self.step}")

    def save_checkpoint(self) -> Optional[pathlib.Path]:
        """``RUN_DIR/checkpoint``: the model and its chat tokenizer (a directory ``npgpt chat`` opens),
        AdamW's moments and the run's state, written atomically (``npgpt.training.rundir``)."""
        optimizer_state = self._gathered_optimizer_state()
        if not self.world.is_main:
            return None

        def write_files(staging: pathlib.Path) -> None:
            with lora.merged_view(self.model):           # with LoRA: the adapters folded in, for npgpt chat
                self.model.save_pretrained(staging)
            self.tokenizer.save(staging)
            if self.config.lora_rank:                     # and the adapter itself, in PEFT's format
                lora.save_adapter(self.model, staging / lora.CHECKPOINT_ADAPTER, base_model=self.config.model)
            rundir.save_optimizer(optimizer_state, staging / rundir.OPTIMIZER_NAME)

        state = {"step": self.step, "sft_config": self.config.to_dict(), "model_config": self.model_config.to_dict(),
                 "sampler": self.sampler.state_dict(), "dropout_rngs": rundir.dropout_states(self.model),
                 "grad_scaler": self.scaler.state_dict() if self.scaler is not None else None,
                 "data": self.meta, "tokens_seen": self.step * self.tokens_per_step()}
        return rundir.write_checkpoint(self.run_dir, write_files, state)


def sft(config: Optional[SFTConfig] = None, stop_at: Optional[int] = None, resume: bool = False,
        log: Optional[Callable[[str], None]] = None, **values: Any) -> tuple[SFTTrainer, dict[str, Any]]:
    """Fine-tune (or with ``resume=True`` continue); returns ``(trainer, summary)``.

    ``sft(model="npgpt-small", data="chats.jsonl", out_dir="run", max_steps=200)`` or ``sft(SFTConfig(...))``.
    """
    if resume:
        run_dir = values.pop("out_dir", None) or (config.out_dir if config is not None else None)
        if run_dir is None:
            raise ValueError("sft(resume=True) needs out_dir, the run directory to continue")
        trainer = SFTTrainer.resume(run_dir, log=log, **values)
    else:
        trainer = SFTTrainer(config if config is not None else SFTConfig(**values), log=log)
    return trainer, trainer.train(stop_at=stop_at)
