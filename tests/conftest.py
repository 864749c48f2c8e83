"""Shared test fixtures: the backends every op test runs on, and hypothesis settings."""

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from npgpt import backend

# Property tests do real numerical work; keep them quick but thorough enough,
# and never let a slow CI machine turn into a deadline failure.
settings.register_profile("npgpt", max_examples=30, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.differing_executors])
settings.load_profile("npgpt")

BACKENDS = [pytest.param("numpy", id="numpy"),
            pytest.param("cupy", id="cupy", marks=pytest.mark.gpu)]


@pytest.fixture(params=BACKENDS, scope="session")
def xp(request):
    """The array module under test: NumPy always, CuPy where a GPU is present."""
    if request.param == "numpy":
        return np
    if not backend.cuda_available():
        pytest.skip("CuPy with a CUDA GPU is not available")
    import cupy

    return cupy
