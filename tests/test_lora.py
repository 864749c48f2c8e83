"""LoRA (npgpt.finetuning.lora): the fused op's gradient in float64, the documented forward and merge
(docs/agent.md eq:lora, eq:lora-grad and eq:lora-merge), freezing, PEFT's file format both ways with ``peft`` itself, merging."""

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tiny_models import tiny_chat_dir

import npgpt
from npgpt import backend
from npgpt.autograd.gradcheck import check_gradients
from npgpt.finetuning import lora
from npgpt.io.inputs import as_array
from npgpt.model import GPT, GPTConfig

TINY = GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=8)
seeds = st.integers(0, 2**16)


def randn(xp, shape, seed, scale=1.0):
    return xp.asarray(np.random.default_rng(seed).standard_normal(shape) * scale, dtype=np.float64)


def host(t):
    return backend.to_numpy(as_array(t))


def random_adapters(model, seed=0, scale=0.5):
    """Non-zero B everywhere (a fresh adapter's B is zero, which would hide every mistake)."""
    rng = np.random.default_rng(seed)
    for _, layer in lora.adapters(model):
        layer.lora_B.data = backend.to_device((rng.standard_normal(layer.lora_B.shape) * scale).astype(np.float32),
                                              layer.weight.device)


def logits(model, ids):
    with npgpt.no_grad():
        return host(model.eval()(ids))


# ======================================================= the op (eq:lora, eq:lora-grad)
@given(lead=st.lists(st.integers(1, 3), min_size=1, max_size=2), n_in=st.integers(1, 5), n_out=st.integers(1, 4),
       rank=st.integers(1, 3), bias=st.booleans(), dropout=st.booleans(), seed=seeds)
def test_lora_linear_gradient_matches_finite_differences(xp, lead, n_in, n_out, rank, bias, dropout, seed):
    # docs/agent.md eq:lora-grad: every gradient, W's and b's too, with and without the dropout mask
    shape = tuple(lead) + (n_in,)
    x, W, b = randn(xp, shape, seed), randn(xp, (n_in, n_out), seed + 1), randn(xp, (n_out,), seed + 2)
    A, B = randn(xp, (rank, n_in), seed + 3), randn(xp, (n_out, rank), seed + 4)
    keep = None
    if dropout:
        keep = xp.asarray((np.random.default_rng(seed + 5).random(shape) >= 0.3) / 0.7)
    if bias:
        check_gradients(lambda x, W, b, A, B: lora.lora_linear(x, W, b, A, B, 1.7, keep), x, W, b, A, B)
    else:
        check_gradients(lambda x, W, A, B: lora.lora_linear(x, W, None, A, B, 0.5, keep), x, W, A, B)


