"""``odistill serve-teacher``: serve a teacher's log-probs over HTTP for ``distill --teacher-url``."""

from __future__ import annotations

import os

from ..bench.models import load_model, resolve_device
from ..train.runtime import choose_threads

__all__ = ["add_parser", "run", "DTYPES"]

#: ``--dtype`` names → torch dtypes (looked up lazily: argparse needs the names only).
DTYPES = ("float32", "bfloat16", "float16")


def run(args) -> int:
    import torch

    from ..serve import serve

    if args.max_batch_tokens < 1:
        raise ValueError(f"--max-batch-tokens must be >= 1, got {args.max_batch_tokens}")
    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be in 1..65535, got {args.port}")
    device = resolve_device(args.device)
    model, tokenizer = load_model(args.model, dtype=getattr(torch, args.dtype), device=device)
    threads = None
    if device.type == "cpu":
        threads = choose_threads(args.threads, parameters=sum(p.numel() for p in model.parameters()))
    serve(
        model,
        tokenizer,
        name=args.name or str(args.model),
        host=args.host,
        port=args.port,
        api_key=args.api_key or os.environ.get("ODISTILL_TEACHER_API_KEY"),
        max_batch_tokens=args.max_batch_tokens,
        max_request_bytes=args.max_request_mb * 2**20,
        threads=threads,
        log_level=args.log_level,
    )
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "serve-teacher",
        help="serve a teacher's log-probs over HTTP (for distill --teacher-url)",
        description="Load a causal LM (a shipped lab-bench checkpoint, a local save_pretrained folder or a "
        "hub id) and serve its log-probs of given token sequences: GET /health (model, vocabulary size, "
        "tokenizer fingerprint) and POST /v1/score (each completion token's log-prob, or the top-k "
        "log-probs and the tail mass). Concurrent requests are batched, up to --max-batch-tokens per "
        "forward pass. Binds "
        "127.0.0.1 (this machine only) unless --host says otherwise; with --api-key every request needs "
        "'Authorization: Bearer KEY'. Needs the serve extra: pip install \"odistill[serve]\".",
    )
    p.add_argument("--model", required=True, help="teacher name/path/hub id, e.g. addition-teacher")
    p.add_argument("--name", default=None, help="the model name /health reports (default: --model)")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)"
    )
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument(
        "--device", default="auto", help="cpu, cuda, cuda:1, … (default: auto = CUDA when there is one)"
    )
    p.add_argument("--dtype", default="float32", choices=DTYPES, help="parameter dtype (default: float32)")
    p.add_argument(
        "--max-batch-tokens",
        type=int,
        default=16384,
        help="at most this many padded tokens per forward pass; a longer sequence is refused with 413 "
        "(default: 16384)",
    )
    p.add_argument("--max-request-mb", type=int, default=64, help="largest request body in MiB (default: 64)")
    p.add_argument(
        "--api-key",
        default=None,
        help="require 'Authorization: Bearer KEY' on every request (default: $ODISTILL_TEACHER_API_KEY, "
        "else none)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: OMP_NUM_THREADS if set, else 1 for lab-bench-sized models)",
    )
    p.add_argument(
        "--log-level",
        default="warning",
        choices=("critical", "error", "warning", "info", "debug"),
        help="uvicorn's log level (default: warning; info logs each request)",
    )
    p.set_defaults(func=run)
