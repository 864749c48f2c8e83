"""Tiny model directories for the tests that fine-tune or chat (a test helper).

A model directory is what ``GPT.from_pretrained`` and ``Tokenizer.from_pretrained`` read: the
weights and the tokenizer side by side. These are random one-layer GPTs, seconds to train.
"""

from npgpt.model import GPT, GPTConfig
from npgpt.tokenizer import Tokenizer


def tiny_model_dir(directory, tokenizer, n_embd=32, seed=0):
    """A random one-layer GPT (block size 64, 2 heads) of ``tokenizer``'s vocabulary, saved with it."""
    config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=n_embd)
    GPT(config, seed=seed).save_pretrained(directory)
    tokenizer.save(directory)
    return directory


def tiny_bpe_model_dir(directory, texts):
    """:func:`tiny_model_dir` with a 300-token BPE tokenizer trained on ``texts``."""
    return tiny_model_dir(directory, Tokenizer.train(texts, 300, show_progress=False))
