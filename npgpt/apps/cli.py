"""The ``npgpt`` command: train a tokenizer, prepare data, train a model, generate text.

Companion of ``docs/training.md`` (section "From the command line").

::

    npgpt tokenizer train --input a.txt b.txt --vocab-size 4096 --out tok/
    npgpt prepare --input a.txt b.txt --tokenizer tok/ --out data/
    npgpt train --data data/ --out run/ --max-steps 2000 [--stop-at 1000] [--resume]
    npgpt generate --model run/checkpoint "Once upon a time"
    npgpt generate --model run/checkpoint --prompts prompts.txt      # one prompt per line, in batches
    npgpt finetune --model run/checkpoint --data reviews.csv --text-column text --label-column label --out clf/

Each subcommand has ``--help``. ``main(argv)`` returns the exit status
instead of exiting, so tests call it in-process. Errors the user can fix
(a missing file, a bad setting, a malformed checkpoint, tokenizer or data
file, a full or read-only disk, an output directory another npgpt command
holds) print one line, ``npgpt: error: ...``, and return 1 rather than a
traceback; ``--debug`` or ``NPGPT_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import json
import os
import pathlib
import re
import sys
import typing
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, Optional

if TYPE_CHECKING:
    from npgpt.finetuning.labelled import LabelSet
    from npgpt.tokenizer import Tokenizer
    from npgpt.training.settings import ConfigError

__all__ = ["main", "build_parser", "HelpWithDefaults"]


# ======================================================== argument parsing
class _Parser(argparse.ArgumentParser):
    """argparse, with a suggestion for a misspelled flag (``--max_steps``: did you mean ``--max-steps``?)."""

    def error(self, message: str) -> NoReturn:
        if message.startswith("unrecognized arguments:"):
            known = [o for o in self._option_string_actions if o.startswith("--")]
            hints = []
            for word in message.split(":", 1)[1].split():
                if word.startswith("-"):
                    flag = word.split("=", 1)[0]
                    close = difflib.get_close_matches(flag.replace("_", "-"), known, n=1, cutoff=0.6)
                    if close:
                        hints.append(f"{flag}: did you mean {close[0]}?")
            if hints:
                message += " (" + "; ".join(hints) + ")"
        choice = re.match(r"argument \w+: invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if choice:                  # a mistyped subcommand: npgpt generat -> did you mean generate?
            names = re.findall(r"'([^']*)'", choice.group(2))
            close = difflib.get_close_matches(choice.group(1), names, n=1, cutoff=0.6)
            if close:
                message += f" (did you mean {close[0]}?)"
        super().error(message)


class HelpWithDefaults(argparse.HelpFormatter):
    """``--help`` that ends each option's help with its default, when it has a real one (not None/False):
    the examples' parsers use it, so every flag shows what it does when left out."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "default" not in text and action.option_strings:
            text += " (default: %(default)s)"
        return text


def _number(kind: type, low: Optional[float] = None, high: Optional[float] = None, low_open: bool = False,
            what: Optional[str] = None) -> Callable[[str], Any]:
    """An argparse type: ``kind`` in [low, high] (``low_open``: ``low`` excluded), or a usage error."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what or kind.__name__}, got {text!r}") from None
        if (low is not None and (value < low or (low_open and value == low))) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value
    parse.__name__ = kind.__name__
    return parse


POSITIVE_INT = _number(int, 1, what="an integer >= 1")
NON_NEGATIVE_INT = _number(int, 0, what="an integer >= 0")
NON_NEGATIVE_FLOAT = _number(float, 0.0, what="a number >= 0")
FRACTION = _number(float, 0.0, 1.0, low_open=True, what="a number in (0, 1]")


def _with_default(text: str, default: Any) -> str:
    """Help text that shows the default once (not when the text already explains it)."""
    if default in (None, "") or "default" in text:
        return text
    return f"{text} (default {default})"


def _settings_flags(parser: argparse.ArgumentParser, config_class: type, flag_names: Optional[dict[str, str]] = None,
                    skip: Iterable[str] = (), required: Iterable[str] = ()) -> None:
    """One flag per field of a settings dataclass, typed and with its help text (npgpt.training.settings).

    ``max_steps`` becomes ``--max-steps`` unless ``flag_names`` maps it to
    another flag. Flags default to ``None`` so that the command knows which
    settings were given (they override a config file or a resumed run). The
    command's own settings come first; those it inherits from a settings base
    with a ``FLAGS_TITLE`` (the optimizer's, LoRA's) follow under that title.
    """
    flag_names = flag_names or {}
    hints = typing.get_type_hints(config_class)
    groups: dict[str, Any] = {}
    fields = sorted(dataclasses.fields(config_class), key=lambda f: _flags_title(config_class, f.name) is not None)
    for field in fields:
        if field.name in skip:
            continue
        title = _flags_title(config_class, field.name)
        group = parser if title is None else groups.setdefault(title, parser.add_argument_group(title))
        kind = hints[field.name]
        if typing.get_origin(kind) is typing.Union:       # Optional[int] -> int
            kind = next(k for k in typing.get_args(kind) if k is not type(None))
        flag = flag_names.get(field.name, "--" + field.name.replace("_", "-"))
        if kind is bool:                # a switch: present means True
            group.add_argument(flag, dest=field.name, action="store_const", const=True, default=None,
                               help=field.metadata["help"])
            continue
        group.add_argument(flag, dest=field.name, type=kind, default=None, required=field.name in required,
                           metavar=_METAVARS.get(field.name, kind.__name__.upper()),
                           help=_with_default(field.metadata["help"], field.default))


def _flags_title(config_class: type, name: str) -> Optional[str]:
    """The ``FLAGS_TITLE`` of the settings base that declares the field ``name``, if one does."""
    for base in config_class.__mro__[1:]:
        if "FLAGS_TITLE" in vars(base) and name in vars(base).get("__dataclass_fields__", {}):
            return str(vars(base)["FLAGS_TITLE"])
    return None


def _retired_flag(parser: argparse.ArgumentParser, flag: str, explanation: str) -> None:
    """A flag that is no longer one: giving it is a usage error that says what replaced it (instead of
    argparse taking it for an abbreviation of a longer flag, with another meaning)."""
    class Retired(argparse.Action):
        def __call__(self, parser: argparse.ArgumentParser, *_: Any, **__: Any) -> None:
            parser.error(f"{flag} is no longer a flag: {explanation}")

    parser.add_argument(flag, action=Retired, nargs="?", help=argparse.SUPPRESS)


def settings_given(args: argparse.Namespace, config_class: type, skip: Iterable[str] = ()) -> dict[str, Any]:
    """The settings of ``config_class`` that were given on the command line, as a dict."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(config_class)
            if f.name not in skip and getattr(args, f.name, None) is not None}


def flag_of(field: str, flag_names: Optional[dict[str, str]] = None) -> str:
    """The command-line flag of a settings field."""
    return (flag_names or {}).get(field, "--" + field.replace("_", "-"))


def _debug_flag(parser: argparse.ArgumentParser, default: Any = argparse.SUPPRESS) -> None:
    # SUPPRESS on the subcommands, so that `npgpt --debug train` is not reset by train's own default.
    parser.add_argument("--debug", action="store_true", default=default,
                        help="on an error, show the Python traceback instead of one line (also: NPGPT_DEBUG=1)")


