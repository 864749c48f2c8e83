"""``npgpt serve`` end to end (docs/serving.md): the real server (uvicorn, a subprocess on a free port,
a tiny chat model), spoken to by OpenAI's own Python client and by raw HTTP for the error paths; and, in this
process with scripted job events instead of a model, the ways one request's reply can end."""

import asyncio
import json
import logging
import threading
import time

import httpx
import numpy as np
import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from serve_helpers import Running, save_tiny, tiny_model  # noqa: E402

from npgpt.apps.serve.app import Server, create_app  # noqa: E402
from npgpt.apps.serve.text import Piece  # noqa: E402
from npgpt.tokenizer import Tokenizer  # noqa: E402

KEY = "test-key-123"
MODEL = "tiny-chat"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("serve") / MODEL)


@pytest.fixture(scope="module")
def server(model_dir):
    running = Running(model_dir, "--api-key", KEY, "--max-body-bytes", "20000")
    yield running
    code, log = running.stop()
    assert code == 0, log


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)


def post(server, path, body, key=KEY, **kw):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(server.url + path, content=data, headers={**headers, "Content-Type": "application/json"},
                      timeout=30, **kw)


def assert_error(response, status, param=None, contains=()):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    if param is not None:
        assert error["param"] == param
    for text in contains:
        assert text in error["message"], error["message"]
    return error


CHAT = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say something."}]


# -------------------------------------------------------------- the client
def test_models_lists_the_served_model(client):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL


def test_chat_completion_with_usage_and_finish_reason(client, model_dir):
    r = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=7, temperature=0)
    tokenizer = Tokenizer.from_pretrained(model_dir)
    prompt = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True)
    assert r.usage.prompt_tokens == len(prompt)
    choice = r.choices[0]
    assert choice.message.role == "assistant"
    if choice.finish_reason == "length":
        assert r.usage.completion_tokens == 7
    else:                               # the model said <|im_end|> first
        assert choice.finish_reason == "stop" and r.usage.completion_tokens < 7
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_streamed_chat_is_the_same_text_as_unstreamed(client):
    kw = dict(model=MODEL, messages=CHAT, max_tokens=20, temperature=0.9, top_p=0.95, seed=7)
    whole = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1     # it did stream
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert len({c.id for c in chunks}) == 1


def test_completions_streamed_and_not_with_n_choices(client):
    kw = dict(model=MODEL, prompt="The cat sits on the", max_tokens=12, temperature=1.0, seed=3, n=3)
    whole = client.completions.create(**kw)
    assert sorted(c.index for c in whole.choices) == [0, 1, 2]
    texts = [c.text for c in sorted(whole.choices, key=lambda c: c.index)]
    assert len(set(texts)) == 3                          # each choice draws from its own generator
    streamed = ["", "", ""]
    for chunk in client.completions.create(stream=True, **kw):
        for c in chunk.choices:
            streamed[c.index] += c.text
    assert streamed == texts
    one = client.completions.create(**{**kw, "n": 1})
    assert one.choices[0].text == texts[0]               # choice 0 is the request with n=1
    if all(c.finish_reason == "length" for c in whole.choices):
        assert whole.usage.completion_tokens == 36
    else:                                                # a choice drew an end token first
        assert whole.usage.completion_tokens < 36


