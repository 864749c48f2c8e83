"""The ``npgpt`` command: train a tokenizer, prepare data, train a model, generate text.

Companion of ``docs/training.md`` (section "From the command line").

::

    npgpt tokenizer train --input a.txt b.txt --vocab-size 4096 --out tok/
    npgpt prepare --input a.txt b.txt --tokenizer tok/ --out data/
    npgpt train --data data/ --out run/ --max-steps 2000 [--stop-at 1000] [--resume]
    npgpt generate --model run/checkpoint "Once upon a time"
    npgpt finetune --model run/checkpoint --data reviews.csv --text-column text --label-column label --out clf/

Each subcommand has ``--help``. ``main(argv)`` returns the exit status
instead of exiting, so tests call it in-process. Errors the user can fix
(a missing file, a bad setting) print one line, ``npgpt: error: ...``, and
return 1 rather than a traceback.
"""

import argparse
import json
import pathlib
import sys

__all__ = ["main", "build_parser"]


# ================================================================ parsers
def _add_tokenizer(sub):
    p = sub.add_parser("tokenizer", help="train a byte-level BPE tokenizer",
                       description="Byte-level BPE tokenizers (npgpt.tokenizer).")
    tsub = p.add_subparsers(dest="tokenizer_command", metavar="ACTION", required=True)
    t = tsub.add_parser("train", help="learn BPE merges from text files",
                        description="Learn a byte-level BPE vocabulary from UTF-8 text files and save it.")
    t.add_argument("--input", nargs="+", required=True, metavar="FILE", help="UTF-8 text files to learn from")
    t.add_argument("--vocab-size", type=int, required=True, metavar="N",
                   help="size of the vocabulary: 256 byte tokens + merges + special tokens")
    t.add_argument("--out", required=True, metavar="DIR", help="directory to save the tokenizer into")
    t.add_argument("--special-token", action="append", default=None, metavar="TOKEN",
                   help="a special token (repeatable; default: <|endoftext|>)")


def _add_prepare(sub):
    p = sub.add_parser("prepare", help="tokenize text files into train.bin / val.bin",
                       description="Tokenize text files into DATA_DIR/train.bin, val.bin and meta.json. Each file "
                                   "is a document (or several, separated by literal <|endoftext|> markers); the "
                                   "<|endoftext|> token is appended after each. The tokenizer is copied into "
                                   "DATA_DIR/tokenizer.")
    p.add_argument("--input", nargs="+", required=True, metavar="FILE", help="UTF-8 text files")
    p.add_argument("--tokenizer", required=True, metavar="DIR", help="a tokenizer directory (npgpt tokenizer train)")
    p.add_argument("--out", required=True, metavar="DATA_DIR", help="output directory")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of tokens held out for validation (0.1)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


# (flag, TrainConfig field, type, help)
_TRAIN_FLAGS = [
    ("--n-layer", "n_layer", int, "Transformer blocks"),
    ("--n-head", "n_head", int, "attention heads per block"),
    ("--n-embd", "n_embd", int, "width of the residual stream"),
    ("--block-size", "block_size", int, "context length T in tokens"),
    ("--dropout", "dropout", float, "dropout probability"),
    ("--batch-size", "batch_size", int, "sequences per micro-batch"),
    ("--grad-accum", "grad_accum", int, "micro-batches summed per optimizer step"),
    ("--max-steps", "max_steps", int, "total optimizer steps of the run (the LR schedule spans them)"),
    ("--lr", "lr", float, "peak learning rate"),
    ("--min-lr", "min_lr", float, "learning rate at the end of the cosine decay"),
    ("--warmup-steps", "warmup_steps", int, "steps of linear warmup"),
    ("--weight-decay", "weight_decay", float, "AdamW weight decay on the linear layers' matrices"),
    ("--beta1", "beta1", float, "AdamW beta1"),
    ("--beta2", "beta2", float, "AdamW beta2"),
    ("--grad-clip", "grad_clip", float, "clip the global gradient norm to this (0: off)"),
    ("--eval-interval", "eval_interval", int, "steps between validation runs and checkpoints"),
    ("--eval-iters", "eval_iters", int, "batches per validation run"),
    ("--log-interval", "log_interval", int, "steps between log lines"),
    ("--checkpoint-interval", "checkpoint_interval", int, "steps between checkpoints (0: at every evaluation)"),
    ("--seed", "seed", int, "seed of the initial weights, the batches and dropout"),
    ("--device", "device", str, "cpu or cuda"),
    ("--workers", "workers", int, "threads to split each batch over (0: one per core when possible)"),
    ("--peak-flops", "peak_flops", float, "peak FLOP/s of the machine, for the MFU (default 195e9, a 2-core Zen 4)"),
]


