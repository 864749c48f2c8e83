"""A tokenizer and a small GPT that write Tang quatrains (五言/七言绝句) from a first line.

    python examples/tang_poems.py --out runs/tang                  # the recorded recipe
    python examples/tang_poems.py --out DIR --max-steps 30 --limit 3000 --samples 8   # a quick try

The poems are the regulated verse of the Complete Tang Poems (chinese-poetry, fetched and
checksum-checked by ``npgpt.datasets``; traditional characters as shipped): every poem of 4 or
8 lines of 5 or 7 characters, about 37,000. Each becomes one document, its form on the first
line, then one couplet per line:

    五言絕句
    白日依山盡，黃河入海流。
    欲窮千里目，更上一層樓。

A seeded 2% of the poems is held out. The script

1. trains a byte-level BPE tokenizer on the other poems and measures its bytes per token on
   the held-out poems, beside GPT-2's tokenizer (which spends about two tokens per character);
2. trains a GPT on them (``npgpt.training.train``) and measures the held-out loss in bits per
   character: the summed -log2 p of each held-out poem's tokens, over its characters;
3. gives the model the form and the first line of held-out quatrains, samples until
   ``<|endoftext|>``, and counts how many samples are well formed: exactly four lines, each of
   the form's number of characters, punctuated ``X，X。`` on each of the two lines (the check
   is ``npgpt.datasets.chinese.is_quatrain``).

Everything goes under ``--out`` (tokenizer/, data/, train/, samples.txt, results.json), and
nothing elsewhere; a finished stage is not run again. See docs/zh/generation.md.
"""

import argparse
import json
import math
import pathlib
import sys
import time

import numpy as np

from npgpt.datasets import chinese