def _overwrite_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--overwrite", action="store_true",
                        help="write into the output directory even if it is not empty")


def _add_tokenizer(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tokenizer", help="train a byte-level BPE tokenizer",
                       description="Byte-level BPE tokenizers (npgpt.tokenizer).")
    tsub = p.add_subparsers(dest="tokenizer_command", metavar="ACTION", required=True, parser_class=_Parser)
    t = tsub.add_parser("train", help="learn BPE merges from text files",
                        description="Learn a byte-level BPE vocabulary from UTF-8 text files and save it.")
    t.add_argument("--input", nargs="+", required=True, metavar="FILE", help="UTF-8 text files to learn from")
    t.add_argument("--vocab-size", type=_number(int, 257, what="an integer >= 257"), required=True, metavar="N",
                   help="size of the vocabulary: 256 byte tokens + merges + special tokens")
    t.add_argument("--out", required=True, metavar="DIR", help="directory to save the tokenizer into")
    t.add_argument("--special-token", action="append", default=None, metavar="TOKEN",
                   help="a special token, spelled <|name|> (repeatable; default: <|endoftext|>)")
    _overwrite_flag(t)
    _debug_flag(t)
    t.set_defaults(command_parser=t)


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="tokenize text files into train.bin / val.bin",
                       description="Tokenize text files into DATA_DIR/train.bin, val.bin and meta.json. Each file "
                                   "is a document (or several, separated by literal <|endoftext|> markers); the "
                                   "<|endoftext|> token is appended after each. The tokenizer is copied into "
                                   "DATA_DIR/tokenizer.")
    p.add_argument("--input", nargs="+", required=True, metavar="FILE", help="UTF-8 text files")
    p.add_argument("--tokenizer", required=True, metavar="DIR", help="a tokenizer directory (npgpt tokenizer train), "
                   "or a model whose tokenizer to use: a model directory, npgpt-small, gpt2, or a Hub id; prepare "
                   "with the tokenizer of the model that `npgpt train --init-from` starts from")
    p.add_argument("--out", required=True, metavar="DATA_DIR", help="output directory")
    p.add_argument("--val-fraction", type=_number(float, 0.0, 1.0, low_open=True, what="a number in (0, 1)"),
                   default=0.1, help="share of every document's tokens held out for validation (default 0.1)")
    p.add_argument("--workers", type=POSITIVE_INT, default=None, metavar="N",
                   help="processes that encode documents in parallel; the files are the same for any N "
                        "(default: one per CPU core)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _overwrite_flag(p)
    _debug_flag(p)
    p.set_defaults(command_parser=p)


# What the value of a flag is, in its usage line (default: its type, INT / FLOAT / STR).
_METAVARS = {"data_dir": "DATA_DIR", "out_dir": "RUN_DIR", "tokenizer_dir": "DIR", "device": "DEVICE",
             "pad_side": "SIDE", "init_from": "MODEL", "model": "MODEL", "data": "FILE", "val_data": "FILE"}
# TrainConfig fields whose flags are not simply --field-name.
TRAIN_FLAG_NAMES = {"data_dir": "--data", "out_dir": "--out", "tokenizer_dir": "--tokenizer"}


def _add_run_flags(p: argparse.ArgumentParser, kind: str, config_class: type, flag_names: dict[str, str]) -> None:
    """The flags of a command that trains in a run directory (train, sft): a settings file, stop and
    resume, quiet, then one flag per field of ``config_class``."""
    p.add_argument("--config", metavar="FILE", help=f"JSON file of {kind} settings (flags override it)")
    p.add_argument("--stop-at", type=POSITIVE_INT, default=None, metavar="K",
                   help="stop after step K with a checkpoint (continue later with --resume)")
    p.add_argument("--resume", action="store_true", help="continue RUN_DIR from its last checkpoint")
    p.add_argument("--quiet", action="store_true", help="no log lines")
    _settings_flags(p, config_class, flag_names, required=("out_dir",))
    _debug_flag(p)
    p.set_defaults(command_parser=p)


def _add_train(sub: argparse._SubParsersAction) -> None:
    from npgpt.training.train import TrainConfig

    p = sub.add_parser("train", help="train a GPT-2 model on prepared data",
                       description="Train a GPT-2 model from scratch on a prepared data directory, or continue training "
                                   "a pretrained one with --init-from MODEL (its weights, architecture and tokenizer; "
                                   "nanoGPT's init_from). Checkpoints go "
                                   "to RUN_DIR/checkpoint (a Hugging Face GPT-2 model directory plus the tokenizer, "
                                   "optimizer and trainer state); the loss curve to RUN_DIR/loss.csv and log.jsonl. "
                                   "Ctrl-C finishes the step in progress, writes a checkpoint and stops; "
                                   "--resume continues.")
    _add_run_flags(p, "training", TrainConfig, TRAIN_FLAG_NAMES)


PROMPT_BATCH = 32      # prompts of a --prompts file generated at once: memory grows with it, speed flattens


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="continue a prompt with a trained model",
                       description="Continue PROMPT, or every line of --prompts FILE, with a model directory (the "
                                   "tokenizer is read from it too). The text is printed as it is generated.")
    p.add_argument("prompt", metavar="PROMPT", nargs="?", default=None, help="text to continue")
    p.add_argument("--prompts", metavar="FILE", default=None,
                   help="continue each line of FILE instead (one prompt per line, blank lines skipped), in "
                        "left-padded batches of --batch-size; each text is printed under a line "
                        "'==> prompt I of N <==', in order; with --seed, each prompt gets the text it would get alone")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=PROMPT_BATCH, metavar="N",
                   help=f"prompts of --prompts FILE generated together (default {PROMPT_BATCH}); a larger batch "
                        "is faster per prompt and needs more memory")
    p.add_argument("--stream", action=argparse.BooleanOptionalAction, default=True,
                   help="print the tokens as they are generated (the default; with --prompts, the prompts after "
                        "the first wait for the ones before them to end); --no-stream prints when all is done")
    p.add_argument("--model", required=True, metavar="DIR", help="model directory, e.g. RUN_DIR/checkpoint")
    p.add_argument("--max-new-tokens", type=POSITIVE_INT, default=100, help="tokens to generate (default 100)")
    p.add_argument("--temperature", type=NON_NEGATIVE_FLOAT, default=1.0,
                   help="sampling temperature; 0 = greedy (default 1.0)")
    p.add_argument("--top-k", type=POSITIVE_INT, default=None, help="sample among the k most likely tokens")
    p.add_argument("--top-p", type=FRACTION, default=None,
                   help="sample from the smallest set of tokens with probability >= p")
    p.add_argument("--seed", type=NON_NEGATIVE_INT, default=None, help="seed of the sampler (same seed, same text)")
    p.add_argument("--prompt-lookup", type=POSITIVE_INT, default=None, metavar="N",
                   help="greedy only (--temperature 0): guess up to N tokens from the text so far and verify them "
                        "in one pass; the same text, faster when it repeats the prompt (quoting, editing). With "
                        "--prompts, each prompt is generated alone")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    _debug_flag(p)
    p.set_defaults(command_parser=p)


