"""LoRA: low-rank adapters on frozen weights (Hu et al. 2021), saved in PEFT's format.

Companion of ``docs/agent.md`` (section "LoRA"), whose equations the names
below follow. A target layer ``y = x W + b`` (``W`` frozen, stored (in, out)
as GPT-2's Conv1D) learns a low-rank correction instead of ``W`` itself:

    y = x W + b + s * (x A^T) B^T,       s = alpha / r        (docs/agent.md eq:lora)

with ``A`` (r, in) drawn as PEFT draws it and ``B`` (out, r) zero, so the
adapted model starts as the base model. Only ``A`` and ``B`` train:
``r (in + out)`` numbers per layer instead of ``in * out``.

* :func:`lora_linear` is the fused op (forward and hand-written backward);
* :class:`LoRALinear` replaces an ``nn.Linear`` and holds ``A``, ``B``;
* :func:`apply_lora` wraps a model's target layers and freezes the rest
  (``npgpt finetune``, ``npgpt sft`` and ``npgpt train --init-from`` call it
  through :func:`lora_from_settings`);
* :func:`merge` / :func:`unmerge` fold ``s (B A)^T`` into ``W`` and back,
  :func:`unload` leaves a plain model with the merged weights;
* :func:`save_adapter` / :func:`load_adapter` write and read
  ``adapter_config.json`` + ``adapter_model.safetensors`` with PEFT's
  tensor names (``base_model.model.transformer.h.0.attn.c_attn.lora_A.weight``),
  so ``peft.PeftModel.from_pretrained`` loads npgpt's adapters onto
  ``transformers``' GPT-2 and npgpt loads PEFT's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import pathlib
import re
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, Optional

import numpy as np

import npgpt.functional as F
from npgpt import backend, nn
from npgpt.autograd.core import Tensor, _make, as_tensor
from npgpt.finetuning import trainable_tokens
from npgpt.training import settings
from npgpt.training.settings import setting

Array = Any  # a numpy.ndarray or a cupy.ndarray

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
CHECKPOINT_ADAPTER = "adapter"        # RUN_DIR/checkpoint/adapter: a LoRA run's adapter beside the merged model
PEFT_PREFIX = "base_model.model."     # PEFT's name for the wrapped model inside its PeftModel
GPT2_TARGETS = ("c_attn", "c_proj", "c_fc")


# =================================================================== the op
def lora_linear(x: Any, weight: Any, bias: Optional[Tensor], lora_A: Any, lora_B: Any, scale: float,
                keep: Optional[Array] = None, compute_dtype: Any = None) -> Tensor:
    """``y = x W + b + s (x_d A^T) B^T`` with ``x_d = x * keep`` (docs/agent.md eq:lora).

    Shapes: ``x`` (..., in), ``weight`` (in, out), ``bias`` (out,) or None,
    ``lora_A`` (r, in), ``lora_B`` (out, r), ``keep`` broadcastable to ``x``
    (LoRA dropout's mask, already divided by 1 - p; None: no dropout) ->
    (..., out). ``s`` is ``alpha / r``.

    Gradients, with ``X`` the inputs flattened to (N, in), ``X_d = X * keep``,
    ``u = X_d A^T`` (N, r) and ``h = g B`` (N, r) (docs/agent.md eq:lora-grad):

    ``dL/dB = s g^T u``, ``dL/dA = s h^T X_d``,
    ``dL/dx = g W^T + s (h A) * keep``, ``dL/dW = X^T g``, ``dL/db = sum_rows g``.

    Only ``u`` (r numbers per row) is kept beside the input, and the
    (in, out) update ``s (B A)^T`` is never formed: the correction costs
    ``2 N r (in + out)`` multiply-adds against ``N in out`` for the frozen
    product. ``dL/dW`` is computed only if ``weight.requires_grad`` (never,
    in LoRA training). ``compute_dtype`` as ``F.linear``'s (mixed precision).
    """
    x, weight, lora_A, lora_B = as_tensor(x), as_tensor(weight), as_tensor(lora_A), as_tensor(lora_B)
    if x.ndim < 1 or weight.ndim != 2 or x.shape[-1] != weight.shape[0]:
        raise ValueError(f"lora_linear: input {tuple(x.shape)} does not fit weight {tuple(weight.shape)} "
                         "(expected x (..., in) and weight (in, out))")
    n_in, n_out = weight.shape
    if lora_A.ndim != 2 or lora_A.shape[1] != n_in or lora_B.ndim != 2 or lora_B.shape != (n_out, lora_A.shape[0]):
        raise ValueError(f"lora_linear: lora_A {tuple(lora_A.shape)} and lora_B {tuple(lora_B.shape)} do not fit "
                         f"weight {tuple(weight.shape)} (expected A (r, {n_in}) and B ({n_out}, r))")
    if bias is not None and tuple(bias.shape) != (n_out,):
        raise ValueError(f"lora_linear: bias of shape {tuple(bias.shape)} does not fit weight {tuple(weight.shape)}")
    cd = np.dtype(compute_dtype) if compute_dtype is not None else None
    cd = None if cd == x.dtype else cd
    cast = (lambda a: a) if cd is None else (lambda a: a.astype(cd))
    s = float(scale)
    lead = x.shape[:-1]
    x2 = x.data.reshape(-1, n_in)                                   # (N, in)
    keep2 = None if keep is None else backend.array_module(x2).broadcast_to(keep, x.shape).reshape(-1, n_in)
    xd = x2 if keep2 is None else x2 * keep2                        # (N, in)
    w, a, b = cast(weight.data), cast(lora_A.data), cast(lora_B.data)
    u = cast(xd) @ a.T                                              # (N, r): the small intermediate
    out = cast(x2) @ w                                              # (N, out)
    out += u @ (b.T * s)                                            # s folded into B^T: (r, out), not (N, out)
    if bias is not None:
        out += cast(bias.data)
    if cd is not None:
        out = out.astype(x.dtype)
    parents = (x, weight, lora_A, lora_B) + (() if bias is None else (bias,))

    def backward(g):                                                # g (..., out)
        g2 = g.reshape(-1, n_out)
        gc = cast(g2)
        hs = gc @ b                                                 # (N, r)
        hs *= s                                                     # s h: r numbers a row
        gx = gw = ga = gb = None
        if x.requires_grad:                                         # the frozen W still passes dL/dx on
            gx = gc @ w.T
            hA = hs @ a                                             # (N, in)
            if keep2 is not None:
                hA *= keep2
            gx += hA
            gx = gx.astype(x.dtype, copy=False).reshape(x.shape)
        if weight.requires_grad:                                    # never in LoRA training: W is frozen
            gw = (cast(x2).T @ gc).astype(weight.dtype, copy=False)
        if lora_A.requires_grad:
            ga = (hs.T @ cast(xd)).astype(lora_A.dtype, copy=False)
        if lora_B.requires_grad:                                     # scaled after the product: (out, r), not (N, out)
            gb = (gc.T @ u).astype(lora_B.dtype, copy=False)
            gb *= s
        grads = (gx, gw, ga, gb)
        if bias is None:
            return grads
        return grads + (g2.sum(axis=0) if bias.requires_grad else None,)

    return _make(out.reshape(lead + (n_out,)), parents, backward, fresh=True)


def delta_weight(lora_A: Array, lora_B: Array, scale: float) -> Array:
    """The update LoRA adds to a stored (in, out) weight: ``s (B A)^T`` (docs/agent.md eq:lora-merge)."""
    return (lora_B @ lora_A).T * scale


# ================================================================ the layer
class LoRALinear(nn.Module):
    """An ``nn.Linear`` whose weight and bias are frozen and which learns ``A`` and ``B`` beside them.

    It takes over the wrapped layer's ``weight`` and ``bias`` Parameters
    themselves (so the base model's names, ``h.0.attn.c_attn.weight``, do
    not change) and adds ``lora_A`` (r, in), drawn from
    U(-1/sqrt(in), 1/sqrt(in)) as PEFT's default (Kaiming-uniform with
    a = sqrt 5) draws it, and ``lora_B`` (out, r), zero.
    """

    compute_dtype: Any = None

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0,
                 rng: np.random.Generator | None = None, seed: int | None = None):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}")
        rng = rng if rng is not None else np.random.default_rng(0)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.rank, self.alpha = int(rank), float(alpha)
        self.scale = self.alpha / self.rank
        self.weight = base.weight
        self.bias = base.bias
        self.compute_dtype = base.compute_dtype
        bound = 1.0 / math.sqrt(self.in_features)
        xp = backend.array_module(base.weight.data)
        A = rng.uniform(-bound, bound, (self.rank, self.in_features)).astype(np.float32)
        self.lora_A = nn.Parameter(backend.to_device(A, base.weight.device))       # no copy on the CPU
        self.lora_B = nn.Parameter(xp.zeros((self.out_features, self.rank), dtype=np.float32))
        self.lora_dropout = nn.Dropout(dropout, seed=seed)
        self.merged_base: Array | None = None    # the exact base weight while merged

    @property
    def merged(self) -> bool:
        return self.merged_base is not None

    def forward(self, x: Any) -> Tensor:        # (..., in) -> (..., out)
        if self.merged:                         # the update lives in the weight: a plain product
            return F.linear(x, self.weight, self.bias, compute_dtype=self.compute_dtype)
        x = as_tensor(x)
        keep = None
        drop = self.lora_dropout
        if drop.training and drop.p > 0:
            # Inverted dropout on the adapter's input only, as PEFT does: the frozen path sees x.
            xp = backend.array_module(x.data)
            keep = (drop.rng(xp).random(x.shape, dtype=np.float32) >= drop.p).astype(x.dtype)
            keep *= 1.0 / (1.0 - drop.p)
        return lora_linear(x, self.weight, self.bias, self.lora_A, self.lora_B, self.scale, keep,
                           compute_dtype=self.compute_dtype)

    def merge(self) -> None:
        """``W <- W + s (B A)^T`` (eq:lora-merge); the base weight is kept so :meth:`unmerge` restores it bit for bit."""
        if self.merged:
            return
        self.merged_base = self.weight.data
        self.weight.data = self.merged_base + delta_weight(self.lora_A.data, self.lora_B.data, self.scale)

    def unmerge(self) -> None:
        """Give the weight back its base values: exactly, not ``W + D - D`` (which rounds)."""
        if self.merged:
            self.weight.data, self.merged_base = self.merged_base, None

    def extra_repr(self) -> str:
        return (f"{self.in_features}, {self.out_features}, rank={self.rank}, alpha={self.alpha:g}, "
                f"dropout={self.lora_dropout.p:g}{', merged' if self.merged else ''}")


# ================================================================ settings
@dataclasses.dataclass
class LoRAConfig:
    """Which layers get an adapter and how large: PEFT's ``LoraConfig`` fields of the same meaning.

    ``targets`` names layers as PEFT's ``target_modules`` does: ``c_attn``
    matches every layer whose name ends with ``.c_attn`` (``c_proj`` both the
    attention's and the MLP's; ``mlp.c_proj`` only the MLP's). ``train``
    lists name prefixes that train fully besides the adapters (PEFT's
    ``modules_to_save``; the classifier's ``score`` head). ``tokens`` lists
    token ids whose rows of the frozen token table train
    (``npgpt.finetuning.trainable_tokens``; PEFT's ``trainable_token_indices``).
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("c_attn",)
    train: tuple[str, ...] = ()
    seed: int = 0
    tokens: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or int(self.rank) != self.rank or self.rank < 1:
            raise ValueError(f"LoRA rank must be a positive integer, got {self.rank!r}")
        self.rank = int(self.rank)
        if not (isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError(f"LoRA alpha must be a positive number, got {self.alpha!r}")
        self.alpha = float(self.alpha)
        F.check_dropout(self.dropout, "LoRA dropout")
        if isinstance(self.targets, str):
            self.targets = tuple(t.strip() for t in self.targets.split(",") if t.strip())
        self.targets = tuple(self.targets)
        if not self.targets:
            raise ValueError("LoRA targets: name at least one layer, e.g. c_attn or c_attn,c_proj,c_fc")
        self.train = tuple(self.train)
        self.tokens = tuple(self.tokens)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


@dataclasses.dataclass
class LoRASettings:
    """The ``--lora-*`` flags, as fields a command's settings dataclass inherits (``FinetuneConfig``, ...).

    ``lora_rank`` 0 (the default) trains without LoRA. A subclass that
    defines ``__post_init__`` calls :meth:`check_lora` from it.
    """

    FLAGS_TITLE: ClassVar[str] = "LoRA (docs/agent.md)"

    lora_rank: int = setting(0, "LoRA rank r: train low-rank adapters on frozen weights (docs/agent.md; 0: off)")
    lora_alpha: Optional[float] = setting(None, "LoRA alpha; the update is scaled by alpha / r (default 2 r)")
    lora_dropout: float = setting(0.0, "dropout on the LoRA adapters' input, in [0, 1)")
    lora_targets: str = setting("c_attn", "comma-separated layers that get adapters: c_attn, c_proj, c_fc, "
                                          "or a longer name such as mlp.c_proj")

    def __post_init__(self) -> None:
        self.check_lora()

    def check_lora(self) -> None:
        """Refuse bad ``--lora-*`` values with a ``ConfigError`` naming the flag."""
        owner = type(self).__name__
        value = self.lora_rank
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value < 0:
            settings.fail(owner, "lora_rank", f"{{name}} must be a non-negative integer (0: no LoRA), got {value!r}")
        self.lora_rank = int(value)
        if self.lora_alpha is not None and not (math.isfinite(self.lora_alpha) and self.lora_alpha > 0):
            settings.fail(owner, "lora_alpha", f"{{name}} must be a positive number, got {self.lora_alpha!r}")
        settings.check_dropout(owner, self, "lora_dropout")
        if not [t for t in str(self.lora_targets).split(",") if t.strip()]:
            settings.fail(owner, "lora_targets", "{name} must name at least one layer, e.g. c_attn,c_proj")
        if not self.lora_rank and (self.lora_alpha is not None or self.lora_dropout or self.lora_targets != "c_attn"):
            settings.fail(owner, "lora_rank", "{name} is needed with the other LoRA settings (e.g. --lora-rank 8)")

    def lora_config(self, train: Sequence[str] = (), seed: int = 0, tokens: Sequence[int] = ()
                    ) -> Optional[LoRAConfig]:
        """The :class:`LoRAConfig` these settings describe; ``None`` without LoRA."""
        return lora_from_settings(self.lora_rank, self.lora_alpha, self.lora_dropout, self.lora_targets,
                                  train=train, seed=seed, tokens=tokens)


def lora_from_settings(rank: Optional[int], alpha: Optional[float] = None, dropout: float = 0.0,
                       targets: str | Sequence[str] = "c_attn", train: Sequence[str] = (),
                       seed: int = 0, tokens: Sequence[int] = ()) -> Optional[LoRAConfig]:
    """The :class:`LoRAConfig` of the ``--lora-*`` flags; ``None`` when ``rank`` is None or 0 (no LoRA).

    ``alpha`` defaults to ``2 r`` (a common choice: ``s = 2``).
    """
    if not rank:
        return None
    return LoRAConfig(rank=rank, alpha=float(alpha) if alpha is not None else 2.0 * rank, dropout=dropout,
                      targets=targets, train=tuple(train), seed=seed, tokens=tuple(tokens))


def matches(name: str, target: str) -> bool:
    """PEFT's rule for one ``target_modules`` entry: the layer's name is it, or ends with ``.`` + it."""
    return name == target or name.endswith("." + target)


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    *path, leaf = name.split(".")
    module = model
    for part in path:
        module = module._modules[part]
    return module, leaf


def apply_lora(model: nn.Module, config: LoRAConfig) -> list[str]:
    """Freeze ``model`` and put a :class:`LoRALinear` on every ``nn.Linear`` that ``config.targets`` names.

    Every parameter gets ``requires_grad = False`` except the adapters' ``A``
    and ``B``, those under ``config.train``'s prefixes and, with
    ``config.tokens``, the token table's rows of those ids (docs/agent.md eq:trainable-tokens). Works on a ``GPT``
    and on a ``GPTClassifier`` (names as ``named_modules`` gives them).
    Returns the wrapped layers' names. A target that matches no linear
    layer is an error naming what the model has.
    """
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if any(isinstance(m, (LoRALinear, trainable_tokens.TrainableTokens)) for _, m in model.named_modules()):
        raise ValueError("the model already carries LoRA adapters (merge or unload them first)")
    chosen = [(name, m) for name, m in linears if any(matches(name, t) for t in config.targets)]
    for target in config.targets:
        if not any(matches(name, target) for name, _ in linears):
            kinds = sorted({name.rsplit(".", 1)[-1] for name, _ in linears})
            raise ValueError(f"LoRA target {target!r} matches no linear layer of the model "
                             f"(it has {', '.join(kinds)})")
    for p in model.parameters():
        p.requires_grad = False
    rng = np.random.default_rng(config.seed)
    seeds = np.random.SeedSequence(config.seed).spawn(len(chosen))
    for (name, linear), seed in zip(chosen, seeds):
        parent, leaf = _parent(model, name)
        setattr(parent, leaf, LoRALinear(linear, config.rank, config.alpha, config.dropout, rng=rng,
                                         seed=int(seed.generate_state(1, np.uint64)[0])))
    for name, p in model.named_parameters():
        p.requires_grad = (name.endswith(".lora_A") or name.endswith(".lora_B")
                           or any(name.startswith(prefix) for prefix in config.train))
    if config.tokens:
        trainable_tokens.apply(model, config.tokens)
    return [name for name, _ in chosen]


def adapters(model: nn.Module) -> list[tuple[str, LoRALinear]]:
    """``(name, layer)`` of every LoRA layer of ``model``."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LoRALinear)]


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` scalars, adapters included in the total (as PEFT counts them)."""
    params = model.parameters()
    return sum(int(p.size) for p in params if p.requires_grad), sum(int(p.size) for p in params)


def describe_trainable(model: nn.Module) -> str:
    """``trainable params: 294,912 || all params: 124,734,720 || trainable%: 0.2364`` (PEFT's line)."""
    trainable, total = trainable_parameters(model)
    return f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}"


def max_dropout(model: nn.Module) -> float:
    """The largest dropout probability of any ``nn.Dropout`` in ``model`` (LoRA's included)."""
    return max([m.p for _, m in model.named_modules() if isinstance(m, nn.Dropout)], default=0.0)


# ================================================================== merging
def merge(model: nn.Module) -> nn.Module:
    """Fold every adapter into its weight (eq:lora-merge); ``model`` then computes the same logits with plain products."""
    for _, layer in adapters(model):
        layer.merge()
    return model


def unmerge(model: nn.Module) -> nn.Module:
    """Undo :func:`merge`: every weight gets back its exact base values."""
    for _, layer in adapters(model):
        layer.unmerge()
    return model


@contextlib.contextmanager
def merged_view(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, ``model`` is a plain model with the merged weights (eq:lora-merge); afterwards it has its
    adapters back, untouched. For saving an adapted model as an ordinary checkpoint."""
    swapped = []
    try:
        for name, layer in adapters(model):
            linear = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, std=0.0)
            linear.weight = layer.weight if layer.merged else nn.Parameter(
                layer.weight.data + delta_weight(layer.lora_A.data, layer.lora_B.data, layer.scale))
            linear.bias = layer.bias
            parent, leaf = _parent(model, name)
            setattr(parent, leaf, linear)
            swapped.append((parent, leaf, layer))
        for name, table in trainable_tokens.layers(model):      # the trained token rows written into the table
            parent, leaf = _parent(model, name)
            setattr(parent, leaf, trainable_tokens.plain(table))
            swapped.append((parent, leaf, table))
        yield model
    finally:
        for parent, leaf, layer in swapped:
            setattr(parent, leaf, layer)


def unload(model: nn.Module, merge_weights: bool = True) -> nn.Module:
    """Replace every :class:`LoRALinear` by a plain ``nn.Linear`` (PEFT's ``merge_and_unload``), and a
    table with trainable token rows by a plain ``nn.Embedding``.

    With ``merge_weights`` the linear gets the merged weight and the table
    the trained rows; without, the base weights (the adapter is dropped).
    All parameters train again.
    """
    for name, layer in adapters(model):
        if merge_weights:
            layer.merge()
        else:
            layer.unmerge()
        linear = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, std=0.0)
        linear.weight, linear.bias = layer.weight, layer.bias
        linear.compute_dtype = layer.compute_dtype
        parent, leaf = _parent(model, name)
        setattr(parent, leaf, linear)
    trainable_tokens.unload(model, merge=merge_weights)
    for p in model.parameters():
        p.requires_grad = True
    return model


# ============================================================ PEFT's files
def _layer_prefix(model: nn.Module) -> str:
    """Where npgpt's names sit in the Hugging Face model PEFT wraps: GPT2LMHeadModel's ``transformer.``
    (a ``GPT``); a ``GPTClassifier``'s names already start with it."""
    from npgpt.io.hf_gpt2 import HF_PREFIX
    from npgpt.model import GPT

    return HF_PREFIX if isinstance(model, GPT) else ""


def adapter_tensors(model: nn.Module) -> dict[str, np.ndarray]:
    """``{PEFT name: float32 array}``: ``lora_A.weight`` (r, in) and ``lora_B.weight`` (out, r) of each
    layer, the trainable token rows (k, C), and the fully trained modules (``config.train``), under
    ``base_model.model.``."""
    prefix = PEFT_PREFIX + _layer_prefix(model)
    tensors = {}
    for name, layer in adapters(model):
        for part in ("lora_A", "lora_B"):
            tensors[f"{prefix}{name}.{part}.weight"] = backend.to_numpy(getattr(layer, part).data)
    for name, table in trainable_tokens.layers(model):
        tensors[f"{prefix}{name}.{trainable_tokens.PEFT_TENSOR}"] = backend.to_numpy(table.trainable_tokens_delta.data)
    for name, p in model.named_parameters():
        if p.requires_grad and not _adapter_part(name):
            array = backend.to_numpy(p.data)
            tensors[prefix + name] = array.T if name == "score.weight" else array   # torch's (out, in)
    return {k: np.ascontiguousarray(v.astype(np.float32, copy=False)) for k, v in tensors.items()}


def _adapter_part(name: str) -> bool:
    """Whether parameter ``name`` is one of the adapter's own (A, B, trainable token rows), saved by its PEFT name."""
    return name.endswith((".lora_A", ".lora_B", ".trainable_tokens_delta"))


def _shortest_targets(model: nn.Module, chosen: Sequence[str]) -> list[str]:
    """PEFT ``target_modules`` that select exactly ``chosen``: for each layer the shortest name suffix
    (``c_attn``, ``attn.c_proj``, ``h.0.attn.c_proj``) that takes no layer outside ``chosen``."""
    linears = [name for name, m in model.named_modules() if isinstance(m, (nn.Linear, LoRALinear))]
    picked, targets = set(chosen), []
    for name in chosen:
        parts = name.split(".")
        for k in range(1, len(parts) + 1):
            suffix = ".".join(parts[-k:])
            if all(n in picked for n in linears if matches(n, suffix)):
                break
        if suffix not in targets:
            targets.append(suffix)
    return sorted(targets)


def adapter_config(model: nn.Module, base_model: str | None = None) -> dict:
    """``adapter_config.json``: the fields PEFT's ``LoraConfig`` needs to rebuild these adapters."""
    layers = adapters(model)
    if not layers:
        raise ValueError("the model carries no LoRA adapters to save")
    first = layers[0][1]
    ranks = {(m.rank, m.alpha, m.lora_dropout.p) for _, m in layers}
    if len(ranks) > 1:
        raise ValueError("adapters of different ranks, alphas or dropouts cannot share one adapter_config.json")
    targets = _shortest_targets(model, [name for name, _ in layers])
    classifier = hasattr(model, "score")
    trained = sorted({name.split(".")[0] for name, p in model.named_parameters()
                      if p.requires_grad and not _adapter_part(name)})
    tokens = trainable_tokens.layers(model)
    config = {
        "peft_type": "LORA",
        "task_type": "SEQ_CLS" if classifier else "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": first.rank,
        "lora_alpha": first.alpha,
        "lora_dropout": first.lora_dropout.p,
        "target_modules": targets,
        "fan_in_fan_out": True,          # GPT-2's Conv1D stores W (in, out)
        "bias": "none",
        "modules_to_save": trained or None,
        "trainable_token_indices": list(tokens[0][1].token_ids) if tokens else None,
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
        "inference_mode": True,
        "rank_pattern": {},
        "alpha_pattern": {},
        "layers_to_transform": None,
        "layers_pattern": None,
        "revision": None,
    }
    if classifier:        # the class names (PEFT ignores the key, with a warning)
        config["npgpt_labels"] = list(model.labels)
    return config


def save_adapter(model: nn.Module, directory: str | os.PathLike, base_model: str | None = None) -> pathlib.Path:
    """Write ``adapter_config.json`` + ``adapter_model.safetensors`` (PEFT's format): complete or refused.

    As ``checkpoint.write_checkpoint`` writes a model: both files are written
    in a private directory first, then published (``fileio.publish``) with
    the config last, so a kill never leaves a config beside weights of
    another version; other files in ``directory`` are left alone.
    """
    from safetensors.numpy import save_file

    from npgpt.io import fileio

    directory = pathlib.Path(directory)
    config = adapter_config(model, base_model)
    tensors = adapter_tensors(model)
    directory.mkdir(parents=True, exist_ok=True)
    with fileio.private_directory(directory, ".saving.") as staging:
        with fileio.naming(staging / ADAPTER_CONFIG), open(staging / ADAPTER_CONFIG, "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)
            f.write("\n")
        with fileio.naming(staging / ADAPTER_WEIGHTS):
            save_file(tensors, str(staging / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        fileio.publish(staging, directory, last=ADAPTER_CONFIG, alone=ADAPTER_WEIGHTS)
    return directory


class AdapterError(ValueError):
    """An adapter directory npgpt cannot load; the message names the file and the problem."""


def read_adapter_config(directory: str | os.PathLike) -> dict:
    """The checked ``adapter_config.json`` of ``directory`` (features npgpt does not implement are refused)."""
    from npgpt.io import checkpoint

    path = pathlib.Path(directory) / ADAPTER_CONFIG
    if not path.is_file():
        raise AdapterError(f"{directory} holds no {ADAPTER_CONFIG}: not a PEFT adapter directory")
    raw = checkpoint.read_json_object(path)

    def refuse(message: str) -> None:
        raise AdapterError(f"{path}: {message}")

    if raw.get("peft_type", "LORA") != "LORA":
        refuse(f"peft_type is {raw.get('peft_type')!r}; npgpt loads LoRA adapters only")
    for key, plain in (("use_dora", False), ("bias", "none"), ("rank_pattern", {}), ("alpha_pattern", {}),
                       ("layers_to_transform", None)):
        if raw.get(key) not in (None, plain):
            refuse(f"{key} is {raw[key]!r}; npgpt implements plain LoRA ({key}: {plain!r})")
    r = raw.get("r")
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        refuse(f"r must be a positive integer, got {r!r}")
    alpha = raw.get("lora_alpha", 8)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
        refuse(f"lora_alpha must be a positive number, got {alpha!r}")
    targets = raw.get("target_modules")
    if not (isinstance(targets, str) or (isinstance(targets, list) and targets
                                         and all(isinstance(t, str) for t in targets))):
        refuse(f"target_modules must be a list of layer names or a regular expression, got {targets!r}")
    raw["trainable_token_indices"] = _token_indices(raw.get("trainable_token_indices"), refuse)
    return raw


def _token_indices(tokens: Any, refuse: Any) -> Optional[list[int]]:
    """``trainable_token_indices`` as a list of ids (or None): PEFT writes a list, or ``{table name: ids}``."""
    if isinstance(tokens, dict):         # npgpt's one token table is wte
        if len(tokens) != 1 or not (next(iter(tokens)) == "wte" or next(iter(tokens)).endswith(".wte")):
            refuse(f"trainable_token_indices names {sorted(tokens)}; npgpt trains token rows of wte only")
        tokens = next(iter(tokens.values()))
    if tokens is not None and not (isinstance(tokens, list) and tokens and all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in tokens)):
        refuse(f"trainable_token_indices must be a list of token ids, got {tokens!r}")
    return tokens


def load_adapter(model: nn.Module, directory: str | os.PathLike) -> list[str]:
    """Put the adapters of a PEFT directory (npgpt's or ``peft``'s own) on ``model``; returns the layers' names.

    ``target_modules`` is matched as PEFT matches it (a list: by name
    suffix; a string: a regular expression over the whole name); with
    ``use_rslora`` the scale is ``alpha / sqrt(r)``. Every tensor's name and
    shape is checked against the model before anything changes.
    """
    from npgpt.io import checkpoint

    directory = pathlib.Path(directory)
    raw = read_adapter_config(directory)
    weights_path = directory / ADAPTER_WEIGHTS
    if not weights_path.is_file():
        raise AdapterError(f"{directory} holds no {ADAPTER_WEIGHTS}"
                           + (" (adapter_model.bin is a pickle, which npgpt does not load: loading one runs code)"
                              if (directory / "adapter_model.bin").exists() else ""))
    tensors = checkpoint.read_tensors(weights_path)
    targets = raw["target_modules"]
    if isinstance(targets, str):
        pattern = re.compile(targets)
        pick = lambda name: pattern.fullmatch(_layer_prefix(model) + name) is not None or pattern.fullmatch(name)
    else:
        pick = lambda name: any(matches(name, t) for t in targets)
    chosen = [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and pick(name)]
    if not chosen:
        raise AdapterError(f"{directory / ADAPTER_CONFIG}: target_modules {targets!r} match no layer of the model")
    prefix = PEFT_PREFIX + _layer_prefix(model)
    names = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in tensors.items()}
    expected = {}
    r = int(raw["r"])
    modules = dict(model.named_modules())
    for name in chosen:
        m = modules[name]
        expected[f"{name}.lora_A.weight"] = (r, m.in_features)
        expected[f"{name}.lora_B.weight"] = (m.out_features, r)
    tokens = raw["trainable_token_indices"] or ()
    if tokens:
        table_name, table = trainable_tokens.find_table(model)
        expected[f"{table_name}.{trainable_tokens.PEFT_TENSOR}"] = (len(set(tokens)), table.embedding_dim)
    own = dict(model.named_parameters())
    for key in (raw.get("modules_to_save") or []):
        for pname, p in own.items():
            if pname == key or pname.startswith(key + "."):
                expected[pname] = tuple(p.shape[::-1]) if pname == "score.weight" else tuple(p.shape)
    for key, shape in expected.items():
        if key not in names:
            raise AdapterError(f"{weights_path}: tensor {prefix + key!r} is missing")
        if tuple(names[key].shape) != shape:
            raise AdapterError(f"{weights_path}: tensor {prefix + key!r} has shape {tuple(names[key].shape)}, "
                               f"the model needs {shape}")
    unexpected = sorted(set(names) - set(expected))
    if unexpected:
        raise AdapterError(f"{weights_path}: unexpected tensors {[prefix + k for k in unexpected[:5]]} "
                           "(not an adapter of this model and adapter_config.json)")
    alpha = float(raw.get("lora_alpha", 8))
    config = LoRAConfig(rank=r, alpha=alpha, dropout=float(raw.get("lora_dropout") or 0.0),
                        targets=tuple(chosen), train=tuple(raw.get("modules_to_save") or ()), tokens=tuple(tokens))
    apply_lora(model, config)
    scale = alpha / math.sqrt(r) if raw.get("use_rslora") else alpha / r
    for name, layer in adapters(model):
        layer.scale = scale
        layer.lora_A.data = backend.to_device(names[f"{name}.lora_A.weight"].astype(np.float32), layer.weight.device)
        layer.lora_B.data = backend.to_device(names[f"{name}.lora_B.weight"].astype(np.float32), layer.weight.device)
    for pname, p in model.named_parameters():
        if pname in expected and not _adapter_part(pname):
            value = names[pname].T if pname == "score.weight" else names[pname]
            p.data = backend.to_device(np.ascontiguousarray(value.astype(np.float32)), p.device)
    for name, table in trainable_tokens.layers(model):
        rows = names[f"{name}.{trainable_tokens.PEFT_TENSOR}"].astype(np.float32)
        table.trainable_tokens_delta.data = backend.to_device(rows, table.weight.device)
    return chosen


def adapter_base(directory: str | os.PathLike, base: str | os.PathLike | None = None
                 ) -> tuple[str, Optional[int], Optional[list[str]]]:
    """What an adapter goes on: ``(base model, outputs, class names)``; the last two ``None`` but for a
    classifier's adapter (``task_type`` ``SEQ_CLS``, whose ``score`` head is among its tensors).

    ``base`` defaults to the adapter's ``base_model_name_or_path``.
    """
    from npgpt.io import checkpoint

    raw = read_adapter_config(directory)
    base = base if base is not None else raw.get("base_model_name_or_path")
    if not base:
        raise AdapterError(f"{pathlib.Path(directory) / ADAPTER_CONFIG} names no base model "
                           "(base_model_name_or_path): say which with --base")
    if raw.get("task_type") != "SEQ_CLS":
        return str(base), None, None
    head = checkpoint.read_tensors(pathlib.Path(directory) / ADAPTER_WEIGHTS).get(PEFT_PREFIX + "score.weight")
    if head is None:
        raise AdapterError(f"{pathlib.Path(directory) / ADAPTER_WEIGHTS} holds no score.weight: a classifier's "
                           "adapter needs its head")
    return str(base), int(head.shape[0]), raw.get("npgpt_labels")


def merge_adapter(model: nn.Module, directory: str | os.PathLike) -> nn.Module:
    """``model`` (the base: a ``GPT``, or a ``GPTClassifier`` for a classifier's adapter, as
    :func:`adapter_base` says) with the adapter of ``directory`` folded in and unloaded: a plain model."""
    load_adapter(model, directory)
    return unload(model).eval()
