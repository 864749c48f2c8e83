"""FLOP accounting (npgpt.training.flops): 6 N + 12 L T C per token, N without the position table
(docs/performance.md eq:flops-per-token), and the peak FLOP/s of known GPUs for the MFU (eq:mfu)."""

import pytest

from npgpt.model import GPT, GPTConfig
from npgpt.training.flops import flops_per_token


def test_flops_per_token_is_six_n_plus_attention():
    model = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=8))
    n = model.num_parameters() - 16 * 8
    assert flops_per_token(model) == 6 * n + 12 * 2 * 16 * 8


def test_flops_per_token_formula():
    # docs/performance.md eq:flops-per-token: 6 N + 12 L T C, N without the position table
    config = GPTConfig(vocab_size=50, block_size=8, n_layer=2, n_head=2, n_embd=4)
    n = config.num_parameters() - 8 * 4
    assert flops_per_token(config) == 6 * n + 12 * 2 * 8 * 4


@pytest.mark.parametrize("name, fp32, fp16", [
    ("NVIDIA H100 80GB HBM3", 67e12, 989e12), ("NVIDIA H100 PCIe", 51e12, 756e12), ("NVIDIA H100 NVL", 60e12, 835e12),
    ("NVIDIA H200", 67e12, 989e12), ("NVIDIA H200 NVL", 60e12, 835e12), ("NVIDIA GH200 480GB", 67e12, 989e12),
    ("NVIDIA A100-SXM4-80GB", 19.5e12, 312e12)])
def test_the_peak_of_each_h100_and_h200_variant_is_its_own(name, fp32, fp16):
    from npgpt.training.flops import device_peak_flops

    assert (device_peak_flops(name, "float32"), device_peak_flops(name, "float16")) == (fp32, fp16)
    assert device_peak_flops("CuPy stand-in (NumPy)") is None
