"""Starting ``npgpt serve`` for the tests: a tiny model saved to disk, the server in a subprocess."""

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import httpx

from npgpt.finetuning.sft import add_chat_tokens
from npgpt.model import GPT, GPTConfig
from npgpt.tokenizer import Tokenizer

ROOT = pathlib.Path(__file__).resolve().parents[1]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_model(block_size=64, n_embd=32, n_layer=2, chat=True):
    """``(model, tokenizer)``: a small random model with the shipped tokenizer (and the chat template when ``chat``)."""
    tokenizer = Tokenizer.from_pretrained("npgpt-small")
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=block_size, n_layer=n_layer, n_head=2,
                          n_embd=n_embd), seed=1)
    return add_chat_tokens(model, tokenizer) if chat else (model, tokenizer)


def save_tiny(directory, block_size=64, n_embd=32, n_layer=2, chat=True):
    """``tiny_model``'s model and tokenizer, saved in ``directory``."""
    model, tokenizer = tiny_model(block_size, n_embd, n_layer, chat)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save(directory)
    return directory


class Running:
    """``npgpt serve`` in a subprocess; ``stop()`` sends SIGTERM and returns (exit code, log)."""

    def __init__(self, directory, *options):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        self.signalled = False
        self.log_path = directory.parent / f"serve-{self.port}.log"
        self.log_file = open(self.log_path, "w")
        self.process = subprocess.Popen([sys.executable, "-m", "npgpt", "serve", str(directory), "--port",
                                         str(self.port), *options], stdout=self.log_file, stderr=subprocess.STDOUT,
                                        env=env)
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start:\n{self.log()}")
            time.sleep(0.1)

    def log(self):
        return self.log_path.read_text()

    def terminate(self):
        """SIGTERM, once (a test may send it before ``stop``)."""
        if not self.signalled and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.signalled = True

    def stop(self, timeout=30):
        self.terminate()
        code = self.process.wait(timeout)
        self.log_file.close()
        return code, self.log()
