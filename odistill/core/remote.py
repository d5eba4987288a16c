"""A teacher that runs elsewhere: the wire format and :class:`RemoteTeacher`, the HTTP client.

Thinking Machines' recipe needs one number per sampled token from the teacher, ``log p_T(x_t | x_<t)``,
so the teacher can be a server on a bigger machine (Tinker's ``compute_logprobs``). :class:`RemoteTeacher`
is a :class:`~odistill.core.teacher.Teacher` (``vocab_size`` + ``score``) that sends the rollouts'
token ids over HTTP and returns :class:`~odistill.core.teacher.TeacherScores` in ``"sampled"`` or
``"topk"`` mode; :func:`odistill.distill` cannot tell it from a local teacher. It talks to two kinds of
server:

* ``protocol="odistill"``: ``odistill serve-teacher`` (:mod:`odistill.serve`), ``GET /health`` and
  ``POST /v1/score``, described below. Vocabulary and tokenizer are checked against ``/health`` before
  training.
* ``protocol="vllm"``: a vLLM OpenAI-compatible server (``vllm serve MODEL --max-logprobs K``), scored
  through ``POST /v1/completions`` with ``prompt_logprobs`` (the log-prob of every prompt token, plus
  the top ``K``), one token generated and thrown away. The tokenizer is checked through ``POST /tokenize``.

The client needs only the standard library (``http.client``): a training process does not install a web
stack. Transient failures (connection refused or reset, timeouts, HTTP 502/503/504) are retried with
exponential backoff; when the server stays down, :class:`TeacherUnavailableError` names the URL and what
failed, and :func:`odistill.distill` writes a checkpoint of the last finished step before re-raising it,
so ``resume_from`` continues once the server is back. A request the server rejects (HTTP 4xx) is a bug,
not a hiccup: :class:`RemoteTeacherError` carries the server's message at once, without retrying.

The odistill wire format (JSON), one entry per rollout row::

    POST /v1/score
    {"sequences": [[ids of prompt + completion], ...],   # real tokens only, no padding
     "completion_starts": [index of the first completion token, ...],
     "mode": "sampled" | "topk", "k": 20,
     "vocab_size": 151936}                                # optional: only the first V logits count
    ->
    {"token_logprobs": [[log p_T(x_t) for each completion token], ...],
     "topk_logprobs": [[[k floats], ...], ...], "topk_ids": [[[k ids], ...], ...],   # "topk" only
     "topk_tail_logprob": [[log(1 - sum of the top k) or null when it is 0], ...]}   # "topk" only

Only counted completion tokens travel (``completion_mask``: up to and including the first EOS); the
scores of the other positions are 0, as from the local teacher.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import math
import threading
import time
import urllib.parse

import torch

from .rollouts import Rollouts
from .teacher import TeacherScores

__all__ = [
    "RemoteTeacher",
    "RemoteTeacherError",
    "TeacherUnavailableError",
    "REMOTE_MODES",
    "PROTOCOLS",
    "tokenizer_fingerprint",
    "encode_rollouts",
    "decode_scores",
]

#: The score modes a server returns (full (B, T, V) log-probs and hidden states do not travel).
REMOTE_MODES = ("sampled", "topk")
#: The servers :class:`RemoteTeacher` can talk to.
PROTOCOLS = ("odistill", "vllm")
#: HTTP statuses worth retrying: the server (or a proxy in front of it) is down or overloaded.
RETRY_STATUSES = (502, 503, 504)
#: The text whose token ids are compared with a vLLM server's ``/tokenize`` (letters, digits, spaces,
#: punctuation and a few non-ASCII characters).
TOKENIZER_PROBE = "The teacher scores 12 + 34 = 46, sorted: [1, 2, 3]. Grüße, 你好!\n"


class TeacherUnavailableError(RuntimeError):
    """The teacher server could not be reached (or kept failing) after every retry.

    Attributes:
        url: the server's base URL.
    """

    def __init__(self, message: str, url: str):
        super().__init__(message)
        self.url = url


class RemoteTeacherError(ValueError):
    """The teacher server rejected a request (HTTP 4xx) or answered something this client cannot read.

    Attributes:
        url: the server's base URL.
        status: the HTTP status (None when the answer was unreadable).
    """

    def __init__(self, message: str, url: str, status: int | None = None):
        super().__init__(message)
        self.url, self.status = url, status


def tokenizer_fingerprint(tokenizer) -> str:
    """A short hash of a tokenizer's vocabulary and special tokens: equal for two tokenizers that map
    every string to the same ids. ``odistill serve-teacher`` reports it on ``/health``."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    special = {name: getattr(tokenizer, f"{name}_token_id", None) for name in ("bos", "eos", "pad", "unk")}
    blob = json.dumps({"vocab": vocab, "special": special}, ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def encode_rollouts(rollouts: Rollouts) -> tuple[list[list[int]], list[int]]:
    """The rows of a rollout batch as the wire sends them: ``(sequences, completion_starts)``, each
    sequence the row's real prompt tokens followed by its counted completion tokens."""
    width = rollouts.prompt_width
    ids = rollouts.input_ids.tolist()
    prompt_mask = rollouts.attention_mask[:, :width].bool().tolist()
    counts = rollouts.completion_mask.sum(-1).tolist()
    sequences, starts = [], []
    for row, keep, n in zip(ids, prompt_mask, counts, strict=True):
        prompt = [t for t, k in zip(row[:width], keep, strict=True) if k]
        sequences.append(prompt + row[width : width + n])
        starts.append(len(prompt))
    return sequences, starts


def decode_scores(
    answer: dict, rollouts: Rollouts, mode: str, k: int | None, *, url: str = "the server"
) -> TeacherScores:
    """:class:`TeacherScores` on the rollouts' device from a ``/v1/score`` answer (see the module
    docstring); a clear :class:`RemoteTeacherError` when the answer does not fit the rollouts."""
    mask = rollouts.completion_mask
    counts = mask.sum(-1).tolist()
    B, T = mask.shape

    def rows(name: str, inner: int | None) -> list:
        value = answer.get(name)
        if not isinstance(value, list) or len(value) != B:
            raise RemoteTeacherError(f"{url} answered without {name!r} for each of the {B} rows", url)
        for b, (row, n) in enumerate(zip(value, counts, strict=True)):
            if not isinstance(row, list) or len(row) != n:
                got = len(row) if isinstance(row, list) else type(row).__name__
                raise RemoteTeacherError(
                    f"{url} returned {got} {name} for row {b}, which has {n} completion tokens", url
                )
            if inner is not None and any(len(v) != inner for v in row):
                raise RemoteTeacherError(f"{url} returned {name} of the wrong width for row {b}", url)
        return value

    def scatter(values: list, tail: tuple = (), dtype=torch.float32, fill=0.0) -> torch.Tensor:
        out = torch.full((B, T, *tail), fill, dtype=dtype)
        flat = [v for row in values for v in row]
        if flat:
            out[mask.cpu()] = torch.tensor(flat, dtype=dtype).reshape(-1, *tail)
        return out.to(mask.device)

    token = scatter(rows("token_logprobs", None))
    if mode == "sampled":
        return TeacherScores("sampled", token)
    values, ids = rows("topk_logprobs", k), rows("topk_ids", k)
    tail = answer.get("topk_tail_logprob")
    tail_t = None
    if tail is not None:
        tail = rows("topk_tail_logprob", None)
        tail = [[-math.inf if v is None else v for v in row] for row in tail]
        tail_t = scatter(tail, fill=-math.inf)
    return TeacherScores(
        "topk",
        token,
        topk_logprobs=scatter(values, (k,)),
        topk_ids=scatter(ids, (k,), dtype=torch.long, fill=0),
        topk_tail_logprob=tail_t,
    )


class RemoteTeacher:
    """A :class:`~odistill.core.teacher.Teacher` served over HTTP: ``odistill serve-teacher`` or vLLM.

    ``RemoteTeacher("http://gpu-box:8000", tokenizer=tok)`` asks ``/health`` for the teacher's model,
    vocabulary size and tokenizer fingerprint, and raises a :class:`ValueError` naming both sides when
    the tokenizer differs. :func:`odistill.distill` uses it like a local teacher with the sampled
    estimator (``estimator="sampled"``, one log-prob per token) or the full estimator on top-k scores
    (``teacher_top_k=k``).

    Args:
        url: the server's base URL (``http://host:port``; ``https://`` works too).
        tokenizer: the student's tokenizer, checked against the server's now (also by
            :func:`odistill.distill` through :meth:`check_tokenizer`).
        api_key: sent as ``Authorization: Bearer …`` (``odistill serve-teacher --api-key``, or vLLM's
            ``--api-key``).
        protocol: ``"odistill"`` or ``"vllm"`` (see the module docstring).
        model: the model name a vLLM server serves (default: the one it lists on ``/v1/models``).
        vocab_size: the number of log-probs per position. Reported by an odistill server; for vLLM
            the default is ``len(tokenizer)``.
        timeout: seconds to wait for one answer before the attempt counts as failed.
        retries: attempts after the first one for a transient failure (connection refused or reset,
            timeout, HTTP 502/503/504), waiting ``backoff · 2^i`` seconds (at most ``max_backoff``)
            between them; then :class:`TeacherUnavailableError`.
        backoff, max_backoff: see ``retries``.
        max_rows: send at most this many rows per request (default: the whole batch in one).

    Attributes:
        vocab_size: see above (after :meth:`restrict_vocab`, the restricted size).
        served_vocab_size: the server's own.
        model: the served model's name.
        bytes_sent: the bytes of the HTTP request bodies so far (for the bytes-per-step benchmark).
        bytes_received: the bytes of the response bodies so far.
        requests: the number of scoring requests.
    """

    modes = REMOTE_MODES

    def __init__(
        self,
        url: str,
        *,
        tokenizer=None,
        api_key: str | None = None,
        protocol: str = "odistill",
        model: str | None = None,
        vocab_size: int | None = None,
        timeout: float = 60.0,
        retries: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        max_rows: int | None = None,
    ):
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url must look like http://host:port, got {url!r}")
        if timeout <= 0 or retries < 0 or backoff < 0 or max_backoff < 0:
            raise ValueError("timeout must be > 0 and retries, backoff, max_backoff >= 0")
        if max_rows is not None and max_rows < 1:
            raise ValueError(f"max_rows must be >= 1 or None, got {max_rows}")
        self.url = url.rstrip("/")
        self._parts = parts
        self._base_path = parts.path.rstrip("/")
        self.api_key, self.protocol, self.timeout = api_key, protocol, timeout
        self.retries, self.backoff, self.max_backoff, self.max_rows = retries, backoff, max_backoff, max_rows
        self.bytes_sent = self.bytes_received = self.requests = 0
        self._local = threading.local()
        self._counter_lock = threading.Lock()
        if protocol == "odistill":
            self.info = self._call("GET", "/health", None, what="GET /health")
            size = self.info.get("vocab_size")
            if not isinstance(size, int) or size < 1:
                raise RemoteTeacherError(f"{self.url}/health reported no vocab_size: {self.info}", self.url)
            if vocab_size is not None and vocab_size != size:
                raise ValueError(f"vocab_size={vocab_size} was given, but {self.url} serves V={size}")
            self.vocab_size, self.model = size, model or self.info.get("model")
            self.served_vocab_size = size
        else:
            self.info = self._call("GET", "/v1/models", None, what="GET /v1/models")
            served = [m.get("id") for m in self.info.get("data", []) if isinstance(m, dict)]
            if model is None:
                if len(served) != 1:
                    raise ValueError(
                        f"{self.url} serves {served}: pass model= to say which one is the teacher"
                    )
                model = served[0]
            elif served and model not in served:
                raise ValueError(f"{self.url} does not serve {model!r}; it serves {served}")
            if vocab_size is None and tokenizer is None:
                raise ValueError("a vLLM teacher needs vocab_size= or tokenizer= (vLLM does not report it)")
            self.vocab_size, self.model = vocab_size or len(tokenizer), model
            self.served_vocab_size = self.vocab_size
        if tokenizer is not None:
            self.check_tokenizer(tokenizer)

    def __repr__(self) -> str:
        return (
            f"RemoteTeacher({self.url!r}, protocol={self.protocol!r}, model={self.model!r}, "
            f"V={self.vocab_size})"
        )

    # -- the Teacher seam --------------------------------------------------------------------------

    def restrict_vocab(self, size: int) -> RemoteTeacher:
        """Score over the first ``size`` logits only, the vocabulary student and teacher share when one of
        them pads its LM head (e.g. 151936 vs 152064 rows for one Qwen tokenizer), as the local teacher
        does with ``TeacherScorer(vocab_size=…)``: log-probs normalised over those ``size`` logits, top-k
        among them. :func:`odistill.distill` calls it; returns the teacher itself (changed in place).

        A vLLM server normalises over its whole LM head (it cannot be told otherwise); its top-k ids at or
        beyond ``size`` are dropped. The difference is the mass on padding rows, which trained models
        leave near zero."""
        if not isinstance(size, int) or not 1 <= size <= self.served_vocab_size:
            raise ValueError(f"size must be an integer in [1, {self.served_vocab_size}], got {size!r}")
        self.vocab_size = size
        return self

    def check_tokenizer(self, tokenizer) -> None:
        """Raise a :class:`ValueError` unless the server's teacher uses ``tokenizer``'s token ids."""
        if self.protocol == "odistill":
            theirs, ours = self.info.get("tokenizer"), tokenizer_fingerprint(tokenizer)
            if theirs != ours:
                raise ValueError(
                    f"the teacher at {self.url} ({self.model}) uses another tokenizer: its fingerprint is "
                    f"{theirs}, the student's {ours} (vocabularies {self.info.get('tokenizer_size')} and "
                    f"{len(tokenizer)}). On-policy distillation compares token by token: serve a teacher "
                    "of the student's family, or load the student with the teacher's tokenizer."
                )
            return
        ours = tokenizer(TOKENIZER_PROBE, add_special_tokens=False)["input_ids"]
        answer = self._call(
            "POST",
            "/tokenize",
            {"model": self.model, "prompt": TOKENIZER_PROBE, "add_special_tokens": False},
            what="POST /tokenize",
        )
        if answer.get("tokens") != ours:
            raise ValueError(
                f"the vLLM teacher at {self.url} ({self.model}) tokenizes a probe text differently from the "
                f"student's tokenizer ({answer.get('tokens')} vs {ours}): they do not share a tokenizer"
            )

    def score(self, rollouts: Rollouts, mode: str = "sampled", *, k: int | None = None) -> TeacherScores:
        """The teacher's scores of every counted completion token, on the rollouts' device."""
        if mode not in REMOTE_MODES:
            raise ValueError(
                f"a remote teacher returns {REMOTE_MODES} scores, not {mode!r}: use the sampled estimator "
                "(estimator='sampled'), or the full estimator on the teacher's top k (teacher_top_k=k)"
            )
        if mode == "topk" and not (isinstance(k, int) and 1 <= k <= self.vocab_size):
            raise ValueError(f"k must be an integer in [1, V={self.vocab_size}] for mode='topk', got {k!r}")
        step = self.max_rows or len(rollouts)
        parts = [self._score_rows(rollouts.rows(a, a + step), mode, k) for a in range(0, len(rollouts), step)]
        return parts[0] if len(parts) == 1 else TeacherScores.cat(parts)

    __call__ = score

    def _score_rows(self, rollouts: Rollouts, mode: str, k: int | None) -> TeacherScores:
        sequences, starts = encode_rollouts(rollouts)
        if self.protocol == "odistill":
            body = {"sequences": sequences, "completion_starts": starts, "mode": mode}
            if mode == "topk":
                body["k"] = k
            if self.vocab_size != self.served_vocab_size:
                body["vocab_size"] = self.vocab_size
            answer = self._call("POST", "/v1/score", body, what="POST /v1/score")
        else:
            answer = self._vllm_score(sequences, starts, mode, k)
        return decode_scores(answer, rollouts, mode, k, url=self.url)

    # -- vLLM: /v1/completions with prompt_logprobs ------------------------------------------------

    def _vllm_score(self, sequences, starts, mode: str, k: int | None) -> dict:
        """A ``/v1/score``-shaped answer from vLLM's ``prompt_logprobs`` (a dict per prompt position,
        keyed by token id, holding the prompt token and the top ``prompt_logprobs`` tokens)."""
        body = {
            "model": self.model,
            "prompt": sequences,
            "max_tokens": 1,
            "temperature": 1.0,
            "prompt_logprobs": k if mode == "topk" else 0,
        }
        answer = self._call("POST", "/v1/completions", body, what="POST /v1/completions")
        choices = sorted(answer.get("choices", []), key=lambda c: c.get("index", 0))
        if len(choices) != len(sequences):
            raise RemoteTeacherError(
                f"{self.url} answered {len(choices)} choices for {len(sequences)} prompts", self.url
            )
        out = {"token_logprobs": [], "topk_logprobs": [], "topk_ids": []}
        for b, (choice, seq, start) in enumerate(zip(choices, sequences, starts, strict=True)):
            positions = choice.get("prompt_logprobs")
            if not isinstance(positions, list) or len(positions) != len(seq):
                raise RemoteTeacherError(
                    f"{self.url} returned no prompt_logprobs of length {len(seq)} for row {b} "
                    "(is this a vLLM "
                    "server with prompt_logprobs support?)",
                    self.url,
                )
            token_row, values_row, ids_row = [], [], []
            for t in range(start, len(seq)):
                entry = {int(tid): v for tid, v in (positions[t] or {}).items()}
                if seq[t] not in entry:
                    raise RemoteTeacherError(
                        f"{self.url} omitted the prompt token at row {b}, position {t}", self.url
                    )
                token_row.append(float(entry[seq[t]]["logprob"]))
                if mode == "topk":
                    ranked = sorted(
                        (
                            (v.get("rank", 0), tid, float(v["logprob"]))
                            for tid, v in entry.items()
                            if v.get("rank", 0) >= 1 and tid < self.vocab_size
                        ),
                        key=lambda r: (r[0], -r[2]),
                    )[:k]
                    if len(ranked) < k:
                        raise RemoteTeacherError(
                            f"{self.url} returned {len(ranked)} ranked log-probs at row {b}, position {t}, "
                            f"not k={k}: "
                            f"start vLLM with --max-logprobs {k} or more",
                            self.url,
                        )
                    values_row.append([r[2] for r in ranked])
                    ids_row.append([r[1] for r in ranked])
            out["token_logprobs"].append(token_row)
            out["topk_logprobs"].append(values_row)
            out["topk_ids"].append(ids_row)
        return out  # no tail: the loss derives it from the top k (vLLM does not report it)

    # -- HTTP with retries ---------------------------------------------------------------------------

    def _connection(self, fresh: bool = False) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None or fresh:
            if conn is not None:
                conn.close()
            cls = http.client.HTTPSConnection if self._parts.scheme == "https" else http.client.HTTPConnection
            conn = cls(self._parts.hostname, self._parts.port, timeout=self.timeout)
            self._local.conn = conn
        return conn

    def close(self) -> None:
        """Close this thread's connection (a new one opens on the next request)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def _call(self, method: str, path: str, body: dict | None, *, what: str) -> dict:
        """One JSON request, retried on transient failures; the decoded JSON answer."""
        payload = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        headers = {"Accept": "application/json"}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        started, failures = time.monotonic(), []
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(self.backoff * 2 ** (attempt - 1), self.max_backoff))
            try:
                conn = self._connection(fresh=attempt > 0)
                conn.request(method, self._base_path + path, body=payload, headers=headers)
                response = conn.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException) as err:  # refused, reset, timed out, closed
                self.close()
                failures.append(f"{type(err).__name__}: {err}")
                continue
            if response.status in RETRY_STATUSES:
                failures.append(f"HTTP {response.status}")
                continue
            with self._counter_lock:
                self.bytes_sent += len(payload or b"")
                self.bytes_received += len(data)
                self.requests += path not in ("/health", "/v1/models", "/tokenize")
            return self._decode(response.status, data, what)
        raise TeacherUnavailableError(
            f"the teacher at {self.url} did not answer {what}: {len(failures)} attempts over "
            f"{time.monotonic() - started:.1f} s failed (last: {failures[-1]}). Check that the server is "
            "running (odistill serve-teacher …) and reachable from here; a run with an output_dir saved "
            "its last finished step and continues with resume_from / --resume.",
            self.url,
        )

    def _decode(self, status: int, data: bytes, what: str) -> dict:
        try:
            answer = json.loads(data) if data else {}
        except ValueError:
            answer = None
        if status == 401:
            raise RemoteTeacherError(
                f"the teacher at {self.url} refused {what} (HTTP 401): "
                + (
                    "the API key is wrong"
                    if self.api_key
                    else "it needs an API key (api_key= / --teacher-api-key)"
                ),
                self.url,
                status,
            )
        if status >= 400 or not isinstance(answer, dict):
            detail = (
                answer.get("error", answer)
                if isinstance(answer, dict)
                else data[:300].decode(errors="replace")
            )
            raise RemoteTeacherError(
                f"the teacher at {self.url} rejected {what} (HTTP {status}): {detail}", self.url, status
            )
        return answer
