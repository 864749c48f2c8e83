"""Sentiment analysis of movie reviews: fine-tune a pretrained GPT, compare with bag-of-words.

    python examples/sentiment.py                  # the shipped model "npgpt-small"
    python examples/sentiment.py --model DIR      # any GPT-2 checkpoint directory with a tokenizer

The data are 10,568 movie-review sentences rated by people (Hutto & Gilbert, ICWSM 2014),
fetched and checksum-verified by ``npgpt.datasets``; positive means a mean rating above 0.
A fixed, seeded split gives 80% for training, 10% for validation (early stopping) and 10%
for the test accuracy printed at the end. The same split trains the baseline: a
bag-of-words logistic regression written with npgpt itself. This is the article's
example -- a linear layer and a sigmoid on top of the network, L = Loss(f(x), y) -- run for
real. See docs/finetuning.md for the figures and what would raise them.
"""

import argparse
import re
import sys
import time
from collections import Counter

import numpy as np

import npgpt.functional as F
from npgpt import Tensor, nn
from npgpt.apps.cli import HelpWithDefaults
from npgpt.finetuning import finetune, labelled
from npgpt.finetuning.classifier import GPTClassifier
from npgpt.finetuning.metrics import format_metrics
from npgpt.training import optim

WORD = re.compile(r"[a-z0-9']+")


def bag_of_words_baseline(train, val, test, epochs=5, lr=0.01, seed=0):
    """Logistic regression on word-presence features: z = x W + b, s(z), binary cross-entropy.

    ``train``, ``val``, ``test``: (texts, labels). The vocabulary is every word seen at least
    twice in the training texts. Returns (test accuracy, validation accuracy, vocabulary size).
    """
    counts = Counter(w for text in train[0] for w in set(WORD.findall(text.lower())))
    vocab = {w: i for i, w in enumerate(sorted(w for w, c in counts.items() if c >= 2))}

    def features(texts):                          # (N, V) 0/1 presence matrix
        x = np.zeros((len(texts), len(vocab)), dtype=np.float32)
        for row, text in enumerate(texts):
            x[row, [vocab[w] for w in set(WORD.findall(text.lower())) if w in vocab]] = 1.0
        return x

    x_train, x_val, x_test = features(train[0]), features(val[0]), features(test[0])
    y_train = np.asarray(train[1], dtype=np.float32)[:, None]
    head = nn.Linear(len(vocab), 1, std=0.0)                  # W (V, 1) and b (1,), from zero
    opt = optim.AdamW(head.named_parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=0.01)
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(len(x_train))
        for start in range(0, len(order), 128):
            rows = order[start:start + 128]
            logits = F.linear(Tensor(x_train[rows]), head.weight, head.bias)           # (B, 1)
            loss = F.binary_cross_entropy_with_logits(logits, y_train[rows])          # eq:bce
            opt.zero_grad()
            loss.backward()
            opt.step()

    def accuracy(x, y):
        z = F.linear(Tensor(x), head.weight, head.bias).numpy()[:, 0]
        return float(((z > 0).astype(int) == np.asarray(y)).mean())

    return accuracy(x_test, test[1]), accuracy(x_val, val[1]), len(vocab)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=HelpWithDefaults)
    parser.add_argument("--model", default="npgpt-small", help="pretrained model name or directory")
    parser.add_argument("--epochs", type=int, default=3, help="passes over the training reviews")
    parser.add_argument("--batch-size", type=int, default=32, help="reviews per step")
    parser.add_argument("--lr", type=float, default=1e-4, help="peak learning rate of the backbone")
    parser.add_argument("--head-lr", type=float, default=1e-3, help="peak learning rate of the new head")
    parser.add_argument("--train-last", type=int, default=None,
                        help="train only the last K blocks (and the head); default: all")
    parser.add_argument("--max-length", type=int, default=64, help="tokens kept per review")
    parser.add_argument("--limit", type=int, default=None, help="use a random subset of this many reviews (quick runs)")
    parser.add_argument("--out", default=None, help="write the fine-tuned classifier and tokenizer here")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, the head and the batches")
    args = parser.parse_args(argv)

    from npgpt.tokenizer import Tokenizer

    texts, labels = labelled.movie_reviews()
    if args.limit:      # a random subset: the file lists the positive reviews first
        keep = np.random.default_rng(args.seed).permutation(len(texts))[:args.limit]
        texts, labels = [texts[i] for i in keep], [labels[i] for i in keep]
    parts = labelled.split_indices(len(texts), (0.8, 0.1, 0.1), seed=args.seed)
    train, val, test = [([texts[i] for i in p], [labels[i] for i in p]) for p in parts]
    print(f"{len(texts)} reviews ({sum(labels)} positive): {len(train[0])} train, {len(val[0])} validation, "
          f"{len(test[0])} test")

    start = time.perf_counter()
    bow_test, bow_val, vocab_size = bag_of_words_baseline(train, val, test, seed=args.seed)
    bow_seconds = time.perf_counter() - start
    print(f"bag-of-words logistic regression ({vocab_size} words): test accuracy {bow_test:.3f} "
          f"({bow_seconds:.0f} s)")

    start = time.perf_counter()
    tokenizer = Tokenizer.from_pretrained(args.model)
    classifier = GPTClassifier.from_pretrained(args.model, num_labels=1, labels=["negative", "positive"],
                                               seed=args.seed)
    result = finetune.finetune(classifier, tokenizer, *train, *val, epochs=args.epochs,
                               batch_size=args.batch_size, lr=args.lr, head_lr=args.head_lr,
                               train_last=args.train_last, max_length=args.max_length, seed=args.seed,
                               out_dir=args.out)
    data = finetune.Encoded(tokenizer, *test, min(args.max_length, classifier.config.block_size))
    metrics = finetune.evaluate(classifier, data)
    gpt_seconds = time.perf_counter() - start
    print(f"fine-tuned {args.model} ({result.steps} steps, best at step {result.best_step}): "
          f"test accuracy {metrics['accuracy']:.3f} ({gpt_seconds:.0f} s)")
    print(format_metrics(metrics))
    print(f"\n{'model':<36}{'test accuracy':>14}{'seconds':>9}")
    print(f"{'bag-of-words logistic regression':<36}{bow_test:>14.3f}{bow_seconds:>9.0f}")
    print(f"{'fine-tuned ' + str(args.model):<36}{metrics['accuracy']:>14.3f}{gpt_seconds:>9.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
