"""Counting the work of a training step, and how much of the machine it uses (MFU).

Companion of ``docs/performance.md`` (eq:flops-per-token and eq:mfu).

The trainer's log line and ``python -m npgpt.bench train`` both report the
model FLOPs utilisation: the FLOP/s the model's arithmetic needs at the
measured speed, as a share of the machine's peak. Both take the formula and
the default peak from here.

Depends on nothing of npgpt (a model or its config is passed in).
"""

from __future__ import annotations

from typing import Any

__all__ = ["DEFAULT_PEAK_FLOPS", "DEVICE_PEAKS", "device_peak_flops", "flops_per_token", "model_flops_utilisation"]

# float32 matrix-multiply peak of the 2-core Zen 4 machines this project is measured on
# (docs/performance.md): the denominator of the MFU. Pass your machine's own peak.
DEFAULT_PEAK_FLOPS = 195e9

# Dense peak FLOP/s of NVIDIA GPUs per precision (vendor data sheets; float16 = tensor cores without
# sparsity, float32 = CUDA cores without TF32), looked up by a piece of the name CUDA reports, first
# match wins: so the more specific names come first. An H100 reports "H100 80GB HBM3" (SXM),
# "H100 PCIe" or "H100 NVL", and the three differ by a third; a GH200's GPU is an H100 SXM's.
DEVICE_PEAKS: tuple[tuple[str, dict[str, float]], ...] = (
    ("GH200", {"float32": 67e12, "float16": 989e12}),
    ("H200 NVL", {"float32": 60e12, "float16": 835e12}),
    ("H200", {"float32": 67e12, "float16": 989e12}),
    ("H100 NVL", {"float32": 60e12, "float16": 835e12}),
    ("H100 PCIe", {"float32": 51e12, "float16": 756e12}),
    ("H100", {"float32": 67e12, "float16": 989e12}),
    ("A100", {"float32": 19.5e12, "float16": 312e12}),
    ("L40S", {"float32": 91.6e12, "float16": 362e12}),
    ("A10", {"float32": 31.2e12, "float16": 125e12}),
    ("T4", {"float32": 8.1e12, "float16": 65e12}),
)


def device_peak_flops(name: str, dtype: str = "float32") -> float | None:
    """The peak FLOP/s of the GPU named ``name`` (as CUDA reports it) in ``dtype``; ``None`` if unknown."""
    return next((peaks[dtype] for key, peaks in DEVICE_PEAKS if key in name), None)


def flops_per_token(model_or_config: Any, seq_len: int | None = None) -> int:
    """Training FLOPs per token, ``6 N + 12 n_layer T C`` (docs/performance.md eq:flops-per-token).

    ``N`` counts the weights that take part in multiply-adds: every parameter
    but the position table (the tied token table counts once, as the LM
    head). ``T`` is the length of the trained sequences, ``seq_len``, by
    default the model's ``block_size``. Takes a ``GPT`` or just its
    ``GPTConfig`` (nothing is allocated).
    """
    c = getattr(model_or_config, "config", model_or_config)
    n = c.num_parameters() - c.block_size * c.n_embd
    return 6 * n + 12 * c.n_layer * (seq_len or c.block_size) * c.n_embd


def model_flops_utilisation(tokens_per_s: float, flops_per_token: float,
                            peak_flops: float = DEFAULT_PEAK_FLOPS) -> float:
    """MFU = tokens/s x FLOPs per token / peak FLOP/s (docs/performance.md eq:mfu)."""
    return tokens_per_s * flops_per_token / peak_flops
