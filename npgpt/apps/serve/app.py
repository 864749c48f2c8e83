"""The HTTP side of ``npgpt serve``: OpenAI's routes on FastAPI, the page, /health and /metrics.

Companion of docs/serving.md. Every generation request becomes a ``Job`` for the
``Batcher`` (the model's own thread); its events come back through an asyncio
queue and go out as one JSON answer or as server-sent events. Handlers never
touch the model themselves.
"""

import asyncio
import contextlib
import hmac
import json
import logging
import pathlib
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.staticfiles import StaticFiles

from npgpt.apps.serve import pictures, protocol
from npgpt.apps.serve.batcher import Batcher, Job, QueueFull, ShuttingDown, make_job
from npgpt.apps.serve.metrics import CONTENT_TYPE, Metrics
from npgpt.apps.serve.protocol import ApiError
from npgpt.generation import SamplingConfig
from npgpt.tokenizer.bpe import ENDOFTEXT

STATIC = pathlib.Path(__file__).parent / "static"
log = logging.getLogger("npgpt.serve")
PROTECTED = ("/v1/", "/npgpt/", "/metrics")       # what --api-key guards; the page and /health stay open
CUT_BY_SHUTDOWN = "the server shut down before the answer was complete"   # a 503's message


class Server:
    """What the routes share: the model's batcher, its name, the limits."""

    def __init__(self, model: Any, tokenizer: Any, name: str, *, api_key: str | None = None, max_batch: int = 32,
                 max_queue: int = 256, max_body_bytes: int = 1 << 20, blas_threads: int | None = 1) -> None:
        if tokenizer.vocab_size > model.config.vocab_size:
            raise ValueError(f"the tokenizer has {tokenizer.vocab_size} ids but the model only "
                             f"{model.config.vocab_size} rows: they do not belong together")
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.api_key = api_key
        self.max_body_bytes = max_body_bytes
        self.batcher = Batcher(model, tokenizer, max_batch=max_batch, max_queue=max_queue, blas_threads=blas_threads)
        self.metrics = Metrics(self.batcher)
        self.created = protocol.now()
        self.end_ids = [i for i in (tokenizer.special_tokens.get(ENDOFTEXT), tokenizer.end_of_turn_id) if i is not None]

    # ------------------------------------------------------------ reading
    async def read_json(self, request: Request) -> Any:
        """The body as JSON: 413 past ``max_body_bytes`` (before reading it all), 400 when it is not JSON."""
        limit = self.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ApiError(413, f"the request body is {int(declared)} bytes; this server takes at most {limit}",
                           code="request_too_large")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise ApiError(413, f"the request body is over {limit} bytes, the most this server takes",
                               code="request_too_large")
        try:
            return json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ApiError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None

    def check_model(self, name: str) -> None:
        """404 unless ``name`` is the served model's name."""
        if name != self.name:
            raise ApiError(404, f"The model '{name}' does not exist; this server serves '{self.name}'",
                           param="model", code="model_not_found")

    def budget(self, prompt: list[int], asked: int | None, default: int | None, what: str = "prompt") -> int:
        """The number of tokens to generate, or a 400 with the numbers when the prompt and
        the completion do not fit the model's context (the server never slides the window)."""
        block = self.model.config.block_size
        room = block - len(prompt)
        wanted = asked if asked is not None else (min(default, room) if default is not None else room)
        if not prompt:
            raise ApiError(400, "the prompt is empty: give at least one token of text", param=what)
        if wanted > room or room < 1:
            raise ApiError(400, f"This model's maximum context length is {block} tokens. However, you requested "
                           f"{len(prompt) + max(wanted, 1)} tokens ({len(prompt)} in the prompt, {max(wanted, 1)} for "
                           "the completion). Please reduce the prompt or the completion length.",
                           param="max_tokens" if asked is not None and len(prompt) < block else what,
                           code="context_length_exceeded")
        return wanted

    def job(self, prompt: list[int], req: Any, max_new: int, top_logprobs: int | None, deliver) -> Job:
        """The batcher's ``Job`` for a checked request (temperature 0: greedy; top_p 1: no filter)."""
        greedy = req.temperature == 0
        sampling = SamplingConfig(do_sample=not greedy, temperature=1.0 if greedy else req.temperature,
                                  top_p=None if req.top_p >= 1 else req.top_p)
        if req.n > self.batcher.max_batch:
            raise ApiError(400, f"n={req.n} is more than this server's batch of {self.batcher.max_batch} rows",
                           param="n")
        return make_job(self.tokenizer, prompt, max_new, sampling, n=req.n, seed=req.seed, stops=req.stop or [],
                        end_ids=self.end_ids, top_logprobs=top_logprobs, deliver=deliver)

    def submit(self, job: Job) -> None:
        """Queue ``job``: 429 with Retry-After when the queue is full, 503 while shutting down."""
        try:
            self.batcher.submit(job)
        except QueueFull as exc:
            raise ApiError(429, f"the server is busy: {exc}; retry after {exc.retry_after} s", type="rate_limit_error",
                           code="queue_full", headers={"Retry-After": str(exc.retry_after)}) from None
        except ShuttingDown:
            raise _shutting_down("the server is shutting down") from None


