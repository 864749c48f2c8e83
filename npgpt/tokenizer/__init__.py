"""Byte-level byte-pair encoding (BPE) in the GPT-2 style: training, encoding, GPT-2's own files.

The companion chapter is docs/tokenizer.md. In one paragraph: text is UTF-8 encoded, so every
string is a sequence of bytes and the 256 byte values are the first tokens; nothing is ever
"unknown". A regular expression first cuts text into pre-tokens (words, numbers, punctuation runs,
whitespace), and merges never cross a pre-token. Training repeatedly finds the most frequent
adjacent pair of tokens and adds their concatenation as a new token; the ordered list of merges
*is* the tokenizer. Encoding replays the merges on each pre-token, lowest rank first.

Pure Python plus ``regex`` (for ``\\p{L}`` and ``\\p{N}``; NumPy only for ``encode_batch``'s
padded arrays): the tokenizer stands alone, imports nothing else of npgpt except ``npgpt.datasets``
to fetch GPT-2's vocabulary for ``"gpt2"`` and ``npgpt.io.hub`` for a Hugging Face Hub repo id.

    tok = Tokenizer.from_pretrained("gpt2")
    tok.encode("The cat sits on the mat.")        # [464, 3797, 10718, 319, 262, 2603, 13]
    tok = Tokenizer.train(texts, vocab_size=4096)
    tok.save("my-tokenizer")                      # Hugging Face's vocab.json + merges.txt layout

The package: ``reference.py`` (GPT-2's pattern and the textbook encoder, for reading and
testing), ``bpe.py`` (the fast pre-tokenizer, byte map, merge loops, the encoder's caches), ``train.py``
(incremental training), ``formats.py`` (Hugging Face / OpenAI / tiktoken files), ``core.py``
(the ``Tokenizer`` class) and ``stream.py`` (``StreamDecoder``: ids to text one at a time, for
printing generated text as it comes without cutting a character apart) and ``chat.py`` (chat
templates: a conversation as text and ids, the role markers as special tokens; docs/agent.md).
"""

from npgpt.tokenizer.bpe import ENDOFTEXT, GPT2_ENDOFTEXT_ID, bytes_to_unicode, pretokenize
from npgpt.tokenizer.chat import ChatTemplateError
from npgpt.tokenizer.core import Tokenizer
from npgpt.tokenizer.formats import TokenizerFileError
from npgpt.tokenizer.reference import GPT2_PATTERN
from npgpt.tokenizer.stream import StreamDecoder

__all__ = ["Tokenizer", "TokenizerFileError", "ChatTemplateError", "StreamDecoder", "ENDOFTEXT", "GPT2_ENDOFTEXT_ID",
           "GPT2_PATTERN",
           "bytes_to_unicode", "pretokenize"]
