"""The training loop: exact resume, atomic checkpoints, divergence, logs, and a real short run."""

import json
import math
import os
import pathlib
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from char_tokenizer import CharTokenizer, prepare_two_documents

import npgpt.functional as F
from npgpt.model import GPT, GPTConfig
from npgpt.training import data
from npgpt.training.optim import AdamW
from npgpt.training.train import CHECKPOINT_DIR, TrainConfig, Trainer, TrainingDiverged, find_checkpoint, train

ROOT = pathlib.Path(__file__).resolve().parents[1]
TEXT = ("ROMEO:\nBut, soft! what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n"
        "Arise, fair sun, and kill the envious moon,\nWho is already sick and pale with grief.\n") * 12
TINY = dict(n_layer=1, n_head=2, n_embd=16, block_size=16, batch_size=4, warmup_steps=2, lr=3e-3, min_lr=3e-4,
            eval_iters=2, log_interval=3)


def quiet(line):
    pass


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    prepare_two_documents(TEXT, out)
    return out


def _weights(trainer):
    return {name: p.data.copy() for name, p in trainer.model.named_parameters()}


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert np.array_equal(a[name], b[name]), f"{name} differs"


@pytest.mark.parametrize("settings", [dict(dropout=0.1, grad_accum=2), dict(dropout=0.0, workers=2)],
                         ids=["dropout-accum", "two-workers"])
def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, data_dir, settings):
    config = dict(TINY, data_dir=str(data_dir), max_steps=12, eval_interval=5, **settings)
    straight, _ = train(TrainConfig(out_dir=str(tmp_path / "a"), **config), log=quiet)
    train(TrainConfig(out_dir=str(tmp_path / "b"), **config), stop_at=7, log=quiet)
    state = json.loads((tmp_path / "b" / CHECKPOINT_DIR / "trainer_state.json").read_text())
    assert state["step"] == 7 and state["sampler"]["batches"] == 7 * config.get("grad_accum", 1)
    resumed, summary = train(resume=True, out_dir=str(tmp_path / "b"), log=quiet)
    assert summary["step"] == 12 and summary["steps"] == 5
    _assert_same_weights(_weights(straight), _weights(resumed))
    # ... and the optimizer moments, and the loss curve on disk
    for name, s in straight.optimizer.state.items():
        assert np.array_equal(s["exp_avg_sq"], resumed.optimizer.state[name]["exp_avg_sq"])
    assert (tmp_path / "a" / "loss.csv").read_text() == (tmp_path / "b" / "loss.csv").read_text()


def test_checkpoint_is_a_model_directory_with_tokenizer_and_state(tmp_path, data_dir):
    trainer, _ = train(TrainConfig(out_dir=str(tmp_path), data_dir=str(data_dir), max_steps=3, eval_interval=3,
                                   **{k: v for k, v in TINY.items()}), log=quiet)
    ckpt = tmp_path / CHECKPOINT_DIR
    assert sorted(p.name for p in ckpt.iterdir()) == ["chars.json", "config.json", "model.safetensors",
                                                      "optimizer.safetensors", "trainer_state.json"]
    loaded = GPT.from_pretrained(ckpt)
    x = np.arange(8)[None, :] % 5
    trainer.model.eval()
    np.testing.assert_array_equal(loaded(x).data, trainer.model(x).data)
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["model_config"]["vocab_size"] == loaded.config.vocab_size
    assert state["train_config"]["max_steps"] == 3
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []     # no staging left behind


@pytest.mark.slow
def test_checkpoint_loads_in_transformers(tmp_path, data_dir):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    trainer, _ = train(TrainConfig(out_dir=str(tmp_path), data_dir=str(data_dir), max_steps=2, eval_interval=2,
                                   **TINY), log=quiet)
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / CHECKPOINT_DIR).eval()
    x = (np.arange(10)[None, :] * 3) % trainer.model.config.vocab_size
    with torch.no_grad():
        expected = hf(torch.from_numpy(x)).logits.numpy()
    trainer.model.eval()
    np.testing.assert_allclose(trainer.model(x).data, expected, atol=1e-4)


