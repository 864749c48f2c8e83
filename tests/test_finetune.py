"""Fine-tuning (npgpt.finetuning.finetune): the loop and the CLI. The data files and padding are
tests/test_labelled.py's, the metrics tests/test_metrics.py's."""

import csv
import json
import pathlib
import re
from collections import Counter

import numpy as np
import pytest
from test_labelled import write
from tiny_models import tiny_bpe_model_dir

from npgpt.finetuning import finetune, labelled
from npgpt.finetuning.classifier import GPTClassifier
from npgpt.model import GPTConfig

# ------------------------------------------------------------------- the loop
WORD = re.compile(r"[a-z']+")


class WordTokenizer:
    """A word-level tokenizer (id 0 = unknown word) so that loop tests need no trained BPE."""

    def __init__(self, texts, min_count=1):
        counts = Counter(w for t in texts for w in WORD.findall(t.lower()))
        self.vocab = {w: i + 1 for i, w in enumerate(sorted(w for w, c in counts.items() if c >= min_count))}

    def encode(self, text):
        return [self.vocab.get(w, 0) for w in WORD.findall(text.lower())] or [0]

    def save(self, directory):
        pathlib.Path(directory, "words.json").write_text(json.dumps(self.vocab))


def toy_task(n, seed):
    """Sentences of neutral words with one sentiment word; label 1 iff it is a positive one."""
    rng = np.random.default_rng(seed)
    good, bad, neutral = ["good", "great", "fine"], ["bad", "awful", "poor"], ["the", "film", "was", "a", "plot", "actor"]
    texts, labels = [], []
    for _ in range(n):
        y = int(rng.integers(0, 2))
        words = list(rng.choice(neutral, size=int(rng.integers(2, 7))))
        words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(good if y else bad)))
        texts.append(" ".join(words))
        labels.append(y)
    return texts, labels


def small_classifier(tokenizer, num_labels=1, n_layer=2, seed=0):
    config = GPTConfig(vocab_size=len(tokenizer.vocab) + 1, block_size=32, n_layer=n_layer, n_head=2, n_embd=32)
    return GPTClassifier(config, num_labels=num_labels, labels=["neg", "pos"] if num_labels <= 2 else None, seed=seed)


def test_finetuning_learns_a_toy_task_with_either_head():
    train, val = toy_task(400, seed=0), toy_task(100, seed=1)
    tokenizer = WordTokenizer(train[0])
    for num_labels in (1, 2):
        model = small_classifier(tokenizer, num_labels)
        result = finetune.finetune(model, tokenizer, *train, *val, epochs=6, lr=3e-3, batch_size=32, log=None)
        metrics = finetune.evaluate(model, finetune.Encoded(tokenizer, *val, 32), pad_id=0)
        assert metrics["accuracy"] > 0.9, (num_labels, result.history)
        assert result.history[-1]["val_loss"] < result.history[0]["val_loss"]
        assert not model.training and all(p.requires_grad for p in model.parameters())


def test_freezing_trains_only_the_last_blocks_and_the_head():
    train, val = toy_task(64, seed=0), toy_task(16, seed=1)
    tokenizer = WordTokenizer(train[0])
    for train_last, changing in ((1, ("transformer.h.1.", "transformer.ln_f.", "score.")), (0, ("score.",))):
        model = small_classifier(tokenizer, n_layer=2)
        before = {n: p.data.copy() for n, p in model.named_parameters()}
        finetune.finetune(model, tokenizer, *train, *val, epochs=1, lr=1e-2, train_last=train_last, log=None)
        for name, p in model.named_parameters():
            moved = not np.array_equal(before[name], p.data)
            assert moved == name.startswith(changing), (train_last, name)
    assert finetune.freeze(model, 2)[:2] == ["transformer.h.0.ln_1.weight", "transformer.h.0.ln_1.bias"]
    with pytest.raises(ValueError, match=r"train_last must lie in 0\.\.2"):
        finetune.freeze(model, 3)


def test_the_head_gets_its_own_learning_rate():
    tokenizer = WordTokenizer(["a b"])
    model = small_classifier(tokenizer)
    opt = finetune._optimizer(model, finetune.FinetuneConfig(lr=1e-4, head_lr=5e-3))
    opt.set_lr(2e-4)                          # what the schedule does each step
    rates = {name: group["lr"] for group in opt.param_groups for name in group["names"]}
    assert rates["score.weight"] == pytest.approx(1e-2)
    assert rates["transformer.h.0.attn.c_attn.weight"] == pytest.approx(2e-4)
    assert rates["transformer.ln_f.bias"] == pytest.approx(2e-4)


