"""GPT-2 124M's training step placed on an H100's roofline, computed from the shapes alone.

Run from the repository root: ``python docs/scripts/gpu_step.py`` prints the table that
docs/gpu.md shows (the chapter's listing runs :func:`table` and the docs test checks its output),
and ``docs/scripts/book_figures.py`` draws ``roofline.svg`` from the same numbers.

Nothing here is measured: no GPU has been lent to this project. Each op's FLOPs are counted from
its shapes, and its bytes are the *least* traffic an unfused kernel can make: it reads each input
from the GPU's memory (HBM) once and writes each output once. A real kernel moves at least that
much, so the intensities are upper bounds and the times lower bounds.

The roofline (Williams, Waterman and Patterson 2009): a kernel that does ``F`` FLOPs and moves
``Q`` bytes has arithmetic intensity ``I = F / Q`` and can run no faster than

    time >= max(F / peak FLOP/s, Q / bandwidth),  i.e.  attainable FLOP/s = min(peak, I x bandwidth)

so an op whose intensity is below the ridge point ``peak / bandwidth`` is limited by memory
bandwidth, whatever the peak.

FLOPs per element of the elementwise ops (a multiply-add is 2; exp, tanh and rsqrt count 1):
layer norm 8 (mean, centre, square, variance, normalise, scale, shift), GELU 10 (eq:gelu of
docs/model.md: cube, two products, sum, tanh, sum, two products), softmax 5 (max, subtract, exp,
sum, divide), residual add 1, AdamW 12 per parameter. A backward pass is counted as two matrix
products of the forward product's shape for each linear map and attention product, and as twice
the forward's traffic for an elementwise op (it reads the saved input and the incoming gradient,
and writes the outgoing one, where the forward read one array and wrote one).
"""

from __future__ import annotations

import dataclasses
import sys

# NVIDIA H100 SXM5 80 GB, dense (no sparsity), from NVIDIA's H100 Tensor Core GPU datasheet
# (nvidia.com/en-us/data-center/h100, the SXM column): 67 TFLOP/s float32 on the CUDA cores,
# 989 TFLOP/s float16/bfloat16 on the tensor cores (the sheet's 1,979 is "with sparsity"),
# 3.35 TB/s of HBM3 bandwidth. npgpt.training.flops.DEVICE_PEAKS holds the same peaks.
H100_SXM = {"float32 (CUDA cores)": 67e12, "16-bit (tensor cores)": 989e12}
H100_BANDWIDTH = 3.35e12

# GPT-2 124M at its training shape: batch B x context T, width C, H heads, L blocks, vocabulary V.
GPT2 = {"B": 8, "T": 1024, "C": 768, "H": 12, "L": 12, "V": 50257}
PARAMETERS = 124_439_808          # npgpt's GPT(GPTConfig()).num_parameters(), the tied head once


@dataclasses.dataclass(frozen=True)
class Op:
    """One kernel of the forward pass of one block (or of the head), with what it does and moves."""

    name: str
    flops: float            # per call
    values: float           # values read + written per call (times bytes per value = traffic)
    calls: int              # calls per forward pass (L for a block's op, 1 for the head)
    matmul: bool            # a matrix product: runs on the tensor cores in 16-bit

    def intensity(self, bytes_per_value: int) -> float:
        return self.flops / (self.values * bytes_per_value)


def matmul(name: str, m: int, k: int, n: int, calls: int, batch: int = 1) -> Op:
    """``batch`` products of (m, k) by (k, n): 2 m k n FLOPs each, both inputs read, the output written."""
    return Op(name, 2.0 * batch * m * k * n, batch * (m * k + k * n + m * n), calls, True)


def elementwise(name: str, elements: float, flops_each: float, arrays: int, calls: int) -> Op:
    """An op over ``elements`` values that reads and writes ``arrays`` arrays of that size in all."""
    return Op(name, elements * flops_each, elements * arrays, calls, False)


def forward_ops(shape: dict[str, int] = GPT2) -> list[Op]:
    """The kernels of one forward pass, unfused, as npgpt's ops compute it (attention as three kernels)."""
    B, T, C, H, L, V = (shape[k] for k in "BTCHLV")
    N, d = B * T, C // H                  # tokens in the batch, channels per head
    return [
        elementwise("layer norm", N * C, 8, 2, 2 * L + 1),
        matmul("QKV projection (c_attn)", N, C, 3 * C, L),
        matmul("scores Q K^T", T, d, T, L, batch=B * H),
        elementwise("softmax of the scores", B * H * T * T, 5, 2, L),
        matmul("weights x values P V", T, T, d, L, batch=B * H),
        matmul("attention output (c_proj)", N, C, C, L),
        elementwise("residual add", N * C, 1, 3, 2 * L),
        matmul("MLP up (c_fc)", N, C, 4 * C, L),
        elementwise("GELU", N * 4 * C, 10, 2, L),
        matmul("MLP down (c_proj)", N, 4 * C, C, L),
        matmul("LM head (logits)", N, C, V, 1),
        elementwise("softmax cross-entropy", N * V, 5, 2, 1),
    ]