def test_an_interrupted_save_is_ignored_and_an_orphaned_backup_is_recovered(tmp_path, data_dir):
    config = TrainConfig(out_dir=str(tmp_path), data_dir=str(data_dir), max_steps=6, eval_interval=3, **TINY)
    train(config, stop_at=3, log=quiet)
    # A killed save leaves a staging directory with a partial checkpoint (no trainer_state.json).
    partial = tmp_path / ".checkpoint.saving-dead" / CHECKPOINT_DIR
    shutil.copytree(tmp_path / CHECKPOINT_DIR, partial)
    (partial / "trainer_state.json").unlink()
    assert find_checkpoint(tmp_path) == tmp_path / CHECKPOINT_DIR
    # A crash between the two renames of a save leaves only the backup of the old checkpoint.
    backup = tmp_path / ".checkpoint.old-x"
    backup.mkdir()
    os.rename(tmp_path / CHECKPOINT_DIR, backup / CHECKPOINT_DIR)
    assert find_checkpoint(tmp_path) == backup / CHECKPOINT_DIR
    trainer, summary = train(resume=True, out_dir=str(tmp_path), log=quiet)
    assert summary["step"] == 6 and not partial.exists() and not backup.exists()     # both cleaned up
    assert json.loads((tmp_path / CHECKPOINT_DIR / "trainer_state.json").read_text())["step"] == 6


@pytest.mark.slow
def test_sigkill_during_a_save_resumes_from_the_last_complete_checkpoint(tmp_path, data_dir):
    settings = dict(TINY, max_steps=9, eval_interval=3)
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in settings.items()]
    env = dict(os.environ, NPGPT_TEST_PAUSE_IN_SAVE="6:60", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "npgpt", "train", "--data", str(data_dir),
                             "--out", str(tmp_path / "killed"), *flags],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env, cwd=ROOT)
    try:
        for line in proc.stderr:
            if "pausing inside the save of step 6" in line:
                break
        else:
            pytest.fail("the training subprocess never reached the save of step 6")
        os.kill(proc.pid, signal.SIGKILL)             # no cleanup handlers run
    finally:
        proc.wait(timeout=30)
    assert any(p.name.startswith(".checkpoint.saving-") for p in (tmp_path / "killed").iterdir())
    assert json.loads((tmp_path / "killed" / CHECKPOINT_DIR / "trainer_state.json").read_text())["step"] == 3
    resumed, summary = train(resume=True, out_dir=str(tmp_path / "killed"), log=quiet)
    assert summary["step"] == 9 and summary["steps"] == 6
    straight, _ = train(TrainConfig(out_dir=str(tmp_path / "straight"), data_dir=str(data_dir), **settings),
                        log=quiet)
    _assert_same_weights(_weights(straight), _weights(resumed))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_non_finite_loss_stops_naming_the_step_and_keeps_the_checkpoint(tmp_path, data_dir):
    config = TrainConfig(out_dir=str(tmp_path), data_dir=str(data_dir), max_steps=10, eval_interval=2, **TINY)
    trainer, _ = train(config, stop_at=4, log=quiet)
    saved = (tmp_path / CHECKPOINT_DIR / "model.safetensors").read_bytes()
    trainer.model.h[0].mlp.c_fc.weight.data[0, 0] = np.inf
    before = _weights(trainer)
    with pytest.raises(TrainingDiverged, match=r"step 5.*last good checkpoint .*step 4"):
        trainer.train()
    _assert_same_weights(before, _weights(trainer))              # no update was applied
    assert (tmp_path / CHECKPOINT_DIR / "model.safetensors").read_bytes() == saved


