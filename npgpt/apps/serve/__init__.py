"""``npgpt serve``: an OpenAI-compatible HTTP server with continuous batching, and a page that shows
what the model does (docs/serving.md).

* ``slots``: a KV cache whose rows are independent slots;
* ``batcher``: the model's thread, which admits requests and runs the shared decoding steps;
* ``text``: tokens to released text, cut exactly at stop strings;
* ``protocol``: OpenAI's request and response shapes, and its errors;
* ``app``: the routes (FastAPI), the log line, the API key;
* ``metrics``: ``/metrics`` in Prometheus' format;
* ``pictures``: attention maps and saliency for the page (``static/``);
* ``server``: the options of ``npgpt serve``, loading the model, running uvicorn.

Needs the ``serve`` extra: ``pip install -e ".[serve]"``.
"""

from typing import Any

__all__ = ["Batcher", "SlotCache", "TextStream", "Server", "create_app"]

# Where each public name lives. Loaded on first use: the batcher needs only NumPy, the app FastAPI.
_HOMES = {"Batcher": "batcher", "SlotCache": "slots", "TextStream": "text", "Server": "app", "create_app": "app"}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(f"npgpt.apps.serve.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'npgpt.apps.serve' has no attribute {name!r}")