def test_a_stop_string_cuts_the_text_exactly(client):
    kw = dict(model=MODEL, prompt="Once upon a time", max_tokens=30, temperature=0)
    full = client.completions.create(**kw).choices[0].text
    stop = full[len(full) // 2:len(full) // 2 + 3]
    if not stop.strip():
        stop = full[len(full) // 3:len(full) // 3 + 3]
    assert stop and stop in full
    cut = client.completions.create(stop=[stop, "\x00never"], **kw).choices[0]
    assert cut.text == full[:full.index(stop)] and cut.finish_reason == "stop"
    streamed = "".join(c.choices[0].text for c in client.completions.create(stop=stop, stream=True, **kw))
    assert streamed == cut.text


def test_logprobs_and_top_logprobs(client):
    r = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=6, temperature=0, logprobs=True,
                                       top_logprobs=5)
    content = r.choices[0].logprobs.content
    assert "".join(t.token for t in content) == r.choices[0].message.content
    for t in content:
        assert len(t.top_logprobs) == 5
        lps = [a.logprob for a in t.top_logprobs]
        assert lps == sorted(lps, reverse=True) and sum(np.exp(lps)) <= 1 + 1e-9
        assert t.logprob == pytest.approx(lps[0])        # greedy picks the most likely token
    c = client.completions.create(model=MODEL, prompt="Hello", max_tokens=4, temperature=0, logprobs=3)
    lp = c.choices[0].logprobs
    assert "".join(lp.tokens) == c.choices[0].text and all(len(t) <= 3 for t in lp.top_logprobs)
    assert lp.text_offset[0] == 0


def test_chat_logprobs_without_top_logprobs(client):
    """Chat ``logprobs: true`` alone asks for each token's log-probability and no alternatives
    (OpenAI: ``top_logprobs`` defaults to none), the batcher's k = 0 case: every token has a
    log-probability, an empty ``top_logprobs`` list and its UTF-8 ``bytes``; at temperature 0 it
    is the log-probability of the most likely token, the one ``top_logprobs=1`` lists first."""
    kw = dict(model=MODEL, messages=CHAT, max_tokens=6, temperature=0, logprobs=True)
    r = client.chat.completions.create(**kw)
    content = r.choices[0].logprobs.content
    assert "".join(t.token for t in content) == r.choices[0].message.content and content
    for t in content:
        assert t.top_logprobs == [] and t.logprob <= 0 and t.bytes == list(t.token.encode())
    one = client.chat.completions.create(top_logprobs=1, **kw).choices[0].logprobs.content
    assert [t.token for t in one] == [t.token for t in content]
    assert [t.logprob for t in content] == [t.top_logprobs[0].logprob for t in one]


def test_a_seeded_request_gets_the_same_text_alone_and_in_a_crowd(client):
    def ask(i):
        return client.completions.create(model=MODEL, prompt=f"Request number {i} says", max_tokens=25,
                                         temperature=0.9, seed=i).choices[0].text

    alone = [ask(i) for i in range(6)]
    crowd = [None] * 12
    threads = [threading.Thread(target=lambda k=k: crowd.__setitem__(k, ask(k % 6))) for k in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert crowd == alone + alone


def test_errors_surface_as_the_clients_exceptions(client, server):
    with pytest.raises(openai.BadRequestError, match="maximum context length is 64 tokens") as info:
        client.completions.create(model=MODEL, prompt="word " * 80, max_tokens=5)
    assert info.value.param == "prompt" and info.value.code == "context_length_exceeded"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4", prompt="x")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).models.list()
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model=MODEL, messages=CHAT, temperature=3)


# ------------------------------------------------------------ raw HTTP: errors
def test_bad_requests_get_openai_errors_with_the_right_status(server):
    ok = {"model": MODEL, "prompt": "Hi", "max_tokens": 2}
    assert post(server, "/v1/completions", ok).status_code == 200
    assert_error(post(server, "/v1/completions", b"{not json"), 400, contains=["not valid JSON"])
    assert_error(post(server, "/v1/completions", b"[1, 2]"), 400, contains=["JSON object"])
    assert_error(post(server, "/v1/completions", {**ok, "max_tokens": "5"}), 400, "max_tokens")
    assert_error(post(server, "/v1/completions", {**ok, "max_tokens": -1}), 400, "max_tokens")
    assert_error(post(server, "/v1/completions", {**ok, "n": 0}), 400, "n")
    assert_error(post(server, "/v1/completions", {**ok, "stream": "yes"}), 400, "stream")
    assert_error(post(server, "/v1/completions", {**ok, "colour": "blue"}), 400, "colour",
                 contains=["Unrecognized request argument"])
    assert_error(post(server, "/v1/completions", {"model": MODEL}), 400, "prompt", contains=["Missing"])
    assert_error(post(server, "/v1/completions", {**ok, "prompt": [1, 10**9]}), 400, "prompt")
    assert_error(post(server, "/v1/completions", {**ok, "stop": ["a", "b", "c", "d", "e"]}), 400, "stop")
    assert_error(post(server, "/v1/completions", {**ok, "presence_penalty": 0.5}), 400, "presence_penalty")
    huge = assert_error(post(server, "/v1/completions", {**ok, "max_tokens": 10**6}), 400, "max_tokens",
                        contains=["64 tokens", "1000002 tokens", "2 in the prompt", "1000000 for the completion"])
    assert huge["code"] == "context_length_exceeded"
    assert_error(post(server, "/v1/chat/completions", {"model": MODEL, "messages": []}), 400, "messages")
    assert_error(post(server, "/v1/chat/completions", {"model": MODEL, "messages": [{"role": "robot", "content": ""}]}),
                 400, "messages.0.role")
    assert_error(post(server, "/v1/completions", b"x" * 30000), 413, contains=["20000"])
    assert_error(httpx.get(server.url + "/v1/nothing", headers={"Authorization": f"Bearer {KEY}"}), 404)
    assert_error(post(server, "/v1/completions", ok, key=None), 401)
    assert_error(post(server, "/v1/completions", ok, key=KEY + "x"), 401)
    assert httpx.get(server.url + "/health").json()["status"] == "ok"        # open without a key
    assert post(server, "/v1/completions", ok).status_code == 200             # and it keeps serving


def test_a_body_over_the_limit_without_a_length_header_is_refused(server):
    def chunks():
        for _ in range(30):
            yield b"x" * 1000

    r = httpx.post(server.url + "/v1/completions", content=chunks(), headers={"Authorization": f"Bearer {KEY}"})
    assert_error(r, 413)


def test_each_request_is_logged_and_counted(server):
    r = post(server, "/v1/completions", {"model": MODEL, "prompt": "Count me", "max_tokens": 3}).json()
    time.sleep(0.2)
    line = (f"POST /v1/completions 200 prompt_tokens={r['usage']['prompt_tokens']} "
            f"completion_tokens={r['usage']['completion_tokens']} ms=")
    assert line in server.log(), server.log()[-2000:]
    metrics = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    for name in ("npgpt_requests_total{", "npgpt_generation_tokens_per_second", "npgpt_queue_depth",
                 "npgpt_batch_size_bucket", "npgpt_time_to_first_token_seconds_bucket", "npgpt_completion_tokens_total"):
        assert name in metrics
    assert 'npgpt_requests_total{method="POST",path="/v1/completions",status="413"}' in metrics


def test_a_model_without_a_chat_template_refuses_chat_clearly(tmp_path):
    running = Running(save_tiny(tmp_path / "base", chat=False))
    try:
        r = post(running, "/v1/chat/completions", {"model": "base", "messages": CHAT}, key=None)
        assert_error(r, 400, "messages", contains=["no chat template", "/v1/completions"])
        assert post(running, "/v1/completions", {"model": "base", "prompt": "Hi"}, key=None).status_code == 200
    finally:
        assert running.stop()[0] == 0


# ---------------------------------------------------- busy, gone, stopping
@pytest.fixture(scope="module")
def one_slot(tmp_path_factory):
    """A server with one slot and room for one waiting request, and a model with a long context."""
    directory = save_tiny(tmp_path_factory.mktemp("slot") / "long", block_size=1024, n_embd=64, n_layer=4, chat=False)
    running = Running(directory, "--max-batch", "1", "--max-queue", "1", "--grace", "20")
    yield running
    running.stop()


def health(server):
    return httpx.get(server.url + "/health").json()


def generated(server):
    text = httpx.get(server.url + "/metrics").text
    return float(next(line.split()[1] for line in text.splitlines() if line.startswith("npgpt_generated_tokens ")))


LONG = {"model": "long", "prompt": "A long story:", "max_tokens": 1000, "stream": True, "temperature": 0}


def test_a_full_queue_answers_429_with_retry_after(one_slot):
    with httpx.stream("POST", one_slot.url + "/v1/completions", json=LONG, timeout=60) as running:
        lines = running.iter_lines()          # kept: a dropped iterator closes the response
        next(lines)                           # it holds the only slot
        waiting = threading.Thread(target=post, args=(one_slot, "/v1/completions",
                                                      {"model": "long", "prompt": "Hi", "max_tokens": 1}, None))
        waiting.start()
        deadline = time.monotonic() + 10
        while health(one_slot)["waiting"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert health(one_slot) == {"status": "ok", "model": "long", "running": 1, "waiting": 1}
        r = post(one_slot, "/v1/completions", {"model": "long", "prompt": "Hi", "max_tokens": 1}, key=None)
        assert_error(r, 429)
        assert int(r.headers["Retry-After"]) >= 1
        client = openai.OpenAI(base_url=one_slot.url + "/v1", api_key="none", max_retries=0)
        with pytest.raises(openai.RateLimitError):
            client.completions.create(model="long", prompt="Hi", max_tokens=1)
    waiting.join()


def test_a_client_that_disconnects_frees_its_slot(one_slot):
    before = generated(one_slot)
    with httpx.stream("POST", one_slot.url + "/v1/completions", json=LONG, timeout=60) as r:
        lines = r.iter_lines()
        next(lines)
        next(lines)
    deadline = time.monotonic() + 10
    while health(one_slot)["running"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert health(one_slot)["running"] == 0
    assert generated(one_slot) - before < 1000                    # stopped early, not at max_tokens
    r = post(one_slot, "/v1/completions", {"model": "long", "prompt": "Next", "max_tokens": 3}, key=None)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3


def test_sigterm_finishes_the_running_request_and_exits_0(tmp_path):
    running = Running(save_tiny(tmp_path / "stopping", block_size=512, n_embd=64, n_layer=4, chat=False),
                      "--grace", "30")
    got = []
    with httpx.stream("POST", running.url + "/v1/completions", timeout=60,
                      json={"model": "stopping", "prompt": "Go", "max_tokens": 400, "stream": True, "temperature": 0}) as r:
        lines = r.iter_lines()
        got.append(next(lines))
        running.terminate()
        time.sleep(0.5)
        with pytest.raises(httpx.TransportError):             # no new connections meanwhile
            httpx.get(running.url + "/health", timeout=2)
        got.extend(lines)
    got = [line for line in got if line]                  # events are separated by blank lines
    events = [json.loads(line[6:]) for line in got if line.startswith("data: {")]
    assert events[-1]["choices"][0]["finish_reason"] == "length"              # it was allowed to finish
    assert got[-1] == "data: [DONE]"
    code, log = running.stop()
    assert code == 0, log
    with pytest.raises(httpx.TransportError):
        httpx.get(running.url + "/health", timeout=2)


def test_sigterm_cancels_what_outlasts_the_grace_period_and_exits_0(tmp_path):
    running = Running(save_tiny(tmp_path / "slow", block_size=1024, n_embd=128, n_layer=4, chat=False),
                      "--grace", "0.2")
    start = None
    with pytest.raises(httpx.TransportError):        # the stream is cut: no [DONE]
        with httpx.stream("POST", running.url + "/v1/completions", timeout=60,
                          json={**LONG, "model": "slow"}) as r:
            lines = r.iter_lines()
            next(lines)
            running.terminate()
            start = time.monotonic()
            for line in lines:
                assert line != "data: [DONE]"
    code, log = running.stop()
    assert code == 0, log
    assert time.monotonic() - start < 15


@pytest.mark.slow
def test_the_load_test_runs_and_finds_no_error_and_no_mixed_stream():
    # python -m npgpt.bench serve, shortened: what it reports, not how fast (docs/benchmarks.md has that)
    import argparse

    from npgpt.bench import serve as bench

    result = bench.run(argparse.Namespace(model="npgpt-small", clients=4, seconds=3, sequential_seconds=2,
                                          max_tokens=8))
    assert result["errors"] == 0 and result["first_error"] is None
    assert result["requests"] >= 4 and result["replayed"] >= 1 and result["mixed_streams"] == 0
    assert result["mean_batch"] > 1 and result["tokens_per_s"] > 0 and result["speedup"] > 0
    assert result["ttft_ms_p50"] <= result["ttft_ms_p95"]


# ------------------------------------------------ one request's reply, from scripted events
# The paths of ``_Reply`` (npgpt/apps/serve/app.py) that a live model makes hard to reach: a client
# that leaves, a shutdown, a failing step. The server runs in this process with a batcher that never
# starts: its ``submit`` replays a script of ``Job`` events (see ``Job``), so no model runs.
def hel_lo(k=0):
    """Choice ``k``'s "Hello" in two pieces, "Hel" (tokens "He", "l") and "lo", with two alternatives each."""
    return [("piece", k, Piece("Hel", [("He", -0.5, [("He", -0.5), ("x", -1.5)]),
                                       ("l", -0.25, [("l", -0.25), ("y", -2.0)])])),
            ("piece", k, Piece("lo", [("lo", -0.125, [("lo", -0.125), ("z", -3.0)])]))]


@pytest.fixture(scope="module")
def tiny_chat():
    return tiny_model(n_embd=16, n_layer=1)


@pytest.fixture
def scripted(tiny_chat):
    """A ``Server`` whose ``submit`` delivers ``server.script`` to the job at once (and keeps the job)."""
    server = Server(*tiny_chat, MODEL)
    server.script, server.jobs = [], []

    def submit(job):
        server.jobs.append(job)
        for event in server.script:
            job.deliver(event)

    server.submit = submit
    return server


def asgi_post(server, path, body, *, client_leaves=False):
    """POST ``body`` to ``create_app(server)`` in this process: (status, response body). The client
    either waits for the answer, or (``client_leaves``) is gone once it has sent the request."""
    incoming = [{"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}]
    sent = []

    async def receive():
        if incoming:
            return incoming.pop()
        if client_leaves:
            return {"type": "http.disconnect"}
        await asyncio.Event().wait()                   # still there, saying nothing more

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
             "headers": [(b"content-type", b"application/json")], "client": ("test", 1), "server": ("test", 80)}
    asyncio.run(create_app(server)(scope, receive, send))
    assert sent[0]["type"] == "http.response.start"
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def sse_events(body):
    """A stream's events: the JSON of each ``data:`` line, and "[DONE]" as it is."""
    lines = [line for line in body.decode().split("\n\n") if line]
    assert all(line.startswith("data: ") for line in lines), lines
    return [line[6:] if line == "data: [DONE]" else json.loads(line[6:]) for line in lines]


def requests_counted(server, status):
    """``npgpt_requests_total`` of POST /v1/completions with ``status``, from /metrics' text."""
    line = f'npgpt_requests_total{{method="POST",path="/v1/completions",status="{status}"}} '
    found = [row for row in server.metrics.render().decode().splitlines() if row.startswith(line)]
    return float(found[0].split()[-1]) if found else 0.0


COMPLETION = {"model": MODEL, "prompt": "Hi", "max_tokens": 5}


def test_a_collected_request_whose_client_left_is_logged_as_499(scripted, caplog):
    """A collected request whose client leaves before the answer is complete: nobody reads a
    status line any more, so ``collect`` answers nginx's 499 ("client closed request") for the
    log line and the request counter, with the token counts known so far, and cancels the job so
    that its slots are freed at the next step. It notices only after 0.5 s without an event."""
    scripted.script = hel_lo()[:1]                     # one piece, then the model is still busy
    prompt_tokens = len(scripted.tokenizer.encode("Hi"))
    with caplog.at_level(logging.INFO, logger="npgpt.serve"):
        status, body = asgi_post(scripted, "/v1/completions", COMPLETION, client_leaves=True)
    assert (status, body) == (499, b"")
    assert scripted.jobs[0].cancelled
    assert f"POST /v1/completions 499 prompt_tokens={prompt_tokens} completion_tokens=0 ms=" in caplog.text
    assert requests_counted(scripted, 499) == 1


def test_a_collected_request_cut_by_a_shutdown_answers_503(scripted):
    """When the server shuts down, the batcher ends the running choices with the finish reason
    "cancelled". A collected answer missing a choice is not an answer: 503 ``shutting_down``,
    OpenAI's error shape, even though the other choice finished."""
    scripted.script = hel_lo(0)[:1] + [("piece", 1, Piece("Yo", [])), ("finish", 1, "stop"),
                                       ("finish", 0, "cancelled"), ("done", 2)]
    status, body = asgi_post(scripted, "/v1/completions", {**COMPLETION, "n": 2})
    assert status == 503
    assert json.loads(body) == {"error": {"message": "the server shut down before the answer was complete",
                                          "type": "server_error", "param": None, "code": "shutting_down"}}
    assert scripted.jobs[0].cancelled and requests_counted(scripted, 503) == 1


@pytest.mark.parametrize("path, body", [("/v1/completions", {**COMPLETION, "n": 2, "stream": True}),
                                        ("/v1/chat/completions", {"model": MODEL, "messages": CHAT, "n": 2,
                                                                  "stream": True})])
def test_a_streamed_request_cut_by_a_shutdown_ends_with_an_error_event(scripted, path, body):
    """Streamed, a choice cancelled by the shutdown must not end in ``[DONE]``, which a client takes
    for a complete answer: the stream's last event is the collected answer's 503 error object,
    ``shutting_down``, after the text that was sent (and the other choice's finish)."""
    scripted.script = hel_lo(0)[:1] + [("piece", 1, Piece("Yo", [])), ("finish", 1, "stop"),
                                       ("finish", 0, "cancelled"), ("done", 2)]
    status, answer = asgi_post(scripted, path, {**body, "stream_options": {"include_usage": True}})
    events = sse_events(answer)
    assert status == 200 and "[DONE]" not in events
    assert events[-1] == {"error": {"message": "the server shut down before the answer was complete",
                                    "type": "server_error", "param": None, "code": "shutting_down"}}
    finished = [c["finish_reason"] for e in events[:-1] for c in e["choices"] if c["finish_reason"]]
    assert finished == ["stop"] and all("usage" not in e or e["usage"] is None for e in events[:-1])
    assert scripted.jobs[0].cancelled


@pytest.mark.parametrize("path, body", [("/v1/completions", COMPLETION),
                                        ("/v1/chat/completions", {"model": MODEL, "messages": CHAT})])
def test_a_failed_generation_is_a_500_when_collected(scripted, path, body):
    """The model thread reports a failed step with an ``("error", message)`` event (a bug, no
    memory) and nothing after it: a collected request answers 500 "generation failed: <message>",
    OpenAI's ``server_error``, and its job is cancelled."""
    scripted.script = hel_lo()[:1] + [("error", "MemoryError: no room for the logits")]
    status, answer = asgi_post(scripted, path, body)
    assert status == 500
    assert json.loads(answer) == {"error": {"message": "generation failed: MemoryError: no room for the logits",
                                            "type": "server_error", "param": None, "code": None}}
    assert scripted.jobs[0].cancelled


@pytest.mark.parametrize("path, body, create", [
    ("/v1/completions", {**COMPLETION, "stream": True}, "completions"),
    ("/v1/chat/completions", {"model": MODEL, "messages": CHAT, "stream": True}, "chat.completions")])
def test_a_failed_generation_ends_a_stream_with_an_error_event(scripted, path, body, create):
    """Streamed, the status line (200) has gone before the failure: the stream's last event is
    OpenAI's error object (``data: {"error": {...}}``), with no ``[DONE]`` after it, so a client
    cannot take the cut text for a complete answer. OpenAI's own client raises ``APIError`` with
    the message on that event, after the text that came before it."""
    scripted.script = hel_lo()[:1] + [("error", "MemoryError: no room for the logits")]
    status, answer = asgi_post(scripted, path, body)
    events = sse_events(answer)
    assert status == 200 and "[DONE]" not in events
    assert events[-1] == {"error": {"message": "generation failed: MemoryError: no room for the logits",
                                    "type": "server_error", "param": None, "code": None}}
    assert scripted.jobs[0].cancelled

    async def through_the_client():
        transport = httpx.ASGITransport(app=create_app(scripted))
        async with httpx.AsyncClient(transport=transport) as http:
            client = openai.AsyncOpenAI(base_url="http://test/v1", api_key="none", http_client=http, max_retries=0)
            endpoint = client.completions if create == "completions" else client.chat.completions
            chunks = []
            with pytest.raises(openai.APIError, match="generation failed: MemoryError"):
                async for chunk in await endpoint.create(**{k: v for k, v in body.items() if k != "stream"},
                                                         stream=True):
                    chunks.append(chunk)
            return chunks

    chunks = asyncio.run(through_the_client())
    got = [c.choices[0].text if create == "completions" else c.choices[0].delta.content for c in chunks]
    assert "".join(got) == "Hel"


def test_streamed_completion_logprobs_carry_text_offsets_across_pieces(scripted):
    """Legacy completions' ``logprobs.text_offset`` gives, for each token, where its text begins in
    the choice's text (npgpt counts from the completion's start, as its collected answer does).
    Streamed, each chunk holds only its own tokens, so the offsets must run on from the characters
    the choice has already sent: "Hel" (tokens "He", "l") then "lo" give [0, 2] and [3], each
    choice counting its own text. Joined, the chunks' logprobs are the collected answer's."""
    scripted.script = hel_lo(0)[:1] + hel_lo(1) + hel_lo(0)[1:] + [("finish", 1, "stop"), ("finish", 0, "length"),
                                                                  ("done", 6)]
    request = {**COMPLETION, "n": 2, "logprobs": 2}
    status, answer = asgi_post(scripted, "/v1/completions", {**request, "stream": True})
    assert status == 200
    events = sse_events(answer)
    assert events[-1] == "[DONE]"
    streamed = {0: [], 1: []}
    for event in events[:-1]:
        (choice,) = event["choices"]
        if choice["logprobs"] is not None:
            streamed[choice["index"]].append(choice["logprobs"])
    assert [lp["text_offset"] for lp in streamed[0]] == [[0, 2], [3]]
    assert [lp["text_offset"] for lp in streamed[1]] == [[0, 2], [3]]
    status, answer = asgi_post(scripted, "/v1/completions", request)
    assert status == 200
    for choice in json.loads(answer)["choices"]:
        whole = choice["logprobs"]
        assert whole["text_offset"] == [0, 2, 3] and choice["text"] == "Hello"
        for token, offset in zip(whole["tokens"], whole["text_offset"]):
            assert choice["text"][offset:offset + len(token)] == token
        joined = {key: [x for lp in streamed[choice["index"]] for x in lp[key]] for key in whole}
        assert joined == whole
        assert whole["top_logprobs"][0] == {"He": -0.5, "x": -1.5}