def _add_finetune(sub: argparse._SubParsersAction) -> None:
    from npgpt.finetuning.finetune import FinetuneConfig
    from npgpt.training.settings import WARMUP_IN_STEPS

    p = sub.add_parser("finetune", help="fine-tune a model as a text classifier (docs/finetuning.md)",
                       description="Fine-tune a pretrained GPT as a classifier on a labelled CSV, TSV or JSONL "
                                   "file. The output directory loads with GPTClassifier.from_pretrained and "
                                   "holds the tokenizer. Ctrl-C stops after the step in progress; the best "
                                   "classifier so far stays in --out.")
    p.add_argument("--model", required=True, metavar="DIR", help="pretrained language model (directory or shipped "
                   "name) or a saved classifier to continue; must hold the tokenizer")
    p.add_argument("--data", required=True, metavar="FILE", help="labelled examples: a .csv, .tsv or .jsonl file")
    p.add_argument("--text-column", default="text", help="column (field) with the text (default text)")
    p.add_argument("--label-column", default="label", help="column (field) with the label (default label)")
    p.add_argument("--out", required=True, metavar="DIR", help="directory for the classifier and its tokenizer")
    p.add_argument("--format", choices=("csv", "tsv", "jsonl"), default=None,
                   help="file format (default: from the extension)")
    p.add_argument("--no-header", action="store_true",
                   help="CSV/TSV without a header row: columns are numbers, 0 for the first")
    p.add_argument("--labels", default=None,
                   help="comma-separated expected labels in class order (default: the sorted labels found); "
                        "any other label in the data is an error")
    p.add_argument("--allow-many-classes", action="store_true",
                   help="accept a label column where most classes have a single example")
    p.add_argument("--val-data", default=None, metavar="FILE",
                   help="validation file (default: a seeded split of --data)")
    p.add_argument("--val-fraction", type=_number(float, 0.0, 1.0, low_open=True, what="a number in (0, 1)"),
                   default=0.1, help="share of --data held out for validation (default 0.1)")
    p.add_argument("--softmax", action="store_true",
                   help="two classes: use two logits and softmax instead of one logit and a sigmoid")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    _overwrite_flag(p)
    _settings_flags(p, FinetuneConfig)
    # --warmup was a fraction of the steps; argparse would read it as --warmup-steps, a count.
    _retired_flag(p, "--warmup", WARMUP_IN_STEPS)
    _debug_flag(p)
    p.set_defaults(command_parser=p)


def _add_classify(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("classify", help="classify texts with a fine-tuned classifier (docs/finetuning.md)",
                       description="Print the class of each TEXT (or of each non-empty line of --input FILE) as "
                                   "tab-separated lines: label, the probability of each class, the text.")
    p.add_argument("model", metavar="MODEL", help="a classifier directory written by npgpt finetune")
    p.add_argument("texts", metavar="TEXT", nargs="*", help="texts to classify")
    p.add_argument("--input", metavar="FILE", default=None, help="classify each non-empty line of FILE instead")
    p.add_argument("--output", metavar="FILE", default=None, help="write the table to FILE (default: standard output)")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=64, metavar="N", help="texts per batch (default 64)")
    p.add_argument("--max-length", type=POSITIVE_INT, default=128, metavar="N",
                   help="tokens kept per text, as fine-tuning kept them (default 128)")
    _debug_flag(p)
    p.set_defaults(command_parser=p)


def _add_plot(sub: Any) -> None:
    p = sub.add_parser("plot", help="draw the loss curves of one or several runs",
                       description="Draw the training and validation loss of run directories (their log.jsonl) "
                                   "on one figure, against steps and against tokens seen. Needs matplotlib "
                                   "(pip install -e \".[viz]\").")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories of npgpt train or npgpt finetune")
    p.add_argument("--out", required=True, metavar="PNG", help="the picture to write")
    p.add_argument("--title", default=None, help="a title over the figure")
    p.add_argument("--window", type=POSITIVE_INT, default=10,
                   help="moving-average window of the training loss, in steps (default 10)")
    p.set_defaults(command_parser=p)


# SFTConfig fields whose flags are not simply --field-name.
SFT_FLAG_NAMES = {"out_dir": "--out"}


def _add_sft(sub: argparse._SubParsersAction) -> None:
    from npgpt.finetuning.sft import SFTConfig

    p = sub.add_parser("sft", help="fine-tune a model to answer: supervised fine-tuning on conversations",
                       description="Supervised fine-tuning (docs/agent.md): train MODEL on conversations, a JSONL "
                                   "file of {\"messages\": [...]} or {\"prompt\", \"response\"} lines, with the "
                                   "loss on the assistant's tokens only. A model without a chat template gets "
                                   "npgpt's (ChatML) first. Checkpoints go to RUN_DIR/checkpoint, a model directory "
                                   "that `npgpt chat` opens; Ctrl-C finishes the step in progress, writes a "
                                   "checkpoint and stops; --resume continues.")
    _add_run_flags(p, "SFT", SFTConfig, SFT_FLAG_NAMES)


def _add_chat(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("chat", help="talk to a chat model (one fine-tuned with npgpt sft)",
                       description="Talk to MODEL, a model whose tokenizer has a chat template (npgpt sft writes "
                                   "one). Type a message and press Enter; the answer is printed as it is generated. "
                                   "/reset forgets the conversation, /exit (or Ctrl-D) ends it; Ctrl-C stops the "
                                   "answer in progress and keeps the session. When the conversation outgrows the "
                                   "model's context, the oldest turns are dropped (never the system prompt), with "
                                   "a notice. --message TEXT answers once and exits.")
    p.add_argument("model", metavar="MODEL", help="model directory (e.g. RUN_DIR/checkpoint), shipped name or Hub id")
    p.add_argument("--system", default=None, metavar="TEXT", help="system prompt, kept for the whole session")
    p.add_argument("--message", default=None, metavar="TEXT", help="answer this one message, print it and exit")
    p.add_argument("--max-new-tokens", type=POSITIVE_INT, default=200, help="most tokens per answer (default 200)")
    p.add_argument("--temperature", type=NON_NEGATIVE_FLOAT, default=0.7,
                   help="sampling temperature; 0 = greedy (default 0.7)")
    p.add_argument("--top-k", type=POSITIVE_INT, default=None, help="sample among the k most likely tokens")
    p.add_argument("--top-p", type=FRACTION, default=None,
                   help="sample from the smallest set of tokens with probability >= p")
    p.add_argument("--seed", type=NON_NEGATIVE_INT, default=None, help="seed of the sampler (same seed, same session)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    _debug_flag(p)
    p.set_defaults(command_parser=p)


def _add_lora(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lora", help="LoRA adapters: fold one into its base model (docs/agent.md)",
                       description="Work with LoRA adapters saved in PEFT's format (adapter_config.json + "
                                   "adapter_model.safetensors), npgpt's or peft's own.")
    lsub = p.add_subparsers(dest="lora_command", metavar="ACTION", required=True, parser_class=_Parser)
    m = lsub.add_parser("merge", help="write the base model with the adapter folded into its weights",
                        description="Load the base model, put the adapter on it, fold W + (alpha/r) (B A)^T into "
                                    "each adapted weight and save an ordinary checkpoint (with the base's "
                                    "tokenizer): it loads anywhere GPT-2 loads, with no adapter code.")
    m.add_argument("adapter", metavar="ADAPTER", help="adapter directory (adapter_config.json + "
                                                      "adapter_model.safetensors)")
    m.add_argument("--base", default=None, metavar="DIR", help="the base model (directory, shipped name or Hub id; "
                   "default: the adapter's base_model_name_or_path)")
    m.add_argument("--out", required=True, metavar="DIR", help="directory for the merged model")
    _overwrite_flag(m)
    _debug_flag(m)
    m.set_defaults(command_parser=m)
    p.set_defaults(command_parser=p)


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="perplexity, bits per byte and multiple-choice accuracy (docs/agent.md)",
                       description="Evaluate a language model: perplexity and bits per byte of a text with a "
                                   "sliding window (--text), accuracy on multiple-choice questions (--choices: "
                                   'JSONL lines {"context": ..., "choices": [...], "gold": i}). lm-eval-harness '
                                   "runs npgpt models too: python -m npgpt.apps.lm_eval_plugin --model npgpt ...")
    p.add_argument("eval_model", metavar="MODEL", help="model directory, shipped name (npgpt-small) or Hub id")
    p.add_argument("--text", action="append", default=None, metavar="FILE",
                   help="a UTF-8 text to score (repeat for several; each is scored on its own)")
    p.add_argument("--choices", action="append", default=None, metavar="FILE",
                   help="multiple-choice questions, JSONL (repeat for several)")
    p.add_argument("--stride", type=POSITIVE_INT, default=None,
                   help="tokens between the starts of two windows (default: half the window; equal to the window: "
                        "disjoint windows, faster and pessimistic)")
    p.add_argument("--max-length", type=POSITIVE_INT, default=None,
                   help="tokens per window (default: the model's context)")
    p.add_argument("--adapter", default=None, metavar="DIR", help="a LoRA adapter to put on the model first")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=16, help="choices scored together (default 16)")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    _debug_flag(p)
    p.set_defaults(command_parser=p)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    from npgpt.apps.serve.server import add_arguments

    p = sub.add_parser("serve", help="serve a model over HTTP with OpenAI's API, and a page (docs/serving.md)",
                       description="Serve MODEL at http://HOST:PORT: OpenAI's /v1/completions, "
                                   "/v1/chat/completions (a model with a chat template) and /v1/models, streamed "
                                   "or not, concurrent requests batched; the page at /, /health, /metrics. "
                                   "Needs the serve extra: pip install -e \".[serve]\". SIGTERM or Ctrl-C stop it: "
                                   "running requests get --grace seconds to finish.")
    add_arguments(p)
    _debug_flag(p)
    p.set_defaults(command_parser=p)


