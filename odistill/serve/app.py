"""The teacher server: an ASGI app (Starlette) around a local teacher, and the engine that batches it.

``create_app(model, tokenizer)`` serves the routes of the wire format of :mod:`odistill.core.remote`:

* ``GET /health`` → ``{"status": "ok", "model", "vocab_size", "tokenizer" (fingerprint),
  "tokenizer_size", "max_positions", "max_batch_tokens", "modes", "served": {requests, rows,
  forward_passes}}``;
* ``POST /v1/score`` → the teacher's log-probs of each completion token (``"sampled"``), or its top-k
  log-probs, their ids and the log of the mass outside them (``"topk"``).

Requests are checked before any work: a body that is not JSON, a field of the wrong type, a token id
outside the vocabulary, a completion span outside its sequence, a sequence longer than the model's
context → HTTP 422 (400 for unreadable JSON) with ``{"error": "…what was wrong…"}``; a body over
``max_request_bytes`` or a sequence that does not fit one forward pass → 413; a missing or wrong API key
→ 401. A bad request never stops the server.

:class:`ScoringEngine` runs the teacher in one worker thread. Requests that arrive while it is busy wait
in a queue; the next forward passes take every waiting request of the same mode, up to
``max_batch_tokens`` padded tokens per pass (micro-batching), and each request gets back its own rows.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import threading
import time
from dataclasses import dataclass, field

import torch

from ..core.remote import REMOTE_MODES, tokenizer_fingerprint
from ..core.rollouts import Rollouts, left_pad, right_pad
from ..core.teacher import TeacherScorer

__all__ = ["create_app", "ScoringEngine", "BadRequest", "parse_score_request"]


class BadRequest(ValueError):
    """A request the server will not score: ``status`` (400, 401, 413, 422) and a message for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_score_request(
    body, *, vocab_size: int, max_positions: int | None, max_batch_tokens: int
) -> tuple[list[list[int]], list[int], str, int | None, int]:
    """Check a ``/v1/score`` body; ``(sequences, completion_starts, mode, k, vocab_size)`` or
    :class:`BadRequest`. ``vocab_size`` (optional, default: the teacher's) scores over the first that many
    logits only: the vocabulary student and teacher share when one pads its LM head."""
    if not isinstance(body, dict):
        raise BadRequest(422, f"the body must be a JSON object, got {type(body).__name__}")
    unknown = set(body) - {"sequences", "completion_starts", "mode", "k", "vocab_size"}
    if unknown:
        raise BadRequest(
            422, f"unknown fields {sorted(unknown)}; expected sequences, completion_starts, mode, k"
        )
    served = vocab_size
    vocab_size = body.get("vocab_size", served)
    if not (_is_int(vocab_size) and 1 <= vocab_size <= served):
        raise BadRequest(
            422, f"vocab_size must be an integer in [1, {served}] (the teacher's logits), got {vocab_size!r}"
        )
    mode = body.get("mode", "sampled")
    if mode not in REMOTE_MODES:
        raise BadRequest(422, f"mode must be one of {list(REMOTE_MODES)}, got {mode!r}")
    k = body.get("k")
    if mode == "topk" and not (_is_int(k) and 1 <= k <= vocab_size):
        raise BadRequest(422, f"mode 'topk' needs an integer k in [1, {vocab_size}], got {k!r}")
    if mode == "sampled" and k is not None:
        raise BadRequest(422, "k is only meaningful with mode 'topk'")
    sequences, starts = body.get("sequences"), body.get("completion_starts")
    if not isinstance(sequences, list) or not sequences:
        raise BadRequest(422, "sequences must be a non-empty list of token-id lists")
    if not isinstance(starts, list) or len(starts) != len(sequences):
        got = len(starts) if isinstance(starts, list) else type(starts).__name__
        raise BadRequest(
            422,
            f"completion_starts must be a list of {len(sequences)} integers (one per sequence), got {got}",
        )
    for i, (seq, start) in enumerate(zip(sequences, starts, strict=True)):
        if not isinstance(seq, list):
            raise BadRequest(422, f"sequences[{i}] must be a list of token ids, got {type(seq).__name__}")
        for j, token in enumerate(seq):
            if not _is_int(token):
                raise BadRequest(422, f"sequences[{i}][{j}] is {token!r}, not an integer token id")
            if not 0 <= token < vocab_size:
                raise BadRequest(
                    422, f"sequences[{i}][{j}] = {token} is outside the vocabulary [0, {vocab_size})"
                )
        if not _is_int(start) or not 1 <= start <= len(seq):
            raise BadRequest(
                422,
                f"completion_starts[{i}] = {start!r} lies outside sequence {i} (length {len(seq)}): "
                "it must be "
                "an integer in [1, length] (the first token has no prediction, so it cannot be scored)",
            )
        if max_positions is not None and len(seq) > max_positions:
            raise BadRequest(
                422,
                f"sequences[{i}] has {len(seq)} tokens, more than the teacher's context of {max_positions}",
            )
        if len(seq) > max_batch_tokens:
            raise BadRequest(
                413,
                f"sequences[{i}] has {len(seq)} tokens; this server scores at most {max_batch_tokens} "
                "tokens per "
                "forward pass (serve-teacher --max-batch-tokens)",
            )
    return sequences, starts, mode, k, vocab_size


