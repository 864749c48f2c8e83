"""Evaluation beyond the training loss: perplexity and bits per byte, multiple-choice accuracy.

Companion of ``docs/agent.md`` (section "Evaluation"), whose equations the
functions follow:

* :func:`text_perplexity`: perplexity and bits per byte of a text, scored
  with a sliding window (``stride``) as Hugging Face's perplexity guide does
  it (eq:eval-perplexity and eq:bits-per-byte);
* :func:`loglikelihood`: ``log p(continuation | context)`` of text pairs,
  tokenised by lm-eval-harness's rule (:func:`encode_pair`), so that the
  numbers are the ones lm-eval reports for the same model;
* :func:`multiple_choice`: HellaSwag/ARC-style scoring, ``acc`` and the
  length-normalised ``acc_norm`` as lm-eval defines them (eq:acc-norm).

``npgpt eval MODEL --text FILE`` and ``--choices FILE`` run them from the
command line; ``npgpt.apps.lm_eval_plugin`` lets lm-eval itself drive npgpt
models through the same functions.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from npgpt import backend
from npgpt.autograd import no_grad
from npgpt.functional import log_softmax
from npgpt.io import fileio

__all__ = ["Perplexity", "sequence_logprobs", "text_perplexity", "encode_pair", "loglikelihood_tokens",
           "loglikelihood", "MultipleChoice", "read_choices", "multiple_choice"]


# ============================================================ perplexity
@dataclass
class Perplexity:
    """What :func:`text_perplexity` measured: the summed negative log-likelihood (nats) of ``tokens``
    predicted tokens spanning ``bytes`` UTF-8 bytes, and the two figures made from it."""

    nll: float
    tokens: int
    bytes: int
    windows: int

    @property
    def perplexity(self) -> float:
        """``exp(NLL / N)`` (eq:eval-perplexity): per token, so it depends on the tokenizer."""
        return math.exp(self.nll / self.tokens)

    @property
    def bits_per_byte(self) -> float:
        """``NLL / (ln 2 * bytes)`` (eq:bits-per-byte): comparable across tokenizers."""
        return self.nll / (math.log(2) * self.bytes)

    def to_dict(self) -> dict[str, Any]:
        return {"perplexity": self.perplexity, "bits_per_byte": self.bits_per_byte, "nll": self.nll,
                "tokens": self.tokens, "bytes": self.bytes, "windows": self.windows}


def sequence_logprobs(model: Any, ids: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """``log p(ids[t] | ids[:t])`` for ``t = 1 .. len - 1`` of each sequence (float64 on the host).

    Sequences (each at most ``block_size`` long) are right-padded into one
    batch: a causal model's outputs at a position depend only on earlier
    positions, so the padding after a sequence changes none of its numbers.
    """
    lengths = [len(s) for s in ids]
    width = max(lengths)
    batch = np.zeros((len(ids), width), dtype=np.int64)
    for row, s in enumerate(ids):
        batch[row, :len(s)] = s
    with no_grad():
        logp = log_softmax(model(batch)).data                     # (B, T, V)
        targets = backend.to_device(batch[:, 1:], model.device)
        xp = backend.array_module(logp)
        picked = xp.take_along_axis(logp[:, :-1], targets[..., None], axis=-1)[..., 0]   # (B, T - 1)
    picked = backend.to_numpy(picked).astype(np.float64)
    return [picked[row, :n - 1] for row, n in enumerate(lengths)]


def text_perplexity(model: Any, tokenizer: Any, text: str, stride: Optional[int] = None,
                    max_length: Optional[int] = None) -> Perplexity:
    """Perplexity and bits per byte of ``text`` under ``model`` with a sliding window.

    The text is encoded once and preceded by ``<|endoftext|>`` when the
    tokenizer has it, so that its first token is predicted too (as
    lm-eval's rolling log-likelihood does). Windows of ``max_length``
    tokens (default: the model's ``block_size``) start every ``stride``
    tokens (default ``max_length // 2``); each window scores only the tokens
    the previous window did not, with up to ``max_length - stride`` tokens
    of context before them, exactly as Hugging Face's perplexity guide
    slides its window. ``stride == max_length`` cuts the text into disjoint
    windows: faster, but the first tokens of each see little context and
    the perplexity comes out higher.
    """
    max_length = int(max_length or model.config.block_size)
    if not 2 <= max_length <= model.config.block_size:
        raise ValueError(f"max_length must lie in 2..{model.config.block_size} (the model's context), got {max_length}")
    stride = int(stride or max(1, max_length // 2))
    if not 1 <= stride <= max_length:
        raise ValueError(f"stride must lie in 1..{max_length} (the window), got {stride}")
    ids = list(tokenizer.encode(text, disallowed_special=()) if _takes_special(tokenizer) else tokenizer.encode(text))
    eot = (getattr(tokenizer, "special_tokens", None) or {}).get("<|endoftext|>")
    if eot is not None:
        ids = [int(eot)] + ids
    if len(ids) < 2:
        raise ValueError("the text is too short to score: it needs at least one token after the first")
    nll, scored, windows, prev_end = 0.0, 0, 0, 0
    for begin in range(0, len(ids), stride):
        end = min(begin + max_length, len(ids))
        # The tokens no earlier window scored; a window's own first token has no context in it
        # (with stride == max_length every window's first token goes unscored, as in HF's guide).
        new = min(end - max(prev_end, 1), end - begin - 1)
        logp = sequence_logprobs(model, [ids[begin:end]])[0]
        nll -= float(logp[len(logp) - new:].sum())
        scored += new
        windows += 1
        prev_end = end
        if end == len(ids):
            break
    return Perplexity(nll=nll, tokens=scored, bytes=len(text.encode("utf-8")), windows=windows)


def _takes_special(tokenizer: Any) -> bool:
    try:
        tokenizer.encode("", disallowed_special=())
    except TypeError:
        return False
    return True


def _encode(tokenizer: Any, text: str) -> list[int]:
    """Text as ordinary characters: a special token's text in a document is not the special token."""
    return list(tokenizer.encode(text, disallowed_special=()) if _takes_special(tokenizer) else tokenizer.encode(text))


# ============================================================ log-likelihoods
def encode_pair(tokenizer: Any, context: str, continuation: str, prefix_id: Optional[int] = None
                ) -> tuple[list[int], list[int]]:
    """Token ids of ``(context, continuation)`` by lm-eval-harness's rule (``TemplateLM``).

    Spaces at the end of the context move to the continuation; the
    continuation's ids are those of ``context + continuation`` after the
    context's own ids (BPE may merge across the boundary otherwise). An
    empty context becomes ``[prefix_id]`` (``<|endoftext|>``), or the
    continuation's first token when that is the prefix already.
    """
    if context == "":
        cont = _encode(tokenizer, continuation)
        if prefix_id is None:
            raise ValueError("an empty context needs a prefix token (the tokenizer has no <|endoftext|>)")
        return ([prefix_id], cont) if not cont or cont[0] != prefix_id else (cont[:1], cont[1:])
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = _encode(tokenizer, context + continuation)
    ctx = _encode(tokenizer, context)
    return ctx, whole[len(ctx):]


def loglikelihood_tokens(model: Any, pairs: Sequence[tuple[list[int], list[int]]], batch_size: int = 16
                         ) -> list[tuple[float, bool]]:
    """``(log p(continuation | context), greedy)`` for pairs of id lists.

    ``greedy`` says whether the continuation is the model's argmax at every
    position. The input is ``(context + continuation)[-(block_size+1):][:-1]``:
    a context too long for the model keeps its end, as lm-eval truncates it.
    Pairs are scored in batches of similar length (the order is kept).
    """
    block = model.config.block_size
    results: list[tuple[float, bool]] = [(0.0, True)] * len(pairs)
    for i, (_, cont) in enumerate(pairs):
        if not cont:
            raise ValueError(f"pair {i}: the continuation encodes to no tokens")
        if len(cont) > block:
            raise ValueError(f"pair {i}: a continuation of {len(cont)} tokens does not fit the context of {block}")
    order = sorted(range(len(pairs)), key=lambda i: -len(pairs[i][0]) - len(pairs[i][1]))
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        seqs = [(pairs[i][0] + pairs[i][1])[-(block + 1):] for i in rows]
        # scored as sequence_logprobs scores: position t predicts seq[t]; the last token is a target only
        with no_grad():
            width = max(len(s) - 1 for s in seqs)
            batch = np.zeros((len(seqs), width), dtype=np.int64)
            for r, s in enumerate(seqs):
                batch[r, :len(s) - 1] = s[:-1]
            logp = log_softmax(model(batch)).data                     # (B, T, V)
            logp = backend.to_numpy(logp)
        for r, i in enumerate(rows):
            cont = pairs[i][1]
            n = len(seqs[r]) - 1
            rows_logp = logp[r, n - len(cont):n]                      # (len(cont), V)
            target = np.asarray(cont)
            ll = float(rows_logp[np.arange(len(cont)), target].astype(np.float64).sum())
            results[i] = (ll, bool((rows_logp.argmax(axis=-1) == target).all()))
    return results


def loglikelihood(model: Any, tokenizer: Any, requests: Iterable[tuple[str, str]], batch_size: int = 16
                  ) -> list[tuple[float, bool]]:
    """``(log p(continuation | context), greedy)`` for ``(context, continuation)`` texts (lm-eval's numbers)."""
    prefix = (getattr(tokenizer, "special_tokens", None) or {}).get("<|endoftext|>")
    pairs = [encode_pair(tokenizer, context, continuation, prefix) for context, continuation in requests]
    return loglikelihood_tokens(model, pairs, batch_size)


# ============================================================ multiple choice
@dataclass
class MultipleChoice:
    """One question: a ``context``, its candidate ``choices`` and the index of the right one (``gold``)."""

    context: str
    choices: list[str]
    gold: int

    def __post_init__(self) -> None:
        if not isinstance(self.context, str) or not self.context:
            raise ValueError("context must be a non-empty string")
        if (not isinstance(self.choices, list) or len(self.choices) < 2
                or not all(isinstance(c, str) and c for c in self.choices)):
            raise ValueError("choices must be a list of at least two non-empty strings")
        if isinstance(self.gold, bool) or not isinstance(self.gold, int) or not 0 <= self.gold < len(self.choices):
            raise ValueError(f"gold must be the index of the right choice, 0..{len(self.choices) - 1}, "
                             f"got {self.gold!r}")


def read_choices(path: str | os.PathLike) -> list[MultipleChoice]:
    """Questions from a JSONL file of ``{"context": ..., "choices": [...], "gold": i}`` lines;
    a bad line is refused with the file and line number."""
    path = pathlib.Path(path)
    questions = []
    # A regular file of at most fileio.MAX_TEXT_FILE bytes (not a FIFO, not a link to /dev/zero).
    text = fileio.read_utf8(path, "choices file", limit=fileio.MAX_TEXT_FILE)
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            if not isinstance(raw, dict) or set(raw) - {"context", "choices", "gold", "id"} or \
                    not {"context", "choices", "gold"} <= set(raw):
                raise ValueError('expected an object with "context", "choices" and "gold"')
            questions.append(MultipleChoice(raw["context"], raw["choices"], raw["gold"]))
        except ValueError as exc:        # json.JSONDecodeError is a ValueError
            raise ValueError(f"{path} line {number}: {exc}") from None
    if not questions:
        raise ValueError(f"{path} holds no questions")
    return questions


def multiple_choice(model: Any, tokenizer: Any, questions: Sequence[MultipleChoice], delimiter: str = " ",
                    batch_size: int = 16) -> dict[str, Any]:
    """Score each choice as the continuation ``delimiter + choice`` of the context (lm-eval's layout).

    ``acc``: the share of questions whose most likely choice is the right
    one; ``acc_norm``: the same after dividing each log-likelihood by its
    choice's length in characters (eq:acc-norm), which stops long choices from
    losing merely for having more tokens to pay for. Also returns every
    log-likelihood (``loglikelihoods``, one list per question).
    """
    requests = [(q.context, delimiter + choice) for q in questions for choice in q.choices]
    scores = loglikelihood(model, tokenizer, requests, batch_size)
    lls, acc, acc_norm, at = [], 0, 0, 0
    for q in questions:
        ll = np.array([s for s, _ in scores[at:at + len(q.choices)]])
        at += len(q.choices)
        lengths = np.array([float(len(choice)) for choice in q.choices])
        acc += int(np.argmax(ll) == q.gold)
        acc_norm += int(np.argmax(ll / lengths) == q.gold)
        lls.append(ll.tolist())
    n = len(questions)
    return {"acc": acc / n, "acc_norm": acc_norm / n, "questions": n,
            "chance": float(np.mean([1 / len(q.choices) for q in questions])), "loglikelihoods": lls}