def build_parser() -> argparse.ArgumentParser:
    from npgpt import __version__

    parser = _Parser(prog="npgpt", description="npgpt: GPT-2 from scratch on NumPy.")
    parser.add_argument("--version", action="version", version=f"npgpt {__version__}")
    _debug_flag(parser, default=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    _add_tokenizer(sub)
    _add_prepare(sub)
    _add_train(sub)
    _add_generate(sub)
    _add_finetune(sub)
    _add_classify(sub)
    _add_sft(sub)
    _add_chat(sub)
    _add_lora(sub)
    _add_eval(sub)
    _add_serve(sub)
    _add_plot(sub)
    return parser


# =============================================================== commands
def _load_tokenizer(directory: str) -> Tokenizer:
    from npgpt.tokenizer import Tokenizer

    return Tokenizer.from_pretrained(directory)


def _require_model_kind(directory: str, kind: str) -> None:
    """Refuse a classifier where a language model is needed, and the reverse, saying which command fits.

    The kind is read from ``config.json``'s ``architectures`` (Hugging Face's field); a directory
    without one (or a Hub name) is left to the loader, whose errors name the file.
    """
    from npgpt.finetuning.classifier import ARCHITECTURE
    from npgpt.io import fileio

    config = pathlib.Path(directory) / "config.json"
    try:
        architectures = fileio.read_json(config, "config.json").get("architectures") or []
    except (OSError, ValueError, AttributeError):
        return
    is_classifier = ARCHITECTURE in architectures
    if kind == "language model" and is_classifier:
        raise ValueError(f"{directory} is a classifier ({ARCHITECTURE}), not a language model: it answers "
                         f"with a class, not text; use `npgpt classify {directory} TEXT`")
    if kind == "classifier" and not is_classifier:
        raise ValueError(f"{directory} is a language model, not a classifier: fine-tune one first with "
                         f"`npgpt finetune --model {directory} --data LABELLED_FILE --out DIR`, then "
                         "`npgpt classify DIR TEXT`")


def _check_device(device: str, world: Any = None) -> str:
    """A missing GPU is the user's to fix: report it as one line, not a traceback.

    With the ``world`` of a job of several ranks, a ``cuda`` device is this rank's local GPU,
    made current here (``distributed.use_device``)."""
    from npgpt import backend
    from npgpt.training import distributed

    try:
        return backend.check_device(device) if world is None else distributed.use_device(device, world)
    except RuntimeError as exc:
        raise ValueError(str(exc)) from None


def _refuse_non_empty(directory: str, overwrite: bool, what: str) -> None:
    """``--out`` must be a new or empty directory (its lock file aside), unless ``--overwrite``."""
    from npgpt.io import fileio

    path = pathlib.Path(directory)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{what} {path} exists and is not a directory")
    if not overwrite and path.is_dir() and any(p.name != fileio.LOCK_NAME for p in path.iterdir()):
        raise FileExistsError(f"{what} {path} is not empty: choose another --out, or pass --overwrite")


@contextlib.contextmanager
def _sole_writer(directory: str, overwrite: bool, what: str, command: str, enabled: bool = True) -> Iterator[None]:
    """Write ``--out`` as its one writer: locked (``fileio.hold``; a holder is refused at once, named),
    cleared of dead writers' temporary files, and new or empty unless ``--overwrite``.

    ``enabled=False`` (an MPI rank other than 0, which writes nothing) does none of it.
    """
    from npgpt.io import fileio

    if not enabled:
        yield
        return
    path = pathlib.Path(directory)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{what} {path} exists and is not a directory")
    with fileio.hold(path, command):
        fileio.remove_abandoned(path)
        _refuse_non_empty(directory, overwrite, what)
        yield


def cmd_tokenizer_train(args: argparse.Namespace) -> int:
    from npgpt.io import fileio
    from npgpt.tokenizer import ENDOFTEXT, Tokenizer

    with _sole_writer(args.out, args.overwrite, "tokenizer directory", "npgpt tokenizer train"):
        # Each a regular file of at most fileio.MAX_TEXT_FILE (1 GiB): BPE training holds it whole, and more.
        texts = [fileio.read_utf8(name, "input file", limit=fileio.MAX_TEXT_FILE) for name in args.input]
        if not any(texts):
            raise ValueError(f"the input files ({', '.join(args.input)}) are empty: there is nothing to learn from")
        special = tuple(args.special_token) if args.special_token else (ENDOFTEXT,)
        tokenizer = Tokenizer.train(texts, args.vocab_size, special_tokens=special)
        tokenizer.save(args.out)
    size = tokenizer.vocab_size
    note = "" if size == args.vocab_size else (f" (the text has too few distinct byte pairs for "
                                                f"{args.vocab_size:,})")
    print(f"saved a tokenizer of {size:,} tokens to {args.out}{note}")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from npgpt.training.data import prepare

    with _sole_writer(args.out, args.overwrite, "data directory", "npgpt prepare"):
        meta = prepare(args.input, _load_tokenizer(args.tokenizer), args.out, val_fraction=args.val_fraction,
                       progress=not args.quiet, workers=args.workers)
    print(f"wrote {args.out}: {meta['train_tokens']:,} training and {meta['val_tokens']:,} validation tokens "
          f"({meta['dtype']}, vocabulary {meta['vocab_size']:,})")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from npgpt import backend
    from npgpt.training.interrupt import exit_status
    from npgpt.training.train import TrainConfig, Trainer

    backend.retain_freed_memory()      # every step reuses the last one's memory (docs/performance.md)
    settings = {}
    if args.config:
        settings.update(_read_settings_file(args.config, TrainConfig))
    settings.update(settings_given(args, TrainConfig))
    if "device" in settings:
        _check_device(settings["device"])
    log = (lambda line: None) if args.quiet else None
    if args.resume:
        settings.pop("out_dir", None)
        trainer = Trainer.resume(args.out_dir, log=log, **settings)
    else:
        if "data_dir" not in settings:
            raise ValueError("npgpt train needs --data DATA_DIR (or --resume)")
        trainer = Trainer(TrainConfig.from_dict(settings), log=log, given=set(settings))
    if args.resume and trainer.step >= trainer.config.max_steps:
        print(f"{args.out_dir} is already at step {trainer.step} of {trainer.config.max_steps}: nothing to do "
              "(raise --max-steps to train longer)")
        return 0
    summary = trainer.train(stop_at=args.stop_at)
    if not trainer.world.is_main:         # under mpiexec, rank 0 speaks for the job
        return exit_status(summary["stopped_by"]) if summary["stopped_by"] is not None else 0
    if summary["stopped_by"] is not None:
        print(f"stopped at step {summary['step']}; continue with: npgpt train --out {args.out_dir} --resume",
              file=sys.stderr)
        return exit_status(summary["stopped_by"])
    parts = [f"step {summary['step']}"]
    if summary["train_loss"] is not None:
        parts.append(f"train loss {summary['train_loss']:.4f}")
    if summary["val_loss"] is not None:
        parts.append(f"val loss {summary['val_loss']:.4f}")
    parts.append(f"{summary['tokens_per_s']:,.0f} tokens/s")
    print(", ".join(parts) + f"; checkpoint in {trainer.run_dir / 'checkpoint'}")
    return 0


def _read_settings_file(name: str, config_class: type) -> dict[str, Any]:
    """The settings in a ``--config`` JSON file, each value of its field's type (else a ValueError naming it)."""
    from npgpt.io import fileio

    path = pathlib.Path(name)
    if not path.exists():              # a special file is refused by read_utf8, not called missing
        raise FileNotFoundError(f"config file {path} does not exist")
    text = fileio.read_utf8(path, "config file", limit=fileio.MAX_SMALL_FILE)
    values = fileio.parse_json(text, f"config file {path}")
    if not isinstance(values, dict):
        raise ValueError(f"config file {path} must hold a JSON object of settings")
    hints = typing.get_type_hints(config_class)
    for key, value in values.items():
        if key not in hints:
            continue                   # named by TrainConfig.from_dict, with the list of known settings
        kinds = [k for k in typing.get_args(hints[key]) or (hints[key],)]
        ok = any((value is None if k is type(None) else
                  isinstance(value, str) if k is str else
                  isinstance(value, bool) if k is bool else
                  isinstance(value, int) and not isinstance(value, bool) if k is int else
                  isinstance(value, (int, float)) and not isinstance(value, bool) if k is float else False)
                 for k in kinds)
        if not ok:
            expected = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
            raise ValueError(f"config file {path}: {key} must be {expected}, got {value!r:.60}")
    return values


def _generation_settings(args: argparse.Namespace, eos: Optional[int]) -> tuple[Any, int]:
    """``npgpt generate``'s flags as Hugging Face's generation settings (a temperature of 0 means
    greedy), and the prompts generated together."""
    from npgpt.generation import GenerationConfig

    if args.prompt_lookup is not None and args.temperature > 0:
        raise ValueError("--prompt-lookup is exact for greedy decoding only: add --temperature 0")
    config = GenerationConfig(max_new_tokens=args.max_new_tokens, do_sample=args.temperature > 0,
                              temperature=args.temperature if args.temperature > 0 else 1.0, top_k=args.top_k,
                              top_p=args.top_p, eos_token_id=eos, prompt_lookup=args.prompt_lookup)
    # A file of many prompts goes in batches: one batch of all would hold every row's cache at once.
    # Prompt lookup decodes one row at a time (rows would accept different numbers of guesses).
    return config, 1 if args.prompt_lookup else args.batch_size


def cmd_generate(args: argparse.Namespace) -> int:
    from npgpt import backend
    from npgpt.generation import generate, stream
    from npgpt.model import GPT
    from npgpt.tokenizer import ENDOFTEXT

    backend.retain_freed_memory()      # a generation's buffers (the decoding head's copy) reuse freed memory
    if (args.prompt is None) == (args.prompts is None):
        raise ValueError("give a PROMPT or --prompts FILE (not both)")
    texts = [args.prompt] if args.prompts is None else _read_prompts(args.prompts)
    _require_model_kind(args.model, "language model")
    model = GPT.from_pretrained(args.model).to(_check_device(args.device))
    try:
        tokenizer = _load_tokenizer(args.model)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{args.model} holds no tokenizer files ({exc}); models written by "
                                "`npgpt train` carry them") from None
    # Prompts are encoded as `npgpt prepare` encoded the training text: a typed <|endoftext|> is
    # the token (prepare cut documents there and appended it), every other special token's text
    # is ordinary text (prepare never produced those ids, so the model never saw them).
    specials = {"allowed_special": {ENDOFTEXT} & set(tokenizer.special_tokens), "disallowed_special": ()}
    eos = tokenizer.special_tokens.get(ENDOFTEXT)
    config, batch_size = _generation_settings(args, eos)
    block = model.config.block_size
    for first in range(0, len(texts), batch_size):
        batch = texts[first:first + batch_size]
        ids, mask = tokenizer.encode_batch(batch, padding="left", **specials)   # padded with <|endoftext|>
        if ids.shape[1] == 0 or not mask[:, -1].all():
            raise ValueError("the prompt is empty: give some text to continue")
        for i, length in enumerate(mask.sum(axis=1).tolist()):
            if length > block:
                which = "the prompt" if len(texts) == 1 else f"prompt {first + i + 1}"
                print(f"npgpt: warning: {which} has {length:,} tokens and the model's context is {block:,}: "
                      f"it sees only the last {block:,}", file=sys.stderr)
        seed = args.seed if args.seed is None or len(texts) == 1 else [args.seed] * len(batch)   # each as alone
        settings = dict(attention_mask=mask, generation_config=config, seed=seed)
        if args.stream:
            steps = (backend.to_numpy(step) for step in stream(model, ids, **settings))
        else:
            steps = backend.to_numpy(generate(model, ids, **settings))[:, ids.shape[1]:].T
        _print_continuations(tokenizer, batch, steps, eos, first=first, total=len(texts))
    return 0