def _add_train(sub):
    from npgpt.train import TrainConfig

    defaults = TrainConfig()
    p = sub.add_parser("train", help="train a GPT-2 model on prepared data",
                       description="Train a GPT-2 model from scratch on a prepared data directory. Checkpoints go "
                                   "to RUN_DIR/checkpoint (a Hugging Face GPT-2 model directory plus the tokenizer, "
                                   "optimizer and trainer state); the loss curve to RUN_DIR/loss.csv and log.jsonl.")
    p.add_argument("--data", metavar="DATA_DIR", help="directory made by `npgpt prepare` (not needed with --resume)")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory")
    p.add_argument("--config", metavar="FILE", help="JSON file of training settings (flags override it)")
    p.add_argument("--tokenizer", metavar="DIR", help="tokenizer to store with the checkpoints "
                                                      "(default: the data directory's)")
    p.add_argument("--stop-at", type=int, default=None, metavar="K",
                   help="stop after step K with a checkpoint (continue later with --resume)")
    p.add_argument("--resume", action="store_true", help="continue RUN_DIR from its last checkpoint")
    p.add_argument("--quiet", action="store_true", help="no log lines")
    for flag, field, kind, text in _TRAIN_FLAGS:
        p.add_argument(flag, dest=field, type=kind, default=None,
                       help=f"{text} (default {getattr(defaults, field)})")


def _add_generate(sub):
    p = sub.add_parser("generate", help="continue a prompt with a trained model",
                       description="Continue PROMPT with a model directory (the tokenizer is read from it too).")
    p.add_argument("prompt", metavar="PROMPT", help="text to continue")
    p.add_argument("--model", required=True, metavar="DIR", help="model directory, e.g. RUN_DIR/checkpoint")
    p.add_argument("--max-new-tokens", type=int, default=100, help="tokens to generate (100)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature; 0 = greedy (1.0)")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    p.add_argument("--top-p", type=float, default=None, help="sample from the smallest set with probability >= p")
    p.add_argument("--seed", type=int, default=None, help="seed of the sampler (same seed, same text)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")


def _add_finetune(sub):
    from npgpt.finetune import add_arguments

    p = sub.add_parser("finetune", help="fine-tune a model as a text classifier (docs/finetuning.md)",
                       description="Fine-tune a pretrained GPT as a classifier on a labelled CSV, TSV or JSONL "
                                   "file. The output directory loads with GPTClassifier.from_pretrained and "
                                   "holds the tokenizer.")
    add_arguments(p)


