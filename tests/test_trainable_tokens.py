"""Trainable token rows (npgpt/finetuning/trainable_tokens.py, docs/agent.md eq:trainable-tokens): the op's
gradient in float64, the rows' gradient equal to full training's, frozen elsewhere, PEFT's format both ways
with ``peft`` itself, merging, and LoRA SFT training the chat markers it adds."""

import json

import numpy as np
import pytest
from tiny_models import tiny_chat_dir

import npgpt
from npgpt import backend, nn
from npgpt.autograd.gradcheck import check_gradients
from npgpt.finetuning import lora, trainable_tokens
from npgpt.io.inputs import as_array
from npgpt.model import GPT, GPTConfig
from npgpt.training.optim import param_groups

TINY = GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=8)
TOKENS = (61, 3, 62)


def host(t):
    return backend.to_numpy(as_array(t))


def logits(model, ids):
    with npgpt.no_grad():
        return host(model.eval()(ids))


def adapted(seed=1, tokens=TOKENS, device="cpu"):
    """A tiny GPT with LoRA on c_attn and c_fc, non-zero B, and the rows of ``tokens`` trainable and moved."""
    model = GPT(TINY, seed=seed).to(device)
    lora.apply_lora(model, lora.LoRAConfig(rank=2, alpha=4, targets=("c_attn", "c_fc"), tokens=tokens))
    rng = np.random.default_rng(seed)
    for _, layer in lora.adapters(model):
        layer.lora_B.data = backend.to_device(rng.standard_normal(layer.lora_B.shape).astype(np.float32) * 0.5, device)
    delta = model.wte.trainable_tokens_delta
    delta.data = delta.data + backend.to_device(rng.standard_normal(delta.shape).astype(np.float32), device)
    return model


def test_with_rows_gradient_matches_finite_differences(xp):
    # eq:trainable-tokens: dL/dR[k] = dL/dW'[I[k]], and the frozen table gets nothing
    rng = np.random.default_rng(0)
    W = xp.asarray(rng.standard_normal((7, 3)))
    idx = xp.asarray([5, 1])
    check_gradients(lambda R: trainable_tokens.with_rows(npgpt.Tensor(W), idx, R), xp.asarray(rng.standard_normal((2, 3))))
    out = trainable_tokens.with_rows(npgpt.Tensor(W), idx, npgpt.Tensor(xp.zeros((2, 3))))
    expected = backend.to_numpy(W).copy()
    expected[[5, 1]] = 0
    np.testing.assert_array_equal(host(out), expected)


def test_the_rows_get_exactly_the_gradient_full_training_gives_them_and_nothing_else_trains(device):
    # The table is both the embedding and the tied head: the rows' gradient is the sum of both uses,
    # equal to wte's gradient in those rows when the whole table trains
    ids = np.random.default_rng(2).integers(0, TINY.vocab_size, (3, 12))
    ids[0, :3] = TOKENS                                          # the rows are looked up as well as predicted
    full = GPT(TINY, seed=1).to(device)
    model = GPT(TINY, seed=1).to(device)
    lora.apply_lora(model, lora.LoRAConfig(rank=2, targets=("c_attn",), tokens=TOKENS))
    np.testing.assert_array_equal(logits(model, ids), logits(full, ids))     # a fresh adapter changes nothing
    for m in (full, model):
        m.train().loss(ids[:, :-1], ids[:, 1:]).backward()
    got = host(model.wte.trainable_tokens_delta.grad)
    np.testing.assert_allclose(got, host(full.wte.weight.grad)[sorted(TOKENS)], rtol=1e-5, atol=1e-7)
    trained = {n for n, p in model.named_parameters() if p.grad is not None}
    assert trained == {n for n, _ in model.named_parameters() if n.endswith((".lora_A", ".lora_B"))} | {
        "wte.trainable_tokens_delta"}
    assert not model.wte.weight.requires_grad and model.wte.token_ids == tuple(sorted(TOKENS))
    groups = {g["weight_decay"]: g["names"] for g in param_groups(model, 0.1)}
    assert "wte.trainable_tokens_delta" in groups[0.0]        # a table's rows: never decayed


def test_bad_token_ids_are_refused_by_name():
    with pytest.raises(ValueError, match=r"trainable token ids must be integers in 0\.\.63, got 64"):
        lora.apply_lora(GPT(TINY), lora.LoRAConfig(tokens=(1, 64)))
    with pytest.raises(ValueError, match="got True"):
        trainable_tokens.checked_indices([True], 64)
    with pytest.raises(ValueError, match="already carries"):
        lora.apply_lora(adapted(), lora.LoRAConfig())


def test_merged_view_and_unload_keep_the_trained_rows(tmp_path):
    model = adapted()
    ids = np.random.default_rng(3).integers(0, TINY.vocab_size, (2, 9))
    ids[:, 0] = 61
    adapted_logits = logits(model, ids)
    with lora.merged_view(model):
        assert type(model.wte) is nn.Embedding
        model.save_pretrained(tmp_path / "merged")
    assert isinstance(model.wte, trainable_tokens.TrainableTokens)            # the adapter is back
    np.testing.assert_allclose(logits(GPT.from_pretrained(tmp_path / "merged"), ids), adapted_logits, atol=1e-5)
    lora.unload(model)
    assert type(model.wte) is nn.Embedding and model.wte.weight.requires_grad
    np.testing.assert_allclose(logits(model, ids), adapted_logits, atol=1e-5)


