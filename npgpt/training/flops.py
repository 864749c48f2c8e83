"""Counting the work of a training step, and how much of the machine it uses (MFU).

Companion of ``docs/performance.md`` (eqs. 2 and 3).

The trainer's log line and ``python -m npgpt.bench train`` both report the
model FLOPs utilisation: the FLOP/s the model's arithmetic needs at the
measured speed, as a share of the machine's peak. Both take the formula and
the default peak from here.

Depends on nothing of npgpt (a model or its config is passed in).
"""

from __future__ import annotations

from typing import Any

__all__ = ["DEFAULT_PEAK_FLOPS", "flops_per_token", "model_flops_utilisation"]

# float32 matrix-multiply peak of the 2-core Zen 4 machines this project is measured on
# (docs/performance.md): the denominator of the MFU. Pass your machine's own peak.
DEFAULT_PEAK_FLOPS = 195e9


def flops_per_token(model_or_config: Any, seq_len: int | None = None) -> int:
    """Training FLOPs per token, ``6 N + 12 n_layer T C`` (docs/performance.md eq. 2).

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
    """MFU = tokens/s x FLOPs per token / peak FLOP/s (docs/performance.md eq. 3)."""
    return tokens_per_s * flops_per_token / peak_flops