@given(n_in=st.integers(1, 6), n_out=st.integers(1, 6), rank=st.integers(1, 4), seed=seeds)
def test_lora_linear_is_the_documented_formula(n_in, n_out, rank, seed):
    # docs/agent.md eq:lora: y = x W + b + (alpha/r) (x A^T) B^T, and eq:lora-merge: the same as x (W + s (BA)^T) + b
    x, W, b = randn(np, (3, n_in), seed), randn(np, (n_in, n_out), seed + 1), randn(np, (n_out,), seed + 2)
    A, B = randn(np, (rank, n_in), seed + 3), randn(np, (n_out, rank), seed + 4)
    s = 16.0 / rank
    y = lora.lora_linear(x, W, npgpt.Tensor(b), A, B, s).numpy()
    np.testing.assert_allclose(y, x @ W + b + s * (x @ A.T) @ B.T, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(y, x @ (W + lora.delta_weight(A, B, s)) + b, rtol=1e-10, atol=1e-10)


def test_lora_linear_refuses_shapes_that_do_not_fit():
    x, W = np.zeros((2, 5)), np.zeros((5, 4))
    with pytest.raises(ValueError, match=r"lora_A \(2, 3\) and lora_B \(4, 2\) do not fit weight \(5, 4\)"):
        lora.lora_linear(x, W, None, np.zeros((2, 3)), np.zeros((4, 2)), 1.0)
    with pytest.raises(ValueError, match=r"input \(2, 5\) does not fit weight \(4, 4\)"):
        lora.lora_linear(x, np.zeros((4, 4)), None, np.zeros((2, 4)), np.zeros((4, 2)), 1.0)


# ================================================================ the model
def test_a_fresh_adapter_leaves_the_model_unchanged_and_trains_only_A_and_B(device):
    # docs/agent.md eq:lora with B = 0: the adapted model is the base model, logits bit for bit
    model = GPT(TINY, seed=1).to(device)
    ids = np.random.default_rng(0).integers(0, TINY.vocab_size, (2, 10))
    before = logits(model, ids)
    wrapped = lora.apply_lora(model, lora.LoRAConfig(rank=2, alpha=4, targets=("c_attn", "c_proj")))
    assert wrapped == ["h.0.attn.c_attn", "h.0.attn.c_proj", "h.0.mlp.c_proj",
                       "h.1.attn.c_attn", "h.1.attn.c_proj", "h.1.mlp.c_proj"]
    np.testing.assert_array_equal(logits(model, ids), before)
    model.train()
    npgpt.F.cross_entropy(model(ids[:, :-1]), backend.to_device(ids[:, 1:], device)).backward()
    for name, p in model.named_parameters():
        if name.endswith((".lora_A", ".lora_B")):
            assert p.requires_grad and p.grad is not None and p.grad.shape == p.shape, name
        else:
            assert not p.requires_grad and p.grad is None, name
    # B starts at 0, so at the first step only B moves: dL/dA = s (g B)^T X = 0 (eq:lora-grad)
    for _, layer in lora.adapters(model):
        assert not host(layer.lora_A.grad).any()
        assert host(layer.lora_B.grad).any()


def test_trainable_parameters_are_counted_as_peft_counts_them():
    model = GPT(TINY, seed=1)
    total = model.num_parameters()
    lora.apply_lora(model, lora.LoRAConfig(rank=4, targets=("c_attn",)))
    C = TINY.n_embd
    expected = TINY.n_layer * 4 * (C + 3 * C)          # r (in + out) per c_attn
    assert lora.trainable_parameters(model) == (expected, total + expected)
    assert lora.describe_trainable(model) == (f"trainable params: {expected:,} || all params: {total + expected:,} "
                                              f"|| trainable%: {100 * expected / (total + expected):.4f}")


def test_targets_that_match_nothing_are_refused_naming_the_layers():
    with pytest.raises(ValueError, match=r"'q_proj' matches no linear layer of the model \(it has c_attn, c_fc, c_proj\)"):
        lora.apply_lora(GPT(TINY), lora.LoRAConfig(targets=("c_attn", "q_proj")))
    for bad, message in [({"rank": 0}, "rank must be a positive integer"), ({"alpha": -1}, "alpha must be a positive number"),
                         ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"), ({"targets": ""}, "name at least one")]:
        with pytest.raises(ValueError, match=message):
            lora.LoRAConfig(**bad)


def test_lora_dropout_masks_only_the_adapter_input():
    # PEFT's placement: y = x W + b + s (dropout(x) A^T) B^T; with B = 0 dropout changes nothing
    model = GPT(TINY, seed=1)
    ids = np.random.default_rng(0).integers(0, TINY.vocab_size, (2, 10))
    base = logits(model, ids)
    lora.apply_lora(model, lora.LoRAConfig(rank=2, dropout=0.5))
    with npgpt.no_grad():
        np.testing.assert_allclose(host(model.train()(ids)), base, rtol=0, atol=1e-6)
        random_adapters(model)
        a, b = host(model(ids)), host(model(ids))
    assert not np.allclose(a, b)             # two masks drawn
    np.testing.assert_array_equal(logits(model, ids), logits(model, ids))   # none in eval mode


# ================================================================ merging (eq:lora-merge)
def test_merge_gives_the_same_logits_and_unmerge_restores_the_base_exactly(device):
    model = GPT(TINY, seed=1).to(device)
    ids = np.random.default_rng(0).integers(0, TINY.vocab_size, (2, 12))
    lora.apply_lora(model, lora.LoRAConfig(rank=3, alpha=6, targets=("c_attn", "c_proj", "c_fc")))
    random_adapters(model)
    base = {name: host(layer.weight).copy() for name, layer in lora.adapters(model)}
    unmerged = logits(model, ids)
    lora.merge(model)
    for name, layer in lora.adapters(model):     # docs/agent.md eq:lora-merge: W + s (B A)^T
        np.testing.assert_allclose(host(layer.weight), base[name] + lora.delta_weight(
            host(layer.lora_A), host(layer.lora_B), layer.scale), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(logits(model, ids), unmerged, rtol=0, atol=1e-5)
    lora.unmerge(model)
    for name, layer in lora.adapters(model):
        np.testing.assert_array_equal(host(layer.weight), base[name])
    np.testing.assert_array_equal(logits(model, ids), unmerged)
    lora.unload(model)
    assert not lora.adapters(model) and all(p.requires_grad for p in model.parameters())
    np.testing.assert_allclose(logits(model, ids), unmerged, rtol=0, atol=1e-5)


# ================================================================ PEFT's files
def test_save_and_load_round_trip_in_npgpt(tmp_path):
    model = GPT(TINY, seed=1)
    ids = np.random.default_rng(0).integers(0, TINY.vocab_size, (2, 9))
    lora.apply_lora(model, lora.LoRAConfig(rank=2, alpha=3, dropout=0.1, targets=("c_attn", "mlp.c_proj")))
    random_adapters(model)
    lora.save_adapter(model, tmp_path / "adapter", base_model="tiny")
    config = json.loads((tmp_path / "adapter" / lora.ADAPTER_CONFIG).read_text())
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (2, 3.0, 0.1)
    assert config["target_modules"] == ["c_attn", "mlp.c_proj"]
    fresh = GPT(TINY, seed=1)
    lora.load_adapter(fresh, tmp_path / "adapter")
    assert [n for n, _ in lora.adapters(fresh)] == [n for n, _ in lora.adapters(model)]
    np.testing.assert_array_equal(logits(fresh, ids), logits(model, ids))


def test_saved_targets_name_exactly_the_adapted_layers(tmp_path):
    # "c_proj" alone would also take the MLP's c_proj when PEFT reads the file: the names must be exact
    model = GPT(TINY, seed=1)
    lora.apply_lora(model, lora.LoRAConfig(rank=2, targets=("attn.c_proj",)))
    lora.save_adapter(model, tmp_path / "a")
    fresh = GPT(TINY, seed=1)
    assert lora.load_adapter(fresh, tmp_path / "a") == ["h.0.attn.c_proj", "h.1.attn.c_proj"]


@pytest.mark.parametrize("change, message", [
    ({"use_dora": True}, "use_dora is True; npgpt implements plain LoRA"),
    ({"peft_type": "IA3"}, "npgpt loads LoRA adapters only"),
    ({"r": 0}, "r must be a positive integer"),
    ({"target_modules": ["q_proj"]}, r"match no layer of the model"),
])
def test_adapters_npgpt_cannot_load_are_refused_naming_the_file(tmp_path, change, message):
    model = GPT(TINY, seed=1)
    lora.apply_lora(model, lora.LoRAConfig(rank=2))
    lora.save_adapter(model, tmp_path / "a")
    path = tmp_path / "a" / lora.ADAPTER_CONFIG
    config = json.loads(path.read_text())
    config.update(change)
    path.write_text(json.dumps(config))
    with pytest.raises(lora.AdapterError, match=message):
        lora.load_adapter(GPT(TINY, seed=1), tmp_path / "a")


def test_an_adapter_of_another_model_is_refused_before_anything_changes(tmp_path):
    model = GPT(TINY, seed=1)
    lora.apply_lora(model, lora.LoRAConfig(rank=2))
    lora.save_adapter(model, tmp_path / "a")
    wider = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=16))
    with pytest.raises(lora.AdapterError, match=r"lora_A.weight' has shape \(2, 8\), the model needs \(2, 16\)"):
        lora.load_adapter(wider, tmp_path / "a")
    assert not lora.adapters(wider)
    with pytest.raises(lora.AdapterError, match="holds no adapter_config.json"):
        lora.load_adapter(wider, tmp_path)


@pytest.fixture
def saved_base(tmp_path):
    model = GPT(TINY, seed=3)
    model.save_pretrained(tmp_path / "base")
    return tmp_path / "base"


def test_peft_loads_npgpts_adapter_onto_transformers_gpt2_with_equal_logits(saved_base, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    model = GPT.from_pretrained(saved_base)
    lora.apply_lora(model, lora.LoRAConfig(rank=4, alpha=8, targets=("c_attn", "c_proj", "c_fc")))
    random_adapters(model)
    lora.save_adapter(model, tmp_path / "adapter", base_model=str(saved_base))
    ids = np.random.default_rng(1).integers(0, TINY.vocab_size, (3, 11))
    hf = peft.PeftModel.from_pretrained(transformers.GPT2LMHeadModel.from_pretrained(saved_base), tmp_path / "adapter")
    with torch.no_grad():
        theirs = hf.eval()(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(logits(model, ids), theirs, rtol=0, atol=1e-4)
    assert not np.allclose(logits(GPT.from_pretrained(saved_base), ids), theirs, atol=1e-3)   # the adapter matters


def test_an_adapter_made_by_peft_loads_into_npgpt_with_equal_logits(saved_base, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    hf = peft.get_peft_model(transformers.GPT2LMHeadModel.from_pretrained(saved_base),
                             peft.LoraConfig(r=3, lora_alpha=5, target_modules=["c_attn", "mlp.c_proj"],
                                             fan_in_fan_out=True, lora_dropout=0.1))
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.3)
    hf.save_pretrained(tmp_path / "peft")
    ids = np.random.default_rng(2).integers(0, TINY.vocab_size, (2, 13))
    with torch.no_grad():
        theirs = hf.eval()(torch.tensor(ids)).logits.numpy()
    model = GPT.from_pretrained(saved_base)
    assert lora.load_adapter(model, tmp_path / "peft") == ["h.0.attn.c_attn", "h.0.mlp.c_proj",
                                                           "h.1.attn.c_attn", "h.1.mlp.c_proj"]
    np.testing.assert_allclose(logits(model, ids), theirs, rtol=0, atol=1e-4)


# ================================================== the classifier fine-tune with --lora-*
def toy_reviews(n, seed):
    """Neutral words and one sentiment word; label pos iff the word is a positive one."""
    rng = np.random.default_rng(seed)
    good, bad, neutral = ["good", "great", "fine"], ["bad", "awful", "poor"], ["the", "film", "was", "a", "plot"]
    texts, labels = [], []
    for _ in range(n):
        y = int(rng.integers(0, 2))
        words = list(rng.choice(neutral, size=int(rng.integers(2, 6))))
        words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(good if y else bad)))
        texts.append(" ".join(words))
        labels.append(y)
    return texts, labels


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    from npgpt.tokenizer import Tokenizer

    tokenizer = Tokenizer.train(toy_reviews(200, seed=5)[0], 280, show_progress=False)
    directory = tmp_path_factory.mktemp("lm")
    GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=32),
        seed=4).save_pretrained(directory)
    tokenizer.save(directory)
    return directory


