"""serve: ``npgpt serve`` under load, against the same requests served one at a time.

The workload: the shipped model (``--model``, default npgpt-small) behind ``npgpt serve`` in a
subprocess on a free port; ``--clients`` (default 32) streaming clients, each sending
``/v1/completions`` requests back to back for ``--seconds`` (default 60). Request ``i`` has its
own prompt (a speaker's name from a list, and its number), ``seed=i``, ``temperature=0.8``,
``top_p=0.95`` and ``max_tokens`` (default 32).

Then the same requests again, **one at a time**, for ``--sequential-seconds`` (default 30): the
throughput a server without batching would give on this machine, in the same run. Reported:

* ``errors`` (HTTP errors, broken streams, a chunk carrying another request's id) -- must be 0;
* ``mixed_streams``: replayed requests whose text differs from what the same request got in the
  crowd. Every request is seeded and a row's arithmetic never depends on the batch, so any
  difference means tokens crossed between streams (or the batch changed a result) -- must be 0;
* ``ttft_ms_p50/p95``: time from sending a request to its first text; ``token_ms_p50/p95``: the
  gaps between a stream's later pieces of text (one per token, but for a token that ends inside
  a UTF-8 character);
* ``tokens_per_s`` (the completion tokens of the answers' ``usage``) with the clients,
  ``sequential_tokens_per_s`` one at a time, and their
  ``speedup`` (the issue's target: >= 3x at 32 clients);
* ``mean_batch``: the mean rows per decoding step (the server's /metrics), and the machine's load
  average before and after (``load_before``/``load_after``): other jobs slow both phases.

The clients run in this process (asyncio, httpx), on the same cores as the server: their cost
is part of the figure, as it is for a load test run on the serving machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from typing import Any

SPEAKERS = ["ROMEO", "JULIET", "HAMLET", "First Citizen", "KING RICHARD III", "MACBETH", "LADY MACBETH", "OTHELLO",
            "PORTIA", "BRUTUS", "CLEOPATRA", "PROSPERO", "MIRANDA", "FALSTAFF", "ROSALIND", "IAGO"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="npgpt-small", help="model to serve (default npgpt-small)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent streaming clients (default 32)")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the concurrent phase (default 60)")
    parser.add_argument("--sequential-seconds", type=float, default=30.0,
                        help="length of the one-at-a-time phase (default 30)")
    parser.add_argument("--max-tokens", type=int, default=32, help="max_tokens of each request (default 32)")


def request(i: int, max_tokens: int) -> dict[str, Any]:
    """Request number ``i`` of the workload (the same in both phases)."""
    return {"model": "npgpt-small", "prompt": f"{SPEAKERS[i % len(SPEAKERS)]}:\n", "max_tokens": max_tokens,
            "temperature": 0.8, "top_p": 0.95, "seed": i, "stream": True, "stream_options": {"include_usage": True}}


async def stream_one(client: Any, url: str, body: dict[str, Any]) -> dict[str, Any]:
    """Send one streaming request; its text, token times, and anything wrong with the stream."""
    start = time.perf_counter()
    times, text, ids, finish, problem, tokens = [], "", set(), None, None, None
    async with client.stream("POST", url + "/v1/completions", json=body) as response:
        if response.status_code != 200:
            return {"problem": f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"}
        done = False
        async for line in response.aiter_lines():
            if not line:
                continue
            if line == "data: [DONE]":
                done = True
                continue
            chunk = json.loads(line.removeprefix("data: "))
            ids.add(chunk["id"])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for choice in chunk["choices"]:
                if choice["text"]:
                    times.append(time.perf_counter())
                    text += choice["text"]
                finish = choice["finish_reason"] or finish
    if not done or finish is None:
        problem = "the stream ended without finish_reason and [DONE]"
    elif len(ids) != 1:
        problem = f"chunks with {len(ids)} different ids in one stream"
    elif tokens is None:
        problem = "the stream ended without its usage chunk"
    return {"text": text, "start": start, "times": times, "tokens": tokens, "problem": problem}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


async def load(url: str, clients: int, seconds: float, max_tokens: int) -> tuple[dict[int, dict], float]:
    """``clients`` loops sending requests 0, 1, 2, ... (each takes the next number) for ``seconds``."""
    import httpx

    results: dict[int, dict] = {}
    counter = iter(range(10**9))
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        deadline = time.perf_counter() + seconds

        async def loop() -> None:
            while time.perf_counter() < deadline:
                i = next(counter)
                try:
                    results[i] = await stream_one(client, url, request(i, max_tokens))
                except Exception as exc:             # counted, never hidden
                    results[i] = {"problem": f"{type(exc).__name__}: {exc}"}

        start = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(clients)))
        return results, time.perf_counter() - start


async def one_at_a_time(url: str, numbers: list[int], seconds: float, max_tokens: int) -> tuple[dict[int, dict], float]:
    import httpx

    results: dict[int, dict] = {}
    async with httpx.AsyncClient(timeout=120) as client:
        start = time.perf_counter()
        for i in numbers:
            if time.perf_counter() - start >= seconds:
                break
            results[i] = await stream_one(client, url, request(i, max_tokens))
        return results, time.perf_counter() - start


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _metric(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")
               or line.startswith(name + "{"))


def run(args: argparse.Namespace) -> dict[str, Any]:
    import httpx

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "npgpt", "serve", args.model, "--port", str(port),
                               "--max-batch", str(args.clients), "--model-name", "npgpt-small"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("npgpt serve did not start")
            time.sleep(0.2)
        load_before = os.getloadavg()[0]
        asyncio.run(one_at_a_time(url, [10**6], 5, args.max_tokens))          # warm-up
        crowd, crowd_s = asyncio.run(load(url, args.clients, args.seconds, args.max_tokens))
        metrics = httpx.get(url + "/metrics").text
        steps = _metric(metrics, "npgpt_batch_size_count")
        rows = _metric(metrics, "npgpt_batch_size_sum")
        finished = sorted(i for i, r in crowd.items() if not r.get("problem"))
        alone, alone_s = asyncio.run(one_at_a_time(url, finished, args.sequential_seconds, args.max_tokens))
        load_after = os.getloadavg()[0]
    finally:
        server.terminate()
        server.wait(60)
    problems = [r["problem"] for r in list(crowd.values()) + list(alone.values()) if r.get("problem")]
    mixed = [i for i, r in alone.items() if not r.get("problem") and r["text"] != crowd[i]["text"]]
    ok = [r for r in crowd.values() if not r.get("problem")]
    ttft = [(r["times"][0] - r["start"]) * 1000 for r in ok if r["times"]]
    gaps = [(b - a) * 1000 for r in ok for a, b in zip(r["times"], r["times"][1:])]
    tokens = sum(r["tokens"] for r in ok)
    alone_tokens = sum(r["tokens"] for r in alone.values() if not r.get("problem"))
    rate = tokens / crowd_s
    alone_rate = alone_tokens / alone_s
    return {
        "clients": args.clients, "seconds": round(crowd_s, 1), "requests": len(crowd), "errors": len(problems),
        "first_error": problems[0] if problems else None,
        "replayed": len(alone), "mixed_streams": len(mixed),
        "ttft_ms_p50": round(percentile(ttft, 50), 1), "ttft_ms_p95": round(percentile(ttft, 95), 1),
        "token_ms_p50": round(percentile(gaps, 50), 1), "token_ms_p95": round(percentile(gaps, 95), 1),
        "tokens_per_s": round(rate, 1), "sequential_tokens_per_s": round(alone_rate, 1),
        "speedup": round(rate / alone_rate, 2) if alone_rate else None,
        "mean_batch": round(rows / steps, 1) if steps else None,
        "load_before": round(load_before, 2), "load_after": round(load_after, 2),
    }
