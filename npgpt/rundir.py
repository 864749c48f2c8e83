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
``npgpt.fileio.replace_directory``; a crash at any instant leaves a complete
checkpoint behind (the old one, perhaps parked as a backup, or the new one).
This module is the only one that knows those names: the trainer asks it to
:func:`write_checkpoint`, :func:`find_checkpoint` and :func:`remove_stale`.

Depends on ``npgpt.fileio`` and ``npgpt.nn`` (dropout generators); the
optimizer and model are passed in.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from npgpt import fileio, nn

if TYPE_CHECKING:
    from npgpt.optim import Optimizer

__all__ = ["CHECKPOINT_DIR", "STATE_NAME", "OPTIMIZER_NAME", "is_complete", "find_checkpoint", "read_state",
           "remove_stale", "save_optimizer", "load_optimizer", "dropout_states", "restore_dropout_states",
           "write_checkpoint"]

CHECKPOINT_DIR = "checkpoint"
STATE_NAME = "trainer_state.json"
OPTIMIZER_NAME = "optimizer.safetensors"


def read_state(checkpoint: pathlib.Path) -> dict:
    """The parsed ``trainer_state.json`` of a checkpoint directory."""
    return json.loads((pathlib.Path(checkpoint) / STATE_NAME).read_text())


def is_complete(directory: pathlib.Path) -> bool:
    """A checkpoint is complete when its state file (written last) parses and its files are all there."""
    try:
        state = read_state(directory)
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(state, dict) and all((directory / name).is_file() for name in state.get("files", []))


def find_checkpoint(run_dir: os.PathLike | str) -> Optional[pathlib.Path]:
    """The newest complete checkpoint of a run directory, or None.

    Normally ``RUN_DIR/checkpoint``. If a crash hit the instant between the
    two renames of a save, the previous checkpoint is still complete as a
    backup (``npgpt.fileio.backups``), and it is used. Half-written staging
    directories are never considered.
    """
    target = pathlib.Path(run_dir) / CHECKPOINT_DIR
    complete = [c for c in [target, *fileio.backups(target)] if c.is_dir() and is_complete(c)]
    if not complete:
        return None
    return max(complete, key=lambda c: read_state(c)["step"])


def remove_stale(run_dir: os.PathLike | str) -> None:
    """Delete staging directories left by a save that was killed (they are never complete)."""
    for stale in fileio.stale_staging(pathlib.Path(run_dir) / CHECKPOINT_DIR):
        shutil.rmtree(stale, ignore_errors=True)


# ---------------------------------------------------------------- optimizer
def save_optimizer(optimizer: Optimizer, path: pathlib.Path) -> None:
    """The optimizer's arrays as safetensors tensors ``{name}.{key}``; steps and groups in the header."""
    from safetensors.numpy import save_file

    sd = optimizer.state_dict()
    tensors, steps = {}, {}
    for name, entry in sd["state"].items():
        steps[name] = entry["step"]
        for key, array in entry.items():
            if key != "step":
                tensors[f"{name}.{key}"] = np.ascontiguousarray(array)
    meta = {"type": sd["type"], "step_count": sd["step_count"], "param_groups": sd["param_groups"], "steps": steps}
    if not tensors:    # safetensors cannot write an empty file; an optimizer before its first step
        tensors["__empty__"] = np.zeros(0, np.float32)
    save_file(tensors, str(path), metadata={"npgpt_optimizer": json.dumps(meta)})


def load_optimizer(optimizer: Optimizer, path: pathlib.Path) -> None:
    """Restore what :func:`save_optimizer` wrote into ``optimizer``."""
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as f:
        meta = json.loads(f.metadata()["npgpt_optimizer"])
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
    staging_parent = fileio.staging_directory(target)
    staging = staging_parent / CHECKPOINT_DIR
    try:
        write_files(staging)
        _test_pause(state.get("step"))
        state = {**state, "files": sorted(p.name for p in staging.iterdir()),
                 "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        with open(staging / STATE_NAME, "w") as f:        # written last: marks the checkpoint complete
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