def test_lora_fine_tune_learns_with_the_backbone_frozen_and_saves_both_forms(lm_dir, tmp_path, capsys):
    from npgpt.apps import cli
    from npgpt.finetuning.classifier import GPTClassifier
    from npgpt.tokenizer import Tokenizer

    texts, labels = toy_reviews(300, seed=0)
    data = tmp_path / "reviews.tsv"
    data.write_text("text\tlabel\n" + "".join(f"{t}\t{'pos' if y else 'neg'}\n" for t, y in zip(texts, labels)))
    out = tmp_path / "clf"
    status = cli.main(["finetune", "--model", str(lm_dir), "--data", str(data), "--out", str(out), "--epochs", "4",
                       "--lr", "1e-2", "--batch-size", "16", "--lora-rank", "4", "--lora-alpha", "8",
                       "--lora-targets", "c_attn,c_proj,c_fc"])
    printed = capsys.readouterr()
    assert status == 0, printed.err
    assert "trainable params: " in printed.out and f"{out / 'adapter'}" in printed.out
    assert json.loads((out / "eval_results.json").read_text())["accuracy"] > 0.8
    config = json.loads((out / "adapter" / lora.ADAPTER_CONFIG).read_text())
    assert (config["task_type"], config["modules_to_save"], config["target_modules"]) == (
        "SEQ_CLS", ["score"], ["c_attn", "c_fc", "c_proj"])
    assert config["base_model_name_or_path"] == str(lm_dir) and config["npgpt_labels"] == ["neg", "pos"]
    # out/ holds an ordinary classifier: the base weights plus s (B A)^T (eq:lora-merge), nothing else moved
    merged = GPTClassifier.from_pretrained(out)
    base = GPT.from_pretrained(lm_dir)
    adapted = GPTClassifier.from_pretrained(lm_dir, num_labels=1)
    lora.load_adapter(adapted, out / "adapter")
    layers = dict(lora.adapters(adapted))
    for name, p in merged.transformer.named_parameters():
        layer = layers.get("transformer." + name.rsplit(".", 1)[0])
        expected = host(dict(base.named_parameters())[name])
        if layer is not None and name.endswith(".weight"):
            expected = expected + lora.delta_weight(host(layer.lora_A), host(layer.lora_B), layer.scale)
            np.testing.assert_allclose(host(p), expected, rtol=0, atol=1e-6)
        else:
            np.testing.assert_array_equal(host(p), expected, err_msg=name)
    tokenizer = Tokenizer.from_pretrained(out)
    ids, mask = np.array([tokenizer.encode("the film was great")]), None
    np.testing.assert_allclose(adapted.predict_proba(ids, mask), merged.predict_proba(ids, mask), atol=1e-5)
    # npgpt lora merge: the adapter alone (with its head) rebuilds the same classifier, labels included
    assert cli.main(["lora", "merge", str(out / "adapter"), "--out", str(tmp_path / "merged")]) == 0
    again = GPTClassifier.from_pretrained(tmp_path / "merged")
    assert again.labels == ["neg", "pos"]
    np.testing.assert_allclose(again.predict_proba(ids, mask), merged.predict_proba(ids, mask), atol=1e-5)
    assert (tmp_path / "merged" / "vocab.json").is_file()


