"""Philox4x32-10 (npgpt.backend.philox, docs/gpu.md eq:philox-round): the reference's answers, uniformity,
independence of streams, and the same numbers on every array module.

The statistical tests use fixed seeds and thresholds at a false-alarm rate of one in a million
(chi-square quantiles of df 63 and 255 at 1 - 1e-6: 131.37 and 377.08; the normal's: 4.75),
so they do not flake, and a generator with a bias of a few per cent fails them.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from npgpt import backend
from npgpt.backend import philox

# Random123's kat_vectors, the three "philox4x32 10" lines: counter (4 words), key (2 words) -> output.
KNOWN_ANSWERS = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]
CHI2_63, CHI2_255, NORMAL = 131.37, 377.08, 4.75


@pytest.mark.parametrize("counter, key, expected", KNOWN_ANSWERS)
def test_philox_gives_the_reference_implementations_known_answers(xp, counter, key, expected):
    words = [xp.asarray(np.array([c], dtype=np.uint64)) for c in counter]        # as arrays, on the device
    out = philox.philox4x32(words, key, xp)
    assert [int(backend.to_numpy(w)[0]) for w in out] == list(expected)


def test_fewer_rounds_give_other_numbers_so_the_answers_test_the_rounds():
    counter, key, expected = KNOWN_ANSWERS[2]
    assert tuple(int(w) for w in philox.philox4x32(counter, key, rounds=9)) != expected


def test_float32_numbers_are_uniform_in_64_bins():
    u = philox.uniform(1 << 18, key=12345, stream=0)
    assert u.dtype == np.float32 and 0.0 <= u.min() and u.max() < 1.0
    counts = np.bincount((u * 64).astype(np.int64), minlength=64)
    expected = u.size / 64
    assert ((counts - expected) ** 2 / expected).sum() < CHI2_63


def test_float64_numbers_are_uniform_and_use_53_bits():
    u = philox.uniform(1 << 16, key=7, stream=3, dtype=np.float64)
    assert u.dtype == np.float64 and 0.0 <= u.min() and u.max() < 1.0
    counts = np.bincount((u * 64).astype(np.int64), minlength=64)
    assert ((counts - u.size / 64) ** 2 / (u.size / 64)).sum() < CHI2_63
    assert np.all(u * 2.0 ** 53 == np.floor(u * 2.0 ** 53))                  # multiples of 2**-53
    assert len(np.unique(np.floor(u * 2.0 ** 53) % 2 ** 29)) > 0.99 * u.size   # the low bits vary too


def test_consecutive_numbers_are_independent_in_pairs():
    # Serial test: pairs (u_i, u_i+1) in a 16 x 16 grid are uniform (a correlated generator crowds cells).
    u = philox.uniform(1 << 18, key=99, stream=1)
    cells = (u[0::2] * 16).astype(np.int64) * 16 + (u[1::2] * 16).astype(np.int64)
    counts = np.bincount(cells, minlength=256)
    expected = cells.size / 256
    assert ((counts - expected) ** 2 / expected).sum() < CHI2_255


@pytest.mark.parametrize("other", [dict(key=12345, stream=1), dict(key=12346, stream=0),
                                   dict(key=12345 + 2 ** 32, stream=0), dict(key=12345, stream=2 ** 32)])
def test_neighbouring_keys_and_streams_are_uncorrelated(other):
    # Each 32-bit word of key and stream matters, and a neighbour's numbers are uncorrelated:
    # the correlation of n independent uniforms is about Normal(0, 1/n).
    n = 1 << 16
    a = philox.uniform(n, key=12345, stream=0).astype(np.float64)
    b = philox.uniform(n, **other).astype(np.float64)
    r = np.corrcoef(a, b)[0, 1]
    assert abs(r) * np.sqrt(n) < NORMAL
    assert np.mean(a == b) < 0.001


@given(key=st.integers(0, 2 ** 64 - 1), stream=st.integers(0, 2 ** 64 - 1), n=st.integers(1, 40),
       m=st.integers(0, 40))
def test_numbers_depend_on_key_stream_and_position_only(key, stream, n, m):
    # Number i is a function of (key, stream, i): a longer draw starts with the shorter one.
    short = philox.uniform(n, key, stream)
    long = philox.uniform(n + m, key, stream)
    np.testing.assert_array_equal(long[:n], short)
    assert np.all((0.0 <= long) & (long < 1.0))


def test_every_device_draws_the_same_bits(xp):
    for dtype in (np.float32, np.float64):
        on_host = philox.uniform(1001, key=2 ** 63 + 5, stream=17, dtype=dtype)
        here = backend.to_numpy(philox.uniform(1001, key=2 ** 63 + 5, stream=17, xp=xp, dtype=dtype))
        assert here.tobytes() == on_host.tobytes()


def test_only_float_types_are_drawn():
    with pytest.raises(TypeError, match="float32 or float64, not int32"):
        philox.uniform(3, 1, 0, dtype=np.int32)
