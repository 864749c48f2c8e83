"""The benchmark workloads' accounting (not their speed: speed is never tested)."""

from npgpt.bench.train import flops_per_token, model_flops_utilisation


def test_flops_per_token_formula():
    # docs/performance.md eq. 2: 6 N + 12 L T C
    assert flops_per_token(1000, n_layer=2, block_size=8, n_embd=4) == 6 * 1000 + 12 * 2 * 8 * 4


def test_flops_per_token_of_train_small_matches_the_perf_notes():
    # train-small: 8192 x 256 tied embedding + 4 blocks of 12 C^2 + 13 C (weights and biases)
    # + final layer norm. PyTorch's 3,700 tokens/s at 63% of 195 GFLOP/s implies ~33 MFLOP/token.
    C, L = 256, 4
    n = 8192 * C + L * (12 * C * C + 13 * C) + 2 * C
    assert abs(flops_per_token(n, L, 128, C) / 1e6 - 33.2) < 0.5


def test_mfu_definition():
    # docs/performance.md eq. 3: MFU = tokens/s * FLOPs per token / peak.
    # PERF_NOTES: PyTorch's 3,719 tokens/s on train-small is 63% of the 195 GFLOP/s peak.
    assert abs(model_flops_utilisation(3719, 33.2e6, 195e9) - 0.633) < 0.005
