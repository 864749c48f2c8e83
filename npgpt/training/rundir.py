"""A run directory: the checkpoint inside it, found and written crash-safely, and what it holds.

Companion of ``docs/training.md`` (section "Checkpoints and exact resume").

``RUN_DIR/checkpoint`` is a Hugging Face GPT-2 model directory (``config.json``,
``model.safetensors``, the tokenizer files) plus what training needs to
continue exactly: ``optimizer.safetensors`` (the optimizer's per-parameter
arrays, e.g. Adam's moments) and ``trainer_state.json`` (the step, the
sampler's and the dropout generators' states, the configs). The state file
is written last, so a checkpoint is complete exactly when it parses and
lists files that are all there.

A new checkpoint is assembled under a staging name and swapped in with
``npgpt.io.fileio.replace_directory``; a crash at any instant leaves a complete
checkpoint behind (the old one, perhaps parked as a backup, or the new one).
This module is the only one that knows those names: the trainer asks it to
:func:`write_checkpoint`, :func:`find_checkpoint` and :func:`remove_stale`.

A run directory has one writer at a time: :func:`lock` takes an exclusive
``flock`` on ``RUN_DIR/.lock`` (the kernel releases it when the process
ends, however it ends) and writes the holder's pid, host and start time into
it, so that a second trainer on the same directory is refused with a message
naming the first, before it deletes or rewrites anything.

Depends on ``npgpt.io.fileio`` and ``npgpt.nn`` (dropout generators); the
optimizer and model are passed in.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from npgpt import nn
from npgpt.io import fileio
from npgpt.io.checkpoint import CheckpointError

if TYPE_CHECKING:
    from npgpt.training.optim import Optimizer

__all__ = ["CHECKPOINT_DIR", "STATE_NAME", "OPTIMIZER_NAME", "LOCK_NAME", "RunDirectoryLocked", "lock",
           "is_complete", "find_checkpoint", "checkpoint_to_resume", "read_state", "remove_stale", "truncate_logs",
           "save_optimizer", "load_optimizer", "dropout_states", "restore_dropout_states", "write_checkpoint"]

CHECKPOINT_DIR = "checkpoint"
STATE_NAME = "trainer_state.json"
OPTIMIZER_NAME = "optimizer.safetensors"
LOCK_NAME = fileio.LOCK_NAME
LOGS = (("log.jsonl", 0), ("loss.csv", 1))      # the run's logs and their header lines


# -------------------------------------------------------------------- lock
RunDirectoryLocked = fileio.DirectoryLocked      # another process writes to the run directory


@contextlib.contextmanager
def lock(run_dir: os.PathLike | str, enabled: bool = True) -> Iterator[pathlib.Path]:
    """Hold the run directory for writing: ``with rundir.lock(run_dir): ...``.

    ``npgpt.io.fileio.hold``: creates the directory, takes an exclusive
    ``flock`` on ``RUN_DIR/.lock`` (released on exit, and by the kernel when
    the process dies, even by SIGKILL) and records the holder in it; a clean
    exit deletes the file. A directory another process holds (a trainer,
    ``prepare``, ``finetune`` ...) raises :class:`RunDirectoryLocked` naming
    that process, at once. Also refuses a run directory whose ``checkpoint``
    is not a directory (a file there is the user's, never deleted to make
    room). ``enabled=False`` does nothing (for a process that does not write,
    such as an MPI rank other than 0).
    """
    run_dir = pathlib.Path(run_dir)
    if not enabled:
        yield run_dir / LOCK_NAME
        return
    with fileio.hold(run_dir, "training run") as path:
        target = run_dir / CHECKPOINT_DIR
        if target.exists() and not target.is_dir():
            raise NotADirectoryError(f"{target} exists and is not a directory; npgpt keeps its checkpoint "
                                     "there: move the file away, or choose another --out")
        yield path


def read_state(checkpoint: pathlib.Path) -> dict:
    """The parsed ``trainer_state.json`` of a checkpoint directory."""
    path = pathlib.Path(checkpoint) / STATE_NAME
    return fileio.parse_json(fileio.read_utf8(path, "training state", limit=fileio.MAX_SMALL_FILE), path)


def is_complete(directory: pathlib.Path) -> bool:
    """A checkpoint is complete when its state file (written last) parses and its files are all there."""
    try:
        state = read_state(directory)
    except (OSError, ValueError, RecursionError):      # unreadable, torn, not UTF-8, absurd
        return False
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        return False
    files = state.get("files", [])
    return (isinstance(files, list) and all(isinstance(name, str) for name in files)
            and all((directory / name).is_file() for name in files))


def find_checkpoint(run_dir: os.PathLike | str) -> Optional[pathlib.Path]:
    """The newest complete checkpoint of a run directory, or None.

    Normally ``RUN_DIR/checkpoint``. If a crash hit the instant between the
    two renames of a save, the previous checkpoint is still complete as a
    backup (``npgpt.io.fileio.backups``), and it is used. Half-written staging
    directories are never considered.
    """
    target = pathlib.Path(run_dir) / CHECKPOINT_DIR
    complete = [c for c in [target, *fileio.backups(target)] if c.is_dir() and is_complete(c)]
    if not complete:
        return None
    return max(complete, key=lambda c: read_state(c)["step"])


def checkpoint_to_resume(run_dir: os.PathLike | str) -> tuple[pathlib.Path, dict]:
    """The newest complete checkpoint of a run directory and its parsed trainer state, to resume from;
    ``FileNotFoundError`` saying what was looked for when there is none."""
    run_dir = pathlib.Path(run_dir)
    checkpoint = find_checkpoint(run_dir)
    if checkpoint is None:
        raise FileNotFoundError(f"{run_dir} holds no complete checkpoint to resume from "
                                f"(expected {run_dir / CHECKPOINT_DIR}/{STATE_NAME})")
    return checkpoint, read_state(checkpoint)


def remove_stale(run_dir: os.PathLike | str) -> None:
    """Delete staging directories left by a save that was killed (they are never complete).

    Only under :func:`lock`: another live writer's staging directory is not stale.
    """
    for stale in fileio.stale_staging(pathlib.Path(run_dir) / CHECKPOINT_DIR):
        shutil.rmtree(stale, ignore_errors=True)
    fileio.remove_abandoned(run_dir)          # temporary files of dead writers (logs, the curve)


def _row_step(line: str, csv_row: bool) -> Optional[int]:
    """The step of a log row, or None for a row that a crash or a full disk tore."""
    try:
        if csv_row:
            cells = line.rstrip("\n").split(",")
            return int(cells[0]) if len(cells) == 4 else None
        row = fileio.parse_json(line, "a log row")
        return row["step"] if isinstance(row, dict) and isinstance(row.get("step"), int) else None
    except ValueError:
        return None


def truncate_logs(run_dir: os.PathLike | str, step: int) -> None:
    """Keep the rows of ``log.jsonl`` and ``loss.csv`` up to ``step`` (a resumed run redoes the later ones).

    A row that does not parse (the torn last line a full disk or a kill
    leaves) is dropped rather than blocking the resume. Each file is replaced
    atomically.
    """
    for name, header in LOGS:
        path = pathlib.Path(run_dir) / name
        if not path.exists():
            continue
        raw = fileio.read_bytes(path, "log file", limit=None)      # a regular file (not a link to a device)
        lines = raw.decode("utf-8", errors="replace").splitlines(keepends=True)
        kept = [line if line.endswith("\n") else line + "\n" for line in lines[:header]]
        for line in lines[header:]:
            row_step = _row_step(line, csv_row=header > 0)
            if row_step is not None and row_step <= step:
                kept.append(line if line.endswith("\n") else line + "\n")
        fileio.atomic_write(path, "".join(kept))


# ---------------------------------------------------------------- optimizer
def save_optimizer(optimizer: Optimizer | dict[str, Any], path: pathlib.Path) -> None:
    """The optimizer's arrays as safetensors tensors ``{name}.{key}``; steps and groups in the header.

    Takes an optimizer or its ``state_dict()`` (the trainer merges the shards
    of a ZeRO-1 run into one before saving).
    """
    from safetensors.numpy import save_file

    sd = optimizer if isinstance(optimizer, dict) else optimizer.state_dict()
    tensors, steps = {}, {}
    for name, entry in sd["state"].items():
        steps[name] = entry["step"]
        for key, array in entry.items():
            if key != "step":
                tensors[f"{name}.{key}"] = np.ascontiguousarray(array)
    meta = {"type": sd["type"], "step_count": sd["step_count"], "param_groups": sd["param_groups"], "steps": steps}
    if not tensors:    # safetensors cannot write an empty file; an optimizer before its first step
        tensors["__empty__"] = np.zeros(0, np.float32)
    with fileio.naming(path):
        save_file(tensors, str(path), metadata={"npgpt_optimizer": json.dumps(meta)})


def load_optimizer(optimizer: Optimizer, path: pathlib.Path) -> None:
    """Restore what :func:`save_optimizer` wrote into ``optimizer``.

    An optimizer over a subset of the saved parameters (one rank's shard,
    ZeRO-1) takes just its own: the saved groups are cut to its names. A
    file that is not such a state (bad bytes, a header of the wrong shape,
    missing moments) is a ``CheckpointError`` naming it.
    """
    from safetensors import SafetensorError

    try:
        _load_optimizer(optimizer, path)
    except CheckpointError:
        raise
    except (SafetensorError, OSError, KeyError, TypeError, ValueError, AttributeError, RecursionError) as exc:
        raise CheckpointError(f"{path} is not a valid optimizer state ({type(exc).__name__}: {exc})") from None


def _load_optimizer(optimizer: Optimizer, path: pathlib.Path) -> None:
    from safetensors import safe_open

    own = {name for group in optimizer.param_groups for name in group["names"]}
    with safe_open(str(path), framework="np") as f:
        meta = fileio.parse_json(f.metadata()["npgpt_optimizer"], f"{path} (its optimizer metadata)")
        saved = {name for group in meta["param_groups"] for name in group["names"]}
        if own < saved:              # a shard: keep this rank's names, in the saved order
            for group in meta["param_groups"]:
                group["names"] = [n for n in group["names"] if n in own]
            meta["steps"] = {n: s for n, s in meta["steps"].items() if n in own}
        state = {}
        for name, step in meta["steps"].items():
            state[name] = {"step": step, **{key: f.get_tensor(f"{name}.{key}") for key in optimizer.state_keys}}
    for group in meta["param_groups"]:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict({"type": meta["type"], "step_count": meta["step_count"],
                               "param_groups": meta["param_groups"], "state": state})


# ----------------------------------------------------------------- dropout
def dropout_states(model: nn.Module) -> dict:
    """The generator state of every Dropout module that has drawn (their masks must continue exactly)."""
    states = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Dropout):
            state = module.get_rng_state()
            if state is not None:
                states[name] = state
    return states


def restore_dropout_states(model: nn.Module, states: dict) -> None:
    for name, module in model.named_modules():
        if isinstance(module, nn.Dropout) and name in states:
            module.set_rng_state(states[name])


# ----------------------------------------------------------------- writing
def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def write_checkpoint(run_dir: os.PathLike | str, write_files: Callable[[pathlib.Path], None],
                     state: dict) -> pathlib.Path:
    """Write ``RUN_DIR/checkpoint`` atomically: stage, fsync, swap. Returns its path.

    ``write_files(directory)`` writes the model, tokenizer and optimizer into
    the staging directory; ``state`` (a JSON-able dict) becomes
    ``trainer_state.json``, written last with the list of files, which marks
    the checkpoint complete.
    """
    target = pathlib.Path(run_dir) / CHECKPOINT_DIR
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"{target} exists and is not a directory; npgpt will not replace it")
    staging_parent = fileio.staging_directory(target)
    staging = staging_parent / CHECKPOINT_DIR
    try:
        with fileio.naming(staging):        # a full disk names the file (the innermost naming wins)
            write_files(staging)
        _test_pause(state.get("step"))
        # Every file, those in subdirectories too (a LoRA run's adapter/), as paths relative to the checkpoint.
        state = {**state, "files": sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file()),
                 "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        with fileio.naming(staging / STATE_NAME), open(staging / STATE_NAME, "w") as f:   # last: marks it complete
            json.dump(state, f, indent=2, default=_json_default)
            f.write("\n")
        fileio.replace_directory(staging, target)
    finally:
        shutil.rmtree(staging_parent, ignore_errors=True)
    return target


def _test_pause(step: Optional[int]) -> None:
    """Test hook: ``NPGPT_TEST_PAUSE_IN_SAVE=STEP:SECONDS`` sleeps inside the save of that step.

    The atomicity test kills the process during that pause (SIGKILL) and
    checks that resuming uses the previous checkpoint.
    """
    hook = os.environ.get("NPGPT_TEST_PAUSE_IN_SAVE")
    if hook:
        at, seconds = hook.split(":")
        if int(at) == step:
            print(f"npgpt-test: pausing inside the save of step {step}", file=sys.stderr, flush=True)
            time.sleep(float(seconds))
