"""Every path of npgpt on every device: the CPU always, "cuda" where CuPy sees a GPU or, with
``NPGPT_FAKE_CUDA=1``, on the CuPy stand-in (tests/fake_cupy.py), which also counts the copies
between host and device.

The "cuda" cases carry the ``gpu`` mark (see ``conftest.DEVICES``): ``NPGPT_FAKE_CUDA=1 pytest -m gpu``
runs them on a machine without a GPU, as CI's second pass does. Results are compared with the
CPU's with a tolerance, since a real GPU adds in another order; on the stand-in they are equal.
"""

import json
import re
from collections import Counter

import numpy as np
import pytest
from char_tokenizer import prepare_two_documents

import npgpt
import npgpt.functional as F
from npgpt import backend, nn, viz
from npgpt.apps.cli import main
from npgpt.finetuning import finetune
from npgpt.finetuning.classifier import GPTClassifier
from npgpt.io.inputs import as_array
from npgpt.model import GPT, GPTConfig
from npgpt.training import engine
from npgpt.training.optim import AdamW, param_groups
from npgpt.training.train import TrainConfig, Trainer

CONFIG = dict(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=16)
RTOL, ATOL = 1e-4, 1e-6        # float32 on a GPU sums in another order than on the CPU


def tiny(device="cpu", **overrides):
    return GPT(GPTConfig(**{**CONFIG, **overrides}), seed=0).to(device)


def host(a):
    return backend.to_numpy(as_array(a))


def batch(seed=0, B=3, T=12, V=40):
    rng = np.random.default_rng(seed)
    return rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))


# ---------------------------------------------------------------------- model
def test_forward_and_backward_agree_with_the_cpu(device):
    x, y = batch()
    reference, model = tiny(), tiny(device)
    for m in (reference, model):
        F.cross_entropy(m(x), y).backward()
    np.testing.assert_allclose(host(model(x)), host(reference(x)), rtol=RTOL, atol=ATOL)
    for (name, p), (_, q) in zip(model.named_parameters(), reference.named_parameters()):
        assert p.device == device and backend.device_of(p.grad) == device, name
        np.testing.assert_allclose(host(p.grad), q.grad, rtol=1e-3, atol=1e-6, err_msg=name)


def test_the_model_moves_in_place_and_back(device):
    model = tiny()
    params = model.parameters()
    assert model.to(device) is model and model.parameters() == params and model.device == device
    assert all(p.device == device for p in params)
    assert model.to("cpu").device == "cpu" and all(isinstance(p.data, np.ndarray) for p in params)


@pytest.mark.gpu
def test_mixing_host_and_device_tensors_is_a_clear_error(cuda):
    with pytest.raises(ValueError, match="different devices"):
        npgpt.tensor([1.0, 2.0]) + npgpt.tensor([1.0, 2.0], device="cuda")


@pytest.mark.gpu
def test_checking_inputs_already_on_the_device_reads_them_once(transfers):
    model = GPTClassifier(GPTConfig(**CONFIG), num_labels=3, seed=0).to("cuda")
    x, y = (backend.to_device(a, "cuda") for a in batch())
    mask = backend.to_device(np.ones(x.shape, np.int64), "cuda")

    def reads(fn):
        before = transfers()["to_host"]
        fn()
        return transfers()["to_host"] - before

    assert reads(lambda: model.transformer(x)) == 1                           # the ids' minimum and maximum
    gpt = model.transformer          # the trunk and the head trust device ids: only the targets are read
    assert reads(lambda: F.cross_entropy(gpt.lm_head(gpt.trunk(x)), y)) == 1   # count, min, max
    assert reads(lambda: model(x, attention_mask=mask)) == 2                  # the ids; the mask's three checks
    assert reads(lambda: model(x[:, :4].get(), attention_mask=mask[:, :4].get())) == 2    # .get() twice; checks free


def test_forward_backward_can_leave_the_loss_on_the_device(device):
    from npgpt.training import parallel

    x, y = batch()
    a, b = tiny(device), tiny(device)
    as_float = parallel.forward_backward(lambda i, t: F.cross_entropy(a(i), t), (x, y), a.parameters(), workers=1)
    on_device = parallel.forward_backward(lambda i, t: F.cross_entropy(b(i), t), (x, y), b.parameters(), workers=1,
                                          as_array=True)
    assert backend.device_of(on_device) == device and on_device.dtype == np.float64 and on_device.ndim == 0
    assert float(host(on_device)) == as_float
    for p, q in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(host(p.grad), host(q.grad))


