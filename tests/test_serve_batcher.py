"""The batching scheduler of ``npgpt serve`` (npgpt/apps/serve/batcher.py, docs/serving.md): requests
that share decoding steps get exactly the tokens they get alone, stop strings cut exactly, slots are
freed. No HTTP here: tests/test_serve.py drives the real server."""

import threading
import time

import numpy as np
import pytest

from npgpt.apps.serve.batcher import Batcher, QueueFull, _most_likely, make_job
from npgpt.apps.serve.text import TextStream
from npgpt.generation import SamplingConfig
from npgpt.model import GPT, GPTConfig
from npgpt.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.from_pretrained("npgpt-small")


@pytest.fixture(scope="module")
def model(tokenizer):
    config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=48, n_layer=2, n_head=2, n_embd=32)
    return GPT(config, seed=3).eval()


def run_jobs(batcher, specs):
    """Submit every (prompt, max_new_tokens, sampling, kwargs) at once; return each job's events."""
    done = [threading.Event() for _ in specs]
    events = [[] for _ in specs]
    jobs = []
    for i, (prompt, n_new, sampling, kw) in enumerate(specs):
        def deliver(event, i=i):
            events[i].append(event)
            if event[0] == "done":
                done[i].set()
        jobs.append(make_job(batcher.tokenizer, prompt, n_new, sampling, deliver=deliver, **kw))
    for job in jobs:
        batcher.submit(job)
    for d in done:
        assert d.wait(60)
    return events


def texts(events, n=1):
    out = [""] * n
    for e in events:
        if e[0] == "piece":
            out[e[1]] += e[2].text
    return out


def tokens(events):
    return [(t, lp) for e in events if e[0] == "piece" for t, lp, _ in e[2].tokens]


SAMPLED = SamplingConfig(do_sample=True, temperature=0.9, top_p=0.95)


def crowd(tokenizer, size=9):
    rng = np.random.default_rng(0)
    specs = []
    for i in range(size):
        prompt = rng.integers(0, tokenizer.vocab_size - 1, int(rng.integers(1, 20))).tolist()
        sampling = SAMPLED if i % 2 else SamplingConfig()
        specs.append((prompt, int(rng.integers(3, 25)), sampling, {"seed": 100 + i, "top_logprobs": 3}))
    return specs


def test_a_request_gets_the_same_tokens_and_logprobs_alone_and_in_a_crowd(model, tokenizer):
    specs = crowd(tokenizer)
    batcher = Batcher(model, tokenizer, max_batch=4)      # fewer slots than requests: some wait and join later
    batcher.start()
    try:
        alone = [run_jobs(batcher, [spec])[0] for spec in specs]
        together = run_jobs(batcher, specs)
    finally:
        batcher.stop()
    assert max(batcher.batch_sizes) == 4 and 1 in batcher.batch_sizes     # it did batch, and ran alone
    for a, b in zip(alone, together):
        assert texts(a) == texts(b)
        assert tokens(a) == tokens(b)                      # the log-probabilities too, to the bit
        assert [e for e in a if e[0] != "piece"] == [e for e in b if e[0] != "piece"]


def test_n_choices_draw_from_their_own_generators(model, tokenizer):
    batcher = Batcher(model, tokenizer, max_batch=8)
    batcher.start()
    try:
        three = run_jobs(batcher, [([5, 6, 7], 12, SAMPLED, {"seed": 1, "n": 3})])[0]
        one = run_jobs(batcher, [([5, 6, 7], 12, SAMPLED, {"seed": 1})])[0]
    finally:
        batcher.stop()
    t3 = texts(three, 3)
    assert t3[0] == texts(one)[0]                          # choice 0 is the request with n=1
    assert len(set(t3)) == 3
    assert three[-1] == ("done", 36)
    assert sorted(e[1:] for e in three if e[0] == "finish") == [(0, "length"), (1, "length"), (2, "length")]


