"""Tokenizer files: Hugging Face's and OpenAI's GPT-2 layouts, and tiktoken's ranks files.

Each reader returns ``(tokens, merges, special_tokens)``, what ``Tokenizer(...)`` takes: the bytes
of every id, the merges as pairs of ids in rank order, and {special token text: id}.
See docs/tokenizer.md, "Files".
"""

from __future__ import annotations

import base64
import json
import os
import pathlib
from collections.abc import Collection, Iterable, Sequence
from typing import Any, Optional

from npgpt import fileio
from npgpt.tokenizer.bpe import ENDOFTEXT, GPT2_ENDOFTEXT_ID, Vocabulary, bpe, token_bytes, token_text

FORMAT_VERSION = 1          # written to tokenizer_config.json as "npgpt_tokenizer_format"


def read_tiktoken(path: str | os.PathLike, special_tokens: Optional[dict[str, int]] = None) -> Vocabulary:
    """``(tokens, merges, special_tokens)`` from a ``.tiktoken`` ranks file (``<base64 bytes> <rank>`` per line).

    That format stores each token's rank but not which pair made it; the pair is recovered by
    running BPE on the token's bytes with the lower-ranked merges only, which leaves exactly
    the two parts that the token's own merge joins.
    """
    if special_tokens is None:
        special_tokens = {ENDOFTEXT: GPT2_ENDOFTEXT_ID}
    ranked = []
    for line_no, line in enumerate(pathlib.Path(path).read_bytes().splitlines(), 1):
        if line.strip():
            try:
                token, rank = line.split()
                ranked.append((int(rank), base64.b64decode(token, validate=True)))
            except ValueError as e:
                raise ValueError(f"{path}:{line_no}: not a '<base64> <rank>' line ({e})") from None
    ranked.sort()
    n = len(ranked) + len(special_tokens)
    tokens = [b""] * n
    for rank, token in ranked:
        if rank >= n:
            raise ValueError(f"{path}: rank {rank} is beyond the {len(ranked)} tokens of the file")
        tokens[rank] = token
    for s, i in special_tokens.items():
        tokens[i] = s.encode("utf-8")
    byte_ids = {t[0]: r for r, t in ranked if len(t) == 1}
    if len(byte_ids) != 256:
        raise ValueError(f"{path}: a byte-level ranks file needs all 256 single bytes")
    merges, ranks, merged = [], {}, []
    for rank, token in ranked:
        if len(token) > 1:
            parts = bpe([byte_ids[b] for b in token], ranks, merged)
            if len(parts) != 2:
                raise ValueError(f"{path}: token {token!r} (rank {rank}) is not one merge of lower-ranked tokens")
            ranks[tuple(parts)] = len(merges)
            merges.append(tuple(parts))
            merged.append(rank)
    return tokens, merges, special_tokens