# ----------------------------------------------------------------- generation
@pytest.mark.parametrize("settings", [dict(), dict(eos_token_id=7), dict(do_sample=True, top_k=8, top_p=0.9, seed=3)],
                         ids=["greedy", "eos", "sampled"])
def test_kv_cache_generation_on_the_device_equals_the_cpus(device, settings):
    prompt = np.array([[5, 9, 2], [1, 1, 30]])
    reference, model = tiny().eval(), tiny(device).eval()
    expected = reference.generate(prompt, 20, **settings)            # crosses block_size: the cache is rebuilt
    cached = model.generate(prompt, 20, **settings)
    assert backend.device_of(cached) == device
    np.testing.assert_array_equal(host(cached), expected)
    np.testing.assert_array_equal(host(model.generate(prompt, 20, use_cache=False, **settings)), expected)
    streamed = list(npgpt.generation.stream(model, prompt, 5, **settings))
    assert all(backend.device_of(t) == device for t in streamed)


def test_cuda_graph_generation_on_the_device_equals_the_cpus(device):
    # generate(..., cuda_graph=True) (npgpt/generation/cuda_graph.py): on a GPU the step is captured once
    # as a CUDA graph and replayed per token; its ids must be the CPU's plain greedy ids, to the last
    # position of the context (3 + 13 = block_size 16). benchmarks/gpu_check.sh runs this on its own.
    prompt = np.array([[5, 9, 2], [1, 1, 30]])
    expected = tiny().eval().generate(prompt, 13)
    model = tiny(device).eval()
    got = model.generate(prompt, 13, cuda_graph=True)
    assert backend.device_of(got) == device
    np.testing.assert_array_equal(host(got), expected)


@pytest.mark.gpu
def test_a_decode_step_copies_at_most_one_number_per_token(transfers):
    model = tiny("cuda").eval()
    prompt = np.array([[5, 9, 2]])
    for settings, per_token in ((dict(), {"to_host": 0, "to_device": 0}),
                                (dict(eos_token_id=39), {"to_host": 1, "to_device": 0}),     # "has every row ended?"
                                (dict(do_sample=True, seed=0), {"to_host": 0, "to_device": 1}),   # B uniforms
                                (dict(cuda_graph=True), {"to_host": 0, "to_device": 0})):         # one graph launch
        counts = []
        for n in (1, 9):
            before = transfers()
            out = model.generate(prompt, n, **settings)
            after = transfers()
            counts.append({k: after[k] - before[k] for k in after})
            assert backend.device_of(out) == "cuda"
        assert counts[0]["to_device"] == 1 + per_token["to_device"]       # the prompt, once
        assert {k: (counts[1][k] - counts[0][k]) / 8 for k in per_token} == per_token, settings


BATCHED = dict(attention_mask=np.array([[0, 0, 1], [1, 1, 1], [0, 1, 1]]), repetition_penalty=1.5, min_new_tokens=2,
               pad_token_id=0)


@pytest.mark.parametrize("settings", [dict(eos_token_id=7), dict(eos_token_id=[7, 8], do_sample=True, seed=[1, 2, 3])],
                         ids=["greedy", "sampled"])
def test_left_padded_generation_on_the_device_equals_the_cpus(device, settings):
    prompt = np.array([[0, 0, 2], [1, 1, 30], [0, 4, 5]])
    reference, model = tiny().eval(), tiny(device).eval()
    expected = reference.generate(prompt, 20, **BATCHED, **settings)     # crosses block_size
    np.testing.assert_array_equal(host(model.generate(prompt, 20, **BATCHED, **settings)), expected)
    np.testing.assert_array_equal(host(model.generate(prompt, 20, use_cache=False, **BATCHED, **settings)), expected)