def test_lora_merge_command_writes_a_plain_gpt2_with_the_adapted_logits(saved_base, tmp_path, capsys):
    from npgpt.apps import cli

    model = GPT.from_pretrained(saved_base)
    lora.apply_lora(model, lora.LoRAConfig(rank=2, targets=("c_attn", "c_fc")))
    random_adapters(model)
    lora.save_adapter(model, tmp_path / "adapter")          # no base named: --base says it
    ids = np.random.default_rng(0).integers(0, TINY.vocab_size, (2, 8))
    assert cli.main(["lora", "merge", str(tmp_path / "adapter"), "--out", str(tmp_path / "m")]) == 1
    assert "names no base model (base_model_name_or_path): say which with --base" in capsys.readouterr().err
    assert cli.main(["lora", "merge", str(tmp_path / "adapter"), "--base", str(saved_base),
                     "--out", str(tmp_path / "m")]) == 0
    np.testing.assert_allclose(logits(GPT.from_pretrained(tmp_path / "m"), ids), logits(model, ids), rtol=0, atol=1e-5)


def test_lora_flags_are_checked_and_named():
    from npgpt.finetuning.finetune import FinetuneConfig
    from npgpt.training.settings import ConfigError

    for bad, message in [({"lora_rank": -1}, "lora_rank must be a non-negative integer"),
                         ({"lora_rank": 4, "lora_dropout": 1.5}, r"lora_dropout must be in \[0, 1\)"),
                         ({"lora_alpha": 8.0}, "lora_rank is needed with the other LoRA settings"),
                         ({"lora_rank": 4, "train_last": 1}, "with LoRA the adapters train instead")]:
        with pytest.raises(ConfigError, match=message):
            FinetuneConfig(**bad)
    assert FinetuneConfig(lora_rank=4).lora_config(train=("score.",)) == lora.LoRAConfig(
        rank=4, alpha=8.0, targets=("c_attn",), train=("score.",))


