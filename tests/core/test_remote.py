"""The remote teacher's client without odistill's server: the wire encoding of rollouts, decoding an
answer back into TeacherScores, argument checks, and retries against a stdlib HTTP server that fails
on purpose (503s, a dropped connection, a slow answer)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from odistill.core.remote import (
    RemoteTeacher,
    RemoteTeacherError,
    TeacherUnavailableError,
    decode_scores,
    encode_rollouts,
)
from odistill.core.rollouts import rollouts_from_text


@pytest.fixture()
def rollouts(char_tokenizer):
    return rollouts_from_text(char_tokenizer, ["1+2=", "12+3=", "9="], ["3", "15", ""])


def test_encode_sends_real_prompt_tokens_then_counted_completion_tokens(rollouts, char_tokenizer):
    sequences, starts = encode_rollouts(rollouts)
    for b, (seq, start) in enumerate(zip(sequences, starts, strict=True)):
        prompt = rollouts.input_ids[b, : rollouts.prompt_width][
            rollouts.attention_mask[b, : rollouts.prompt_width].bool()
        ]
        completion = rollouts.completion_ids[b][rollouts.completion_mask[b]]
        assert seq[:start] == prompt.tolist() and seq[start:] == completion.tolist()
    assert [len(s) - a for s, a in zip(sequences, starts, strict=True)] == rollouts.completion_mask.sum(
        -1
    ).tolist()
    assert char_tokenizer.pad_token_id not in [t for s in sequences for t in s[1:]]  # no padding travels


def test_decode_scatters_rows_to_their_positions(rollouts):
    counts = rollouts.completion_mask.sum(-1).tolist()
    answer = {"token_logprobs": [[-(b + 1) - 0.1 * t for t in range(n)] for b, n in enumerate(counts)]}
    scores = decode_scores(answer, rollouts, "sampled", None)
    mask = rollouts.completion_mask
    for b in range(len(counts)):
        assert scores.token_logprobs[b][mask[b]].tolist() == pytest.approx(answer["token_logprobs"][b])
    assert (scores.token_logprobs[~mask] == 0).all()
    k = 2
    answer.update(
        topk_logprobs=[[[-0.5, -1.5]] * n for n in counts],
        topk_ids=[[[3, 4]] * n for n in counts],
        topk_tail_logprob=[[None] * n for n in counts],
    )
    top = decode_scores(answer, rollouts, "topk", k)
    assert top.topk_logprobs.shape == (*mask.shape, k) and top.topk_ids.dtype == torch.long
    assert torch.isneginf(top.topk_tail_logprob[mask]).all()  # null = no mass outside the top k


def test_decode_refuses_an_answer_that_does_not_fit(rollouts):
    counts = rollouts.completion_mask.sum(-1).tolist()
    with pytest.raises(RemoteTeacherError, match="for each of the 3 rows"):
        decode_scores({"token_logprobs": [[0.0]]}, rollouts, "sampled", None)
    wrong = [[0.0] * (n + 1) for n in counts]
    with pytest.raises(RemoteTeacherError, match="row 0, which has"):
        decode_scores({"token_logprobs": wrong}, rollouts, "sampled", None)


class Flaky(BaseHTTPRequestHandler):
    """/health answers after ``fail`` failures of the configured kind."""

    plan: list = []
    calls = 0

    def log_message(self, *args):
        pass

    def do_GET(self):
        type(self).calls += 1
        action = self.plan.pop(0) if self.plan else "ok"
        if action == "drop":
            self.connection.close()
            return
        status = 503 if action == "503" else 400 if action == "400" else 200
        body = (
            {"status": "ok", "model": "m", "vocab_size": 12, "tokenizer": "x"}
            if status == 200
            else {"error": "bad thing"}
        )
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture()
def flaky():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Flaky.calls = 0
    yield server, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_transient_failures_are_retried(flaky):
    _, url = flaky
    Flaky.plan = ["503", "drop", "503"]
    teacher = RemoteTeacher(url, retries=3, backoff=0.01)
    assert teacher.vocab_size == 12 and Flaky.calls == 4


def test_a_server_that_keeps_failing_raises_teacher_unavailable(flaky):
    _, url = flaky
    Flaky.plan = ["503"] * 10
    with pytest.raises(TeacherUnavailableError, match=r"3 attempts .* \(last: HTTP 503\)"):
        RemoteTeacher(url, retries=2, backoff=0.01)


def test_a_rejected_request_is_not_retried(flaky):
    _, url = flaky
    Flaky.plan = ["400"]
    with pytest.raises(RemoteTeacherError, match="HTTP 400.*bad thing") as info:
        RemoteTeacher(url, retries=5, backoff=0.01)
    assert info.value.status == 400 and Flaky.calls == 1


def test_arguments_are_checked(flaky):
    _, url = flaky
    with pytest.raises(ValueError, match="http://host:port"):
        RemoteTeacher("localhost:8000")
    with pytest.raises(ValueError, match="protocol must be one of"):
        RemoteTeacher(url, protocol="tinker")
    with pytest.raises(ValueError, match="vocab_size=13 was given"):
        RemoteTeacher(url, vocab_size=13)
    teacher = RemoteTeacher(url)
    with pytest.raises(ValueError, match="estimator='sampled'"):
        teacher.score(None, "full")
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, V=12\]"):
        teacher.score(None, "topk", k=13)
