"""``npgpt serve``: an OpenAI-compatible HTTP server with continuous batching, and a page that shows
what the model does (docs/serving.md).

* ``slots``: a KV cache whose rows are independent slots;
* ``batcher``: the model's thread, which admits requests and runs the shared decoding steps;
* ``text``: tokens to released text, cut exactly at stop strings;
* ``protocol``: OpenAI's request and response shapes, and its errors;
* ``app``: the routes (FastAPI), the log line, the API key;
* ``metrics``: ``/metrics`` in Prometheus' format;
* ``pictures``: attention maps and saliency for the page (``static/``);
* ``server``: loading a model and running uvicorn (the ``npgpt serve`` command).

Needs the ``serve`` extra: ``pip install -e ".[serve]"``.
"""
