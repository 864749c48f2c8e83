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


def test_gpu_bench_has_help_and_refuses_to_run_without_cuda():
    import subprocess
    import sys

    from npgpt import backend

    help_run = subprocess.run([sys.executable, "-m", "npgpt.bench", "gpu", "--help"], capture_output=True, text=True)
    assert help_run.returncode == 0 and "--quick" in help_run.stdout
    if backend.cuda_available():
        return
    env_free = subprocess.run([sys.executable, "-m", "npgpt.bench", "gpu", "--json"], capture_output=True, text=True,
                              env={**__import__("os").environ, "NPGPT_FAKE_CUDA": "0"})
    assert env_free.returncode != 0 and "no CUDA device" in env_free.stderr


def test_gpu_peaks_are_found_by_device_name():
    from npgpt.bench.gpu import _peaks

    assert _peaks("NVIDIA H200", None)["float16"] == 989e12
    assert _peaks("Some Future GPU", None) is None
    assert _peaks("x", [1.0, 2.0]) == {"float32": 1.0, "float16": 2.0}