def _events() -> tuple[asyncio.Queue, Any]:
    """A queue filled from the model thread, and the ``deliver`` function that fills it."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()

    def deliver(event: tuple) -> None:
        with contextlib.suppress(RuntimeError):          # the loop is closed: nobody is listening any more
            loop.call_soon_threadsafe(queue.put_nowait, event)

    return queue, deliver


def create_app(server: Server) -> Any:
    """The ASGI application of ``server``: the FastAPI routes inside the API key check and the
    request log (``_Logged``); the batcher starts and stops with it.

    The routes come in three groups, one function each: the operator's (/health, /metrics),
    OpenAI's (/v1/...) and the page's (/, /static, /npgpt/...); they are closures over ``server``.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        server.batcher.start()
        yield
        server.batcher.stop()

    app = FastAPI(title="npgpt", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server
    # Every error leaves as OpenAI's {"error": {...}}, whoever raised it.
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _crash)
    _add_operator_routes(app, server)
    _add_openai_routes(app, server)
    _add_page_routes(app, server)
    return _Logged(app, server)


# ------------------------------------------------------------------ errors
async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    """An ``ApiError`` raised by a handler: its status, body and headers (Retry-After) as they are."""
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Starlette's own errors (no such route: 404, wrong method: 405) in OpenAI's shape."""
    message = f"{request.method} {request.url.path}: {exc.detail}"
    return JSONResponse(ApiError(exc.status_code, message).body(), status_code=exc.status_code,
                        headers=getattr(exc, "headers", None))


async def _crash(request: Request, exc: Exception) -> JSONResponse:
    """Any other exception: a 500 that names it, in OpenAI's shape."""
    return JSONResponse(ApiError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error").body(),
                        status_code=500)


def _shutting_down(message: str) -> ApiError:
    """503 ``shutting_down``, OpenAI's ``server_error``: a request refused, or an answer cut, by the shutdown."""
    return ApiError(503, message, type="server_error", code="shutting_down")


# ------------------------------------------------------------------ routes
def _add_operator_routes(app: FastAPI, server: Server) -> None:
    """/health (for a load balancer: is it up, how busy) and /metrics (for Prometheus)."""

    @app.get("/health")
    async def health() -> dict[str, Any]:
        b = server.batcher
        return {"status": "stopping" if b.stopping else "ok", "model": server.name, "running": b.running,
                "waiting": b.queue_depth}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(server.metrics.render(), media_type=CONTENT_TYPE)


