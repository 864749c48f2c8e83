"""The benchmark workloads' accounting (not their speed: speed is never tested)."""

from npgpt.bench.train import WORKLOAD
from npgpt.flops import flops_per_token, model_flops_utilisation
from npgpt.model import GPTConfig


def train_small_config():
    return GPTConfig(**{k: v for k, v in WORKLOAD.items() if k != "batch_size"})


def test_flops_per_token_formula():
    # docs/performance.md eq. 2: 6 N + 12 L T C, N without the position table
    config = GPTConfig(vocab_size=50, block_size=8, n_layer=2, n_head=2, n_embd=4)
    n = config.num_parameters() - 8 * 4
    assert flops_per_token(config) == 6 * n + 12 * 2 * 8 * 4


def test_flops_per_token_of_train_small_matches_the_perf_notes():
    # PyTorch's 3,719 tokens/s on train-small is 63% of 195 GFLOP/s: ~33 MFLOP per token.
    assert abs(flops_per_token(train_small_config()) / 1e6 - 33.1) < 0.5


def test_mfu_definition():
    # docs/performance.md eq. 3: MFU = tokens/s * FLOPs per token / peak.
    assert abs(model_flops_utilisation(3719, flops_per_token(train_small_config()), 195e9) - 0.632) < 0.005
