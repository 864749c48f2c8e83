"""Loss curves of training runs, drawn from their ``log.jsonl``: ``npgpt plot RUN [RUN ...] --out curve.png``.

Companion of ``docs/training.md`` (section "The log line and MFU").

A run directory of ``npgpt train`` (or ``npgpt finetune``) keeps one JSON
row per step in ``log.jsonl``. :func:`plot_runs` draws the training loss
(faint, and a moving average) and the validation loss of one or several
runs on one figure, against optimizer steps and against tokens seen, side
by side: runs with different batch sizes are compared fairly only on the
second. The trainer calls it as it logs, when matplotlib is installed (the
``viz`` extra), so ``RUN_DIR/loss_curve.png`` is always a recent picture.

Writes are atomic (a temporary file, then a rename), so a viewer never
shows half a PNG. Depends on nothing of npgpt; matplotlib is imported
only when drawing.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence
from typing import Any, Optional

from npgpt.io import fileio

__all__ = ["read_log", "moving_average", "save_figure", "plot_runs", "matplotlib_available", "FIGURE_NAME"]

FIGURE_NAME = "loss_curve.png"


NO_MATPLOTLIB = 'matplotlib is not installed (pip install -e ".[viz]", or pip install matplotlib)'


def matplotlib_available() -> bool:
    """True when matplotlib can be imported (the trainer draws only then)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def read_log(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of ``RUN_DIR/log.jsonl``; a torn last line (a full disk, a kill) is skipped."""
    path = pathlib.Path(run_dir) / "log.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: is {run_dir} a run directory of `npgpt train`?")
    rows = []
    lines = fileio.read_utf8(path, "log file").splitlines()    # a regular file (not a link to a device)
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(fileio.parse_json(line, f"{path}, line {i + 1}"))
        except ValueError:
            if i == len(lines) - 1:
                break                  # the row being written when the process stopped
            raise
    return rows


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """The mean of each value and the ``window - 1`` before it (fewer at the start)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _tokens_per_step(run_dir: pathlib.Path, rows: list[dict[str, Any]]) -> Optional[float]:
    """Tokens per optimizer step: from the rows (``tokens``), else from the checkpoint's config."""
    for row in rows:
        if row.get("tokens") and row.get("step"):
            return row["tokens"] / row["step"]
    state = run_dir / "checkpoint" / "trainer_state.json"
    try:
        c = fileio.read_json(state, "training state")["train_config"]
        return c["batch_size"] * c["block_size"] * c.get("grad_accum", 1)
    except (OSError, KeyError, ValueError, TypeError):
        return None


def plot_runs(run_dirs: Sequence[str | os.PathLike], out: str | os.PathLike, title: Optional[str] = None,
              window: int = 10, labels: Optional[Sequence[str]] = None) -> pathlib.Path:
    """Draw the loss curves of ``run_dirs`` into the PNG ``out``; returns its path.

    Left: loss against optimizer steps; right: against tokens seen (when a
    run's tokens per step are known). Each run has one colour: its training
    loss faint, a moving average of ``window`` steps solid, and its
    validation loss as dots.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [pathlib.Path(d) for d in run_dirs]
    if not runs:
        raise ValueError("plot_runs needs at least one run directory")
    names = list(labels) if labels is not None else [r.name if r.name not in ("", ".") else str(r) for r in runs]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110, sharey=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, (run, name) in enumerate(zip(runs, names)):
        rows = read_log(run)
        colour = colours[k % len(colours)]
        per_step = _tokens_per_step(run, rows)
        train = [(r["step"], r["train_loss"]) for r in rows if r.get("train_loss") is not None]
        val = [(r["step"], r["val_loss"]) for r in rows if r.get("val_loss") is not None]
        for ax, scale in ((axes[0], 1.0), (axes[1], per_step)):
            if scale is None:
                continue
            if train:
                steps, losses = zip(*train)
                xs = [s * scale for s in steps]
                ax.plot(xs, losses, color=colour, alpha=0.2, linewidth=0.8)
                ax.plot(xs, moving_average(list(losses), window), color=colour, label=f"{name} train")
            if val:
                steps, losses = zip(*val)
                ax.plot([s * scale for s in steps], losses, "o--", color=colour, markersize=4, label=f"{name} val")
    axes[0].set_xlabel("optimizer step")
    axes[1].set_xlabel("tokens seen")
    axes[0].set_ylabel("cross-entropy loss (nats per token)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(loc="upper right", fontsize="small")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, out)


def save_figure(fig: Any, out: str | os.PathLike) -> pathlib.Path:
    """Save a matplotlib figure as ``out`` atomically (a temporary file, then a rename) and close it."""
    import matplotlib.pyplot as plt

    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = fileio.temporary_file(out)     # ".NAME.PID-XXXXXXXX.tmp", flock'ed until renamed
    try:
        with fileio.naming(tmp):
            fig.savefig(tmp, format=(out.suffix or ".png")[1:])
        os.chmod(tmp, 0o644)          # mkstemp makes it private
        os.replace(tmp, out)          # atomic: a viewer never sees half a picture
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
        os.close(fd)
        plt.close(fig)
    return out
