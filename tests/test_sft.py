"""Supervised fine-tuning (npgpt/finetuning/sft.py, docs/agent.md "The SFT objective")."""

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tiny_models import tiny_model_dir

import npgpt
from npgpt import F
from npgpt.apps.cli import main
from npgpt.finetuning.conversations import IGNORE_INDEX
from npgpt.finetuning.sft import SFTConfig, SFTTrainer, sft_loss
from npgpt.tokenizer.chat import CHATML_V1

WORDS = ["cat", "dog", "horse", "apple", "river", "table", "window", "garden", "music", "winter", "summer", "bread"]
QUIET = dict(log_interval=100, eval_interval=100, workers=1, warmup_steps=0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random GPT with npgpt-small's tokenizer, saved as a model directory."""
    root = tmp_path_factory.mktemp("sft-tiny")
    tiny_model_dir(root / "model", npgpt.Tokenizer.from_pretrained("npgpt-small"), n_embd=16, seed=3)
    rows = [{"prompt": f"Define {w}.", "response": f"A {w} has {len(w)} letters."} for w in WORDS]
    (root / "chats.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows * 3))
    return root


def hand_loss(logits, y):
    """docs/agent.md eq:sft-loss by hand in float64: -(1/N) sum over unmasked (b, t) of log softmax(z_bt)[y_bt]."""
    z = logits.astype(np.float64)
    logp = z - z.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    mask = y != IGNORE_INDEX
    picked = np.take_along_axis(logp, np.where(mask, y, 0)[..., None], -1)[..., 0]
    return -(picked * mask).sum() / mask.sum()


@given(st.integers(0, 2**31 - 1), st.integers(1, 3), st.integers(2, 6))
def test_the_loss_is_the_masked_mean_over_the_batch(seed, B, T):
    """docs/agent.md eq:sft-loss: the mean over every unmasked target of the batch, not a mean of per-row means."""
    rng = np.random.default_rng(seed)
    model = npgpt.GPT(npgpt.GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=1, n_embd=8), seed=seed % 100)
    x = rng.integers(0, 11, (B, T))
    y = np.where(rng.random((B, T)) < 0.5, rng.integers(0, 11, (B, T)), IGNORE_INDEX)
    y[0, 0] = 3                                                 # at least one target
    with npgpt.no_grad():
        got = sft_loss(model, x, y).item()
        logits = model(x).numpy()
    assert got == pytest.approx(hand_loss(logits, y), rel=1e-5, abs=1e-6)


@given(st.integers(0, 2**31 - 1))
def test_masked_positions_get_exactly_zero_gradient(seed):
    """docs/agent.md eq:sft-grad: dL/dz at a masked position is exactly 0; elsewhere (softmax - onehot) / N."""
    rng = np.random.default_rng(seed)
    z = npgpt.tensor(rng.standard_normal((2, 5, 7)), requires_grad=True)     # float64 logits
    y = np.where(rng.random((2, 5)) < 0.5, rng.integers(0, 7, (2, 5)), IGNORE_INDEX)
    y[1, 2] = 4
    F.cross_entropy(z, y, ignore_index=IGNORE_INDEX).backward()
    masked = y == IGNORE_INDEX
    assert (z.grad[masked] == 0).all()
    p = np.exp(z.data - z.data.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    onehot = np.eye(7)[np.where(masked, 0, y)]
    expected = (p - onehot) * (~masked)[..., None] / (~masked).sum()
    np.testing.assert_allclose(z.grad, expected, rtol=1e-10, atol=1e-12)


def test_fine_tuning_lowers_the_held_out_response_loss(tiny, tmp_path):
    trainer = SFTTrainer(SFTConfig(model=str(tiny / "model"), data=str(tiny / "chats.jsonl"),
                                   out_dir=str(tmp_path / "run"), max_steps=20, lr=3e-3, batch_size=4,
                                   **QUIET), log=lambda line: None)
    start = trainer.evaluate()
    summary = trainer.train()
    assert summary["val_loss"] < start - 0.5, (start, summary["val_loss"])
    # The checkpoint is a chat model: the template and the grown table travel with it.
    tok = npgpt.Tokenizer.from_pretrained(tmp_path / "run" / "checkpoint")
    assert tok.chat_template == CHATML_V1 and tok.vocab_size == 8194
    assert npgpt.GPT.from_pretrained(tmp_path / "run" / "checkpoint").config.vocab_size == 8194


def test_resume_continues_exactly(tiny, tmp_path):
    settings = dict(model=str(tiny / "model"), data=str(tiny / "chats.jsonl"), max_steps=6, lr=3e-3, batch_size=3,
                    **QUIET)
    SFTTrainer(SFTConfig(out_dir=str(tmp_path / "a"), **settings), log=lambda line: None).train()
    SFTTrainer(SFTConfig(out_dir=str(tmp_path / "b"), **settings), log=lambda line: None).train(stop_at=3)
    SFTTrainer.resume(tmp_path / "b", log=lambda line: None).train()
    a = npgpt.GPT.from_pretrained(tmp_path / "a" / "checkpoint")
    b = npgpt.GPT.from_pretrained(tmp_path / "b" / "checkpoint")
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        np.testing.assert_array_equal(p.numpy(), q.numpy(), err_msg=name)
    rows = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train_loss" in r] == [1, 2, 3, 4, 5, 6]


def test_float16_runs(tiny, tmp_path):
    trainer = SFTTrainer(SFTConfig(model=str(tiny / "model"), data=str(tiny / "chats.jsonl"), dtype="float16",
                                   out_dir=str(tmp_path / "run"), max_steps=2, batch_size=2, **QUIET),
                         log=lambda line: None)
    assert np.isfinite(trainer.train()["val_loss"])


def test_the_command(tiny, tmp_path, capsys):
    assert main(["sft", "--model", str(tiny / "model"), "--data", str(tiny / "chats.jsonl"), "--out",
                 str(tmp_path / "run"), "--max-steps", "2", "--batch-size", "2", "--workers", "1", "--quiet"]) == 0
    assert "held-out response loss" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "response": "b"}\n{"messages": [{"role": "user", "content": "hi"}]}\n')
    assert main(["sft", "--model", str(tiny / "model"), "--data", str(bad), "--out", str(tmp_path / "r2")]) == 1
    assert f"{bad}:2: the conversation has no assistant turn" in capsys.readouterr().err
    assert main(["sft", "--model", str(tiny / "model"), "--data", str(tiny / "chats.jsonl"), "--out",
                 str(tmp_path / "r3"), "--block-size", "65"]) == 1
    assert "--block-size=65 is longer than the 64 positions" in capsys.readouterr().err
    assert main(["sft", "--out", str(tmp_path / "r4")]) == 1
    assert "needs --model and --data" in capsys.readouterr().err


def _npgpt(*args, ranks=1):
    import os
    import shutil
    import subprocess
    import sys

    command = [sys.executable, "-m", "npgpt", *map(str, args)]
    if ranks > 1:
        mpiexec = shutil.which("mpiexec")
        if mpiexec is None:
            pytest.skip("mpiexec not found (pip install -e \".[mpi]\")")
        command = [mpiexec, "-n", str(ranks)] + command
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.mark.slow
def test_ctrl_c_stops_with_a_checkpoint_and_resume_continues(tiny, tmp_path):
    import signal
    import time

    run = tmp_path / "run"
    proc = _npgpt("sft", "--model", tiny / "model", "--data", tiny / "chats.jsonl", "--out", run, "--max-steps",
                  "100000", "--batch-size", "2", "--log-interval", "1", "--eval-interval", "100000", "--workers", "1")
    deadline = time.time() + 120
    for line in proc.stderr:
        if "step      2/" in line:
            break
        assert time.time() < deadline
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and f"continue with: npgpt sft --out {run} --resume" in err
    step = json.loads((run / "checkpoint" / "trainer_state.json").read_text())["step"]
    assert main(["sft", "--out", str(run), "--resume", "--stop-at", str(step + 1), "--quiet"]) == 0
    assert json.loads((run / "checkpoint" / "trainer_state.json").read_text())["step"] == step + 1


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["--lora-rank", "4", "--lora-targets", "c_attn,c_fc", "--shard-optimizer"]],
                         ids=["full", "lora-zero1"])
