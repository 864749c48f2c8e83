"""Tiny model directories for the tests that fine-tune or chat (a test helper).

A model directory is what ``GPT.from_pretrained`` and ``Tokenizer.from_pretrained`` read: the
weights and the tokenizer side by side. These are random one-layer GPTs, seconds to train.
"""

import json

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


def tiny_chat_dir(root):
    """A random one-layer GPT with npgpt-small's tokenizer (no chat template yet) in ``root/model``, and
    ``root/chats.jsonl``: 24 prompt/response pairs about eight words. For the LoRA SFT tests."""
    GPT(GPTConfig(vocab_size=8192, block_size=64, n_layer=1, n_head=2, n_embd=16), seed=3).save_pretrained(
        root / "model")
    Tokenizer.from_pretrained("npgpt-small").save(root / "model")
    words = ["cat", "dog", "horse", "apple", "river", "table", "window", "garden"]
    rows = [{"prompt": f"Define {w}.", "response": f"A {w} has {len(w)} letters."} for w in words]
    (root / "chats.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows * 3))
    return root
