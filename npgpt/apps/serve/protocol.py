"""OpenAI's wire format: the requests npgpt accepts, the errors it answers, the JSON it sends back.

Companion of docs/serving.md ("The API"). Requests are checked by pydantic models
in strict mode: a field of the wrong type (``"max_tokens": "5"``) or one npgpt does
not know is a 400 naming the field, in the shape OpenAI's clients expect::

    {"error": {"message": "...", "type": "invalid_request_error", "param": "max_tokens", "code": null}}
"""

import json
import secrets
import time
from typing import Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator


class ApiError(Exception):
    """An error answered as OpenAI answers it: ``status`` and ``{"error": {...}}``."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# ---------------------------------------------------------------- requests
class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    include_usage: bool = False


class _Sampling(BaseModel):
    """The fields that completions and chat completions share."""

    model_config = ConfigDict(extra="forbid", strict=True)
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=128)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, value):
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > 4:
            raise ValueError(f"at most 4 stop strings, got {len(stops)}")
        if any(s == "" for s in stops):
            raise ValueError("a stop string must not be empty")
        return stops

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalty(cls, value):
        if value != 0:
            raise ValueError("is not supported by npgpt (only 0)")
        return value


class CompletionRequest(_Sampling):
    """``POST /v1/completions``: one prompt (text, or token ids) to continue."""

    prompt: str | list[int] | list[str]
    max_tokens: int | None = Field(None, ge=1)      # default: 16, as OpenAI's
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: Literal[False] = False
    best_of: int | None = None
    suffix: None = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value):
        if isinstance(value, list) and value and isinstance(value[0], str):
            if len(value) != 1:
                raise ValueError(f"npgpt takes one prompt per request, got a list of {len(value)}")
            return value[0]
        return value


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatRequest(_Sampling):
    """``POST /v1/chat/completions``: a conversation to answer."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)


def parse(kind: type[BaseModel], body: Any) -> Any:
    """``body`` (decoded JSON) as a ``kind`` request, or the ``ApiError`` naming the first bad field."""
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(body).__name__}")
    try:
        return kind.model_validate(body)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        loc = [str(p) for p in first["loc"] if not (isinstance(p, str) and p in {"str", "list[int]", "list[str]"})]
        param = ".".join(loc) or None
        if first["type"] == "extra_forbidden":
            raise ApiError(400, f"Unrecognized request argument supplied: {param}", param=param) from None
        if first["type"] == "missing":
            raise ApiError(400, f"Missing required parameter: '{param}'", param=param,
                           code="missing_required_parameter") from None
        message = first["msg"].removeprefix("Value error, ")
        got = first.get("input")
        shown = json.dumps(got)[:80] if _jsonable(got) else repr(got)[:80]
        raise ApiError(400, f"Invalid value for '{param}': {message} (got {shown})", param=param,
                       code="invalid_value") from None


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


# -------------------------------------------------------------- responses
def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_logprobs(tokens: list, offset: int) -> dict[str, list]:
    """The legacy completions' ``logprobs`` object of some released tokens, their text starting at ``offset``."""
    out: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for text, lp, top in tokens:
        out["tokens"].append(text)
        out["token_logprobs"].append(lp)
        out["top_logprobs"].append({t: p for t, p in top})
        out["text_offset"].append(offset)
        offset += len(text)
    return out


def chat_logprobs(tokens: list) -> dict[str, list]:
    """The chat completions' ``logprobs`` object: ``{"content": [{token, logprob, bytes, top_logprobs}]}``."""
    def entry(text, lp):
        return {"token": text, "logprob": lp, "bytes": list(text.encode())}

    return {"content": [{**entry(text, lp), "top_logprobs": [entry(t, p) for t, p in top]} for text, lp, top in tokens]}


def sse(data: Any) -> bytes:
    """One server-sent event: ``data: <json>`` and a blank line."""
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"