def _read_prompts(path: str, what: str = "prompts") -> list[str]:
    """The prompts of ``--prompts FILE`` (or the texts of ``classify --input``): one per line, blank
    lines skipped (a regular file of at most ``fileio.MAX_TEXT_FILE`` bytes)."""
    from npgpt.io import fileio

    if not pathlib.Path(path).exists():
        raise FileNotFoundError(f"{what} file {path} does not exist")
    prompts = [line for line in fileio.read_utf8(path, f"{what} file", limit=fileio.MAX_TEXT_FILE).splitlines()
               if line.strip()]
    if not prompts:
        raise ValueError(f"{path} holds no {what[:-1]}: write one per line")
    return prompts


def _print_continuations(tokenizer: Tokenizer, texts: list[str], steps: Iterable[Any], eos: Optional[int],
                         first: int = 0, total: Optional[int] = None) -> None:
    """Write each text and its continuation as the steps (one id per text each) come; stop a text at ``eos``.

    With several texts, each goes under a line ``==> prompt I of N <==``, in order: the current
    text is written piece by piece, the later ones are held until the texts before them have
    ended. A ``StreamDecoder`` per text holds back a character split across tokens.
    """
    from npgpt.tokenizer import StreamDecoder

    n = len(texts)
    total = n if total is None else total      # texts are prompts first+1 .. first+n of total
    decoders = [StreamDecoder(tokenizer) for _ in texts]
    held, ended = [""] * n, [False] * n
    current = 0

    def start(i: int) -> None:
        if total > 1:
            sys.stdout.write(("\n" if first + i else "") + f"==> prompt {first + i + 1} of {total} <==\n")
        sys.stdout.write(texts[i] + held[i])

    start(0)
    for step in steps:
        for i, token in enumerate(step.tolist()):
            if ended[i]:
                continue
            if token == eos:
                ended[i] = True
                continue
            piece = decoders[i].push(token)
            if i == current:
                sys.stdout.write(piece)
            else:
                held[i] += piece
        while current < n and ended[current]:
            sys.stdout.write(decoders[current].flush() + "\n")
            current += 1
            if current < n:
                start(current)
        sys.stdout.flush()
        if current == n:
            break
    for i in range(current, n):
        if i > current:
            start(i)
        sys.stdout.write(decoders[i].flush() + "\n")


