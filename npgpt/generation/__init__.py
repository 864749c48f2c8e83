"""Text generation: choosing the next token from the logits, and the decoding loop.

Companion of ``docs/generation.md`` (the model chapter's section "Generating text" introduces it).

The filters work on plain logit arrays (B, V) of either backend (the module
is taken from the data), so they can be used and tested on their own:

* greedy: ``argmax_v z_v``;
* temperature: ``z / tau`` (``tau < 1`` sharpens the distribution, ``> 1`` flattens it);
* top-k: keep the ``k`` largest logits, set the rest to ``-inf``;
* top-p (nucleus): keep the smallest set of most likely tokens whose
  probabilities add up to at least ``p``.

The loop (``generate``) feeds the model one new token at a time with a KV
cache, under ``no_grad``: each step reads the cached keys and values of the
earlier positions instead of recomputing them. A batch of prompts of
different lengths is padded on the left and comes with an attention mask
(docs/generation.md, "Several prompts at once: padding").
"""

import dataclasses
import numbers
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

import npgpt.functional as F
from npgpt import backend
from npgpt.autograd import Tensor, no_grad
from npgpt.backend.fuse import fuse
from npgpt.io import inputs

Array = Any  # a numpy.ndarray or a cupy.ndarray


# ------------------------------------------------------------ the KV cache
class KVCache:
    """Keys and values of the positions seen so far, per layer, preallocated (docs/model.md eq:kv-cache).

    ``keys[i]`` and ``values[i]`` are (B, H, capacity, D) arrays; positions
    ``0 .. length-1`` are filled. Writing a new token's key is one slice
    assignment, never a concatenation, so a generation of N tokens copies
    O(N) and not O(N^2) numbers. No gradient flows through a cache: use it
    under ``no_grad()``.
    """

    def __init__(self, config: Any, batch_size: int, xp: Any = np, dtype: Any = np.float32,
                 capacity: int | None = None):
        H, D = config.n_head, config.n_embd // config.n_head
        self.capacity = int(capacity or config.block_size)
        shape = (int(batch_size), H, self.capacity, D)
        self.keys = [xp.zeros(shape, dtype=dtype) for _ in range(config.n_layer)]
        self.values = [xp.zeros(shape, dtype=dtype) for _ in range(config.n_layer)]
        self.batch_size = int(batch_size)
        self.length = 0

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store ``k, v`` (B, H, T, D) after the cached positions; return all keys and values so far."""
        start, stop = self.length, self.length + k.shape[2]
        if stop > self.capacity:
            raise ValueError(f"KVCache: {stop} positions do not fit a cache of capacity {self.capacity}")
        _store_pair(self.keys[layer][:, :, start:stop], self.values[layer][:, :, start:stop], k.data, v.data)
        return Tensor(self.keys[layer][:, :, :stop]), Tensor(self.values[layer][:, :, :stop])  # (B, H, stop, D)

    def reset(self) -> None:
        """Forget every position (the arrays are kept and overwritten)."""
        self.length = 0


@fuse
def _store_pair(xp: Any, key_slots: Array, value_slots: Array, k: Array, v: Array) -> None:
    """``key_slots[...] = k`` and ``value_slots[...] = v``: a cache update's two writes, one kernel on a
    GPU (``npgpt.backend.fuse``; the slots are views into the cache, written in place)."""
    key_slots[...] = k
    value_slots[...] = v


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


@dataclass(frozen=True)
class GenerationConfig:
    """How to continue a prompt: Hugging Face's ``GenerationConfig`` fields, with their names and defaults.

    One object for the Python API (``generate(model, ids, generation_config=config)``, or the same
    fields as keywords, which override the config's), the ``npgpt generate`` flags and the server.
    Checked when made; what depends on the prompt (``max_length`` against its length, token ids
    against the vocabulary) is checked when it is used. Give ``max_new_tokens`` (tokens to add) or
    ``max_length`` (prompt, its padding and the new tokens), not both. ``eos_token_id`` is an id or
    a sequence of ids; ``pad_token_id`` what a finished row emits (default: the first eos id).
    """

    max_new_tokens: int | None = None
    max_length: int | None = None
    min_new_tokens: int = 0
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None
    use_cache: bool = True
    prompt_lookup: int | None = None   # guess up to N tokens from the context, verify them in one pass (prompt_lookup)
    cuda_graph: bool = False           # greedy steps with static shapes; on CuPy one CUDA graph replay per token

    def __post_init__(self) -> None:
        if self.max_new_tokens is not None and self.max_length is not None:
            raise ValueError("give max_new_tokens or max_length, not both")
        if self.max_new_tokens is not None:
            check_sampling_args(self.max_new_tokens)
        check_sampling_args(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)
        check_generation_args(min_new_tokens=self.min_new_tokens, repetition_penalty=self.repetition_penalty)
        lookup = self.prompt_lookup
        if lookup is not None and (isinstance(lookup, bool) or not isinstance(lookup, (int, np.integer)) or lookup < 0):
            raise ValueError(f"prompt_lookup must be an integer >= 0 (0 or None: off), got {lookup!r}")
        if not isinstance(self.cuda_graph, (bool, np.bool_)):
            raise ValueError(f"cuda_graph must be True or False, got {self.cuda_graph!r}")
        if self.eos_token_id is not None and not isinstance(self.eos_token_id, (int, np.integer)):
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))   # hashable, like the rest

    @property
    def sampling(self) -> SamplingConfig:
        """The part that chooses each token (``do_sample``, ``temperature``, ``top_k``, ``top_p``)."""
        return SamplingConfig(self.do_sample, self.temperature, self.top_k, self.top_p)

    def update(self, **changes: Any) -> "GenerationConfig":
        """A copy with ``changes`` applied (each a field name; an unknown name is a TypeError naming the fields)."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise TypeError(f"unknown generation setting(s) {unknown}; the settings are "
                            f"{[f.name for f in dataclasses.fields(self)]}")
        return dataclasses.replace(self, **changes)


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
    k = int(k)          # CuPy's partition takes a Python int, not a NumPy integer (NumPy takes both)
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
class RowGenerators:
    """One NumPy generator per row of a batch, for ``seed=[s_0, ..., s_{B-1}]``.

    ``random(B)`` draws one number from each row's own generator, so row ``i``
    draws exactly what ``numpy.random.default_rng(s_i)`` draws for that row
    generated alone: each row's sample equals the sample it gets alone with
    ``seed=s_i``, whatever else is in the batch.
    """

    def __init__(self, seeds: Sequence[int]) -> None:
        self.generators = [np.random.default_rng(s) for s in seeds]

    def random(self, size: int) -> np.ndarray:
        """One uniform number in [0, 1) per row (``size`` must be the number of rows)."""
        if size != len(self.generators):
            raise ValueError(f"RowGenerators holds {len(self.generators)} generators, asked for {size} numbers")
        return np.asarray([g.random() for g in self.generators])