@pytest.mark.gpu
def test_a_left_padded_decode_step_copies_no_more_than_an_unpadded_one(transfers):
    # The mask, the positions, the penalty's record of seen tokens and min_new_tokens stay on the device.
    model = tiny("cuda").eval()
    prompt = np.array([[0, 0, 2], [1, 1, 30], [0, 4, 5]])
    for settings, per_token in ((dict(), {"to_host": 0, "to_device": 0}),
                                (dict(eos_token_id=39), {"to_host": 1, "to_device": 0}),
                                (dict(do_sample=True, seed=[0, 1, 2]), {"to_host": 0, "to_device": 1})):
        counts = []
        for n in (1, 9):
            before = transfers()
            model.generate(prompt, n, **BATCHED, **settings)
            after = transfers()
            counts.append({k: after[k] - before[k] for k in after})
        assert {k: (counts[1][k] - counts[0][k]) / 8 for k in per_token} == per_token, settings


def test_the_generate_command_writes_the_cpus_text_on_the_device(device, capsys):
    argv = ["generate", "--model", "npgpt-small", "--max-new-tokens", "12", "--temperature", "0", "To be"]
    assert main([*argv, "--device", "cpu"]) == 0
    expected = capsys.readouterr().out
    assert main([*argv, "--device", device]) == 0
    assert capsys.readouterr().out == expected and len(expected) > len("To be")


@pytest.mark.gpu
def test_the_generate_command_reads_two_numbers_per_token(transfers, capsys):
    # The command prints each token as it comes (one number) and stops at <|endoftext|> (one boolean).
    argv = ["generate", "--model", "npgpt-small", "--temperature", "0", "--device", "cuda", "To be"]
    reads = []
    for n in (2, 10):
        before = transfers()["to_host"]
        assert main([*argv, "--max-new-tokens", str(n)]) == 0
        reads.append(transfers()["to_host"] - before)
    capsys.readouterr()
    assert (reads[1] - reads[0]) / 8 <= 2


@pytest.mark.gpu
def test_the_generate_command_reads_two_numbers_per_step_for_a_batch_of_prompts(transfers, capsys, tmp_path):
    # --prompts: one copy of the step's (B,) ids for all prompts, and the "every row ended?" boolean.
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("To be\nROMEO: What light\nThe whale\n")
    argv = ["generate", "--model", "npgpt-small", "--temperature", "0", "--device", "cuda", "--prompts", str(prompts)]
    reads = []
    for n in (2, 10):
        before = transfers()["to_host"]
        assert main([*argv, "--max-new-tokens", str(n)]) == 0
        reads.append(transfers()["to_host"] - before)
    assert capsys.readouterr().out.count("==> prompt ") == 6
    assert (reads[1] - reads[0]) / 8 <= 2


# ------------------------------------------------------------------- training
TEXT = ("ROMEO:\nBut, soft! what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n"
        "Arise, fair sun, and kill the envious moon,\nWho is already sick and pale with grief.\n") * 12
TRAIN = dict(n_layer=1, n_head=2, n_embd=16, block_size=16, batch_size=4, warmup_steps=2, lr=3e-3, min_lr=3e-4,
             eval_iters=2, log_interval=3)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    prepare_two_documents(TEXT, out)
    return out


def fake_log():
    import fake_cupy

    return fake_cupy.transfer_log()


@pytest.mark.gpu
@pytest.mark.parametrize("settings", [dict(), dict(grad_accum=3, dropout=0.1), dict(dtype="float16")],
                         ids=["plain", "accum-dropout", "float16"])
def test_a_training_step_copies_only_its_batches_and_one_reading(transfers, data_dir, tmp_path, settings):
    trainer = Trainer(TrainConfig(data_dir=str(data_dir), out_dir=str(tmp_path), device="cuda", max_steps=5,
                                  **TRAIN, **settings), log=lambda line: None)
    trainer.train_step()                           # the first step creates the optimizer state
    for _ in range(2):
        before = transfers()
        loss, norm, _ = trainer.train_step()[:3]
        after = transfers()
        accum = settings.get("grad_accum", 1)
        # host -> device: the input and target ids of each micro-batch; device -> host: one copy
        # holding the loss and the gradient norm (the loss the trainer logs; the norm it clips by,
        # and both checked finite before the weights are touched).
        assert after["to_device"] - before["to_device"] == 2 * accum
        assert after["to_host"] - before["to_host"] == 1, Counter(w for k, w, _ in fake_log() if k == "to_host")
        assert np.isfinite(loss) and np.isfinite(norm)


