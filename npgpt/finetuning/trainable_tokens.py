"""Trainable token rows: a few rows of a frozen token table that learn (PEFT's ``trainable_token_indices``).

Companion of ``docs/agent.md`` (section "LoRA"). Under LoRA the token table ``wte`` is frozen,
so tokens that are new to the model -- the chat markers that ``add_chat_tokens`` appends, whose
rows start as the mean of the others (eq:new-row-mean) -- would never learn what they mean. Training the
whole table would cost its gradient and two AdamW moments (V x C each). Instead the chosen rows
``I`` get a parameter of their own, ``R`` (|I|, C), and the table the model uses is

    W'[i] = R[k]  if i = I[k],   W'[i] = W[i]  otherwise,             (docs/agent.md eq:trainable-tokens)

so ``dL/dR[k] = dL/dW'[I[k]]`` and the frozen ``W`` gets nothing. GPT-2's LM head is the same
table (tied), so a marker's row is both its input vector and its output vector, and both uses
train it. As in PEFT the rows *replace* the table's (``R`` starts as a copy of them): the
result does not depend on what the base table held there. Saved as PEFT saves it
(``transformer.wte.token_adapter.trainable_tokens_delta`` beside the LoRA tensors,
``trainable_token_indices`` in ``adapter_config.json``), so ``peft`` loads it onto
``transformers``' GPT-2.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

import npgpt.functional as F
from npgpt import backend, nn
from npgpt.autograd.core import Tensor, _make, is_grad_enabled

Array = Any  # a numpy.ndarray or a cupy.ndarray

PEFT_TENSOR = "token_adapter.trainable_tokens_delta"   # PEFT's name, under the table's own (wte.)


def with_rows(weight: Tensor, indices: Array, rows: Tensor) -> Tensor:
    """``W'``: the table ``weight`` (V, C) with rows ``indices`` (k,) replaced by ``rows`` (k, C) (eq:trainable-tokens).

    Gradient: ``dL/drows = g[indices]``; ``weight`` gets none (it is the frozen base).
    """
    table = weight.data.copy()
    table[indices] = rows.data

    def backward(g):                                   # g (V, C)
        return (g[indices],)

    return _make(table, (rows,), backward, fresh=True)


def checked_indices(indices: Sequence[int], vocab_size: int) -> tuple[int, ...]:
    """The token ids as sorted distinct ints, each in ``0..vocab_size-1``; anything else is refused by name."""
    ids = []
    for i in indices:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= int(i) < vocab_size:
            raise ValueError(f"trainable token ids must be integers in 0..{vocab_size - 1}, got {i!r}")
        ids.append(int(i))
    if not ids:
        raise ValueError("trainable tokens: name at least one token id")
    return tuple(sorted(set(ids)))


class TrainableTokens(nn.Embedding):
    """An ``nn.Embedding`` whose rows ``indices`` train while the rest of its table stays frozen.

    It keeps the wrapped layer's ``weight`` Parameter itself (frozen; the
    name ``wte.weight`` does not change) and adds ``trainable_tokens_delta``
    (k, C), a copy of those rows. :meth:`table` is eq:trainable-tokens' ``W'``: the
    embedding looks rows up in it and a tied LM head multiplies by it.
    """

    def __init__(self, base: nn.Embedding, indices: Sequence[int]):
        nn.Module.__init__(self)                       # not nn.Embedding's: the table exists already
        if not isinstance(base, nn.Embedding) or isinstance(base, TrainableTokens):
            raise TypeError(f"TrainableTokens wraps a plain nn.Embedding, got {type(base).__name__}")
        self.num_embeddings, self.embedding_dim = base.num_embeddings, base.embedding_dim
        self.token_ids = checked_indices(indices, base.num_embeddings)
        self.weight = base.weight
        self.trainable_tokens_delta = nn.Parameter(base.weight.data[np.asarray(self.token_ids)].copy())
        self.weight.requires_grad = False
        self._indices: Array = None                    # token_ids on the table's device, made once per device
        self._inference: tuple[Array, Array, Array] | None = None   # (rows, W', base) of the last graph-free table

    def table(self) -> Tensor:
        """``W'`` (V, C) of eq:trainable-tokens, a graph node whose gradient reaches only ``trainable_tokens_delta``.

        Without a graph (generation) the table is made again only when the rows changed: decoding
        asks for it once per token, and a copy of GPT-2's table costs 154 MB.
        """
        xp = backend.array_module(self.weight.data)
        if self._indices is None or backend.array_module(self._indices) is not xp:
            self._indices = xp.asarray(self.token_ids, dtype=np.int64)
        rows = self.trainable_tokens_delta
        if not is_grad_enabled():
            cached = self._inference
            if cached is None or cached[2] is not self.weight.data or not bool(xp.array_equal(cached[0], rows.data)):
                table = with_rows(self.weight, self._indices, rows).data
                self._inference = cached = (rows.data.copy(), table, self.weight.data)
            return Tensor(cached[1])
        self._inference = None
        return with_rows(self.weight, self._indices, rows)

    def forward(self, ids: Any) -> Tensor:             # int (...) -> (..., C)
        return F.embedding(ids, self.table())

    def merged(self) -> Array:
        """``W'`` as a plain array: the table a merged model keeps."""
        return self.table().data

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, trainable tokens {list(self.token_ids)}"


def find_table(model: nn.Module) -> tuple[str, nn.Embedding]:
    """``(name, layer)`` of the model's token table: the embedding named ``wte`` (a GPT's, or a classifier's
    ``transformer.wte``)."""
    for name, m in model.named_modules():
        if isinstance(m, nn.Embedding) and (name == "wte" or name.endswith(".wte")):
            return name, m
    raise ValueError("trainable tokens: the model has no token table named wte")


def apply(model: nn.Module, indices: Sequence[int]) -> TrainableTokens:
    """Make rows ``indices`` of the model's token table trainable (eq:trainable-tokens), in place; returns the new layer."""
    name, table = find_table(model)
    if isinstance(table, TrainableTokens):
        raise ValueError(f"{name} already has trainable tokens {list(table.token_ids)}")
    layer = TrainableTokens(table, indices)
    parent: Any = model
    *path, leaf = name.split(".")
    for part in path:
        parent = parent._modules[part]
    setattr(parent, leaf, layer)
    return layer


def plain(layer: TrainableTokens, merge: bool = True) -> nn.Embedding:
    """A plain ``nn.Embedding`` holding ``W'`` (the trained rows written into the table; ``merge=False``:
    the base table, the rows dropped)."""
    table = nn.Embedding.__new__(nn.Embedding)
    nn.Module.__init__(table)
    table.num_embeddings, table.embedding_dim = layer.num_embeddings, layer.embedding_dim
    table.weight = nn.Parameter(layer.merged()) if merge else layer.weight
    return table


def layers(model: nn.Module) -> list[tuple[str, TrainableTokens]]:
    """``(name, layer)`` of every table of ``model`` with trainable rows (at most one: ``wte``)."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, TrainableTokens)]


def unload(model: nn.Module, merge: bool = True) -> None:
    """Put back a plain ``nn.Embedding`` in place of each :class:`TrainableTokens` (see :func:`plain`)."""
    for name, layer in layers(model):
        parent: Any = model
        *path, leaf = name.split(".")
        for part in path:
            parent = parent._modules[part]
        setattr(parent, leaf, plain(layer, merge))


__all__ = ["TrainableTokens", "with_rows", "apply", "plain", "layers", "unload", "find_table", "checked_indices",
           "PEFT_TENSOR"]
