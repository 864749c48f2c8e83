"""Make the pictures of docs/interpretability.md with npgpt's own code (npgpt.viz).

Run from the repository root, after fine-tuning the sentiment classifier of the example:

    python examples/sentiment.py --out /tmp/sentiment-classifier
    python docs/scripts/interpretability_images.py --classifier /tmp/sentiment-classifier --out docs/images

``--out`` is required: the script writes where it is told and nowhere else (``--out docs/images``
regenerates the book's pictures, which are tracked; any other directory leaves them alone).
It writes into that directory:

* attention_layer{L}_head{H}.svg and .png -- attention maps of the language model for one sentence;
* saliency_next_token.svg -- which words made the language model predict its next token;
* saliency_sentiment.svg -- which words pushed the fine-tuned classifier towards "positive"
  (only with --classifier);

and prints the numbers behind each picture (they are quoted in the chapter).
"""

import argparse
import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from npgpt import viz  # noqa: E402
from npgpt.autograd import no_grad  # noqa: E402
from npgpt.finetuning.classifier import GPTClassifier  # noqa: E402
from npgpt.model import GPT  # noqa: E402
from npgpt.tokenizer import Tokenizer  # noqa: E402

SENTENCE = "The cat sat on the mat because it was tired."
PROMPT = "The President said that the United States"
REVIEWS = ["A gorgeous, witty and deeply moving film.",
           "The plot is dull and the acting is painfully bad."]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="npgpt-small", help="language model (name or directory)")
    parser.add_argument("--classifier", default=None, help="a fine-tuned sentiment classifier directory")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="directory to write the pictures into (the book's are in docs/images)")
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    model = GPT.from_pretrained(args.model)
    tokenizer = Tokenizer.from_pretrained(args.model)
    ids = tokenizer.encode(SENTENCE)
    print(f"{args.model}: {model.config.n_layer} layers x {model.config.n_head} heads; "
          f"{SENTENCE!r} = {len(ids)} tokens")
    weights = viz.attention_weights(model, ids)                       # (L, H, T, T)
    last = model.config.n_layer - 1
    for layer, head in ((0, 0), (last, 0)):
        for suffix in (".svg", ".png"):
            viz.attention_map(model, ids, layer=layer, head=head, tokenizer=tokenizer,
                              path=out / f"attention_layer{layer}_head{head}{suffix}")
        w = weights[layer, head]
        # How far back each head looks on average, and how much goes to the first token.
        T = w.shape[0]
        distance = float((w * (np.arange(T)[:, None] - np.arange(T)[None, :])).sum(axis=1)[1:].mean())
        print(f"layer {layer} head {head}: mean distance attended {distance:.2f} tokens, "
              f"weight on the first token {w[1:, 0].mean():.2f}")

    prompt_ids = tokenizer.encode(PROMPT)
    with no_grad():
        logits = model(np.array([prompt_ids]))
    target = int(logits.numpy()[0, -1].argmax())
    tokens, scores = viz.saliency(model, prompt_ids, target, tokenizer=tokenizer)
    title = f"next token {tokenizer.decode([target])!r}: gradient x input"
    (out / "saliency_next_token.svg").write_text(viz.saliency_svg(tokens, scores, title=title))
    print(f"{PROMPT!r} -> {tokenizer.decode([target])!r}; saliency "
          + ", ".join(f"{t} {s:+.3f}" for t, s in zip(tokens, scores)))

    if args.classifier:
        clf = GPTClassifier.from_pretrained(args.classifier)
        lines = []
        for review in REVIEWS:
            review_ids = tokenizer.encode(review)
            p = clf.predict_proba(np.array([review_ids]))[0, 1]
            tokens, scores = viz.saliency(clf, review_ids, 1, tokenizer=tokenizer)
            lines.append((tokens, scores, p))
            print(f"{review!r}: p(positive) = {p:.3f}; saliency "
                  + ", ".join(f"{t} {s:+.3f}" for t, s in zip(tokens, scores)))
        svgs = [viz.saliency_svg(t, s, title=f"p(positive) = {p:.2f}; towards positive") for t, s, p in lines]
        (out / "saliency_sentiment.svg").write_text(_stack(svgs))
    return 0


def _stack(svgs):
    """Several saliency SVGs one below the other, as one SVG (nested <svg> elements)."""
    import re

    parts, y, width = [], 0, 0
    for svg in svgs:
        w, h = (float(v) for v in re.search(r'width="([\d.]+)" height="([\d.]+)"', svg).groups())
        parts.append(svg.replace("<svg ", f'<svg y="{y:.0f}" ', 1))
        y, width = y + h, max(width, w)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{y:.0f}" '
            f'viewBox="0 0 {width:.0f} {y:.0f}">\n' + "\n".join(parts) + "</svg>\n")


if __name__ == "__main__":
    sys.exit(main())
