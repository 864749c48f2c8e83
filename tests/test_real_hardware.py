"""What a real GPU machine would break and the stand-in alone cannot show (issue 26, item 1).

Companion of ``docs/gpu.md`` ("On a real GPU") and ``docs/distributed.md``. Where CuPy's own behaviour
matters (a NCCL module without NCCL, two GPUs, a kernel that fails to compile), small module
objects stand in for the parts of CuPy that npgpt calls, shaped as CuPy 14 has them.
"""

import sys
import types

import numpy as np
import pytest

from npgpt import backend
from npgpt.generation import top_k_filter
from npgpt.training import distributed
from npgpt.training.distributed import World, local_rank

LOCAL_VARIABLES = distributed._LOCAL_RANK_VARIABLES


class TwoRanks:
    """An MPI communicator of two ranks seen from rank ``rank``: every rank holds the same buffer."""

    def __init__(self, rank=0):
        self.rank, self.broadcasts, self.reduced = rank, [], []

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return 2

    def bcast(self, value, root=0):
        self.broadcasts.append(value)
        return value

    def Allreduce(self, send, buf, op=None):
        self.reduced.append(type(buf).__module__.split(".")[0])
        buf *= 2                                     # the other rank holds the same numbers


@pytest.fixture
def no_launcher(monkeypatch):
    for name in LOCAL_VARIABLES:
        monkeypatch.delenv(name, raising=False)


# ------------------------------------------------------------------------- one GPU per rank
@pytest.mark.parametrize("name", LOCAL_VARIABLES)
def test_the_local_rank_comes_from_each_launchers_variable(monkeypatch, no_launcher, name):
    assert local_rank() == 0
    monkeypatch.setenv(name, "3")
    assert local_rank() == 3


def test_a_local_rank_that_is_not_a_number_is_refused_by_name(monkeypatch, no_launcher):
    monkeypatch.setenv("SLURM_LOCALID", "two")
    with pytest.raises(ValueError, match="SLURM_LOCALID='two' is not a local rank"):
        local_rank()


def _cupy_with_gpus(count, chosen):
    class Device:
        def __init__(self, number=0):
            self.number = number

        def use(self):
            chosen.append(self.number)
    runtime = types.SimpleNamespace(getDeviceCount=lambda: count)
    return types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=runtime, Device=Device))


@pytest.mark.parametrize("local, gpus, expected", [(0, 8, 0), (5, 8, 5), (3, 2, 1)])
def test_each_rank_takes_the_gpu_of_its_local_rank(monkeypatch, no_launcher, local, gpus, expected):
    chosen = []
    monkeypatch.setattr(backend, "_cupy", _cupy_with_gpus(gpus, chosen))
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_RANK", str(local))
    assert World(TwoRanks()).use_local_gpu() == expected and chosen == [expected]


def test_a_world_of_one_leaves_the_device_alone(monkeypatch):
    chosen = []
    monkeypatch.setattr(backend, "_cupy", _cupy_with_gpus(8, chosen))
    assert World().use_local_gpu() is None and chosen == []


@pytest.fixture
def four_gpus(monkeypatch, cuda):
    """The CuPy stand-in reporting four GPUs (its current device put back afterwards)."""
    fake_cupy = pytest.importorskip("fake_cupy")
    if not fake_cupy.installed():
        pytest.skip("needs the CuPy stand-in (NPGPT_FAKE_CUDA=1) to pretend there are four GPUs")
    import cupy

    monkeypatch.setattr(fake_cupy, "_current_device", 0)
    monkeypatch.setattr(fake_cupy, "_get_device_count", lambda: 4)
    monkeypatch.setattr(cupy.cuda.runtime, "getDeviceCount", lambda: 4)
    return cupy