def apply_repetition_penalty(logits: Array, ids: Any, penalty: float) -> Array:
    """CTRL's repetition penalty: the logit of every token that occurs in the row of ``ids``
    (int (B, T)) is divided by ``penalty`` where it is positive and multiplied where negative.

    ``penalty > 1`` makes repeating less likely; 1 changes nothing. Each token counts once,
    however often it occurs (as transformers' ``RepetitionPenaltyLogitsProcessor``).
    """
    check_generation_args(repetition_penalty=penalty)
    xp = backend.array_module(logits)
    B, V = logits.shape
    seen = xp.zeros((B, V), dtype=bool)
    seen[xp.arange(B)[:, None], xp.asarray(inputs.check_token_ids(ids, V))] = True
    return _penalize(logits, seen, penalty)


def _penalize(logits, seen, penalty):
    """``apply_repetition_penalty`` with the tokens that occurred as a boolean (B, V) array, unchecked."""
    xp = backend.array_module(logits)
    p = logits.dtype.type(penalty)
    return xp.where(seen, xp.where(logits < 0, logits * p, logits / p), logits)


def check_generation_args(*, min_new_tokens: int = 0, repetition_penalty: float = 1.0) -> None:
    """Raise a ValueError naming the first invalid loop setting (the sampling ones: ``check_sampling_args``)."""
    if isinstance(min_new_tokens, bool) or not isinstance(min_new_tokens, (int, np.integer)) or min_new_tokens < 0:
        raise ValueError(f"min_new_tokens must be an integer >= 0, got {min_new_tokens!r}")
    if isinstance(repetition_penalty, bool) or not (isinstance(repetition_penalty, numbers.Real)
                                                    and 0 < repetition_penalty < float("inf")):
        raise ValueError(f"repetition_penalty must be a number > 0 (1.0: no penalty), got {repetition_penalty!r}")


