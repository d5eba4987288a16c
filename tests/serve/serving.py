"""Helpers of the server tests: a uvicorn server in a thread, a free port, rollouts of the lab bench."""

from __future__ import annotations

import contextlib
import http.client
import json
import threading
import time

import uvicorn
from conftest import free_port

from odistill.bench.tasks import get_task
from odistill.core.sampler import sample

TASK = get_task("addition")


@contextlib.contextmanager
def running(app):
    """Serve ``app`` with uvicorn in a thread of this process; yields its URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def rollouts_of(models, n=12, seed=0, max_new_tokens=8):
    student, _, tokenizer = models
    prompts = [row["prompt"] for row in TASK.make_dataset(n, seed=seed)]
    prompts = [p if i % 3 else p[i % 2 + 1 :] for i, p in enumerate(prompts)]  # of different lengths
    return sample(student, tokenizer, prompts, max_new_tokens=max_new_tokens, seed=seed, temperature=1.5)


def post(url: str, path: str, body, *, raw: bytes | None = None, headers=None) -> tuple[int, dict]:
    parts = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(parts[0], int(parts[1]), timeout=30)
    data = raw if raw is not None else json.dumps(body).encode()
    conn.request("POST", path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
    response = conn.getresponse()
    payload = response.read()
    conn.close()
    return response.status, json.loads(payload)
