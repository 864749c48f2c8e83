"""Models and tokenizers by their Hugging Face Hub name, through ``huggingface_hub`` (the ``hub`` extra).

Companion of ``docs/model.md``, section "Loading GPT-2 from the Hub".

``GPT.from_pretrained("gpt2")`` and ``Tokenizer.from_pretrained("openai-community/gpt2")``
come here once a name is neither a local directory nor a model shipped with npgpt. This module
knows the Hub, not models: ``snapshot`` returns the local directory that holds the files asked
for, and the loaders read it like any other directory (with every check of
``npgpt.io.checkpoint`` and ``npgpt.tokenizer.formats``).

Downloading is ``huggingface_hub.snapshot_download``'s, so its cache is the one every
Hugging Face library shares (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else
``~/.cache/huggingface/hub``) and a repo downloaded once loads later without a network. Only
the files named are fetched, never ``pytorch_model.bin``. ``huggingface_hub`` reads
``HF_HOME`` and ``HF_HUB_OFFLINE`` once, when it is imported; npgpt reads them again at every
call and passes them on (``cache_dir=``, ``local_files_only=``), so setting them in a running
program takes effect.

Imports only the standard library (``huggingface_hub`` when a download is asked for), so that
the tokenizer package, which must stand alone, can use it.
"""

import difflib
import os
import pathlib
import re
from collections.abc import Iterable
from typing import Any, Optional

INSTALL = 'pip install -e ".[hub]"'
# What a GPT-2 model needs: one safetensors file, or an index and the shards it names (fetched next).
MODEL_FILES = ("config.json", "model.safetensors", "model.safetensors.index.json")
# Hugging Face's GPT-2 tokenizer layout (npgpt.tokenizer.formats.read_dir).
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json")
# "gpt2", "openai-community/gpt2": at most one slash, letters, digits, "_", "-", "." (the Hub's own rule).
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?", re.ASCII)
_TRUE = {"1", "ON", "YES", "TRUE"}        # huggingface_hub's reading of a boolean variable


class HubNotInstalled(ModuleNotFoundError):
    """A Hub repo id was given but ``huggingface_hub`` is not installed (the message says what to install)."""


# The models (and their tokenizers) shipped inside the package: npgpt/io/pretrained/<name>/.
PRETRAINED_DIR = pathlib.Path(__file__).resolve().parent / "pretrained"


def shipped_names() -> list[str]:
    """The names of the models shipped with npgpt (``npgpt-small``)."""
    return sorted(p.name for p in PRETRAINED_DIR.iterdir() if p.is_dir()) if PRETRAINED_DIR.is_dir() else []


def _local_candidates(name_or_dir: str | os.PathLike) -> list[pathlib.Path]:
    """Where a name may be on this machine: the path itself, then (for a bare name) the shipped models."""
    name = str(name_or_dir)
    candidates = [pathlib.Path(name_or_dir)]
    if "/" not in name and os.sep not in name and name not in ("", ".", ".."):
        candidates.append(PRETRAINED_DIR / name)
    return candidates


def local_dir(name_or_dir: str | os.PathLike, revision: Optional[str] = None) -> Optional[pathlib.Path]:
    """The directory ``name_or_dir`` names on this machine (a path, else a shipped model), or None.

    A ``revision`` names a version of a Hub repo, so it is refused for a local directory, which
    has one version.
    """
    for path in _local_candidates(name_or_dir):
        if path.is_dir():
            if revision is not None:
                raise ValueError(f"revision={revision!r} names a version of a Hub repo, but {path} is a local "
                                 "directory, which has one version; drop revision=")
            return path
    return None


def resolve(name_or_dir: str | os.PathLike, files: Iterable[str], revision: Optional[str] = None, *,
            what: str = "checkpoint", also_tried: str = "") -> pathlib.Path:
    """The directory of a model or a tokenizer: the one lookup both use.

    Tried in this order: a local directory, one shipped with npgpt (``npgpt/io/pretrained/<name>``),
    then, for a Hub repo id, a snapshot of ``files`` from the Hugging Face Hub (downloaded into its
    cache or found there, :func:`snapshot`). When nothing is found, a ``FileNotFoundError`` says
    what was tried (``also_tried``: what the caller tried besides, for its message).
    """
    files = list(files)
    found = local_dir(name_or_dir, revision)
    if found is not None:
        refuse_run_directory(found, files, what)
        return found
    tried = ", ".join(str(p) for p in _local_candidates(name_or_dir))
    missing = f"no {what} {str(name_or_dir)!r}: tried {tried}{also_tried} (shipped models: {shipped_names() or 'none'})"
    guess = _did_you_mean(name_or_dir)
    if not is_repo_id(name_or_dir) or _looks_local(name_or_dir) or "/" in guess:     # a typo of a path here: no Hub
        raise FileNotFoundError(missing + guess)
    try:
        return snapshot(str(name_or_dir), files, revision)
    except (HubNotInstalled, FileNotFoundError) as exc:
        raise FileNotFoundError(f"{missing}, then the Hugging Face Hub: {exc}") from None


