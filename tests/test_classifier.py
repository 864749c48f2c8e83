"""GPTClassifier: padding-invariant pooling, the two heads and their losses, HF-layout checkpoints."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import npgpt.functional as F
from npgpt import Tensor, backend
from npgpt.autograd.gradcheck import check_gradients
from npgpt.finetuning.classifier import (
    POOLINGS,
    GPTClassifier,
    language_model_loss,
    last_token_index,
    masked_pool,
    next_token_targets,
    pooled_width,
)
from npgpt.finetuning.labelled import pad_batch
from npgpt.io import checkpoint
from npgpt.io.inputs import positions_from_mask
from npgpt.model import GPT, GPTConfig

CONFIG = GPTConfig(vocab_size=61, block_size=24, n_layer=2, n_head=2, n_embd=16)


def make(num_labels=1, seed=1, labels=None, dtype=np.float32, pooling="last"):
    """A small classifier with weights large enough that every position matters to the logits."""
    model = GPTClassifier(CONFIG, num_labels=num_labels, labels=labels, seed=seed, pad_token_id=60, pooling=pooling)
    rng = np.random.default_rng(seed)
    for _, p in model.named_parameters():
        p.data = (rng.standard_normal(p.shape) * 0.3).astype(dtype)
    return model.eval()


SEQUENCES = [[3, 14, 15, 9, 26, 5, 35], [8, 9], [7, 9, 3, 2], [42]]


# ----------------------------------------------------------------- padding
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("pad_id", [0, 9, 60])
def test_logits_are_the_same_alone_and_in_a_padded_batch(side, pad_id):
    # docs/finetuning.md eq:padded-positions and eq:last-token-pooling: positions count real tokens,
    # pooling reads the last real one.
    # pad_id 9 also occurs inside the texts and ends one ([8, 9]): a search for the pad id, for the first
    # (old transformers) or for the rightmost token that is not it (current transformers), would pool the wrong token.
    model = make(num_labels=3)
    alone = np.concatenate([model(np.array([s])).numpy() for s in SEQUENCES])
    idx, mask = pad_batch(SEQUENCES, pad_id=pad_id, side=side)
    batched = model(idx, attention_mask=mask).numpy()
    np.testing.assert_allclose(batched, alone, rtol=1e-5, atol=1e-5)
    assert np.abs(alone[0] - alone[1]).max() > 1e-2      # the sequences do differ


def test_without_the_mask_the_padding_would_change_the_logits():
    # Sanity check that the mask is what protects the result: treating padding as text changes it.
    model = make(num_labels=1)
    idx, mask = pad_batch(SEQUENCES, pad_id=9, side="left")
    masked = model(idx, attention_mask=mask).numpy()
    unmasked = model(idx).numpy()
    assert np.abs(masked - unmasked).max() > 1e-3


def test_positions_count_real_tokens_and_pooling_finds_the_last_one():
    # docs/finetuning.md eq:padded-positions and eq:last-token-pooling:
    # p[b, t] = sum_{u <= t} m[b, u] - 1 and t_b = max{t : m[b, t] = 1}.
    mask = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 1, 1, 0]])
    assert positions_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 2, 2], [0, 0, 1, 2, 2]]
    assert last_token_index(mask).tolist() == [4, 2, 3]


def test_head_is_linear_in_the_pooled_hidden_state():
    # docs/finetuning.md eq:classifier-head: z_b = h_b W, with h_b the final hidden state at the last real token.
    model = make(num_labels=3)
    idx, mask = pad_batch(SEQUENCES, pad_id=0, side="right")
    hidden = model.transformer.trunk(idx, attention_mask=mask, position_ids=positions_from_mask(mask))
    pooled = hidden.numpy()[np.arange(len(SEQUENCES)), [len(s) - 1 for s in SEQUENCES]]
    np.testing.assert_allclose(model(idx, attention_mask=mask).numpy(), pooled @ model.score.weight.data,
                               rtol=1e-5, atol=1e-6)


def test_the_classifier_checks_once_and_runs_the_backbones_trunk(monkeypatch):
    from npgpt.io import inputs

    model = make()
    idx, mask = pad_batch(SEQUENCES, pad_id=0, side="left")
    calls, checks = [], []
    trunk, check = model.transformer.trunk, inputs.check_token_ids
    monkeypatch.setattr(model.transformer, "trunk", lambda *a, **k: calls.append(k) or trunk(*a, **k))
    monkeypatch.setattr(model.transformer, "lm_head", lambda h: pytest.fail("a classifier has no LM head"))
    monkeypatch.setattr(inputs, "check_token_ids", lambda *a, **k: checks.append(a) or check(*a, **k))
    model(idx, attention_mask=mask)
    assert len(calls) == 1 and "validate" not in calls[0]        # the trunk trusts the checked inputs
    assert len(checks) == 1                                      # the ids, once
    np.testing.assert_array_equal(calls[0]["position_ids"], positions_from_mask(mask))


def test_bad_masks_are_clear_errors():
    model = make()
    idx = np.array([[1, 2, 3], [4, 5, 6]])
    with pytest.raises(ValueError, match="sequence 1 of the batch is all padding"):
        model(idx, attention_mask=np.array([[1, 1, 0], [0, 0, 0]]))
    with pytest.raises(ValueError, match=r"attention_mask has shape \(2, 2\)"):
        model(idx, attention_mask=np.ones((2, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="only 0 .padding. and 1"):
        model(idx, attention_mask=np.full((2, 3), 2))


def test_gradients_through_the_padded_classifier_match_finite_differences():
    # Float64 end-to-end check of the backbone with padding mask + pooling + head, w.r.t. the input embeddings.
    model = make(num_labels=2, dtype=np.float64)
    idx, mask = pad_batch([[3, 14, 15], [8]], pad_id=0, side="left")
    embeds = model.transformer.wte.weight.data[idx].copy()
    check_gradients(lambda e: model(idx, attention_mask=mask, inputs_embeds=e), embeds, rtol=1e-4, atol=1e-7)


# ------------------------------------------------------------- heads, losses
def test_one_logit_head_is_the_sigmoid_of_the_logit_and_trains_with_bce():
    # docs/finetuning.md eq:sigmoid and eq:bce: p(y=1|x) = s(z) = 1/(1+e^{-z}), loss = mean binary cross-entropy.
    model = make(num_labels=1)
    idx, mask = pad_batch(SEQUENCES, pad_id=0)
    z = model(idx, attention_mask=mask).numpy()[:, 0].astype(np.float64)
    s = 1.0 / (1.0 + np.exp(-z))
    np.testing.assert_allclose(model.predict_proba(idx, mask), np.stack([1 - s, s], axis=1), rtol=1e-6)
    y = np.array([1, 0, 0, 1])
    _, loss = model(idx, attention_mask=mask, labels=y)
    expected = -np.mean(y * np.log(s) + (1 - y) * np.log(1 - s))
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert model.predict(idx, mask).tolist() == (s > 0.5).astype(int).tolist()


def test_bce_gradient_is_prediction_minus_label_over_n():
    # docs/finetuning.md eq:bce-grad and eq:sigmoid-derivative: dL/dz_i = (s(z_i) - y_i) / N, using ds/dz = s (1 - s).
    model = make(num_labels=1)
    z = Tensor(np.array([[2.0], [-1.0], [0.5]], dtype=np.float64), requires_grad=True)
    y = np.array([1, 0, 0])
    model.loss(z, y).backward()
    s = 1.0 / (1.0 + np.exp(-z.data[:, 0]))
    np.testing.assert_allclose(z.grad[:, 0], (s - y) / 3, rtol=1e-12)
    x = Tensor(np.array([-3.0, 0.0, 4.0]), requires_grad=True)
    F.sigmoid(x).sum().backward()
    sx = 1.0 / (1.0 + np.exp(-x.data))
    np.testing.assert_allclose(x.grad, sx * (1 - sx), rtol=1e-12)


def test_softmax_head_uses_cross_entropy_with_softmax_minus_onehot_gradient():
    # docs/finetuning.md eq:multiclass-loss: L = -1/N sum log softmax(z_i)[y_i]; gradient (softmax - onehot) / N.
    model = make(num_labels=3)
    z = Tensor(np.array([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]), requires_grad=True)
    y = np.array([1, 2])
    loss = model.loss(z, y)
    p = np.exp(z.data) / np.exp(z.data).sum(axis=1, keepdims=True)
    assert loss.item() == pytest.approx(-np.mean(np.log(p[[0, 1], y])), rel=1e-12)
    loss.backward()
    np.testing.assert_allclose(z.grad, (p - np.eye(3)[y]) / 2, rtol=1e-10)
    idx, mask = pad_batch(SEQUENCES, pad_id=0)
    probs = model.predict_proba(idx, mask)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)


def test_labels_outside_the_classes_are_rejected():
    model = make(num_labels=1)
    with pytest.raises(ValueError, match=r"class labels must lie in 0\.\.1, got 0\.\.2"):
        model(np.array([[1, 2]] * 3), labels=np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="num_labels must be a positive integer"):
        GPTClassifier(CONFIG, num_labels=0)
    with pytest.raises(ValueError, match="2 label names for 3 classes"):
        GPTClassifier(CONFIG, num_labels=3, labels=["a", "b"])


# --------------------------------------------------------------- checkpoints
def test_save_and_load_round_trip_in_hugging_face_layout(tmp_path):
    model = make(num_labels=3, labels=["neg", "neutral", "pos"])
    model.save_pretrained(tmp_path / "clf")
    config = json.loads((tmp_path / "clf" / "config.json").read_text())
    assert config["architectures"] == ["GPT2ForSequenceClassification"]
    assert config["num_labels"] == 3 and config["pad_token_id"] == 60
    assert config["id2label"] == {"0": "neg", "1": "neutral", "2": "pos"}
    assert config["label2id"] == {"neg": 0, "neutral": 1, "pos": 2}
    tensors = checkpoint.read_tensors(tmp_path / "clf" / "model.safetensors")
    assert tensors["score.weight"].shape == (3, CONFIG.n_embd)            # torch Linear layout
    assert "transformer.h.1.attn.c_attn.weight" in tensors and "transformer.ln_f.bias" in tensors
    loaded = GPTClassifier.from_pretrained(tmp_path / "clf")
    assert loaded.labels == ["neg", "neutral", "pos"] and loaded.num_labels == 3
    idx, mask = pad_batch(SEQUENCES, pad_id=60, side="left")
    np.testing.assert_array_equal(loaded(idx, attention_mask=mask).numpy(), model(idx, attention_mask=mask).numpy())
    with pytest.raises(ValueError, match="holds a classifier with num_labels=3, not 2"):
        GPTClassifier.from_pretrained(tmp_path / "clf", num_labels=2)


def test_one_logit_classifier_keeps_both_class_names(tmp_path):
    model = make(num_labels=1, labels=["negative", "positive"])
    model.save_pretrained(tmp_path / "clf")
    config = json.loads((tmp_path / "clf" / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification"   # HF's name for BCE-with-logits
    assert GPTClassifier.from_pretrained(tmp_path / "clf").labels == ["negative", "positive"]


def test_starts_from_a_language_model_directory(tmp_path):
    lm = GPT(CONFIG, seed=3)
    lm.save_pretrained(tmp_path / "lm")
    clf = GPTClassifier.from_pretrained(tmp_path / "lm", num_labels=2)
    for name, p in lm.named_parameters():
        np.testing.assert_array_equal(dict(clf.named_parameters())[f"transformer.{name}"].data, p.data)
    assert clf.score.weight.shape == (CONFIG.n_embd, 2)
    with pytest.raises(ValueError, match="is a language model, not a classifier: say how many outputs"):
        GPTClassifier.from_pretrained(tmp_path / "lm")


@pytest.mark.slow
def test_hugging_face_loads_our_classifier_and_agrees(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    for num_labels in (1, 3):
        model = make(num_labels=num_labels)
        model.save_pretrained(tmp_path / f"clf{num_labels}")
        hf = transformers.GPT2ForSequenceClassification.from_pretrained(tmp_path / f"clf{num_labels}").eval()
        idx = np.random.default_rng(0).integers(0, 60, size=(3, 9))        # unpadded: no id 60 (the pad id)
        with torch.no_grad():
            theirs = hf(torch.tensor(idx)).logits.numpy()
        np.testing.assert_allclose(model(idx).numpy(), theirs, rtol=1e-4, atol=1e-5)
    # ... and the other way round: a classifier Hugging Face wrote loads in npgpt.
    hf.save_pretrained(tmp_path / "from_hf")
    ours = GPTClassifier.from_pretrained(tmp_path / "from_hf")
    with torch.no_grad():
        theirs = hf(torch.tensor(idx)).logits.numpy()
    np.testing.assert_allclose(ours(idx).numpy(), theirs, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("pooling", POOLINGS)
def test_classifier_gives_the_same_logits_and_loss_on_every_backend(xp, pooling):
    # The CuPy run is the same code: the array module follows the data (skipped without a GPU).
    model = make(num_labels=2, pooling=pooling)
    idx, mask = pad_batch(SEQUENCES, pad_id=60, side="left")
    logits, loss = model(idx, attention_mask=mask, labels=np.array([0, 1, 1, 0]))
    if xp is not np:
        model.to("cuda")
    moved, moved_loss = model(xp.asarray(idx), attention_mask=xp.asarray(mask), labels=xp.asarray([0, 1, 1, 0]))
    assert moved.device == ("cpu" if xp is np else "cuda")
    np.testing.assert_allclose(moved.numpy(), logits.numpy(), rtol=1e-4, atol=1e-5)
    assert moved_loss.item() == pytest.approx(loss.item(), rel=1e-4)
    moved_loss.backward()
    grad = model.score.weight.grad
    assert grad is not None and backend.device_of(grad) == moved.device


# ------------------------------------------------------------------ pooling
@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4), st.integers(1, 6), st.integers(1, 5), st.integers(0, 2 ** 31 - 1), st.sampled_from(POOLINGS))
def test_masked_pool_is_last_mean_and_max_over_the_real_tokens(B, T, C, seed, pooling):
    # docs/finetuning.md eq:concat-pooling: [H[b, t_b], sum_t m H / n_b, max_{t: m=1} H] -- padding never enters.
    rng = np.random.default_rng(seed)
    H = rng.standard_normal((B, T, C))
    mask = (rng.random((B, T)) < 0.6).astype(np.int64)
    mask[np.arange(B), rng.integers(0, T, B)] = 1                 # every row has a real token
    H[mask == 0] = 1e3                                           # padding would win every max and move every mean
    out = masked_pool(Tensor(H), mask, pooling).numpy()
    expected = []
    for b in range(B):
        real = H[b, mask[b] == 1]                                # (n_b, C), in order
        parts = {"last": [real[-1]], "mean": [real.mean(axis=0)],
                 "concat": [real[-1], real.mean(axis=0), real.max(axis=0)]}[pooling]
        expected.append(np.concatenate(parts))
    np.testing.assert_allclose(out, np.array(expected), rtol=1e-12, atol=1e-12)
    assert out.shape == (B, pooled_width(pooling, C))


@pytest.mark.parametrize("pooling", POOLINGS)
def test_masked_pool_gradient_matches_finite_differences(pooling):
    rng = np.random.default_rng(3)
    H = rng.standard_normal((3, 5, 4))                           # distinct values: no ties in the max
    mask = np.array([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 0, 1, 1, 0]])
    check_gradients(lambda h: masked_pool(h, mask, pooling), H)
    check_gradients(lambda h: masked_pool(h, None, pooling), H)


@pytest.mark.parametrize("pooling", ["mean", "concat"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_pooled_classifiers_give_the_same_logits_alone_and_padded(pooling, side):
    model = GPTClassifier(CONFIG, num_labels=2, seed=1, pooling=pooling)
    assert model.score.weight.shape == (pooled_width(pooling, CONFIG.n_embd), 2)
    alone = np.concatenate([model(np.array([s])).numpy() for s in SEQUENCES])
    idx, mask = pad_batch(SEQUENCES, pad_id=9, side=side)
    np.testing.assert_allclose(model(idx, attention_mask=mask).numpy(), alone, rtol=1e-5, atol=1e-6)


def test_gradients_through_a_concat_pooled_classifier_match_finite_differences():
    model = make(num_labels=1, dtype=np.float64, pooling="concat")
    idx, mask = pad_batch([[3, 14, 15], [8, 2]], pad_id=0, side="right")
    embeds = model.transformer.wte.weight.data[idx].copy()
    check_gradients(lambda e: model(idx, attention_mask=mask, inputs_embeds=e), embeds, rtol=1e-4, atol=1e-7)


def test_pooling_is_saved_checked_and_reloaded(tmp_path):
    model = GPTClassifier(CONFIG, num_labels=3, seed=4, pooling="concat")
    model.save_pretrained(tmp_path / "clf")
    assert json.loads((tmp_path / "clf" / "config.json").read_text())["npgpt_pooling"] == "concat"
    loaded = GPTClassifier.from_pretrained(tmp_path / "clf")
    assert loaded.pooling == "concat"
    idx = np.array([SEQUENCES[0]])
    np.testing.assert_array_equal(loaded(idx).numpy(), model.eval()(idx).numpy())
    with pytest.raises(ValueError, match="pooling='concat', not 'last'"):
        GPTClassifier.from_pretrained(tmp_path / "clf", pooling="last")
    with pytest.raises(ValueError, match="pooling must be one of last, mean, concat, got 'first'"):
        GPTClassifier(CONFIG, pooling="first")
    config = json.loads((tmp_path / "clf" / "config.json").read_text())
    config["npgpt_pooling"] = "last"              # the file says last, the head is 3 n_embd wide
    (tmp_path / "clf" / "config.json").write_text(json.dumps(config))
    with pytest.raises(checkpoint.CheckpointError, match=r"score.weight has shape \(3, 48\).*implies \(3, 16\)"):
        GPTClassifier.from_pretrained(tmp_path / "clf")
    config["npgpt_pooling"] = ["concat"]
    (tmp_path / "clf" / "config.json").write_text(json.dumps(config))
    with pytest.raises(checkpoint.CheckpointError, match="npgpt_pooling must be one of"):
        GPTClassifier.from_pretrained(tmp_path / "clf")


def test_head_dropout_acts_in_training_only():
    model = make(num_labels=2)
    idx = np.array([SEQUENCES[0]])
    clean = model(idx).numpy()
    model.head_dropout.p = 0.5
    np.testing.assert_array_equal(model(idx).numpy(), clean)      # eval mode: the identity
    model.train()
    assert np.abs(model(idx).numpy() - clean).max() > 1e-3


# ------------------------------------------------- the auxiliary LM objective
def test_next_token_targets_keep_real_tokens_followed_by_real_tokens():
    idx, mask = pad_batch([[3, 14, 15], [8]], pad_id=0, side="right")
    np.testing.assert_array_equal(next_token_targets(idx, mask), [[14, 15, -100], [-100, -100, -100]])
    idx, mask = pad_batch([[3, 14, 15], [8, 9]], pad_id=7, side="left")
    np.testing.assert_array_equal(next_token_targets(idx, mask), [[14, 15, -100], [-100, 9, -100]])
    np.testing.assert_array_equal(next_token_targets(np.array([[1, 2, 3]]), None), [[2, 3, -100]])


def _hand_lm_loss(model, idx, mask):
    """Mean next-token cross-entropy over real -> real pairs, from the logits by hand (log-sum-exp)."""
    gpt = model.transformer
    positions = positions_from_mask(mask)
    hidden = gpt.trunk(idx, attention_mask=mask, position_ids=positions).numpy()           # (B, T, C)
    logits = hidden @ gpt.wte.weight.data.T                                                # (B, T, V)
    terms = []
    for b in range(idx.shape[0]):
        for t in range(idx.shape[1] - 1):
            if mask[b, t] and mask[b, t + 1]:
                z = logits[b, t]
                terms.append(np.log(np.exp(z - z.max()).sum()) + z.max() - z[idx[b, t + 1]])
    return float(np.mean(terms))


@settings(max_examples=15, deadline=None)
@given(weight=st.floats(0.0, 2.0), side=st.sampled_from(["left", "right"]), seed=st.integers(0, 50))
def test_auxiliary_lm_loss_is_task_loss_plus_lambda_times_next_token_loss(weight, side, seed):
    # docs/finetuning.md eq:auxiliary-lm-loss: L = L_task + lambda L_LM, L_LM over real -> real pairs only.
    model = make(num_labels=1, seed=seed % 5, dtype=np.float64)
    idx, mask = pad_batch(SEQUENCES, pad_id=seed % 61, side=side)
    labels = np.array([0, 1, 1, 0])
    _, task = model(idx, attention_mask=mask, labels=labels)
    model.lm_loss_weight = weight
    _, total = model(idx, attention_mask=mask, labels=labels)
    expected = task.item() + weight * _hand_lm_loss(model, idx, mask)
    assert abs(total.item() - expected) <= 1e-9 * max(1.0, abs(expected))


def test_auxiliary_lm_loss_gradient_matches_finite_differences():
    model = make(num_labels=1, dtype=np.float64)
    gpt = model.transformer
    idx, mask = pad_batch([[3, 14, 15, 9], [8, 2]], pad_id=0, side="right")
    hidden = gpt.trunk(idx, attention_mask=mask, position_ids=positions_from_mask(mask)).numpy()
    check_gradients(lambda h: language_model_loss(gpt, h, idx, mask), hidden, rtol=1e-5, atol=1e-8)
    # A state that predicts no counted target gets exactly zero gradient: padding, a last real token
    # (row 1's "2" is followed by padding, row 0's "9" ends the row); the others get some.
    h = Tensor(hidden, requires_grad=True)
    language_model_loss(gpt, h, idx, mask).backward()
    predicts = np.array([[1, 1, 1, 0], [1, 0, 0, 0]], dtype=bool)
    assert np.all(h.grad[~predicts] == 0)
    assert np.all(np.abs(h.grad[predicts]).sum(axis=-1) > 0)


def test_auxiliary_lm_loss_of_slices_adds_up_to_the_whole_batchs_mean():
    # Threads and ranks weight a slice of n of N rows by n / N (docs/performance.md eq:shard-gradients); with the
    # whole batch's pairs per row the slices' LM terms then add up to eq:auxiliary-lm-loss's mean over all pairs.
    model = make(num_labels=1, dtype=np.float64)
    gpt = model.transformer
    idx, mask = pad_batch([[3, 14, 15, 9, 26, 5], [8], [7, 9], [42, 1, 2]], pad_id=0, side="right")
    positions = positions_from_mask(mask)
    whole = language_model_loss(gpt, gpt.trunk(idx, attention_mask=mask, position_ids=positions), idx, mask).item()
    pairs_per_row = (5 + 0 + 1 + 2) / 4
    total = 0.0
    for rows in ([0], [1, 2], [3]):        # the middle slice has one pair; a slice [1] alone would have none
        h = gpt.trunk(idx[rows], attention_mask=mask[rows], position_ids=positions[rows])
        total += len(rows) / 4 * language_model_loss(gpt, h, idx[rows], mask[rows], pairs_per_row).item()
    assert abs(total - whole) < 1e-12
    h = Tensor(gpt.trunk(idx[[1]], attention_mask=mask[[1]], position_ids=positions[[1]]).numpy(), requires_grad=True)
    nothing = language_model_loss(gpt, h, idx[[1]], mask[[1]], pairs_per_row)     # a one-token text: no pair
    nothing.backward()
    assert nothing.item() == 0.0 and np.all(h.grad == 0)
