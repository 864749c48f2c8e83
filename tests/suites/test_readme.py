"""The shell commands in README.md and docs/ run as written, in order, on a fresh machine.

A reader copies a ```bash block line by line. That works only if every flag exists and every file
a command reads is already there: in the repository, in the package (the shipped model
``npgpt-small``), in the cache after ``python -m npgpt.datasets fetch NAME``, or made by an
earlier line of the same page. Running the blocks would take an hour (they train models), so
this test reads them instead:

* each ``npgpt ...`` and ``python -m npgpt.datasets ...`` command is parsed by the real argparse
  parser of the command line (``npgpt.apps.cli.build_parser``, ``npgpt.datasets.build_parser``): a
  flag that does not exist, a missing required argument or a bad value fails here as it would
  for the reader;
* ``python SCRIPT.py --flag`` needs the script in the repository and the flag among its
  ``add_argument`` calls;
* what each command reads (``--input``, ``--data``, ``--model``, ...) must have been produced
  before it on the page (``--out``, ``fetch``, ``export``, a shell redirection ``> FILE``);
* a command started by a launcher (``mpiexec -n 2 npgpt train ...``) is checked as the command
  it launches.

Each page is its own fresh machine: a page may not rely on files another page made. A block
preceded by ``<!-- skip -->`` is checked too (it is skipped by tests that run code, e.g. because
it needs a GPU, but a reader still runs it as written).
"""

import argparse
import contextlib
import functools
import io
import pathlib
import re
import shlex
import subprocess

import pytest

from npgpt import datasets
from npgpt.apps import cli

ROOT = pathlib.Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "docs" / "zh").glob("*.md"))]
BASH = re.compile(r"```bash\n(.*?)```", re.S)
SHIPPED = {p.name for p in (ROOT / "npgpt" / "io" / "pretrained").iterdir() if p.is_dir()}
CACHE = "~/.cache/npgpt"
# Namespace attributes (argparse dests) that name something a command reads, and that it writes.
READS = ("input", "tokenizer", "tokenizer_dir", "data", "data_dir", "val_data", "model", "config", "classifier",
         "prompts")
WRITES = ("out", "out_dir", "write-lm-text")     # write-lm-text: examples/sentiment.py's unlabelled text
SEPARATORS = {"&&", "||", ";", "|"}
# Commands that run another command given after their own options.
LAUNCHERS = {"mpiexec", "mpirun", "time", "env", "nohup"}


def commands(block):
    """The commands of a bash block, each a list of words (continuation lines joined, comments dropped)."""
    found = []
    for line in re.sub(r"\\\n", " ", block).splitlines():
        words, current = shlex.split(line, comments=True), []
        for word in words:
            if word in SEPARATORS:
                found.append(current)
                current = []
            else:
                current.append(word)
        found.append(current)
    return [c for c in found if c]


def parse(parser, argv):
    """``parser.parse_args(argv)``, or the usage error a reader would see, as an AssertionError."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            return parser.parse_args(argv)
    except SystemExit as exc:
        if exc.code == 0:                     # --help / --version: prints and exits successfully
            return None
        raise AssertionError(err.getvalue().strip()) from None


def script_flags(path):
    """The ``--flags`` that a script's argparse parser accepts (from its ``add_argument`` calls)."""
    return set(re.findall(r"add_argument\(\s*[\"'](--[\w-]+)", path.read_text())) | {"--help"}


def _as_list(value):
    return value if isinstance(value, list) else [value]


def effects(words):
    """(what the command reads, what it writes): two lists of paths as written on the page.

    Raises AssertionError when the command cannot run as written (an unknown flag or script).
    """
    reads, writes = [], []
    if words[0] in LAUNCHERS:                          # mpiexec -n 2 npgpt train ...: check what it launches
        start = next((i for i, w in enumerate(words) if w in ("npgpt", "python")), None)
        if start is None:
            return reads, writes
        words = words[start:]
    if ">" in words:                                   # cmd ... > FILE: the shell writes FILE
        at = words.index(">")
        writes.append(words[at + 1])
        words = words[:at]
    if words[0] == "npgpt":
        args = parse(cli.build_parser(), words[1:])
        if args is None:
            return reads, writes
        for name in READS:
            if getattr(args, name, None):
                # A shipped model's name (npgpt-small) names a model or its tokenizer, not a file.
                reads += [v for v in _as_list(getattr(args, name))
                          if not (name in ("model", "tokenizer") and v in SHIPPED)]
        for name in WRITES:
            if getattr(args, name, None):
                writes.append(getattr(args, name))
                if getattr(args, "resume", False):     # --resume continues the run directory
                    reads.append(getattr(args, name))
    elif words[:3] == ["python", "-m", "npgpt.datasets"]:
        args = parse(datasets.build_parser(), words[3:])
        if args is not None and args.command == "fetch":
            writes += [f"{CACHE}/{name}" for name in args.names]
        elif args is not None and args.command == "export":
            writes.append(args.out)
    elif words[0] == "python" and len(words) > 1 and words[1].endswith(".py"):
        script = ROOT / words[1]
        assert script.is_file(), f"{words[1]} is not in the repository"
        known, rest = script_flags(script), words[2:]
        for i, word in enumerate(rest):
            if word.startswith("--"):
                assert word.split("=")[0] in known, f"{words[1]} has no flag {word}"
                value = rest[i + 1] if i + 1 < len(rest) and not rest[i + 1].startswith("-") else None
                if value is not None and word.lstrip("-") in WRITES:
                    writes.append(value)
                elif value is not None and word.lstrip("-").replace("-", "_") in READS:
                    if not (word == "--model" and value in SHIPPED):
                        reads.append(value)
            elif i == 0 or not rest[i - 1].startswith("--"):
                reads.append(word)                     # a positional argument: a run directory, say
    elif words[0] == "cat":
        reads += words[1:]
    return reads, writes


