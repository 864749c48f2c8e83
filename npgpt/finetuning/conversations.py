"""Conversations for supervised fine-tuning: JSONL files in, padded batches of ids and masked targets out.

Companion of ``docs/agent.md`` (section "Data: conversations in JSONL").

A data file holds one conversation per line, in the two conventions everyone uses::

    {"messages": [{"role": "system", "content": "..."}, {"role": "user", "content": "..."},
                  {"role": "assistant", "content": "..."}]}
    {"prompt": "...", "response": "..."}                   (optionally with "system": "...")

The second is shorthand for a user turn and an assistant turn. Each conversation becomes the ids
of the chat template (``npgpt.tokenizer.chat.encode``) with a flag on every token the assistant
says; the targets are the next tokens where that flag is set and the ignore index elsewhere
(docs/agent.md eq:sft-targets). A line that cannot be a training example is refused with the file, the line
and the rule it breaks: nothing is skipped silently.

Batches are **padded**, one conversation per row (docs/agent.md, "Padding, not packing"): rows are
right-padded to the longest row of the batch, and the padding's targets are ignored. Under the
causal mask a real token attends only to earlier positions, which in its row are its own
conversation's, so attention never crosses from one conversation to another and the padding,
always later, is never attended to by a real token.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from npgpt.io import fileio
from npgpt.tokenizer.chat import ChatTemplateError, check_messages, encode

if TYPE_CHECKING:
    from npgpt.tokenizer import Tokenizer

IGNORE_INDEX = -100     # the target of a position the loss skips (PyTorch's and npgpt's default)

TRUNCATION_RULE = ("a conversation longer than the context loses its oldest exchanges (a user turn and what "
                   "follows it up to the next user turn), never the system prompt nor the last exchange")


MAX_LINE = 16 * 2 ** 20        # bytes in one JSONL line (one conversation): far beyond any context window


class DataError(ValueError):
    """A line of a conversation file that cannot be used; the message starts with ``file:line``."""


@dataclass
class Example:
    """One tokenized conversation: ``ids`` and, for each, whether the assistant says it."""

    ids: list[int]
    trained: list[bool]
    line: int = 0                  # where it came from (1-based), for messages
    dropped_exchanges: int = 0     # exchanges cut by the truncation rule


def messages_of(record: Any) -> list[dict[str, str]]:
    """The messages of one parsed JSONL record (either convention), or a ValueError saying what is wrong."""
    if not isinstance(record, dict):
        raise ValueError(f"a line must be a JSON object, got {type(record).__name__}")
    if "messages" in record:
        if "prompt" in record or "response" in record:
            raise ValueError("a line has either 'messages' or 'prompt' and 'response', not both")
        messages = record["messages"]
        if not isinstance(messages, list):
            raise ValueError(f"'messages' must be a list of messages, got {type(messages).__name__}")
        if not messages:
            raise ValueError("an empty conversation ('messages' is [])")
    elif "prompt" in record or "response" in record:
        missing = [k for k in ("prompt", "response") if not isinstance(record.get(k), str)]
        if missing:
            raise ValueError(f"'{missing[0]}' must be a string, got {record.get(missing[0])!r:.60}")
        messages = [{"role": "user", "content": record["prompt"]},
                    {"role": "assistant", "content": record["response"]}]
        if "system" in record:
            if not isinstance(record["system"], str):
                raise ValueError(f"'system' must be a string, got {record['system']!r:.60}")
            messages.insert(0, {"role": "system", "content": record["system"]})
    else:
        raise ValueError(f"a line needs 'messages', or 'prompt' and 'response'; it has {sorted(record)[:6]}")
    try:
        messages = check_messages(messages)
    except ChatTemplateError as exc:
        raise ValueError(str(exc)) from None
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError("the conversation has no assistant turn, so nothing to learn from")
    if any(m["role"] == "system" for m in messages[1:]):
        raise ValueError("a system message may only come first")
    return messages


def _exchanges(messages: list[dict[str, str]]) -> tuple[list[dict[str, str]], list[list[dict[str, str]]]]:
    """``(system, exchanges)``: the leading system message (or none), then the rest cut before each user turn."""
    system = messages[:1] if messages[0]["role"] == "system" else []
    groups: list[list[dict[str, str]]] = []
    for m in messages[len(system):]:
        if m["role"] == "user" or not groups:
            groups.append([])
        groups[-1].append(m)
    return system, groups


def tokenize(tokenizer: Tokenizer, messages: list[dict[str, str]], max_tokens: int) -> Example:
    """The conversation as an ``Example`` of at most ``max_tokens`` ids, by ``TRUNCATION_RULE``.

    Raises ValueError naming the rule when even the system prompt and the last exchange do not fit,
    or when what is left has no assistant turn.
    """
    system, groups = _exchanges(messages)
    dropped = 0
    while True:
        kept = system + [m for g in groups[dropped:] for m in g]
        ids, trained = encode(tokenizer, kept)
        if len(ids) <= max_tokens or dropped == len(groups) - 1:
            break
        dropped += 1
    if len(ids) > max_tokens:
        raise ValueError(f"{len(ids):,} tokens, more than the {max_tokens:,} that fit (block size + 1), even after "
                         f"the truncation rule ({TRUNCATION_RULE})")
    if not any(trained[1:]):      # the first token is never a target
        raise ValueError(f"no assistant token is left to learn after the truncation rule ({TRUNCATION_RULE})")
    return Example(ids, trained, dropped_exchanges=dropped)


def read_records(path: str | os.PathLike) -> Iterator[tuple[int, list[dict[str, str]]]]:
    """``(line number, messages)`` for every non-blank line of a JSONL file; a bad line is a ``DataError``."""
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"conversation file {path} does not exist")
    if not path.is_file():             # a FIFO would block, a device be read for ever
        raise DataError(f"conversation file {path} is not a regular file (a device, FIFO or socket, or a link to one)")
    with open(path, "rb") as f:
        # A line at a time, each at most MAX_LINE bytes: a file may be large, one conversation is not.
        for number, raw in enumerate(iter(lambda: f.readline(MAX_LINE + 1), b""), 1):
            if len(raw) > MAX_LINE:
                raise DataError(f"{path}:{number}: a line longer than {MAX_LINE:,} bytes is no conversation")
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}:{number}: not UTF-8 (byte {raw[exc.start]:#04x} at column "
                                f"{exc.start + 1})") from None
            if not text.strip():
                continue
            record = fileio.parse_json(text, f"{path}:{number}", DataError)
            try:
                yield number, messages_of(record)
            except ValueError as exc:
                raise DataError(f"{path}:{number}: {exc}") from None


def load(path: str | os.PathLike, tokenizer: Tokenizer, block_size: int) -> list[Example]:
    """Every conversation of a JSONL file, tokenized to at most ``block_size + 1`` ids (see ``tokenize``)."""
    examples = []
    for number, messages in read_records(path):
        try:
            example = tokenize(tokenizer, messages, block_size + 1)
        except ValueError as exc:
            raise DataError(f"{path}:{number}: {exc}") from None
        example.line = number
        examples.append(example)
    if not examples:
        raise DataError(f"{path}: no conversations (the file is empty or blank)")
    return examples


def targets_of(example: Example) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` of one conversation: inputs ``ids[:-1]`` and targets ``ids[1:]``, the targets the
    assistant does not say replaced by ``IGNORE_INDEX`` (docs/agent.md eq:sft-targets)."""
    ids = np.asarray(example.ids, dtype=np.int64)
    trained = np.asarray(example.trained, dtype=bool)
    return ids[:-1], np.where(trained[1:], ids[1:], IGNORE_INDEX)


