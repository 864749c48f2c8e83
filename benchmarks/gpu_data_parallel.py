"""One data-parallel step on two GPUs (run by benchmarks/gpu_check.sh under ``mpiexec -n 2``).

Each rank takes its GPU (``World.use_local_gpu``), computes the gradient of its half of one batch of
a small GPT, and the gradients are summed (NCCL where CuPy has it, else MPI); every rank must end
with the same gradient, equal to the one-process gradient of the whole batch within float32
rounding. Prints one JSON line on rank 0.
"""

import json
import time

import numpy as np

from npgpt import backend
from npgpt.model import GPT, GPTConfig
from npgpt.training import distributed

world = distributed.world()
gpu = world.use_local_gpu()
model = GPT(GPTConfig(vocab_size=512, block_size=64, n_layer=2, n_head=2, n_embd=64), seed=0).to("cuda")
tokens = np.random.default_rng(0).integers(0, 512, (4, 65))
rows = tokens[world.rows(4)]
start = time.perf_counter()
(model.loss(rows[:, :-1], rows[:, 1:]) * (len(rows) / 4)).backward()
world.allreduce_grads(list(model.parameters()))
mine = np.concatenate([backend.to_numpy(p.grad).ravel() for p in model.parameters()])
seconds = time.perf_counter() - start
single = GPT(GPTConfig(vocab_size=512, block_size=64, n_layer=2, n_head=2, n_embd=64), seed=0)
single.loss(tokens[:, :-1], tokens[:, 1:]).backward()
whole = np.concatenate([p.grad.ravel() for p in single.parameters()])
result = {"ranks": world.size, "gpu_of_rank": world.gather(gpu), "transport": "nccl" if world._nccl else "mpi",
          "ranks_agree": world.all_equal(mine.tobytes()), "max_abs_diff_vs_one_process": float(np.abs(mine - whole).max()),
          "seconds": seconds}
if world.is_main:
    print(json.dumps(result))