def fused_attention(shape: dict[str, int] = GPT2) -> Op:
    """Scores, softmax and P V in one kernel (FlashAttention): Q, K, V read once, the output written once."""
    B, T, C, H, L = (shape[k] for k in "BTCHL")
    d = C // H
    return Op("fused attention (one kernel)", 4.0 * B * H * T * T * d + 5.0 * B * H * T * T, 4 * B * T * C, L, True)


def adamw(parameters: int = PARAMETERS) -> Op:
    """AdamW's update: reads weight, gradient, m, v and writes weight, m, v, all float32 (4 bytes)."""
    return Op("AdamW update", 12.0 * parameters, 7 * parameters, 1, False)


def seconds(op: Op, peak: float, bytes_per_value: int, bandwidth: float = H100_BANDWIDTH) -> float:
    """The roofline's lower bound on one call's time: the larger of its compute time and its memory time."""
    return max(op.flops / peak, op.values * bytes_per_value / bandwidth)


def step_times(ops: list[Op], bytes_per_value: int, peak_name: str,
               elementwise_bytes: int | None = None) -> dict[str, float]:
    """Lower bounds on a whole training step's time per op (forward, backward, AdamW), in seconds.

    ``bytes_per_value`` for the matrix products, ``elementwise_bytes`` (default the same) for the rest.
    """
    peak = H100_SXM[peak_name]
    elementwise_peak = H100_SXM["float32 (CUDA cores)"]       # only matrix products use tensor cores
    times = {}
    for op in ops:
        p = peak if op.matmul else elementwise_peak
        b = bytes_per_value if op.matmul else (elementwise_bytes or bytes_per_value)
        # backward: two products of the forward's shape; an elementwise op moves twice the values
        backward = 2 * seconds(op, p, b) if op.matmul else seconds(dataclasses.replace(op, values=2 * op.values), p, b)
        times[op.name] = op.calls * (seconds(op, p, b) + backward)
    update = adamw()
    times[update.name] = seconds(update, elementwise_peak, 4)
    return times


def table(shape: dict[str, int] = GPT2) -> str:
    """The chapter's table: each op's intensity in float32 and 16-bit, and its share of a 16-bit step."""
    peak16 = H100_SXM["16-bit (tensor cores)"]
    ridge32 = H100_SXM["float32 (CUDA cores)"] / H100_BANDWIDTH
    ridge16 = peak16 / H100_BANDWIDTH
    ops = forward_ops(shape)
    times = step_times(ops, 2, "16-bit (tensor cores)")
    total = sum(times.values())
    flops = sum(op.flops * op.calls * 3 for op in ops) + adamw().flops
    lines = [f"ridge points: float32 {ridge32:.0f} FLOP/byte, 16-bit tensor cores {ridge16:.0f} FLOP/byte",
             f"{'op':<28}{'GFLOP':>8}{'FLOP/B fp32':>13}{'FLOP/B 16-bit':>15}{'bound':>9}{'share':>8}"]
    for op in [*ops, adamw()]:
        bpv = 4 if op.name == "AdamW update" else 2
        i16, i32 = op.intensity(bpv), op.intensity(4)
        bound = "compute" if op.matmul and i16 > ridge16 else "memory"
        gflop = op.flops * op.calls * (1 if op.name == "AdamW update" else 3) / 1e9
        lines.append(f"{op.name:<28}{gflop:>8.1f}{i32:>13.1f}{i16:>15.1f}{bound:>9}{times[op.name] / total:>8.1%}")
    fused = fused_attention(shape)
    lines.append(f"{fused.name:<28}{fused.flops * fused.calls * 3 / 1e9:>8.1f}{fused.intensity(4):>13.1f}"
                 f"{fused.intensity(2):>15.1f}")
    lines.append(f"a 16-bit step: {flops / 1e12:.2f} TFLOP, at least {1e3 * total:.1f} ms on an H100 SXM "
                 f"({flops / total / peak16:.0%} of the tensor-core peak at best)")
    unfused = {"scores Q K^T", "softmax of the scores", "weights x values P V"}
    fused_ops = [op for op in ops if op.name not in unfused] + [fused]
    fused_total = sum(step_times(fused_ops, 2, "16-bit (tensor cores)").values())
    fused_flops = sum(op.flops * op.calls * 3 for op in fused_ops) + adamw().flops
    lines.append(f"with fused attention: {fused_flops / 1e12:.2f} TFLOP, at least {1e3 * fused_total:.1f} ms "
                 f"({fused_flops / fused_total / peak16:.0%} of the peak at best)")
    mixed = sum(step_times(ops, 2, "16-bit (tensor cores)", elementwise_bytes=4).values())
    float32 = sum(step_times(ops, 4, "float32 (CUDA cores)").values())
    lines.append(f"16-bit products, float32 elsewhere (npgpt's mixed precision): at least {1e3 * mixed:.1f} ms; "
                 f"float32 throughout: at least {1e3 * float32:.1f} ms")
    return "\n".join(lines)


def decode_intensity(shape: dict[str, int] = GPT2, bytes_per_value: int = 2) -> float:
    """Intensity of the MLP's up-projection when generating one token for one sequence (N = 1)."""
    return matmul("decode", 1, shape["C"], 4 * shape["C"], 1).intensity(bytes_per_value)


if __name__ == "__main__":
    print(table())
    print(f"decoding one token, MLP up: {decode_intensity():.2f} FLOP/byte in 16-bit")
    sys.exit(0)