def build_parser():
    parser = argparse.ArgumentParser(prog="npgpt", description="npgpt: GPT-2 from scratch on NumPy.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_tokenizer(sub)
    _add_prepare(sub)
    _add_train(sub)
    _add_generate(sub)
    _add_finetune(sub)
    return parser


# =============================================================== commands
def _load_tokenizer(directory):
    from npgpt.tokenizer import Tokenizer

    return Tokenizer.from_pretrained(directory)


def _check_device(device):
    """A missing GPU is the user's to fix: report it as one line, not a traceback."""
    from npgpt import backend

    try:
        return backend.check_device(device)
    except RuntimeError as exc:
        raise ValueError(str(exc)) from None


def cmd_tokenizer_train(args):
    from npgpt.tokenizer import Tokenizer

    texts = []
    for name in args.input:
        path = pathlib.Path(name)
        if not path.is_file():
            raise FileNotFoundError(f"input file {path} does not exist")
        texts.append(path.read_text(encoding="utf-8"))
    special = tuple(args.special_token) if args.special_token else ("<|endoftext|>",)
    tokenizer = Tokenizer.train(texts, args.vocab_size, special_tokens=special)
    tokenizer.save(args.out)
    print(f"saved a tokenizer of {args.vocab_size:,} tokens to {args.out}")
    return 0


def cmd_prepare(args):
    from npgpt.data import prepare

    meta = prepare(args.input, _load_tokenizer(args.tokenizer), args.out, val_fraction=args.val_fraction,
                   progress=not args.quiet)
    print(f"wrote {args.out}: {meta['train_tokens']:,} training and {meta['val_tokens']:,} validation tokens "
          f"({meta['dtype']}, vocabulary {meta['vocab_size']:,})")
    return 0


def cmd_train(args):
    from npgpt.train import TrainConfig, Trainer

    settings = {}
    if args.config:
        path = pathlib.Path(args.config)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        try:
            settings.update(json.loads(path.read_text()))
        except json.JSONDecodeError as exc:
            raise ValueError(f"config file {path} is not valid JSON: {exc}") from None
        if not isinstance(settings, dict):
            raise ValueError(f"config file {path} must hold a JSON object of settings")
    for _, field, _, _ in _TRAIN_FLAGS:
        value = getattr(args, field)
        if value is not None:
            settings[field] = value
    if args.tokenizer:
        settings["tokenizer_dir"] = args.tokenizer
    if args.data:
        settings["data_dir"] = args.data
    if "device" in settings:
        _check_device(settings["device"])
    log = (lambda line: None) if args.quiet else None
    if args.resume:
        settings.pop("out_dir", None)
        trainer = Trainer.resume(args.out, log=log, **settings)
    else:
        if "data_dir" not in settings:
            raise ValueError("npgpt train needs --data DATA_DIR (or --resume)")
        settings["out_dir"] = args.out
        trainer = Trainer(TrainConfig.from_dict(settings), log=log)
    if args.resume and trainer.step >= trainer.config.max_steps:
        print(f"{args.out} is already at step {trainer.step} of {trainer.config.max_steps}: nothing to do "
              "(raise --max-steps to train longer)")
        return 0
    summary = trainer.train(stop_at=args.stop_at)
    parts = [f"step {summary['step']}"]
    if summary["train_loss"] is not None:
        parts.append(f"train loss {summary['train_loss']:.4f}")
    if summary["val_loss"] is not None:
        parts.append(f"val loss {summary['val_loss']:.4f}")
    parts.append(f"{summary['tokens_per_s']:,.0f} tokens/s")
    print(", ".join(parts) + f"; checkpoint in {trainer.run_dir / 'checkpoint'}")
    return 0


def cmd_generate(args):
    import numpy as np

    from npgpt.model import GPT

    model = GPT.from_pretrained(args.model).to(_check_device(args.device))
    try:
        tokenizer = _load_tokenizer(args.model)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{args.model} holds no tokenizer files ({exc}); models written by "
                                "`npgpt train` carry them") from None
    ids = tokenizer.encode(args.prompt, allowed_special="all")     # a typed <|endoftext|> means the token
    if not ids:
        raise ValueError("the prompt is empty: give some text to continue")
    try:
        eos = tokenizer.encode("<|endoftext|>", allowed_special={"<|endoftext|>"})
        eos = eos[0] if len(eos) == 1 else None
    except Exception:
        eos = None
    out = model.generate(np.asarray([ids], dtype=np.int64), args.max_new_tokens, do_sample=args.temperature > 0,
                         temperature=args.temperature if args.temperature > 0 else 1.0, top_k=args.top_k,
                         top_p=args.top_p, seed=args.seed, eos_token_id=eos)
    new = [int(t) for t in np.asarray(out[0])[len(ids):]]
    if eos is not None and eos in new:
        new = new[:new.index(eos)]
    print(args.prompt + tokenizer.decode(new))
    return 0


def cmd_finetune(args):
    from npgpt.finetune import run_cli

    run_cli(args)
    return 0


def main(argv=None):
    """Run the command line; returns the exit status (0 ok, 1 error, 2 bad usage)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:          # --help or a usage error: argparse has printed it
        return int(exc.code or 0)
    handlers = {"prepare": cmd_prepare, "train": cmd_train, "generate": cmd_generate, "finetune": cmd_finetune}
    handler = cmd_tokenizer_train if args.command == "tokenizer" else handlers[args.command]
    from npgpt.train import TrainingDiverged

    try:
        return handler(args)
    except (FileNotFoundError, FileExistsError, ValueError, TrainingDiverged, KeyError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"npgpt: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