def read_vocab_merges(vocab_path: str | os.PathLike, merges_path: str | os.PathLike,
                      special_names: Collection[str] = ()) -> Vocabulary:
    """``(tokens, merges, special_tokens)`` from vocab.json/encoder.json + merges.txt/vocab.bpe
    (Hugging Face's and OpenAI's layouts are one format under two pairs of names)."""
    vocab = json.loads(pathlib.Path(vocab_path).read_text(encoding="utf-8"))
    n = len(vocab)
    if sorted(vocab.values()) != list(range(n)):
        raise ValueError(f"{vocab_path}: ids must be 0..{n - 1}, each used once")
    tokens, specials = [b""] * n, {}
    for text, i in vocab.items():
        try:
            tokens[i] = token_bytes(text)
        except KeyError:               # not a byte-level spelling: an added token
            special_names = (*special_names, text)
        if text in special_names:
            tokens[i], specials[text] = text.encode("utf-8"), i
    merges = []
    for line_no, line in enumerate(pathlib.Path(merges_path).read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("#version") or not line.strip():
            continue
        parts = line.split(" ")
        if len(parts) != 2 or parts[0] not in vocab or parts[1] not in vocab:
            raise ValueError(f"{merges_path}:{line_no}: {line!r} is not a merge of two tokens of {vocab_path}")
        merges.append((vocab[parts[0]], vocab[parts[1]]))
    # A token that is neither a byte nor made by a merge can only be a special token
    # (OpenAI's encoder.json lists <|endoftext|> without saying so).
    made = {tokens[a] + tokens[b] for a, b in merges}
    for text, i in vocab.items():
        if i not in specials.values() and len(tokens[i]) > 1 and tokens[i] not in made:
            tokens[i], specials[text] = text.encode("utf-8"), i
    return tokens, merges, specials


def read_dir(path: pathlib.Path) -> Vocabulary:
    """``(tokens, merges, special_tokens)`` from a tokenizer directory of either layout."""
    for vocab, merges in (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe")):
        if (path / vocab).is_file() and (path / merges).is_file():
            return read_vocab_merges(path / vocab, path / merges, special_names(path))
    raise FileNotFoundError(f"{path} holds neither vocab.json + merges.txt nor encoder.json + vocab.bpe")


def write_hf(directory: str | os.PathLike, tokens: Sequence[bytes], merges: Iterable[tuple[int, int]],
             special_tokens: dict[str, int]) -> pathlib.Path:
    """Write Hugging Face's GPT-2 layout into ``directory`` (created if needed), each file
    atomically: vocab.json, merges.txt, special_tokens_map.json, tokenizer_config.json."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    special_ids = {i: s for s, i in special_tokens.items()}
    # Ordinary tokens are spelled with the byte-to-unicode map, special tokens as their text.
    vocab = {special_ids[i] if i in special_ids else token_text(t): i for i, t in enumerate(tokens)}
    merges_text = "#version: 0.2\n" + "".join(f"{token_text(tokens[a])} {token_text(tokens[b])}\n"
                                              for a, b in merges)
    specials = sorted(special_tokens, key=special_tokens.get)
    roles = {}
    if specials:                       # GPT-2 uses <|endoftext|> as bos, eos and unk
        main = ENDOFTEXT if ENDOFTEXT in specials else specials[0]
        roles = {"bos_token": main, "eos_token": main, "unk_token": main}
    others = [s for s in specials if s not in roles.values()]
    special_map = {**roles, **({"additional_special_tokens": others} if others else {})}
    config = {"tokenizer_class": "GPT2Tokenizer", "add_prefix_space": False, "errors": "replace",
              "model_max_length": 1024, "npgpt_tokenizer_format": FORMAT_VERSION, **special_map,
              "added_tokens_decoder": {str(special_tokens[s]): {
                  "content": s, "lstrip": False, "rstrip": False, "normalized": False,
                  "single_word": False, "special": True} for s in specials}}
    files = {"vocab.json": json.dumps(vocab, ensure_ascii=False), "merges.txt": merges_text,
             "special_tokens_map.json": json.dumps(special_map, indent=2),
             "tokenizer_config.json": json.dumps(config, indent=2)}
    for name, text in files.items():
        fileio.atomic_write(directory / name, text)
    return directory


def special_names(path: pathlib.Path) -> tuple[str, ...]:
    """Special-token texts named by a Hugging Face tokenizer directory's json files."""
    names = []

    def add(value: Any) -> None:
        if isinstance(value, str):
            names.append(value)
        elif isinstance(value, dict) and "content" in value:
            names.append(value["content"])
        elif isinstance(value, list):
            for v in value:
                add(v)

    for file in ("special_tokens_map.json", "tokenizer_config.json", "added_tokens.json"):
        if (path / file).is_file():
            data = json.loads((path / file).read_text(encoding="utf-8"))
            if file == "added_tokens.json":
                add(list(data))
                continue
            for key, value in data.items():
                if key.endswith("_token") or key == "additional_special_tokens":
                    add(value)
            for value in data.get("added_tokens_decoder", {}).values():
                if value.get("special"):
                    add(value)
    return tuple(names)
