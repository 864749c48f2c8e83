"""Continuous batching: concurrent requests share every decoding step (docs/serving.md, "How batching works").

One thread owns the model: npgpt's ``no_grad`` switch is process-wide, and one
model must not run two passes at once. It loops over three moves:

1. **admit** the waiting requests, first come first served, while there are free
   slots (a request with ``n`` choices takes ``n``): its prompt runs through the
   trunk alone (the *prefill*), each choice draws its first token from the
   prompt's last logits, and the prompt's keys and values are copied into the
   choice's slot of the running ``SlotCache``;
2. **step**: one trunk pass over the last token of every running row, (B, 1) ->
   one new token per row, each row sampled with its own settings and its own
   random generator;
3. **retire** the rows that ended (an end token, a stop string, ``max_tokens``,
   or a client that went away): the last running row moves into the freed slot,
   so the running rows stay ``0 .. B-1``.

A request that arrives while others decode joins at the next step; nobody waits
for a batch to finish. Each row's arithmetic is independent of the others
(``SlotCache``), and each choice draws from its own ``numpy.random.default_rng``,
so a seeded request gets the same tokens alone and in a crowd.

Results go back as events through ``Job.deliver``, which the server points at
its event loop (``loop.call_soon_threadsafe``).
"""

import collections
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from npgpt import backend, generation
from npgpt.apps.serve.slots import SlotCache
from npgpt.apps.serve.text import Piece, TextStream
from npgpt.autograd import no_grad
from npgpt.generation import SamplingConfig

log = logging.getLogger("npgpt.serve")


class QueueFull(Exception):
    """Too many requests are waiting; the server answers 429 with ``retry_after`` seconds."""

    def __init__(self, waiting: int, retry_after: int) -> None:
        super().__init__(f"{waiting} requests are already waiting for a slot")
        self.retry_after = retry_after


class ShuttingDown(Exception):
    """The server is stopping and takes no new requests (503)."""


@dataclass
class Choice:
    """One sequence being generated (a request has ``n``); ``rng`` is its own generator."""

    index: int
    rng: np.random.Generator
    text: TextStream
    generated: int = 0              # tokens drawn so far
    last: int = -1                  # the last token, the next step's input
    finish_reason: str | None = None


@dataclass
class Job:
    """One request: a prompt and how to continue it.

    ``deliver(event)`` is called from the model thread with ``("piece", index, Piece)``,
    ``("finish", index, reason)`` and, last, ``("done", completion_tokens)``; or, if decoding
    failed, ``("error", message)`` and nothing after it. A cancelled job's open choices finish
    with the reason "cancelled", so that a request still listening (a shutdown's) can tell a cut
    answer from a complete one.
    ``top_logprobs``: None for no log-probabilities, else how many alternatives
    to report besides the chosen token. Setting ``cancelled`` (the client went
    away) frees the job's slots at the next step.
    """

    prompt: Sequence[int]
    max_new_tokens: int
    sampling: SamplingConfig
    choices: list[Choice]
    deliver: Callable[[tuple], None]
    end_ids: frozenset[int] = frozenset()
    top_logprobs: int | None = None
    cancelled: bool = False
    arrived: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    completion_tokens: int = 0
    open_choices: int = 0


def make_job(tokenizer: Any, prompt: Sequence[int], max_new_tokens: int, sampling: SamplingConfig, *,
             n: int = 1, seed: int | None = None, stops: Sequence[str] = (), end_ids: Sequence[int] = (),
             top_logprobs: int | None = None, deliver: Callable[[tuple], None] = lambda event: None) -> Job:
    """A ``Job`` with ``n`` choices. Choice 0 draws from ``default_rng(seed)`` (the generator of
    ``npgpt.generation.generate(..., seed=seed)``), choice ``k > 0`` from ``default_rng([seed, k])``;
    without a seed each choice gets fresh entropy."""
    if seed is None:
        rngs = [np.random.default_rng() for _ in range(n)]
    else:
        rngs = [np.random.default_rng(seed if k == 0 else [seed, k]) for k in range(n)]
    choices = [Choice(k, rngs[k], TextStream(tokenizer, stops)) for k in range(n)]
    return Job(list(prompt), max_new_tokens, sampling, choices, deliver, frozenset(end_ids), top_logprobs)