@pytest.mark.gpu
def test_a_fine_tuning_step_copies_only_its_batch_and_one_reading(transfers):
    model = GPTClassifier(GPTConfig(**CONFIG), num_labels=2, seed=0).to("cuda")
    opt = AdamW(param_groups(model), lr=1e-3)
    idx, mask = np.array([[3, 4, 5, 0], [7, 8, 9, 10]]), np.array([[1, 1, 1, 0], [1, 1, 1, 1]])
    labels = np.array([0, 1])

    def loss_fn(i, m, y):
        return model(i, attention_mask=m, labels=y)[1]

    for _ in range(2):
        before = transfers()
        engine.optimizer_step(opt, loss_fn, [(idx, mask, labels)], 1e-3, grad_clip=1.0, workers=1)
        after = transfers()
        assert {k: after[k] - before[k] for k in after} == {"to_host": 1, "to_device": 3}


def _run(argv):
    assert main(argv) == 0


def _files(run):
    return {name: (run / "checkpoint" / name).read_bytes() for name in ("model.safetensors", "optimizer.safetensors")}


def test_training_on_the_device_stops_and_resumes_exactly(device, data_dir, tmp_path):
    flags = ["--data", str(data_dir), "--device", device, "--n-layer", "1", "--n-head", "2", "--n-embd", "16",
             "--block-size", "16", "--batch-size", "4", "--warmup-steps", "2", "--lr", "3e-3", "--dropout", "0.1",
             "--grad-accum", "2", "--max-steps", "8", "--eval-interval", "4", "--eval-iters", "1", "--quiet"]
    _run(["train", "--out", str(tmp_path / "straight"), *flags])
    _run(["train", "--out", str(tmp_path / "stopped"), "--stop-at", "3", *flags])
    state = json.loads((tmp_path / "stopped" / "checkpoint" / "trainer_state.json").read_text())
    counts = [rngs["draws"] for rngs in state["dropout_rngs"].values() if rngs]
    assert counts and all(n > 0 for n in counts)                   # a count per module: nothing to replay
    _run(["train", "--out", str(tmp_path / "stopped"), "--resume", "--quiet"])
    assert _files(tmp_path / "stopped") == _files(tmp_path / "straight")


def test_dropout_generators_continue_exactly_on_the_device(device):
    drop = nn.Dropout(0.5, seed=11)
    xp = backend.array_module(npgpt.tensor([0.0], device=device).data)
    x = npgpt.Tensor(xp.ones((4, 8), dtype=np.float32))
    drop(x)
    state = json.loads(json.dumps(drop.get_rng_state()))             # what a checkpoint holds
    expected = [host(drop(x)) for _ in range(3)]
    again = nn.Dropout(0.5, seed=0)
    again.set_rng_state(state)
    assert [host(again(x)).tolist() for _ in range(3)] == [e.tolist() for e in expected]
    assert state == {"seed": 11, "draws": 1}
    on_the_cpu = nn.Dropout(0.5, seed=11)
    first = host(on_the_cpu(npgpt.Tensor(np.ones((4, 8), dtype=np.float32))))
    assert host(nn.Dropout(0.5, seed=11)(x)).tolist() == first.tolist()     # the same masks on every device


# --------------------------------------------------------- fine-tuning, classifier
WORDS = re.compile(r"[a-z]+")


class Words:
    """One id per word of a small vocabulary (0: unknown), enough for the classifier's loop."""

    def __init__(self, texts):
        self.vocab = {w: i + 1 for i, w in enumerate(sorted({w for t in texts for w in WORDS.findall(t)}))}

    def encode(self, text):
        return [self.vocab.get(w, 0) for w in WORDS.findall(text)] or [0]


def sentiment(n, seed):
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for _ in range(n):
        y = int(rng.integers(0, 2))
        words = list(rng.choice(["the", "film", "was", "a", "plot"], size=int(rng.integers(2, 6))))
        words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(["great", "good"] if y else ["bad", "dull"])))
        texts.append(" ".join(words))
        labels.append(y)
    return texts, labels


