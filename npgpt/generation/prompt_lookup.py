"""Prompt-lookup decoding: exact greedy decoding that verifies several guessed tokens per forward pass.

Companion of ``docs/generation.md`` (section "Prompt lookup: several tokens per pass, the same text").

What it buys: a batch-1 decoding step reads every weight once to produce one token, and on a CPU
that read, not the arithmetic, is the step's cost. When the text being written repeats the
context (quoting, copying, editing a given passage, code), the tokens that followed the last
n-gram's previous occurrence are a good guess of what comes next. Feeding the last token and k
guessed tokens through the model in ONE pass with the KV cache costs little more than feeding
one (the weights are read once for k + 1 rows), and yields the model's own greedy choice after
every prefix of the guess. Accepting the longest prefix of the guess that agrees with those
choices, plus the model's choice after it, gives 1 to k + 1 tokens per pass: exactly the tokens
plain greedy decoding gives, in fewer passes. A wrong guess costs one slightly wider pass; to keep
that cost small on text that does not repeat, the guess's length adapts (``decode``): after a guess
that was wholly accepted the next may be twice as long (up to N), after a rejected one it is only as
long as the agreement went (at least 1); after 1, 2, then 3 or more wholly wrong guesses in a row it
rests 1, 3, then 7 steps (plain one-token steps) before guessing again.

The guess (``propose``): for n = 3, then 2, then 1 (``NGRAM_SIZES``), look for the context's last
n tokens earlier in the context; at the most recent earlier occurrence, propose the k tokens
that followed it (where they run into the end of the context, the text is taken to repeat with
that period: a loop of one token guesses k more of it). No match: no guess, and the step is an ordinary one-token step.

Limits (``check`` refuses the rest with a ValueError that says so): greedy decoding only (sampling
would need the speculative-sampling acceptance rule to keep its distribution), one row (rows of
a batch accept different numbers of tokens), no ``repetition_penalty``, the KV cache on, and the
whole generation within ``block_size`` (past it the window slides and the cache is rebuilt every
step, which leaves nothing to verify against). The accepted count is read on the host after each
pass (a handful of ints), the one device-to-host copy per pass.
"""

import contextlib
from typing import Any

import numpy as np

from npgpt import backend
from npgpt.autograd import no_grad
from npgpt.generation import panels

NGRAM_SIZES = (3, 2, 1)     # tried in this order: a longer match is a more specific guess


def propose(history: np.ndarray, max_tokens: int, ngram_sizes: tuple[int, ...] = NGRAM_SIZES) -> np.ndarray:
    """The guessed continuation of ``history`` (int (L,), on the host): at most ``max_tokens`` ids.

    For each n in ``ngram_sizes``, the last n tokens are searched for earlier in ``history``; at
    the most recent earlier occurrence (one that is followed by at least one token), the tokens
    after it are returned, repeated periodically where they reach the end of ``history``. Empty
    when nothing matches or ``max_tokens`` is 0.

    The search runs once for every n at the same time, by where a match *ends*: the positions
    ``e <= L - 2`` holding the last token are the 1-gram matches; those of them whose previous
    token equals the last-but-one are the 2-gram matches; and so on. A handful of comparisons on
    ever fewer positions: 7 us on its own where a window of every n-gram (``sliding_window_view``,
    one per n) took 42 us; in npgpt-small's decoding loop, with the caches cold, 0.9 against 3.3 ms
    a 32-token generation of 70-90 ms.
    """
    if not ngram_sizes or min(ngram_sizes) < 1:
        raise ValueError(f"propose: n-gram sizes must be at least 1, got {tuple(ngram_sizes)}")
    L = len(history)
    if max_tokens <= 0 or L < 2:
        return history[:0]
    ends = np.flatnonzero(history[:-1] == history[-1])     # e <= L - 2: a token follows every match
    found = {1: ends}
    for back in range(1, max(ngram_sizes)):               # extend the matches one token to the left
        ends = ends[ends >= back]
        if ends.size:                                     # then L - 1 - back >= 1: a real position
            ends = ends[history[ends - back] == history[L - 1 - back]]
        found[back + 1] = ends
    for n in ngram_sizes:
        if found[n].size:
            after = int(found[n][-1]) + 1
            # A continuation that runs into the end of the context is the text repeating with
            # period L - after: continue the repetition (a loop of one token guesses k tokens, not 1).
            return np.resize(history[after:], max_tokens)
    return history[:0]


def check(plan: Any, block_size: int) -> None:
    """Raise a ValueError naming what prompt lookup cannot do with this generation's ``plan``."""
    if plan.sampling.do_sample:
        raise ValueError("prompt_lookup is exact for greedy decoding only: set do_sample=False (sampling would "
                         "need the speculative-sampling acceptance rule to keep its distribution)")
    B, T0 = plan.ids.shape
    if B != 1 or plan.mask is not None:
        raise ValueError(f"prompt_lookup decodes one unpadded row at a time, got {B} rows"
                         f"{' with padding' if plan.mask is not None else ''}: generate the rows one by one")
    if plan.repetition_penalty != 1.0:
        raise ValueError("prompt_lookup does not combine with repetition_penalty (the penalty of a guessed "
                         "token would depend on the guess); use one or the other")
    if not plan.use_cache:
        raise ValueError("prompt_lookup verifies its guesses against the KV cache: it needs use_cache=True")
    if T0 + plan.max_new_tokens > block_size:
        raise ValueError(f"prompt_lookup needs the prompt and the new tokens within the model's context: "
                         f"{T0:,} + {plan.max_new_tokens:,} > block_size {block_size:,}; generate fewer tokens "
                         f"or decode without prompt_lookup (which slides the window)")


