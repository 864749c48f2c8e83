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
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

import npgpt.functional as F
from npgpt import backend, inputs
from npgpt.autograd import no_grad

Array = Any  # a numpy.ndarray or a cupy.ndarray


# ------------------------------------------------------------ validation
def check_sampling_args(max_new_tokens: int = 0, temperature: float = 1.0, top_k: int | None = None,
                        top_p: float | None = None) -> None:
    """Raise a ValueError naming the first invalid sampling argument."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    if isinstance(temperature, bool) or not (isinstance(temperature, numbers.Real) and temperature > 0):
        raise ValueError(f"temperature must be > 0, got {temperature!r} (for greedy decoding use do_sample=False)")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1):
        raise ValueError(f"top_k must be an integer >= 1 (or None), got {top_k!r}")
    if top_p is not None and (isinstance(top_p, bool) or not (isinstance(top_p, numbers.Real) and 0 < top_p <= 1)):
        raise ValueError(f"top_p must be in (0, 1] (or None), got {top_p!r}")


@dataclass(frozen=True)
class SamplingConfig:
    """How the next token is chosen: greedy, or sampled after temperature, top-k and top-p.

    Checked once, when it is made (``check_sampling_args``); the decoding
    loop then uses it for every token without checking again.
    """

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self) -> None:
        check_sampling_args(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)


# --------------------------------------------------------------- filters
def greedy(logits: Array) -> Array:
    """The most likely token of each row: (B, V) -> int (B,)."""
    xp = backend.array_module(logits)
    return xp.argmax(logits, axis=-1)


def apply_temperature(logits: Array, temperature: float) -> Array:
    """``z / tau``: the softmax of the result is ``p_v^(1/tau)`` renormalised."""
    check_sampling_args(temperature=temperature)
    return _temperature(logits, temperature)


def _temperature(logits, temperature):
    return logits / logits.dtype.type(temperature)


def top_k_filter(logits: Array, k: int) -> Array:
    """Keep each row's ``k`` largest logits, set the others to ``-inf``: (B, V) -> (B, V).

    Logits tied with the k-th largest are kept too, so a row may keep more
    than ``k`` when there are ties at the boundary.
    """
    check_sampling_args(top_k=k)
    return _top_k(logits, k)


def _top_k(logits, k):
    xp = backend.array_module(logits)
    V = logits.shape[-1]
    if k >= V:
        return logits.copy()
    kth = -xp.partition(-logits, k - 1, axis=-1)[..., k - 1:k]        # k-th largest, (B, 1)
    return xp.where(logits >= kth, logits, logits.dtype.type(float("-inf")))


def top_p_filter(logits: Array, p: float) -> Array:
    """Nucleus filtering: keep the most likely tokens until their mass reaches ``p``.

    Sorting each row by probability, token ``i`` is kept when the mass of the
    tokens before it is below ``p``; so the most likely token is always kept
    and the kept mass is the smallest that is ``>= p``. Returns (B, V) logits
    with the rest set to ``-inf`` (tokens tied with the last kept one are kept).
    """
    check_sampling_args(top_p=p)
    return _top_p(logits, p)


def _top_p(logits, p):
    if p >= 1.0:          # everything; rounding in the running sum must not drop the tail
        return logits.copy()
    xp = backend.array_module(logits)
    ordered = -xp.sort(-logits, axis=-1)                               # descending, (B, V)
    probs = F.softmax_array(ordered.astype(xp.float64), overwrite=True)
    mass_before = xp.cumsum(probs, axis=-1) - probs
    n_keep = xp.maximum((mass_before < p).sum(axis=-1, keepdims=True), 1)   # (B, 1)
    threshold = xp.take_along_axis(ordered, n_keep - 1, axis=-1)      # smallest kept logit
    return xp.where(logits >= threshold, logits, logits.dtype.type(float("-inf")))


def sample(logits: Array, rng: np.random.Generator) -> Array:
    """Draw one token per row from ``softmax(logits)`` by inverting the CDF.

    The uniform numbers come from ``rng``, a NumPy ``Generator`` (on the host,
    so a seed gives the same draws on every backend); token ``i`` is chosen
    for ``u`` in ``(cdf_{i-1}, cdf_i]``, which a zero-probability token never
    satisfies.
    """
    xp = backend.array_module(logits)
    cdf = xp.cumsum(F.softmax_array(logits.astype(xp.float64), overwrite=True), axis=-1)   # (B, V)
    u = 1.0 - rng.random(logits.shape[0])                              # in (0, 1]
    u = xp.asarray(u)[:, None] * cdf[:, -1:]
    return xp.minimum((cdf < u).sum(axis=-1), logits.shape[-1] - 1)


def next_token(logits: Array, sampling: SamplingConfig | None = None,
               rng: np.random.Generator | None = None) -> Array:
    """The next token of each row of ``logits`` (B, V): greedy, or sampled as ``sampling`` says.

    Sampling applies temperature, then top-k, then top-p, and draws with
    ``rng`` (a NumPy ``Generator``; a fresh one when None). ``sampling``
    was checked when it was made, so nothing is checked here.
    """
    sampling = sampling if sampling is not None else SamplingConfig()
    if not sampling.do_sample:
        return greedy(logits)
    logits = _temperature(logits, sampling.temperature)
    if sampling.top_k is not None:
        logits = _top_k(logits, sampling.top_k)
    if sampling.top_p is not None and sampling.top_p < 1.0:
        logits = _top_p(logits, sampling.top_p)
    return sample(logits, rng if rng is not None else np.random.default_rng())


# ------------------------------------------------------------------ loop
def prompt_ids(model: Any, idx: Any) -> Array:
    """Validate a prompt (int (B, T), ids in range) and put it on the model's device.

    Unlike ``model(idx)``, a prompt may be longer than ``block_size``: only
    its last ``block_size`` tokens are ever seen by the model.
    """
    return backend.to_device(inputs.token_batch(idx, model.config.vocab_size), model.device)


def stream(model: Any, idx: Any, max_new_tokens: int, *, do_sample: bool = False, temperature: float = 1.0,
           top_k: int | None = None, top_p: float | None = None, eos_token_id: int | None = None,
           seed: int | None = None, use_cache: bool = True) -> Iterator[Array]:
    """An iterator over the next token of every row, a (B,) int array per step (see ``generate``).

    The arguments are checked at once; the model runs as the iterator is consumed.
    """
    ids, sampling, eos_token_id = _check(model, idx, max_new_tokens, do_sample, temperature, top_k, top_p,
                                         eos_token_id)
    return _decode(model, ids, max_new_tokens, sampling, eos_token_id, seed, use_cache)


def generate(model: Any, idx: Any, max_new_tokens: int, *, do_sample: bool = False, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, eos_token_id: int | None = None,
             seed: int | None = None, use_cache: bool = True) -> Array:
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
    ids, sampling, eos_token_id = _check(model, idx, max_new_tokens, do_sample, temperature, top_k, top_p,
                                         eos_token_id)
    tokens = list(_decode(model, ids, max_new_tokens, sampling, eos_token_id, seed, use_cache))
    xp = backend.array_module(ids)
    if not tokens:
        return ids.copy()
    return xp.concatenate([ids, xp.stack(tokens, axis=1).astype(ids.dtype)], axis=1)


def _check(model, idx, max_new_tokens, do_sample, temperature, top_k, top_p, eos_token_id):
    """The checks of ``stream`` and ``generate``, once: (prompt on the device, SamplingConfig, eos id)."""
    check_sampling_args(max_new_tokens)
    sampling = SamplingConfig(do_sample, temperature, top_k, top_p)
    ids = prompt_ids(model, idx)
    if eos_token_id is not None:
        if not 0 <= int(eos_token_id) < model.config.vocab_size:
            raise ValueError(f"eos_token_id {eos_token_id} is outside the vocabulary "
                             f"0..{model.config.vocab_size - 1}")
        eos_token_id = int(eos_token_id)
    return ids, sampling, eos_token_id


def _decode(model, idx, max_new_tokens, sampling, eos_token_id, seed, use_cache):
    """The decoding loop: one trunk pass, the head on the last position, one choice per step.

    Everything was checked before (``_check``): the model runs with
    ``validate=False``, and the only copy from the device per step is the
    check whether every row has ended, made only when there is an
    ``eos_token_id``.
    """
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
                hidden = model.trunk(ids[:, max(0, t - block):t], validate=False)
            elif t == T0 or cache.length == block:
                # First step, or the context outgrew block_size: the oldest
                # token drops out, every position shifts, so rebuild the cache.
                cache.reset()
                hidden = model.trunk(ids[:, max(0, t - block):t], cache=cache, validate=False)
            else:
                hidden = model.trunk(ids[:, t - 1:t], cache=cache, validate=False)
            logits = model.lm_head(hidden[:, -1])                      # (B, V): only the last position
            token = next_token(logits.data, sampling, rng)
            if eos_token_id is not None:
                token = xp.where(done, eos_token_id, token)
                done |= token == eos_token_id
            ids[:, t] = token
            yield token
            if eos_token_id is not None and bool(done.all()):
                return
