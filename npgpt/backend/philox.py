"""Counter-based random numbers: Philox4x32-10, in array code that NumPy and CuPy run alike.

Companion of ``docs/gpu.md`` (section "Deterministic by design").

A stateful generator (NumPy's PCG64, CuPy's XORWOW) walks a sequence: to
reach its millionth number it must have drawn the 999,999 before, and two
devices' generators walk different sequences. A *counter-based* generator
is a keyed bijection instead (Salmon et al. 2011, "Parallel random numbers:
as easy as 1, 2, 3"): number ``i`` is ``philox(counter=i, key=seed)``,
computed directly. So

* the same (seed, counter) gives the same bits on every device, because the
  function uses only 32-bit integer multiplies, xors and adds, which every
  device computes exactly;
* resuming at draw ``n`` costs nothing: there is no state to replay, only
  the counter ``n`` to remember;
* each number is computed independently, which suits a GPU.

Philox4x32-10 maps a 128-bit counter (four 32-bit words) and a 64-bit key
(two words) to four 32-bit outputs through 10 rounds of (docs/gpu.md eq:philox-round)::

    hi0, lo0 = mulhilo(0xD2511F53, c0)          hi1, lo1 = mulhilo(0xCD9E8D57, c2)
    c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0

with the key bumped by the Weyl constants (0x9E3779B9, 0xBB67AE85) between
rounds. ``mulhilo`` is the 64-bit product of two 32-bit words split into its
high and low halves; arrays of ``uint64`` hold it exactly (the product of
two numbers below 2**32 is below 2**64). It is the generator of PyTorch's
and JAX's GPU dropout and of cuRAND's ``Philox4_32_10``; the tests check
the reference implementation's known answers (Random123's kat_vectors).

Depends on NumPy only (the array module comes from the caller).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["philox4x32", "uniform", "ROUNDS", "KEYED"]

ROUNDS = 10
_M0, _M1 = 0xD2511F53, 0xCD9E8D57          # the round multipliers
_W0, _W1 = 0x9E3779B9, 0xBB67AE85          # the key's Weyl increments (golden ratio, sqrt(3) - 1)
_LOW = 0xFFFFFFFF


def philox4x32(counter: tuple[Any, Any, Any, Any], key: tuple[int, int], xp: Any = np,
               rounds: int = ROUNDS) -> tuple[Any, Any, Any, Any]:
    """Philox4x32-``rounds`` of four counter words (arrays of one shape, or ints) under a two-word key.

    Returns four ``uint32`` arrays of the counters' shape (docs/gpu.md eq:philox-round).
    """
    # Python ints stay Python ints (exact, and never copied to a device) until an array meets them.
    c0, c1, c2, c3 = (c & _LOW if isinstance(c, int) else xp.asarray(c, dtype=xp.uint64) & _LOW for c in counter)
    k0, k1 = int(key[0]) & _LOW, int(key[1]) & _LOW
    for r in range(rounds):
        if r:                                   # the key moves on before every round but the first
            k0, k1 = (k0 + _W0) & _LOW, (k1 + _W1) & _LOW
        p0 = c0 * _M0                           # exact 64-bit products of 32-bit words
        p1 = c2 * _M1
        c0, c1, c2, c3 = ((p1 >> 32) ^ c1 ^ k0, p1 & _LOW, (p0 >> 32) ^ c3 ^ k1, p0 & _LOW)
    return tuple(np.uint32(c) if isinstance(c, int) else c.astype(xp.uint32) for c in (c0, c1, c2, c3))


# The second counter word of a draw made under a (step, micro-batch) key has this bit set, so those
# draws never meet a plain stream's, whose second word is the block index's high half (0 below 2**32).
KEYED = 1 << 31


def uniform(size: int, key: int, stream: int, xp: Any = np, dtype: Any = np.float32, draw: int | None = None) -> Any:
    """``size`` uniform numbers in [0, 1), number ``i`` from counter ``(i // 4, i >> 32+2, stream)``.

    ``key``: a 64-bit seed; ``stream``: a 64-bit counter (which draw this is:
    the same key and stream give the same numbers, on any device). With
    ``draw`` (0 <= draw < 2**31) the second counter word is ``KEYED | draw``
    instead: the dropout of a training step, keyed by ``stream = step +
    2**32 micro_batch`` and its ``draw``-th mask in that micro-batch
    (``npgpt.nn.Dropout``); such a mask holds fewer than 2**34 numbers. float32
    numbers take the top 24 bits of one word (``(w >> 8) * 2**-24``), float64
    the top 53 bits of two, so every value is exact in its type and below 1.
    """
    dtype = np.dtype(dtype)
    if dtype.char not in "fd":
        raise TypeError(f"uniform numbers come as float32 or float64, not {dtype.name}")
    words = size * (2 if dtype.char == "d" else 1)
    blocks = -(-words // 4)
    index = xp.arange(blocks, dtype=xp.uint64)
    stream = int(stream)
    high_index = index >> 32 if blocks > _LOW else 0                  # 0 below 2**32 blocks: kept a number
    if draw is not None:
        if not 0 <= int(draw) < KEYED:
            raise ValueError(f"philox.uniform: draw must lie in 0..2**31-1, got {draw}")
        if blocks > _LOW:
            raise ValueError(f"philox.uniform: a keyed draw holds fewer than 2**34 numbers, not {words:,}")
        high_index = KEYED | int(draw)
    out = philox4x32((index, high_index, stream & _LOW, (stream >> 32) & _LOW),
                     (key & _LOW, (key >> 32) & _LOW), xp)
    bits = xp.stack(out, axis=1).reshape(-1)[:words]                 # (words,) uint32, in counter order
    if dtype.char == "f":
        return (bits >> 8).astype(xp.float32) * xp.float32(2.0 ** -24)
    high, low = bits[0::2].astype(xp.uint64) >> 5, bits[1::2].astype(xp.uint64) >> 6   # 27 + 26 bits
    return ((high << 26) | low).astype(xp.float64) * (2.0 ** -53)