# ================================================================ npgpt sft --lora-*
@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    """A tiny random GPT with npgpt-small's tokenizer (no chat template yet) and a few conversations."""
    return tiny_chat_dir(tmp_path_factory.mktemp("lora-sft"))


def test_sft_with_lora_trains_only_adapters_and_markers_and_resumes_exactly(chat_model, tmp_path):
    from npgpt.finetuning.sft import SFTConfig, SFTTrainer

    settings = dict(model=str(chat_model / "model"), data=str(chat_model / "chats.jsonl"), max_steps=6, lr=1e-2,
                    batch_size=3, log_interval=100, eval_interval=100, workers=1, warmup_steps=0,
                    lora_rank=4, lora_targets="c_attn,c_fc", lora_dropout=0.1)
    quiet = lambda line: None
    a = SFTTrainer(SFTConfig(out_dir=str(tmp_path / "a"), **settings), log=quiet)
    start = a.evaluate()
    base = {name: host(p).copy() for name, p in a.model.named_parameters()}
    a.train()
    assert a.evaluate() < start
    for name, p in a.model.named_parameters():          # the base is frozen: only A, B and the new markers' rows moved
        moved = not np.array_equal(base[name], host(p))
        assert moved == name.endswith((".lora_A", ".lora_B", ".trainable_tokens_delta")), name
    SFTTrainer(SFTConfig(out_dir=str(tmp_path / "b"), **settings), log=quiet).train(stop_at=3)
    SFTTrainer.resume(tmp_path / "b", log=quiet).train()
    for run in ("a", "b"):
        assert (tmp_path / run / "checkpoint" / lora.CHECKPOINT_ADAPTER / lora.ADAPTER_WEIGHTS).is_file()
    # exact resume: the same adapters, and the same merged checkpoint (what npgpt chat loads)
    ta = _read(tmp_path / "a" / "checkpoint" / lora.CHECKPOINT_ADAPTER / lora.ADAPTER_WEIGHTS)
    tb = _read(tmp_path / "b" / "checkpoint" / lora.CHECKPOINT_ADAPTER / lora.ADAPTER_WEIGHTS)
    assert ta.keys() == tb.keys() and all(np.array_equal(ta[k], tb[k]) for k in ta)
    merged = GPT.from_pretrained(tmp_path / "a" / "checkpoint")
    ids = np.array([[1, 2, 3, 4]])
    np.testing.assert_allclose(logits(merged, ids), logits(a.model, ids), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="cannot resume with lora_rank=8"):
        SFTTrainer.resume(tmp_path / "b", log=quiet, lora_rank=8)



