"""A KV cache whose rows are independent slots, for continuous batching (docs/serving.md).

``npgpt.generation.KVCache`` keeps one length for the whole batch: every row writes
its next key at the same column, so a batch of prompts of different lengths is
padded on the left. A server's batch changes at every step (requests join and
leave), so here each row is a *slot* with its own length: row ``r`` holds its
sequence at columns ``0 .. lengths[r]-1`` and writes its next key at column
``lengths[r]``; the attention mask hides the columns past it.

Why every row always attends over all ``capacity`` columns (masked), and why a
step never runs on fewer than two rows: so that the arithmetic of a row is the
same whatever else is in the batch. The softmax sums and the ``P V`` products
are then always of the same length with the real keys in the same places, and
a matrix product of two or more rows gives each row the same bits (OpenBLAS
computes one row alone with a different kernel, gemv). A request's tokens
therefore never depend on the other requests (tests/test_serve_batcher.py).

Shapes: ``keys[l]``, ``values[l]``: (slots, H, capacity, D); ``lengths``: (slots,) on the host.
"""

from typing import Any

import numpy as np

from npgpt.autograd import Tensor
from npgpt.generation import KVCache
from npgpt.model import GPTConfig

Array = Any  # a numpy.ndarray or a cupy.ndarray


class SlotCache(KVCache):
    """Keys and values of up to ``slots`` sequences, each at its own length.

    ``rows`` is how many slots the next forward pass runs on (slots
    ``0 .. rows-1``); the model's attention calls ``update`` below.
    ``length`` (the batch-wide length of
    ``KVCache``) is not used: the caller passes position ids and a mask.
    """

    def __init__(self, config: GPTConfig, slots: int, xp: Any = np, dtype: Any = np.float32):
        super().__init__(config, slots, xp=xp, dtype=dtype, capacity=config.block_size)
        self.xp = xp
        self.lengths = np.zeros(slots, dtype=np.int64)     # on the host: the scheduler reads it every step
        self.rows = 0
        self.columns: Array | None = None                  # lengths[:rows] on the device, set for each step

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write one new position per row, row ``r`` at its column ``lengths[r]``; return every
        column of the running rows, (rows, H, capacity, D) views (the mask hides the unused ones)."""
        B = self.rows
        if k.shape[0] != B or k.shape[2] != 1:
            raise ValueError(f"SlotCache takes one new position for each of its {B} running rows, got k of shape "
                             f"{tuple(k.shape)}")
        if self.lengths[:B].max(initial=0) >= self.capacity:
            raise ValueError(f"SlotCache: a row is full ({self.capacity} positions)")
        if self.columns is None or self.columns.shape[0] != B:
            raise ValueError("SlotCache: set columns (the running rows' lengths, on the device) before the step")
        r, col = self.xp.arange(B), self.columns
        self.keys[layer][r, :, col] = k.data[:, :, 0]         # (B, H, D) into row r, column lengths[r]
        self.values[layer][r, :, col] = v.data[:, :, 0]
        return Tensor(self.keys[layer][:B]), Tensor(self.values[layer][:B])

    def load(self, slot: int, cache: KVCache) -> None:
        """Copy row 0 of a plain ``KVCache`` (a prefilled prompt) into ``slot``, columns ``0 .. cache.length-1``."""
        n = cache.length
        for mine, theirs in ((self.keys, cache.keys), (self.values, cache.values)):
            for layer in range(len(mine)):
                mine[layer][slot, :, :n] = theirs[layer][0, :, :n]
        self.lengths[slot] = n

    def move(self, source: int, target: int) -> None:
        """Copy slot ``source`` into slot ``target`` (to keep the running rows contiguous)."""
        n = int(self.lengths[source])
        for arrays in (self.keys, self.values):
            for a in arrays:
                a[target, :, :n] = a[source, :, :n]
        self.lengths[target] = n

    def clear(self, slot: int) -> None:
        """Forget ``slot``: its length drops to 0 (the arrays are overwritten by the next sequence)."""
        self.lengths[slot] = 0