def _add_openai_routes(app: FastAPI, server: Server) -> None:
    """OpenAI's routes: the model list, completions and chat completions. Each generation route
    checks its request, turns it into prompt ids and a token budget, and hands it to ``_answer``."""

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [_model_card(server)]}

    @app.get("/v1/models/{name}")
    async def model(name: str) -> dict[str, Any]:
        server.check_model(name)
        return _model_card(server)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        req = protocol.parse(protocol.CompletionRequest, await server.read_json(request))
        server.check_model(req.model)
        if req.best_of not in (None, req.n):
            raise ApiError(400, "best_of is not supported by npgpt (leave it out, or equal to n)", param="best_of")
        prompt = _completion_prompt(server, req)
        max_new = server.budget(prompt, req.max_tokens, default=16)
        return await _answer(server, request, req, prompt, max_new, req.logprobs, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        req = protocol.parse(protocol.ChatRequest, await server.read_json(request))
        server.check_model(req.model)
        prompt = _chat_prompt(server, req)
        # max_tokens is the older name of max_completion_tokens; the newer one wins.
        asked = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        max_new = server.budget(prompt, asked, default=None, what="messages")
        top = (req.top_logprobs or 0) if req.logprobs else None
        if req.top_logprobs and not req.logprobs:
            raise ApiError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        return await _answer(server, request, req, prompt, max_new, top, chat=True)


def _add_page_routes(app: FastAPI, server: Server) -> None:
    """The page (/ and its /static files) and what only the page asks for (/npgpt/...): the
    model's shape, and pictures computed on the model's thread."""

    @app.get("/")
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/npgpt/info")
    async def info() -> dict[str, Any]:
        c = server.model.config
        return {"model": server.name, "block_size": c.block_size, "n_layer": c.n_layer, "n_head": c.n_head,
                "vocab_size": c.vocab_size, "chat": server.tokenizer.chat_template is not None}

    @app.post("/npgpt/attention")
    async def attention(request: Request) -> dict[str, Any]:
        body = await server.read_json(request)
        job = pictures.attention_job(server.model, server.tokenizer, body)
        return await _on_model_thread(server, job)

    @app.post("/npgpt/saliency")
    async def saliency(request: Request) -> dict[str, Any]:
        body = await server.read_json(request)
        job = pictures.saliency_job(server.model, server.tokenizer, body)
        return await _on_model_thread(server, job)


def _completion_prompt(server: Server, req: protocol.CompletionRequest) -> list[int]:
    """The prompt's ids: a string is encoded (special tokens allowed: the caller wrote them on
    purpose), a list of ids is taken as it is once each id is checked against the vocabulary."""
    if isinstance(req.prompt, str):
        return server.tokenizer.encode(req.prompt, allowed_special="all")
    prompt = list(req.prompt)
    bad = [i for i in prompt if not 0 <= i < server.tokenizer.vocab_size]
    if bad:
        raise ApiError(400, f"token id {bad[0]} is outside the vocabulary 0..{server.tokenizer.vocab_size - 1}",
                       param="prompt")
    return prompt


def _chat_prompt(server: Server, req: protocol.ChatRequest) -> list[int]:
    """The conversation's ids through the model's chat template, ending where the assistant's
    answer begins; a 400 when the model has no template or the messages do not fit it."""
    tok = server.tokenizer
    if tok.chat_template is None:
        raise ApiError(400, f"the model '{server.name}' has no chat template, so it cannot hold a conversation: "
                       "use /v1/completions, or serve a model fine-tuned for chat (npgpt sft, docs/agent.md)",
                       param="messages", code="chat_template_missing")
    # OpenAI's newer "developer" role is what the template calls "system".
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.messages]
    try:
        return tok.apply_chat_template(messages, add_generation_prompt=True)
    except ValueError as exc:
        raise ApiError(400, f"the conversation does not fit the chat template: {exc}", param="messages") from None


async def _on_model_thread(server: Server, fn) -> Any:
    """``fn()``'s result, run by the batcher between two decoding steps (503 while shutting down)."""
    try:
        future = server.batcher.call(fn)
    except ShuttingDown:
        raise _shutting_down("the server is shutting down") from None
    return await asyncio.wrap_future(future)


def _model_card(server: Server) -> dict[str, Any]:
    """The served model as OpenAI's model object, with its context length besides."""
    return {"id": server.name, "object": "model", "created": server.created, "owned_by": "npgpt",
            "context_length": server.model.config.block_size}


