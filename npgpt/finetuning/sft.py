"""Supervised fine-tuning (SFT) of a language model on conversations (docs/agent.md).

This part: giving a pretrained model the chat template's role markers. The tokenizer gains
``<|im_start|>`` and ``<|im_end|>`` as special tokens (``npgpt.tokenizer.chat.with_chat_tokens``),
and the model's token table grows by as many rows. The LM head is tied to that table, so it grows
with it: a new row is both the marker's input vector and its output vector.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from npgpt import backend, nn
from npgpt.tokenizer.chat import with_chat_tokens

if TYPE_CHECKING:
    from npgpt.model import GPT
    from npgpt.tokenizer import Tokenizer


def resize_token_embeddings(model: GPT, vocab_size: int) -> GPT:
    """Grow ``model``'s token table (and so its tied LM head) to ``vocab_size`` rows, in place.

    The new rows are the mean of the old ones (docs/agent.md eq. 4), as is common (Hewitt
    2021, "Initializing new word embeddings"): a new token's logit is then the average logit, so the
    model's predictions over the old vocabulary barely move, where a random row could take a large
    share of the probability at the start and a zero row would still take ``exp(0)``'s share.
    The old rows are kept exactly. Shrinking is refused: it would drop tokens the model knows.
    """
    old = model.wte.weight.data                       # (V, C)
    V, C = old.shape
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < V:
        raise ValueError(f"vocab_size must be an integer >= the model's {V} tokens, got {vocab_size!r}")
    if vocab_size == V:
        return model
    xp = backend.array_module(old)
    mean = old.astype(xp.float64).mean(axis=0, keepdims=True).astype(old.dtype)     # (1, C)
    grown = xp.concatenate([old, xp.repeat(mean, vocab_size - V, axis=0)], axis=0)   # (vocab_size, C)
    model.wte.weight = nn.Parameter(grown)
    model.wte.num_embeddings = vocab_size
    model.config.vocab_size = vocab_size
    return model


def add_chat_tokens(model: GPT, tokenizer: Tokenizer) -> tuple[GPT, Tokenizer]:
    """Give ``model`` and ``tokenizer`` npgpt's chat template: the tokenizer gains the role markers as
    special tokens (those it lacks) and the template; the model's table grows to match, in place.

    Returns ``(model, chat_tokenizer)``. Save both (``model.save_pretrained(d)``,
    ``chat_tokenizer.save(d)``) and they reload together. The model must have one row per id of the
    tokenizer (a table padded past the vocabulary would give the markers rows that were never trained
    nor initialised as eq. 4 of docs/agent.md says, so it is refused).
    """
    if model.config.vocab_size != tokenizer.vocab_size:
        raise ValueError(f"the model has {model.config.vocab_size} token rows but the tokenizer has "
                         f"{tokenizer.vocab_size} ids: add_chat_tokens needs the model's own tokenizer")
    chat_tokenizer = with_chat_tokens(tokenizer)
    resize_token_embeddings(model, chat_tokenizer.vocab_size)
    return model, chat_tokenizer