def test_early_stopping_restores_the_best_weights_and_saves_them(tmp_path):
    # Validation labels are the opposite of the training labels: the better the model fits the
    # training set, the worse its validation loss, so training must stop and roll back.
    train, val = toy_task(200, seed=0), toy_task(60, seed=1)
    flipped = [1 - y for y in val[1]]
    tokenizer = WordTokenizer(train[0])
    model = small_classifier(tokenizer)
    result = finetune.finetune(model, tokenizer, *train, val[0], flipped, epochs=20, lr=3e-3, eval_every=4,
                               patience=2, out_dir=tmp_path / "clf", log=None)
    assert result.stopped_early and result.steps < 20 * 7
    assert result.best_step == min(result.history, key=lambda h: h["val_loss"])["step"]
    data = finetune.Encoded(tokenizer, val[0], flipped, 32)
    assert finetune.evaluate(model, data, 0)["loss"] == pytest.approx(result.best_loss, rel=1e-5)
    saved = GPTClassifier.from_pretrained(tmp_path / "clf")
    assert (tmp_path / "clf" / "words.json").is_file()                  # the tokenizer travels along
    assert finetune.evaluate(saved, data, 0)["loss"] == pytest.approx(result.best_loss, rel=1e-5)


def test_best_metric_accuracy_keeps_the_most_accurate_weights_and_loss_the_lowest_loss():
    # An overconfident classifier: its validation loss turns up (evaluation 2) while its accuracy
    # still rises (evaluations 2 to 4). "loss" keeps evaluation 1. "accuracy" keeps evaluation 4:
    # it ties evaluation 2's accuracy with a lower loss, while evaluation 3's tie has a higher one,
    # and the later evaluations 5 and 6 are less accurate (so neither "the latest" nor "any tie"
    # would pass).
    tokenizer = WordTokenizer(["good bad"])
    model = small_classifier(tokenizer)
    weight = model.score.weight
    scores = [(0.40, 0.70), (0.45, 0.75), (0.50, 0.75), (0.44, 0.75), (0.60, 0.73), (0.70, 0.74)]
    kept = {}
    for metric in ("loss", "accuracy"):
        keeper = finetune._BestKeeper(model, [weight], None, tokenizer, None, patience=2, log=lambda line: None,
                                      best_metric=metric)
        for step, (loss, accuracy) in enumerate(scores, start=1):
            weight.data[...] = step                       # the weights of evaluation `step`
            keeper.after_evaluation(step, float(step), 0.0, {"loss": loss, "accuracy": accuracy, "f1": 0.0}, 6)
            if keeper.result.stopped_early:
                break
        keeper.restore_best()
        kept[metric] = (keeper.result.best_step, float(weight.data.flat[0]), keeper.result.best_loss,
                        len(keeper.result.history))
    assert kept["loss"] == (1, 1.0, 0.40, 3)            # two evaluations without a lower loss: stop after 3
    assert kept["accuracy"] == (4, 4.0, 0.44, 6)        # two without a higher accuracy: stop after 6
    with pytest.raises(ValueError, match="best_metric must be 'loss' or 'accuracy'"):
        finetune.FinetuneConfig(best_metric="f1")


def test_loop_rejects_bad_inputs():
    tokenizer = WordTokenizer(["good film"])
    model = small_classifier(tokenizer)
    with pytest.raises(ValueError, match=r"training labels must be class ids 0\.\.1, got 0\.\.2"):
        finetune.finetune(model, tokenizer, ["good", "bad", "meh"], [0, 1, 2], ["good"], [1], log=None)
    with pytest.raises(ValueError, match="2 texts but 1 labels"):
        finetune.finetune(model, tokenizer, ["good", "bad"], [0], ["good"], [1], log=None)
    with pytest.raises(ValueError, match="FinetuneConfig.patience must be a positive integer"):
        finetune.FinetuneConfig(patience=0)