# ------------------------------------------------------------ the answer
async def _answer(server: Server, request: Request, req: Any, prompt: list[int], max_new: int,
                  top_logprobs: int | None, *, chat: bool) -> Response:
    """Queue the job of a checked generation request, then answer: as server-sent events while
    it is generated (``"stream": true``), or as one JSON object once it is complete."""
    queue, deliver = _events()
    job = server.job(prompt, req, max_new, top_logprobs, deliver)
    server.submit(job)                  # a 429 or 503 leaves here: no tokens in its log line, no latency
    reply = _Reply(server, request, req, prompt, job, queue, top_logprobs, chat=chat)
    if req.stream:
        return StreamingResponse(reply.stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return await reply.collect()


class _Reply:
    """The answer to one queued generation request, made from the job's events (see ``Job``).

    ``head`` is what every chunk and the whole answer begin with (id, object, created, model);
    ``stats`` is ``scope["npgpt"]``, where ``_Logged`` reads the token counts for the log line.
    """

    def __init__(self, server: Server, request: Request, req: Any, prompt: list[int], job: Job,
                 queue: asyncio.Queue, top_logprobs: int | None, *, chat: bool) -> None:
        self.server, self.request, self.req, self.prompt = server, request, req, prompt
        self.job, self.queue, self.top_logprobs, self.chat = job, queue, top_logprobs, chat
        self.stats = request.scope.setdefault("npgpt", {})
        self.stats["prompt_tokens"] = len(prompt)
        self.stats["completion_tokens"] = 0
        self.head = {"id": protocol.new_id("chatcmpl" if chat else "cmpl"),
                     "object": "chat.completion.chunk" if chat else "text_completion",
                     "created": protocol.now(), "model": server.name}

    def done(self, completion_tokens: int) -> None:
        """The job's last event: its token counts into the log line and the metrics, with the
        time to its first token."""
        self.stats["completion_tokens"] = completion_tokens
        metrics = self.server.metrics
        metrics.prompt_tokens.inc(len(self.prompt))
        metrics.completion_tokens.inc(completion_tokens)
        if self.job.first_token_at is not None:
            metrics.ttft.observe(self.job.first_token_at - self.job.arrived)

    def usage(self) -> dict[str, int]:
        """The token counts OpenAI reports (read once the job is done)."""
        return protocol.usage(len(self.prompt), self.stats["completion_tokens"])

    # ---------------------------------------------------------- streamed
    async def stream(self) -> AsyncIterator[bytes]:
        """The answer as server-sent events: for chat, first each choice's role; then a chunk per
        piece of text and per finished choice, the usage if ``stream_options`` asks, and ``[DONE]``.
        A stream cut short (a failed step, a choice cancelled by a shutdown) ends instead with an error
        event, OpenAI's error object, and no ``[DONE]``: the status line (200) has gone, and a client
        must not take the cut text for a complete answer."""
        offsets = [0] * self.req.n          # characters each choice has sent: its logprobs' text_offset
        cut = False                         # a choice ended by a shutdown
        try:
            if self.chat:
                for k in range(self.req.n):
                    yield self.chunk([{"index": k, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                     "finish_reason": None}])
            while True:
                event = await self.queue.get()
                if event[0] == "done":
                    self.done(event[1])
                    break
                if event[0] == "error":            # the status line has gone: the error is an event
                    yield protocol.sse(ApiError(500, f"generation failed: {event[1]}", type="server_error").body())
                    return
                if event[0] == "finish" and event[2] == "cancelled":     # the shutdown ended this choice
                    cut = True
                    continue
                yield self.chunk([self.streamed_choice(event, offsets)])
            if cut:                                # as the collected answer's 503, as an event
                yield protocol.sse(_shutting_down(CUT_BY_SHUTDOWN).body())
                return
            if self.req.stream_options is not None and self.req.stream_options.include_usage:
                yield protocol.sse({**self.head, "choices": [], "usage": self.usage()})
            yield protocol.SSE_DONE
        finally:
            self.job.cancelled = True        # a client that went away frees its slots at the next step

    def chunk(self, choices: list[dict[str, Any]]) -> bytes:
        """One chunk of the stream, as a server-sent event."""
        return protocol.sse({**self.head, "choices": choices})

    def streamed_choice(self, event: tuple, offsets: list[int]) -> dict[str, Any]:
        """The chunk's choice for a ``piece`` event or for a ``finish`` event that is not a shutdown's."""
        chat = self.chat
        if event[0] == "piece":
            _, k, piece = event
            if chat:
                lp = protocol.chat_logprobs(piece.tokens) if self.top_logprobs is not None else None
                return {"index": k, "delta": {"content": piece.text}, "logprobs": lp, "finish_reason": None}
            lp = protocol.completion_logprobs(piece.tokens, offsets[k]) if self.top_logprobs is not None else None
            offsets[k] += len(piece.text)
            return {"index": k, "text": piece.text, "logprobs": lp, "finish_reason": None}
        _, k, reason = event
        return ({"index": k, "delta": {}, "logprobs": None, "finish_reason": reason} if chat else
                {"index": k, "text": "", "logprobs": None, "finish_reason": reason})

    # --------------------------------------------------------- collected
    async def collect(self) -> Response:
        """The whole answer as one JSON object; 499 when the client left before it was complete,
        503 when the server shut down first."""
        n = self.req.n
        texts = [""] * n
        tokens: list[list] = [[] for _ in range(n)]
        reasons: list[str | None] = [None] * n
        try:
            while True:
                try:
                    event = await asyncio.wait_for(self.queue.get(), timeout=0.5)
                except asyncio.TimeoutError:         # quiet for a while: is the client still there?
                    if await self.request.is_disconnected():
                        return Response(status_code=499)
                    continue
                if event[0] == "done":
                    self.done(event[1])
                    break
                if event[0] == "error":
                    raise ApiError(500, f"generation failed: {event[1]}", type="server_error")
                if event[0] == "piece":
                    texts[event[1]] += event[2].text
                    tokens[event[1]] += event[2].tokens
                elif event[0] == "finish":
                    reasons[event[1]] = event[2]
        finally:
            self.job.cancelled = True
        if "cancelled" in reasons:
            raise _shutting_down(CUT_BY_SHUTDOWN)
        return JSONResponse(self.whole(texts, tokens, reasons))

    def whole(self, texts: list[str], tokens: list[list], reasons: list[str | None]) -> dict[str, Any]:
        """The complete answer: each choice's text (or message), logprobs and finish reason, and the usage."""
        choices = []
        for k in range(self.req.n):
            if self.chat:
                lp = protocol.chat_logprobs(tokens[k]) if self.top_logprobs is not None else None
                choices.append({"index": k, "message": {"role": "assistant", "content": texts[k]}, "logprobs": lp,
                                "finish_reason": reasons[k]})
            else:
                lp = protocol.completion_logprobs(tokens[k], 0) if self.top_logprobs is not None else None
                choices.append({"index": k, "text": texts[k], "logprobs": lp, "finish_reason": reasons[k]})
        return {**self.head, "object": "chat.completion" if self.chat else "text_completion", "choices": choices,
                "usage": self.usage()}


class _Logged:
    """ASGI wrapper: the API key check, one log line per request, and the request counters.

    The line is written when the response's last byte is sent (a stream's end),
    with the token counts the handler left in ``scope["npgpt"]``.
    """

    def __init__(self, app: FastAPI, server: Server) -> None:
        self.app, self.server = app, server

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]
        path = scope["path"]

        async def sending(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            key = self.server.api_key
            if key is not None and path.startswith(PROTECTED) and not _authorized(scope, key):
                err = ApiError(401, "Incorrect API key provided: send 'Authorization: Bearer <key>' with the key "
                               "given to npgpt serve --api-key", code="invalid_api_key")
                await JSONResponse(err.body(), status_code=401)(scope, receive, sending)
            else:
                await self.app(scope, receive, sending)
        finally:
            ms = (time.perf_counter() - start) * 1000
            stats = scope.get("npgpt", {})
            known = path if path in ("/", "/health", "/metrics", "/v1/models", "/v1/completions",
                                     "/v1/chat/completions") or path.startswith("/npgpt/") else "other"
            self.server.metrics.requests.labels(scope["method"], known, str(status[0])).inc()
            if "prompt_tokens" in stats:
                self.server.metrics.latency.observe(ms / 1000)
            log.info("%s %s %d prompt_tokens=%d completion_tokens=%d ms=%.1f", scope["method"], path, status[0],
                     stats.get("prompt_tokens", 0), stats.get("completion_tokens", 0), ms)


def _authorized(scope: dict, key: str) -> bool:
    """``Authorization: Bearer <key>``, compared in constant time (no timing leak of how much matched)."""
    given = b""
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            given = value
    expected = b"Bearer " + key.encode()
    return hmac.compare_digest(given, expected)