def refuse_run_directory(directory: pathlib.Path, files: list[str], what: str) -> None:
    """A training run's directory given where its model is meant: say where the model is (``RUN/checkpoint``)."""
    inner = directory / "checkpoint"
    if not any((directory / f).exists() for f in files) and any((inner / f).exists() for f in files):
        raise FileNotFoundError(f"{directory} is a training run's directory, not a {what}: its {what} is in "
                                f"{inner} (pass that)")


def _looks_local(name: Any) -> bool:
    """A name whose first part is a directory here (``run/chekpoint``) or that starts like a path
    (``./``, ``../``, ``~``) means this machine, not the Hub: a typo in it gets no Hub advice."""
    name = str(name)
    return name.startswith((".", "~", os.sep)) or (os.sep in name and pathlib.Path(name).parent.is_dir())


def _did_you_mean(name: Any) -> str:
    """'; did you mean run/checkpoint?' when one mistyped part of a local path has a close match here
    (a bare name, which may be a Hub id such as ``gpt2``, is compared with the shipped models only)."""
    if "/" not in str(name) and os.sep not in str(name) and not _looks_local(name):
        close = difflib.get_close_matches(str(name), shipped_names(), n=1, cutoff=0.8)
        return f"; did you mean {close[0]}?" if close else ""
    parts = pathlib.Path(str(name)).parts
    for i, part in enumerate(parts):
        parent = pathlib.Path(*parts[:i]) if i else pathlib.Path(".")
        if (parent / part).exists():
            continue
        try:
            names = [p.name for p in parent.iterdir()]
        except OSError:
            return ""
        for close in difflib.get_close_matches(part, names, n=3, cutoff=0.6):
            fixed = pathlib.Path(*parts[:i], close, *parts[i + 1:])
            if fixed.exists():
                return f"; did you mean {fixed}?"
        return ""
    return ""


def is_repo_id(name: Any) -> bool:
    """Could ``name`` be a Hub repo id? A ``str`` such as ``"gpt2"`` or ``"org/name"``; a ``Path`` never is."""
    return (isinstance(name, str) and _REPO_ID.fullmatch(name) is not None and ".." not in name
            and "--" not in name and not name.endswith(".git"))


def cache_dir() -> Optional[str]:
    """The Hub cache that the environment names now: ``HF_HUB_CACHE``, else ``HF_HOME/hub``; None
    (huggingface_hub's default, ``~/.cache/huggingface/hub``) when neither is set."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expandvars(os.path.expanduser(os.environ["HF_HUB_CACHE"]))
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expandvars(os.path.expanduser(os.environ["HF_HOME"])), "hub")
    return None


def offline() -> bool:
    """Is ``HF_HUB_OFFLINE`` (or transformers' older ``TRANSFORMERS_OFFLINE``) set to a true value now?"""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in _TRUE


def _huggingface_hub() -> Any:
    try:
        import huggingface_hub
    except ImportError as exc:
        raise HubNotInstalled(f"loading from the Hugging Face Hub needs the huggingface_hub package, which is "
                              f"not installed ({exc}); install it with {INSTALL} "
                              "(or pip install huggingface_hub)") from None
    return huggingface_hub


def snapshot(repo_id: str, files: Iterable[str], revision: Optional[str] = None) -> pathlib.Path:
    """The local directory of ``repo_id`` at ``revision`` holding those of ``files`` that the repo has.

    Files already in the cache are not fetched again; offline (``HF_HUB_OFFLINE=1``) the cached
    snapshot is returned as it is. A repo or revision that the Hub does not have, or that is not
    cached while offline, is a ``FileNotFoundError`` saying which; a missing ``huggingface_hub``
    is ``HubNotInstalled``.
    """
    hf = _huggingface_hub()
    from huggingface_hub.utils import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    where = f"{repo_id!r}" + (f" at revision {revision!r}" if revision is not None else "")
    try:
        path = hf.snapshot_download(repo_id, revision=revision, allow_patterns=list(files), cache_dir=cache_dir(),
                                    local_files_only=offline())
    except RevisionNotFoundError:
        raise FileNotFoundError(f"the Hugging Face Hub repo {repo_id!r} has no revision {revision!r}") from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(f"the Hugging Face Hub has no repo {repo_id!r} (or it is private or gated and "
                                "no token was given: huggingface-cli login)") from None
    except EntryNotFoundError as exc:         # LocalEntryNotFoundError: not in the cache, and no Hub to ask
        cache = cache_dir() or "~/.cache/huggingface/hub, huggingface_hub's default"
        why = ("HF_HUB_OFFLINE is set" if offline()
               else f"the Hub could not be reached: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
        raise FileNotFoundError(f"{where} is not in the Hub cache ({cache}), and {why}") from None
    return pathlib.Path(path)


def repo_files(repo_id: str, directory: pathlib.Path, revision: Optional[str] = None) -> list[str]:
    """Names of the files of ``repo_id`` as far as they are known without downloading any: the
    snapshot ``directory`` and, when online, the Hub's listing (an error there is ignored)."""
    names = {p.name for p in directory.iterdir()} if directory.is_dir() else set()
    if not offline():
        try:
            names.update(_huggingface_hub().HfApi().list_repo_files(repo_id, revision=revision))
        except Exception:                     # the listing only improves an error message
            pass
    return sorted(names)