# ============================================ float16 products (docs/training.md, "Mixed precision")
def test_lora_in_float16_products_matches_float32_and_keeps_float32_masters():
    # docs/agent.md eq:lora with every product in float16: the loss and the adapters' gradients within float16's precision
    # of the float32 ones; A, B and their gradients stay float32 (the optimizer's master copies), the
    # frozen weights get none
    model = GPT(TINY, seed=1)
    lora.apply_lora(model, lora.LoRAConfig(rank=2, alpha=4, targets=("c_attn", "c_proj", "c_fc")))
    random_adapters(model)
    ids = np.random.default_rng(1).integers(0, TINY.vocab_size, (2, 16))
    results = {}
    for dtype in (None, "float16"):
        model.set_compute_dtype(dtype)
        assert all(layer.compute_dtype == (None if dtype is None else np.float16) for _, layer in lora.adapters(model))
        loss = model.loss(ids[:, :-1], ids[:, 1:])
        loss.backward()
        results[dtype] = (loss.item(), {n: p.grad.copy() for n, p in model.named_parameters() if p.grad is not None})
        for p in model.parameters():
            p.grad = None
    assert results["float16"][0] == pytest.approx(results[None][0], rel=1e-3)
    assert results[None][1].keys() == results["float16"][1].keys() == {
        n for n, _ in model.named_parameters() if n.endswith((".lora_A", ".lora_B"))}
    for name, g in results[None][1].items():
        half = results["float16"][1][name]
        assert half.dtype == np.float32, name
        assert np.abs(half - g).max() <= 2e-2 * np.abs(g).max() + 1e-7, name


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_lora_sft_in_float16_trains_and_skips_a_step_that_overflows(chat_model, tmp_path):
    # npgpt sft --dtype float16 --lora-rank: loss scaling works on the adapters: a finite run learns; a
    # scale so large that float16 overflows skips the step, moves nothing (adapters, masters, moments)
    # and halves the scale
    from npgpt.finetuning.sft import SFTConfig, SFTTrainer

    trainer = SFTTrainer(SFTConfig(model=str(chat_model / "model"), data=str(chat_model / "chats.jsonl"),
                                   out_dir=str(tmp_path / "run"), max_steps=8, lr=1e-2, batch_size=3,
                                   log_interval=100, eval_interval=100, workers=1, warmup_steps=0, dtype="float16",
                                   lora_rank=4, lora_targets="c_attn,c_fc"), log=lambda line: None)
    start = trainer.evaluate()
    for _ in range(4):
        trainer.train_step()
        assert not trainer.last_step_skipped
    assert trainer.evaluate() < start
    before = {n: host(p).copy() for n, p in trainer.model.named_parameters()}
    adam_steps = trainer.optimizer.step_count
    trainer.scaler.scale = 2.0 ** 60                   # float16's largest is 65504: the products overflow
    loss, norm, _ = trainer.train_step()
    assert trainer.last_step_skipped and not np.isfinite(norm) and np.isfinite(loss)
    assert trainer.scaler.scale == 2.0 ** 59 and trainer.optimizer.step_count == adam_steps
    for n, p in trainer.model.named_parameters():
        np.testing.assert_array_equal(host(p), before[n], err_msg=n)
        assert p.data.dtype == np.float32, n
    trainer.scaler.scale = 2.0 ** 8
    trainer.train_step()
    assert not trainer.last_step_skipped and trainer.optimizer.step_count == adam_steps + 1

