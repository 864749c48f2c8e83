"""Mixed precision (docs/training.md, "Mixed precision"): float16 products, float32 masters, loss scaling."""

import json

import numpy as np
import pytest
from char_tokenizer import prepare_two_documents

import npgpt.functional as F
from npgpt.autograd import Tensor
from npgpt.model import GPT, GPTConfig
from npgpt.training.mixed_precision import GradScaler
from npgpt.training.train import TrainConfig, Trainer, train

TEXT = ("ROMEO:\nBut, soft! what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n"
        "Arise, fair sun, and kill the envious moon,\nWho is already sick and pale with grief.\n") * 12
TINY = dict(n_layer=1, n_head=2, n_embd=32, block_size=16, batch_size=8, lr=3e-3, eval_iters=4, log_interval=10,
            eval_interval=40)


def quiet(line):
    pass


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    prepare_two_documents(TEXT, out)
    return out


def test_float16_products_match_float32_within_float16_precision():
    rng = np.random.default_rng(0)
    x = Tensor(rng.standard_normal((4, 6, 32)).astype(np.float32), requires_grad=True)
    w = Tensor(rng.standard_normal((32, 8)).astype(np.float32) * 0.1, requires_grad=True)
    b = Tensor(rng.standard_normal(8).astype(np.float32), requires_grad=True)
    outs = {}
    for dtype in (None, np.float16):
        for t in (x, w, b):
            t.grad = None
        y = F.linear(x, w, b, compute_dtype=dtype)
        assert y.dtype == np.float32                    # products in float16, results back in float32
        (y * y).sum().backward()
        outs[dtype] = (y.data, x.grad.copy(), w.grad.copy(), b.grad.copy())
        assert w.grad.dtype == np.float32
    for full, half in zip(outs[None], outs[np.float16]):
        np.testing.assert_allclose(half, full, rtol=2e-2, atol=2e-2 * np.abs(full).max())


def test_model_loss_and_gradients_in_float16_products():
    model = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32), seed=0)
    ids = np.random.default_rng(1).integers(0, 50, (2, 16))
    grads = {}
    for dtype in (None, "float16"):
        model.set_compute_dtype(dtype)
        loss = F.cross_entropy(model(ids[:, :-1]), ids[:, 1:])
        loss.backward()
        grads[dtype] = (loss.item(), {n: p.grad.copy() for n, p in model.named_parameters()})
        for p in model.parameters():
            p.grad = None
    assert grads["float16"][0] == pytest.approx(grads[None][0], rel=1e-3)
    for name, g in grads[None][1].items():
        half = grads["float16"][1][name]
        assert np.abs(half - g).max() <= 2e-2 * np.abs(g).max() + 1e-7, name


def test_scaler_halves_on_overflow_and_grows_after_good_steps():
    scaler = GradScaler(init_scale=2.0 ** 16, growth_interval=3)
    scaler.update(found_inf=True)
    assert scaler.scale == 2.0 ** 15 and scaler.skipped_steps == 1
    for _ in range(3):
        scaler.update(found_inf=False)
    assert scaler.scale == 2.0 ** 16 and scaler.good_steps == 0
    again = GradScaler()
    again.load_state_dict(scaler.state_dict())
    assert again.state_dict() == scaler.state_dict()


@pytest.mark.slow
def test_a_float16_run_reaches_the_float32_runs_validation_loss(tmp_path, data_dir):
    losses = {}
    for dtype in ("float32", "float16"):
        trainer, summary = train(TrainConfig(data_dir=str(data_dir), out_dir=str(tmp_path / dtype), max_steps=80,
                                             dtype=dtype, **TINY), log=quiet)
        losses[dtype] = summary["val_loss"]
    assert losses["float16"] == pytest.approx(losses["float32"], rel=0.03), losses
    saved = json.loads((tmp_path / "float16" / "checkpoint" / "trainer_state.json").read_text())
    assert saved["grad_scaler"]["scale"] > 0 and saved["train_config"]["dtype"] == "float16"
    # The checkpoint holds the float32 master weights.
    from safetensors.numpy import load_file

    tensors = load_file(tmp_path / "float16" / "checkpoint" / "model.safetensors")
    assert all(a.dtype == np.float32 for a in tensors.values())
    np.testing.assert_array_equal(tensors["transformer.wte.weight"], trainer.model.wte.weight.data)


def test_an_inf_gradient_skips_exactly_one_step_and_halves_the_scale(tmp_path, data_dir, monkeypatch):
    trainer = Trainer(TrainConfig(data_dir=str(data_dir), out_dir=str(tmp_path), max_steps=10, dtype="float16",
                                  **TINY), log=quiet)
    trainer.train_step()                                   # a normal step
    before = {n: p.data.copy() for n, p in trainer.model.named_parameters()}
    adam_steps = trainer.optimizer.step_count
    scale = trainer.scaler.scale
    real = trainer._loss_fn

    def poisoned(weight):            # the next backward pass puts an inf into ln_f.weight's gradient
        fn = real(weight)
        return lambda x, y: fn(x, y) + _inf_slope(trainer.model.ln_f.weight)

    monkeypatch.setattr(trainer, "_loss_fn", poisoned)
    loss, norm, _ = trainer.train_step()
    assert trainer.last_step_skipped and not np.isfinite(norm) and np.isfinite(loss)
    assert trainer.scaler.scale == scale / 2 and trainer.optimizer.step_count == adam_steps
    for n, p in trainer.model.named_parameters():
        np.testing.assert_array_equal(p.data, before[n])      # nothing moved
        assert p.grad is None
    monkeypatch.setattr(trainer, "_loss_fn", real)
    trainer.train_step()
    assert not trainer.last_step_skipped and trainer.optimizer.step_count == adam_steps + 1


def _inf_slope(w):
    """A term whose value is 0 and whose gradient with respect to ``w`` is inf: a float16 overflow, staged."""
    from npgpt.autograd.core import _make

    return _make(np.zeros((), np.float32), (w,), lambda g: (np.full(w.shape, np.inf, np.float32),))


def test_float16_resume_is_exact(tmp_path, data_dir):
    config = dict(TINY, data_dir=str(data_dir), max_steps=12, eval_interval=5, dtype="float16")
    straight, _ = train(TrainConfig(out_dir=str(tmp_path / "a"), **config), log=quiet)
    train(TrainConfig(out_dir=str(tmp_path / "b"), **config), stop_at=7, log=quiet)
    resumed, _ = train(resume=True, out_dir=str(tmp_path / "b"), log=quiet)
    assert resumed.scaler.state_dict() == straight.scaler.state_dict()
    for (name, p), q in zip(straight.model.named_parameters(), resumed.model.parameters()):
        np.testing.assert_array_equal(p.data, q.data, err_msg=name)


def test_bfloat16_and_unknown_types_are_refused_by_name():
    with pytest.raises(ValueError, match="dtype must be one of float32, float16, got 'bfloat16'.*bfloat16"):
        TrainConfig(dtype="bfloat16")