def cmd_sft(args: argparse.Namespace) -> int:
    from npgpt import backend
    from npgpt.finetuning.sft import SFTConfig, SFTTrainer
    from npgpt.training.interrupt import exit_status

    backend.retain_freed_memory()
    settings = {}
    if args.config:
        settings.update(_read_settings_file(args.config, SFTConfig))
    settings.update(settings_given(args, SFTConfig))
    if "device" in settings:
        _check_device(settings["device"])
    log = (lambda line: None) if args.quiet else None
    if args.resume:
        settings.pop("out_dir", None)
        trainer = SFTTrainer.resume(args.out_dir, log=log, **settings)
    else:
        missing = [flag for key, flag in (("model", "--model"), ("data", "--data")) if key not in settings]
        if missing:
            raise ValueError(f"npgpt sft needs {' and '.join(missing)} (or --resume)")
        trainer = SFTTrainer(SFTConfig.from_dict(settings), log=log)
    if args.resume and trainer.step >= trainer.config.max_steps:
        print(f"{args.out_dir} is already at step {trainer.step} of {trainer.config.max_steps}: nothing to do "
              "(raise --max-steps to train longer)")
        return 0
    summary = trainer.train(stop_at=args.stop_at)
    if not trainer.world.is_main:
        return exit_status(summary["stopped_by"]) if summary["stopped_by"] is not None else 0
    if summary["stopped_by"] is not None:
        print(f"stopped at step {summary['step']}; continue with: npgpt sft --out {args.out_dir} --resume",
              file=sys.stderr)
        return exit_status(summary["stopped_by"])
    parts = [f"step {summary['step']}"]
    if summary["train_loss"] is not None:
        parts.append(f"train loss {summary['train_loss']:.4f}")
    if summary["val_loss"] is not None:
        parts.append(f"held-out response loss {summary['val_loss']:.4f}")
    print(", ".join(parts) + f"; talk to it: npgpt chat {trainer.run_dir / 'checkpoint'}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from npgpt.apps.serve.server import run

    return run(args)


def cmd_chat(args: argparse.Namespace) -> int:
    from npgpt.apps.chat import ChatSession

    notice = lambda line: print(line, file=sys.stderr, flush=True)       # noqa: E731
    _require_model_kind(args.model, "language model")
    session = ChatSession.from_pretrained(args.model, device=_check_device(args.device), system=args.system,
                                          max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                          top_k=args.top_k, top_p=args.top_p, seed=args.seed, on_notice=notice)
    if args.message is not None:
        _print_answer(session, args.message)
        return 0
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"chatting with {args.model}: /reset forgets, /exit ends, Ctrl-C stops an answer", file=sys.stderr)
    while True:
        try:
            line = input("> " if interactive else "")
        except EOFError:
            return 0
        except KeyboardInterrupt:          # Ctrl-C at the prompt: a fresh line, the session goes on
            print(file=sys.stderr)
            continue
        text = line.strip()
        if text in ("/exit", "/quit"):
            return 0
        if text == "/reset":
            session.reset()
            print("(conversation forgotten)", file=sys.stderr)
            continue
        if not text:
            continue
        try:
            _print_answer(session, line)
        except KeyboardInterrupt:          # the answer so far stays in the history
            print("\n(stopped)", file=sys.stderr, flush=True)
        except ValueError as exc:          # a message too long for the context: say so, and go on
            print(f"npgpt: {exc}", file=sys.stderr, flush=True)


def _print_answer(session: Any, message: str) -> None:
    for piece in session.stream(message):
        print(piece, end="", flush=True)
    print(flush=True)


def cmd_finetune(args: argparse.Namespace) -> int:
    """``npgpt finetune``; under mpiexec every rank trains and rank 0 alone prints and writes."""
    import contextlib
    import io

    from npgpt import backend
    from npgpt.training import distributed

    backend.retain_freed_memory()      # every step reuses the last one's memory (docs/performance.md)
    if distributed.world().is_main:
        return _finetune(args)
    with contextlib.redirect_stdout(io.StringIO()):
        return _finetune(args)


def _finetune(args: argparse.Namespace) -> int:
    from npgpt.training import distributed

    # Rank 0 alone writes (the others would see its files appear and its lock held).
    with _sole_writer(args.out, args.overwrite, "output directory", "npgpt finetune",
                      enabled=distributed.world().is_main):
        return _finetune_holding(args)