def bits_per_character(model, tokenizer, documents, batch_size=32):
    """sum over documents of -log2 p(tokens | <|endoftext|>) / number of characters (validation loss)."""
    from npgpt import no_grad

    eot = tokenizer.special_tokens["<|endoftext|>"]
    block = model.config.block_size
    nats, chars = 0.0, 0
    for start in range(0, len(documents), batch_size):
        docs = documents[start:start + batch_size]
        rows = [[eot] + tokenizer.encode(d) for d in docs]
        if max(map(len, rows)) > block:
            raise ValueError(f"a held-out poem is longer than the context ({block} tokens)")
        width = max(map(len, rows)) - 1
        idx = np.full((len(rows), width), eot, dtype=np.int64)
        targets = np.full((len(rows), width), -100, dtype=np.int64)
        for r, ids in enumerate(rows):
            idx[r, :len(ids) - 1], targets[r, :len(ids) - 1] = ids[:-1], ids[1:]
        with no_grad():
            mean = float(model.loss(idx, targets).numpy())
        nats += mean * int((targets != -100).sum())
        chars += sum(len(d) for d in docs)
    return nats / math.log(2) / chars


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", required=True, help="directory for everything this writes")
    parser.add_argument("--vocab-size", type=int, default=4096, help="tokens of the byte-level BPE vocabulary")
    parser.add_argument("--n-layer", type=int, default=4, help="Transformer blocks")
    parser.add_argument("--n-head", type=int, default=4, help="attention heads per block")
    parser.add_argument("--n-embd", type=int, default=128, help="width of the residual stream")
    parser.add_argument("--block-size", type=int, default=128, help="context length in tokens")
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per training step")
    parser.add_argument("--max-steps", type=int, default=600, help="training steps")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    parser.add_argument("--samples", type=int, default=100, help="quatrains generated for the form check")
    parser.add_argument("--top-p", type=float, default=0.9, help="keep the likeliest tokens up to this probability")
    parser.add_argument("--temperature", type=float, default=0.8, help="divide the logits by this before sampling")
    parser.add_argument("--limit", type=int, default=None, help="use a random subset of this many poems")
    parser.add_argument("--workers", type=int, default=0, help="threads per batch (0: one per core)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the held-out poems, the weights and sampling")
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from npgpt import GPT, Tokenizer
    from npgpt.generation import generate
    from npgpt.training.data import prepare_documents
    from npgpt.training.train import find_checkpoint, train

    poems = [p for p in chinese.tang_poems() if p.form() in chinese.FORMS]
    order = np.random.default_rng(args.seed).permutation(len(poems))
    if args.limit:
        order = order[:args.limit]
    n_held = max(1, len(order) // 50)
    held = [poems[i] for i in order[:n_held]]
    training = [poems[i].document() for i in order[n_held:]]
    held_docs = [p.document() for p in held]
    print(f"{len(poems):,} regulated poems; {len(training):,} for training, {len(held):,} held out", flush=True)

    # 1. the tokenizer, and what it does to Chinese
    tok_dir = out / "tokenizer"
    if not (tok_dir / "vocab.json").exists():
        started = time.perf_counter()
        Tokenizer.train(training, args.vocab_size, show_progress=False).save(tok_dir)
        print(f"tokenizer: {args.vocab_size} tokens trained in {time.perf_counter() - started:.0f} s")
    tokenizer = Tokenizer.from_pretrained(tok_dir)
    held_bytes = sum(len(d.encode("utf-8")) for d in held_docs)
    held_chars = sum(len(d) for d in held_docs)
    tokens = {"trained": sum(len(tokenizer.encode(d)) for d in held_docs)}
    try:
        gpt2 = Tokenizer.from_pretrained("gpt2")
        tokens["gpt2"] = sum(len(gpt2.encode(d)) for d in held_docs)
    except Exception as exc:        # GPT-2's files are fetched; offline without a cache there is no comparison
        print(f"GPT-2's tokenizer is unavailable ({exc}); measuring the trained one only")
    for name, n in tokens.items():
        print(f"{name:>8} tokenizer on held-out poems: {held_bytes / n:.2f} bytes/token, "
              f"{n / held_chars:.2f} tokens/character")

    # 2. the model, and its held-out loss in bits per character
    if not (out / "data" / "meta.json").exists():
        prepare_documents(training, tokenizer, out / "data", val_fraction=0.05, progress=False)
    checkpoint = find_checkpoint(out / "train")
    if checkpoint is None or json.loads((checkpoint / "trainer_state.json").read_text())["step"] < args.max_steps:
        train(data_dir=str(out / "data"), out_dir=str(out / "train"), n_layer=args.n_layer, n_head=args.n_head,
              n_embd=args.n_embd, block_size=args.block_size, batch_size=args.batch_size, lr=args.lr,
              max_steps=args.max_steps, eval_interval=max(1, args.max_steps // 10), eval_iters=20,
              log_interval=max(1, args.max_steps // 20), seed=args.seed, workers=args.workers)
        checkpoint = find_checkpoint(out / "train")
    model = GPT.from_pretrained(checkpoint)
    model.eval()
    bpc = bits_per_character(model, tokenizer, held_docs)
    print(f"held-out loss: {bpc:.3f} bits per character", flush=True)

    # 3. quatrains from a first line
    quatrains = [p for p in held if p.form()[0] == 4][:args.samples]
    prompts = [chinese.FORMS[p.form()] + "\n" + p.lines[0] + "，" for p in quatrains]
    ids, mask = tokenizer.encode_batch(prompts, padding="left")
    eot = tokenizer.special_tokens["<|endoftext|>"]
    new = generate(model, ids, 4 * 8 + 8, attention_mask=mask, do_sample=True, top_p=args.top_p,
                   temperature=args.temperature, seed=[args.seed + i for i in range(len(prompts))],
                   eos_token_id=eot)[:, ids.shape[1]:]
    poems_out, good = [], 0
    for prompt, poem, row in zip(prompts, quatrains, new.tolist()):
        ended = eot in row                     # a sample that never ends is not a quatrain
        body = prompt.split("\n", 1)[1] + tokenizer.decode(row[:row.index(eot)] if ended else row)
        ok = ended and chinese.is_quatrain(body, poem.form()[1])
        good += ok
        poems_out.append(f"{'✓' if ok else '✗'} {prompt.splitlines()[0]}\n{body.strip()}\n")
    (out / "samples.txt").write_text("\n".join(poems_out), encoding="utf-8")
    print(f"well-formed quatrains: {good} of {len(prompts)} ({good / max(1, len(prompts)):.0%}); "
          f"all samples in {out / 'samples.txt'}")
    print("\n".join(poems_out[:4]))

    meta = json.loads((out / "data" / "meta.json").read_text())
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    record = {"recipe": "python examples/tang_poems.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "poems": {"training": len(training), "held_out": len(held)},
              "bytes_per_token": {k: held_bytes / n for k, n in tokens.items()},
              "tokens_per_character": {k: n / held_chars for k, n in tokens.items()},
              "bits_per_character": bpc, "parameters": model.config.num_parameters(),
              "training_tokens": meta["train_tokens"], "steps": state["step"],
              "well_formed": [good, len(prompts)]}
    (out / "results.json").write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