@functools.cache
def tracked():
    """The repository's tracked files and their directories (a stray ``data/`` left by a reader's
    own run in the checkout must not make a command look runnable); ``None`` outside git."""
    try:
        names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    paths = set()
    for name in names.splitlines():
        parts = pathlib.PurePosixPath(name).parts
        paths.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
    return paths


def _produced(path, produced):
    """Whether ``path`` (maybe a glob) is in the repository or inside something made earlier."""
    path = path.split("*")[0].rstrip("/") or "."
    in_repo = tracked()
    if not path.startswith("~") and (path in in_repo if in_repo is not None else (ROOT / path).exists()):
        return True
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in produced)


def check_page(page_text, name):
    """Every problem with the bash blocks of one page, as a list of strings (empty: runs as written)."""
    problems, produced = [], []
    for block in BASH.findall(page_text):
        for words in commands(block):
            try:
                reads, writes = effects(words)
            except AssertionError as exc:
                problems.append(f"{name}: `{' '.join(words)}`: {exc}")
                continue
            for path in reads:
                if not _produced(path, produced):
                    problems.append(f"{name}: `{' '.join(words)}` reads {path}, which no earlier line makes "
                                    "(and the repository does not hold)")
            produced += writes
    return problems


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_command_runs_as_written(page):
    problems = check_page(page.read_text(encoding="utf-8"), str(page.relative_to(ROOT)))
    assert not problems, "\n".join(problems)


def test_the_readme_runs_the_pipeline_from_fetch_to_finetune():
    # The README's command-line block is the quick start: it must keep every stage of the article.
    words = [c[:3] for b in BASH.findall((ROOT / "README.md").read_text()) for c in commands(b)]
    for stage in (["python", "-m", "npgpt.datasets"], ["npgpt", "tokenizer", "train"], ["npgpt", "prepare"],
                  ["npgpt", "train"], ["npgpt", "generate"], ["npgpt", "finetune"]):
        assert any(w[:len(stage)] == stage for w in words), f"README.md has no `{' '.join(stage)}` command"


def test_the_checker_catches_what_a_reader_would_hit():
    # An unknown flag, a file nothing made, a missing script: each is reported.
    assert any("--n-layers" in p for p in check_page(
        "```bash\nnpgpt train --data d --out run --n-layers 4\n```\n", "page"))
    assert check_page("```bash\nnpgpt finetune --model npgpt-small --data reviews.tsv --out clf\n```\n", "page") == [
        "page: `npgpt finetune --model npgpt-small --data reviews.tsv --out clf` reads reviews.tsv, which no earlier "
        "line makes (and the repository does not hold)"]
    assert check_page("```bash\npython -m npgpt.datasets export movie-reviews reviews.tsv\n"
                      "npgpt finetune --model npgpt-small --data reviews.tsv --out clf\n```\n", "page") == []
    assert check_page("```bash\npython -m npgpt.datasets fetch shakespeare\nnpgpt tokenizer train --input "
                      "~/.cache/npgpt/shakespeare/*.txt --vocab-size 300 --out tok\n```\n", "page") == []
    assert check_page("```bash\nnpgpt tokenizer train --input ~/.cache/npgpt/sotu/*.txt --vocab-size 300 "
                      "--out tok\n```\n", "page")                       # sotu was never fetched
    assert check_page("```bash\nnpgpt generate --model run/checkpoint \"Hi\"\n```\n", "page")
    assert check_page("```bash\nnpgpt generate --model npgpt-small --prompts prompts.txt\n```\n", "page")
    assert check_page("```bash\npython examples/nothing.py\n```\n", "page")
    assert check_page("```bash\npython examples/sentiment.py --epoch 2\n```\n", "page")
    assert check_page("```bash\nnpgpt train --out run --resume\n```\n", "page")   # resumes a run never made
    assert check_page("```bash\nmpiexec -n 2 npgpt train --data data --out run\n```\n", "page")  # launched too


def test_commands_are_split_as_the_shell_splits_them():
    block = "pip install -e . && pytest  # the tests\nnpgpt train --data data \\\n    --out run\n"
    assert commands(block) == [["pip", "install", "-e", "."], ["pytest"], ["npgpt", "train", "--data", "data", "--out", "run"]]


def test_parse_reports_the_usage_error():
    parser = argparse.ArgumentParser(prog="x")
    parser.add_argument("--n", type=int)
    with pytest.raises(AssertionError, match="invalid int value"):
        parse(parser, ["--n", "four"])