def prompt_ids(model: Any, idx: Any) -> Array:
    """Validate a prompt (int (B, T), ids in range) and put it on the model's device.

    Unlike ``model(idx)``, a prompt may be longer than ``block_size``: only
    its last ``block_size`` tokens are ever seen by the model.
    """
    return backend.to_device(inputs.token_batch(idx, model.config.vocab_size), model.device)


@dataclass(frozen=True)
class _Plan:
    """What the decoding loop runs with, every part checked once by ``_check``."""

    ids: Array                      # (B, T) prompt on the device
    mask: Array | None              # (B, T) 0/1 on the device; None when no position is padding
    max_new_tokens: int
    sampling: SamplingConfig
    eos: tuple[int, ...] | None     # the ids that end a row
    filler: int | None              # what a finished row emits: pad_token_id, else the first eos id
    min_new_tokens: int
    repetition_penalty: float
    rng: Any                        # a numpy Generator, or RowGenerators (one per row)
    use_cache: bool
    prompt_lookup: int = 0          # tokens guessed per pass (npgpt.generation.prompt_lookup); 0: plain decoding
    cuda_graph: bool = False        # the static step (npgpt.generation.cuda_graph)


def _settings(generation_config: GenerationConfig | None, max_new_tokens: int | None,
              settings: dict[str, Any]) -> GenerationConfig:
    """The config a call runs with: ``generation_config`` (or the defaults) updated by the keywords."""
    if generation_config is not None and not isinstance(generation_config, GenerationConfig):
        raise TypeError(f"generation_config must be a GenerationConfig, got {type(generation_config).__name__}")
    if max_new_tokens is not None:
        settings = {"max_new_tokens": max_new_tokens, **settings}
    config = generation_config or GenerationConfig()
    if settings.get("max_new_tokens") is not None and "max_length" not in settings:
        settings["max_length"] = None          # a call's max_new_tokens replaces the config's max_length
    elif settings.get("max_length") is not None and "max_new_tokens" not in settings:
        settings["max_new_tokens"] = None
    return config.update(**settings) if settings else config


def stream(model: Any, idx: Any, max_new_tokens: int | None = None, *, attention_mask: Any = None,
           generation_config: GenerationConfig | None = None, seed: int | Sequence[int] | None = None,
           **settings: Any) -> Iterator[Array]:
    """An iterator over the next token of every row, a (B,) int array per step (see ``generate``).

    The arguments are checked at once; the model runs as the iterator is consumed.
    """
    plan = _check(model, idx, _settings(generation_config, max_new_tokens, settings), attention_mask, seed)
    return _steps(model, plan)


