"""Tokenizer files: Hugging Face's and OpenAI's GPT-2 layouts, and tiktoken's ranks files.

Each reader returns ``(tokens, merges, special_tokens)``, what ``Tokenizer(...)`` takes: the bytes
of every id, the merges as pairs of ids in rank order, and {special token text: id}.
See docs/tokenizer.md, "Files" and "What the loaders guarantee".

Every reader treats its files as untrusted: whatever the bytes, it returns a vocabulary whose
every ordinary token the merges can produce, or raises ``TokenizerFileError`` (a ``ValueError``)
naming the file, and the line where there is one.
"""

from __future__ import annotations

import base64
import json
import os
import pathlib
from collections.abc import Collection, Iterable, Sequence
from typing import Any, Optional

from npgpt.io import fileio
from npgpt.io.fileio import excerpt
from npgpt.tokenizer.bpe import ENDOFTEXT, SPECIAL_SHAPE, Vocabulary, bpe, token_bytes, token_text

FORMAT_VERSION = 1          # written to tokenizer_config.json as "npgpt_tokenizer_format"


class TokenizerFileError(ValueError):
    """A tokenizer file is malformed. The message starts with the file (``path:line`` where there is a line)."""


def read_text(path: str | os.PathLike) -> str:
    """The text of a UTF-8 tokenizer file; a byte that is not UTF-8, a file over
    ``fileio.MAX_TOKENIZER_FILE`` bytes or one that is no regular file is an error naming it."""
    try:
        return fileio.read_utf8(path, "tokenizer file", limit=fileio.MAX_TOKENIZER_FILE)
    except ValueError as exc:            # a missing file is a FileNotFoundError, let through
        raise TokenizerFileError(str(exc)) from None


def read_raw(path: str | os.PathLike) -> bytes:
    """The bytes of a tokenizer file, bounded as ``read_text`` bounds them."""
    try:
        return fileio.read_bytes(path, "tokenizer file", limit=fileio.MAX_TOKENIZER_FILE)
    except ValueError as exc:
        raise TokenizerFileError(str(exc)) from None


def read_json(path: str | os.PathLike) -> Any:
    """The JSON value in a tokenizer file; malformed JSON (syntax, repeated keys, nesting beyond Python's
    recursion limit, integers beyond its digit limit) is an error naming the file and line."""
    return fileio.parse_json(read_text(path), path, TokenizerFileError)


def _check_special_ids(path: Any, special_tokens: Any, n_ranks: int) -> dict[str, int]:
    """Special tokens for a ranks file of ``n_ranks`` tokens: texts -> the ids just after the ranks."""
    if not isinstance(special_tokens, dict):
        raise TokenizerFileError(f"{path}: special_tokens must be a dict of text -> id, got "
                                 f"{type(special_tokens).__name__}")
    k = len(special_tokens)
    for text, i in special_tokens.items():
        if not isinstance(text, str) or not text:
            raise TokenizerFileError(f"{path}: a special token must be a non-empty str, got {excerpt(text)}")
        if not fileio.is_int(i) or not n_ranks <= i < n_ranks + k:
            raise TokenizerFileError(f"{path}: special token {excerpt(text)} has id {excerpt(i)}; the file has {n_ranks} "
                                     f"ranks (ids 0..{n_ranks - 1}), so its {k} special token(s) take the ids "
                                     f"{n_ranks}..{n_ranks + k - 1}")
    if len(set(special_tokens.values())) != k:
        raise TokenizerFileError(f"{path}: two special tokens share an id: {excerpt(special_tokens)}")
    return dict(special_tokens)


