"""Checking what a caller passes in: once, at the public entry points.

Companion of ``docs/model.md`` (section "Inputs are checked once").

A public entry point (``GPT.forward``, ``GPT.loss``, ``generate``,
``GPTClassifier.forward``, the ``npgpt.viz`` functions) turns its inputs into
arrays and checks them with the helpers below (``gpt_inputs`` for a GPT's
trunk), and then calls the layers, which trust their inputs: the trunk,
``nn.Embedding`` and ``F.embedding`` check nothing. Checks that look at the values
(is every id below the vocabulary size?) read the array's minimum and
maximum, which on a GPU is a copy from the device to the host; a decoding
loop that checked every step would pay it for every token.

``npgpt.tokenizer`` does not use this module: the tokenizer stands alone and
has its own checks.
"""

from collections.abc import Sequence
from typing import Any

import numpy as np

from npgpt import backend
from npgpt.autograd import Tensor, as_tensor, is_grad_enabled

Array = Any  # a numpy.ndarray or a cupy.ndarray


def as_array(x: Any) -> Array:
    """``x`` as an array: a Tensor's data, an array as it is, anything else through ``numpy.asarray``.

    Nothing is copied or moved: a CuPy array stays on its GPU.
    """
    if isinstance(x, Tensor):
        return x.data
    return x if hasattr(x, "dtype") and hasattr(x, "shape") else np.asarray(x)


def check_token_ids(ids: Any, num_embeddings: int, what: str = "token id") -> Array:
    """An integer array whose every entry lies in ``[0, num_embeddings)``; returns it as an array.

    Raises ``TypeError`` for a non-integer dtype and ``ValueError`` naming
    the first offending id. Any shape is accepted.
    """
    data = as_array(ids)
    if data.dtype.kind not in "iu":
        raise TypeError(f"{what}s must be integers, got dtype {data.dtype}")
    if data.size:
        low, high = min_max(data)
        if low < 0 or high >= num_embeddings:
            bad = low if low < 0 else high
            raise ValueError(f"{what} {bad} is out of range: valid ids are 0..{num_embeddings - 1}")
    return data


def token_batch(ids: Any, vocab_size: int, block_size: int | None = None, past_length: int = 0) -> Array:
    """A batch of token ids: an integer (B, T) array, T >= 1, ids in range; returned as an array.

    With ``block_size``, ``T + past_length`` (the positions already in a KV
    cache) must not exceed it. A 1-D sequence is refused rather than guessed
    at: the error says to pass ``ids[None]``.
    """
    if isinstance(ids, (str, bytes)):
        raise TypeError(f"token ids are needed, not text ({ids[:20]!r}): encode it first, e.g. "
                        "ids = np.array([tokenizer.encode(text)]), then pass ids")
    data = as_array(ids)
    if data.ndim != 2:
        raise ValueError(f"token ids must be a 2-D (batch, time) array, got shape {tuple(data.shape)}; "
                         "for one sequence pass ids[None]")
    if data.dtype.kind not in "iu":
        raise TypeError(f"token ids must be integers, got dtype {data.dtype}")
    if data.shape[1] == 0:
        raise ValueError("token ids are empty: need at least one position")
    if block_size is not None and data.shape[1] + past_length > block_size:
        raise ValueError(f"sequence length {data.shape[1]} (+ {past_length} cached positions) exceeds "
                         f"block_size {block_size}")
    return check_token_ids(data, vocab_size)


def check_attention_mask(attention_mask: Any, shape: Sequence[int]) -> Array:
    """A 0/1 mask of the given (B, T) shape, 1 = real token, as an integer array.

    Booleans are accepted (True = real token). Every row needs at least one
    real token: a row of padding only has nothing to attend to.
    """
    mask = as_array(attention_mask)
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"attention_mask has shape {tuple(mask.shape)}, expected {tuple(shape)}: "
                         "one entry per token (cached positions included)")
    if mask.dtype == bool:
        mask = mask.astype(np.int64)
    if mask.dtype.kind not in "iu":
        raise TypeError(f"attention_mask must hold 0/1 integers or booleans, got dtype {mask.dtype}")
    empty = mask.sum(axis=1) == 0
    reads = ([mask.min(), mask.max()] if mask.size else []) + ([_first_true(empty)] if empty.size else [])
    values = backend.read_scalars(*reads, kind=int)
    if mask.size and (values[0] < 0 or values[1] > 1):
        raise ValueError("attention_mask must hold only 0 (padding) and 1 (real token)")
    if empty.size and values[-1] >= 0:
        raise ValueError(f"sequence {values[-1]} of the batch is all padding: "
                         "every sequence needs at least one real token")
    return mask


