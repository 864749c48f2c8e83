"""Talking to a chat model: ``ChatSession`` in Python, ``npgpt chat MODEL`` on the command line (docs/agent.md).

A session keeps the conversation (an optional system prompt, then user and assistant turns in
turn). Each ``send`` renders the whole conversation with the model's chat template, ends it with the
generation prompt (``<|im_start|>assistant\\n``), and generates until the end-of-turn token
(``<|im_end|>``) or ``max_new_tokens``; the answer joins the history, so the next question is asked
in its context.

The model sees at most ``block_size`` tokens, prompt and answer together. Before each answer the
oldest exchanges (a user turn and the answer to it) are dropped until the prompt leaves room for
``min(max_new_tokens, block_size // 2)`` tokens of answer; each drop is reported through
``on_notice``. The system prompt is never dropped; a message that cannot fit even with the system
prompt alone is refused (``ValueError``). The answer is cut at the end of the context, so the
conversation's start never slides out of view in the middle of a turn.

    session = ChatSession.from_pretrained("sft-run/checkpoint", system="Answer briefly.")
    for piece in session.stream("Define river."):
        print(piece, end="", flush=True)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any, Optional

import numpy as np

from npgpt import backend, generation
from npgpt.tokenizer import ENDOFTEXT, StreamDecoder, Tokenizer
from npgpt.tokenizer.chat import IM_START, NO_TEMPLATE_HELP, ChatTemplateError

__all__ = ["ChatSession"]


class ChatSession:
    """A conversation with a chat model (a GPT whose tokenizer has a chat template).

    ``temperature`` 0 is greedy decoding; otherwise tokens are sampled after ``temperature``,
    ``top_k`` and ``top_p`` as in ``npgpt.generation``. With a ``seed`` each answer draws from
    ``default_rng(seed + k)`` for the k-th answer of the session, so a session replays exactly.
    ``on_notice`` receives one-line notices (a dropped turn); by default they are ignored.
    """

    def __init__(self, model: Any, tokenizer: Tokenizer, *, system: Optional[str] = None,
                 max_new_tokens: int = 200, temperature: float = 0.7, top_k: Optional[int] = None,
                 top_p: Optional[float] = None, seed: Optional[int] = None,
                 on_notice: Optional[Callable[[str], None]] = None) -> None:
        if tokenizer.chat_template is None or tokenizer.end_of_turn_id is None:
            raise ChatTemplateError(f"this model cannot chat: {NO_TEMPLATE_HELP}")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0: greedy), got {temperature!r}")
        generation.check_sampling_args(max_new_tokens, temperature or 1.0, top_k, top_p)
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens!r}")
        if system is not None and not isinstance(system, str):
            raise TypeError(f"system must be a str or None, got {type(system).__name__}")
        self.model, self.tokenizer = model, tokenizer
        self.system = system
        self.max_new_tokens, self.temperature, self.top_k, self.top_p = max_new_tokens, temperature, top_k, top_p
        self.seed = seed
        self.on_notice = on_notice if on_notice is not None else (lambda line: None)
        self.turns: list[dict[str, str]] = []       # user and assistant messages, oldest first
        self._answers = 0
        # Where an answer ends: the end of turn, and the two tokens a confused small model might say
        # instead (a new turn's start, the end of a document); none of them is shown.
        specials = tokenizer.special_tokens
        self.stop_ids = [tokenizer.end_of_turn_id] + [specials[s] for s in (IM_START, ENDOFTEXT) if s in specials]

    @classmethod
    def from_pretrained(cls, name_or_dir: str | os.PathLike, *, device: str = "cpu", **options: Any) -> ChatSession:
        """A session with the model and tokenizer of a directory (``npgpt sft``'s checkpoint), a
        shipped name or a Hub id; ``options`` as the constructor's."""
        from npgpt.model import GPT

        tokenizer = Tokenizer.from_pretrained(name_or_dir)
        if tokenizer.chat_template is None:       # before loading the weights: say it at once
            raise ChatTemplateError(f"{name_or_dir} cannot chat: {NO_TEMPLATE_HELP}")
        model = GPT.from_pretrained(name_or_dir).to(backend.check_device(device))
        return cls(model, tokenizer, **options)

    @property
    def messages(self) -> list[dict[str, str]]:
        """The conversation as the model will see it next: the system prompt (if any), then the turns kept."""
        head = [{"role": "system", "content": self.system}] if self.system is not None else []
        return head + [dict(m) for m in self.turns]

    def reset(self) -> None:
        """Forget every turn (the system prompt stays)."""
        self.turns.clear()

    def _prompt(self) -> tuple[list[int], int]:
        """The prompt's ids and how many new tokens fit after them, dropping the oldest exchanges as needed."""
        block = self.model.config.block_size
        room = min(self.max_new_tokens, max(1, block // 2))
        while True:
            ids = self.tokenizer.apply_chat_template(self.messages, add_generation_prompt=True)
            if len(ids) + room <= block:
                return ids, min(self.max_new_tokens, block - len(ids))
            if len(self.turns) <= 1:            # only the new message is left (and the system prompt)
                self.turns.clear()
                raise ValueError(f"the message is too long: with the system prompt it takes {len(ids):,} tokens, "
                                 f"and the model's context of {block:,} must leave room for {room:,} of answer")
            # Drop the oldest exchange: the first user turn and everything up to the next user turn.
            end = next((k for k in range(1, len(self.turns)) if self.turns[k]["role"] == "user"), len(self.turns))
            del self.turns[:end]
            self.on_notice(f"(the oldest turn was dropped to stay within the model's {block:,}-token context)")

    def stream(self, message: str) -> Iterator[str]:
        """Send ``message``; yield the answer's text as it is generated.

        The answer joins the history when the stream ends, also when it is stopped early (the
        iterator closed, or Ctrl-C's ``KeyboardInterrupt``): what was said so far stays said.
        """
        if not isinstance(message, str):
            raise TypeError(f"a message is a str, got {type(message).__name__}")
        self.turns.append({"role": "user", "content": message})
        ids, room = self._prompt()
        seed = None if self.seed is None else self.seed + self._answers
        self._answers += 1
        steps = generation.stream(self.model, np.array([ids]), room, do_sample=self.temperature > 0,
                                  temperature=self.temperature if self.temperature > 0 else 1.0, top_k=self.top_k,
                                  top_p=self.top_p, seed=seed, eos_token_id=self.stop_ids)
        decoder = StreamDecoder(self.tokenizer)
        said: list[str] = []
        try:
            for step in steps:
                token = int(backend.to_numpy(step)[0])
                if token in self.stop_ids:
                    break
                piece = decoder.push(token)
                if piece:
                    said.append(piece)
                    yield piece
            tail = decoder.flush()
            if tail:
                said.append(tail)
                yield tail
        finally:
            self.turns.append({"role": "assistant", "content": "".join(said)})

    def send(self, message: str) -> str:
        """Send ``message`` and return the whole answer."""
        return "".join(self.stream(message))
