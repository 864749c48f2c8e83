"""``GET /metrics``: what the server did, in Prometheus' text format (docs/serving.md, "Watching it").

Counters only grow (Prometheus' ``rate()`` turns them into per-second figures);
gauges are read when scraped; histograms count observations into buckets.
Each server has its own registry, so two servers in one process (the tests)
never mix their figures.
"""

from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

prometheus_client.disable_created_metrics()      # no "_created" timestamp beside every counter

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """The server's figures; ``batcher`` supplies the live ones (queue, running rows, tokens/s)."""

    def __init__(self, batcher: Any) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("npgpt_requests", "HTTP requests answered", ["method", "path", "status"], registry=r)
        self.prompt_tokens = Counter("npgpt_prompt_tokens", "Prompt tokens of the generation requests", registry=r)
        self.completion_tokens = Counter("npgpt_completion_tokens", "Tokens generated for clients", registry=r)
        self.latency = Histogram("npgpt_request_duration_seconds", "Time from request to the end of its answer",
                                 buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60), registry=r)
        self.ttft = Histogram("npgpt_time_to_first_token_seconds", "Time from request to its first generated token",
                              buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=r)
        self.batch_size = Histogram("npgpt_batch_size", "Rows in each decoding step",
                                    buckets=(1, 2, 4, 8, 16, 24, 32, 48, 64, 128), registry=r)
        queue = Gauge("npgpt_queue_depth", "Requests waiting for a slot", registry=r)
        queue.set_function(lambda: batcher.queue_depth)
        running = Gauge("npgpt_running_sequences", "Sequences in the decoding batch", registry=r)
        running.set_function(lambda: batcher.running)
        speed = Gauge("npgpt_generation_tokens_per_second", "Tokens generated per second, last 10 s", registry=r)
        speed.set_function(batcher.tokens_per_second)
        generated = Gauge("npgpt_generated_tokens", "Tokens the model generated so far (cancelled requests too)",
                          registry=r)
        generated.set_function(lambda: batcher.tokens_out)
        steps = Gauge("npgpt_decoding_steps", "Decoding steps run so far", registry=r)
        steps.set_function(lambda: batcher.steps)
        batcher.on_step = self.batch_size.observe

    def render(self) -> bytes:
        return generate_latest(self.registry)
