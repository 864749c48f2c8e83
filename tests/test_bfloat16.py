"""bfloat16 through ml_dtypes: what works on NumPy (docs/gpu.md, section "bfloat16").

npgpt does not train in bfloat16 yet; these tests pin the facts the chapter states, so that the
statement fails if NumPy or ml_dtypes change under it.
"""

import numpy as np
import pytest

from npgpt.training.train import TrainConfig

ml_dtypes = pytest.importorskip("ml_dtypes", reason="ml_dtypes (the dev extra) brings bfloat16 to NumPy")
bfloat16 = ml_dtypes.bfloat16


def _round_to_bfloat16_bits(x):
    # The top 16 bits of the float32 pattern, rounded to nearest with ties to even (finite inputs).
    bits = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def test_bfloat16_storage_is_float32_rounded_to_its_top_16_bits():
    x = np.random.default_rng(0).standard_normal(10_000).astype(np.float32) * 1e3
    stored = x.astype(bfloat16)
    assert stored.nbytes == x.nbytes // 2
    np.testing.assert_array_equal(stored.view(np.uint16), _round_to_bfloat16_bits(x))
    assert float(np.array(3e38, np.float32).astype(bfloat16)) > 1e38        # float32's range: no overflow


def test_numpys_bfloat16_matmul_accumulates_in_float32():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((33, 70)).astype(bfloat16)
    b = rng.standard_normal((70, 9)).astype(bfloat16)
    product = np.matmul(a, b)
    assert product.dtype == np.float32
    assert product.tobytes() == (a.astype(np.float32) @ b.astype(np.float32)).tobytes()


def test_training_in_bfloat16_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="npgpt does not train in bfloat16 yet; docs/gpu.md says why"):
        TrainConfig(dtype="bfloat16")