def positions_from_mask(mask: Array) -> Array:
    """Position ids that count real tokens only (docs/finetuning.md eq:padded-positions): ``p[b, t] = sum_{u<=t} m[b, u] - 1``.

    Padding gets a valid id too, 0 before the text and the last real token's after it
    (nothing reads them). The classifier
    and the decoding loop of a left-padded batch both count positions so.
    ``mask`` (B, T) int -> (B, T) int64, same array module.
    """
    xp = backend.array_module(mask)
    counted = xp.cumsum(mask, axis=1) - 1
    return xp.maximum(counted, 0).astype(xp.int64)


def min_max(data: Array) -> tuple[int, int]:
    """The smallest and the largest entry of a non-empty integer array, as ints (one copy from a GPU)."""
    low, high = backend.read_scalars(data.min(), data.max(), kind=int)
    return low, high


def _first_true(flags: Array) -> Array:
    """The index of the first true entry of a non-empty 1-D boolean array, or -1 (a 0-d array, not read)."""
    xp = backend.array_module(flags)
    return xp.where(flags.any(), flags.argmax(), -1)


def gpt_ids(model: Any, idx: Any, past_length: int = 0) -> Array:
    """Token ids for a GPT (``model.config``), checked (``token_batch``) and put on the model's device."""
    idx = token_batch(idx, model.config.vocab_size, model.config.block_size, past_length)
    return backend.to_device(idx, model.device)


def gpt_inputs(model: Any, idx: Any, *, attention_mask: Any = None, position_ids: Any = None,
               inputs_embeds: Any = None, cache: Any = None) -> tuple[Array, Array | None, Array | None, Tensor | None]:
    """The inputs of a GPT's trunk, checked and converted: ``(idx, attention_mask, position_ids, inputs_embeds)``.

    The ids as ``gpt_ids`` (after the ``cache``'s positions, if any); the mask
    0/1 integers of shape (B, cached + T); the position ids (B, T) or (T,) in
    ``0..block_size-1``; the embeddings a (B, T, C) Tensor; arrays on the
    model's device. A cache is for inference only: it refuses a graph.
    """
    config, device = model.config, model.device
    past = 0
    if cache is not None:
        if is_grad_enabled():
            raise RuntimeError("a KV cache is for inference: no gradient flows through it; "
                               "call the model under npgpt.no_grad()")
        past = cache.length
    idx = gpt_ids(model, idx, past)
    B, T = idx.shape
    if cache is not None and cache.batch_size != B:
        raise ValueError(f"the KV cache holds {cache.batch_size} sequences but idx has batch {B}")
    if attention_mask is not None:
        attention_mask = backend.to_device(check_attention_mask(attention_mask, (B, past + T)), device)
    if position_ids is not None:
        positions = as_array(position_ids)
        if tuple(positions.shape) not in ((B, T), (T,)):
            raise ValueError(f"position_ids of shape {tuple(positions.shape)} do not fit token ids {(B, T)}")
        check_token_ids(positions, config.block_size, what="position id")
        position_ids = backend.to_device(positions, device)
    if inputs_embeds is not None:
        inputs_embeds = as_tensor(inputs_embeds)
        if tuple(inputs_embeds.shape) != (B, T, config.n_embd):
            raise ValueError(f"inputs_embeds of shape {tuple(inputs_embeds.shape)}, expected {(B, T, config.n_embd)}")
    return idx, attention_mask, position_ids, inputs_embeds