def _finetune_holding(args: argparse.Namespace) -> int:
    """``npgpt finetune`` once its output directory is held: the labelled texts, the classifier on its
    device, the run, the best weights' validation, what was written where."""
    from npgpt.finetuning import finetune as ft
    from npgpt.finetuning.classifier import GPTClassifier
    from npgpt.finetuning.finetune import FinetuneConfig
    from npgpt.finetuning.metrics import format_metrics
    from npgpt.tokenizer import Tokenizer
    from npgpt.training import distributed

    config = FinetuneConfig(**settings_given(args, FinetuneConfig))
    texts, y, labels = _read_labelled(args)
    (train_texts, train_y), (val_texts, val_y) = _validation_split(args, texts, y, labels, config.seed)
    num_labels = 1 if len(labels) == 2 and not args.softmax else len(labels)
    tokenizer = Tokenizer.from_pretrained(args.model)
    classifier = GPTClassifier.from_pretrained(args.model, num_labels=num_labels, labels=labels.names,
                                               seed=config.seed, pooling=config.pooling)
    classifier.to(_check_device(args.device, distributed.world()))      # under mpiexec: each rank its own GPU
    print(f"{len(train_texts)} training and {len(val_texts)} validation texts; classes {labels.names}; "
          f"{'one logit + sigmoid' if num_labels == 1 else f'{num_labels} logits + softmax'}")
    result = ft.finetune(classifier, tokenizer, train_texts, train_y, val_texts, val_y, config=config,
                         out_dir=args.out, base_model=args.model, progress=True)
    print(f"validating the best classifier on {len(val_texts)} texts...", flush=True)
    val = ft.Encoded(tokenizer, val_texts, val_y, min(config.max_length, classifier.config.block_size))
    metrics = ft.evaluate(classifier, val, ft.pad_id_for(classifier, tokenizer))
    print("validation (best weights):\n" + format_metrics(metrics))
    if distributed.world().is_main:
        _write_finetune_results(pathlib.Path(args.out), metrics, result.history, args.model)
    print(f"saved the classifier and tokenizer to {args.out} (load with GPTClassifier.from_pretrained)")
    if config.lora_rank:
        print(f"saved the LoRA adapter and the head to {pathlib.Path(args.out) / 'adapter'} (PEFT's format; "
              f"the classifier in {args.out} has it merged)")
    if result.stopped_by is not None:
        from npgpt.training.interrupt import exit_status

        print(f"stopped at step {result.steps}; {args.out} holds the best classifier so far", file=sys.stderr)
        return exit_status(result.stopped_by)
    return 0


def _read_labelled(args: argparse.Namespace) -> tuple[list[str], Any, LabelSet]:
    """The texts of ``--data``, their labels encoded as class indices, and the ``LabelSet`` (``--labels``, else
    the labels found). Prints the count of each label and warns of rare classes, of one class spelled several
    ways and of a class spelled like a missing value; a column of more than two classes, over half of
    them with a single example, is refused unless ``--allow-many-classes`` (``labelled.label_counts``)."""
    from npgpt.finetuning import labelled

    texts, raw = labelled.read_labelled_file(args.data, args.text_column, args.label_column, fmt=args.format,
                                             header=not args.no_header)
    counts, warnings = labelled.label_counts(raw, source=str(args.data), allow_many_classes=args.allow_many_classes)
    labels = (labelled.LabelSet([n.strip() for n in args.labels.split(",")]) if args.labels
              else labelled.LabelSet.infer(raw))
    print("label counts: " + ", ".join(f"{name} {counts.get(name, 0):,}" for name in labels.names))
    for line in warnings:
        print(f"npgpt: warning: {line}", file=sys.stderr)
    return texts, labels.encode(raw, source=str(args.data)), labels


def _validation_split(args: argparse.Namespace, texts: list[str], y: Any, labels: LabelSet, seed: int
                      ) -> tuple[tuple[list[str], Any], tuple[list[str], Any]]:
    """(training texts, labels) and (validation texts, labels): all of ``--data`` and the ``--val-data`` file,
    or a seeded ``--val-fraction`` of ``--data`` held out."""
    from npgpt.finetuning import labelled

    if args.val_data:
        val_texts, val_raw = labelled.read_labelled_file(args.val_data, args.text_column, args.label_column,
                                                         fmt=args.format, header=not args.no_header)
        return (texts, y), (val_texts, labels.encode(val_raw, source=str(args.val_data)))
    train_rows, val_rows = labelled.split_indices(len(texts), (1 - args.val_fraction, args.val_fraction), seed=seed)
    if len(val_rows) == 0 or len(train_rows) == 0:
        raise ValueError(f"{args.data} has {len(texts)} examples: too few to hold out a validation split")
    return ([texts[i] for i in train_rows], y[train_rows]), ([texts[i] for i in val_rows], y[val_rows])


def _write_finetune_results(out: pathlib.Path, metrics: dict[str, Any], history: list[dict[str, Any]],
                            model: str) -> None:
    """``OUT/eval_results.json`` (the best weights' metrics) and the curve as ``npgpt train`` keeps it:
    ``OUT/log.jsonl``, one row per evaluation, and its picture when matplotlib is there."""
    from npgpt.io import fileio
    from npgpt.training import plot

    report = {k: v for k, v in metrics.items() if k != "confusion"}
    report["confusion"] = metrics["confusion"].tolist()
    fileio.atomic_write(out / "eval_results.json", json.dumps(report, indent=2) + "\n")
    fileio.atomic_write(out / "log.jsonl", "".join(json.dumps(row) + "\n" for row in history))
    if not plot.matplotlib_available():
        print(f"not drawing {plot.FIGURE_NAME}: {plot.NO_MATPLOTLIB}")
    elif history:
        print(f"loss curve: {plot.plot_runs([out], out / plot.FIGURE_NAME, title=f'fine-tuning {model}')}")


def cmd_classify(args: argparse.Namespace) -> int:
    """``npgpt classify MODEL TEXT ...``: one line per text, ``label<TAB>p(class 0)<TAB>...<TAB>text``."""
    from npgpt.finetuning.classifier import GPTClassifier
    from npgpt.io import fileio

    if bool(args.texts) == (args.input is not None):
        raise ValueError("give TEXT arguments or --input FILE (not both)")
    texts = list(args.texts) if args.input is None else _read_prompts(args.input, "texts")
    _require_model_kind(args.model, "classifier")
    classifier = GPTClassifier.from_pretrained(args.model)
    tokenizer = _load_tokenizer(args.model)
    results = classifier.classify(texts, tokenizer, batch_size=args.batch_size, max_length=args.max_length)
    header = "\t".join(["label", *(f"p({name})" for name in classifier.labels), "text"])
    lines = [header] + ["\t".join([r.label, *(f"{r.probabilities[name]:.4f}" for name in classifier.labels),
                                    " ".join(text.split())]) for r, text in zip(results, texts)]
    table = "\n".join(lines) + "\n"
    if args.output is None:
        sys.stdout.write(table)
    else:
        fileio.atomic_write(args.output, table)
        print(f"wrote {len(texts):,} classified texts to {args.output}", file=sys.stderr)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """``npgpt eval MODEL --text FILE --choices FILE``."""
    from npgpt.apps import evaluation
    from npgpt.io import fileio
    from npgpt.model import GPT

    if not args.text and not args.choices:
        raise ValueError("say what to evaluate on: --text FILE (perplexity) and/or --choices FILE (multiple choice)")
    _require_model_kind(args.eval_model, "language model")
    model = GPT.from_pretrained(args.eval_model)
    if args.adapter:
        from npgpt.finetuning import lora

        lora.load_adapter(model, args.adapter)
    model.to(_check_device(args.device)).eval()
    tokenizer = _load_tokenizer(args.eval_model)
    report: dict[str, Any] = {"model": args.eval_model}
    for path in args.text or []:
        text = fileio.read_utf8(path, "text file", limit=fileio.MAX_TEXT_FILE)     # a regular file, bounded
        result = evaluation.text_perplexity(model, tokenizer, text, stride=args.stride, max_length=args.max_length)
        report[path] = result.to_dict()
        if not args.json:
            print(f"{path}: perplexity {result.perplexity:.3f}  bits per byte {result.bits_per_byte:.4f}  "
                  f"({result.tokens:,} tokens, {result.bytes:,} bytes, {result.windows:,} windows)")
    for path in args.choices or []:
        result = evaluation.multiple_choice(model, tokenizer, evaluation.read_choices(path),
                                            batch_size=args.batch_size)
        report[path] = {k: v for k, v in result.items() if k != "loglikelihoods"}
        if not args.json:
            print(f"{path}: acc {result['acc']:.4f}  acc_norm {result['acc_norm']:.4f}  "
                  f"({result['questions']:,} questions; chance {result['chance']:.4f})")
    if args.json:
        print(json.dumps(report, indent=2))
    return 0


