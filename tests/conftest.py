"""Shared test fixtures: the devices every op test runs on, the CuPy stand-in, hypothesis settings,
and a prepared data directory for tests that train a tiny run.

With ``NPGPT_FAKE_CUDA=1`` in the environment, ``tests/fake_cupy.py`` stands in for CuPy (one
CUDA device, on the host), so the "cuda" case of every device-parametrised test runs on a
machine without a GPU: ``NPGPT_FAKE_CUDA=1 pytest -m gpu`` runs all of them (.ci/run does).
"""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from npgpt import backend

FAKE_CUDA = os.environ.get("NPGPT_FAKE_CUDA", "") == "1"
# The suite never reaches the Hugging Face Hub (tests/test_hub.py builds its own cache): a name
# that is not found locally fails at once instead of waiting for a network that may not be there.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
if FAKE_CUDA:
    import fake_cupy

    fake_cupy.install()

# Property tests do real numerical work; keep them quick but thorough enough,
# and never let a slow CI machine turn into a deadline failure.
settings.register_profile("npgpt", max_examples=30, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.differing_executors])
settings.load_profile("npgpt")

# The array modules under test, named by device (test ids read "cpu" / "cuda"). Everything that
# runs on the GPU carries the `gpu` mark: `pytest -m gpu` selects exactly the device tests.
BACKENDS = [pytest.param("numpy", id="cpu"),
            pytest.param("cupy", id="cuda", marks=pytest.mark.gpu)]
DEVICES = [pytest.param("cpu", id="cpu"),
           pytest.param("cuda", id="cuda", marks=pytest.mark.gpu)]

_NO_CUDA = "CuPy with a CUDA GPU is not available (NPGPT_FAKE_CUDA=1 runs these on the CuPy stand-in)"


def require_cuda():
    """Skip the calling test unless CuPy and a GPU (or the stand-in) are there."""
    if not backend.cuda_available():
        pytest.skip(_NO_CUDA)


@pytest.fixture(params=BACKENDS, scope="session")
def xp(request):
    """The array module under test: NumPy always, CuPy where a GPU (or the stand-in) is present."""
    if request.param == "numpy":
        return np
    require_cuda()
    import cupy

    return cupy


@pytest.fixture(params=DEVICES)
def device(request):
    """The device under test: "cpu" always, "cuda" where a GPU (or the stand-in) is present."""
    if request.param == "cuda":
        require_cuda()
    return request.param


@pytest.fixture
def cuda():
    """"cuda", for a test that only makes sense on the device (mark it `gpu`); skipped without one."""
    require_cuda()
    return "cuda"


@pytest.fixture
def transfers():
    """The stand-in's transfer counter, reset: ``transfers()`` gives the copies made since.

    Counting needs the stand-in (``NPGPT_FAKE_CUDA=1``); on a real GPU the test is skipped.
    """
    if not FAKE_CUDA:
        pytest.skip("counting host/device copies needs the CuPy stand-in (NPGPT_FAKE_CUDA=1)")
    fake_cupy.reset_transfers()
    return fake_cupy.transfers


def pytest_collection_modifyitems(config, items):
    """The fast lane: the tests listed in tests/slow_tests.py carry the ``slow`` mark too."""
    import slow_tests

    for item in items:
        if slow_tests.is_slow(item.path.name, getattr(item, "originalname", item.name)):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def data_dir(tmp_path):
    """A data directory prepared from ``run_helpers.TEXT`` (a character tokenizer; a test file may
    define its own ``data_dir``)."""
    from char_tokenizer import prepare_two_documents
    from run_helpers import TEXT

    out = tmp_path / "data"
    prepare_two_documents(TEXT, out)
    return out
