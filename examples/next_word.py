"""The article's example: which word comes after "The cat sits on the"?

    python examples/next_word.py                       # the model that ships with npgpt
    python examples/next_word.py "Four score and seven"
    python examples/next_word.py --model path/to/gpt2  # any GPT-2 checkpoint directory

A language model gives a probability for every token of its vocabulary to come next,
p(x_t | x_<t) (docs/training.md). This script prints the most likely ones, then lets the model
continue the prompt greedily for a few tokens.
"""

import argparse
import time

import numpy as np

import npgpt
import npgpt.functional as F
from npgpt import GPT, Tokenizer
from npgpt.apps.cli import HelpWithDefaults


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=HelpWithDefaults)
    parser.add_argument("prompt", nargs="?", default="The cat sits on the", help="the text to continue")
    parser.add_argument("--model", default="npgpt-small",
                        help="a shipped model name or a GPT-2 checkpoint directory "
                             "holding config.json, model.safetensors and the tokenizer files")
    parser.add_argument("--top", type=int, default=10, help="how many candidates to print")
    parser.add_argument("--continue-tokens", type=int, default=12,
                        help="greedy continuation length (0 to skip)")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    model = GPT.from_pretrained(args.model)
    tokenizer = Tokenizer.from_pretrained(args.model)
    ids = tokenizer.encode(args.prompt)
    if not ids:
        parser.error("the prompt is empty")

    with npgpt.no_grad():
        logits = model(np.array([ids]))                     # (1, T, vocab)
        probs = F.softmax(logits[0, -1]).numpy()            # p(next token | prompt)
    best = np.argsort(-probs)[:args.top]

    print(f"Prompt: {args.prompt!r}  ({len(ids)} tokens, model {args.model})")
    print(f"{'rank':>4}  {'next token':<16} probability")
    for rank, token_id in enumerate(best, 1):
        shown = repr(tokenizer.decode([int(token_id)]))
        print(f"{rank:>4}  {shown:<16} {probs[token_id]:.4f}")

    if args.continue_tokens > 0:
        out = model.generate(np.array([ids]), max_new_tokens=args.continue_tokens)
        print(f"Greedy continuation: {tokenizer.decode([int(t) for t in out[0]])!r}")
    print(f"({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