def test_greedy_decoding_equals_the_librarys_generate(model, tokenizer):
    prompt = [11, 12, 13, 14]
    batcher = Batcher(model, tokenizer, max_batch=2)
    batcher.start()
    try:
        events = run_jobs(batcher, [(prompt, 20, SamplingConfig(), {})])[0]
    finally:
        batcher.stop()
    expected = model.generate(np.array([prompt]), 20)[0, 4:].tolist()
    assert texts(events)[0] == tokenizer.decode(expected)


def test_an_end_token_stops_a_choice_and_is_not_text(model, tokenizer):
    prompt = [11, 12, 13, 14]
    greedy = model.generate(np.array([prompt]), 20)[0, 4:].tolist()
    k = next(j for j in range(1, 20) if greedy[j] not in greedy[:j])     # a token greedy decoding first makes at k
    batcher = Batcher(model, tokenizer, max_batch=2)
    batcher.start()
    try:
        events = run_jobs(batcher, [(prompt, 20, SamplingConfig(), {"end_ids": [greedy[k]]})])[0]
    finally:
        batcher.stop()
    assert ("finish", 0, "stop") in events and events[-1] == ("done", k + 1)
    assert texts(events)[0] == tokenizer.decode(greedy[:k])


def test_a_cancelled_job_frees_its_slot_at_the_next_step(model, tokenizer):
    batcher = Batcher(model, tokenizer, max_batch=1, max_queue=1)
    seen = []
    job = make_job(tokenizer, [1, 2], 40, SamplingConfig(), deliver=seen.append)
    started = threading.Event()
    batcher.on_step = lambda size: started.set()
    batcher.start()
    try:
        batcher.submit(job)
        assert started.wait(30)
        job.cancelled = True
        later = run_jobs(batcher, [([3, 4], 2, SamplingConfig(), {})])[0]   # gets the only slot
        assert later[-1] == ("done", 2)
        assert seen[-1][0] == "done" and seen[-1][1] < 40
    finally:
        batcher.stop()


def test_stop_finishes_running_and_waiting_choices_as_cancelled(model, tokenizer):
    """``stop`` (the server's shutdown) cancels what runs and what waits, and says so: each open
    choice of either gets the finish reason "cancelled" before its job's "done", so that a request
    still listening answers 503 (docs/serving.md) rather than a cut answer that looks complete."""
    batcher = Batcher(model, tokenizer, max_batch=2)
    running, waiting = [], []
    started = threading.Event()
    batcher.on_step = lambda size: (started.set(), time.sleep(0.01))      # steps slow enough to stop mid-way
    batcher.start()
    try:
        batcher.submit(make_job(tokenizer, [1, 2], 60, SamplingConfig(), n=2, deliver=running.append))
        assert started.wait(30)                            # both slots taken: the next job waits
        batcher.submit(make_job(tokenizer, [3, 4], 60, SamplingConfig(), n=2, deliver=waiting.append))
    finally:
        batcher.stop()
    ends = [e for e in running if e[0] != "piece"]
    assert ends[:2] == [("finish", 0, "cancelled"), ("finish", 1, "cancelled")] and ends[2][0] == "done"
    assert len(ends) == 3 and ends[2][1] < 2 * 60
    assert [e for e in waiting if e[0] != "piece"] == [("finish", 0, "cancelled"), ("finish", 1, "cancelled"),
                                                       ("done", 0)]


def test_a_failing_step_fails_its_requests_and_the_batcher_keeps_serving(model, tokenizer):
    batcher = Batcher(model, tokenizer, max_batch=2)
    real = batcher._logits
    calls = []

    def breaks_once(last):
        calls.append(1)
        if len(calls) == 3:                                # the prefill, one step, then a failure
            raise MemoryError("no room for the logits")
        return real(last)

    batcher._logits = breaks_once
    seen = []
    done = threading.Event()
    job = make_job(tokenizer, [1, 2], 10, SamplingConfig(), deliver=lambda e: (seen.append(e), e[0] == "error" and done.set()))
    batcher.start()
    try:
        batcher.submit(job)
        assert done.wait(30)
        assert seen[-1] == ("error", "MemoryError: no room for the logits")
        assert batcher.running == 0
        later = run_jobs(batcher, [([3, 4], 2, SamplingConfig(), {})])[0]
        assert later[-1] == ("done", 2)
    finally:
        batcher.stop()


