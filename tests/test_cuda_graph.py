"""Greedy decoding as one CUDA graph (npgpt/generation/cuda_graph.py; docs/gpu.md, "Decoding as one CUDA graph").

The claims under test: ``generate(..., cuda_graph=True)`` gives exactly the ids of plain greedy
decoding, on NumPy (the static step run eagerly) and on CuPy (the step captured once, one graph
launch per token); the static cache's masked positions get exactly zero weight; and the CuPy
stand-in's capture catches the faults a real capture has: a host read inside it, a Python value
frozen at capture, an allocation under capture from the default pool (whose blocks other work
would be handed), and a launch after memory the graph uses was freed (the program's array, or
the private pool's blocks). What it does not see: which block CuPy's pool would hand out, so a
wrong result from memory actually reused is not reproduced, only the freeing that allows it. On
a real GPU the "cuda" cases run on the real CuPy (``benchmarks/gpu_check.sh``); the tests that
inspect the stand-in's graph skip there.
"""

import numpy as np
import pytest

import npgpt.functional as F
from npgpt import backend, generation
from npgpt.autograd import Tensor
from npgpt.generation import cuda_graph
from npgpt.model import GPT, GPTConfig


def small(seed=0, device="cpu", vocab=53, block=40, layers=2, heads=2, embd=16):
    """A tiny GPT with its weights scaled x10: at GPT-2's initial scale a random model repeats one token
    whatever it attends to, and would not notice a wrong key; scaled, every token depends on the context."""
    config = GPTConfig(vocab_size=vocab, block_size=block, n_layer=layers, n_head=heads, n_embd=embd)
    model = GPT(config, seed=seed).eval()
    for _, p in model.named_parameters():
        p.data *= 10
    return model.to(device)


def host(a):
    return backend.to_numpy(a)


def stand_in():
    """The CuPy stand-in module, or a skip when the cuda cases run on a real CuPy (or not at all)."""
    import sys

    module = sys.modules.get("fake_cupy")
    if module is None or not module.installed():
        pytest.skip("inspects the CuPy stand-in's graph (NPGPT_FAKE_CUDA=1)")
    return module


# ------------------------------------------------------------------ the bucket
def test_the_static_cache_is_the_smallest_power_of_two_bucket_within_the_context():
    assert [cuda_graph.capacity(n, 1024) for n in (1, 16, 17, 24, 33, 512, 513, 1024)] == \
           [16, 16, 32, 32, 64, 512, 1024, 1024]
    assert cuda_graph.capacity(20, 24) == 24          # capped at block_size
    with pytest.raises(ValueError, match="do not fit"):
        cuda_graph.capacity(25, 24)


# ------------------------------------------------------------------ the same ids
@pytest.mark.parametrize("seed, rows, prompt_length, new_tokens", [
    (0, 1, 1, 12), (1, 1, 7, 20), (2, 3, 5, 16), (3, 2, 9, 31), (4, 1, 16, 24)])
def test_the_static_step_chooses_the_ids_of_plain_greedy_decoding(device, seed, rows, prompt_length, new_tokens):
    model = small(seed, device)
    prompt = np.random.default_rng(seed).integers(0, 53, (rows, prompt_length))
    want = host(generation.generate(model, prompt, new_tokens))
    got = host(generation.generate(model, prompt, new_tokens, cuda_graph=True))
    assert got.dtype == want.dtype and got.shape == (rows, prompt_length + new_tokens)
    np.testing.assert_array_equal(got, want)      # the last case fills the whole context (16 + 24 = 40)


@pytest.mark.parametrize("new_tokens", [0, 1, 2])
def test_short_generations_and_the_stream_agree_with_plain_decoding(device, new_tokens):
    model = small(5, device, layers=1)
    prompt = np.random.default_rng(5).integers(0, 53, (2, 4))
    np.testing.assert_array_equal(host(generation.generate(model, prompt, new_tokens, cuda_graph=True)),
                                  host(generation.generate(model, prompt, new_tokens)))
    steps = [host(t) for t in generation.stream(model, prompt, new_tokens, cuda_graph=True)]
    assert [s.tolist() for s in steps] == [host(t).tolist() for t in generation.stream(model, prompt, new_tokens)]


