"""Sentiment analysis of movie reviews: fine-tune a pretrained GPT, compare with bag-of-words.

    python examples/sentiment.py                  # the shipped model "npgpt-small"
    python examples/sentiment.py --model DIR      # any GPT-2 checkpoint directory with a tokenizer
    python examples/sentiment.py --write-lm-text reviews.txt   # ULMFiT: the unlabelled text to adapt on

The data are 10,568 movie-review sentences rated by people (Hutto & Gilbert, ICWSM 2014),
fetched and checksum-verified by ``npgpt.datasets``; positive means a mean rating above 0.
A fixed, seeded split gives 80% for training, 10% for validation (early stopping) and 10%
for the test accuracy printed at the end. The same split trains the baseline: a
bag-of-words logistic regression written with npgpt itself. This is the article's
example -- a linear layer and a sigmoid on top of the network, L = Loss(f(x), y) -- run for
real. See docs/finetuning.md for the figures and what would raise them.

ULMFiT (Howard & Ruder 2018; docs/agent.md, "Continued pretraining"): ``--write-lm-text FILE``
writes the training and validation sentences without their labels -- never a test sentence --
for ``npgpt prepare`` and ``npgpt train --init-from``; the model that comes out is then
fine-tuned here with ``--model``, and ``--pooling concat``, ``--unfreeze gradual`` and
``--layer-lr-decay`` switch on the recipe's classifier side.
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
from npgpt.finetuning.metrics import classification_metrics, decision_threshold, format_metrics, mcnemar_exact
from npgpt.training import optim

WORD = re.compile(r"[a-z0-9']+")


def bag_of_words_baseline(train, val, test, epochs=5, lr=0.01, seed=0):
    """Logistic regression on word-presence features: z = x W + b, s(z), binary cross-entropy.

    ``train``, ``val``, ``test``: (texts, labels). The vocabulary is every word seen at least
    twice in the training texts. Returns the validation and test probabilities of "positive", s(z)
    per text, and the vocabulary size.
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

    def probability(x):                           # s(z) = 1 / (1 + e^-z), per text
        return 1.0 / (1.0 + np.exp(-F.linear(Tensor(x), head.weight, head.bias).numpy()[:, 0].astype(np.float64)))

    return probability(x_val), probability(x_test), len(vocab)


def accuracy(p_positive, labels, threshold=0.5):
    """The fraction of texts whose rule "positive when p > threshold" gives their label."""
    return float(((np.asarray(p_positive) > threshold).astype(int) == np.asarray(labels)).mean())


def write_lm_text(path, train, val, test, seed=0):
    """Write the training and validation texts (no labels), one per line in a seeded order, to ``path``.

    The test sentences stay out: a language model adapted on them would have read the exam. A test
    sentence that also occurs among the others (as text, ignoring case and spacing) is left out too.
    Returns the number of lines written.
    """
    def key(text):
        return " ".join(text.lower().split())

    exam = {key(t) for t in test[0]}
    texts = [t for t in train[0] + val[0] if key(t) not in exam]
    order = np.random.default_rng(seed).permutation(len(texts))
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(texts[i].replace("\n", " ") + "\n" for i in order))     # one text a line
    return len(texts)


def fine_tune(args, tokenizer, train, val, seed):
    """One classifier from ``args.model``, fine-tuned on ``train`` with ``val`` for early stopping; seed of
    its head, batches and dropout ``seed``. Returns (classifier, FinetuneResult)."""
    classifier = GPTClassifier.from_pretrained(args.model, num_labels=1, labels=["negative", "positive"],
                                               seed=seed, pooling=args.pooling)
    out = args.out if args.ensemble == 1 or args.out is None else f"{args.out}/member-{seed}"
    result = finetune.finetune(classifier, tokenizer, *train, *val, epochs=args.epochs,
                               batch_size=args.batch_size, lr=args.lr, head_lr=args.head_lr,
                               train_last=args.train_last, max_length=args.max_length, seed=seed,
                               dropout=args.dropout, lm_loss_weight=args.lm_loss_weight, eval_every=args.eval_every,
                               out_dir=out, head_dropout=args.head_dropout, unfreeze=args.unfreeze,
                               unfreeze_every=args.unfreeze_every, layer_lr_decay=args.layer_lr_decay,
                               patience=args.patience, best_metric=args.best_metric, workers=args.workers)
    return classifier, result