def test_most_likely_with_k_0_asks_for_no_column():
    """``_most_likely(logp, 0)`` is what a request with logprobs but no alternatives (chat
    ``logprobs: true`` alone, completions ``logprobs: 0``) computes: (rows, 0) ids and values,
    the ids integers (they index the vocabulary). With k > 0 it is the k largest, largest first."""
    logp = np.log(np.array([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]]))
    ids, values = _most_likely(logp, 0)
    assert ids.shape == values.shape == (2, 0) and ids.dtype.kind == "i"
    ids, values = _most_likely(logp, 2)
    assert ids.tolist() == [[1, 2], [0, 2]] and np.array_equal(values, np.log([[0.6, 0.3], [0.5, 0.3]]))


def test_each_row_gets_the_logprobs_its_own_request_asked_for(model, tokenizer):
    """Four requests share every decoding step, asking for ``top_logprobs`` None, 0, 2 and 5:
    ``_logprobs`` computes the top 5 for the whole step and cuts each row to its own k. Each
    released token must carry exactly what its request asked for (the protocol: no logprob
    and no alternatives for None; its logprob and no alternatives for 0; k alternatives, most
    likely first, for k), with the chosen token's log-probability and the alternatives equal
    to a log-softmax computed here from the very logits the batcher sampled from; and each
    request gets the same tokens and log-probabilities alone as in this crowd."""
    asked = [None, 0, 2, 5]
    specs = [([7 + k, 8, 9], 8, SAMPLED if k % 2 else SamplingConfig(), {"seed": 40 + k, "top_logprobs": top})
             for k, top in enumerate(asked)]
    batcher = Batcher(model, tokenizer, max_batch=4)
    steps = []                                            # (logits, each row's top_logprobs, tokens chosen)
    sample = batcher._sample

    def recorded(logits, rows):
        chosen = sample(logits, rows)
        steps.append((np.array(logits, dtype=np.float64), [job.top_logprobs for job, _ in rows], chosen))
        return chosen

    batcher._sample = recorded
    events = [[] for _ in specs]
    for i, (prompt, n_new, sampling, kw) in enumerate(specs):     # all queued before the thread starts
        batcher.submit(make_job(tokenizer, prompt, n_new, sampling, deliver=events[i].append, **kw))
    batcher.start()
    try:
        deadline = time.monotonic() + 60
        while not all(e and e[-1][0] in ("done", "error") for e in events) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert all(e and e[-1][0] == "done" for e in events), [e[-1:] for e in events]
        crowd = list(steps)
        alone = [run_jobs(batcher, [spec])[0] for spec in specs]
    finally:
        batcher.stop()
    assert any(sorted(ks, key=str) == sorted(asked, key=str) for _, ks, _ in crowd)    # one step held all four
    for i, top in enumerate(asked):
        released = [entry for e in events[i] if e[0] == "piece" for entry in e[2].tokens]
        expected = [(z[r], t[r]) for z, ks, t in crowd for r in range(len(ks)) if ks[r] == top]
        assert len(released) == len(expected) == 8
        for (text, logprob, alternatives), (z, token) in zip(released, expected):
            assert text == tokenizer.decode([token])
            if top is None:
                assert logprob is None and alternatives == []
                continue
            logp = z - np.logaddexp.reduce(z)
            assert logprob == pytest.approx(logp[token], rel=1e-12, abs=1e-12)
            best = np.argsort(-logp, kind="stable")[:top]
            assert [t for t, _ in alternatives] == [tokenizer.decode([int(j)]) for j in best]
            assert [lp for _, lp in alternatives] == pytest.approx(logp[best].tolist(), rel=1e-12, abs=1e-12)
        assert [e for e in alone[i] if e[0] == "piece"] == [e for e in events[i] if e[0] == "piece"]   # and alone