def generate(model: Any, idx: Any, max_new_tokens: int | None = None, *, attention_mask: Any = None,
             generation_config: GenerationConfig | None = None, seed: int | Sequence[int] | None = None,
             **settings: Any) -> Array:
    """Continue each row of ``idx`` (int (B, T)); returns int (B, T + n) with n <= max_new_tokens.

    The settings are the fields of ``GenerationConfig``: pass one as ``generation_config``, or
    its fields as keywords (``max_new_tokens=20, do_sample=True``), which override it.

    Greedy by default; ``do_sample=True`` samples after ``temperature``,
    ``top_k`` and ``top_p`` (same ``seed``, same sample). The length is
    ``max_new_tokens`` new tokens, or ``max_length`` in all (prompt and its
    padding included, as in transformers); give one of the two.

    ``attention_mask`` (B, T), 1 = token, 0 = padding, marks a left-padded
    batch (``Tokenizer.encode_batch(texts, padding="left")`` makes one):
    positions count from each row's first token, padding is never attended,
    and each row comes out as it would generated alone (sampling too when
    ``seed`` is a list with one seed per row: row ``i`` then draws from its
    own ``default_rng(seed[i])``; one int seeds one generator for the batch).

    ``eos_token_id`` (an id or a list of ids) ends a row: after it the row
    emits ``pad_token_id`` (or the eos id when there is none), and the loop
    stops once every row has ended. ``min_new_tokens`` forbids the eos ids
    until that many tokens are out. ``repetition_penalty`` (CTRL; > 1
    discourages repeats) divides the positive logits, and multiplies the
    negative ones, of the tokens already in the row (padding is not counted),
    before temperature, top-k and top-p.

    The model sees at most its last ``block_size`` tokens: once the sequence
    is longer, the context is cropped and, since every position then shifts,
    the KV cache is rebuilt from the cropped context at each step.
    ``use_cache=False`` recomputes every step from scratch and gives the same
    ids (it exists to test that).

    ``prompt_lookup=N`` (greedy, one row, within ``block_size``; else a ValueError
    that says why) guesses up to N tokens from an earlier occurrence of the last
    n-gram and verifies them in one pass (``npgpt.generation.prompt_lookup``): the same ids
    as plain greedy decoding, in fewer passes when the output repeats the input.

    ``cuda_graph=True`` (greedy, no padding, no eos, within ``block_size``; else a ValueError that
    says why) decodes with a static step over a preallocated cache (``npgpt.generation.cuda_graph``):
    on CuPy the step is captured once as a CUDA graph and each token is one graph launch instead of
    ~300 kernel launches (counted on the CuPy stand-in; not yet captured on a GPU); on NumPy the same
    static step runs eagerly. The same ids as plain greedy.
    """
    plan = _check(model, idx, _settings(generation_config, max_new_tokens, settings), attention_mask, seed)
    tokens = list(_steps(model, plan))
    ids = plan.ids
    if not tokens:
        return ids.copy()
    xp = backend.array_module(ids)
    return xp.concatenate([ids, xp.stack(tokens, axis=1).astype(ids.dtype)], axis=1)