class _Draws:
    """The uniform draws of a group of rows, each from its own generator (as ``generation.RowGenerators``)."""

    def __init__(self, generators: list[np.random.Generator]) -> None:
        self.generators = generators

    def random(self, size: int) -> np.ndarray:
        return np.asarray([g.random() for g in self.generators])


def _most_likely(logp: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest entries of each row of ``logp`` (rows, V), largest first: their ids and
    values, (rows, k) each, on the CPU. ``argpartition`` finds them without sorting all V."""
    if k == 0:                          # no column asked for (kth = k - 1 = -1 would mean the last one)
        return np.zeros((len(logp), 0), dtype=np.int64), np.zeros((len(logp), 0))
    xp = backend.array_module(logp)
    part = xp.argpartition(-logp, k - 1, axis=-1)[:, :k]
    part_lp = xp.take_along_axis(logp, part, axis=-1)
    order = xp.argsort(-part_lp, axis=-1, kind="stable")      # ties keep argpartition's order
    return (backend.to_numpy(xp.take_along_axis(part, order, axis=-1)),
            backend.to_numpy(xp.take_along_axis(part_lp, order, axis=-1)))


class Batcher:
    """Runs jobs on ``model`` with continuous batching, on a thread of its own (``start``/``stop``).

    ``max_batch``: running rows at most (slots of the KV cache); ``max_queue``:
    jobs waiting for slots before ``submit`` raises ``QueueFull``.
    """

    def __init__(self, model: Any, tokenizer: Any, *, max_batch: int = 32, max_queue: int = 256,
                 blas_threads: int | None = 1) -> None:
        if max_batch < 1 or max_queue < 0:
            raise ValueError(f"max_batch must be >= 1 and max_queue >= 0, got {max_batch} and {max_queue}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.blas_threads = blas_threads
        w = model.wte.weight.data
        self.xp = backend.array_module(w)
        # Two slots at least: a step never runs on one row (see SlotCache).
        self.cache = SlotCache(model.config, max(2, max_batch), xp=self.xp, dtype=w.dtype)
        B, cap = self.cache.batch_size, self.cache.capacity
        self.mask = self.xp.zeros((B, cap), dtype=np.int64)       # 1 where a row's column holds a token
        self.mask[:, 0] = 1                                        # a free slot attends to column 0 only
        # The tied head as a contiguous (C, V) copy on the CPU, made once: the weights never change here.
        self.head = model.decoding_weight(rows=1 << 20, steps=1)
        self.rows: list[tuple[Job, Choice]] = []                   # running row r -> its job and choice
        self._admitting: Job | None = None                         # the job in its prefill
        self.waiting: collections.deque[Job] = collections.deque()
        self.chores: collections.deque[tuple[Callable[[], Any], concurrent.futures.Future]] = collections.deque()
        self.lock = threading.Condition()
        self.stopping = False
        self.thread: threading.Thread | None = None
        # Figures for /metrics (read without the lock: single numbers).
        self.steps = 0
        self.tokens_out = 0
        self.batch_sizes: collections.Counter[int] = collections.Counter()
        self.recent: collections.deque[tuple[float, int]] = collections.deque()   # (time, tokens) of recent steps
        self.on_step: Callable[[int], None] | None = None      # called with the batch size of each step

    # ---------------------------------------------------------------- API
    def start(self) -> None:
        """Start the model's thread (jobs submitted before wait for it)."""
        self.thread = threading.Thread(target=self._loop, name="npgpt-batcher", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> None:
        """Queue ``job``; raises ``QueueFull`` or ``ShuttingDown``."""
        if len(job.choices) > self.max_batch:
            raise ValueError(f"n={len(job.choices)} choices do not fit the server's batch of {self.max_batch} rows")
        with self.lock:
            if self.stopping:
                raise ShuttingDown("the server is shutting down")
            if len(self.waiting) >= self.max_queue:
                raise QueueFull(len(self.waiting), retry_after=max(1, round(len(self.waiting) / max(1, self.max_batch))))
            job.open_choices = len(job.choices)
            self.waiting.append(job)
            self.lock.notify()

    def call(self, fn: Callable[[], Any]) -> concurrent.futures.Future:
        """Run ``fn()`` on the model thread between two steps (attention maps, saliency); its Future."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self.lock:
            if self.stopping:
                raise ShuttingDown("the server is shutting down")
            self.chores.append((fn, future))
            self.lock.notify()
        return future

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel what is still running or waiting, and end the thread."""
        with self.lock:
            self.stopping = True
            for job in list(self.waiting) + [job for job, _ in self.rows]:
                job.cancelled = True
            self.lock.notify()
        if self.thread is not None:
            self.thread.join(timeout)

    @property
    def queue_depth(self) -> int:
        """Jobs waiting for a slot."""
        return len(self.waiting)

    @property
    def running(self) -> int:
        """Rows (choices) in the decoding batch."""
        return len(self.rows)

    def tokens_per_second(self, window: float = 10.0) -> float:
        """Tokens generated per second over the last ``window`` seconds."""
        now = time.monotonic()
        recent = [(t, n) for t, n in list(self.recent) if now - t <= window]
        return sum(n for _, n in recent) / window

    # --------------------------------------------------------------- loop
    def _loop(self) -> None:
        # One BLAS thread by default: a decoding step's products are small (a few rows), and a second
        # OpenBLAS thread spinning beside the event loop's thread costs more than it brings
        # (docs/serving.md, "Threads"). threadpoolctl's limit holds for the process while it runs.
        from threadpoolctl import threadpool_limits

        with threadpool_limits(self.blas_threads):
            self._serve()

    def _serve(self) -> None:
        while True:
            with self.lock:
                while not (self.rows or self.waiting or self.chores or self.stopping):
                    self.lock.wait()
                if self.stopping and not self.rows and not self.waiting and not self.chores:
                    return
                chores = list(self.chores)
                self.chores.clear()
            for fn, future in chores:           # outside no_grad: saliency needs gradients
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn())
                    except BaseException as exc:       # the caller sees it; the server keeps serving
                        future.set_exception(exc)
            try:
                with no_grad():
                    self._retire_cancelled()
                    self._admit()
                    if self.rows:
                        self._step()
            except Exception as exc:          # a bug or no memory: fail these requests, keep serving
                log.exception("decoding failed")
                self._fail_running(f"{type(exc).__name__}: {exc}")

    def _fail_running(self, message: str) -> None:
        """End every running job (and one caught in its prefill) with an ``("error", message)`` event."""
        jobs = {id(job): job for job, _ in self.rows}
        if self._admitting is not None:
            jobs[id(self._admitting)] = self._admitting
        for job in jobs.values():
            job.cancelled = True
            job.deliver(("error", message))
        for slot in range(len(self.rows)):
            self._clear_slot(slot)
        self.rows.clear()
        self._admitting = None

    def _admit(self) -> None:
        while True:
            with self.lock:
                if not self.waiting:
                    return
                job = self.waiting[0]
                if job.cancelled:               # its client left, or the server is stopping
                    self.waiting.popleft()
                    for choice in job.choices:
                        self._finish(job, choice, "cancelled")
                    continue
                if len(self.rows) + len(job.choices) > self.max_batch:
                    return                      # first come, first served: later jobs wait too
                self.waiting.popleft()
            self._admitting = job
            self._prefill(job)
            self._admitting = None

    def _prefill(self, job: Job) -> None:
        """The prompt through the trunk alone, the first token of each choice, the keys into slots."""
        model, xp = self.model, self.xp
        ids = backend.to_device(np.asarray([job.prompt], dtype=np.int64), model.device)    # (1, P)
        prompt_cache = model.new_cache(1, len(job.prompt))
        hidden = model.trunk(ids, cache=prompt_cache)                                      # (1, P, C)
        logits = self._logits(hidden.data[:, -1])                                           # (1, V)
        for choice in job.choices:          # each choice in a slot of its own, from the same prompt
            slot = len(self.rows)
            self.cache.load(slot, prompt_cache)
            self.mask[slot] = 0
            self.mask[slot, :len(job.prompt)] = 1
            self.rows.append((job, choice))
        logits = xp.broadcast_to(logits, (len(job.choices), logits.shape[1]))
        self._choose(logits, [(job, c) for c in job.choices])
        self._retire_finished()

    def _step(self) -> None:
        """One decoding step for every running row."""
        model, xp, cache = self.model, self.xp, self.cache
        B = len(self.rows)
        run = max(B, 2)                     # a lone row runs beside a free slot (see SlotCache)
        last = np.zeros((run, 1), dtype=np.int64)
        last[:B, 0] = [choice.last for _, choice in self.rows]
        lengths = cache.lengths[:run]
        columns = xp.array(lengths)                        # one copy to the device per step: positions, mask, cache
        self.mask[xp.arange(run), columns] = 1                               # each row sees its new token
        cache.rows, cache.columns = run, columns
        hidden = model.trunk(backend.to_device(last, model.device), attention_mask=self.mask[:run],
                             position_ids=columns[:, None], cache=cache)
        cache.lengths[:run] += 1
        if B == 1:                          # the free slot's token is thrown away: keep it empty
            self._clear_slot(1)
        logits = self._logits(hidden.data[:, -1])[:B]          # (B, V); the head on >= 2 rows too
        self._choose(logits, list(self.rows))
        self.steps += 1
        self.batch_sizes[B] += 1
        if self.on_step is not None:
            self.on_step(B)
        self._retire_finished()

    def _logits(self, last: Any) -> Any:
        """(rows, C) last hidden states -> (rows, V) logits, through the contiguous head when there is one."""
        from npgpt.autograd import Tensor

        return self.model.lm_head(Tensor(last), self.head).data

    def _choose(self, logits: Any, rows: list[tuple[Job, Choice]]) -> None:
        """Pick each row's next token, compute the log-probabilities asked for, and hand the text on.

        ``logits``: (len(rows), V), row ``r`` for ``rows[r]``."""
        tokens = self._sample(logits, rows)
        logprobs = self._logprobs(logits, rows, tokens)
        now = time.monotonic()
        for r, (job, choice) in enumerate(rows):
            logprob, top = logprobs.get(r, (None, []))
            self._append(job, choice, tokens[r], logprob, top, now)
        self._count_tokens(len(rows), now)

    def _sample(self, logits: Any, rows: list[tuple[Job, Choice]]) -> list[int]:
        """Each row's next token. Rows with the same settings are sampled together (one call to
        ``generation.next_token``), each with its own generator, so a seeded request draws the same
        numbers alone and in a crowd."""
        xp = self.xp
        groups: dict[SamplingConfig, list[int]] = {}
        for r, (job, _) in enumerate(rows):
            groups.setdefault(job.sampling, []).append(r)
        tokens = [0] * len(rows)
        for sampling, members in groups.items():
            draws = _Draws([rows[r][1].rng for r in members])
            picked = generation.next_token(logits[xp.asarray(members)], sampling, draws)
            for r, t in zip(members, backend.to_numpy(picked)):     # no copy on the CPU
                tokens[r] = int(t)
        return tokens

    def _logprobs(self, logits: Any, rows: list[tuple[Job, Choice]],
                  tokens: list[int]) -> dict[int, tuple[float, list[tuple[int, float]]]]:
        """For each row whose job asks for log-probabilities (``top_logprobs`` not None): the
        chosen token's, and its job's ``top_logprobs`` most likely ``(id, log-probability)``, most
        likely first; all these rows at once, in float64."""
        want = [r for r, (job, _) in enumerate(rows) if job.top_logprobs is not None]
        if not want:
            return {}
        xp = self.xp
        z = logits[xp.asarray(want)].astype(xp.float64)
        z = z - z.max(axis=-1, keepdims=True)                                       # exp cannot overflow
        logp = z - xp.log(xp.exp(z).sum(axis=-1, keepdims=True))                    # (W, V)
        chosen = backend.to_numpy(logp[xp.arange(len(want)), xp.asarray([tokens[r] for r in want])])   # (W,)
        top_ids, top_lp = _most_likely(logp, max(rows[r][0].top_logprobs for r in want))              # (W, k)
        result = {}
        for i, r in enumerate(want):
            k = rows[r][0].top_logprobs
            result[r] = (float(chosen[i]), list(zip(top_ids[i, :k].tolist(), top_lp[i, :k].tolist())))
        return result

    def _append(self, job: Job, choice: Choice, token: int, logprob: float | None, top: list[tuple[int, float]],
                now: float) -> None:
        """Add ``token`` to ``choice``: count it, hand on the text it completes, and finish the
        choice at an end token, a stop string or its ``max_tokens``."""
        choice.generated += 1
        choice.last = token
        job.completion_tokens += 1
        if job.first_token_at is None:
            job.first_token_at = now
        if token in job.end_ids:                # the end token is not part of the text
            self._finish(job, choice, "stop")
            return
        piece = choice.text.push(token, logprob, top)
        if piece.text or piece.tokens:          # bytes of an unfinished character wait for the next token
            job.deliver(("piece", choice.index, piece))
        if choice.text.stopped:
            self._finish(job, choice, "stop")
        elif choice.generated >= job.max_new_tokens:
            self._finish(job, choice, "length")

    def _count_tokens(self, n: int, now: float) -> None:
        """The figures for /metrics: ``n`` more tokens out, and the last minute's steps for the rate."""
        self.tokens_out += n
        self.recent.append((now, n))
        while self.recent and now - self.recent[0][0] > 60:
            self.recent.popleft()

    def _finish(self, job: Job, choice: Choice, reason: str) -> None:
        piece: Piece = choice.text.finish()
        if piece.text or piece.tokens:
            job.deliver(("piece", choice.index, piece))
        choice.finish_reason = reason
        job.deliver(("finish", choice.index, reason))
        job.open_choices -= 1
        if job.open_choices == 0:
            job.deliver(("done", job.completion_tokens))

    def _retire_finished(self) -> None:
        self._retire(lambda job, choice: choice.finish_reason is not None)

    def _retire_cancelled(self) -> None:
        self._retire(lambda job, choice: job.cancelled)

    def _retire(self, ends: Callable[[Job, Choice], bool]) -> None:
        """Drop the rows for which ``ends`` holds; the last running row fills each hole."""
        r = 0
        while r < len(self.rows):
            job, choice = self.rows[r]
            if not ends(job, choice):
                r += 1
                continue
            if job.cancelled and choice.finish_reason is None:
                self._finish(job, choice, "cancelled")
            last = len(self.rows) - 1
            if r != last:
                self.cache.move(last, r)
                self.mask[r] = self.mask[last]
                self.rows[r] = self.rows[last]
            self.rows.pop()
            self._clear_slot(last)

    def _clear_slot(self, slot: int) -> None:
        self.cache.clear(slot)
        self.mask[slot] = 0
        self.mask[slot, 0] = 1