@pytest.mark.parametrize("val_loss", [800.0, 1e308, float("inf"), float("nan")])
def test_a_validation_loss_beyond_exp_range_is_divergence_in_train_and_at_resume(tmp_path, data_dir, val_loss,
                                                                                  monkeypatch, capsys):
    """A finite loss above log(float max) = 709.78 overflows the perplexity exp(loss): it stops the run as a
    non-finite loss does, naming the step and the last good checkpoint, in a fresh run and at a resume."""
    from npgpt.apps.cli import main
    from npgpt.training.train import MAX_VAL_LOSS, Trainer

    assert 709 < MAX_VAL_LOSS < 710 and math.isfinite(math.exp(MAX_VAL_LOSS))
    config = TrainConfig(out_dir=str(tmp_path / "run"), data_dir=str(data_dir), max_steps=6, eval_interval=2, **TINY)
    train(config, stop_at=4, log=quiet)
    monkeypatch.setattr(Trainer, "evaluate", lambda self: val_loss)
    with pytest.raises(TrainingDiverged, match=r"step 6: validation loss .*last good checkpoint .*step 4"):
        train(resume=True, out_dir=str(tmp_path / "run"), log=quiet)
    with pytest.raises(TrainingDiverged, match=r"step 0: validation loss .*no checkpoint was written yet"):
        train(TrainConfig(out_dir=str(tmp_path / "fresh"), data_dir=str(data_dir), max_steps=2, **TINY), log=quiet)
    assert main(["train", "--resume", "--out", str(tmp_path / "run"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("npgpt: error: training diverged at step 6") and err.count("\n") == 1, err


def test_the_loss_is_the_negative_mean_log_likelihood_of_the_next_tokens():
    # docs/training.md eq:log-likelihood and eq:cross-entropy-loss: L_train = -(1/N) sum_i log p(x_i | x_<i),
    # p from the model's softmax
    model = GPT(GPTConfig(vocab_size=30, block_size=8, n_layer=1, n_head=2, n_embd=8))
    seq = np.random.default_rng(1).integers(0, 30, (2, 9))
    x, y = seq[:, :-1], seq[:, 1:]
    logits = model(x).data.astype(np.float64)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    log_likelihood = np.log(np.take_along_axis(probs, y[..., None], -1)).sum()      # eq:log-likelihood
    assert F.cross_entropy(model(x), y).item() == pytest.approx(-log_likelihood / y.size, rel=1e-5)


def test_gradient_accumulation_equals_the_full_batch_gradient():
    # docs/training.md eq:grad-accumulation: the gradient of the mean over K micro-batches, each loss scaled by 1/K
    model = GPT(GPTConfig(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=8))
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 20, (6, 8)), rng.integers(0, 20, (6, 8))
    F.cross_entropy(model(x), y).backward()
    full = {n: p.grad.copy() for n, p in model.named_parameters()}
    model.zero_grad()
    for k in range(3):
        (F.cross_entropy(model(x[2 * k:2 * k + 2]), y[2 * k:2 * k + 2]) * (1 / 3)).backward()
    for n, p in model.named_parameters():
        np.testing.assert_allclose(p.grad, full[n], rtol=1e-4, atol=1e-7)


def test_log_files_and_log_line(tmp_path, data_dir):
    lines = []
    config = TrainConfig(out_dir=str(tmp_path), data_dir=str(data_dir), max_steps=6, eval_interval=3,
                         peak_flops=1e9, **TINY)
    trainer, summary = train(config, log=lines.append)
    step_lines = [line for line in lines if "tok/s" in line]
    assert len(step_lines) == 2 and "step      3/6 | loss " in step_lines[0]
    assert all(word in step_lines[0] for word in ("| lr ", "| norm ", " tok/s | MFU ", "% | ETA "))
    val_lines = [line for line in lines if "val loss" in line]
    assert len(val_lines) == 3 and "val ppl" in val_lines[0]          # before training, at 3, at 6
    rows = (tmp_path / "loss.csv").read_text().splitlines()
    assert rows[0] == "step,train_loss,val_loss,lr" and len(rows) == 1 + 7
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(7))
    assert records[3]["val_ppl"] == pytest.approx(math.exp(records[3]["val_loss"]))   # docs/training.md eq:perplexity
    # MFU = tokens/s x FLOPs per token / peak (docs/performance.md eq:mfu)
    assert records[3]["mfu"] == pytest.approx(records[3]["tokens_per_s"] * trainer.flops_per_token / 1e9)


def test_refuses_to_overwrite_a_run_and_to_resume_nothing(tmp_path, data_dir):
    config = TrainConfig(out_dir=str(tmp_path), data_dir=str(data_dir), max_steps=2, eval_interval=2, **TINY)
    train(config, log=quiet)
    with pytest.raises(FileExistsError, match="--resume"):
        train(config, log=quiet)
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        Trainer.resume(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="n_embd"):
        Trainer.resume(tmp_path, n_embd=32)
    with pytest.raises(ValueError, match="block_size"):
        TrainConfig(out_dir=str(tmp_path / "x"), data_dir=str(data_dir), block_size=0)
    with pytest.raises(ValueError, match="fewer than block_size"):
        Trainer(TrainConfig(out_dir=str(tmp_path / "y"), data_dir=str(data_dir), block_size=4096))


@pytest.mark.slow
def test_real_training_on_shakespeare_lowers_the_validation_loss(tmp_path):
    datasets = pytest.importorskip("npgpt.datasets")
    try:
        text = datasets.load_text("shakespeare")
    except datasets.DatasetUnavailable as exc:
        pytest.skip(f"the Shakespeare corpus cannot be fetched here: {exc}")
    text = text[:400_000]
    data.prepare_documents([text], CharTokenizer(text), tmp_path / "data", progress=False)
    config = TrainConfig(data_dir=str(tmp_path / "data"), out_dir=str(tmp_path / "run"), n_layer=2, n_head=2,
                         n_embd=64, block_size=64, batch_size=16, max_steps=60, warmup_steps=6, lr=3e-3,
                         min_lr=3e-4, eval_interval=30, eval_iters=8, log_interval=20)
    _, summary = train(config, log=quiet)
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    val = [r["val_loss"] for r in records if "val_loss" in r]
    assert val[0] == pytest.approx(math.log(config_vocab(tmp_path / "data")), rel=0.05)   # ~ uniform at start
    assert val[-1] < val[0] - 1.0                 # characters of English are far from uniform
    assert summary["val_loss"] == val[-1] < 3.0


def config_vocab(data_dir):
    return data.load_meta(data_dir)["vocab_size"]


def test_optimizer_state_in_a_checkpoint_is_complete(tmp_path, data_dir):
    trainer, _ = train(TrainConfig(out_dir=str(tmp_path), data_dir=str(data_dir), max_steps=3, eval_interval=3,
                                   **TINY), log=quiet)
    from safetensors.numpy import load_file

    tensors = load_file(tmp_path / CHECKPOINT_DIR / "optimizer.safetensors")
    names = [n for n, _ in trainer.model.named_parameters()]
    assert sorted(tensors) == sorted(f"{n}.{k}" for n in names for k in AdamW.state_keys)
    for n in names:
        np.testing.assert_array_equal(tensors[f"{n}.exp_avg"], trainer.optimizer.state[n]["exp_avg"])


def test_loss_curve_script_plots_a_real_log(tmp_path, data_dir):
    pytest.importorskip("matplotlib")
    import importlib.util

    spec = importlib.util.spec_from_file_location("loss_curve", ROOT / "docs" / "scripts" / "loss_curve.py")
    loss_curve = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loss_curve)
    train(TrainConfig(out_dir=str(tmp_path / "run"), data_dir=str(data_dir), max_steps=4, eval_interval=2, **TINY),
          log=quiet)
    assert loss_curve.moving_average([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert loss_curve.main([str(tmp_path / "run"), "--out", str(tmp_path / "curve.png")]) == 0
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(FileNotFoundError, match="log.jsonl"):
        loss_curve.read_log(tmp_path / "nothing")


def test_a_malformed_optimizer_or_trainer_state_is_a_named_error(tmp_path, data_dir):
    from safetensors.numpy import save_file

    from npgpt.io.checkpoint import CheckpointError

    config = TrainConfig(out_dir=str(tmp_path), data_dir=str(data_dir), max_steps=4, eval_interval=2, **TINY)
    train(config, stop_at=2, log=quiet)
    ckpt = tmp_path / CHECKPOINT_DIR
    state_path = ckpt / "trainer_state.json"
    good_state = state_path.read_text()
    state = json.loads(good_state)
    state["sampler"] = "not a sampler state"
    state_path.write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match="trainer_state.json holds a state npgpt cannot continue from"):
        train(resume=True, out_dir=str(tmp_path), log=quiet)
    state_path.write_text(good_state)
    save_file({"x": np.zeros(1, np.float32)}, str(ckpt / "optimizer.safetensors"),
              metadata={"npgpt_optimizer": json.dumps({"steps": 5})})
    with pytest.raises(CheckpointError, match="optimizer.safetensors is not a valid optimizer state"):
        train(resume=True, out_dir=str(tmp_path), log=quiet)