def test_masked_positions_get_exactly_zero_weight_and_the_rest_the_plain_probabilities():
    # docs/model.md eq:attention over the static cache of L keys, positions past t masked, against the
    # live keys 0..t: the masked probabilities are exactly 0, the others the same up to float sums' order.
    rng = np.random.default_rng(0)
    B, H, L, D, t = 2, 3, 32, 8, 11
    q = rng.standard_normal((B, H, 1, D)).astype(np.float32)
    k, v = (rng.standard_normal((B, H, L, D)).astype(np.float32) * 3 for _ in range(2))
    visible = (np.arange(L) <= t)[None, None, None, :]
    _, static = F.scaled_dot_product_attention(Tensor(q), Tensor(k), Tensor(v), causal=False, attn_mask=visible,
                                               return_weights=True)
    y, live = F.scaled_dot_product_attention(Tensor(q), Tensor(k[:, :, :t + 1]), Tensor(v[:, :, :t + 1]),
                                             causal=False, return_weights=True)
    assert np.all(static[..., t + 1:] == 0.0)
    np.testing.assert_allclose(static[..., :t + 1], live, rtol=1e-6, atol=1e-7)


def test_a_key_mask_made_once_gives_the_plain_masks_probabilities_bit_for_bit():
    # F.KeyMask (docs/model.md eq:attention): the inverse made once for every layer; with
    # every_query_sees_a_key the zeroing after the softmax is skipped, which changes no bit when it
    # holds. Without the flag a query that sees no key still gets zeros, as with a plain mask.
    rng = np.random.default_rng(1)
    B, H, L, D = 2, 3, 16, 8
    q = rng.standard_normal((B, H, 1, D)).astype(np.float32) * 4
    k, v = (rng.standard_normal((B, H, L, D)).astype(np.float32) * 4 for _ in range(2))
    allowed = np.zeros((B, 1, 1, L), dtype=bool)
    allowed[0, ..., :5] = allowed[1, ..., :11] = True
    attend = [F.scaled_dot_product_attention(Tensor(q), Tensor(k), Tensor(v), causal=False, attn_mask=mask,
                                             return_weights=True)
              for mask in (allowed, F.KeyMask(allowed, ~allowed, every_query_sees_a_key=True))]
    np.testing.assert_array_equal(attend[1][0].data, attend[0][0].data)
    np.testing.assert_array_equal(attend[1][1], attend[0][1])
    allowed[1] = False                                  # the second row sees nothing
    _, P = F.scaled_dot_product_attention(Tensor(q), Tensor(k), Tensor(v), causal=False,
                                          attn_mask=F.KeyMask(allowed, ~allowed), return_weights=True)
    assert np.all(P[1] == 0.0) and np.allclose(P[0].sum(-1), 1.0)


# ------------------------------------------------------------------ what it refuses
@pytest.mark.parametrize("settings, reason", [
    (dict(do_sample=True), "greedy"), (dict(eos_token_id=3), "eos_token_id"),
    (dict(repetition_penalty=1.3), "repetition_penalty"), (dict(prompt_lookup=3), "prompt_lookup"),
    (dict(use_cache=False), "use_cache"), (dict(max_new_tokens=37), "block_size")])
def test_what_the_static_step_cannot_do_is_refused_with_the_reason(settings, reason):
    model = small()
    with pytest.raises(ValueError, match=reason):
        generation.generate(model, np.zeros((1, 4), dtype=np.int64), **{"max_new_tokens": 5, **settings},
                            cuda_graph=True)


def test_padding_dropout_and_a_non_boolean_setting_are_refused():
    model = small()
    with pytest.raises(ValueError, match="attention_mask"):
        generation.generate(model, np.ones((2, 4), dtype=np.int64), 3, cuda_graph=True,
                            attention_mask=np.array([[0, 1, 1, 1], [1, 1, 1, 1]]))
    model.set_dropout(0.1).train()
    with pytest.raises(ValueError, match="dropout"):
        generation.generate(model, np.ones((1, 4), dtype=np.int64), 3, cuda_graph=True)
    with pytest.raises(ValueError, match="cuda_graph must be True or False"):
        generation.GenerationConfig(cuda_graph="yes")


# ------------------------------------------------------------------ the capture, on the stand-in
@pytest.mark.gpu
def test_each_token_after_the_first_is_one_graph_launch_with_no_copy(cuda):
    fake = stand_in()
    model = small(1, cuda)
    tokens = generation.stream(model, np.arange(6)[None], 10, cuda_graph=True)
    next(tokens)
    next(tokens)
    fake.reset_kernels()
    fake.reset_transfers()
    next(tokens)
    counts = fake.kernels()
    assert counts["launches"] == 1 and fake.replayed_nodes() > 2 * 25   # two layers' kernels and more, in one
    assert fake.transfers() == {"to_host": 0, "to_device": 0}


def _decoder(model, prompt_length=5, new_tokens=6):
    length = cuda_graph.capacity(prompt_length + new_tokens, model.config.block_size)
    return cuda_graph.StaticDecoder(model, 1, length)