def cmd_lora(args: argparse.Namespace) -> int:
    """``npgpt lora merge ADAPTER --out DIR``."""
    from npgpt.finetuning import lora
    from npgpt.finetuning.classifier import GPTClassifier
    from npgpt.model import GPT

    with _sole_writer(args.out, args.overwrite, "output directory", "npgpt lora merge"):
        base, outputs, labels = lora.adapter_base(args.adapter, args.base)
        model = (GPTClassifier.from_pretrained(base, num_labels=outputs, labels=labels) if outputs
                 else GPT.from_pretrained(base))
        merged = lora.merge_adapter(model, args.adapter)
        try:
            tokenizer = _load_tokenizer(base)
            saved = " and its tokenizer"
        except (OSError, ValueError):        # no tokenizer files, or none npgpt reads
            tokenizer, saved = None, f" ({base} holds no tokenizer to copy)"
        merged.save_pretrained(args.out, tokenizer=tokenizer)      # one version: model and tokenizer
    print(f"merged {args.adapter} into {base}; wrote the model{saved} to {args.out}")
    return 0


def _end_the_job_if_distributed(exc: BaseException) -> None:
    """Under mpiexec a rank that fails must end the whole job, or the other ranks wait for it forever."""
    from npgpt.training import distributed

    if isinstance(exc, distributed.MPINotInstalled):
        return                              # no MPI to end the job with: each rank prints its line and exits
    world = distributed.world()
    if world.size > 1:
        message = _one_line(exc) if isinstance(exc, _expected_errors()) else f"{type(exc).__name__}: {exc}"
        print(f"npgpt: error on rank {world.rank} of {world.size}: {message}", file=sys.stderr, flush=True)
        # MPI_Abort prints a banner of its own ("Abort(1) on node 0 ..."); the last line the user
        # reads must be the one that says what went wrong, so this process's stderr ends here.
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
        world.abort(1)


def cmd_plot(args: argparse.Namespace) -> int:
    from npgpt.training import plot

    for run in args.runs:             # a mistyped run directory is named before matplotlib is asked for
        plot.read_log(run)
    if not plot.matplotlib_available():
        raise ValueError(f"npgpt plot needs matplotlib: {plot.NO_MATPLOTLIB}")
    out = plot.plot_runs(args.runs, args.out, title=args.title, window=args.window)
    print(f"wrote {out}")
    return 0


# Each group's flags, by settings class, for naming the flag in a ConfigError.
def _flag_for(exc: ConfigError) -> str:
    names = {"TrainConfig": TRAIN_FLAG_NAMES, "SFTConfig": SFT_FLAG_NAMES}.get(exc.owner)
    return flag_of(exc.field, names)


def _expected_errors() -> tuple[type[BaseException], ...]:
    """What a user can cause and fix: bad files and settings, a full or read-only disk, too little memory.

    ``OSError`` covers missing files, permissions, a full disk (ENOSPC) and a
    run directory another trainer holds; ``ValueError`` covers malformed
    checkpoints (``CheckpointError``), tokenizer files (``TokenizerFileError``)
    and data. Anything else is a bug in npgpt and keeps its traceback.
    """
    from safetensors import SafetensorError

    from npgpt.datasets import DatasetUnavailable
    from npgpt.training.distributed import MPINotInstalled

    return (OSError, ValueError, KeyError, MemoryError, SafetensorError, DatasetUnavailable, MPINotInstalled)


def _one_line(exc: BaseException) -> str:
    """The message of an expected error, on one line."""
    if isinstance(exc, KeyError) and exc.args:
        message = str(exc.args[0])
    elif isinstance(exc, OSError) and exc.strerror and exc.filename:     # "[Errno 28] ..." -> "path: reason"
        message = f"{exc.filename}: {exc.strerror}"
    elif isinstance(exc, MemoryError):
        message = f"out of memory: {exc}" if str(exc) else "out of memory"
    else:
        message = str(exc) or type(exc).__name__
    return " ".join(line.strip() for line in message.splitlines() if line.strip())


def _debugging(args: argparse.Namespace) -> bool:
    """``--debug`` or ``NPGPT_DEBUG`` set (to anything but 0): show tracebacks."""
    return bool(getattr(args, "debug", False)) or os.environ.get("NPGPT_DEBUG", "0") not in ("", "0")


@contextlib.contextmanager
def _warnings_as_lines() -> Iterator[None]:
    """The library's warnings (``npgpt.generation.ContextWindowWarning``, ...) printed as one
    ``npgpt: warning:`` line like the command's own, without Python's file and line."""
    import warnings

    before = warnings.formatwarning
    warnings.formatwarning = lambda message, *_, **__: f"npgpt: warning: {message}\n"
    try:
        yield
    finally:
        warnings.formatwarning = before


def _warn_about_slow_choices(args: argparse.Namespace) -> None:
    """Say once, up front, when a choice makes the command much slower than it need be, and why."""
    if getattr(args, "dtype", None) == "float16" and getattr(args, "device", None) in (None, "cpu"):
        print("npgpt: warning: --dtype float16 is meant for GPUs: a CPU has no fast float16 matrix products, so "
              "it runs many times (~25x) slower than float32 here", file=sys.stderr)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 error, 2 bad usage, 128+N stopped by signal N)."""
    from npgpt.training.settings import ConfigError

    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:       # report them with the subcommand's usage and a suggestion, not the top level's
            args.command_parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exc:          # --help, --version or a usage error: argparse has printed it
        return int(exc.code or 0)
    handlers = {"prepare": cmd_prepare, "train": cmd_train, "generate": cmd_generate, "finetune": cmd_finetune,
                "classify": cmd_classify, "sft": cmd_sft, "chat": cmd_chat, "lora": cmd_lora, "eval": cmd_eval,
                "serve": cmd_serve, "plot": cmd_plot}
    handler = cmd_tokenizer_train if args.command == "tokenizer" else handlers[args.command]
    _warn_about_slow_choices(args)
    from npgpt.training.train import TrainingDiverged

    try:
        try:
            with _warnings_as_lines():
                return handler(args)
        except Exception as exc:
            _end_the_job_if_distributed(exc)
            raise
    except ConfigError as exc:
        if _debugging(args):
            raise
        print(f"npgpt: error: {exc.message_for(_flag_for(exc))}", file=sys.stderr)
        return 1
    except _expected_errors() + (TrainingDiverged,) as exc:
        if _debugging(args):
            raise
        print(f"npgpt: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:          # a second Ctrl-C: stop at once; checkpoints are atomic
        print("npgpt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