def _read(path):
    from safetensors.numpy import load_file

    return load_file(str(path))


# ================================================================ npgpt train --init-from --lora-*
@pytest.fixture(scope="module")
def prepared(chat_model):
    """Token files of a few sentences in the tiny model's tokenizer (npgpt-small's)."""
    from npgpt.tokenizer import Tokenizer
    from npgpt.training.data import prepare_documents

    rng = np.random.default_rng(0)
    words = ["the miller", "sold", "a blue kettle", "by the river", "a fox", "found", "seven lanterns", "at dawn"]
    docs = [" ".join(f"{rng.choice(words)} {rng.choice(words)}." for _ in range(60)) for _ in range(6)]
    prepare_documents(docs, Tokenizer.from_pretrained("npgpt-small"), chat_model / "data", val_fraction=0.2,
                      progress=False, workers=1)
    return chat_model


def test_train_init_from_with_lora_freezes_the_base_and_resumes_exactly(prepared, tmp_path):
    from npgpt.training.settings import ConfigError
    from npgpt.training.train import TrainConfig, Trainer

    settings = dict(data_dir=str(prepared / "data"), init_from=str(prepared / "model"), block_size=32, max_steps=4,
                    lr=1e-2, batch_size=4, eval_iters=2, log_interval=100, eval_interval=100, warmup_steps=0,
                    workers=1, lora_rank=2, lora_targets="c_attn,c_proj", lora_dropout=0.1)
    quiet = lambda line: None
    a = Trainer(TrainConfig(out_dir=str(tmp_path / "a"), **settings), log=quiet)
    frozen = {n: host(p).copy() for n, p in a.model.named_parameters() if not n.endswith((".lora_A", ".lora_B"))}
    a.train()
    for name, p in a.model.named_parameters():
        if name in frozen:
            np.testing.assert_array_equal(host(p), frozen[name], err_msg=name)
    Trainer(TrainConfig(out_dir=str(tmp_path / "b"), **settings), log=quiet).train(stop_at=2)
    Trainer.resume(tmp_path / "b", log=quiet).train()
    ta = _read(tmp_path / "a" / "checkpoint" / lora.CHECKPOINT_ADAPTER / lora.ADAPTER_WEIGHTS)
    tb = _read(tmp_path / "b" / "checkpoint" / lora.CHECKPOINT_ADAPTER / lora.ADAPTER_WEIGHTS)
    assert all(np.array_equal(ta[k], tb[k]) for k in ta) and any(ta[k].any() for k in ta if "lora_B" in k)
    merged = GPT.from_pretrained(tmp_path / "b" / "checkpoint")            # an ordinary checkpoint, merged
    ids = np.array([[5, 6, 7, 8, 9]])
    np.testing.assert_allclose(logits(merged, ids), logits(a.model, ids), rtol=0, atol=1e-5)
    with pytest.raises(ConfigError, match="adapts a pretrained model: give --init-from too"):
        TrainConfig(data_dir="d", out_dir="o", lora_rank=4)
