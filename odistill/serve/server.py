"""Run the teacher server with uvicorn (what ``odistill serve-teacher`` calls)."""

from __future__ import annotations

import ipaddress
import sys
import warnings

from .app import ScoringEngine, create_app

__all__ = ["serve", "is_loopback"]


def is_loopback(host: str) -> bool:
    """True for ``127.0.0.1``, ``::1``, ``localhost``: addresses no other machine can reach."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    model,
    tokenizer,
    *,
    name: str = "teacher",
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    max_batch_tokens: int = 16384,
    max_request_bytes: int = 64 * 2**20,
    device=None,
    threads: int | None = None,
    log_level: str = "warning",
) -> None:
    """Serve ``model`` on ``http://host:port`` until interrupted (Ctrl-C or SIGTERM).

    Binds the loopback address by default: only this machine can connect. Any other ``host`` (e.g.
    ``0.0.0.0``) is an explicit choice; without an ``api_key`` a warning says that anyone who reaches
    the port can use the teacher.
    """
    try:
        import uvicorn
    except ImportError as error:  # pragma: no cover - the serve extra is part of the dev install
        raise ImportError(
            'odistill serve-teacher needs uvicorn and starlette: pip install "odistill[serve]"'
        ) from error
    if not is_loopback(host) and not api_key:
        warnings.warn(
            f"serving on {host} without an API key: anyone who can reach port {port} can use the teacher "
            "(set --api-key, or bind 127.0.0.1 and tunnel)",
            stacklevel=2,
        )
    engine = ScoringEngine(
        model, tokenizer, name=name, max_batch_tokens=max_batch_tokens, device=device, threads=threads
    )
    app = create_app(engine, api_key=api_key, max_request_bytes=max_request_bytes)
    info = engine.info
    print(
        f"[serve-teacher] {name}: V={info['vocab_size']}, tokenizer {info['tokenizer']}, {info['dtype']} on "
        f"{info['device']}, at most {max_batch_tokens} tokens per forward pass; "
        f"listening on http://{host}:{port}" + (" (API key required)" if api_key else ""),
        file=sys.stderr,
        flush=True,
    )
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)
    finally:
        engine.close()