def collate(examples: Sequence[Example], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """A batch ``(x, y)`` of shape (B, T), T the longest row: each row one conversation, right-padded
    with ``pad_id`` in ``x`` and ``IGNORE_INDEX`` in ``y``."""
    pairs = [targets_of(e) for e in examples]
    T = max(len(x) for x, _ in pairs)
    x = np.full((len(pairs), T), pad_id, dtype=np.int64)
    y = np.full((len(pairs), T), IGNORE_INDEX, dtype=np.int64)
    for row, (xs, ys) in enumerate(pairs):
        x[row, :len(xs)] = xs
        y[row, :len(ys)] = ys
    return x, y


class ConversationSampler:
    """Batches of ``batch_size`` conversations, each epoch a fresh shuffle, resumable exactly.

    Epoch ``e``'s order is ``default_rng([seed, e]).permutation(n)``, so the state is two integers
    (epoch, position) and a resumed run draws exactly the batches it would have drawn. A batch
    that reaches the end of an epoch is completed from the next one.
    """

    def __init__(self, examples: Sequence[Example], batch_size: int, pad_id: int, seed: int = 0) -> None:
        if not examples:
            raise ValueError("ConversationSampler needs at least one conversation")
        self.examples, self.batch_size, self.pad_id, self.seed = list(examples), int(batch_size), int(pad_id), int(seed)
        self.epoch, self.position = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.examples))

    def next_examples(self) -> list[Example]:
        picked = []
        while len(picked) < self.batch_size:
            if self.position == len(self._order):
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
            picked.append(self.examples[self._order[self.position]])
            self.position += 1
        return picked

    def next(self) -> tuple[np.ndarray, np.ndarray]:
        """The next batch ``(x, y)`` (see ``collate``)."""
        return collate(self.next_examples(), self.pad_id)

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "batch_size": self.batch_size, "examples": len(self.examples),
                "epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("examples") != len(self.examples) or state.get("seed") != self.seed:
            raise ValueError(f"the saved sampler drew from {state.get('examples')} conversations with seed "
                             f"{state.get('seed')}; this one has {len(self.examples)} with seed {self.seed}: "
                             "the data or the seed changed since the checkpoint")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._permutation(self.epoch)


def batches(examples: Sequence[Example], batch_size: int, pad_id: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Every conversation once, in order, in batches of up to ``batch_size`` (for evaluation)."""
    for start in range(0, len(examples), batch_size):
        yield collate(examples[start:start + batch_size], pad_id)


def split(examples: list[Example], val_fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """``(train, val)``: a fixed random ``val_fraction`` of the conversations held out (at least one,
    and at least one left to train on)."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must lie strictly between 0 and 1, got {val_fraction}")
    if len(examples) < 2:
        raise ValueError(f"{len(examples)} conversation(s) cannot be split into training and validation; "
                         "give a validation file")
    order = np.random.default_rng([seed, 1 << 20]).permutation(len(examples))
    n_val = min(len(examples) - 1, max(1, int(round(len(examples) * val_fraction))))
    held = set(order[:n_val].tolist())
    return ([e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held])


def pad_id_of(tokenizer: Tokenizer) -> int:
    """The id that fills padding (its value never matters: no real token attends to it, no loss reads it)."""
    return tokenizer.end_of_turn_id if tokenizer.end_of_turn_id is not None else 0


def count_trained(y: np.ndarray) -> int:
    """The number of targets a batch's loss averages over (docs/agent.md eq:sft-loss's denominator)."""
    return int((y != IGNORE_INDEX).sum())


__all__ = ["IGNORE_INDEX", "TRUNCATION_RULE", "DataError", "Example", "messages_of", "tokenize", "read_records",
           "load", "targets_of", "collate", "ConversationSampler", "batches", "split", "pad_id_of",
           "count_trained"]