@dataclass
class _Job:
    sequences: list[list[int]]
    starts: list[int]
    mode: str
    k: int | None
    vocab_size: int
    done: threading.Event = field(default_factory=threading.Event)
    result: dict | None = None
    error: BaseException | None = None
    on_done: object = None  # called (from the worker thread) when the job is finished

    def finish(self) -> None:
        self.done.set()
        if self.on_done is not None:
            self.on_done()

    @property
    def key(self) -> tuple:
        return (self.mode, self.k, self.vocab_size)

    @property
    def tokens(self) -> int:
        return sum(len(s) for s in self.sequences)


class ScoringEngine:
    """A local teacher behind a queue: one worker thread, concurrent requests batched together.

    Args:
        model: the teacher (any causal LM), frozen and put in eval mode.
        tokenizer: its tokenizer (for ``/health``: the fingerprint and the pad id).
        name: the model name ``/health`` reports.
        max_batch_tokens: at most this many padded tokens (rows × longest row) per forward pass.
        device: where the teacher runs (default: where its parameters are).
        threads: torch CPU threads of the worker thread (default: torch's setting).
    """

    def __init__(
        self,
        model,
        tokenizer,
        *,
        name: str = "teacher",
        max_batch_tokens: int = 16384,
        device=None,
        threads: int | None = None,
    ):
        if not _is_int(max_batch_tokens) or max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens must be a positive integer, got {max_batch_tokens!r}")
        self.scorer = TeacherScorer(model, mode="sampled", device=device)
        self.vocab_size = self.scorer.vocab_size
        self._scorers = {self.vocab_size: self.scorer}
        config = getattr(model, "config", None)
        self.max_positions = getattr(config, "max_position_embeddings", None)
        self.name, self.max_batch_tokens, self.threads = name, max_batch_tokens, threads
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = pad if pad is not None and pad < self.vocab_size else 0
        self.info = {
            "status": "ok",
            "model": name,
            "vocab_size": self.vocab_size,
            "tokenizer": tokenizer_fingerprint(tokenizer),
            "tokenizer_size": len(tokenizer),
            "max_positions": self.max_positions,
            "max_batch_tokens": max_batch_tokens,
            "modes": list(REMOTE_MODES),
            "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
            "device": str(self.scorer.device),
        }
        self.served = {"requests": 0, "rows": 0, "forward_passes": 0}
        self._pending: list[_Job] = []
        self._wake = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="odistill-teacher", daemon=True)
        self._thread.start()

    # -- what the routes call ----------------------------------------------------------------------

    def submit(
        self, sequences, starts, mode: str, k: int | None, vocab_size: int | None = None, on_done=None
    ) -> _Job:
        """Queue a checked request; the job's ``done`` event is set (and ``on_done()`` called, from the
        worker thread) when its ``result`` or ``error`` is ready."""
        job = _Job(sequences, starts, mode, k, vocab_size or self.vocab_size, on_done=on_done)
        with self._wake:
            if self._closed:
                raise RuntimeError("the scoring engine is closed")
            self._pending.append(job)
            self._wake.notify()
        return job

    def score(self, sequences, starts, mode: str = "sampled", k: int | None = None, vocab_size=None) -> dict:
        """Score one request and wait for it (the synchronous way in, for tests and scripts)."""
        job = self.submit(sequences, starts, mode, k, vocab_size)
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result

    def close(self) -> None:
        """Stop the worker after the jobs already queued."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout=60)

    # -- the worker ------------------------------------------------------------------------------

    def _take(self) -> list[_Job] | None:
        """Wait for work; take the oldest job and every waiting job of its mode that fits the budget
        (one request larger than the budget goes alone; its rows are split into passes)."""
        with self._wake:
            while not self._pending and not self._closed:
                self._wake.wait()
            if not self._pending:
                return None
            first = self._pending.pop(0)
            jobs, tokens, rest = [first], first.tokens, []
            for job in self._pending:
                if job.key == first.key and tokens + job.tokens <= self.max_batch_tokens:
                    jobs.append(job)
                    tokens += job.tokens
                else:
                    rest.append(job)
            self._pending = rest
            return jobs

    def _work(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)
        while (jobs := self._take()) is not None:
            try:
                rows = self._run(
                    [s for j in jobs for s in j.sequences], [s for j in jobs for s in j.starts], *jobs[0].key
                )
            except Exception as error:  # noqa: BLE001 - reported to each waiting request, the worker goes on
                for job in jobs:
                    job.error = error
                    job.finish()
                continue
            self.served["requests"] += len(jobs)
            at = 0
            for job in jobs:
                n = len(job.sequences)
                job.result = {name: values[at : at + n] for name, values in rows.items()}
                at += n
                job.finish()

    def _run(self, sequences, starts, mode: str, k: int | None, vocab_size: int) -> dict:
        """Per-row score lists for all rows, in forward passes of at most ``max_batch_tokens`` padded
        tokens each."""
        out: dict[str, list] = {"token_logprobs": []}
        if mode == "topk":
            out.update(topk_logprobs=[], topk_ids=[], topk_tail_logprob=[])
        chunk: list[int] = []
        for i in range(len(sequences) + 1):
            longest = max((len(sequences[j]) for j in chunk + ([i] if i < len(sequences) else [])), default=0)
            if i == len(sequences) or (chunk and (len(chunk) + 1) * longest > self.max_batch_tokens):
                if chunk:
                    rows = [sequences[j] for j in chunk], [starts[j] for j in chunk]
                    self._score_chunk(*rows, mode, k, vocab_size, out)
                chunk = []
            if i < len(sequences):
                chunk.append(i)
        self.served["rows"] += len(sequences)
        return out

    def _scorer(self, vocab_size: int) -> TeacherScorer:
        """The teacher scoring over its first ``vocab_size`` logits (one scorer per size asked for)."""
        if vocab_size not in self._scorers:
            self._scorers[vocab_size] = TeacherScorer(
                self.scorer.model, mode="sampled", vocab_size=vocab_size
            )
        return self._scorers[vocab_size]

    def _score_chunk(self, sequences, starts, mode: str, k: int | None, vocab_size: int, out: dict) -> None:
        counts = [len(s) - a for s, a in zip(sequences, starts, strict=True)]
        if max(counts) == 0:  # nothing to score (no completion tokens): no forward pass
            for name in out:
                out[name].extend([] for _ in sequences)
            return
        prompt_ids, prompt_mask = left_pad(
            [s[:a] for s, a in zip(sequences, starts, strict=True)], self.pad_id
        )
        completion_ids = right_pad([s[a:] for s, a in zip(sequences, starts, strict=True)], self.pad_id)
        T = completion_ids.shape[1]
        completion_mask = torch.arange(T)[None, :] < torch.tensor(counts)[:, None]
        rollouts = Rollouts(
            input_ids=torch.cat([prompt_ids, completion_ids], dim=1),
            attention_mask=torch.cat([prompt_mask, completion_mask.long()], dim=1),
            completion_mask=completion_mask,
            prompt_width=prompt_ids.shape[1],
            source="remote",
        )
        scores = self._scorer(vocab_size).score(rollouts, mode, k=k or 1)
        self.served["forward_passes"] += 1
        token = scores.token_logprobs.cpu()
        if not torch.isfinite(token[completion_mask]).all():
            raise FloatingPointError("the teacher produced non-finite log-probs (are its weights finite?)")
        out["token_logprobs"].extend(token[b, :n].tolist() for b, n in enumerate(counts))
        if mode == "topk":
            values, ids = scores.topk_logprobs.cpu(), scores.topk_ids.cpu()
            tail = scores.topk_tail_logprob.cpu()
            out["topk_logprobs"].extend(values[b, :n].tolist() for b, n in enumerate(counts))
            out["topk_ids"].extend(ids[b, :n].tolist() for b, n in enumerate(counts))
            out["topk_tail_logprob"].extend(
                [v if math.isfinite(v) else None for v in tail[b, :n].tolist()] for b, n in enumerate(counts)
            )


def create_app(
    engine: ScoringEngine,
    *,
    api_key: str | None = None,
    max_request_bytes: int = 64 * 2**20,
):
    """The Starlette app serving ``engine`` (routes and errors in the module docstring).

    Args:
        engine: the :class:`ScoringEngine` with the teacher.
        api_key: when set, every request needs ``Authorization: Bearer <api_key>`` (else 401).
        max_request_bytes: larger bodies are refused with 413 before they are read.
    """
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    def answer(payload: dict, status: int = 200) -> Response:
        return Response(
            json.dumps(payload, allow_nan=False, separators=(",", ":")), status, media_type="application/json"
        )

    def error(status: int, message: str) -> Response:
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        response = answer({"error": message}, status)
        if headers:
            response.headers.update(headers)
        return response

    def authorised(request: Request) -> bool:
        if not api_key:
            return True
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), api_key.encode())

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_request_bytes:
            raise BadRequest(
                413, f"the body has {int(declared)} bytes; this server accepts at most {max_request_bytes}"
            )
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_request_bytes:
                raise BadRequest(
                    413, f"the body is over {max_request_bytes} bytes, the most this server accepts"
                )
            chunks.append(chunk)
        return b"".join(chunks)

    async def health(request: Request) -> Response:
        if not authorised(request):
            return error(401, "missing or wrong API key: send Authorization: Bearer <key>")
        return answer({**engine.info, "served": dict(engine.served)})

    async def score(request: Request) -> Response:
        if not authorised(request):
            return error(401, "missing or wrong API key: send Authorization: Bearer <key>")
        try:
            raw = await read_body(request)
            try:
                body = json.loads(raw)
            except ValueError as err:
                raise BadRequest(400, f"the body is not JSON: {err}") from None
            parsed = parse_score_request(
                body,
                vocab_size=engine.vocab_size,
                max_positions=engine.max_positions,
                max_batch_tokens=engine.max_batch_tokens,
            )
        except BadRequest as bad:
            return error(bad.status, str(bad))
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        finished = loop.create_future()
        job = engine.submit(*parsed, on_done=lambda: loop.call_soon_threadsafe(finished.set_result, None))
        await finished
        if job.error is not None:
            return error(500, f"the teacher failed on this request: {type(job.error).__name__}: {job.error}")
        return answer({"model": engine.name, "seconds": time.perf_counter() - started, **job.result})

    async def http_error(request: Request, exc: HTTPException) -> Response:
        return error(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")

    routes = [Route("/health", health, methods=["GET"]), Route("/v1/score", score, methods=["POST"])]
    return Starlette(routes=routes, exception_handlers={HTTPException: http_error})
