"""The verifying pass's weights in cache-sized column panels: a few rows for the price of one.

Companion of ``docs/generation.md`` (section "The verifying pass: a few rows for the price of one").

Prompt lookup (``npgpt.generation.prompt_lookup``) checks k guessed tokens in one pass over
k + 1 rows. A one-token step multiplies one row by each weight, ``x W`` with ``W`` (in, out):
NumPy hands that to BLAS as a matrix-vector product (gemv), which streams ``W`` once from memory.
Two to sixteen rows go to the matrix-matrix product (gemm) instead, and OpenBLAS first copies
("packs") ``W`` into its own blocked layout at every call, reading the whole weight through a
strided copy that runs at a third of the memory's speed: measured on the project's machine
(docs/benchmarks.md, "Prompt lookup"), GPT-2 small's 48 trunk products cost 17 ms for one row
and 41-63 ms for 2-16 rows, with two thirds of the time in the packing.

The remedy is a copy of each weight made once per generation, in the order the product reads it:
``P`` column panels ``W[:, p w:(p + 1) w]``, each contiguous and ``PANEL_BYTES`` large
(``npgpt.backend.speed``: 256 KB, which fits the core's level-2 cache beside BLAS's packed copy
of it), stacked as one (P, in, w) array. ``xp.matmul(x, panels)`` then runs P small products in
one call; each packs a panel that arrives from memory in one sequential sweep and stays in the
cache for all the rows. The same 48 products: 17 ms for one row (unchanged), 15-17 ms for two
to four rows, 22 ms for eight, 35 ms for sixteen (one core). The result is ``x W`` up to float32
rounding (each output is the same dot product, summed by another kernel).

The copy is the cost: 340 MB for GPT-2 small's trunk (~100 ms, a few one-token steps), so a
generation makes it only when the speed policy says it pays (``speed.panel_weights``) and drops
it at its end; the head's panels take the place of the head's contiguous decoding copy, which
costs the same. Where the copy is made the linear layers use it only for ``speed.PANEL_ROWS`` rows
and without gradients (``nn.Linear.panels``): one row, a prompt and training keep the plain
product; the head's panels serve every head product of the generation, one row included. The
verifying pass runs BLAS on ``speed.PANEL_BLAS_THREADS`` thread (one): its ~2,100 small products
(GPT-2: 1,512 through the trunk's panels, 629 through the head's) would otherwise each wait for
BLAS's second thread, which on a busy machine is often descheduled. Both cores work on a pass all
the same: each product's panels (and the copy's) are cut into ranges of about 1 MB that the
calling thread and a pool thread claim one at a time (``speed.share_work``, docs/performance.md,
"The verifying pass on both cores"). A range is one BLAS call whichever thread makes it, so the
result is the same, bit for bit, as on one thread.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from npgpt import backend, nn
from npgpt.autograd import Tensor
from npgpt.backend import speed

Array = Any  # a numpy.ndarray or a cupy.ndarray


class PanelledWeight:
    """A copy of a weight ``W`` (in, out) as P contiguous column panels (P, in, width).

    ``width`` is a multiple of 16 (one AVX-512 register of float32) chosen so that a panel holds
    about ``panel_bytes`` (default ``speed.PANEL_BYTES``), at most ``out``; the last panel is padded
    with zero columns, which ``matmul`` cuts off.
    """

    def __init__(self, weight: Array, panel_bytes: int | None = None):
        if weight.ndim != 2:
            raise ValueError(f"PanelledWeight needs a 2-D (in, out) weight, got shape {tuple(weight.shape)}")
        xp = backend.array_module(weight)
        K, N = weight.shape
        panel_bytes = speed.PANEL_BYTES if panel_bytes is None else panel_bytes
        width = min(N, max(16, panel_bytes // (weight.itemsize * K) // 16 * 16))
        count = -(-N // width)
        self.weight, self.out_features = weight, N
        self.panels = xp.empty((count, K, width), dtype=weight.dtype)       # (P, in, width)
        self.panels[-1, :, N - (count - 1) * width:] = 0                   # the last panel's padding
        self._claims: dict[int, list[tuple[int, int]]] = {}
        workers = speed.panel_workers(weight, weight.nbytes)       # shared for a large weight (GPT-2's head)
        claims = self.claims(workers)

        def copy(i: int) -> None:     # a panel at a time: a (in, width) block, small enough to stay in cache
            for p in range(*claims[i]):
                block = weight[:, p * width:(p + 1) * width]
                self.panels[p, :, :block.shape[1]] = block

        speed.share_work(copy, len(claims), workers)

    def claims(self, workers: int) -> list[tuple[int, int]]:
        """The panels cut into ranges ``(start, stop)`` of about ``speed.PANEL_CLAIM_BYTES`` each, as
        many as a multiple of ``workers`` where there are enough panels (one range for one worker)."""
        if workers not in self._claims:
            P = self.panels.shape[0]
            per = max(1, speed.PANEL_CLAIM_BYTES // max(1, self.panels[0].nbytes))
            n = 1 if workers <= 1 else min(P, -(-max(workers, -(-P // per)) // workers) * workers)
            edges = [P * i // n for i in range(n + 1)]
            self._claims[workers] = list(zip(edges[:-1], edges[1:]))
        return self._claims[workers]

    def matmul(self, x: Array) -> Array:
        """``x W`` for ``x`` (M, in): one product per panel, each panel read from memory once, the ranges of
        panels shared out between threads (``speed.share_work``) where the product is large enough."""
        xp = backend.array_module(x)
        M = x.shape[0]
        P, K, width = self.panels.shape
        out = xp.empty((M, P * width), dtype=xp.result_type(x, self.panels))   # the panels side by side
        parts = out.reshape(M, P, width).transpose(1, 0, 2)                   # (P, M, width) views of it
        workers = speed.panel_workers(self.panels, 2.0 * M * K * P * width)
        claims = self.claims(workers)

        def product(i: int) -> None:
            start, stop = claims[i]
            xp.matmul(x, self.panels[start:stop], out=parts[start:stop])

        speed.share_work(product, len(claims), workers)
        return out[:, :self.out_features] if out.shape[1] != self.out_features else out

    def linear(self, x: Tensor, bias: Tensor | None) -> Tensor:
        """``nn.Linear``'s output ``x W + b`` (..., out) without a gradient: through the panels for
        ``speed.PANEL_ROWS`` rows, else the plain product (one row streams ``W`` faster as it is)."""
        x2 = x.data.reshape(-1, x.shape[-1])
        out = self.matmul(x2) if x2.shape[0] in speed.PANEL_ROWS else x2 @ self.weight
        if bias is not None:
            out += bias.data
        return Tensor(out.reshape(*x.shape[:-1], self.out_features))


class ModelPanels:
    """The panelled copies of a GPT's linear weights and of its head, for one generation.

    ``attached()`` hands them to the model's ``nn.Linear`` layers for the duration of a pass;
    ``head`` goes to ``GPT.lm_head`` as its ``decoding`` weight (within the pass too).
    """

    def __init__(self, model: Any, panel_bytes: int | None = None):
        self.linears = [(m, PanelledWeight(m.weight.data, panel_bytes)) for _, m in model.named_modules()
                        if isinstance(m, nn.Linear) and m.compute_dtype is None]
        self.head = PanelledWeight(model.head_weight.data.T, panel_bytes)      # wte^T: (C, V)

    @contextlib.contextmanager
    def attached(self) -> Iterator[None]:
        """Within the block the linear layers compute through their panels (``nn.Linear.panels``),
        with BLAS on ``speed.PANEL_BLAS_THREADS`` thread(s): the panels' products are small, and a
        BLAS that threads each of them waits at every one for its other thread."""
        for linear, panelled in self.linears:
            linear.panels = panelled
        try:
            with speed.blas_threads(speed.PANEL_BLAS_THREADS):
                yield
        finally:
            for linear, _ in self.linears:
                linear.panels = None


def for_generation(model: Any, steps: int) -> ModelPanels | None:
    """The panels of ``model`` for a prompt-lookup generation of ``steps`` tokens, or None where the
    speed policy says the copy does not pay (``speed.panel_weights``: on a GPU, mixed precision,
    a generation too short to repay it, a model small enough to sit in the cache)."""
    weight = model.head_weight.data
    model_bytes = sum(p.data.nbytes for p in model.parameters())
    if model.compute_dtype is not None or not speed.panel_weights(weight, steps, model_bytes):
        return None
    return ModelPanels(model)