class _Rest:
    """After 1, 2, then 3 or more wholly wrong guesses in a row: 1, 3, then 7 steps without a guess."""

    def __init__(self) -> None:
        self.misses = 0         # wholly wrong guesses in a row
        self.left = 0           # steps still to take without guessing

    def after(self, k: int, a: int) -> None:
        """Account for a pass that guessed ``k`` tokens (0: none) of which ``a`` were accepted."""
        if k:
            self.misses = 0 if a else self.misses + 1
            self.left = (1 << min(self.misses, 3)) - 1
        else:
            self.left = max(0, self.left - 1)


def decode(model: Any, plan: Any, num_tokens: int) -> Any:
    """Yield the greedy tokens of ``plan`` (checked by ``check``), a (1,) array each, guessing
    ``num_tokens`` ahead. The verifying passes compute through the weights' panelled copies
    (``npgpt.generation.panels``) where the speed policy makes them, else the head through its
    decoding copy (``GPT.decoding_weight``) or ``wte`` itself.

    The cache holds every token but the last; a pass feeds ``[last] + guess`` (k + 1 tokens) and
    gives the model's choice after each prefix. ``a`` guessed tokens agree; the ``a + 1`` tokens
    ``guess[:a] + [choice_a]`` are the output, and the cache is cut back to the tokens before
    ``choice_a`` (``cache.length``: the rejected guesses' keys and values are overwritten later).
    """
    ids = plan.ids
    xp = backend.array_module(ids)
    T0, n = ids.shape[1], plan.max_new_tokens
    if n == 0:
        return
    history = np.empty(T0 + n, dtype=np.int64)                  # the host copy the guesses come from
    history[:T0] = backend.to_numpy(ids[0])
    length = T0
    eos = set(plan.eos or ())
    eos_list = list(eos)
    panelled = panels.for_generation(model, n)                  # k + 1 rows at about one row's cost, or None
    head = panelled.head if panelled is not None else model.decoding_weight(1, n)
    verifying = panelled.attached if panelled is not None else contextlib.nullcontext

    def choices(hidden, first_step, through=head):                # (k + 1, C) -> greedy ids (k + 1,) on the device
        logits = model.lm_head(hidden, through).data
        if eos_list and first_step < plan.min_new_tokens:
            rows = max(0, min(len(logits), plan.min_new_tokens - first_step))
            logits[:rows, eos_list] = logits.dtype.type(float("-inf"))
        return xp.argmax(logits, axis=-1)

    cache = model.new_cache(1, T0 + n)
    produced = 0
    size = num_tokens                     # the next guess's length, adapted to how the last one fared
    rest = _Rest()
    guess = np.empty(0, dtype=np.int64)
    with no_grad():
        hidden = model.trunk(ids, cache=cache)     # the prompt: (1, T0, C)
        new = choices(hidden[0, -1:], 0)                           # (1,)
        new_host = backend.to_numpy(new)
        while True:
            for j, token in enumerate(new_host.tolist()):
                history[length] = token
                length += 1
                produced += 1
                yield new[j:j + 1]
                if token in eos or produced == n:
                    return
            # After wrong guesses in a row, rest 1, 3, then 7 steps before guessing again: on text that does
            # not repeat a guess mostly fails, and each failed pass costs more than the token step it replaces.
            guess = propose(history[:length], min(size, n - produced - 1)) if not rest.left else guess[:0]
            k = len(guess)
            block = xp.asarray(np.concatenate([history[length - 1:length], guess])[None])   # (1, k + 1): last + guess
            before = cache.length                                          # = length - 1
            if k:
                with verifying():
                    hidden = model.trunk(block, cache=cache)               # (1, k + 1, C)
                    pred = choices(hidden[0], produced)                    # (k + 1,)
            else:   # no guess: a plain one-token step (through panels it would cost ~1.4x: the head's 629 products)
                hidden = model.trunk(block, cache=cache)                   # (1, 1, C)
                pred = choices(hidden[0], produced, None if panelled is not None else head)
            pred_host = backend.to_numpy(pred)                             # the one copy to the host per pass
            agree = pred_host[:k] == guess
            a = k if agree.all() else int(np.argmin(agree))                # guessed tokens accepted
            cache.length = before + 1 + a                                  # drop the rejected guesses
            if k:                   # all accepted: guess twice as far; else only as far as the agreement went
                size = min(num_tokens, 2 * size) if a == k else max(1, a)
            rest.after(k, a)
            new, new_host = pred[:a + 1], pred_host[:a + 1]