@pytest.mark.slow
def test_real_movie_reviews_fine_tune_beats_chance_on_held_out_reviews():
    from npgpt.datasets import DatasetUnavailable

    try:
        texts, labels = labelled.movie_reviews()
    except DatasetUnavailable as exc:
        pytest.skip(f"movie reviews cannot be fetched here: {exc}")
    rows = np.random.default_rng(0).permutation(len(texts))[:3000]      # a seeded slice
    texts, labels = [texts[i] for i in rows], [labels[i] for i in rows]
    train, val, test = [([texts[i] for i in part], [labels[i] for i in part])
                        for part in labelled.split_indices(len(texts), (0.7, 0.1, 0.2), seed=0)]
    tokenizer = WordTokenizer(train[0], min_count=2)
    config = GPTConfig(vocab_size=len(tokenizer.vocab) + 1, block_size=48, n_layer=1, n_head=2, n_embd=32)
    model = GPTClassifier(config, num_labels=1, seed=0)
    finetune.finetune(model, tokenizer, *train, *val, epochs=4, batch_size=16, lr=1e-3, weight_decay=0.1,
                      max_length=48, eval_every=44, patience=10, log=None)
    metrics = finetune.evaluate(model, finetune.Encoded(tokenizer, *test, 48), pad_id=0)
    # 600 held-out reviews, about half positive: chance is 0.5 with a standard deviation of 0.02.
    # (A one-layer model trained from scratch on 2,100 reviews reaches 0.67-0.70 over six seeds.)
    assert metrics["accuracy"] > 0.6, metrics
    assert metrics["confusion"].sum() == 600