@pytest.mark.gpu
@pytest.mark.parametrize("how", ["train and sft", "finetune command"])
def test_train_sft_and_finetune_put_each_rank_on_its_local_gpu(monkeypatch, no_launcher, four_gpus, how):
    """Under a launcher that says local rank 3, every command computes on GPU 3, chosen before its model moves."""
    from npgpt.apps import cli
    from npgpt.finetuning.sft import SFTTrainer
    from npgpt.training.train import Trainer

    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_RANK", "3")
    world = World(TwoRanks())
    if how == "train and sft":
        assert SFTTrainer._choose_device is Trainer._choose_device           # SFT picks its GPU as training does
        trainer = Trainer.__new__(Trainer)
        trainer.world = world
        trainer._choose_device(types.SimpleNamespace(device="cuda", peak_flops=1.0, dtype="float32"))
        assert trainer.device == "cuda"
    else:
        assert cli._check_device("cuda", world) == "cuda"
    assert four_gpus.cuda.runtime.getDevice() == 3
    assert distributed.use_device("cpu", world) == "cpu" and four_gpus.cuda.runtime.getDevice() == 3


@pytest.mark.gpu
def test_one_process_stays_on_the_current_gpu(monkeypatch, no_launcher, four_gpus):
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_RANK", "3")
    assert distributed.use_device("cuda", World()) == "cuda" and four_gpus.cuda.runtime.getDevice() == 0


# ------------------------------------------------------------------------- NCCL or MPI
def _nccl_module(monkeypatch, module):
    cupy = pytest.importorskip("cupy") if "cupy" not in sys.modules else sys.modules["cupy"]
    monkeypatch.setitem(sys.modules, "cupy.cuda.nccl", module)
    monkeypatch.setattr(cupy.cuda, "nccl", module, raising=False)


@pytest.mark.gpu
def test_cupy_14s_nccl_module_without_nccl_falls_back_to_mpi(monkeypatch, cuda):
    """CuPy 14 without libnccl: ``cupy.cuda.nccl`` imports, says ``available = False`` and has no names."""
    pytest.importorskip("mpi4py")
    _nccl_module(monkeypatch, types.ModuleType("cupy.cuda.nccl"))
    sys.modules["cupy.cuda.nccl"].available = False
    monkeypatch.setattr(distributed, "_cuda_aware", lambda: False)
    comm = TwoRanks()
    world = World(comm)
    import cupy

    buf = cupy.arange(4, dtype=cupy.float32)
    world._allreduce(buf)
    assert backend.to_numpy(buf).tolist() == [0.0, 2.0, 4.0, 6.0]
    assert comm.broadcasts == [False] and comm.reduced == ["numpy"]      # staged through the host
    world._allreduce(buf)                                              # decided once, not asked again
    assert comm.broadcasts == [False]


@pytest.mark.gpu
def test_cuda_aware_mpi_gets_device_buffers_only_after_the_stream_finished(monkeypatch, cuda):
    pytest.importorskip("mpi4py")
    import cupy

    missing = types.ModuleType("cupy.cuda.nccl")
    missing.available = False
    _nccl_module(monkeypatch, missing)
    monkeypatch.setattr(distributed, "_cuda_aware", lambda: True)
    synchronised = []
    comm = TwoRanks()
    real_allreduce = comm.Allreduce

    def allreduce(send, buf, op=None):
        assert synchronised, "MPI read a device buffer before CuPy's stream finished writing it"
        real_allreduce(send, buf, op)
    comm.Allreduce = allreduce
    stream = types.SimpleNamespace(synchronize=lambda: synchronised.append(True), ptr=0)
    monkeypatch.setattr(cupy.cuda, "get_current_stream", lambda: stream)
    buf = cupy.ones(3, dtype=cupy.float32)
    World(comm)._allreduce(buf)
    assert comm.reduced == ["cupy"] and backend.to_numpy(buf).tolist() == [2.0, 2.0, 2.0]


# ------------------------------------------------------------------------- a GPU that computes
def _failing_cupy(kernel_error=None, gemm_error=None, count=1, wrong=False):
    class Result:
        def __init__(self, value):
            self.value = value

        def get(self):
            return np.asarray(self.value)

        def __mul__(self, k):
            if kernel_error:
                raise kernel_error
            return Result(self.value * k + (1 if wrong else 0))

        def __add__(self, k):
            return Result(self.value + k)

        def __matmul__(self, other):
            if gemm_error:
                raise gemm_error
            return Result(self.value @ other.value)
    return types.SimpleNamespace(
        float32=np.float32, cuda=types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=lambda: count)),
        arange=lambda n, dtype: Result(np.arange(n, dtype=dtype)),
        ones=lambda shape, dtype: Result(np.ones(shape, dtype=dtype)))