def _token_id(model, value, name):
    """``value`` as an int token id of ``model``'s vocabulary, else a ValueError that names ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer token id, got {value!r}")
    if not 0 <= int(value) < model.config.vocab_size:
        raise ValueError(f"{name} {value} is outside the vocabulary 0..{model.config.vocab_size - 1}")
    return int(value)


def _check(model: Any, idx: Any, config: GenerationConfig, attention_mask: Any, seed: Any) -> _Plan:
    """The checks that need the prompt and the model, once, before the first step."""
    ids = prompt_ids(model, idx)
    B, T = ids.shape
    max_new_tokens = _new_tokens(config, T)
    mask = _padding_mask(model, attention_mask, (B, T))
    eos, filler = _stop_ids(model, config)
    rng = _generators(seed, B)
    return _Plan(ids, mask, max_new_tokens, config.sampling, eos, filler, int(config.min_new_tokens),
                 float(config.repetition_penalty), rng, bool(config.use_cache), int(config.prompt_lookup or 0),
                 bool(config.cuda_graph))


def _new_tokens(config: GenerationConfig, T: int) -> int:
    """How many tokens to add to a prompt of ``T`` positions: ``max_new_tokens``, or ``max_length`` minus ``T``."""
    max_new_tokens, max_length = config.max_new_tokens, config.max_length
    if max_length is not None:
        if isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)) or max_length < T:
            raise ValueError(f"max_length must be an integer >= the prompt's length {T} (padding included), "
                             f"got {max_length!r}")
        max_new_tokens = int(max_length) - T
    elif max_new_tokens is None:
        raise ValueError("give max_new_tokens (the tokens to add) or max_length (the total length)")
    return int(max_new_tokens)


def _padding_mask(model: Any, attention_mask: Any, shape: tuple[int, int]) -> Array | None:
    """``attention_mask`` (B, T) on the device, checked to pad on the left; None when no position is padding."""
    if attention_mask is None:
        return None
    mask = backend.to_device(inputs.check_attention_mask(attention_mask, shape), model.device)
    right_padded, all_real = backend.read_scalars((mask[:, 1:] < mask[:, :-1]).any(), mask.min(), kind=int)
    if right_padded:
        raise ValueError("attention_mask must pad on the left (0s before the 1s of each row): generation "
                         "appends to the end of every row; Tokenizer.encode_batch(texts, padding='left') "
                         "pads that way")
    if all_real:
        return None                 # no padding: the plain positions 0..T-1 are the mask's
    return mask


def _stop_ids(model: Any, config: GenerationConfig) -> tuple[tuple[int, ...] | None, int | None]:
    """The ids that end a row (None: none does), and what an ended row emits: ``pad_token_id``, else the
    first eos id."""
    eos_token_id, pad_token_id = config.eos_token_id, config.pad_token_id
    eos = filler = None
    if eos_token_id is not None:
        eos_ids = [eos_token_id] if isinstance(eos_token_id, (int, np.integer)) else list(eos_token_id)
        if not eos_ids:
            raise ValueError("eos_token_id is an empty list: give an id, a list of ids, or None")
        eos = tuple(_token_id(model, e, "eos_token_id") for e in eos_ids)
        filler = eos[0]
    if pad_token_id is not None:
        filler = _token_id(model, pad_token_id, "pad_token_id")
    return eos, filler


def _generators(seed: Any, B: int) -> Any:
    """The random generator of the sampling: one for the batch (``seed`` None or an int), or one per row."""
    if seed is None or isinstance(seed, (int, np.integer)):
        return np.random.default_rng(seed)
    seeds = list(seed)
    if len(seeds) != B:
        raise ValueError(f"seed has {len(seeds)} entries for a batch of {B} rows: give one seed per row "
                         "(or one int for the whole batch)")
    return RowGenerators(seeds)


class ContextWindowWarning(UserWarning):
    """Generating past ``block_size``: every later token recomputes the whole window (no KV cache)."""

    def __init__(self, block_size: int, first_slow_token: int) -> None:
        super().__init__(f"generating past the model's context of {block_size:,} tokens: from new token "
                         f"{first_slow_token:,} on, the oldest token drops out and every step recomputes the "
                         f"whole window of {block_size:,} tokens (no KV cache), many times slower per token")


def _steps(model, plan):
    """The tokens of ``plan``: prompt lookup's loop or the static step's when it asks for one, else ``_decode``."""
    if plan.cuda_graph:
        from npgpt.generation import cuda_graph
        cuda_graph.check(plan, model)
        return cuda_graph.decode(model, plan)
    if not plan.prompt_lookup:
        return _decode(model, plan)
    from npgpt.generation import prompt_lookup
    prompt_lookup.check(plan, model.config.block_size)
    return prompt_lookup.decode(model, plan, plan.prompt_lookup)


class _Decoding:
    """The state of one decoding loop (``_decode``), and its two parts: the trunk's pass and the choice.

    The state: every token so far and, with padding, the mask of them all; the KV cache; each row's
    next position; which rows have ended; which tokens each row holds (for the repetition penalty).
    """

    def __init__(self, model: Any, plan: _Plan) -> None:
        idx, mask = plan.ids, plan.mask
        self.model, self.plan = model, plan
        xp = self.xp = backend.array_module(idx)
        B, T0 = idx.shape
        n = plan.max_new_tokens
        self.T0, self.block = T0, model.config.block_size
        self.ids = xp.empty((B, T0 + n), dtype=idx.dtype)                # all tokens, filled as we go
        self.ids[:, :T0] = idx
        self.real = None                                                 # the mask of all tokens; None: no padding
        if mask is not None:
            self.real = xp.ones((B, T0 + n), dtype=mask.dtype)           # new tokens are real
            self.real[:, :T0] = mask
        self.position = None                                             # (B, 1): the next token's position
        eos = plan.eos
        if eos is not None:       # one id compares as a number; several as an array, copied to the device once
            eos = eos[0] if len(eos) == 1 else xp.asarray(np.asarray(eos, dtype=np.int64))
        self.eos = eos
        self.done = xp.zeros(B, dtype=bool)
        self.rows = xp.arange(B)
        self.seen = self._prompt_tokens() if plan.repetition_penalty != 1.0 else None
        # Capacity for the whole generation, or block_size once the window slides.
        self.cache = model.new_cache(B, min(self.block, T0 + n)) if plan.use_cache else None

    def _prompt_tokens(self) -> Array:
        """(B, V) bool: the tokens in each row's prompt, padding not counted."""
        idx, mask, xp = self.plan.ids, self.plan.mask, self.xp
        V = self.model.config.vocab_size
        seen = xp.zeros((idx.shape[0], V + 1), dtype=bool)              # column V takes the padding, then goes
        seen[self.rows[:, None], idx if mask is None else xp.where(mask != 0, idx, V)] = True
        return seen[:, :V]

    def trunk_pass(self, t: int) -> Tensor:
        """The hidden states (B, T', C) that end at position ``t - 1``: the last token's alone when it
        continues the cached sequence, else (the first step, no cache, or a context that outgrew
        ``block_size``) those of the whole window of the last ``block_size`` tokens. Either way it
        moves the state on: the cache, if any, grows by the tokens fed (or is emptied and refilled with
        the window), and with padding the next token's position follows the last one fed."""
        model, cache, real = self.model, self.cache, self.real
        if cache is not None and t > self.T0 and cache.length < self.block:
            # The last token continues the cached sequence.
            hidden = model.trunk(self.ids[:, t - 1:t], attention_mask=None if real is None else real[:, :t],
                                 position_ids=self.position, cache=cache)
            if self.position is not None:
                self.position = self.position + 1
            return hidden
        # The oldest token drops out and every position shifts, so (re)build from the window.
        start = max(0, t - self.block)
        window = positions = None
        if real is not None:
            window = real[:, start:t]
            positions = inputs.positions_from_mask(window)           # counted from the first real token
            self.position = positions[:, -1:] + 1
        if cache is not None:
            cache.reset()
        return model.trunk(self.ids[:, start:t], attention_mask=window, position_ids=positions, cache=cache)

    def choose(self, logits: Array, step: int) -> Array:
        """The next token (B,) of every row from its logits (B, V) at new token ``step``.

        The repetition penalty, then no eos id before ``min_new_tokens``, then the sampling rule; a
        row that has ended emits the filler, a row that picks an eos id ends, and each row
        remembers its token for the penalty.
        """
        plan, eos, xp = self.plan, self.eos, self.xp
        if self.seen is not None:
            logits = _penalize(logits, self.seen, plan.repetition_penalty)
        if eos is not None and step < plan.min_new_tokens:
            logits[:, eos] = logits.dtype.type(float("-inf"))
        token = next_token(logits, plan.sampling, plan.rng)
        if eos is not None:
            token = xp.where(self.done, plan.filler, token)
            self.done |= token == eos if isinstance(eos, int) else (token[:, None] == eos).any(axis=1)
        if self.seen is not None:
            self.seen[self.rows, token] = True
        return token


def _decode(model, plan):
    """The decoding loop: one trunk pass, the head on the last position, one choice per step.

    Everything was checked before (``_check``): the trunk, which trusts its
    inputs, runs directly, and the only copy from the device per step is the
    check whether every row has ended, made only when there is an
    ``eos_token_id``. With padding, the growing mask (the prompt's, then a
    1 per new token) goes to the trunk at every step, so that the cached
    padding positions stay hidden, and each row's position counts its own
    tokens.
    """
    state = _Decoding(model, plan)
    T0, n, block = state.T0, plan.max_new_tokens, state.block
    if state.cache is not None and T0 + n > block:
        warnings.warn(ContextWindowWarning(block, max(T0, block) - T0 + 1), stacklevel=3)
    head = model.decoding_weight(plan.ids.shape[0], n)                 # the LM head's copy for this generation, or None
    with no_grad():
        for step, t in enumerate(range(T0, T0 + n)):
            hidden = state.trunk_pass(t)                               # (B, T', C)
            logits = model.lm_head(hidden[:, -1], head).data           # (B, V): the head on the last position only
            token = state.choose(logits, step)                         # (B,)
            state.ids[:, t] = token
            yield token
            if state.eos is not None and bool(state.done.all()):
                return