def read_tiktoken(path: str | os.PathLike, special_tokens: Optional[dict[str, int]] = None) -> Vocabulary:
    """``(tokens, merges, special_tokens)`` from a ``.tiktoken`` ranks file (``<base64 bytes> <rank>`` per line).

    That format stores each token's rank but not which pair made it; the pair is recovered by
    running BPE on the token's bytes with the lower-ranked merges only, which leaves exactly
    the two parts that the token's own merge joins (so every token is reachable by construction).
    The ranks must be 0..N-1, each once. ``special_tokens`` defaults to ``<|endoftext|>`` with
    the id after the last rank (50256 for GPT-2's 50,256 ranks); given ones take ids N, N+1, ...
    """
    ranked, lines = [], {}
    for line_no, line in enumerate(read_raw(path).splitlines(), 1):
        if line.strip():
            try:
                token, rank = line.split()
                if not rank.isdigit():
                    raise ValueError(f"rank {excerpt(rank)} is not a non-negative integer")
                ranked.append((int(rank), base64.b64decode(token, validate=True), line_no))
            except ValueError as e:
                raise TokenizerFileError(f"{path}:{line_no}: not a '<base64> <rank>' line ({e})") from None
            if not ranked[-1][1]:
                raise TokenizerFileError(f"{path}:{line_no}: an empty token")
            if ranked[-1][1] in lines:
                raise TokenizerFileError(f"{path}:{line_no}: token {excerpt(ranked[-1][1])} already appears on line "
                                         f"{lines[ranked[-1][1]]}")
            lines[ranked[-1][1]] = line_no
    ranked.sort()
    for expected, (rank, _, line_no) in enumerate(ranked):
        if rank != expected:
            problem = "is given twice" if rank < expected else "is missing"
            raise TokenizerFileError(f"{path}:{line_no}: rank {expected} {problem}; the ranks of a file of "
                                     f"{len(ranked)} tokens are 0..{len(ranked) - 1}, each once")
    n_ranks = len(ranked)
    special_tokens = _check_special_ids(path, {ENDOFTEXT: n_ranks} if special_tokens is None else special_tokens,
                                        n_ranks)
    tokens = [token for _, token, _ in ranked] + [b""] * len(special_tokens)
    for s, i in special_tokens.items():
        tokens[i] = s.encode("utf-8")
    byte_ids = {t[0]: r for r, t, _ in ranked if len(t) == 1}
    if len(byte_ids) != 256:
        raise TokenizerFileError(f"{path}: a byte-level ranks file needs all 256 single bytes, it has {len(byte_ids)}")
    merges, ranks, merged = [], {}, []
    for rank, token, line_no in ranked:
        if len(token) > 1:
            parts = bpe([byte_ids[b] for b in token], ranks, merged)
            if len(parts) != 2:
                raise TokenizerFileError(f"{path}:{line_no}: token {excerpt(token)} (rank {rank}) is not one merge "
                                         "of lower-ranked tokens")
            ranks[tuple(parts)] = len(merges)
            merges.append(tuple(parts))
            merged.append(rank)
    return tokens, merges, special_tokens

