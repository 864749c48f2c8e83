"""Greedy decoding as one recorded CUDA graph, replayed once per token: ``generate(..., cuda_graph=True)``.

Companion of ``docs/gpu.md`` (section "Decoding as one CUDA graph").

**Why.** A decoding step of GPT-2 124M for one sequence is small work cut into many kernels:
310 launches for one token (``python -m npgpt.bench gpu --count --json``), each costing the host 5
to 20 microseconds to issue, 1.6 to 6 ms in all, against 0.15 ms for the GPU to read the
weights once at full bandwidth. The GPU waits for the host: decoding is *launch-bound*.

**What a CUDA graph is.** CUDA can record the kernels queued on a stream instead of running them
(*stream capture*: ``cudaStreamBeginCapture`` ... ``cudaStreamEndCapture``) into a graph: each
kernel with its arguments, its launch shape and the device addresses it reads and writes,
fixed. ``cudaGraphLaunch`` then runs the whole graph with one call from the host; the GPU
walks the nodes itself. Recording one decoding step and launching it once per token turns a
token's 310 launches into one. PyTorch (``torch.cuda.CUDAGraph``, ``torch.compile``'s
"reduce-overhead"), vLLM and llama.cpp decode this way.

**The rules it imposes.** A replay repeats the capture exactly: the same kernels, on the same
memory, with the same scalar arguments. So the step captured here (``StaticDecoder.step``)

* has static shapes: the KV cache is preallocated to a fixed length ``L`` (``capacity``) and
  attention always reads all ``L`` positions, those past the current one masked (their scores
  set to the lowest float, so their probabilities are exactly 0, as for padding);
* keeps what changes per token in small device arrays that the step reads and updates itself:
  the current token id ``token`` (B, 1) and its position ``position`` (1, 1). A Python int
  that changed per token would be frozen at its captured value (no ``cache.length`` slicing);
* chooses the next token inside the graph (the argmax) and writes it into ``token`` for the
  next replay and into the output row ``ids``, then adds 1 to ``position``;
* never waits for the host: no ``.get()``, ``int()`` or ``bool()`` of a device value (CUDA
  refuses a synchronous copy during capture: ``cudaErrorStreamCaptureUnsupported``), and must not
  copy from the host: an asynchronous copy from pinned memory would be *captured*, and every
  replay would copy whatever that host buffer then holds;
* allocates from a private memory pool (below).

**Capturing with CuPy** (CuPy 14.2: ``cupy.cuda.Stream.begin_capture``/``end_capture``, whose
docstring gives this pattern; ``cupy.cuda.Graph.launch(stream)``; ``cupy.cuda.using_allocator``;
``cupy.cuda.MemoryPool``): capture needs a stream other than the legacy null stream, so the
warm-up and the capture run on a ``Stream(non_blocking=True)`` of their own, ordered after the
caller's stream and before its later work by one event each way (``record``/``wait_event``),
with no host wait (``captured``). The prompt and every replay run on the caller's stream: a
graph can be launched on any stream, so a token costs one ``cudaGraphLaunch`` and no event, and
the prompt's intermediates return to the default pool's arena of the caller's stream (CuPy keeps
one per stream), where its later work finds them again. The intermediate arrays of the step are
allocated *during* capture; their addresses are baked into the graph, which writes them at every
replay. With CuPy's default pool, an intermediate that Python frees during capture goes back to
that pool, and any later allocation, of this program or of a library, may be handed the same
block: the graph's next replay would then overwrite that array, or that array's owner the
graph's intermediates. A pool that nothing else uses (``MemoryPool()``, active only inside
``using_allocator(pool.malloc)``) keeps those blocks for the graph alone, and lives as long as
the graph does. The step runs once eagerly through that same pool first (the *warm-up*): it
compiles every kernel and leaves in the pool free blocks of the sizes the step takes, so capture
should compile nothing and find most of its blocks already there. Not all, perhaps: CuPy's
best-fit pool gives no such guarantee, and nothing here tests it; a ``cudaMalloc`` during
capture is harmless all the same, since CuPy captures in ``cudaStreamCaptureModeRelaxed``, which
allows it. Capture itself runs nothing: capture and warm-up happen before the prompt is read,
and the prompt's pass (``prefill``, eager, as in plain decoding) then overwrites the cache,
``token`` and ``position``. The first new token comes from that pass; each later one from one
replay.

**The cost.** Attention reads the whole static cache every token: ``L`` positions instead of
the live ``t``. ``L`` is a power-of-two bucket (``capacity``): the smallest power of two, at
least ``MIN_CAPACITY``, that holds the prompt and the new tokens, at most ``block_size``; so
the cache read is under twice the longest live one, and a short generation does not read
GPT-2's whole 1,024 positions. One graph is captured per call (the bucket and the batch are
fixed for it); the capture costs about two eager steps and ``cudaGraphInstantiate``.

**On NumPy** ``cuda_graph=True`` runs the very same static step eagerly, token by token (no
graph: there is nothing to launch), so the tests check its ids against plain decoding on the CPU
too; it reads all ``L`` cached positions per token, so it is slower there than plain decoding.
On CuPy the graph is captured and replayed. The same formula as the plain path, but not the same
float sums: a softmax or a product over ``L`` keys, the masked ones exact zeros, may round in a
different order than over ``t`` keys, so logits can differ in the last bits; the ids are tested
equal to plain greedy decoding on several prompts and models (``tests/test_cuda_graph.py``).

**Limits** (``check`` refuses the rest with a ValueError that says so): greedy decoding, the KV
cache on, no ``attention_mask`` padding, no ``eos_token_id``, no ``repetition_penalty``, no
prompt lookup, the whole generation within ``block_size``, dropout inactive.

**Opt-in, and not yet run on a GPU.** Plain ``generate`` (and the CLI, chat and serving, which
do not ask for it) still launches 310 kernels per GPT-2 token; the one launch per token is this
opt-in greedy path's. No GPU has been lent to this project: the capture has only run on the
CuPy stand-in of the tests (``tests/fake_cupy.py``), which records each call, replays it on the
same arrays, refuses host reads during capture as CUDA does, refuses allocations under capture
that do not come from the allocator of ``using_allocator``, and fails a launch whose graph reads
memory freed since the capture. The device script
(``benchmarks/gpu_check.sh``) runs ``tests/test_cuda_graph.py`` on the real CuPy first.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

import npgpt.functional as F
from npgpt import backend
from npgpt.autograd import Tensor, no_grad

Array = Any  # a numpy.ndarray or a cupy.ndarray

__all__ = ["MIN_CAPACITY", "capacity", "check", "StaticKVCache", "StaticDecoder", "capture", "captured", "decode"]

MIN_CAPACITY = 16      # the smallest static cache: below it the buckets would only multiply graphs


def capacity(length: int, block_size: int) -> int:
    """The static cache's length for ``length`` positions: the smallest power of two >= ``length`` and
    >= ``MIN_CAPACITY``, at most ``block_size``."""
    if length > block_size:
        raise ValueError(f"{length} positions do not fit the model's context of {block_size}")
    return min(block_size, max(MIN_CAPACITY, 1 << max(0, int(length) - 1).bit_length()))


def check(plan: Any, model: Any) -> None:
    """Refuse, with the reason, what the static step does not do (``plan``: the loop's checked settings)."""
    reasons = []
    if plan.sampling.do_sample:
        reasons.append("greedy decoding only (do_sample=False): a sample needs host random numbers per token")
    if plan.mask is not None:
        reasons.append("no padding (attention_mask): one position for every row")
    if plan.eos is not None:
        reasons.append("no eos_token_id: stopping needs the host to read each token")
    if plan.repetition_penalty != 1.0:
        reasons.append("no repetition_penalty")
    if plan.prompt_lookup:
        reasons.append("no prompt_lookup")
    if not plan.use_cache:
        reasons.append("the KV cache on (use_cache=True)")
    T0, n, block = plan.ids.shape[1], plan.max_new_tokens, model.config.block_size
    if T0 + n > block:
        reasons.append(f"the prompt and the new tokens within block_size ({T0} + {n} > {block}): past it the "
                       "window slides and every position shifts")
    from npgpt.nn import Dropout

    if any(isinstance(m, Dropout) and m.training and m.p > 0 for _, m in model.named_modules()):
        reasons.append("dropout off (model.eval()): a mask drawn per token would be frozen in the graph")
    if reasons:
        raise ValueError("cuda_graph=True decodes with a static step, which needs " + "; ".join(reasons))


class StaticKVCache:
    """The KV cache as the captured step sees it: all ``L`` positions, written at a device position.

    Wraps a preallocated ``KVCache``'s arrays (B, H, L, D); ``update`` writes the new key and
    value at ``position`` (a (1,) device array, read by the kernel, never by the host) and returns
    the whole cache, whose positions past ``position`` the step's mask hides.
    """

    def __init__(self, cache: Any, position: Array) -> None:
        self.keys, self.values = cache.keys, cache.values
        self.position = position        # (1,) int, a view of the decoder's position
        self.length = 0                 # GPT.trunk adds to it; nothing reads it (no Python position)

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store ``k, v`` (B, H, 1, D) at ``position``; return all keys and values (B, H, L, D)."""
        self.keys[layer][:, :, self.position] = k.data
        self.values[layer][:, :, self.position] = v.data
        return Tensor(self.keys[layer]), Tensor(self.values[layer])


class StaticDecoder:
    """One greedy decoding step with static shapes, over buffers made once (the graph's fixed addresses).

    ``token`` int (B, 1): the token the next step reads; ``position`` int (1, 1): its position;
    ``ids`` (B, L): the prompt and every token chosen so far; ``cache``: the KV cache of ``L``
    positions. ``prefill`` runs the prompt eagerly; ``step`` is the part a graph captures.
    """

    def __init__(self, model: Any, batch_size: int, length: int, dtype: Any = np.int64) -> None:
        self.model = model
        xp = backend.array_module(model.wte.weight.data)
        self.capacity = length
        self.cache = model.new_cache(batch_size, length)               # zeros: a masked key is finite
        self.token = xp.zeros((batch_size, 1), dtype=np.int64)
        self.position = xp.zeros((1, 1), dtype=np.int64)
        self.key_positions = xp.arange(length)[None]                   # (1, L)
        self.ids = xp.zeros((batch_size, length), dtype=dtype)
        self.static_cache = StaticKVCache(self.cache, self.position[0])
        self.head = None
        self.logits = None              # a (B, V) array here: the step also keeps its logits (one kernel more)

    def prefill(self, prompt: Array, head: Array | None = None) -> Array:
        """Run the prompt (B, T0) through the model eagerly, as plain decoding does; return the first new
        token (B,) and set ``token``, ``position`` and ``ids`` for the steps."""
        model, T0 = self.model, prompt.shape[1]
        self.head = head
        self.cache.reset()
        hidden = model.trunk(prompt, cache=self.cache)                 # positions 0 .. T0-1, causal
        first = backend.array_module(prompt).argmax(model.lm_head(hidden[:, -1], head).data, axis=-1)   # (B,)
        self.ids[:, :T0] = prompt
        self.ids[:, T0] = first
        self.token[:, 0] = first
        self.position.fill(T0)                                         # outside any graph: a number is fine
        return self.ids[:, T0]

    def step(self) -> None:
        """The next token from ``token`` at ``position``: written into ``token`` and ``ids``; ``position`` + 1.

        Every shape is fixed and every changing value is read from a device array, so this is
        what a CUDA graph records once and replays per token.
        """
        model = self.model
        xp = backend.array_module(self.token)
        # The keys this position sees, and those it does not, (1, 1, 1, L): made once for every layer.
        # Key 0 is always seen, so attention need not zero the masked probabilities (they are 0).
        mask = F.KeyMask((self.key_positions <= self.position)[:, None, None, :],
                         (self.key_positions > self.position)[:, None, None, :], every_query_sees_a_key=True)
        hidden = model.trunk(self.token, attention_mask=mask, position_ids=self.position,
                             cache=self.static_cache)                  # (B, 1, C)
        logits = model.lm_head(hidden[:, -1], self.head).data          # (B, V)
        if self.logits is not None:                                    # fixed before capture: a constant branch
            self.logits[...] = logits
        chosen = xp.argmax(logits, axis=-1)                            # (B,), greedy
        self.position += 1
        self.token[:, 0] = chosen
        self.ids[:, self.position[0]] = chosen[:, None]


def capture(decoder: StaticDecoder, stream: Any, pool: Any) -> Any:
    """Record ``decoder.step`` on ``stream`` (current) as a CUDA graph, its memory from ``pool`` alone.

    Warm-up first, through the same pool: it compiles every kernel and leaves in the pool free
    blocks of the sizes the step allocates, for capture to find (``cudaMalloc`` under capture is
    allowed in CuPy's relaxed mode all the same). Both run before the prompt: what they write is
    overwritten by ``prefill``.
    """
    cupy = backend.array_module(decoder.token)
    with cupy.cuda.using_allocator(pool.malloc):
        decoder.step()                                                 # warm-up, eager
        stream.begin_capture()
        try:
            decoder.step()
        except BaseException:
            with contextlib.suppress(Exception):                       # the capture is broken: end it
                stream.end_capture()
            raise
        return stream.end_capture()


def captured(decoder: StaticDecoder, pool: Any) -> Any:
    """Warm-up and capture of ``decoder.step`` on a side stream of their own; returns the graph.

    The legacy stream cannot be captured, so these two run on a ``Stream(non_blocking=True)``,
    after the caller's stream's work (the decoder's buffers were zeroed there) and before its
    later work (one event each way, no host wait). Only they run there: the prompt and every
    replay then run on the caller's stream (a graph may be launched on any stream), so the
    prompt's intermediates go back to the default pool's arena of the caller's stream, which its
    later work draws from again, and a token costs one launch and nothing else.
    """
    cupy = backend.array_module(decoder.token)
    caller, side = cupy.cuda.get_current_stream(), cupy.cuda.Stream(non_blocking=True)
    side.wait_event(caller.record())
    with side:
        graph = capture(decoder, side, pool)
    caller.wait_event(side.record())
    return graph


def decode(model: Any, plan: Any) -> Iterator[Array]:
    """The new tokens (B,) of ``plan``, one per step: the prompt eagerly, then one static step per token
    (on CuPy one replay of the captured graph; on NumPy the step itself)."""
    check(plan, model)
    prompt, n = plan.ids, plan.max_new_tokens
    if n == 0:
        return
    B, T0 = prompt.shape
    head = model.decoding_weight(B, n)
    decoder = StaticDecoder(model, B, capacity(T0 + n, model.config.block_size), prompt.dtype)
    with no_grad():
        if not backend.is_cupy_array(prompt) or n == 1:
            yield decoder.prefill(prompt, head)
            for i in range(1, n):
                decoder.step()
                yield decoder.ids[:, T0 + i]
            return
        yield from _replayed(decoder, prompt, head, n)


def _replayed(decoder: StaticDecoder, prompt: Array, head: Array | None, n: int) -> Iterator[Array]:
    """``decode`` on CuPy: capture (side stream), the prompt eagerly, then one graph launch per token
    (all three on the caller's stream but the capture)."""
    cupy = backend.array_module(prompt)
    pool, T0 = cupy.cuda.MemoryPool(), prompt.shape[1]
    stream = cupy.cuda.get_current_stream()                            # the caller's: prompt and replays
    graph = None
    try:
        decoder.head = head
        graph = captured(decoder, pool)
        yield decoder.prefill(prompt, head)
        for i in range(1, n):
            graph.launch(stream)
            yield decoder.ids[:, T0 + i]                               # a view: later replays write other columns
    finally:
        graph = None                    # the graph goes first, then the memory it wrote (cudaFree waits for it)
        pool.free_all_blocks()