def test_a_full_queue_refuses_with_a_retry_delay(model, tokenizer):
    batcher = Batcher(model, tokenizer, max_batch=1, max_queue=2)   # not started: nothing leaves the queue
    for _ in range(2):
        batcher.submit(make_job(tokenizer, [1], 1, SamplingConfig()))
    with pytest.raises(QueueFull) as info:
        batcher.submit(make_job(tokenizer, [1], 1, SamplingConfig()))
    assert info.value.retry_after >= 1
    with pytest.raises(ValueError, match="n=3 choices do not fit"):
        batcher.submit(make_job(tokenizer, [1], 1, SamplingConfig(), n=3))


# ------------------------------------------------------------------------ text
class Letters:
    """A tokenizer whose token i is the i-th character of an alphabet (and one two-byte character)."""

    alphabet = ["a", "b", "\n", "c", "é"]

    def token_bytes(self, i):
        return self.alphabet[i].encode()

    def decode(self, ids):
        return "".join(self.alphabet[i] for i in ids)


def stream_text(ids, stops):
    s = TextStream(Letters(), stops)
    pieces = []
    for i in ids:
        pieces.append(s.push(i).text)
        if s.stopped:
            break
    pieces.append(s.finish().text)
    return pieces, s.stopped


def test_a_stop_string_is_cut_exactly_and_never_sent_in_part():
    pieces, stopped = stream_text([0, 2, 1, 2, 2, 3], ["\n\n"])
    assert stopped and "".join(pieces) == "a\nb"
    assert pieces[:2] == ["a", ""]                # the first "\n" waits: it may begin the stop string
    pieces, stopped = stream_text([0, 2, 1], ["\n\n"])
    assert not stopped and "".join(pieces) == "a\nb"      # it did not: released with the next text
    pieces, stopped = stream_text([0, 1, 3, 0], ["bc", "ca", "b"])
    assert stopped and "".join(pieces) == "a"        # the earliest stop string wins
    pieces, stopped = stream_text([0, 1], ["ab"])
    assert stopped and pieces == ["", "", ""]       # push "a", push "b" (the stop), finish


def test_released_tokens_follow_the_released_text():
    s = TextStream(Letters(), ["bc"])
    assert [t for t, _, _ in s.push(0, -0.5, [(1, -1.0)]).tokens] == ["a"]
    assert s.push(1, -0.1).tokens == []                                   # "b" may start "bc"
    piece = s.push(3, -0.2)
    assert s.stopped and piece.text == "" and piece.tokens == []         # the stop began at "b"'s start
    s = TextStream(Letters(), [])
    entry = s.push(0, -0.5, [(1, -1.0), (2, -2.0)]).tokens[0]
    assert entry == ("a", -0.5, [("b", -1.0), ("\n", -2.0)])


# ---------------------------------------------------------------------- device
@pytest.mark.gpu
def test_the_batcher_runs_on_the_device_with_a_few_copies_per_step(model, tokenizer, cuda, transfers):
    device = cuda
    from npgpt import backend

    specs = crowd(tokenizer, size=5)
    cpu = Batcher(model, tokenizer, max_batch=8)
    cpu.start()
    try:
        expected = run_jobs(cpu, specs)
    finally:
        cpu.stop()
    on_device = GPT(model.config, seed=3).eval().to(device)
    batcher = Batcher(on_device, tokenizer, max_batch=8)
    assert backend.device_of(batcher.cache.keys[0]) == device
    before = transfers()
    batcher.start()
    try:
        got = run_jobs(batcher, specs)
    finally:
        batcher.stop()
    after = transfers()
    assert [texts(e) for e in got] == [texts(e) for e in expected]
    # Per step: the last tokens and the lengths to the device, and for each group of rows sampled
    # alike its rows and its uniform draws; back: each group's tokens and the log-probabilities.
    # Per job: its prompt. Nothing per layer or per row (measured: 125 and 94 for 15 steps, 5 jobs).
    steps, jobs = batcher.steps, len(specs)
    assert after["to_device"] - before["to_device"] <= 8 * steps + 4 * jobs, (after, before, steps)
    assert after["to_host"] - before["to_host"] <= 6 * steps + 6 * jobs, (after, before, steps)