@pytest.mark.gpu
def test_capture_allocates_from_a_private_pool_and_runs_nothing(cuda):
    fake = stand_in()
    import cupy

    model = small(2, cuda)
    decoder = _decoder(model)
    stream, pool = cupy.cuda.Stream(non_blocking=True), cupy.cuda.MemoryPool()
    table = cupy.asarray(np.arange(12.0).reshape(3, 4))
    columns = cupy.asarray(np.array([2, 0]))
    with stream, cupy.cuda.using_allocator(pool.malloc):
        decoder.step()                                  # the state a capture must leave as it is
        before = [host(a) for a in (decoder.token, decoder.position, decoder.ids, decoder.cache.keys[0])]
        stream.begin_capture()
        decoder.step()
        logits_made_in_capture = model.lm_head(Tensor(cupy.zeros((1, 16), dtype=np.float32))).data
        gathered = table[:, columns]                    # NumPy's gather is a view of fresh memory
        graph = stream.end_capture()
    assert graph._allocator == pool.malloc and graph._allocator != cupy.get_default_memory_pool().malloc
    after = [host(a) for a in (decoder.token, decoder.position, decoder.ids, decoder.cache.keys[0])]
    for b, a in zip(before, after):
        np.testing.assert_array_equal(a, b)
    assert np.isnan(host(logits_made_in_capture)).all()   # the graph's own memory: never written yet
    assert np.isnan(host(gathered)).all()
    graph.launch(stream)
    np.testing.assert_array_equal(host(gathered), [[2.0, 0.0], [6.0, 4.0], [10.0, 8.0]])
    assert fake.graph_nodes(graph) > 0


@pytest.mark.gpu
@pytest.mark.parametrize("allocator", ["none", "the default pool's"])
def test_an_allocation_under_capture_outside_a_private_pool_is_refused(cuda, allocator):
    # On a GPU it would work, until Python frees an intermediate: its block goes back to the pool that
    # every later allocation draws from, while each replay still writes it.
    stand_in()
    import cupy

    decoder = _decoder(small(2, cuda))
    stream = cupy.cuda.Stream(non_blocking=True)
    malloc = None if allocator == "none" else cupy.get_default_memory_pool().malloc
    with stream, cupy.cuda.using_allocator(malloc):
        decoder.step()
        stream.begin_capture()
        try:
            with pytest.raises(cupy.cuda.runtime.CUDARuntimeError, match="default memory pool.*using_allocator"):
                decoder.step()
        finally:
            stream.end_capture()


@pytest.mark.gpu
def test_a_launch_after_memory_the_graph_uses_was_freed_fails(cuda, monkeypatch):
    # The graph holds addresses, not arrays: the program's arrays and the private pool's blocks must
    # outlive it. On a GPU the freed blocks would be handed to the next allocations (the prompt's).
    stand_in()
    import cupy

    model = small(4, cuda)
    prompt = np.random.default_rng(4).integers(0, 53, (1, 6))
    capture = cuda_graph.capture

    def dropping_the_key_positions(decoder, stream, pool):
        decoder.key_positions = cupy.arange(decoder.capacity)[None]     # only the decoder holds it
        graph = capture(decoder, stream, pool)
        decoder.key_positions = None                                     # freed: the graph still reads it
        return graph

    monkeypatch.setattr(cuda_graph, "capture", dropping_the_key_positions)
    with pytest.raises(cupy.cuda.runtime.CUDARuntimeError, match="memory freed since the capture"):
        generation.generate(model, prompt, 20, cuda_graph=True)
    monkeypatch.undo()

    decoder = _decoder(model)
    stream, pool = cupy.cuda.Stream(non_blocking=True), cupy.cuda.MemoryPool()
    with stream:
        graph = cuda_graph.capture(decoder, stream, pool)
    graph.launch(stream)                                # its memory is alive: the pool holds it
    pool.free_all_blocks()                              # what _replayed does after the last token
    with pytest.raises(cupy.cuda.runtime.CUDARuntimeError, match="memory freed since the capture"):
        graph.launch(stream)


@pytest.mark.gpu
def test_a_host_read_inside_the_step_fails_the_capture_as_cuda_does(cuda, monkeypatch):
    fake = stand_in()
    import cupy

    step = cuda_graph.StaticDecoder.step

    def reading(self):
        if int(self.position[0, 0]) >= 0:               # a device -> host copy: the host waits for the GPU
            step(self)

    monkeypatch.setattr(cuda_graph.StaticDecoder, "step", reading)
    model = small(3, cuda)
    with pytest.raises(cupy.cuda.runtime.CUDARuntimeError, match="cudaErrorStreamCaptureUnsupported"):
        generation.generate(model, np.arange(4)[None], 5, cuda_graph=True)
    assert fake._capture.graph is None                  # the failed capture was ended
    monkeypatch.undo()                                  # and the next capture works
    np.testing.assert_array_equal(host(generation.generate(model, np.arange(4)[None], 5, cuda_graph=True)),
                                  host(generation.generate(model, np.arange(4)[None], 5)))


