"""The exact recipe of the model that ships with npgpt as "npgpt-small".

    python examples/train_npgpt_small.py --run-dir RUN_DIR [--out MODEL_DIR] [--max-steps 4000]

Every step is npgpt's own command line; this script only strings the commands together
and prints them, so each can be re-run by hand:

1. fetch the public-domain corpora (Shakespeare's plays, the State of the Union addresses,
   Moby-Dick; pinned and sha256-checked, see docs/tokenizer.md) into one text file each,
   documents separated by <|endoftext|>;
2. ``npgpt tokenizer train`` a byte-level BPE vocabulary of 8,192 tokens on them;
3. ``npgpt prepare`` the token files;
4. ``npgpt train`` a 4-layer, 4-head, 256-wide GPT-2 (5.3 M parameters, context 128);
5. export the final checkpoint in float16 (half the size; npgpt and Hugging Face upcast it
   when loading) with its tokenizer and the run's ``log.jsonl`` to ``--out`` (default
   ``RUN_DIR/model``). Replacing the model that ships inside the package
   (``npgpt/io/pretrained/npgpt-small``) takes ``--replace-shipped``: a recipe run by mistake
   must not overwrite it.

The model card (data, size, steps, time, validation loss) is in docs/training.md; the
figures come from ``npgpt/io/pretrained/npgpt-small/training.json``, written by step 5.
"""

import argparse
import json
import pathlib
import shlex
import subprocess
import sys

import numpy as np

from npgpt.apps.cli import HelpWithDefaults

ROOT = pathlib.Path(__file__).resolve().parents[1]
CORPORA = ("shakespeare", "sotu", "moby-dick")
MODEL = dict(n_layer=4, n_head=4, n_embd=256, block_size=128)
TRAINING = dict(batch_size=16, lr=2e-3, min_lr=1e-4, warmup_steps=200, weight_decay=0.1,
                eval_interval=250, eval_iters=20, log_interval=50, seed=0)


def npgpt_cli(*args):
    command = [sys.executable, "-m", "npgpt", *map(str, args)]
    print("$ npgpt " + " ".join(shlex.quote(str(a)) for a in args), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)


def write_corpora(run_dir):
    from npgpt import datasets

    files = []
    for name in CORPORA:
        path = run_dir / "corpus" / f"{name}.txt"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("<|endoftext|>".join(datasets.load_documents(name)), encoding="utf-8")
        files.append(path)
    return files


def export(run_dir, out_dir):
    """Write the final checkpoint as float16 with its tokenizer, plus the training record."""
    from safetensors.numpy import load_file

    from npgpt import GPT, Tokenizer
    from npgpt.io.checkpoint import hf_config, write_checkpoint
    from npgpt.training.train import find_checkpoint

    checkpoint = find_checkpoint(run_dir / "train")
    model = GPT.from_pretrained(checkpoint)
    tensors = {name: array.astype(np.float16) for name, array in load_file(checkpoint / "model.safetensors").items()}
    write_checkpoint(out_dir, hf_config(model.config), tensors)
    Tokenizer.from_pretrained(checkpoint).save(out_dir)
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    log = [json.loads(line) for line in (run_dir / "train" / "log.jsonl").read_text().splitlines()]
    evals = [entry for entry in log if "val_loss" in entry]
    record = {
        "recipe": "python examples/train_npgpt_small.py",
        "corpora": list(CORPORA),
        "model": MODEL,
        "parameters": model.config.num_parameters(),
        "training": TRAINING,
        "steps": state["step"],
        "tokens_seen": state["step"] * TRAINING["batch_size"] * MODEL["block_size"],
        # wall time of `npgpt train`: from the prepared data to the final checkpoint
        "train_seconds": round((checkpoint / "trainer_state.json").stat().st_mtime
                               - (run_dir / "data" / "meta.json").stat().st_mtime),
        "final_val_loss": evals[-1]["val_loss"] if evals else None,
        "dtype": "float16",
    }
    (out_dir / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    # The step-by-step log too (about 4,000 short rows), so the run's loss curve can be drawn
    # from the shipped model: npgpt plot needs a directory holding log.jsonl.
    (out_dir / "log.jsonl").write_text((run_dir / "train" / "log.jsonl").read_text())
    print(json.dumps(record, indent=2))


SHIPPED = ROOT / "npgpt" / "io" / "pretrained" / "npgpt-small"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=HelpWithDefaults)
    parser.add_argument("--run-dir", type=pathlib.Path, required=True,
                        help="where the corpora, tokenizer, token files and the training run go")
    parser.add_argument("--max-steps", type=int, default=4000, help="training steps")
    parser.add_argument("--out", type=pathlib.Path, default=None,
                        help="where the exported model goes (default: RUN_DIR/model)")
    parser.add_argument("--replace-shipped", action="store_true",
                        help=f"export into the shipped model's directory ({SHIPPED.relative_to(ROOT)}), replacing it")
    parser.add_argument("--export-only", action="store_true", help="only step 5, from an existing run")
    args = parser.parse_args(argv)
    if args.replace_shipped:
        args.out = SHIPPED
    elif args.out is None:
        args.out = args.run_dir / "model"
    elif args.out.resolve() == SHIPPED.resolve():
        parser.error(f"--out {args.out} is the model that ships with npgpt: pass --replace-shipped to replace it")
    run = args.run_dir
    if not args.export_only:
        files = write_corpora(run)
        npgpt_cli("tokenizer", "train", "--input", *files, "--vocab-size", 8192, "--out", run / "tokenizer")
        npgpt_cli("prepare", "--input", *files, "--tokenizer", run / "tokenizer", "--out", run / "data")
        resume = ["--resume"] if (run / "train" / "checkpoint").exists() else []
        flags = [f"--{k.replace('_', '-')}={v}" for k, v in {**MODEL, **TRAINING}.items()]
        npgpt_cli("train", "--data", run / "data", "--out", run / "train", "--max-steps", args.max_steps,
                  *flags, *resume)
    export(run, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
