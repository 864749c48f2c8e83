"""Text generation: choosing the next token from the logits, and the decoding loop.

Companion of ``docs/model.md`` (section "Generating text").

The filters work on plain logit arrays (B, V) of either backend (the module
is taken from the data), so they can be used and tested on their own:

* greedy: ``argmax_v z_v``;
* temperature: ``z / tau`` (``tau < 1`` sharpens the distribution, ``> 1`` flattens it);
* top-k: keep the ``k`` largest logits, set the rest to ``-inf``;
* top-p (nucleus): keep the smallest set of most likely tokens whose
  probabilities add up to at least ``p``.

The loop (``generate``) feeds the model one new token at a time with a KV
cache, under ``no_grad``: each step reads the cached keys and values of the
earlier positions instead of recomputing them.
"""

import numbers

import numpy as np

import npgpt.functional as F
from npgpt import backend
from npgpt.autograd import Tensor, no_grad


# ------------------------------------------------------------ validation
def check_sampling_args(max_new_tokens=0, temperature=1.0, top_k=None, top_p=None):
    """Raise a ValueError naming the first invalid sampling argument."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    if isinstance(temperature, bool) or not (isinstance(temperature, numbers.Real) and temperature > 0):
        raise ValueError(f"temperature must be > 0, got {temperature!r} (for greedy decoding use do_sample=False)")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1):
        raise ValueError(f"top_k must be an integer >= 1 (or None), got {top_k!r}")
    if top_p is not None and (isinstance(top_p, bool) or not (isinstance(top_p, numbers.Real) and 0 < top_p <= 1)):
        raise ValueError(f"top_p must be in (0, 1] (or None), got {top_p!r}")


# --------------------------------------------------------------- filters
def greedy(logits):
    """The most likely token of each row: (B, V) -> int (B,)."""
    xp = backend.array_module(logits)
    return xp.argmax(logits, axis=-1)


def apply_temperature(logits, temperature):
    """``z / tau``: the softmax of the result is ``p_v^(1/tau)`` renormalised."""
    check_sampling_args(temperature=temperature)
    return logits / logits.dtype.type(temperature)


def top_k_filter(logits, k):
    """Keep each row's ``k`` largest logits, set the others to ``-inf``: (B, V) -> (B, V).

    Logits tied with the k-th largest are kept too, so a row may keep more
    than ``k`` when there are ties at the boundary.
    """
    check_sampling_args(top_k=k)
    xp = backend.array_module(logits)
    V = logits.shape[-1]
    if k >= V:
        return logits.copy()
    kth = -xp.partition(-logits, k - 1, axis=-1)[..., k - 1:k]        # k-th largest, (B, 1)
    return xp.where(logits >= kth, logits, logits.dtype.type(float("-inf")))


def softmax(logits):
    """Row-wise probabilities ``exp(z - max z) / sum exp(z - max z)`` (docs/model.md eq. 2)."""
    xp = backend.array_module(logits)
    e = xp.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def top_p_filter(logits, p):
    """Nucleus filtering: keep the most likely tokens until their mass reaches ``p``.

    Sorting each row by probability, token ``i`` is kept when the mass of the
    tokens before it is below ``p``; so the most likely token is always kept
    and the kept mass is the smallest that is ``>= p``. Returns (B, V) logits
    with the rest set to ``-inf`` (tokens tied with the last kept one are kept).
    """
    check_sampling_args(top_p=p)
    if p >= 1.0:          # everything; rounding in the running sum must not drop the tail
        return logits.copy()
    xp = backend.array_module(logits)
    ordered = -xp.sort(-logits, axis=-1)                               # descending, (B, V)
    probs = softmax(ordered.astype(xp.float64))
    mass_before = xp.cumsum(probs, axis=-1) - probs
    n_keep = xp.maximum((mass_before < p).sum(axis=-1, keepdims=True), 1)   # (B, 1)
    threshold = xp.take_along_axis(ordered, n_keep - 1, axis=-1)      # smallest kept logit
    return xp.where(logits >= threshold, logits, logits.dtype.type(float("-inf")))


def sample(logits, rng):
    """Draw one token per row from ``softmax(logits)`` by inverting the CDF.

    The uniform numbers come from ``rng``, a NumPy ``Generator`` (on the host,
    so a seed gives the same draws on every backend); token ``i`` is chosen
    for ``u`` in ``(cdf_{i-1}, cdf_i]``, which a zero-probability token never
    satisfies.
    """
    xp = backend.array_module(logits)
    cdf = xp.cumsum(softmax(logits.astype(xp.float64)), axis=-1)       # (B, V)
    u = 1.0 - rng.random(logits.shape[0])                              # in (0, 1]
    u = xp.asarray(u)[:, None] * cdf[:, -1:]
    return xp.minimum((cdf < u).sum(axis=-1), logits.shape[-1] - 1)


def next_token(logits, do_sample=False, temperature=1.0, top_k=None, top_p=None, rng=None):
    """The next token of each row: greedy, or sampled after temperature, top-k and top-p."""
    if not do_sample:
        return greedy(logits)
    logits = apply_temperature(logits, temperature)
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None and top_p < 1.0:
        logits = top_p_filter(logits, top_p)
    return sample(logits, rng if rng is not None else np.random.default_rng())


# ------------------------------------------------------------------ loop
def stream(model, idx, max_new_tokens, *, do_sample=False, temperature=1.0, top_k=None, top_p=None,
           eos_token_id=None, seed=None, use_cache=True):
    """An iterator over the next token of every row, a (B,) int array per step (see ``generate``).

    The arguments are checked at once; the model runs as the iterator is consumed.
    """
    check_sampling_args(max_new_tokens, temperature, top_k, top_p)
    idx = prompt_ids(model, idx)
    if eos_token_id is not None and not 0 <= int(eos_token_id) < model.config.vocab_size:
        raise ValueError(f"eos_token_id {eos_token_id} is outside the vocabulary 0..{model.config.vocab_size - 1}")
    return _decode(model, idx, max_new_tokens, do_sample, temperature, top_k, top_p, eos_token_id, seed, use_cache)


def _decode(model, idx, max_new_tokens, do_sample, temperature, top_k, top_p, eos_token_id, seed, use_cache):
    """The decoding loop behind ``stream``: one forward pass and one choice per step."""
    xp = backend.array_module(idx)
    B, T0 = idx.shape
    block = model.config.block_size
    rng = np.random.default_rng(seed)
    ids = xp.empty((B, T0 + max_new_tokens), dtype=idx.dtype)         # all tokens, filled as we go
    ids[:, :T0] = idx
    done = xp.zeros(B, dtype=bool)
    cache = model.new_cache(B) if use_cache else None
    with no_grad():
        for t in range(T0, T0 + max_new_tokens):
            if not use_cache:
                logits = model(ids[:, max(0, t - block):t])
            elif t == T0 or cache.length == block:
                # First step, or the context outgrew block_size: the oldest
                # token drops out, every position shifts, so rebuild the cache.
                cache.reset()
                logits = model(ids[:, max(0, t - block):t], cache=cache)
            else:
                logits = model(ids[:, t - 1:t], cache=cache)
            token = next_token(logits.data[:, -1, :], do_sample, temperature, top_k, top_p, rng)
            if eos_token_id is not None:
                token = xp.where(done, eos_token_id, token)
                done |= token == eos_token_id
            ids[:, t] = token
            yield token
            if eos_token_id is not None and bool(done.all()):
                return


def prompt_ids(model, idx):
    """Validate a prompt (int (B, T), ids in range) and put it on the model's device.

    Unlike ``model(idx)``, a prompt may be longer than ``block_size``: only
    its last ``block_size`` tokens are ever seen by the model.
    """
    arr = idx.data if isinstance(idx, Tensor) else idx
    if not hasattr(arr, "dtype"):
        arr = np.asarray(arr)
    if arr.ndim == 2:
        F.check_token_ids(arr, model.config.vocab_size, what="token id")   # the whole prompt
        model.check_ids(arr[:, -model.config.block_size:], 0)             # dtype, length of the window
    else:
        model.check_ids(arr, 0)                                           # raises the shape error
    return backend.to_device(arr, model.device)


def generate(model, idx, max_new_tokens, *, do_sample=False, temperature=1.0, top_k=None, top_p=None,
             eos_token_id=None, seed=None, use_cache=True):
    """Continue each row of ``idx`` (int (B, T)); returns int (B, T + n) with n <= max_new_tokens.

    Greedy by default; ``do_sample=True`` samples after ``temperature``,
    ``top_k`` and ``top_p`` (same ``seed``, same sample). A row that emits
    ``eos_token_id`` keeps emitting it (as padding) and the loop stops early
    once every row has. The model sees at most its last ``block_size``
    tokens: once the sequence is longer, the context is cropped and, since
    every position then shifts, the KV cache is rebuilt from the cropped
    context at each step. ``use_cache=False`` recomputes every step from
    scratch and gives the same ids (it exists to test that).
    """
    tokens = list(stream(model, idx, max_new_tokens, do_sample=do_sample, temperature=temperature,
                         top_k=top_k, top_p=top_p, eos_token_id=eos_token_id, seed=seed, use_cache=use_cache))
    start = prompt_ids(model, idx)
    xp = backend.array_module(start)
    if not tokens:
        return start.copy()
    return xp.concatenate([start, xp.stack(tokens, axis=1).astype(start.dtype)], axis=1)
