"""Fine-tuning a ``GPTClassifier`` on labelled text: what trains, the loop, evaluation.

Companion of ``docs/finetuning.md``.

* :func:`freeze` keeps all but the last k blocks (and the head) fixed.
* :func:`layer_groups` cuts the classifier into ULMFiT's layer groups, the
  unit of gradual unfreezing (:func:`unfreeze_top`) and of discriminative
  learning rates (``layer_lr_decay``).
* :class:`FinetuneConfig` holds the settings (``npgpt finetune`` has a flag
  for each).
* :func:`finetune` trains with the pretraining loop's own step
  (``npgpt.training.engine.optimizer_step``: sharded backward, clipping, AdamW), the
  warmup + cosine schedule of ``npgpt.training.optim`` and the atomic checkpoint
  writer of ``npgpt.io.checkpoint``; it evaluates on a held-out split after each
  epoch and stops early when the validation loss stops improving.
* :func:`evaluate` and :func:`text_probabilities` run a classifier over texts.

The data it reads comes from ``npgpt.finetuning.labelled`` (files, label sets, padding)
and its scores from ``npgpt.finetuning.metrics``.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn, Optional

import numpy as np

from npgpt.finetuning import lora
from npgpt.finetuning.labelled import next_token_targets, pad_batch
from npgpt.finetuning.metrics import classification_metrics
from npgpt.io import fileio
from npgpt.tokenizer.bpe import ENDOFTEXT
from npgpt.training import distributed, engine, optim, settings
from npgpt.training.interrupt import GracefulStop
from npgpt.training.mixed_precision import NO_LOSS_SCALING, GradScaler
from npgpt.training.progress import Progress, format_seconds
from npgpt.training.settings import retune, setting

if TYPE_CHECKING:
    from npgpt.autograd import Tensor
    from npgpt.backend import Array
    from npgpt.finetuning.classifier import GPTClassifier

__all__ = ["freeze", "layer_groups", "unfreeze_top", "lr_scales", "pad_id_for", "Encoded", "FinetuneConfig",
           "FinetuneResult", "finetune", "evaluate",
           "text_probabilities"]


# GPTClassifier's pooling names (npgpt.finetuning.classifier.POOLINGS; a test keeps the two equal). Imported
# from there they would make an import cycle: the classifier imports this module to classify texts.
POOLINGS = ("last", "mean", "concat")


# ------------------------------------------------------------------- freezing
def freeze(classifier: GPTClassifier, train_last: Optional[int] = None) -> list[str]:
    """Choose what trains: everything (``None``) or the last ``train_last`` blocks + ``ln_f`` + head.

    ``train_last=0`` trains the head alone (a linear probe of frozen features).
    Frozen parameters get ``requires_grad = False``: the autograd engine then
    records no graph through them, so they cost a forward pass and nothing
    else. Returns the names of the trainable parameters.
    """
    n = len(classifier.transformer.h)
    if train_last is not None and not 0 <= int(train_last) <= n:
        raise ValueError(f"train_last must lie in 0..{n} (the model has {n} blocks), got {train_last}")
    prefixes = ["score."]
    if train_last is None:
        prefixes = [""]
    elif int(train_last) > 0:
        prefixes += ["transformer.ln_f."] + [f"transformer.h.{i}." for i in range(n - int(train_last), n)]
    trainable = []
    for name, p in classifier.named_parameters():
        p.requires_grad = any(name.startswith(prefix) for prefix in prefixes)
        if p.requires_grad:
            trainable.append(name)
    return trainable


def layer_groups(classifier: GPTClassifier) -> list[tuple[str, ...]]:
    """ULMFiT's layer groups as name prefixes, top first: the head; ``ln_f`` with the last block; each
    lower block; the embeddings (token and position tables). Every parameter is in exactly one.

    Gradual unfreezing trains the top ``k`` groups (:func:`unfreeze_top`); a
    layer-wise learning-rate decay ``d`` gives group ``k >= 1`` the rate
    ``lr / d^(k-1)`` (docs/finetuning.md eq:discriminative-lr), the head keeping ``head_lr``.
    """
    n = len(classifier.transformer.h)
    groups = [("score.",), ("transformer.ln_f.", f"transformer.h.{n - 1}.")]
    groups += [(f"transformer.h.{i}.",) for i in range(n - 2, -1, -1)]
    return groups + [("transformer.wte.", "transformer.wpe.")]


def group_index(name: str, groups: Sequence[tuple[str, ...]]) -> int:
    """The index in ``groups`` (from :func:`layer_groups`) of the group that holds parameter ``name``."""
    for k, prefixes in enumerate(groups):
        if name.startswith(prefixes):
            return k
    raise ValueError(f"parameter {name!r} is in no layer group (groups: {list(groups)})")


def unfreeze_top(classifier: GPTClassifier, k: int) -> list[str]:
    """Train the top ``k`` layer groups of :func:`layer_groups` and freeze the rest (``k >= 1``).

    Gradual unfreezing (Howard & Ruder 2018) calls it with ``k = 1`` (the head
    alone), then 2, 3, ...: the new head learns on fixed features before the
    error it sends back is allowed to move the pretrained blocks, the top ones
    first. Returns the names of the trainable parameters.
    """
    groups = layer_groups(classifier)
    if not 1 <= k <= len(groups):
        raise ValueError(f"k must lie in 1..{len(groups)} (the classifier has {len(groups)} layer groups), got {k}")
    trainable = []
    for name, p in classifier.named_parameters():
        p.requires_grad = group_index(name, groups) < k
        if p.requires_grad:
            trainable.append(name)
    return trainable


# ---------------------------------------------------------------- the loop
@dataclasses.dataclass
class FinetuneConfig(lora.LoRASettings, settings.OptimizerSettings):
    """Settings of :func:`finetune` (every one has a default; ``npgpt finetune`` has a flag for each).

    The optimizer's and the precision's settings are
    ``npgpt.training.settings.OptimizerSettings``, as in pretraining, with
    fine-tuning's defaults: a smaller ``lr`` (the backbone's), a cosine decay
    to 0, Hugging Face's weight decay and ``beta2``. ``warmup_steps`` counts
    optimizer steps (the run has ``epochs`` times the batches of an epoch;
    default: a tenth of them, at most 100). ``head_lr`` defaults to ``lr`` (a
    fresh head can take a larger one); ``workers`` CPU threads
    (``npgpt.training.parallel``; ``None``: one per core without dropout,
    else 1). The ``lora_*`` settings (inherited from
    ``npgpt.finetuning.lora.LoRASettings``) train low-rank adapters and the
    head instead of the backbone's weights (docs/agent.md, "LoRA").
    """

    KIND: ClassVar[str] = "fine-tuning"

    lr: float = retune(settings.OptimizerSettings, "lr", 1e-4, "peak learning rate of the backbone")
    min_lr: Optional[float] = retune(settings.OptimizerSettings, "min_lr", 0.0,
                                     "learning rate at the end of the cosine decay")
    weight_decay: float = retune(settings.OptimizerSettings, "weight_decay", 0.01)
    beta2: float = retune(settings.OptimizerSettings, "beta2", 0.999)
    epochs: int = setting(3, "passes over the training texts")
    batch_size: int = setting(32, "texts per optimizer step")
    head_lr: Optional[float] = setting(None, "peak learning rate of the new head (default: lr)")
    train_last: Optional[int] = setting(None, "train only the last K blocks, ln_f and the head "
                                              "(0: the head only; default: everything)")
    max_length: int = setting(128, "tokens kept per text (the start of longer texts)")
    pad_side: str = setting("right", "where padding goes: right or left")
    eval_every: Optional[int] = setting(None, "steps between evaluations (default: once per epoch)")
    log_interval: int = setting(50, "steps between progress lines when not on a terminal (a terminal gets a bar)")
    patience: int = setting(2, "evaluations without a better validation score (best_metric) before stopping early")
    best_metric: str = setting("loss", "which validation score picks the weights kept and stops early: loss (the "
                                       "lowest) or accuracy (the highest; ties: the lower loss)")
    seed: int = setting(0, "seed of the split, the head's weights and the batch order")
    workers: Optional[int] = setting(None, "CPU threads to split each batch over (default: one per core)")
    pooling: Optional[str] = setting(None, "what a new head reads: last (the last real token), mean, or concat "
                                           "(last, mean and max; ULMFiT) (default: last, or a saved classifier's)")
    head_dropout: float = setting(0.0, "dropout on the pooled vector the head reads, in [0, 1)")
    dropout: Optional[float] = setting(None, "dropout in the backbone while fine-tuning (embedding, attention, "
                                             "residual; GPT-1: 0.1), in [0, 1) (default: the model's own)")
    lm_loss_weight: float = setting(0.0, "weight lambda of the auxiliary language-modelling loss added to the "
                                         "task's (GPT-1: 0.5; 0: off)")
    unfreeze: str = setting("all", "all: train every layer from the start; gradual: the head first, then one more "
                                   "layer group (block) every unfreeze_every steps, top down (ULMFiT)")
    unfreeze_every: Optional[int] = setting(None, "steps between two unfreezings with --unfreeze gradual "
                                                  "(default: one epoch)")
    layer_lr_decay: float = setting(1.0, "discriminative learning rates: each layer group below the top block "
                                         "learns this many times slower than the one above (ULMFiT: 2.6; 1: off)")

    def __post_init__(self) -> None:
        def fail(field: str, template: str) -> NoReturn:
            settings.fail("FinetuneConfig", field, template)

        settings.require_positive_ints("FinetuneConfig", self, ("epochs", "batch_size", "max_length", "patience",
                                                                 "log_interval"))
        settings.require_positive_ints("FinetuneConfig", self, ("eval_every", "workers"), allow_none=True)
        if self.train_last is not None and (int(self.train_last) != self.train_last or self.train_last < 0):
            fail("train_last", f"{{name}} must be a non-negative integer, got {self.train_last!r}")
        self.check_optimizer()
        if self.head_lr is None:
            self.head_lr = self.lr
        if not self.head_lr > 0:
            fail("head_lr", f"{{name}} must be positive, got {self.head_lr}")
        if self.pad_side not in ("left", "right"):
            fail("pad_side", f"{{name}} must be 'left' or 'right', got {self.pad_side!r}")
        if self.best_metric not in ("loss", "accuracy"):
            fail("best_metric", f"{{name}} must be 'loss' or 'accuracy', got {self.best_metric!r}")
        self.check_lora()
        self._check_ulmfit(fail)
        if self.lora_rank and self.train_last is not None:
            fail("train_last", "{name} chooses blocks to train in full; with LoRA the adapters train instead "
                               "(use one or the other)")


    def _check_ulmfit(self, fail: Callable[[str, str], NoReturn]) -> None:
        """Pooling, head dropout, unfreezing and the layer-wise learning-rate decay."""
        if self.pooling is not None and self.pooling not in POOLINGS:
            fail("pooling", f"{{name}} must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        if not 0.0 <= self.head_dropout < 1.0:
            fail("head_dropout", f"{{name}} must be in [0, 1), got {self.head_dropout}")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            fail("dropout", f"{{name}} must be in [0, 1), got {self.dropout}")
        if not self.lm_loss_weight >= 0.0:
            fail("lm_loss_weight", f"{{name}} must be non-negative (0: no auxiliary loss), got {self.lm_loss_weight}")
        if self.unfreeze not in ("all", "gradual"):
            fail("unfreeze", f"{{name}} must be 'all' or 'gradual', got {self.unfreeze!r}")
        settings.require_positive_ints("FinetuneConfig", self, ("unfreeze_every",), allow_none=True)
        if self.unfreeze_every is not None and self.unfreeze != "gradual":
            fail("unfreeze_every", "{name} times gradual unfreezing: give it with unfreeze='gradual'")
        if self.unfreeze == "gradual" and (self.lora_rank or self.train_last is not None):
            fail("unfreeze", "{name}='gradual' chooses what trains step by step; it cannot be combined with "
                             "train_last or LoRA")
        if not self.layer_lr_decay > 0:
            fail("layer_lr_decay", f"{{name}} must be positive (1: the same rate for every layer), "
                                   f"got {self.layer_lr_decay}")


class Encoded:
    """Token ids of texts (truncated to ``max_length``) with their class ids."""

    def __init__(self, tokenizer: Any, texts: Sequence[str], labels: Sequence[int] | np.ndarray,
                 max_length: int) -> None:
        if len(texts) != len(labels):
            raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
        if not texts:
            raise ValueError("no examples to train or evaluate on")
        self.ids = []
        encode = _plain_text_encoder(tokenizer)
        for i, text in enumerate(texts):
            ids = list(encode(text))[:max_length]
            if not ids:
                raise ValueError(f"text {i + 1} ({text!r}) encodes to no tokens")
            self.ids.append(ids)
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, rows: Sequence[int] | np.ndarray, pad_id: int,
              side: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        idx, mask = pad_batch([self.ids[r] for r in rows], pad_id=pad_id, side=side)
        return idx, mask, self.labels[rows]


def _plain_text_encoder(tokenizer: Any) -> Callable[[str], list[int]]:
    """``tokenizer.encode`` that reads a special token's text in a review ("<|endoftext|>") as
    ordinary characters instead of refusing it (npgpt's and tiktoken's ``disallowed_special=()``)."""
    try:
        tokenizer.encode("", disallowed_special=())
    except TypeError:                       # a simple tokenizer without special tokens
        return tokenizer.encode
    return lambda text: tokenizer.encode(text, disallowed_special=())


def pad_id_for(classifier: GPTClassifier, tokenizer: Any) -> int:
    """The id to pad with: the classifier's, else ``<|endoftext|>``, else 0. Any id works -- the
    mask decides what is padding -- but end-of-text keeps the saved config natural for HF."""
    if classifier.pad_token_id is not None:
        return classifier.pad_token_id
    special = getattr(tokenizer, "special_tokens", None) or {}
    return int(special.get(ENDOFTEXT, 0))


def text_probabilities(classifier: GPTClassifier, tokenizer: Any, texts: Sequence[str], batch_size: int = 64,
                       max_length: int = 128, pad_side: str = "right") -> np.ndarray:
    """Class probabilities (N, num_classes) of raw texts, in batches, without a graph.

    ``GPTClassifier.classify`` wraps this with the class names.
    """
    max_length = min(int(max_length), classifier.config.block_size)     # the model sees no more
    data = Encoded(tokenizer, list(texts), [0] * len(texts), max_length)
    return _probabilities(classifier, data, pad_id_for(classifier, tokenizer), batch_size, pad_side)


def _probabilities(classifier: GPTClassifier, data: Encoded, pad_id: int, batch_size: int,
                   pad_side: str) -> np.ndarray:
    was_training = classifier.training
    classifier.eval()
    # Batches of similar length waste less work on padding; the order is restored below.
    order = np.argsort([len(s) for s in data.ids], kind="stable")
    probs = np.zeros((len(data), classifier.num_classes))
    try:
        for start in range(0, len(data), batch_size):
            rows = order[start:start + batch_size]
            idx, mask, _ = data.batch(rows, pad_id, pad_side)
            probs[rows] = classifier.predict_proba(idx, mask)
    finally:
        classifier.train(was_training)
    return probs


def evaluate(classifier: GPTClassifier, data: Encoded, pad_id: Optional[int] = None, batch_size: int = 64,
             pad_side: str = "right") -> dict[str, Any]:
    """Mean loss (eq:bce or eq:multiclass-loss) and :func:`classification_metrics` of ``data`` (an :class:`Encoded`).

    ``pad_id`` defaults to the classifier's ``pad_token_id`` (or 0); the result
    does not depend on it, since padding is masked.
    """
    if pad_id is None:
        pad_id = classifier.pad_token_id if classifier.pad_token_id is not None else 0
    probs = _probabilities(classifier, data, pad_id, batch_size, pad_side)
    picked = np.clip(probs[np.arange(len(data)), data.labels], 1e-12, 1.0)
    metrics = classification_metrics(data.labels, probs.argmax(axis=1), classifier.num_classes,
                                     label_names=classifier.labels)
    metrics["loss"] = float(-np.log(picked).mean())
    return metrics


def _length_bucketed_batches(data: Encoded, batch_size: int, rng: np.random.Generator,
                             bucket: int = 16) -> list[np.ndarray]:
    """One epoch of random batches whose texts have similar lengths.

    A padded batch costs as much as its longest text times its size. Texts are
    shuffled, cut into chunks of ``bucket`` batches, sorted by length inside
    each chunk and cut into batches; the batch order is shuffled again. Each
    batch is still a random sample, but the padding (here about 40% of the
    tokens with plain random batches) almost disappears.
    """
    order = rng.permutation(len(data))
    lengths = np.array([len(s) for s in data.ids])
    batches = []
    for start in range(0, len(order), batch_size * bucket):
        chunk = order[start:start + batch_size * bucket]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


class FinetuneResult:
    """What :func:`finetune` did: ``history`` (one dict per evaluation), the best step and loss."""

    def __init__(self) -> None:
        self.history: list[dict[str, Any]] = []
        self.best_step: Optional[int] = None
        self.best_loss: float = np.inf           # the validation loss of the kept weights
        self.best_accuracy: float = -np.inf      # ... and their validation accuracy
        self.stopped_early = False
        self.steps = 0
        self.stopped_by: Optional[int] = None      # the signal number, when Ctrl-C / SIGTERM ended the run

    def __repr__(self) -> str:
        return (f"FinetuneResult(steps={self.steps}, best_step={self.best_step}, "
                f"best_val_loss={self.best_loss:.4f}, stopped_early={self.stopped_early})")


class _Heartbeat:
    """Signs of life between evaluations: a bar on a terminal, else a line every ``interval`` steps."""

    def __init__(self, total: int, log: Callable[[str], None], interval: int) -> None:
        self.total, self.log, self.interval = total, log, interval
        self.bar = Progress(total, "finetune", stream=sys.stderr) if sys.stderr.isatty() else None
        self.started, self.tokens, self.first = time.perf_counter(), 0, None

    def message(self, line: str) -> None:
        self.bar.message(line) if self.bar is not None else self.log(line)

    def step(self, step: int, loss: float, tokens: int) -> None:
        if self.first is None:          # time from the end of the first step: it pays for warm-up costs
            self.first, self.started = step, time.perf_counter()
            return
        self.tokens += tokens
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        eta = format_seconds((self.total - step) * elapsed / (step - self.first))
        note = f"step {step}/{self.total} | loss {loss:.4f} | {self.tokens / elapsed:,.0f} tok/s | ETA {eta}"
        if self.bar is not None:
            self.bar.update(step, note=note)
        elif step % self.interval == 0:
            self.log(note.replace(" | ", "  "))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _save(classifier: GPTClassifier, out_dir: str | os.PathLike, tokenizer: Any, base_model: Optional[str],
          saved_step: Optional[int]) -> None:
    """The classifier (adapters merged in, if it has any) and, with LoRA, its adapter in ``out_dir/adapter``.

    A failed save leaves the directory as it was (``npgpt.io.checkpoint.write_checkpoint``): the
    classifier this run saved at ``saved_step``, the one that was there before, or none; a full
    disk or a file-size limit is an ``OSError`` naming the file and which of those is intact.
    """
    try:
        with lora.merged_view(classifier):
            classifier.save_pretrained(out_dir, tokenizer=tokenizer)
        if lora.adapters(classifier):
            lora.save_adapter(classifier, os.path.join(out_dir, "adapter"), base_model=base_model)
    except Exception as exc:
        if not fileio.disk_full(exc):
            raise
        if saved_step is not None:
            intact = f"the classifier of step {saved_step} in {out_dir} is intact"
        elif (pathlib.Path(out_dir) / "config.json").is_file():
            intact = f"the classifier that was in {out_dir} before is intact"
        else:
            intact = f"{out_dir} holds no classifier yet"
        code = fileio.errno_of(exc)
        raise OSError(code, f"{os.strerror(code)}; {intact}", getattr(exc, "filename", None) or str(out_dir)) from exc


def lr_scales(classifier: GPTClassifier, head_lr_scale: float, layer_lr_decay: float) -> dict[str, float]:
    """``{parameter name: its learning rate / lr}`` (docs/finetuning.md eq:discriminative-lr).

    The head (layer group 0) gets ``head_lr_scale``; layer group ``k >= 1`` of
    :func:`layer_groups` gets ``layer_lr_decay^-(k-1)``: the top block and
    ``ln_f`` learn at ``lr``, each group below ``layer_lr_decay`` times slower,
    the embeddings slowest. ULMFiT's "discriminative fine-tuning": the lower
    layers hold the most general features and should move least.
    """
    groups = layer_groups(classifier)
    scales = {}
    for name, _ in classifier.named_parameters():
        k = group_index(name, groups)
        scales[name] = float(head_lr_scale) if k == 0 else float(layer_lr_decay) ** -(k - 1)
    return scales


def _optimizer(classifier: GPTClassifier, cfg: FinetuneConfig) -> optim.AdamW:
    """AdamW with GPT-2's decay/no-decay groups, each split by learning rate (``lr_scale``: :func:`lr_scales`)."""
    scales = lr_scales(classifier, cfg.head_lr / cfg.lr, cfg.layer_lr_decay)
    groups = []
    for group in optim.param_groups(classifier, cfg.weight_decay):
        by_scale: dict[float, list[tuple[str, Any]]] = {}
        for n, p in zip(group["names"], group["params"]):
            by_scale.setdefault(scales[n], []).append((n, p))
        for scale, members in by_scale.items():
            groups.append({"params": [p for _, p in members], "names": [n for n, _ in members],
                           "weight_decay": group["weight_decay"], "lr_scale": scale})
    return cfg.adamw(groups)


