"""Data parallelism under mpiexec (docs/distributed.md): N ranks equal one process, resume across N, no hangs."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from char_tokenizer import prepare_two_documents

from npgpt.training.distributed import World, partition

MPIEXEC = shutil.which("mpiexec")
TEXT = ("ROMEO:\nBut, soft! what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n") * 40
RUN = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "6",
       "--max-steps", "20", "--eval-interval", "10", "--eval-iters", "2", "--log-interval", "5", "--lr", "3e-3",
       "--workers", "1", "--quiet"]

needs_mpi = pytest.mark.skipif(MPIEXEC is None, reason="mpiexec not found (pip install -e \".[mpi]\")")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    pytest.importorskip("mpi4py")
    out = tmp_path_factory.mktemp("mpi") / "data"
    prepare_two_documents(TEXT, out)
    return out


def npgpt(*args, ranks=1, timeout=300):
    command = [sys.executable, "-m", "npgpt", *map(str, args)]
    if ranks > 1:
        command = [MPIEXEC, "-n", str(ranks)] + command
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return proc


def losses(run):
    return [row["train_loss"] for row in map(json.loads, (run / "log.jsonl").read_text().splitlines())
            if "train_loss" in row]


def weights(run):
    from safetensors.numpy import load_file

    return load_file(run / "checkpoint" / "model.safetensors")


def assert_close(a, b, tol):
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=tol, atol=tol, err_msg=name)


def test_a_world_of_one_does_nothing_and_rows_split_a_batch():
    world = World()
    assert (world.rank, world.size, world.is_main) == (0, 1, True)
    assert world.rows(6) == slice(0, 6) and world.sum_floats([1.5, 2.0]) == [1.5, 2.0]
    for size in (2, 3, 4):
        for batch in (4, 6, 7):
            parts = [slice(batch * r // size, batch * (r + 1) // size) for r in range(size)]
            assert parts[0].start == 0 and parts[-1].stop == batch
            assert all(a.stop == b.start for a, b in zip(parts, parts[1:]))


def test_partition_balances_parameters_across_ranks():
    sizes = [100, 10, 10, 100, 50, 50, 7, 3]
    for ranks in (2, 3):
        owners = partition(sizes, ranks)
        load = [sum(s for s, o in zip(sizes, owners) if o == r) for r in range(ranks)]
        assert max(load) - min(load) <= max(sizes)          # greedy: within one parameter of even
        assert owners == partition(sizes, ranks)             # every rank computes the same assignment


@needs_mpi
@pytest.mark.slow
def test_two_ranks_equal_one_process_and_are_reproducible(tmp_path, data_dir):
    npgpt("train", "--data", data_dir, "--out", tmp_path / "one", *RUN)
    npgpt("train", "--data", data_dir, "--out", tmp_path / "two", *RUN, ranks=2)
    npgpt("train", "--data", data_dir, "--out", tmp_path / "again", *RUN, ranks=2)
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(one) == len(two) == 20
    np.testing.assert_allclose(two, one, rtol=1e-5)
    assert_close(weights(tmp_path / "two"), weights(tmp_path / "one"), 1e-5)
    # The same N: byte for byte.
    assert ((tmp_path / "two" / "checkpoint" / "model.safetensors").read_bytes()
            == (tmp_path / "again" / "checkpoint" / "model.safetensors").read_bytes())
    assert losses(tmp_path / "again") == two


@needs_mpi
@pytest.mark.slow
def test_a_sharded_optimizer_equals_the_unsharded_one(tmp_path, data_dir):
    npgpt("train", "--data", data_dir, "--out", tmp_path / "plain", *RUN, ranks=2)
    npgpt("train", "--data", data_dir, "--out", tmp_path / "zero", *RUN, "--shard-optimizer", ranks=2)
    assert_close(weights(tmp_path / "zero"), weights(tmp_path / "plain"), 1e-6)
    from safetensors.numpy import load_file

    # The checkpoint holds every parameter's moments in the usual single-file layout.
    full = load_file(tmp_path / "plain" / "checkpoint" / "optimizer.safetensors")
    gathered = load_file(tmp_path / "zero" / "checkpoint" / "optimizer.safetensors")
    assert full.keys() == gathered.keys()
    assert_close(gathered, full, 1e-6)


@needs_mpi
@pytest.mark.slow
def test_a_two_rank_checkpoint_resumes_in_one_process(tmp_path, data_dir):
    npgpt("train", "--data", data_dir, "--out", tmp_path / "straight", *RUN)
    npgpt("train", "--data", data_dir, "--out", tmp_path / "split", *RUN, "--stop-at", "10", "--shard-optimizer",
          ranks=2)
    npgpt("train", "--out", tmp_path / "split", "--resume", "--quiet")
    assert_close(weights(tmp_path / "split"), weights(tmp_path / "straight"), 1e-5)
    np.testing.assert_allclose(losses(tmp_path / "split"), losses(tmp_path / "straight"), rtol=1e-5)


@needs_mpi
@pytest.mark.slow
def test_a_killed_rank_ends_the_job(tmp_path, data_dir):
    out = tmp_path / "killed-run"
    command = [MPIEXEC, "-n", "2", sys.executable, "-m", "npgpt", "train", "--data", str(data_dir), "--out", str(out),
               *RUN[:-1], "--max-steps", "1000000", "--eval-interval", "1000000"]
    job = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ranks = []
    deadline = time.time() + 60
    while len(ranks) < 2 and time.time() < deadline:       # the two rank processes (not mpiexec's proxy)
        found = subprocess.run(["pgrep", "-f", f"npgpt train --data {data_dir} --out {out}"],
                               capture_output=True, text=True).stdout.split()
        ranks = [int(pid) for pid in found if int(pid) != job.pid and _is_python(int(pid))]
        time.sleep(0.2)
    assert len(ranks) == 2, ranks
    time.sleep(2.0)                                       # training is under way
    os.kill(max(ranks), signal.SIGKILL)
    start = time.time()
    try:
        job.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        job.kill()
        pytest.fail("the job hung after one rank was killed")
    assert job.returncode != 0 and time.time() - start < 60


def _is_python(pid):
    try:
        return "python" in pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    except OSError:
        return False


@needs_mpi
@pytest.mark.slow
def test_finetuning_on_two_ranks_equals_one_process(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT + "a good film. a bad film. " * 30)
    npgpt("tokenizer", "train", "--input", corpus, "--vocab-size", "300", "--out", tmp_path / "tok")
    npgpt("prepare", "--input", corpus, "--tokenizer", tmp_path / "tok", "--out", tmp_path / "data", "--quiet")
    npgpt("train", "--data", tmp_path / "data", "--out", tmp_path / "lm", *RUN)
    reviews = tmp_path / "reviews.csv"
    rows = [f"{'good' if i % 2 else 'bad'} film {i},{i % 2}" for i in range(60)]
    reviews.write_text("text,label\n" + "\n".join(rows) + "\n")
    args = ["finetune", "--model", tmp_path / "lm" / "checkpoint", "--data", reviews, "--epochs", "2",
            "--batch-size", "8", "--workers", "1", "--lr", "1e-3"]
    npgpt(*args, "--out", tmp_path / "one")
    two = npgpt(*args, "--out", tmp_path / "two", ranks=2)
    assert two.stdout.count("label counts:") == 1                 # rank 0 speaks for the job
    from safetensors.numpy import load_file

    assert_close(load_file(tmp_path / "two" / "model.safetensors"), load_file(tmp_path / "one" / "model.safetensors"),
                 1e-5)


def test_the_scaling_model_is_the_documented_formula():
    # docs/distributed.md eq:compute-time: compute = 6 N D / (peak MFU).
    # docs/distributed.md eq:ring-bandwidth: the ring's bytes, 2 (n-1)/n S / beta.
    # docs/distributed.md eq:all-reduce-latency: latency min(2 (n-1), 2 log2 n) a per bucket.
    import math

    from npgpt.training.distributed import Link, data_parallel_step

    link = Link("test", bandwidth=1e9, latency=1e-5)
    compute, comm = data_parallel_step(1e6, 1000, 8, link, peak=1e12, mfu=0.5, grad_bytes=4, bucket=2 ** 20)
    assert compute == 6 * 1e6 * 1000 / (1e12 * 0.5)
    buckets = math.ceil(4e6 / 2 ** 20)
    assert comm == 2 * 7 / 8 * 4e6 / 1e9 + 2 * math.log2(8) * 1e-5 * buckets
    assert data_parallel_step(1e6, 1000, 1, link)[1] == 0.0           # one GPU talks to nobody
    _, two = data_parallel_step(1e6, 1000, 2, link, bucket=2 ** 20)
    assert two == 2 * 1 / 2 * 4e6 / 1e9 + 2 * 1 * 1e-5 * buckets       # n = 2: ring and tree agree
