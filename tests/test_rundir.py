"""Run directories (npgpt.training.rundir; docs/training.md, "Checkpoints and exact resume"): one
trainer at a time holds a run's lock, a resume survives a torn log and never deletes another's
staging directory, and a file where the checkpoint goes is refused, not deleted."""

import json
import os
import subprocess
import sys
import time

import pytest
from run_helpers import ROOT, TRAIN_FLAGS, holder_process

from npgpt.apps.cli import main
from npgpt.io import fileio
from npgpt.training import rundir


def test_a_second_trainer_on_a_run_directory_is_refused_naming_the_holder(data_dir, tmp_path, capsys):
    run = tmp_path / "run"
    holder = holder_process(run)
    try:
        rc = main(["train", "--data", str(data_dir), "--out", str(run), "--max-steps", "2", *TRAIN_FLAGS])
        err = capsys.readouterr().err
        assert rc == 1 and err.count("\n") == 1 and "Traceback" not in err
        assert f"is in use by another training run (pid {holder.pid} on " in err and "started 20" in err
        assert not (run / "checkpoint").exists() and not (run / "log.jsonl").exists()
    finally:
        holder.kill()                   # SIGKILL: the kernel releases the lock
        holder.wait(timeout=30)
    assert main(["train", "--data", str(data_dir), "--out", str(run), "--max-steps", "2", *TRAIN_FLAGS]) == 0
    assert not (run / rundir.LOCK_NAME).exists()             # a finished run leaves no lock file


def test_the_lock_is_exclusive_within_one_process_too(tmp_path):
    with rundir.lock(tmp_path / "run") as path:
        info = json.loads(path.read_text())
        assert info["pid"] == os.getpid() and info["host"] and info["started"].endswith("Z")
        with pytest.raises(rundir.RunDirectoryLocked, match=f"pid {os.getpid()}"), rundir.lock(tmp_path / "run"):
            pass
    with rundir.lock(tmp_path / "run"):           # released on exit
        pass


@pytest.mark.slow
def test_concurrent_resumes_do_not_delete_each_others_staging_directories(data_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(data_dir), "--out", str(run), "--max-steps", "8", "--stop-at", "2",
                 *TRAIN_FLAGS]) == 0
    log_before = (run / "log.jsonl").read_text()
    env = {**os.environ, "NPGPT_TEST_PAUSE_IN_SAVE": "4:60", "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen([sys.executable, "-m", "npgpt", "train", "--out", str(run), "--resume"],
                             stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env, cwd=ROOT)
    try:
        deadline = time.time() + 120
        for line in first.stderr:
            if "pausing inside the save of step 4" in line:
                break
            assert time.time() < deadline
        staging = fileio.stale_staging(run / rundir.CHECKPOINT_DIR)
        assert len(staging) == 1                                  # the first resume is mid-save
        assert main(["train", "--out", str(run), "--resume", "--quiet"]) == 1
        err = capsys.readouterr().err
        assert f"pid {first.pid}" in err and err.count("\n") == 1 and err.startswith("npgpt: error: ")
        assert fileio.stale_staging(run / rundir.CHECKPOINT_DIR) == staging     # not deleted from under it
        assert (run / "log.jsonl").read_text().startswith(log_before)         # nor its log truncated
    finally:
        first.kill()
        first.wait(timeout=30)
    assert main(["train", "--out", str(run), "--resume"]) == 0             # the killed one's lock is gone


def test_a_torn_last_log_line_does_not_block_resume(data_dir, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--data", str(data_dir), "--out", str(run), "--max-steps", "6", "--stop-at", "4",
                 *TRAIN_FLAGS]) == 0
    with open(run / "log.jsonl", "a") as f:
        f.write('{"step": 5, "train_loss": 3.1')               # what a full disk leaves: no end, no newline
    with open(run / "loss.csv", "a") as f:
        f.write("5,3.1")
    assert main(["train", "--out", str(run), "--resume"]) == 0
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    steps = [row["step"] for row in rows if "train_loss" in row]
    assert steps == list(range(1, 7))
    csv_steps = [int(line.split(",")[0]) for line in (run / "loss.csv").read_text().splitlines()[1:]]
    assert csv_steps == [0, *range(1, 7)] and all(len(line.split(",")) == 4 for line in
                                                 (run / "loss.csv").read_text().splitlines())


def test_a_file_where_the_checkpoint_directory_goes_is_refused_not_deleted(data_dir, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint").write_text("my notes")
    assert main(["train", "--data", str(data_dir), "--out", str(run), "--max-steps", "2", *TRAIN_FLAGS]) == 1
    err = capsys.readouterr().err
    assert "checkpoint exists and is not a directory" in err and err.count("\n") == 1
    assert (run / "checkpoint").read_text() == "my notes"
    with pytest.raises(NotADirectoryError):
        rundir.write_checkpoint(run, lambda staging: staging.mkdir(), {"step": 1})
    with pytest.raises(NotADirectoryError):
        fileio.replace_directory(fileio.staging_directory(run / "checkpoint"), run / "checkpoint")
    assert (run / "checkpoint").read_text() == "my notes"


def test_a_run_resumes_from_its_newest_complete_checkpoint_or_says_what_it_looked_for(data_dir, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match=f"{run} holds no complete checkpoint to resume from "
                                                f"\\(expected {run}/checkpoint/trainer_state.json\\)"):
        rundir.checkpoint_to_resume(run)
    assert main(["train", "--data", str(data_dir), "--out", str(run), "--max-steps", "4", "--stop-at", "2",
                 *TRAIN_FLAGS]) == 0
    checkpoint, state = rundir.checkpoint_to_resume(run)
    assert checkpoint == run / "checkpoint" and state["step"] == 2 and state["train_config"]["max_steps"] == 4