class _Unfreezing:
    """Gradual unfreezing: at step ``s`` the top ``1 + s // every`` layer groups train (all of them at the end)."""

    def __init__(self, classifier: GPTClassifier, every: int, log: Callable[[str], None]) -> None:
        self.classifier, self.every, self.log = classifier, every, log
        self.groups = layer_groups(classifier)
        self.k = 0

    def at(self, step: int) -> None:
        k = min(1 + step // self.every, len(self.groups))
        if k != self.k:
            self.k = k
            unfreeze_top(self.classifier, k)
            newest = ", ".join(p.rstrip(".") for p in self.groups[k - 1])
            self.log(f"step {step}: training the top {k} of {len(self.groups)} layer groups (now also {newest})")


def finetune(classifier: GPTClassifier, tokenizer: Any, train_texts: Iterable[str],
             train_labels: Sequence[int] | np.ndarray, val_texts: Iterable[str], val_labels: Sequence[int] | np.ndarray,
             config: Optional[FinetuneConfig] = None, out_dir: Optional[str | os.PathLike] = None,
             log: Optional[Callable[[str], None]] = print, base_model: Optional[str] = None,
             progress: bool = False, **overrides: Any) -> FinetuneResult:
    """Fine-tune ``classifier`` on labelled texts; keep the weights with the lowest validation loss (or, with
    ``best_metric="accuracy"``, the highest validation accuracy).

    Labels are class ids (0 .. num_classes-1; see :class:`LabelSet`). One
    step: a random batch, padded with its mask; the loss (eq:bce for one logit,
    eq:multiclass-loss otherwise); backward, sharded over CPU threads; global-norm
    clipping; AdamW at the warmup + cosine learning rate (the head's scaled by
    ``head_lr / lr``). After every evaluation on the validation texts the best
    weights so far are kept (and, with ``out_dir``, written there atomically
    with the tokenizer); ``patience`` evaluations without improvement stop
    training early. At the end the best weights are restored. ``log``
    receives progress lines (``None``: silence). ``progress=True`` (what
    ``npgpt finetune`` passes) shows signs of life between evaluations: on a
    terminal a bar (step, loss, tokens/s, ETA) with the log lines above it,
    elsewhere a line every ``log_interval`` steps; either way "validating..."
    when an evaluation starts. Ctrl-C or SIGTERM finishes
    the step in progress and stops as if early (``result.stopped_by`` holds
    the signal); with ``out_dir`` the classifier written there is then the
    best one seen, or the current one when no evaluation has run yet.
    With LoRA (``lora_rank``) ``out_dir`` holds the classifier with the
    adapters merged, and ``out_dir/adapter`` the adapters and the head in
    PEFT's format (``base_model``, the backbone's name, is written into it);
    the classifier is returned with its adapters on. Under ``mpiexec`` on a
    machine with several GPUs, put the classifier on this rank's GPU with
    ``classifier.to(distributed.use_device("cuda"))`` (``npgpt finetune`` does).
    Returns a :class:`FinetuneResult`.
    """
    cfg = config if config is not None else FinetuneConfig.from_dict(overrides)
    if config is not None and overrides:
        raise TypeError("pass either a FinetuneConfig or keyword settings, not both")
    log = log or (lambda *_: None)
    world = distributed.world()           # under mpiexec: each rank its rows of every batch
    if not world.is_main:
        log, out_dir = (lambda *_: None), None       # rank 0 logs and writes
    train, val = _encoded(classifier, tokenizer, cfg, train_texts, train_labels, val_texts, val_labels)
    pad_id = pad_id_for(classifier, tokenizer)
    classifier.pad_token_id = pad_id          # saved in config.json: Hugging Face needs one to batch
    model_dropout = _switch_on_training_settings(classifier, cfg, log)
    trainable = [p for p in classifier.parameters() if p.requires_grad]
    steps_per_epoch = -(-len(train) // cfg.batch_size)
    max_steps = cfg.epochs * steps_per_epoch
    cfg.warmup_for(max_steps, "the run's steps")     # more warmup than steps: refused before any work
    bar = _Heartbeat(max_steps, log, cfg.log_interval) if progress else None
    log = bar.message if bar is not None else log
    keeper = _BestKeeper(classifier, trainable, out_dir, tokenizer, base_model, cfg.patience, log, cfg.best_metric)
    try:
        with GracefulStop() as stop:
            log(f"fine-tuning {sum(int(p.size) for p in trainable):,} of {classifier.num_parameters():,} "
                f"parameters on {len(train)} texts ({steps_per_epoch} steps per epoch), validating on {len(val)}")
            step = _train(classifier, cfg, train, val, pad_id, keeper, stop, bar, world, steps_per_epoch, log)
    finally:
        if bar is not None:
            bar.close()
    result = keeper.result
    if stop.requested:
        result.stopped_by = stop.signum
        keeper.save_if_none_yet()
        saved = (f"; the classifier in {out_dir} is from step {result.best_step or step}"
                 if out_dir is not None else "")
        log(f"{stop.name}: stopped at step {step}{saved}")
    result.steps = step
    keeper.restore_best()
    _switch_off_training_settings(classifier, model_dropout)
    return result


def _encoded(classifier: GPTClassifier, tokenizer: Any, cfg: FinetuneConfig, train_texts: Iterable[str],
             train_labels: Sequence[int] | np.ndarray, val_texts: Iterable[str],
             val_labels: Sequence[int] | np.ndarray) -> tuple[Encoded, Encoded]:
    """The training and validation texts as token ids (longer texts keep their start), labels checked."""
    max_length = min(cfg.max_length, classifier.config.block_size)
    train = Encoded(tokenizer, list(train_texts), train_labels, max_length)
    val = Encoded(tokenizer, list(val_texts), val_labels, max_length)
    for name, data in (("training", train), ("validation", val)):
        if data.labels.min() < 0 or data.labels.max() >= classifier.num_classes:
            raise ValueError(f"{name} labels must be class ids 0..{classifier.num_classes - 1}, "
                             f"got {int(data.labels.min())}..{int(data.labels.max())}")
    return train, val


def _switch_on_training_settings(classifier: GPTClassifier, cfg: FinetuneConfig, log: Callable[[str], None]) -> float:
    """Dropouts, the auxiliary loss's weight, LoRA or freezing, as ``cfg`` asks; returns the model's own dropout."""
    if cfg.pooling is not None and cfg.pooling != classifier.pooling:
        raise ValueError(f"the classifier pools with {classifier.pooling!r}, the settings ask for {cfg.pooling!r}: "
                         f"build it with GPTClassifier.from_pretrained(..., pooling={cfg.pooling!r})")
    classifier.head_dropout.p = float(cfg.head_dropout)
    classifier.lm_loss_weight = float(cfg.lm_loss_weight)
    model_dropout = classifier.config.dropout
    if cfg.dropout is not None:
        classifier.transformer.set_dropout(cfg.dropout)
    adapter = cfg.lora_config(train=("score.",), seed=cfg.seed)
    if adapter is not None:             # the backbone frozen; its adapters and the head train
        lora.apply_lora(classifier, adapter)
        log(lora.describe_trainable(classifier))
    else:
        freeze(classifier, cfg.train_last)
    if cfg.dtype != "float32":          # mixed precision: float16 products, float32 master weights
        classifier.transformer.set_compute_dtype(cfg.dtype)
    return model_dropout


def _switch_off_training_settings(classifier: GPTClassifier, model_dropout: float) -> None:
    """Leave the model as we found it: all trainable, float32, its own dropout, in evaluation mode."""
    for p in classifier.parameters():
        p.requires_grad = True
    classifier.head_dropout.p = 0.0
    classifier.lm_loss_weight, classifier.lm_pairs_per_row = 0.0, None
    classifier.transformer.set_dropout(model_dropout)
    classifier.transformer.set_compute_dtype(None)
    classifier.eval()


class _Stepper:
    """One optimizer step of the fine-tune: a batch's loss (eq:bce or eq:multiclass-loss, plus
    eq:auxiliary-lm-loss's term when it is on), backward sharded over CPU threads or ranks, clipping,
    AdamW at the schedule's learning rate (each parameter's scaled by :func:`lr_scales`)."""

    def __init__(self, classifier: GPTClassifier, cfg: FinetuneConfig, train: Encoded, pad_id: int, world: Any,
                 max_steps: int) -> None:
        self.classifier, self.cfg, self.train, self.pad_id, self.max_steps = classifier, cfg, train, pad_id, max_steps
        self.opt = _optimizer(classifier, cfg)
        self.workers = engine.choose_workers(cfg.workers or (1 if world.size > 1 else None), classifier.device,
                                             lora.max_dropout(classifier))
        self.group = distributed.process_group(world)     # the step's ranks: one, or DataParallel
        self.scaler = GradScaler() if cfg.dtype != "float32" else NO_LOSS_SCALING

    def _loss(self, idx: Array, mask: Array, labels: Array) -> Tensor:         # (b, T), (b, T), (b,)
        return self.classifier(idx, attention_mask=mask, labels=labels)[1]

    def __call__(self, rows: np.ndarray, step: int) -> tuple[float, int]:
        """Step ``step + 1`` on the texts ``rows``; returns its loss and its count of real tokens."""
        cfg = self.cfg
        idx, mask, y = self.train.batch(rows, self.pad_id, cfg.pad_side)   # host arrays: the model copies them
        if self.classifier.lm_loss_weight:      # eq:auxiliary-lm-loss's mean is over the whole batch's pairs
            pairs = int((next_token_targets(idx, mask) != -100).sum())
            self.classifier.lm_pairs_per_row = max(pairs, 1) / idx.shape[0]
        loss = engine.optimizer_step(self.opt, self._loss, [(idx, mask, y)], cfg.learning_rate(step, self.max_steps),
                                     grad_clip=cfg.grad_clip, workers=self.workers, step=step + 1,
                                     scaler=self.scaler, group=self.group).loss
        return loss, int(mask.sum())


def _train(classifier: GPTClassifier, cfg: FinetuneConfig, train: Encoded, val: Encoded, pad_id: int,
           keeper: _BestKeeper, stop: GracefulStop, bar: Optional[_Heartbeat], world: Any, steps_per_epoch: int,
           log: Callable[[str], None]) -> int:
    """The loop: length-bucketed batches, one :class:`_Stepper` step each, an evaluation every ``eval_every``
    steps (default: an epoch) and at the end; stops early, at the last step or on a signal. Returns the steps run."""
    max_steps = cfg.epochs * steps_per_epoch
    eval_every = int(cfg.eval_every or steps_per_epoch)
    one_step = _Stepper(classifier, cfg, train, pad_id, world, max_steps)
    unfreeze_for = (_Unfreezing(classifier, cfg.unfreeze_every or steps_per_epoch, log).at
                    if cfg.unfreeze == "gradual" else lambda step: None)
    rng = np.random.default_rng(cfg.seed)       # the batch order, epoch after epoch
    step, losses = 0, []
    classifier.train()
    while step < max_steps and not keeper.result.stopped_early and not stop.requested:
        for rows in _length_bucketed_batches(train, cfg.batch_size, rng):
            unfreeze_for(step)
            loss, tokens = one_step(rows, step)
            step += 1
            losses.append(loss)
            if bar is not None:
                bar.step(step, loss, tokens)
            if step % eval_every == 0 or step == max_steps:
                if bar is not None:
                    bar.message(f"validating on {len(val)} texts...")
                metrics = evaluate(classifier, val, pad_id, pad_side=cfg.pad_side)
                keeper.after_evaluation(step, step / steps_per_epoch, sum(losses) / len(losses), metrics, max_steps)
                losses = []
            if step >= max_steps or stop.requested or keeper.result.stopped_early:
                break
    return step


class _BestKeeper:
    """Early stopping on a validation score: keeps the best weights seen (and writes them to ``out_dir``),
    counts evaluations without improvement, and fills a :class:`FinetuneResult`.

    ``best_metric="loss"`` follows the lowest validation loss; ``"accuracy"`` the highest validation
    accuracy, a tie going to the lower loss. They part when the classifier grows overconfident: its loss
    rises on the few texts it gets confidently wrong while more texts come out right, so a run judged by
    its accuracy may want the later weights."""

    def __init__(self, classifier: GPTClassifier, trainable: list[Any], out_dir: Optional[str | os.PathLike],
                 tokenizer: Any, base_model: Optional[str], patience: int, log: Callable[[str], None],
                 best_metric: str = "loss") -> None:
        self.classifier, self.trainable, self.out_dir = classifier, trainable, out_dir
        self.tokenizer, self.base_model, self.patience, self.log = tokenizer, base_model, patience, log
        self.best_metric = best_metric
        self.result = FinetuneResult()
        self.best: Optional[dict[int, Array]] = None
        self.saved_step: Optional[int] = None      # the step of the classifier this run last wrote into out_dir
        self.bad_evaluations = 0

    def after_evaluation(self, step: int, epoch: float, train_loss: float, metrics: dict[str, Any],
                         max_steps: int) -> None:
        result = self.result
        entry = {"step": step, "epoch": epoch, "train_loss": train_loss, "val_loss": metrics["loss"],
                 "val_accuracy": metrics["accuracy"], "val_f1": metrics["f1"]}
        result.history.append(entry)
        improved = self._better(metrics)
        self.log(f"step {step}/{max_steps}  train loss {train_loss:.4f}  val loss {metrics['loss']:.4f}  "
                 f"val accuracy {metrics['accuracy']:.3f}" + ("  (best)" if improved else ""))
        if improved:
            result.best_loss, result.best_accuracy = metrics["loss"], metrics["accuracy"]
            result.best_step, self.bad_evaluations = step, 0
            self.best = {id(p): p.data.copy() for p in self.trainable}
            if self.out_dir is not None:
                _save(self.classifier, self.out_dir, self.tokenizer, self.base_model, self.saved_step)
                self.saved_step = step
            return
        self.bad_evaluations += 1
        if self.bad_evaluations >= self.patience:
            result.stopped_early = True
            better = "lower validation loss" if self.best_metric == "loss" else "higher validation accuracy"
            self.log(f"stopping early: no {better} in {self.patience} evaluations")

    def _better(self, metrics: dict[str, Any]) -> bool:
        best = self.result
        if self.best_metric == "loss":
            return metrics["loss"] < best.best_loss
        return (metrics["accuracy"] > best.best_accuracy
                or (metrics["accuracy"] == best.best_accuracy and metrics["loss"] < best.best_loss))

    def save_if_none_yet(self) -> None:
        """Stopped by a signal before any evaluation: write the current classifier, so ``out_dir`` has one."""
        if self.out_dir is not None and self.result.best_step is None:
            _save(self.classifier, self.out_dir, self.tokenizer, self.base_model, self.saved_step)

    def restore_best(self) -> None:
        if self.best is not None:
            for p in self.trainable:
                p.data[...] = self.best[id(p)]
