"""Every file npgpt reads, replaced by a hostile one: a link to /dev/zero, a FIFO, a huge sparse file.

A test helper, run as a script in a subprocess under an address-space limit (tests/suites/test_fuzz_files.py,
``test_every_reader_refuses_special_and_oversized_files_at_once``), because a reader that does
not bound its read eats memory at the speed of ``/dev/zero``, and one that opens a FIFO waits
forever: neither may take the test run down with it.

    python tests/hostile_files.py WORK_DIR      # prints one JSON line per (reader, kind)

Each reader is a function of a fresh directory that writes a valid artefact, and returns the
file to replace and the call that reads it. A case passes when the call raises the error type
the reader promises, with the file's name in the message, within ``SECONDS``; the script only
reports, the test judges.
"""

import contextlib
import io
import json
import os
import pathlib
import resource
import signal
import sys
import time

SECONDS = 10
SPARSE_BYTES = 50 << 30          # 50 GiB of nothing: what a size check must refuse before reading
KINDS = ("dev-zero", "fifo", "sparse")
TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer.\n" * 20


def _tokenizer():
    from npgpt.tokenizer import Tokenizer

    return Tokenizer.train(TEXT, 300, show_progress=False)


def _model(directory):
    from npgpt.model import GPT, GPTConfig

    return GPT(GPTConfig(vocab_size=64, block_size=8, n_layer=1, n_head=2, n_embd=8)).save_pretrained(directory)


def _data(directory):
    from npgpt.training import data

    (directory / "a.txt").write_text(TEXT)
    data.prepare([directory / "a.txt"], _tokenizer(), directory / "data", progress=False, workers=1)
    return directory / "data"


def _tokenizer_file(name):
    def case(directory):
        from npgpt.tokenizer import Tokenizer, TokenizerFileError

        tok = _tokenizer().save(directory / "tok")
        if name == "added_tokens.json":
            (tok / name).write_text("{}")
        return tok / name, lambda: Tokenizer.from_pretrained(tok), TokenizerFileError
    return case


def _tiktoken(directory):
    import base64

    from npgpt.tokenizer import Tokenizer, TokenizerFileError

    tok = _tokenizer()
    path = directory / "ranks.tiktoken"
    path.write_text("".join(f"{base64.b64encode(tok.token_bytes(i)).decode()} {i}\n" for i in range(256)))
    return path, lambda: Tokenizer.from_tiktoken(path), TokenizerFileError


def _meta(directory):
    from npgpt.training import data

    out = _data(directory)
    return out / "meta.json", lambda: data.load_meta(out), ValueError


def _config(directory):
    from npgpt.io.checkpoint import CheckpointError
    from npgpt.model import GPT

    out = _model(directory / "model")
    return out / "config.json", lambda: GPT.from_pretrained(out), CheckpointError


def _weights(directory):
    from npgpt.io.checkpoint import CheckpointError
    from npgpt.model import GPT

    out = _model(directory / "model")
    return out / "model.safetensors", lambda: GPT.from_pretrained(out), CheckpointError


def _trainer_state(directory):
    from npgpt.training.train import Trainer, train

    train(data_dir=str(_data(directory)), out_dir=str(directory / "run"), max_steps=1, n_layer=1, n_head=2,
          n_embd=8, block_size=8, batch_size=2, eval_iters=1, log=lambda line: None)
    state = directory / "run" / "checkpoint" / "trainer_state.json"
    return state, lambda: Trainer.resume(directory / "run", log=lambda line: None), FileNotFoundError


def _labelled(directory):
    from npgpt.finetuning import labelled

    path = directory / "reviews.csv"
    path.write_text("text,label\ngood,pos\nbad,neg\n")
    return path, lambda: labelled.read_labelled_file(path), ValueError


def _choices(directory):
    from npgpt.apps import evaluation

    path = directory / "choices.jsonl"
    path.write_text('{"context": "2 + 2 =", "choices": [" 4", " 5"], "gold": 0}\n')
    return path, lambda: evaluation.read_choices(path), ValueError


def _conversations(directory):
    from npgpt.finetuning import conversations

    path = directory / "chats.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n')
    return path, lambda: list(conversations.read_records(path)), ValueError


def _command(argv_of, name):
    """A reader behind the command line: ``main(argv)`` must return 1 with the file named on stderr."""
    def case(directory):
        from npgpt.apps.cli import main

        path = directory / name
        path.write_text(TEXT)

        def call():
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                code = main(argv_of(directory, path))
            if code != 1:
                return code
            raise ValueError(err.getvalue())
        return path, call, ValueError
    return case


READERS = {
    **{name: _tokenizer_file(name) for name in ("vocab.json", "merges.txt", "special_tokens_map.json",
                                                "tokenizer_config.json", "added_tokens.json")},
    "ranks.tiktoken": _tiktoken,
    "meta.json": _meta,
    "config.json": _config,
    "model.safetensors": _weights,
    "trainer_state.json": _trainer_state,
    "labelled file": _labelled,
    "settings file": _command(lambda d, p: ["train", "--config", str(p), "--data", "x", "--out", str(d / "r")],
                              "settings.json"),
    "prompts file": _command(lambda d, p: ["generate", "--model", str(_model(d / "m")), "--prompts", str(p)],
                             "prompts.txt"),
    "choices file": _choices,
    "conversation file": _conversations,
    "eval text": _command(lambda d, p: ["eval", "npgpt-small", "--text", str(p)], "text.txt"),
    "tokenizer train input": _command(lambda d, p: ["tokenizer", "train", "--input", str(p), "--vocab-size", "300",
                                                    "--out", str(d / "t")], "corpus.txt"),
    "prepare input": _command(lambda d, p: ["prepare", "--input", str(p), "--tokenizer",
                                            str(_tokenizer().save(d / "tok")), "--out", str(d / "d"), "--quiet"],
                              "corpus.txt"),
}
# Text that is streamed may be as large as the disk (a 50 GiB sparse corpus is a corpus of NULs); its special
# files are refused.
UNBOUNDED = {"prepare input"}


def make_hostile(path: pathlib.Path, kind: str) -> None:
    path.unlink()
    if kind == "dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        with open(path, "wb") as f:
            f.truncate(SPARSE_BYTES)


class Late(Exception):
    pass


def _alarm(signum, frame):
    raise Late(f"still reading after {SECONDS} s")


def run(work: pathlib.Path) -> None:
    signal.signal(signal.SIGALRM, _alarm)
    for reader, build in READERS.items():
        for kind in KINDS:
            if kind == "sparse" and reader in UNBOUNDED:
                continue
            directory = work / f"{reader}-{kind}".replace(" ", "_")
            directory.mkdir(parents=True)
            path, call, expected = build(directory)
            make_hostile(path, kind)
            start = time.perf_counter()
            signal.alarm(SECONDS)
            try:
                outcome = call()
                error, message = None, f"returned {outcome!r:.80}"
            except BaseException as exc:       # reported, judged by the test
                error, message = exc, str(exc)
            finally:
                signal.alarm(0)
            print(json.dumps({"reader": reader, "kind": kind, "file": str(path), "seconds": time.perf_counter() - start,
                              "error": type(error).__name__ if error is not None else None,
                              "expected": isinstance(error, expected), "message": message[-400:]}), flush=True)


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
    run(pathlib.Path(sys.argv[1]))
