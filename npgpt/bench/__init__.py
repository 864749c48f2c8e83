"""Benchmarks: ``python -m npgpt.bench WORKLOAD [--json]``.

Each workload is a module in this package with two functions:

* ``add_arguments(parser)`` adds its options to an ``argparse`` sub-parser;
* ``run(args) -> dict`` performs the measurement and returns the figures.

Speed is measured here, never in the test-suite: timed tests are flaky and
prove nothing on a shared machine. Every workload measures the reference a
user would otherwise pick (PyTorch on CPU, tiktoken, ...) in the same run, so
that the ratio is meaningful even though absolute figures drift.
"""

WORKLOADS = ("tokenizer", "prepare", "generate", "train", "lora", "gpu", "serve", "nanogpt-char")