@pytest.mark.parametrize("cupy, reason", [
    (_failing_cupy(count=0), "CuPy sees no CUDA GPU"),
    (_failing_cupy(kernel_error=RuntimeError("nvrtc: libnvrtc.so.12 not found")),
     r"an elementwise kernel \(compiled by NVRTC\) failed on the GPU \(RuntimeError: nvrtc: libnvrtc.so.12"),
    (_failing_cupy(gemm_error=OSError("libcublas.so.12: cannot open shared object file")),
     r"a matrix product \(cuBLAS\) failed on the GPU \(OSError: libcublas"),
    (_failing_cupy(wrong=True), r"an elementwise kernel .* computed \[2.0, 4.0, 6.0, 8.0\] instead of"),
])
def test_cuda_is_available_only_when_a_kernel_and_a_gemm_run_and_it_says_why_not(monkeypatch, cupy, reason):
    monkeypatch.setattr(backend, "_cupy", cupy)
    monkeypatch.setattr(backend, "_cuda_checked", None)
    assert not backend.cuda_available()
    assert backend.cuda_unavailable_reason() is not None
    import re
    assert re.search(reason, backend.cuda_unavailable_reason())
    with pytest.raises(RuntimeError, match="cannot be used: " + reason.split(" ")[0]):
        backend.check_device("cuda")


def test_a_gpu_that_computes_is_available(monkeypatch):
    monkeypatch.setattr(backend, "_cupy", _failing_cupy())
    monkeypatch.setattr(backend, "_cuda_checked", None)
    assert backend.cuda_available() and backend.cuda_unavailable_reason() is None


def test_the_hint_names_one_extra_per_cuda_major_version():
    assert '".[gpu]"' in backend._CUPY_HINT and "cupy-cuda13x" in backend._CUPY_HINT
    assert '".[gpu-cuda12]"' in backend._CUPY_HINT and "cupy-cuda12x" in backend._CUPY_HINT


def test_the_extras_install_one_cupy_each_and_dev_none():
    import pathlib

    import tomllib

    extras = tomllib.loads((pathlib.Path(__file__).parents[1] / "pyproject.toml").read_text())
    extras = extras["project"]["optional-dependencies"]
    assert extras["gpu"] == ["cupy-cuda13x>=14"] and extras["gpu-cuda12"] == ["cupy-cuda12x[ctk]>=14"]
    assert not [d for d in extras["dev"] if d.startswith("cupy")]


# ------------------------------------------------------------------------- top_k as a NumPy integer
def test_top_k_given_as_a_numpy_integer_works_on_every_device(xp):
    logits = xp.asarray(np.array([[1.0, 3.0, 2.0, 0.5]], dtype=np.float32))
    kept = backend.to_numpy(top_k_filter(logits, np.int64(2)))
    assert np.isfinite(kept).tolist() == [[False, True, True, False]]


# ------------------------------------------------------------------------- the trainer's MFU on a GPU
def test_the_trainers_mfu_takes_the_gpus_own_peak_unless_one_is_given(monkeypatch, tmp_path):
    from char_tokenizer import prepare_two_documents

    from npgpt.training import train as training

    data = tmp_path / "data"
    prepare_two_documents("ROMEO: But, soft! what light through yonder window breaks? " * 20, data)
    monkeypatch.setattr(backend, "check_device", lambda device: "cuda" if device == "cuda" else "cpu")
    monkeypatch.setattr(backend, "device_name", lambda: "NVIDIA H100 PCIe")
    monkeypatch.setattr(training.GPT, "to", lambda self, device: self)      # stays on the host for this check
    cfg = dict(data_dir=str(data), out_dir=str(tmp_path / "run"), n_layer=1, n_head=1, n_embd=8, block_size=8,
               batch_size=2, max_steps=1)
    assert training.Trainer(training.TrainConfig(**cfg, device="cuda", dtype="float16")).peak_flops == 756e12
    assert training.Trainer(training.TrainConfig(**cfg, device="cuda", peak_flops=1e15)).peak_flops == 1e15
    assert training.Trainer(training.TrainConfig(**cfg)).peak_flops == training.DEFAULT_PEAK_FLOPS