def read_vocab_merges(vocab_path: str | os.PathLike, merges_path: str | os.PathLike,
                      special_names: Collection[str] = ()) -> Vocabulary:
    """``(tokens, merges, special_tokens)`` from vocab.json/encoder.json + merges.txt/vocab.bpe
    (Hugging Face's and OpenAI's layouts are one format under two pairs of names).

    Special tokens are those named in ``special_names`` (from the directory's json files),
    those whose text is no byte-level spelling (tokens added after training), and, since
    OpenAI's encoder.json lists ``<|endoftext|>`` without saying so, a token spelled
    ``<|...|>`` that no merge makes. Any other token must be produced by the merges: a merges
    file that is truncated, reordered or from another vocabulary is refused, never papered
    over by calling the tokens it fails to make special.
    """
    vocab = read_json(vocab_path)
    if not isinstance(vocab, dict) or not vocab:
        raise TokenizerFileError(f"{vocab_path}: expected a non-empty JSON object of token -> id, "
                                 f"got {type(vocab).__name__} {excerpt(vocab)}")
    n = len(vocab)
    owner: list[Optional[str]] = [None] * n
    for text, i in vocab.items():
        if not fileio.is_int(i) or not 0 <= i < n:
            raise TokenizerFileError(f"{vocab_path}: token {excerpt(text)} has id {excerpt(i)}; the ids of {n} tokens "
                                     f"are the integers 0..{n - 1}, each used once")
        if owner[i] is not None:
            raise TokenizerFileError(f"{vocab_path}: tokens {excerpt(owner[i])} and {excerpt(text)} both have id {i}")
        if not text:
            raise TokenizerFileError(f"{vocab_path}: id {i} is the empty string, which is no token")
        owner[i] = text
    tokens, specials, ordinary = [b""] * n, {}, {}
    named = set(special_names)
    for text, i in vocab.items():
        try:
            tokens[i] = token_bytes(text)
        except KeyError:               # not a byte-level spelling: an added token
            named.add(text)
        if text in named:
            tokens[i], specials[text] = text.encode("utf-8"), i
        else:
            ordinary[tokens[i]] = i
    missing = [b for b in range(256) if bytes([b]) not in ordinary]
    if missing:
        raise TokenizerFileError(f"{vocab_path}: a byte-level vocabulary needs all 256 bytes as tokens; "
                                 f"{len(missing)} are missing, e.g. {token_text(bytes(missing[:4]))!r}")
    merges = []
    for line_no, line in enumerate(read_text(merges_path).splitlines(), 1):
        if line.startswith("#version") or not line.strip():
            continue
        parts = line.split(" ")
        if len(parts) != 2 or parts[0] not in vocab or parts[1] not in vocab:
            raise TokenizerFileError(f"{merges_path}:{line_no}: {excerpt(line)} is not a merge of two tokens of "
                                     f"{vocab_path}")
        a, b = vocab[parts[0]], vocab[parts[1]]
        if a in specials.values() or b in specials.values():
            raise TokenizerFileError(f"{merges_path}:{line_no}: {excerpt(line)} merges a special token")
        if tokens[a] + tokens[b] not in ordinary:
            raise TokenizerFileError(f"{merges_path}:{line_no}: {excerpt(line)} makes "
                                     f"{excerpt(token_text(tokens[a] + tokens[b]))}, which is not in {vocab_path}")
        merges.append((a, b))
    made = {tokens[a] + tokens[b] for a, b in merges}
    for text, i in vocab.items():
        if len(tokens[i]) > 1 and tokens[i] not in made and i not in specials.values() and SPECIAL_SHAPE.fullmatch(text):
            del ordinary[tokens[i]]
            tokens[i], specials[text] = text.encode("utf-8"), i
    unreachable = _unreachable(tokens, merges, ordinary)
    if unreachable:
        i = unreachable[0]
        raise TokenizerFileError(f"{merges_path}: {len(unreachable):,} ordinary token(s) of {vocab_path} are never "
                                 f"produced by these merges, e.g. {excerpt(owner[i])} (id {i}): the merges file is "
                                 "truncated, reordered or belongs to another vocabulary")
    return tokens, merges, specials


def _unreachable(tokens: list[bytes], merges: list[tuple[int, int]], ordinary: dict[bytes, int]) -> list[int]:
    """Ids of ordinary tokens of two or more bytes that encoding their own bytes does not give back.

    That is exactly what the encoder does to a pre-token (``bpe``), so a token listed here could
    never appear in an encoding: what a truncated or shuffled merges file leaves behind.
    """
    ranks: dict[tuple[int, int], int] = {}
    merged = []
    for r, (a, b) in enumerate(merges):
        ranks.setdefault((a, b), r)
        merged.append(ordinary[tokens[a] + tokens[b]])
    byte_ids = [ordinary[bytes([b])] for b in range(256)]
    table = bytes(byte_ids) if max(byte_ids) < 256 else None
    bad = []
    for t, i in ordinary.items():
        if len(t) < 2:
            continue
        ids = list(t.translate(table)) if table else [byte_ids[b] for b in t]
        if len(ids) == 2:              # the common case, without the merge loop
            r = ranks.get((ids[0], ids[1]))
            if r is None or merged[r] != i:
                bad.append(i)
        elif bpe(ids, ranks, merged) != [i]:
            bad.append(i)
    return sorted(bad)