@pytest.mark.parametrize("on", ["numpy", pytest.param("stand-in", marks=pytest.mark.gpu)])
def test_a_position_kept_in_python_is_frozen_by_the_graph_and_the_ids_go_wrong(on, monkeypatch):
    # The fault a real capture hides until it gives wrong text: a Python int that changes per token.
    # Eagerly (NumPy) the step is right; captured, the cache is written at the captured position forever.
    if on == "stand-in":
        stand_in()
    model = small(4, "cuda" if on == "stand-in" else "cpu")
    prefill, step = cuda_graph.StaticDecoder.prefill, cuda_graph.StaticDecoder.step

    def update(self, layer, k, v):
        p = self.python_position
        self.keys[layer][:, :, p:p + 1] = k.data
        self.values[layer][:, :, p:p + 1] = v.data
        return Tensor(self.keys[layer]), Tensor(self.values[layer])

    def counted_prefill(self, prompt, head=None):
        self.static_cache.python_position = prompt.shape[1]
        return prefill(self, prompt, head)

    def counted_step(self):
        self.static_cache.python_position = getattr(self.static_cache, "python_position", 0)
        step(self)
        self.static_cache.python_position += 1

    monkeypatch.setattr(cuda_graph.StaticKVCache, "update", update)
    monkeypatch.setattr(cuda_graph.StaticDecoder, "prefill", counted_prefill)
    monkeypatch.setattr(cuda_graph.StaticDecoder, "step", counted_step)
    prompt = np.random.default_rng(4).integers(0, 53, (1, 6))
    want = host(generation.generate(model, prompt, 20))
    got = host(generation.generate(model, prompt, 20, cuda_graph=True))
    assert np.array_equal(got, want) == (on == "numpy")


@pytest.mark.gpu
def test_the_null_stream_cannot_be_captured(cuda):
    stand_in()
    import cupy

    with pytest.raises(cupy.cuda.runtime.CUDARuntimeError, match="null stream"):
        cupy.cuda.Stream.null.begin_capture()


# ------------------------------------------------------------------ the real CuPy's API
_REAL_API = r"""
import json, sys
import cupy
names = {"cupy.cuda.Stream": ["begin_capture", "end_capture", "is_capturing", "record", "wait_event", "null",
                              "synchronize", "__enter__", "__exit__"],
         "cupy.cuda.Graph": ["launch", "upload"], "cupy.cuda.MemoryPool": ["malloc"],
         "cupy.cuda.Event": ["synchronize", "done"], "cupy.cuda": ["using_allocator", "get_current_stream"],
         "cupy.cuda.runtime": ["CUDARuntimeError", "streamCaptureModeRelaxed"]}
found = {}
for owner, wanted in names.items():
    obj = cupy
    for part in owner.split(".")[1:]:
        obj = getattr(obj, part)
    found[owner] = [n for n in wanted if not hasattr(obj, n)]
doc = cupy.cuda.Stream.begin_capture.__doc__ or ""
found["relaxed_by_default"] = "streamCaptureModeRelaxed" in doc
found["version"] = cupy.__version__
print(json.dumps(found))
"""


def test_the_capture_uses_only_what_the_installed_cupy_has():
    # CuPy imports without a GPU: ask a fresh interpreter (the stand-in may be installed in this one).
    import json
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _REAL_API], capture_output=True, text=True, cwd="/")
    if proc.returncode != 0:
        pytest.skip(f"the real CuPy does not import here: {proc.stderr.strip().splitlines()[-1:]}")
    found = json.loads(proc.stdout)
    missing = {k: v for k, v in found.items() if isinstance(v, list) and v}
    assert not missing, f"CuPy {found['version']} lacks {missing}"
    assert found["relaxed_by_default"]            # begin_capture's documented default mode


def test_the_stand_ins_capture_api_is_the_real_ones_names():
    import fake_cupy

    for cls in (fake_cupy.Stream, fake_cupy.Graph, fake_cupy.Event, fake_cupy.MemoryPool):
        assert cls.__module__ == "cupy.cuda"
    assert {"begin_capture", "end_capture", "is_capturing", "record", "wait_event"} <= set(dir(fake_cupy.Stream))
