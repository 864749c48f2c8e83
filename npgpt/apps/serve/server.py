"""Loading a model and serving it with uvicorn: what ``npgpt serve`` runs (docs/serving.md).

``add_arguments`` gives the command its options (``npgpt.apps.cli`` calls it); ``run`` serves.
"""

import argparse
import logging
import os
import pathlib
import signal
from typing import Any


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``npgpt serve``."""
    p.add_argument("model", metavar="MODEL", help="a checkpoint directory (model + tokenizer), or a shipped model: npgpt-small")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1, this machine only; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0 picks a free one)")
    p.add_argument("--api-key", metavar="KEY", default=os.environ.get("NPGPT_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on the API (default: $NPGPT_API_KEY, else none)")
    p.add_argument("--model-name", metavar="NAME", help="the name clients pass as 'model' (default: the directory's name)")
    p.add_argument("--max-batch", type=int, metavar="N", default=32, help="sequences decoded together at most (default 32)")
    p.add_argument("--max-queue", type=int, metavar="N", default=256,
                   help="requests waiting for a slot before new ones get 429 (default 256)")
    p.add_argument("--max-body-bytes", type=int, metavar="N", default=1 << 20,
                   help="largest request body (default 1 MiB; 413 past it)")
    p.add_argument("--grace", type=float, metavar="SECONDS", default=30.0,
                   help="seconds SIGTERM waits for running requests before cancelling them (default 30)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--blas-threads", type=int, metavar="N", default=1,
                   help="BLAS threads for the model (default 1: a decoding step's products are small; 0 leaves it to BLAS)")


def build(args: argparse.Namespace) -> Any:
    """The ASGI application for ``args`` (the model loaded, nothing started)."""
    from npgpt.apps.serve.app import Server, create_app
    from npgpt.model import GPT
    from npgpt.tokenizer import Tokenizer

    for name in ("max_batch", "max_queue", "max_body_bytes"):
        if getattr(args, name) < (0 if name == "max_queue" else 1):
            raise SystemExit(f"npgpt serve: --{name.replace('_', '-')} must be a positive number, got {getattr(args, name)}")
    model = GPT.from_pretrained(args.model)
    if args.device != "cpu":
        model.to(args.device)
    tokenizer = Tokenizer.from_pretrained(args.model)
    name = args.model_name or pathlib.Path(args.model).name
    server = Server(model, tokenizer, name, api_key=args.api_key, max_batch=args.max_batch, max_queue=args.max_queue,
                    max_body_bytes=args.max_body_bytes, blas_threads=args.blas_threads or None)
    return create_app(server)


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; uvicorn then stops accepting, gives running requests ``--grace``
    seconds, cancels the rest, and the process exits 0."""
    try:
        import uvicorn
    except ImportError:
        raise SystemExit('npgpt serve needs the serve extra: pip install -e ".[serve]"') from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    app = build(args)
    config = uvicorn.Config(app, host=args.host, port=args.port, access_log=False, log_level="info",
                            timeout_graceful_shutdown=args.grace, lifespan="on")
    # uvicorn handles SIGTERM/SIGINT itself (stop accepting, --grace, shut down), then raises the signal
    # again under the handlers it found at start. These ones let that raise end in a plain exit 0: the
    # server did stop as asked, and a supervisor (systemd, Kubernetes) reads a signal death as a crash.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda number, frame: None)
    uvicorn.Server(config).run()
    for sig in (signal.SIGTERM, signal.SIGINT):     # stopped: a second signal while exiting changes nothing
        signal.signal(sig, signal.SIG_IGN)
    return 0