def threshold_for(args, p_positive, labels, name):
    """0.5, or with ``--threshold validation`` the threshold most accurate on the validation texts."""
    if args.threshold == "0.5":
        return 0.5
    threshold = decision_threshold(p_positive, labels)
    print(f"{name}: decision threshold {threshold:.3f} (validation accuracy {accuracy(p_positive, labels, threshold):.3f}"
          f" against {accuracy(p_positive, labels):.3f} at 0.5)")
    return threshold


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
    parser.add_argument("--pooling", choices=("last", "mean", "concat"), default="last",
                        help="what the head reads: the last token's state, the mean, or last + mean + max (ULMFiT)")
    parser.add_argument("--head-dropout", type=float, default=0.0, help="dropout on the pooled vector")
    parser.add_argument("--dropout", type=float, default=None,
                        help="dropout in the backbone while fine-tuning (GPT-1: 0.1; default: the model's own)")
    parser.add_argument("--lm-loss-weight", type=float, default=0.0,
                        help="weight of the auxiliary language-modelling loss (GPT-1: 0.5; 0: off)")
    parser.add_argument("--eval-every", type=int, default=None,
                        help="steps between validations (default: once per epoch)")
    parser.add_argument("--unfreeze", choices=("all", "gradual"), default="all",
                        help="gradual: the head first, then one more block every --unfreeze-every steps")
    parser.add_argument("--unfreeze-every", type=int, default=None, help="steps between unfreezings (default: an epoch)")
    parser.add_argument("--layer-lr-decay", type=float, default=1.0,
                        help="each layer group below the top block learns this many times slower (ULMFiT: 2.6)")
    parser.add_argument("--patience", type=int, default=2, help="evaluations without a better validation score "
                        "before stopping")
    parser.add_argument("--best-metric", choices=("loss", "accuracy"), default="loss",
                        help="the validation score that picks the weights kept: the lowest loss or the highest accuracy")
    parser.add_argument("--workers", type=int, default=None, help="CPU threads per batch (default: one per core)")
    parser.add_argument("--write-lm-text", metavar="FILE", default=None,
                        help="write the training and validation sentences (no labels, no test sentence) to FILE "
                             "for continued pretraining, and stop")
    parser.add_argument("--limit", type=int, default=None, help="use a random subset of this many reviews (quick runs)")
    parser.add_argument("--out", default=None, help="write the fine-tuned classifier and tokenizer here")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, the head and the batches")
    parser.add_argument("--ensemble", type=int, default=1,
                        help="fine-tune this many classifiers (train seeds train-seed, +1, ...) and average "
                             "their probabilities")
    parser.add_argument("--threshold", choices=("0.5", "validation"), default="0.5",
                        help="decide positive above 0.5, or above the threshold most accurate on the validation "
                             "sentences (each model its own: the baseline's and the GPT's)")
    parser.add_argument("--probs-out", metavar="FILE", default=None,
                        help="save the validation and test sentences' probabilities (each (N, 2); the ensemble's "
                             "mean) as arrays 'validation' and 'test' of an .npz file, with the bag-of-words "
                             "model's P(positive) ('bow_validation', 'bow_test') and the labels")
    parser.add_argument("--train-seed", type=int, default=None,
                        help="seed of the head, the batches and dropout alone, the split staying --seed's")
    args = parser.parse_args(argv)
    if args.ensemble < 1:
        parser.error(f"--ensemble must be at least 1, got {args.ensemble}")

    from npgpt.tokenizer import Tokenizer

    texts, labels = labelled.movie_reviews()
    if args.limit:      # a random subset: the file lists the positive reviews first
        keep = np.random.default_rng(args.seed).permutation(len(texts))[:args.limit]
        texts, labels = [texts[i] for i in keep], [labels[i] for i in keep]
    parts = labelled.split_indices(len(texts), (0.8, 0.1, 0.1), seed=args.seed)
    train, val, test = [([texts[i] for i in p], [labels[i] for i in p]) for p in parts]
    print(f"{len(texts)} reviews ({sum(labels)} positive): {len(train[0])} train, {len(val[0])} validation, "
          f"{len(test[0])} test")
    if args.write_lm_text:
        lines = write_lm_text(args.write_lm_text, train, val, test, seed=args.seed)
        print(f"wrote {lines} training and validation sentences (no labels, no test sentence) to {args.write_lm_text}")
        return 0

    start = time.perf_counter()
    bow_val, bow_probs, vocab_size = bag_of_words_baseline(train, val, test, seed=args.seed)
    bow_threshold = threshold_for(args, bow_val, val[1], "bag-of-words")
    bow_test = accuracy(bow_probs, test[1], bow_threshold)
    bow_seconds = time.perf_counter() - start
    print(f"bag-of-words logistic regression ({vocab_size} words): test accuracy {bow_test:.3f} "
          f"({bow_seconds:.0f} s)")

    start = time.perf_counter()
    tokenizer = Tokenizer.from_pretrained(args.model)
    first_seed = args.seed if args.train_seed is None else args.train_seed
    probabilities = {"validation": [], "test": []}      # each member's (N, 2) per part
    for member in range(args.ensemble):
        classifier, result = fine_tune(args, tokenizer, train, val, first_seed + member)
        for part, (part_texts, _) in (("validation", val), ("test", test)):
            probabilities[part].append(finetune.text_probabilities(classifier, tokenizer, part_texts,
                                                                   max_length=args.max_length))
        print(f"fine-tuned {args.model}, train seed {first_seed + member} ({result.steps} steps, best at step "
              f"{result.best_step}): test accuracy {accuracy(probabilities['test'][-1][:, 1], test[1]):.3f} "
              f"({time.perf_counter() - start:.0f} s)")
    # One classifier, or a committee: the members' mean probability decides.
    mean = {part: np.mean(members, axis=0) for part, members in probabilities.items()}
    threshold = threshold_for(args, mean["validation"][:, 1], val[1], "fine-tuned GPT")
    metrics = classification_metrics(test[1], (mean["test"][:, 1] > threshold).astype(int),
                                     label_names=["negative", "positive"])
    if args.ensemble > 1:
        print(f"ensemble of {args.ensemble}: test accuracy {metrics['accuracy']:.3f}")
    gpt_right = (mean["test"][:, 1] > threshold).astype(int) == np.asarray(test[1])
    only_gpt, only_bow, p = mcnemar_exact(gpt_right, (bow_probs > bow_threshold).astype(int) == np.asarray(test[1]))
    print(f"paired on the {len(test[0])} test texts: the GPT alone right on {only_gpt}, bag-of-words alone on "
          f"{only_bow}; McNemar's exact p = {p:.3f} (eq:mcnemar)")
    if args.probs_out:      # the GPT's (N, 2) per part; the baseline's P(positive) and the labels, to compare later
        np.savez(args.probs_out, **mean, bow_validation=bow_val, bow_test=bow_probs,
                 labels_validation=np.asarray(val[1]), labels_test=np.asarray(test[1]))
    gpt_seconds = time.perf_counter() - start
    print(format_metrics(metrics))
    name = f"fine-tuned {args.model}" + (f" x{args.ensemble}" if args.ensemble > 1 else "")
    print(f"\n{'model':<36}{'test accuracy':>14}{'seconds':>9}")
    print(f"{'bag-of-words logistic regression':<36}{bow_test:>14.3f}{bow_seconds:>9.0f}")
    print(f"{name:<36}{metrics['accuracy']:>14.3f}{gpt_seconds:>9.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
