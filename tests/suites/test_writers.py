"""Writers of output directories: only their own files, one at a time, no debris, clear disk errors.

Issue 27's writer defects, one test each (items 1, 5, 6 and 10), then kills of ``prepare``,
``finetune`` and ``tokenizer train`` at random moments, whose output must be complete or
refused, and two writers per command. docs/engineering.md ("Guarantees") states what these
tests check.
"""

import errno
import os
import pathlib
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest
from run_helpers import ENV, holder_process, stop_process

from npgpt.apps.cli import main
from npgpt.model import GPT, GPTConfig
from npgpt.training import rundir

ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY = GPTConfig(vocab_size=64, block_size=8, n_layer=1, n_head=2, n_embd=8)
TEXT = ("To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
        "The slings and arrows of outrageous fortune,\nOr to take arms against a sea of troubles\n"
        "And by opposing end them. To die, to sleep;\nNo more; and by a sleep to say we end\n") * 8
TRAIN_FLAGS = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "4",
               "--warmup-steps", "2", "--eval-interval", "2", "--eval-iters", "1", "--log-interval", "1", "--quiet"]


# ==================================================================== fixtures
@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(TEXT + "a good film. a bad film. the plot was great. the actor was awful. " * 20)
    return path


@pytest.fixture(scope="module")
def tok_dir(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("tok") / "tok"
    assert main(["tokenizer", "train", "--input", str(corpus), "--vocab-size", "300", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def lm_dir(tok_dir, tmp_path_factory):
    """A tiny language model with the BPE tokenizer: what ``finetune --model`` starts from."""
    from npgpt.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_pretrained(tok_dir)
    out = tmp_path_factory.mktemp("lm") / "lm"
    GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16)).save_pretrained(out)
    tokenizer.save(out)
    return out


@pytest.fixture(scope="module")
def reviews(tmp_path_factory):
    path = tmp_path_factory.mktemp("reviews") / "reviews.csv"
    rows = [f"{'a good film' if i % 2 else 'a bad film'} {i},{'pos' if i % 2 else 'neg'}" for i in range(40)]
    path.write_text("text,label\n" + "\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def data_dir(corpus, tok_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "data"
    assert main(["prepare", "--input", str(corpus), "--tokenizer", str(tok_dir), "--out", str(out), "--quiet"]) == 0
    return out


def finetune_args(lm_dir, reviews, out, *extra):
    return ["finetune", "--model", str(lm_dir), "--data", str(reviews), "--out", str(out), "--epochs", "1",
            "--batch-size", "8", "--workers", "1", *extra]


def command_args(command, out, corpus, tok_dir, lm_dir, reviews):
    """The argv of ``command`` (prepare, finetune or tokenizer) writing into ``out``."""
    if command == "prepare":
        return ["prepare", "--input", str(corpus), "--tokenizer", str(tok_dir), "--out", str(out), "--quiet",
                "--workers", "1"]
    if command == "finetune":
        return finetune_args(lm_dir, reviews, out)
    return ["tokenizer", "train", "--input", str(corpus), "--vocab-size", "300", "--out", str(out)]


def one_line_error(capsys, *fragments):
    err = capsys.readouterr().err
    assert err.startswith("npgpt: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err
    return err


def debris(*directories):
    """Temporary and staging names a writer leaves when it is killed, in ``directories``."""
    return sorted(p.name for d in directories if d.is_dir() for p in d.iterdir()
                  if p.name.startswith(".") and p.name != rundir.LOCK_NAME)


def snapshot(directory):
    """{relative path: bytes} of every file under ``directory``."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _paused_command(argv, env_extra, marker, timeout=120):
    """``python -m npgpt ARGV`` in a subprocess, returned once it prints ``marker`` on stderr."""
    proc = subprocess.Popen([sys.executable, "-m", "npgpt", *argv], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            text=True, cwd=ROOT, env={**ENV, **env_extra})
    deadline = time.time() + timeout
    for line in proc.stderr:
        if marker in line:
            return proc
        assert time.time() < deadline, "the command never reached the marker"
    proc.wait(timeout=30)
    pytest.fail(f"the command ended (status {proc.returncode}) without printing {marker!r}")




# =================================== 1. a save replaces only the files it writes
def test_save_pretrained_replaces_only_its_own_files(tmp_path):
    from npgpt.finetuning.classifier import GPTClassifier

    out = tmp_path / "out"
    (out / "checkpoint").mkdir(parents=True)
    (out / "checkpoint" / "trainer_state.json").write_text('{"step": 7}')
    (out / "notes").mkdir()
    (out / "notes" / "keep.txt").write_text("mine")
    (out / "README.txt").write_text("also mine")
    lock = out / rundir.LOCK_NAME
    lock.write_text("{}")
    inode = lock.stat().st_ino
    for seed in (0, 1):
        GPT(TINY, seed=seed).save_pretrained(out)
        GPTClassifier(TINY, num_labels=2, seed=seed).save_pretrained(out)
    assert (out / "checkpoint" / "trainer_state.json").read_text() == '{"step": 7}'
    assert (out / "notes" / "keep.txt").read_text() == "mine" and (out / "README.txt").read_text() == "also mine"
    assert lock.stat().st_ino == inode                       # the same file, not an unlocked copy
    assert GPTClassifier.from_pretrained(out).num_labels == 2 and debris(out, tmp_path) == []


def test_a_failed_save_leaves_the_previous_model_and_no_debris(tmp_path, monkeypatch):
    from npgpt.io import checkpoint

    out = GPT(TINY, seed=0).save_pretrained(tmp_path / "out")
    before = snapshot(out)

    def full(tensors, path):
        with open(path, "wb") as f:
            f.write(b"x" * 100)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint, "_write_tensors", full)
    with pytest.raises(OSError, match="No space left") as info:
        GPT(TINY, seed=1).save_pretrained(out)
    assert info.value.filename and "model.safetensors" in str(info.value.filename)     # the file is named
    assert snapshot(out) == before and debris(out, tmp_path) == []


def test_finetune_overwrite_keeps_a_runs_checkpoint_and_user_folders(lm_dir, reviews, tmp_path, capsys):
    from npgpt.finetuning.classifier import GPTClassifier

    out = tmp_path / "run"
    shutil.copytree(lm_dir, out / "checkpoint")
    (out / "notes").mkdir()
    (out / "notes" / "keep.txt").write_text("mine")
    kept = snapshot(out)
    assert main(finetune_args(lm_dir, reviews, out, "--overwrite")) == 0, capsys.readouterr().err
    after = snapshot(out)
    assert {name: after.get(name) for name in kept} == kept
    assert GPTClassifier.from_pretrained(out).labels == ["neg", "pos"]
    assert debris(out, tmp_path) == [] and not (out / rundir.LOCK_NAME).exists()


def test_finetune_into_a_directory_a_trainer_holds_is_refused_at_once(lm_dir, reviews, tmp_path, capsys):
    run = tmp_path / "run"
    holder = holder_process(run)
    try:
        before = snapshot(run)
        assert main(finetune_args(lm_dir, reviews, run, "--overwrite")) == 1
        one_line_error(capsys, f"is in use by another training run (pid {holder.pid} on ")
        assert snapshot(run) == before
        with pytest.raises(rundir.RunDirectoryLocked):        # the trainer still holds its lock
            with rundir.lock(run):
                pass
    finally:
        stop_process(holder)


# ========================================== 5. one writer per output directory
@pytest.mark.parametrize("command", ["prepare", "finetune", "tokenizer"])
def test_an_output_directory_a_trainer_holds_is_refused_with_the_holder_named(
        command, corpus, tok_dir, lm_dir, reviews, tmp_path, capsys):
    run = tmp_path / "run"
    holder = holder_process(run)
    try:
        (run / "checkpoint").mkdir()
        (run / "checkpoint" / "model.safetensors").write_bytes(b"the trainer's")
        before = snapshot(run)
        argv = command_args(command, run, corpus, tok_dir, lm_dir, reviews) + ["--overwrite"]
        started = time.time()
        assert main(argv) == 1
        one_line_error(capsys, f"is in use by another training run (pid {holder.pid} on ", "started 20")
        assert time.time() - started < 10                  # at once, before the work
        assert snapshot(run) == before
    finally:
        stop_process(holder)


@pytest.mark.parametrize("command", ["prepare", "finetune", "tokenizer"])
def test_a_second_writer_of_the_same_command_is_refused_naming_the_first(
        command, corpus, tok_dir, lm_dir, reviews, tmp_path, capsys):
    out = tmp_path / "out"
    argv = command_args(command, out, corpus, tok_dir, lm_dir, reviews)
    first = _paused_command(argv, {"NPGPT_TEST_PAUSE_HOLDING": "120"}, "npgpt-test: holding")
    try:
        assert main(argv + ["--overwrite"]) == 1
        name = "tokenizer train" if command == "tokenizer" else command
        one_line_error(capsys, f"is in use by another npgpt {name} (pid {first.pid} on ")
    finally:
        stop_process(first)                                       # SIGKILL: the kernel lets go of the lock
    assert main(argv + ["--overwrite"]) == 0               # a dead holder never blocks
    assert not (out / rundir.LOCK_NAME).exists() and debris(out) == []


def test_a_directory_inside_a_held_run_directory_is_refused(lm_dir, reviews, tmp_path, capsys):
    run = tmp_path / "run"
    holder = holder_process(run)
    try:
        assert main(finetune_args(lm_dir, reviews, run / "checkpoint")) == 1
        one_line_error(capsys, str(run), f"pid {holder.pid}")
        assert not (run / "checkpoint").exists()
    finally:
        stop_process(holder)


def test_a_failed_command_leaves_no_lock_and_no_empty_directory(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    out = tmp_path / "tok"
    assert main(["tokenizer", "train", "--input", str(empty), "--vocab-size", "300", "--out", str(out)]) == 1
    one_line_error(capsys, "empty")
    assert not out.exists()


# ==================================================== 6. the debris of dead writers
def _die_while_writing(code, cwd):
    """Run ``code`` in a subprocess that SIGKILLs itself at its end (a writer dying mid-write)."""
    script = textwrap.dedent(code) + "\nimport os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n"
    proc = subprocess.run([sys.executable, "-c", script], cwd=cwd, env=ENV, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def test_a_killed_prepares_token_files_are_removed_by_the_next(corpus, tok_dir, tmp_path, capsys):
    out = tmp_path / "data"
    out.mkdir()
    _die_while_writing(f"""
        import pathlib
        from npgpt.training import data
        for split in ("train", "val"):
            data._TempFile(pathlib.Path({str(out)!r}) / f"{{split}}.bin").write(b"x" * 1000)
    """, ROOT)
    assert any(name.startswith(".train.bin.") for name in debris(out))
    assert main(command_args("prepare", out, corpus, tok_dir, None, None) + ["--overwrite"]) == 0
    assert debris(out) == []


def test_a_killed_prepares_cache_directory_is_removed_by_the_next(corpus, tok_dir, tmp_path, monkeypatch, capsys):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    big = tmp_path / "big.txt"
    big.write_text((TEXT + "<|endoftext|>") * 400)
    argv = ["prepare", "--input", str(big), "--tokenizer", str(tok_dir), "--out", str(tmp_path / "data"),
            "--quiet", "--workers", "2"]
    proc = subprocess.Popen([sys.executable, "-m", "npgpt", *argv], cwd=ROOT, env={**ENV, "TMPDIR": str(scratch)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 60
        while not list(scratch.glob("npgpt-prepare-*")):
            assert time.time() < deadline and proc.poll() is None, "prepare never made its cache directory"
            time.sleep(0.005)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)          # the parent and its workers
        proc.wait(timeout=30)
    assert list(scratch.glob("npgpt-prepare-*"))
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    assert main(argv[:-1] + ["1", "--overwrite"]) == 0
    assert list(scratch.glob("npgpt-prepare-*")) == []


def test_a_killed_finetunes_save_is_cleaned_up_by_the_next(lm_dir, reviews, tmp_path, capsys):
    out = tmp_path / "clf"
    _die_while_writing(f"""
        from npgpt.apps import cli
        from npgpt.io import checkpoint
        real = checkpoint._write_tensors

        def dying(tensors, path):
            real(tensors, path)
            import os, signal
            os.kill(os.getpid(), signal.SIGKILL)

        checkpoint._write_tensors = dying
        cli.main({finetune_args(lm_dir, reviews, out)!r})
    """, ROOT)
    assert debris(out, tmp_path)
    assert main(finetune_args(lm_dir, reviews, out, "--overwrite")) == 0
    assert debris(out, tmp_path) == []


# ============================================ 10. a full disk names the file
def _limited(limit):
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_a_file_size_limit_names_the_file_and_the_intact_checkpoint(data_dir, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--data", str(data_dir), "--out", str(run), "--max-steps", "6", "--stop-at", "2",
                 *TRAIN_FLAGS]) == 0
    saved = snapshot(run / "checkpoint")
    proc = subprocess.run([sys.executable, "-m", "npgpt", "train", "--out", str(run), "--resume", "--quiet"],
                          preexec_fn=_limited(8000), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1 and last.startswith("npgpt: error: "), proc.stderr
    assert "File too large" in last and str(run) in last, last
    assert f"the previous checkpoint {run / 'checkpoint'} (step 2) is intact" in last, last
    assert snapshot(run / "checkpoint") == saved
    assert main(["train", "--out", str(run), "--resume", "--quiet"]) == 0       # and it resumes


def test_a_full_disk_during_a_save_names_the_file_and_the_intact_checkpoint(data_dir, tmp_path, monkeypatch,
                                                                            capsys):
    from npgpt.io import checkpoint

    run = tmp_path / "run"
    assert main(["train", "--data", str(data_dir), "--out", str(run), "--max-steps", "6", "--stop-at", "2",
                 *TRAIN_FLAGS]) == 0
    capsys.readouterr()
    from safetensors import SafetensorError

    def full(tensors, path):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(checkpoint, "_write_tensors", full)
    assert main(["train", "--out", str(run), "--resume", "--quiet"]) == 1
    one_line_error(capsys, "model.safetensors: No space left on device",
                   f"the previous checkpoint {run / 'checkpoint'} (step 2) is intact")


def test_a_full_disk_in_finetune_names_the_file_and_what_is_intact(lm_dir, reviews, tmp_path, monkeypatch, capsys):
    from npgpt.io import checkpoint

    out = tmp_path / "clf"

    def full(tensors, path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint, "_write_tensors", full)
    assert main(finetune_args(lm_dir, reviews, out)) == 1
    one_line_error(capsys, "model.safetensors: No space left on device", f"{out} holds no classifier yet")


MPIEXEC = shutil.which("mpiexec")


@pytest.mark.slow
@pytest.mark.skipif(MPIEXEC is None, reason="mpiexec not found (pip install -e \".[mpi]\")")
def test_under_mpi_the_last_line_of_a_full_disk_is_npgpts(data_dir, tmp_path):
    pytest.importorskip("mpi4py")
    run = tmp_path / "run"
    assert main(["train", "--data", str(data_dir), "--out", str(run), "--max-steps", "6", "--stop-at", "2",
                 *TRAIN_FLAGS]) == 0
    # The limit is set after MPI has started (its own start-up writes larger files).
    launcher = textwrap.dedent(f"""
        import resource, runpy, sys
        from mpi4py import MPI
        resource.setrlimit(resource.RLIMIT_FSIZE, (8000, 8000))
        sys.argv = ["npgpt", "train", "--out", {str(run)!r}, "--resume", "--quiet"]
        runpy.run_module("npgpt", run_name="__main__")
    """)
    proc = subprocess.run([MPIEXEC, "-n", "2", sys.executable, "-c", launcher], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and lines, proc.stderr
    assert lines[-1].startswith("npgpt: error") and "File too large" in lines[-1], proc.stderr
    assert "is intact" in lines[-1]


# ============================================ kills at random moments (CI)
def _kill_at_random(argv, seconds):
    """Start ``python -m npgpt ARGV`` and SIGKILL it (and its workers) after ``seconds``, unless it ended."""
    proc = subprocess.Popen([sys.executable, "-m", "npgpt", *argv], cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    return proc.returncode


def _complete_or_refused(command, out):
    """Load what ``command`` wrote into ``out``: it loads whole, or raises a named error (never a mixture)."""
    from npgpt.finetuning.classifier import GPTClassifier
    from npgpt.io.checkpoint import CheckpointError
    from npgpt.tokenizer import Tokenizer, TokenizerFileError
    from npgpt.training import data

    try:
        if command == "tokenizer":
            tokenizer = Tokenizer.from_pretrained(out)
            assert tokenizer.decode(tokenizer.encode("To be, or not")) == "To be, or not"
        elif command == "prepare":
            meta = data.load_meta(out)
            for split in ("train", "val"):
                tokens = data.TokenFile(out, split)
                assert len(tokens) == meta[f"{split}_tokens"]
            # and the tokenizer beside them is the one that made them (its digest, item 2)
            assert Tokenizer.from_pretrained(data.tokenizer_dir(out)).vocab_size == meta["vocab_size"]
        else:
            classifier = GPTClassifier.from_pretrained(out)
            tokenizer = Tokenizer.from_pretrained(out)
            assert classifier.config.vocab_size == tokenizer.vocab_size and classifier.labels == ["neg", "pos"]
        return "complete"
    except (FileNotFoundError, TokenizerFileError, CheckpointError, ValueError) as exc:
        assert str(out) in str(exc) or "no such" in str(exc).lower() or "does not exist" in str(exc), exc
        return "refused"


# Two versions of each command's output, so that a killed overwrite has something to mix up.
VARIANTS = {"prepare": (["--val-fraction", "0.1"], ["--val-fraction", "0.3", "--tokenizer", "npgpt-small"]),
            "finetune": (["--seed", "0"], ["--seed", "1", "--softmax"]),
            "tokenizer": (["--vocab-size", "300"], ["--vocab-size", "280"])}


def _seconds(argv):
    started = time.time()
    assert subprocess.run([sys.executable, "-m", "npgpt", *argv], cwd=ROOT, env=ENV,
                          capture_output=True).returncode == 0
    return time.time() - started


@pytest.mark.slow
@pytest.mark.parametrize("command", ["prepare", "finetune", "tokenizer"])
def test_kills_at_random_moments_leave_output_complete_or_refused(command, corpus, tok_dir, lm_dir, reviews,
                                                                  tmp_path, capsys):
    rng = random.Random(27)
    out = tmp_path / "out"
    argvs = [command_args(command, out, corpus, tok_dir, lm_dir, reviews) + ["--overwrite", *variant]
             for variant in VARIANTS[command]]
    seconds = _seconds(argvs[1])
    startup = _seconds(["--version"])                     # the kills that matter come after the imports
    outcomes = []
    for trial in range(6):
        status = _kill_at_random(argvs[trial % 2], startup + rng.uniform(0.0, seconds - startup))
        outcomes.append((status, _complete_or_refused(command, out)))
    assert main(argvs[0]) == 0, outcomes                   # a killed writer never blocks the next
    assert _complete_or_refused(command, out) == "complete" and debris(out, tmp_path) == []
    assert not (out / rundir.LOCK_NAME).exists()


def test_a_link_at_a_saved_name_is_replaced_not_followed(tmp_path):
    from npgpt.tokenizer import Tokenizer

    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_text("not npgpt's")
    out = tmp_path / "out"
    out.mkdir()
    for name in ("config.json", "model.safetensors", "vocab.json"):
        (out / name).symlink_to(elsewhere)
    GPT(TINY).save_pretrained(out)
    Tokenizer.train(TEXT, 270, show_progress=False).save(out)
    assert elsewhere.read_text() == "not npgpt's"
    assert not any((out / name).is_symlink() for name in ("config.json", "model.safetensors", "vocab.json"))
    assert GPT.from_pretrained(out).config.n_embd == TINY.n_embd


# A save killed after each of its steps: the renames into the directory, and the removal of
# the old config.json. What is left must be the old version whole, the new one whole, or refused.
_SAVE_KILLED_AFTER = textwrap.dedent("""
    import os, pathlib, signal, sys
    from npgpt.finetuning.classifier import GPTClassifier
    from npgpt.model import GPTConfig
    from npgpt.tokenizer import Tokenizer

    out, after, num_labels, seed, vocab = pathlib.Path(sys.argv[1]), int(sys.argv[2]), *map(int, sys.argv[3:6])
    config = GPTConfig(vocab_size=vocab, block_size=8, n_layer=1, n_head=2, n_embd=8)
    tokenizer = Tokenizer.train({text!r}, vocab, show_progress=False)
    classifier = GPTClassifier(config, num_labels=num_labels, seed=seed)
    events = [0]
    real_replace, real_unlink = os.replace, os.unlink

    def count(path):
        if pathlib.Path(path).parent == out:
            events[0] += 1
            if events[0] == after:
                os.kill(os.getpid(), signal.SIGKILL)

    def replace(a, b):
        real_replace(a, b)
        count(b)

    def unlink(path, *args, **kwargs):
        real_unlink(path, *args, **kwargs)
        count(path)

    if after == 0:
        os.kill(os.getpid(), signal.SIGKILL)
    os.replace, os.unlink = replace, unlink
    classifier.save_pretrained(out, tokenizer=tokenizer)
""").format(text=TEXT)


def _save_version(out, after, num_labels, seed, vocab):
    return subprocess.run([sys.executable, "-c", _SAVE_KILLED_AFTER, str(out), str(after), str(num_labels), str(seed),
                           str(vocab)], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
@pytest.mark.parametrize("new", [(1, 1, 280), (2, 1, 270)], ids=["another-model", "new-weights-only"])
def test_a_save_killed_after_any_step_leaves_old_new_or_refused(tmp_path, new):
    from npgpt.finetuning.classifier import GPTClassifier
    from npgpt.io.checkpoint import CheckpointError

    versions = {}
    for name, spec in (("old", (2, 0, 270)), ("new", new)):
        assert _save_version(tmp_path / name, -1, *spec).returncode == 0
        versions[name] = snapshot(tmp_path / name)
    seen = set()
    for after in range(0, 9):
        out = tmp_path / f"killed-{after}"
        shutil.copytree(tmp_path / "old", out)
        _save_version(out, after, *new)
        left = {name: data for name, data in snapshot(out).items() if not name.startswith(".")}
        if "config.json" not in left:
            with pytest.raises((CheckpointError, FileNotFoundError), match=str(out)):
                GPTClassifier.from_pretrained(out)
            seen.add("refused")
            continue
        match = [name for name, files in versions.items() if left == files]
        assert match, f"killed after step {after}: the files are a mixture of two versions"
        seen.add(match[0])
    assert seen >= {"old", "new"}


@pytest.mark.parametrize("command", ["prepare", "tokenizer"])
def test_a_file_size_limit_in_prepare_and_tokenizer_train_names_the_file(command, corpus, tok_dir, tmp_path):
    out = tmp_path / "out"
    big = tmp_path / "big.txt"
    big.write_text(corpus.read_text() * 20)
    argv = command_args(command, out, big, tok_dir, None, None)
    proc = subprocess.run([sys.executable, "-m", "npgpt", *argv], preexec_fn=_limited(3000), cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=300)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1 and last.startswith("npgpt: error: "), proc.stderr
    assert f"{out}/" in last and "File too large" in last, last
    assert not out.exists() or debris(out) == []


@pytest.mark.parametrize("command", ["prepare", "train"])
def test_a_lock_file_that_is_a_link_is_refused_and_its_target_untouched(command, corpus, tok_dir, data_dir,
                                                                       tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_text("not npgpt's")
    out = tmp_path / "out"
    out.mkdir()
    (out / rundir.LOCK_NAME).symlink_to(elsewhere)
    argv = (command_args("prepare", out, corpus, tok_dir, None, None) if command == "prepare" else
            ["train", "--data", str(data_dir), "--out", str(out), "--max-steps", "2", *TRAIN_FLAGS])
    assert main(argv + (["--overwrite"] if command == "prepare" else [])) == 1
    one_line_error(capsys, str(out / rundir.LOCK_NAME), "not a regular file")
    assert elsewhere.read_text() == "not npgpt's" and (out / rundir.LOCK_NAME).is_symlink()


def test_a_killed_saves_staging_is_removed_by_the_next_save_of_the_same_directory(tmp_path):
    from npgpt.tokenizer import Tokenizer

    out = tmp_path / "data" / "tokenizer"            # where prepare saves its tokenizer
    out.mkdir(parents=True)
    _die_while_writing(f"""
        from npgpt.io import fileio
        with fileio.private_directory({str(out)!r}, ".saving.") as staging:
            fileio.atomic_write(staging / "vocab.json", "{{}}")
            fileio.temporary_file({str(out / "vocab.json")!r})
            import os, signal
            os.kill(os.getpid(), signal.SIGKILL)
    """, ROOT)
    assert len(debris(out)) == 2
    Tokenizer.train(TEXT, 270, show_progress=False).save(out)
    assert debris(out) == [] and Tokenizer.from_pretrained(out).vocab_size == 270
