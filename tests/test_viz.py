"""Attention maps and gradient x input saliency (npgpt/viz.py, docs/interpretability.md)."""

import builtins
import math
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from npgpt import viz
from npgpt.finetuning.classifier import GPTClassifier
from npgpt.model import GPT, GPTConfig

CONFIG = GPTConfig(vocab_size=61, block_size=24, n_layer=2, n_head=2, n_embd=16)
IDS = [5, 17, 3, 44, 9, 12]


def scaled(model, seed=0, dtype=np.float32):
    """Weights large enough that attention is far from uniform and every token matters."""
    rng = np.random.default_rng(seed)
    for _, p in model.named_parameters():
        p.data = (rng.standard_normal(p.shape) * 0.4).astype(dtype)
    return model.eval()


class CharTokenizer:
    """Enough of a tokenizer for the viz functions: one character = one id."""

    ALPHABET = "abcdefghijklmnopqrstuvwxyz <>&.,"

    def encode(self, text):
        return [self.ALPHABET.index(c) for c in text]

    def decode(self, ids):
        return "".join(self.ALPHABET[i] for i in ids)


# ------------------------------------------------------------------ attention
def test_attention_weights_are_the_softmax_of_scaled_scores():
    # docs/interpretability.md eq:attention-weights: P = softmax(q k^T / sqrt(D)) over the keys j <= i.
    model = scaled(GPT(CONFIG, seed=0))
    w = viz.attention_weights(model, IDS)
    assert w.shape == (2, 2, 6, 6)
    # Recompute layer 0 by hand from the embeddings and the first block's weights.
    x = model.wte.weight.data[IDS] + model.wpe.weight.data[:6]
    ln = model.h[0].ln_1
    xhat = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + ln.eps)
    qkv = (xhat * ln.weight.data + ln.bias.data) @ model.h[0].attn.c_attn.weight.data + model.h[0].attn.c_attn.bias.data
    q, k = qkv[:, :16].reshape(6, 2, 8), qkv[:, 16:32].reshape(6, 2, 8)
    for head in range(2):
        scores = q[:, head] @ k[:, head].T / math.sqrt(8)
        scores = np.where(np.tril(np.ones((6, 6), bool)), scores, -np.inf)
        p = np.exp(scores - scores.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        np.testing.assert_allclose(w[0, head], p, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-5)
    assert np.all(w[..., np.triu_indices(6, 1)[0], np.triu_indices(6, 1)[1]] == 0)


def test_attention_weights_come_from_the_trunk_without_the_head(monkeypatch):
    model = GPT(CONFIG, seed=0).eval()
    calls = []
    trunk = model.trunk
    monkeypatch.setattr(model, "trunk", lambda *a, **k: calls.append(k) or trunk(*a, **k))
    monkeypatch.setattr(model, "lm_head", lambda h: pytest.fail("attention maps need no LM head"))
    weights = viz.attention_weights(model, IDS)
    assert calls == [{"return_attention": True}]
    _, expected = trunk(np.array([IDS]), return_attention=True)
    np.testing.assert_array_equal(weights, np.stack([a[0] for a in expected]))


def test_language_model_saliency_uses_the_trunk_and_the_tied_head(monkeypatch):
    model = GPT(CONFIG, seed=0).eval()
    heads = []
    head = model.lm_head
    monkeypatch.setattr(model, "lm_head", lambda h: heads.append(h.shape) or head(h))
    viz.saliency(model, IDS, 3)
    assert heads == [(1, CONFIG.n_embd)]                       # the last position only


def test_attention_svg_is_valid_xml_with_one_cell_per_pair_and_escaped_labels():
    model = scaled(GPT(CONFIG, seed=0))
    tokenizer = CharTokenizer()
    svg = viz.attention_map(model, "a<b&c", layer=1, head=0, tokenizer=tokenizer)
    root = ET.fromstring(svg)                     # raises if "<" or "&" were not escaped
    ns = "{http://www.w3.org/2000/svg}"
    cells = [r for r in root.iter(ns + "rect") if r.find(ns + "title") is not None]
    assert len(cells) == 25
    hidden = [r for r in cells if r.get("fill") == "url(#hidden)"]
    assert len(hidden) == 10                      # the 5*4/2 future positions
    labels = {t.text for t in root.iter(ns + "text")}
    assert {"a", "<", "b", "&", "c", "layer 1, head 0"} <= labels
    # the darkest visible cell is the largest weight
    w = viz.attention_weights(model, tokenizer.encode("a<b&c"))[1, 0]
    darkest = min((r for r in cells if r not in hidden), key=lambda r: int(r.get("fill")[1:3], 16))
    assert f"{w.max():.3f}" in darkest.find(ns + "title").text


def test_attention_map_writes_svg_and_png_files(tmp_path):
    model = scaled(GPT(CONFIG, seed=0))
    svg = viz.attention_map(model, IDS, layer=0, head=1, path=tmp_path / "map.svg")
    assert (tmp_path / "map.svg").read_text() == svg
    pytest.importorskip("matplotlib")
    viz.attention_map(model, IDS, layer=0, head=1, path=tmp_path / "map.png")
    assert (tmp_path / "map.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_attention_map_errors_name_the_problem(tmp_path, monkeypatch):
    model = scaled(GPT(CONFIG, seed=0))
    with pytest.raises(ValueError, match=r"layer 2 does not exist: the model has layers 0\.\.1"):
        viz.attention_map(model, IDS, layer=2)
    with pytest.raises(ValueError, match=r"head 5 does not exist"):
        viz.attention_map(model, IDS, head=5)
    with pytest.raises(ValueError, match="no tokenizer"):
        viz.attention_map(model, "some text")
    with pytest.raises(ValueError, match="use a .svg or .png"):
        viz.attention_map(model, IDS, path=tmp_path / "map.jpg")
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("no matplotlib here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(ImportError, match=r"PNG output needs matplotlib: pip install -e \"\.\[viz\]\""):
        viz.attention_map(model, IDS, path=tmp_path / "map.png")


# ------------------------------------------------------------------- saliency
def _log_probability_with_scaled_embedding(model, ids, target, t, alpha):
    """log p(target | x) with the token embedding at position t multiplied by (1 + alpha)."""
    import npgpt.functional as F
    from npgpt.autograd import Tensor

    gpt = getattr(model, "transformer", model)
    e = gpt.wte.weight.data[np.array([ids])].copy()
    e[0, t] *= 1.0 + alpha
    if isinstance(model, GPTClassifier):
        z = model(np.array([ids]), inputs_embeds=Tensor(e)).numpy()[0]
        if model.num_labels == 1:
            return -np.log1p(np.exp(-z[0] if target == 1 else z[0]))
        return z[target] - np.log(np.exp(z).sum())
    hidden = gpt.trunk(np.array([ids]), inputs_embeds=Tensor(e))
    logits = F.linear(hidden[:, -1], gpt.wte.weight.T).numpy()[0]
    return logits[target] - np.log(np.exp(logits - logits.max()).sum()) - logits.max()


@pytest.mark.parametrize("kind", ["lm", "binary", "softmax"])
def test_saliency_is_the_derivative_along_each_embedding(kind):
    # docs/interpretability.md eq:saliency and eq:saliency-derivative: s_t = (d log p / d e_t) . e_t
    #   = d/d alpha log p(target | e_t scaled by 1 + alpha) at alpha = 0 (checked by central differences).
    if kind == "lm":
        model, target = scaled(GPT(CONFIG, seed=0), dtype=np.float64), 7
    else:
        num_labels = 1 if kind == "binary" else 3
        model, target = scaled(GPTClassifier(CONFIG, num_labels=num_labels), dtype=np.float64), 1
    tokens, scores = viz.saliency(model, IDS, target)
    assert tokens == [f"#{i}" for i in IDS] and scores.shape == (6,)
    eps = 1e-6
    for t in range(len(IDS)):
        plus = _log_probability_with_scaled_embedding(model, IDS, target, t, eps)
        minus = _log_probability_with_scaled_embedding(model, IDS, target, t, -eps)
        assert scores[t] == pytest.approx((plus - minus) / (2 * eps), rel=1e-5, abs=1e-9), t
    assert np.abs(scores).max() > 1e-3


def test_binary_saliency_for_the_other_class_is_a_rescaled_mirror_image():
    # log(1 - s(z)) has gradient -s dz, log s(z) has (1 - s) dz: the ratio is -s/(1-s) at every token.
    model = scaled(GPTClassifier(CONFIG, num_labels=1), dtype=np.float64)
    _, towards_1 = viz.saliency(model, IDS, 1)
    _, towards_0 = viz.saliency(model, IDS, 0)
    s = model.predict_proba(np.array([IDS]))[0, 1]
    np.testing.assert_allclose(towards_0, -s / (1 - s) * towards_1, rtol=1e-8)


def test_saliency_leaves_the_model_unchanged_and_checks_targets():
    model = scaled(GPTClassifier(CONFIG, num_labels=3))
    before = {n: p.data.copy() for n, p in model.named_parameters()}
    model.train()
    viz.saliency(model, IDS, 2)
    assert model.training                                   # the mode is restored
    assert all(np.array_equal(before[n], p.data) and p.grad is None for n, p in model.named_parameters())
    with pytest.raises(ValueError, match=r"class 3 does not exist: the classifier has classes 0\.\.2"):
        viz.saliency(model, IDS, 3)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        viz.saliency(scaled(GPT(CONFIG)), IDS, 61)
    with pytest.raises(ValueError, match="is 2 tokens; give one token"):
        viz.saliency(scaled(GPT(CONFIG)), "ab", "cd", tokenizer=CharTokenizer())


def test_saliency_svg_colours_by_sign_and_size():
    svg = viz.saliency_svg(["good", "bad", "film"], [0.5, -1.0, 0.0], title="towards positive")
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    boxes = {r.find(ns + "title").text.split(":")[0]: r.get("fill") for r in root.iter(ns + "rect")
             if r.find(ns + "title") is not None}
    assert boxes["bad"] == "#b2182b"         # the strongest score takes the full (red) colour
    assert boxes["film"] == "#ffffff"        # a zero score is white
    r, g, b = (int(boxes["good"][i:i + 2], 16) for i in (1, 3, 5))
    assert b > r and 0 < 255 - b < 255 - r   # half-strength blue
    with pytest.raises(ValueError, match="3 tokens but 2 scores"):
        viz.saliency_svg(["a", "b", "c"], [1.0, 2.0])