def test_two_mpi_ranks_train_as_one_process(tiny, tmp_path, extra):
    # docs/distributed.md: 2 ranks of 2 rows each = 1 process of 4 rows; with LoRA (and AdamW's moments
    # sharded over the ranks) the adapters, and so the merged checkpoint, are the same too
    pytest.importorskip("mpi4py")
    from safetensors.numpy import load_file

    from npgpt.finetuning import lora

    args = ["sft", "--model", tiny / "model", "--data", tiny / "chats.jsonl", "--max-steps", "3", "--batch-size", "4",
            "--lr", "3e-3", "--workers", "1", "--quiet", *extra]
    for ranks in (1, 2):
        proc = _npgpt(*args, "--out", tmp_path / f"r{ranks}", ranks=ranks)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    files = ["model.safetensors"] + ([f"{lora.CHECKPOINT_ADAPTER}/{lora.ADAPTER_WEIGHTS}"] if extra else [])
    for file in files:
        one, two = (load_file(tmp_path / f"r{r}" / "checkpoint" / file) for r in (1, 2))
        assert one.keys() == two.keys()
        for name in one:
            np.testing.assert_allclose(one[name], two[name], rtol=1e-4, atol=1e-5, err_msg=f"{file}: {name}")
    if extra:
        adapter = load_file(tmp_path / "r2" / "checkpoint" / lora.CHECKPOINT_ADAPTER / lora.ADAPTER_WEIGHTS)
        assert any(a.any() for name, a in adapter.items() if "lora_B" in name)      # the adapters did train


def test_a_step_and_an_answer_on_each_device(tiny, tmp_path, device):
    """The same run on the CPU and on the device (CuPy; the stand-in in CI): finite, equal within float32."""
    settings = dict(model=str(tiny / "model"), data=str(tiny / "chats.jsonl"), max_steps=2, lr=3e-3, batch_size=3,
                    **QUIET)
    results = {}
    for where in dict.fromkeys(("cpu", device)):
        trainer = SFTTrainer(SFTConfig(out_dir=str(tmp_path / where), device=where, **settings), log=lambda line: None)
        results[where] = trainer.train()["val_loss"]
        session = npgpt.ChatSession(trainer.model, trainer.tokenizer, temperature=0, max_new_tokens=4)
        assert isinstance(session.send("Define cat."), str)
    assert np.isfinite(results[device]) and results[device] == pytest.approx(results["cpu"], rel=1e-4)