# ------------------------------------------------------------------------ CLI
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny pretrained-model directory: a BPE tokenizer and a GPT with its vocabulary."""
    texts, _ = toy_task(200, seed=5)
    return tiny_bpe_model_dir(tmp_path_factory.mktemp("lm"), texts)


def run_cli(*argv):
    from npgpt.apps import cli

    return cli.main(["finetune", *map(str, argv)])


def test_cli_finetunes_a_csv_into_a_loadable_classifier(model_dir, tmp_path, capsys):
    from npgpt.tokenizer import Tokenizer

    texts, labels = toy_task(300, seed=0)
    data = tmp_path / "reviews.csv"
    with open(data, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["review", "sentiment"])
        writer.writerows((t, "pos" if y else "neg") for t, y in zip(texts, labels))
    out = tmp_path / "clf"
    status = run_cli("--model", model_dir, "--data", data, "--text-column", "review", "--label-column",
                     "sentiment", "--out", out, "--epochs", "4", "--lr", "3e-3", "--batch-size", "16")
    assert status == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "classes ['neg', 'pos']; one logit + sigmoid" in printed and "confusion matrix" in printed
    clf = GPTClassifier.from_pretrained(out)
    tokenizer = Tokenizer.from_pretrained(out)
    assert clf.labels == ["neg", "pos"] and clf.num_labels == 1
    assert json.loads((out / "config.json").read_text())["pad_token_id"] == tokenizer.special_tokens["<|endoftext|>"]
    results = json.loads((out / "eval_results.json").read_text())
    history = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert history and {"step", "train_loss", "val_loss"} <= set(history[0])
    assert (out / "loss_curve.png").read_bytes().startswith(b"\x89PNG")
    assert results["accuracy"] > 0.8 and results["labels"] == ["neg", "pos"]
    probs = finetune.text_probabilities(clf, tokenizer, ["the film was great", "the plot was awful"])
    assert probs.argmax(axis=1).tolist() == [1, 0]


def test_cli_reports_missing_columns_empty_texts_and_unknown_labels(model_dir, tmp_path, capsys):
    data = write(tmp_path / "d.jsonl", "".join(json.dumps({"text": t, "label": y}) + "\n"
                                               for t, y in zip(*toy_task(20, seed=0))))
    assert run_cli("--model", model_dir, "--data", data, "--text-column", "sentence", "--out", tmp_path / "o") == 1
    assert "npgpt: error: " in (err := capsys.readouterr().err) and "no field 'sentence'" in err
    assert run_cli("--model", model_dir, "--data", data, "--labels", "0,2", "--out", tmp_path / "o") == 1
    assert "label 1 (example" in (err := capsys.readouterr().err) and "['0', '2']" in err
    empty = write(tmp_path / "e.tsv", "text\tlabel\ngood film\t1\n\t0\n")
    assert run_cli("--model", model_dir, "--data", empty, "--out", tmp_path / "o") == 1
    assert "line 3: empty text in column 'text'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def sentiment_example():
    """examples/sentiment.py as a module (skips the test where the movie reviews cannot be fetched)."""
    import importlib.util

    from npgpt.datasets import DatasetUnavailable

    try:
        labelled.movie_reviews()
    except DatasetUnavailable as exc:
        pytest.skip(f"movie reviews cannot be fetched here: {exc}")
    path = pathlib.Path(__file__).resolve().parents[1] / "examples" / "sentiment.py"
    spec = importlib.util.spec_from_file_location("sentiment_example", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    return example


def test_sentiment_example_runs_end_to_end(model_dir, tmp_path, capsys):
    example = sentiment_example()
    assert example.main(["--model", str(model_dir), "--limit", "400", "--epochs", "1", "--pooling", "concat",
                         "--unfreeze", "gradual", "--layer-lr-decay", "2.6", "--out", str(tmp_path / "clf")]) == 0
    printed = capsys.readouterr().out
    assert "400 reviews" in printed and "320 train, 40 validation, 40 test" in printed
    assert "bag-of-words logistic regression" in printed and "test accuracy" in printed
    assert "training the top 1 of 3 layer groups" in printed       # one block: head, block + ln_f, embeddings
    saved = GPTClassifier.from_pretrained(tmp_path / "clf")
    assert saved.labels == ["negative", "positive"] and saved.pooling == "concat"
    # ULMFiT's unlabelled text: the training and validation sentences of the same split, never a test one.
    assert example.main(["--write-lm-text", str(tmp_path / "lm.txt")]) == 0
    texts, _ = labelled.movie_reviews()
    train, val, test = (set(texts[i] for i in part)
                        for part in labelled.split_indices(len(texts), (0.8, 0.1, 0.1), seed=0))
    lines = (tmp_path / "lm.txt").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 9511 and set(lines) == train | val and not set(lines) & test


def test_sentiment_examples_ensemble_averages_its_members_probabilities(model_dir, tmp_path, capsys):
    example = sentiment_example()
    common = ["--model", str(model_dir), "--limit", "200", "--epochs", "1", "--workers", "1"]
    for seed in (3, 4):
        assert example.main(common + ["--train-seed", str(seed), "--probs-out", str(tmp_path / f"{seed}.npz")]) == 0
    assert example.main(common + ["--train-seed", "3", "--ensemble", "2", "--threshold", "validation",
                                  "--probs-out", str(tmp_path / "both.npz")]) == 0
    printed = capsys.readouterr().out
    assert "train seed 3" in printed and "train seed 4" in printed and "ensemble of 2: test accuracy" in printed
    assert "fine-tuned GPT: decision threshold" in printed and "bag-of-words: decision threshold" in printed
    assert "McNemar's exact p" in printed
    members = [np.load(tmp_path / f"{seed}.npz") for seed in (3, 4)]
    both = np.load(tmp_path / "both.npz")
    assert both["bow_test"].shape == (20,) and both["labels_test"].shape == (20,)
    np.testing.assert_array_equal(both["bow_test"], members[0]["bow_test"])       # one baseline, whatever the seed
    for part, n in (("validation", 20), ("test", 20)):
        assert both[part].shape == (n, 2) and not np.allclose(members[0][part], members[1][part])
        np.testing.assert_allclose(both[part], (members[0][part] + members[1][part]) / 2, rtol=0, atol=1e-6)
    with pytest.raises(SystemExit):
        example.main(common + ["--ensemble", "0"])


def test_texts_longer_than_the_context_keep_their_start():
    tokenizer = WordTokenizer(["good bad film"])
    model = small_classifier(tokenizer)                          # block_size 32
    long_text = " ".join(["film"] * 50)
    finetune.finetune(model, tokenizer, [long_text, "good"], [1, 0], [long_text], [1], epochs=1, log=None)
    assert finetune.text_probabilities(model, tokenizer, [long_text]).shape == (1, 2)


def test_finetuning_in_mixed_precision_learns_and_leaves_the_model_float32():
    train, val = toy_task(400, seed=0), toy_task(100, seed=1)
    tokenizer = WordTokenizer(train[0])
    model = small_classifier(tokenizer, 1)
    finetune.finetune(model, tokenizer, *train, *val, epochs=6, lr=3e-3, batch_size=32, dtype="float16", log=None)
    metrics = finetune.evaluate(model, finetune.Encoded(tokenizer, *val, 32), pad_id=0)
    assert metrics["accuracy"] > 0.9
    assert model.transformer.compute_dtype is None
    assert all(p.dtype == np.float32 for p in model.parameters())


# -------------------------------------------------------- ULMFiT's options
def test_layer_groups_cover_every_parameter_once_top_first():
    tokenizer = WordTokenizer(["a b"])
    model = small_classifier(tokenizer, n_layer=3)
    groups = finetune.layer_groups(model)
    assert groups == [("score.",), ("transformer.ln_f.", "transformer.h.2."), ("transformer.h.1.",),
                      ("transformer.h.0.",), ("transformer.wte.", "transformer.wpe.")]
    for name, _ in model.named_parameters():
        assert sum(name.startswith(g) for g in groups) == 1, name


def test_discriminative_learning_rates_divide_by_the_decay_per_group():
    # docs/finetuning.md eq:discriminative-lr: group k >= 1 learns at lr / d^(k-1); the head at head_lr.
    tokenizer = WordTokenizer(["a b"])
    model = small_classifier(tokenizer, n_layer=2)
    opt = finetune._optimizer(model, finetune.FinetuneConfig(lr=1e-3, head_lr=4e-3, layer_lr_decay=2.5))
    opt.set_lr(2e-3)                          # what the schedule does each step
    rates = {name: group["lr"] for group in opt.param_groups for name in group["names"]}
    assert rates["score.weight"] == pytest.approx(8e-3)
    assert rates["transformer.ln_f.weight"] == pytest.approx(2e-3)
    assert rates["transformer.h.1.mlp.c_fc.weight"] == pytest.approx(2e-3)
    assert rates["transformer.h.0.attn.c_attn.bias"] == pytest.approx(2e-3 / 2.5)
    assert rates["transformer.wte.weight"] == pytest.approx(2e-3 / 2.5 ** 2)
    assert len(rates) == len(list(model.named_parameters()))
    decays = {name: group["weight_decay"] for group in opt.param_groups for name in group["names"]}
    assert decays["transformer.h.0.attn.c_attn.weight"] > 0 and decays["transformer.wte.weight"] == 0


def test_gradual_unfreezing_trains_the_head_first_then_the_blocks_top_down():
    train, val = toy_task(64, seed=0), toy_task(16, seed=1)           # 2 steps per epoch of 32
    tokenizer = WordTokenizer(train[0])
    for epochs, changing in ((1, ("score.",)), (2, ("score.", "transformer.ln_f.", "transformer.h.1."))):
        model = small_classifier(tokenizer, n_layer=2)
        before = {n: p.data.copy() for n, p in model.named_parameters()}
        lines = []
        finetune.finetune(model, tokenizer, *train, *val, epochs=epochs, lr=1e-2, unfreeze="gradual",
                          unfreeze_every=2, log=lines.append)
        for name, p in model.named_parameters():
            moved = not np.array_equal(before[name], p.data)
            assert moved == name.startswith(changing), (epochs, name)
        assert any("training the top 1 of 4 layer groups" in line for line in lines)
        assert all(p.requires_grad for p in model.parameters())
    assert lines[-2].startswith("step 2: training the top 2 of 4 layer groups (now also transformer.ln_f, "
                                "transformer.h.1)"), lines
    everything_but_the_embeddings = [n for n, _ in model.named_parameters() if not n.startswith("transformer.w")]
    assert finetune.unfreeze_top(model, 3) == everything_but_the_embeddings
    assert not model.transformer.wte.weight.requires_grad and model.transformer.h[0].ln_1.weight.requires_grad
    with pytest.raises(ValueError, match=r"k must lie in 1\.\.4"):
        finetune.unfreeze_top(model, 0)


def test_the_ulmfit_options_together_learn_the_toy_task(tmp_path):
    train, val = toy_task(400, seed=0), toy_task(100, seed=1)
    tokenizer = WordTokenizer(train[0])
    config = GPTConfig(vocab_size=len(tokenizer.vocab) + 1, block_size=32, n_layer=2, n_head=2, n_embd=32)
    model = GPTClassifier(config, num_labels=1, labels=["neg", "pos"], pooling="concat")
    finetune.finetune(model, tokenizer, *train, *val, epochs=6, lr=3e-3, unfreeze="gradual", unfreeze_every=6,
                      layer_lr_decay=2.6, head_dropout=0.1, pooling="concat", out_dir=tmp_path / "clf", log=None)
    data = finetune.Encoded(tokenizer, *val, 32)
    assert finetune.evaluate(model, data, 0)["accuracy"] > 0.9
    assert model.head_dropout.p == 0.0                  # a training setting: off again afterwards
    saved = GPTClassifier.from_pretrained(tmp_path / "clf")
    assert saved.pooling == "concat"
    assert finetune.evaluate(saved, data, 0)["loss"] == pytest.approx(finetune.evaluate(model, data, 0)["loss"])
    with pytest.raises(ValueError, match="pools with 'concat', the settings ask for 'mean'"):
        finetune.finetune(model, tokenizer, *train, *val, pooling="mean", log=None)


def test_gpt1s_auxiliary_lm_loss_and_backbone_dropout_train_and_are_undone_afterwards():
    # GPT-1's fine-tuning: L = L_task + lambda L_LM (docs/finetuning.md eq:auxiliary-lm-loss), dropout 0.1.
    train, val = toy_task(400, seed=0), toy_task(100, seed=1)
    tokenizer = WordTokenizer(train[0])
    config = GPTConfig(vocab_size=len(tokenizer.vocab) + 1, block_size=32, n_layer=2, n_head=2, n_embd=32)
    model = GPTClassifier(config, num_labels=1, labels=["neg", "pos"])
    seen = []
    original = GPTClassifier.forward

    def spy(self, *args, **kwargs):         # what the loop's forward passes ran with
        seen.append((self.lm_loss_weight, self.transformer.drop.p, self.training))
        return original(self, *args, **kwargs)

    GPTClassifier.forward = spy
    try:
        finetune.finetune(model, tokenizer, *train, *val, epochs=4, lr=3e-3, dropout=0.1, lm_loss_weight=0.5,
                          log=None)
    finally:
        GPTClassifier.forward = original
    assert (0.5, 0.1, True) in seen                       # training steps: both on
    data = finetune.Encoded(tokenizer, *val, 32)
    assert finetune.evaluate(model, data, 0)["accuracy"] > 0.9
    assert model.lm_loss_weight == 0.0 and model.config.dropout == 0.0     # training settings: undone afterwards
    assert all(m.p == 0.0 for _, m in model.named_modules() if type(m).__name__ == "Dropout")


def test_the_auxiliary_lm_loss_does_not_depend_on_how_many_threads_share_a_batch():
    # eq:auxiliary-lm-loss is a mean over the batch's pairs: texts of different lengths in shards of
    # different pair counts must give the same step on one thread and on two (up to float rounding).
    train, val = toy_task(96, seed=0), toy_task(32, seed=1)
    train = ([t if i % 3 else t + " good good bad film" for i, t in enumerate(train[0])], train[1])
    tokenizer = WordTokenizer(train[0])
    config = GPTConfig(vocab_size=len(tokenizer.vocab) + 1, block_size=32, n_layer=2, n_head=2, n_embd=32)
    losses = []
    for workers in (1, 2):
        model = GPTClassifier(config, num_labels=1, seed=3)
        result = finetune.finetune(model, tokenizer, *train, *val, epochs=1, batch_size=32, lr=3e-3,
                                   lm_loss_weight=0.5, workers=workers, log=None)
        losses.append([h["train_loss"] for h in result.history] + [h["val_loss"] for h in result.history])
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)


@pytest.mark.parametrize("settings, message", [
    ({"unfreeze": "slow"}, "unfreeze must be 'all' or 'gradual'"),
    ({"unfreeze_every": 5}, "give it with unfreeze='gradual'"),
    ({"unfreeze": "gradual", "unfreeze_every": 0}, "unfreeze_every must be a positive integer"),
    ({"unfreeze": "gradual", "train_last": 1}, "cannot be combined with train_last or LoRA"),
    ({"unfreeze": "gradual", "lora_rank": 4}, "cannot be combined with train_last or LoRA"),
    ({"layer_lr_decay": 0.0}, "layer_lr_decay must be positive"),
    ({"pooling": "first"}, "pooling must be one of last, mean, concat"),
    ({"head_dropout": 1.0}, r"head_dropout must be in \[0, 1\)"),
    ({"dropout": -0.1}, r"dropout must be in \[0, 1\)"),
    ({"lm_loss_weight": -0.5}, "lm_loss_weight must be non-negative"),
])
def test_ulmfit_settings_are_checked(settings, message):
    with pytest.raises(ValueError, match=message):
        finetune.FinetuneConfig(**settings)
    from npgpt.finetuning import classifier

    assert finetune.POOLINGS == classifier.POOLINGS        # the settings accept what the classifier offers