@pytest.mark.parametrize("num_labels", [1, 2])
def test_fine_tuning_on_the_device_follows_the_cpu(device, num_labels, tmp_path):
    train, val = sentiment(96, 0), sentiment(32, 1)
    tokenizer = Words(train[0] + val[0])
    config = GPTConfig(vocab_size=len(tokenizer.vocab) + 1, block_size=16, n_layer=1, n_head=2, n_embd=16)
    results = {}
    for where in ("cpu", device):
        model = GPTClassifier(config, num_labels=num_labels, seed=0).to(where)
        result = finetune.finetune(model, tokenizer, *train, *val, epochs=2, lr=3e-3, batch_size=16, log=None)
        assert model.device == where and all(p.device == where for p in model.parameters())
        results[where] = (result, model)
    (cpu, cpu_model), (dev, dev_model) = results["cpu"], results[device]
    np.testing.assert_allclose([h["val_loss"] for h in dev.history], [h["val_loss"] for h in cpu.history], rtol=1e-3)
    probs = finetune.text_probabilities(dev_model, tokenizer, val[0][:5])
    assert isinstance(probs, np.ndarray)
    np.testing.assert_allclose(probs, finetune.text_probabilities(cpu_model, tokenizer, val[0][:5]), rtol=1e-3, atol=1e-5)
    dev_model.save_pretrained(tmp_path / "clf")                       # written from the device
    loaded = GPTClassifier.from_pretrained(tmp_path / "clf").to(device)
    np.testing.assert_allclose(finetune.text_probabilities(loaded, tokenizer, val[0][:5]), probs, rtol=1e-5, atol=1e-7)


def test_the_classifier_predicts_on_the_device(device):
    model = GPTClassifier(GPTConfig(**CONFIG), num_labels=3, seed=0)
    idx, mask = np.array([[3, 4, 5, 0], [7, 8, 9, 10]]), np.array([[1, 1, 1, 0], [1, 1, 1, 1]])
    expected = model.predict_proba(idx, attention_mask=mask)
    model.to(device)
    got = model.predict_proba(idx, attention_mask=mask)
    assert isinstance(got, np.ndarray)
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)
    assert model.predict(idx, attention_mask=mask).tolist() == expected.argmax(axis=1).tolist()


# ---------------------------------------------------------------- viz, checkpoints
def test_attention_maps_and_saliency_on_the_device(device):
    reference, model = tiny(), tiny(device)
    ids = [5, 17, 3, 11, 9, 12]
    np.testing.assert_allclose(viz.attention_weights(model, ids), viz.attention_weights(reference, ids),
                               rtol=RTOL, atol=ATOL)
    tokens, scores = viz.saliency(model, ids, target=4)
    expected_tokens, expected = viz.saliency(reference, ids, target=4)
    assert tokens == expected_tokens and isinstance(scores, np.ndarray)
    np.testing.assert_allclose(scores, expected, rtol=1e-3, atol=1e-6)
    svg = viz.attention_map(model, ids, layer=1, head=0)
    assert svg.startswith("<svg")


def test_saving_from_the_device_writes_the_cpus_files(device, tmp_path):
    model = tiny(device)
    model.save_pretrained(tmp_path / "from-device")
    tiny().save_pretrained(tmp_path / "from-cpu")
    for name in ("model.safetensors", "config.json"):
        assert (tmp_path / "from-device" / name).read_bytes() == (tmp_path / "from-cpu" / name).read_bytes()
    loaded = GPT.from_pretrained(tmp_path / "from-device").to(device)
    x, _ = batch()
    np.testing.assert_array_equal(host(loaded(x)), host(model(x)))


def test_optimizer_state_is_saved_from_and_loaded_onto_the_device(device):
    x, y = batch()
    model = tiny(device)
    opt = AdamW(param_groups(model), lr=1e-3)
    for _ in range(2):
        engine.optimizer_step(opt, lambda a, b: F.cross_entropy(model(a), b), [(x, y)], 1e-3, grad_clip=1.0, workers=1)
    state = opt.state_dict()
    assert all(isinstance(v, np.ndarray) for s in state["state"].values() for k, v in s.items() if k != "step")
    other = tiny(device)
    restored = AdamW(param_groups(other), lr=1e-3)
    restored.load_state_dict(state)
    for name, s in restored.state.items():
        assert backend.device_of(s["exp_avg"]) == device, name
        np.testing.assert_array_equal(host(s["exp_avg_sq"]), state["state"][name]["exp_avg_sq"])