def read_dir(path: pathlib.Path) -> Vocabulary:
    """``(tokens, merges, special_tokens)`` from a tokenizer directory of either layout."""
    for vocab, merges in (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe")):
        if (path / vocab).exists() and (path / merges).exists():     # a special file is refused by the reader
            return read_vocab_merges(path / vocab, path / merges, special_names(path))
    raise FileNotFoundError(f"{path} holds neither vocab.json + merges.txt nor encoder.json + vocab.bpe")


def write_hf(directory: str | os.PathLike, tokens: Sequence[bytes], merges: Iterable[tuple[int, int]],
             special_tokens: dict[str, int], chat_template: Optional[str] = None) -> pathlib.Path:
    """Write Hugging Face's GPT-2 layout into ``directory`` (created if needed), complete or
    refused: vocab.json, merges.txt, special_tokens_map.json, tokenizer_config.json (which holds
    ``chat_template`` when there is one, where ``transformers`` looks for it)."""
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
                  "single_word": False, "special": True} for s in specials},
              **({"chat_template": chat_template} if chat_template is not None else {})}
    files = {"vocab.json": json.dumps(vocab, ensure_ascii=False), "merges.txt": merges_text,
             "special_tokens_map.json": json.dumps(special_map, indent=2),
             "tokenizer_config.json": json.dumps(config, indent=2)}
    # Written aside, then published vocab.json last (``fileio.publish``): a kill or a full disk
    # leaves the previous tokenizer, or a directory the loader refuses, never files of two.
    with fileio.private_directory(directory, ".saving.") as staging:
        for name, text in files.items():
            fileio.atomic_write(staging / name, text)
        fileio.publish(staging, directory, last="vocab.json")
    return directory


def special_names(path: pathlib.Path) -> tuple[str, ...]:
    """Special-token texts named by a Hugging Face tokenizer directory's json files.

    Read: ``*_token`` keys (a text, or an ``AddedToken`` object with its ``content``),
    ``additional_special_tokens`` (a list of those), ``added_tokens_decoder`` (id -> object,
    with ``"special": true``) and added_tokens.json (text -> id). Values of other kinds under a
    ``*_token`` key (``"add_bos_token": false``) are settings, not tokens, and are skipped; a
    shape that cannot be meant is a ``TokenizerFileError`` naming the file and key.
    """
    names = []

    def name_in(value: Any, file: pathlib.Path, key: str) -> Optional[str]:
        if isinstance(value, str):
            return value
        if isinstance(value, dict):
            content = value.get("content")
            if not isinstance(content, str):
                raise TokenizerFileError(f"{file}: {key} is an object without a string 'content': {excerpt(value)}")
            return content
        if value is None or isinstance(value, (bool, int, float)):
            return None
        raise TokenizerFileError(f"{file}: {key} must be a token (a string or an object with 'content'), "
                                 f"got {excerpt(value)}")

    for name in ("special_tokens_map.json", "tokenizer_config.json", "added_tokens.json"):
        file = path / name
        if not file.exists():         # a link to a device or a FIFO is refused by read_json, not skipped
            continue
        data = read_json(file)
        if not isinstance(data, dict):
            raise TokenizerFileError(f"{file}: expected a JSON object, got {type(data).__name__}")
        if name == "added_tokens.json":
            for text, i in data.items():
                if not fileio.is_int(i) or i < 0:
                    raise TokenizerFileError(f"{file}: token {excerpt(text)} has id {excerpt(i)}, not an integer >= 0")
                names.append(text)
            continue
        for key, value in data.items():
            if key == "additional_special_tokens":
                if value is None:
                    continue
                if not isinstance(value, list):
                    raise TokenizerFileError(f"{file}: additional_special_tokens must be a list, got {excerpt(value)}")
                names += [t for t in (name_in(v, file, key) for v in value) if t is not None]
            elif key.endswith("_token"):
                text = name_in(value, file, key)
                if text is not None:
                    names.append(text)
        decoder = data.get("added_tokens_decoder")
        if decoder is None:
            continue
        if not isinstance(decoder, dict):
            raise TokenizerFileError(f"{file}: added_tokens_decoder must be an object of id -> token, "
                                     f"got {excerpt(decoder)}")
        for i, value in decoder.items():
            if not isinstance(value, dict):
                raise TokenizerFileError(f"{file}: added_tokens_decoder[{excerpt(i)}] must be an object, got {excerpt(value)}")
            text = name_in(value, file, f"added_tokens_decoder[{excerpt(i)}]")
            if value.get("special") is True:
                names.append(text)
    return tuple(names)
