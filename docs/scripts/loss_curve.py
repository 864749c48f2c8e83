"""Plot a training run's loss curve: ``python docs/scripts/loss_curve.py RUN_DIR --out PNG``.

Reads ``RUN_DIR/log.jsonl`` (written by ``npgpt train``) and draws the training loss (each
step, faint, and a moving average) and the validation loss against the step, with the
learning rate on a second axis. Needs matplotlib (``pip install -e ".[viz]"``).

``--out`` is required: the script writes where it is told and nowhere else, so plotting your own
run can never overwrite the book's figure by accident.

The figure in docs/training.md, docs/images/loss_curve.png, comes from the run described there;
the commands that repeat the run and redraw the figure are listed below it (section "The log line
and MFU"), ending with

    python docs/scripts/loss_curve.py runs/loss-curve/run --out docs/images/loss_curve.png \\
           --title "4 layers, n_embd 128, BPE 2,048, Shakespeare (2 MB), 300 steps"
"""

import argparse
import sys

from npgpt.training.plot import moving_average, read_log, save_figure


def plot(rows, out, title=None, window=10):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["train_loss"]) for r in rows if r.get("train_loss") is not None]
    val = [(r["step"], r["val_loss"]) for r in rows if r.get("val_loss") is not None]
    lrs = [(r["step"], r["lr"]) for r in rows if r.get("lr") is not None]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    if train:
        steps, losses = zip(*train)
        ax.plot(steps, losses, color="tab:blue", alpha=0.25, linewidth=0.8)
        ax.plot(steps, moving_average(list(losses), window), color="tab:blue", label=f"train (moving average of {window})")
    if val:
        steps, losses = zip(*val)
        ax.plot(steps, losses, "o-", color="tab:orange", label="validation")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy loss (nats per token)")
    ax.grid(alpha=0.3)
    if lrs:
        ax2 = ax.twinx()
        ax2.plot(*zip(*lrs), color="tab:gray", linestyle="--", linewidth=1, label="learning rate")
        ax2.set_ylabel("learning rate")
        lines = ax.get_legend_handles_labels()
        lines2 = ax2.get_legend_handles_labels()
        ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="upper right")
    else:
        ax.legend(loc="upper right")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return save_figure(fig, out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a run directory written by `npgpt train`")
    parser.add_argument("--out", required=True, metavar="PNG",
                        help="PNG to write (the book's figure is docs/images/loss_curve.png)")
    parser.add_argument("--title", default=None)
    parser.add_argument("--window", type=int, default=10, help="moving-average window of the training loss")
    args = parser.parse_args(argv)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("loss_curve.py needs matplotlib: pip install matplotlib", file=sys.stderr)
        return 1
    out = plot(read_log(args.run_dir), args.out, args.title, args.window)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