def test_save_and_load_round_trip_in_npgpt(tmp_path):
    model = adapted()
    lora.save_adapter(model, tmp_path / "a")
    config = json.loads((tmp_path / "a" / lora.ADAPTER_CONFIG).read_text())
    assert config["trainable_token_indices"] == sorted(TOKENS) and config["modules_to_save"] is None
    other = GPT(TINY, seed=1)
    lora.load_adapter(other, tmp_path / "a")
    ids = np.array([[61, 3, 62, 5, 6]])
    np.testing.assert_array_equal(logits(other, ids), logits(model, ids))
    raw = dict(config, trainable_token_indices={"lm_head": [1]})
    (tmp_path / "a" / lora.ADAPTER_CONFIG).write_text(json.dumps(raw))
    with pytest.raises(lora.AdapterError, match=r"names \['lm_head'\]; npgpt trains token rows of wte only"):
        lora.load_adapter(GPT(TINY), tmp_path / "a")


@pytest.fixture
def saved_base(tmp_path):
    GPT(TINY, seed=1).save_pretrained(tmp_path / "base")
    return tmp_path / "base"


def test_peft_loads_npgpts_trainable_tokens_onto_transformers_gpt2_with_equal_logits(saved_base, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    model = adapted()
    lora.save_adapter(model, tmp_path / "adapter", base_model=str(saved_base))
    ids = np.random.default_rng(1).integers(0, TINY.vocab_size, (3, 11))
    ids[:, 2] = 62
    hf = peft.PeftModel.from_pretrained(transformers.GPT2LMHeadModel.from_pretrained(saved_base), tmp_path / "adapter")
    with torch.no_grad():
        theirs = hf.eval()(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(logits(model, ids), theirs, rtol=0, atol=1e-4)
    no_rows = GPT(TINY, seed=1)
    lora.apply_lora(no_rows, lora.LoRAConfig(rank=2, alpha=4, targets=("c_attn", "c_fc")))
    for (_, a), (_, b) in zip(lora.adapters(no_rows), lora.adapters(model)):
        a.lora_B.data = b.lora_B.data
    assert not np.allclose(logits(no_rows, ids), theirs, atol=1e-3)           # the rows matter


def test_trainable_tokens_made_by_peft_load_into_npgpt_with_equal_logits(saved_base, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    hf = peft.get_peft_model(transformers.GPT2LMHeadModel.from_pretrained(saved_base),
                             peft.LoraConfig(r=2, lora_alpha=3, target_modules=["c_attn"], fan_in_fan_out=True,
                                             trainable_token_indices={"wte": [7, 60]}))
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "lora_B" in name or "trainable_tokens_delta" in name:
                p.normal_(std=0.3)
    hf.save_pretrained(tmp_path / "peft")
    ids = np.array([[7, 1, 60, 2, 7], [3, 60, 4, 5, 6]])
    with torch.no_grad():
        theirs = hf.eval()(torch.tensor(ids)).logits.numpy()
    model = GPT.from_pretrained(saved_base)
    lora.load_adapter(model, tmp_path / "peft")
    assert model.wte.token_ids == (7, 60)
    np.testing.assert_allclose(logits(model, ids), theirs, rtol=0, atol=1e-4)


# ================================================================ npgpt sft --lora-rank
@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    """A tiny random GPT with npgpt-small's tokenizer (no chat template yet) and a few conversations."""
    return tiny_chat_dir(tmp_path_factory.mktemp("tokens-sft"))


def test_lora_sft_trains_the_chat_markers_it_adds_and_nothing_else_of_the_table(chat_model, tmp_path):
    from npgpt.finetuning.sft import SFTConfig, SFTTrainer

    settings = dict(model=str(chat_model / "model"), data=str(chat_model / "chats.jsonl"), max_steps=4, lr=1e-2,
                    batch_size=3, log_interval=100, eval_interval=100, workers=1, warmup_steps=0, lora_rank=2)
    quiet = lambda line: None
    trainer = SFTTrainer(SFTConfig(out_dir=str(tmp_path / "a"), **settings), log=quiet)
    markers = (8192, 8193)                                   # <|im_start|>, <|im_end|>: appended by add_chat_tokens
    assert trainer.model.wte.token_ids == markers
    start = host(trainer.model.wte.table()).copy()
    trainer.train()
    moved = np.flatnonzero((host(trainer.model.wte.table()) != start).any(axis=1))
    assert tuple(moved) == markers                            # only the markers' rows learned
    adapter = tmp_path / "a" / "checkpoint" / lora.CHECKPOINT_ADAPTER
    assert json.loads((adapter / lora.ADAPTER_CONFIG).read_text())["trainable_token_indices"] == list(markers)
    merged = GPT.from_pretrained(tmp_path / "a" / "checkpoint")
    np.testing.assert_array_equal(host(merged.wte.weight), host(trainer.model.wte.table()))
    resumed = SFTTrainer.resume(tmp_path / "a", log=quiet)   # rebuilt from --model, the rows from the adapter
    np.testing.assert_array_equal(host(resumed.model.wte.table()), host(trainer.model.wte.table()))
    frozen = SFTTrainer(SFTConfig(out_dir=str(tmp_path / "b"), lora_freeze_markers=True, **settings), log=quiet)
    assert type(frozen.model.wte) is nn.Embedding and not frozen.model.wte.weight.requires_grad


def test_saliency_reads_the_trained_rows_of_an_unmerged_model():
    # viz.saliency takes gradients at the embeddings the model looks up: with trainable rows, the trained ones.
    from npgpt import viz

    model = adapted()
    ids = [61, 5, 62, 9, 3]
    _, unmerged = viz.saliency(model, ids, target=7)
    with lora.merged_view(model):
        _, merged = viz.saliency(model, ids, target=7)
    np.testing.assert_allclose(unmerged, merged, rtol=1e-4, atol=1e-6)
