"""The teacher server and its client with real HTTP on 127.0.0.1: the same scores and the same training
as a local teacher, clear 4xx errors for bad requests, micro-batching of concurrent clients, API keys,
and a server that dies mid-run (a checkpoint, then a resumed run that matches an uninterrupted one)."""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
import torch

pytest.importorskip("uvicorn")
pytest.importorskip("starlette")


from conftest import run_two_processes  # noqa: E402
from serving import TASK, free_port, post, rollouts_of, running  # noqa: E402

from odistill import DistillConfig, distill, load_model  # noqa: E402
from odistill.core.remote import (  # noqa: E402
    RemoteTeacher,
    RemoteTeacherError,
    TeacherUnavailableError,
    tokenizer_fingerprint,
)
from odistill.core.rollouts import rollouts_from_text  # noqa: E402
from odistill.core.sampler import sample  # noqa: E402
from odistill.core.teacher import TeacherScorer  # noqa: E402
from odistill.serve import ScoringEngine, create_app  # noqa: E402
from odistill.train.config import ConfigError  # noqa: E402


@pytest.fixture(scope="module")
def engine(addition_models):
    _, teacher, tokenizer = addition_models
    # a small budget: a batch of rollouts is scored in several forward passes
    engine = ScoringEngine(teacher, tokenizer, name="addition-teacher", max_batch_tokens=256)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def url(engine):
    with running(create_app(engine, max_request_bytes=2**20)) as base:
        yield base


# -- the same scores --------------------------------------------------------------------------------


def test_health_reports_model_vocabulary_and_tokenizer(url, addition_models):
    _, teacher, tokenizer = addition_models
    remote = RemoteTeacher(url, tokenizer=tokenizer)
    assert remote.vocab_size == teacher.config.vocab_size
    assert remote.info["tokenizer"] == tokenizer_fingerprint(tokenizer)
    assert remote.model == "addition-teacher" and remote.info["max_batch_tokens"] == 256


@pytest.mark.parametrize("mode,k", [("sampled", None), ("topk", 1), ("topk", 5)])
def test_remote_scores_equal_the_local_teacher(url, addition_models, mode, k):
    _, teacher, tokenizer = addition_models
    rollouts = rollouts_of(addition_models)
    assert rollouts.prompt_lengths.unique().numel() > 1  # rows of different widths (left padding)
    assert rollouts.completion_mask.sum(-1).unique().numel() > 1
    local = TeacherScorer(teacher).score(rollouts, mode, k=k)
    remote = RemoteTeacher(url, tokenizer=tokenizer).score(rollouts, mode, k=k)
    mask = rollouts.completion_mask
    assert torch.allclose(remote.token_logprobs, local.token_logprobs, atol=1e-5, rtol=0)
    assert (remote.token_logprobs[~mask] == 0).all()
    if mode == "topk":
        assert torch.equal(remote.topk_ids[mask], local.topk_ids[mask])
        assert torch.allclose(remote.topk_logprobs[mask], local.topk_logprobs[mask], atol=1e-5, rtol=0)
        assert torch.allclose(
            remote.topk_tail_logprob[mask], local.topk_tail_logprob[mask], atol=1e-5, rtol=0
        )


def test_dataset_rollouts_and_split_requests(url, addition_models):
    """Off-policy (dataset) rollouts with completions of different lengths score the same, and so does
    a batch sent in pieces (max_rows)."""
    _, teacher, tokenizer = addition_models
    data = TASK.make_dataset(9, seed=3)
    completions = [r["answer"][: 1 + i % 4] for i, r in enumerate(data)]
    rollouts = rollouts_from_text(tokenizer, [r["prompt"] for r in data], completions)
    assert rollouts.completion_mask.sum(-1).unique().numel() > 1
    local = TeacherScorer(teacher).score(rollouts, "sampled")
    remote = RemoteTeacher(url, tokenizer=tokenizer, max_rows=4)
    before = remote.requests
    scores = remote.score(rollouts, "sampled")
    assert remote.requests - before == 3  # 4 + 4 + 1 rows
    assert torch.allclose(scores.token_logprobs, local.token_logprobs, atol=1e-5, rtol=0)


def test_concurrent_clients_each_get_their_own_scores(url, engine, addition_models):
    """Two clients (threads, one connection each) send requests at once; the server batches them
    together, and every answer is the local teacher's for that client's own rollouts."""
    _, teacher, tokenizer = addition_models
    batches = [rollouts_of(addition_models, n=6, seed=s) for s in range(8)]
    expected = [TeacherScorer(teacher).score(r, "sampled").token_logprobs for r in batches]
    clients = [RemoteTeacher(url, tokenizer=tokenizer) for _ in range(2)]
    served = dict(engine.served)

    def work(i):
        return clients[i % 2].score(batches[i], "sampled").token_logprobs

    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(work, range(len(batches))))
    for g, e in zip(got, expected, strict=True):
        assert torch.allclose(g, e, atol=1e-5, rtol=0)
    assert engine.served["requests"] - served["requests"] == len(batches)
    assert engine.served["rows"] - served["rows"] == sum(len(r) for r in batches)


# -- the same training ------------------------------------------------------------------------------


def config_for(**overrides) -> DistillConfig:
    base = DistillConfig(
        steps=4,
        batch_size=8,
        lmbda=1.0,
        beta=1.0,
        max_new_tokens=TASK.max_new_tokens,
        lr=1e-3,
        seed=5,
        progress=False,
        threads=1,
    )
    return replace(base, **overrides)


def fresh_student():
    student, _ = load_model("addition-student")
    return student


@pytest.mark.parametrize(
    "overrides",
    [dict(estimator="sampled"), dict(teacher_top_k=4, lmbda=0.5)],
    ids=["sampled", "topk-full-estimator"],
)
def test_distill_with_a_remote_teacher_gives_the_local_losses(url, addition_models, overrides):
    _, teacher, tokenizer = addition_models
    data = TASK.make_dataset(200, seed=0)
    config = config_for(**overrides)
    local = distill(fresh_student(), teacher, tokenizer, data, config)
    remote = distill(fresh_student(), RemoteTeacher(url, tokenizer=tokenizer), tokenizer, data, config)
    for a, b in zip(local.history, remote.history, strict=True):
        assert a["source"] == b["source"]
        assert math.isclose(a["loss"], b["loss"], abs_tol=1e-5), (a, b)
        assert math.isclose(a["reverse_kl"], b["reverse_kl"], abs_tol=1e-5)


def test_a_config_that_needs_full_scores_is_refused_before_training(url, addition_models):
    _, _, tokenizer = addition_models
    with pytest.raises(ConfigError, match="teacher_top_k"):
        distill(
            fresh_student(),
            RemoteTeacher(url, tokenizer=tokenizer),
            tokenizer,
            TASK.make_dataset(50, seed=0),
            config_for(steps=1),
        )


def test_another_tokenizer_is_refused(url, addition_models):
    _, _, tokenizer = addition_models

    class Renamed:  # the same size, one token renamed: other ids for some strings
        def __init__(self, tok):
            self.tok = tok
            for name in ("bos", "eos", "pad", "unk"):
                setattr(self, f"{name}_token_id", getattr(tok, f"{name}_token_id", None))

        def get_vocab(self):
            vocab = dict(self.tok.get_vocab())
            token = next(iter(vocab))
            vocab[token + "x"] = vocab.pop(token)
            return vocab

        def __len__(self):
            return len(self.tok)

    with pytest.raises(ValueError, match="uses another tokenizer"):
        RemoteTeacher(url, tokenizer=Renamed(tokenizer))


# -- bad requests: 4xx with a message, and the server keeps serving --------------------------------


@pytest.mark.parametrize(
    "body,status,words",
    [
        (None, 400, "not JSON"),
        ([1, 2], 422, "JSON object"),
        ({"sequences": [[1, 2, 3]]}, 422, "completion_starts"),
        ({"sequences": "abc", "completion_starts": [1]}, 422, "non-empty list"),
        ({"sequences": [[1, "a", 3]], "completion_starts": [1]}, 422, "sequences[0][1]"),
        ({"sequences": [[1, 2, 9999]], "completion_starts": [1]}, 422, "outside the vocabulary"),
        ({"sequences": [[1, -1]], "completion_starts": [1]}, 422, "outside the vocabulary"),
        ({"sequences": [[1, 2, 3]], "completion_starts": [4]}, 422, "lies outside sequence 0"),
        ({"sequences": [[1, 2, 3]], "completion_starts": [0]}, 422, "no prediction"),
        ({"sequences": [[1, 2, 3]], "completion_starts": [1.5]}, 422, "completion_starts[0]"),
        ({"sequences": [[1, 2, 3]], "completion_starts": [1], "mode": "full"}, 422, "mode must be"),
        ({"sequences": [[1, 2, 3]], "completion_starts": [1], "mode": "topk"}, 422, "integer k"),
        ({"sequences": [[1, 2, 3]], "completion_starts": [1], "mode": "topk", "k": 10**6}, 422, "integer k"),
        ({"sequences": [[1, 2, 3]], "completion_starts": [1], "extra": 1}, 422, "unknown fields"),
        ({"sequences": [[1] * 200], "completion_starts": [1]}, 422, "context of 128"),
    ],
)
def test_malformed_requests_get_a_4xx_that_says_what_was_wrong(url, body, status, words):
    got, answer = post(url, "/v1/score", body, raw=b"{not json" if body is None else None)
    assert got == status and words in answer["error"], answer
    health = RemoteTeacher(url)._call("GET", "/health", None, what="health")  # still serving
    assert health["status"] == "ok"


def test_oversized_requests_get_413(url, addition_models):
    _, teacher, tokenizer = addition_models
    got, answer = post(url, "/v1/score", None, raw=b" " * (2**20 + 10))
    assert got == 413 and "at most" in answer["error"]
    # a sequence longer than one forward pass may hold (a server with a budget of 8 tokens)
    small = ScoringEngine(teacher, tokenizer, max_batch_tokens=8)
    try:
        with running(create_app(small)) as small_url:
            got, answer = post(small_url, "/v1/score", {"sequences": [[1] * 9], "completion_starts": [1]})
            assert got == 413 and "--max-batch-tokens" in answer["error"]
            with pytest.raises(RemoteTeacherError, match="HTTP 413"):  # the client says so, no retry
                RemoteTeacher(small_url).score(rollouts_of(addition_models, n=2), "sampled")
    finally:
        small.close()


def test_unknown_routes_and_methods_answer_json(url):
    got, answer = post(url, "/v1/nothing", {})
    assert got == 404 and "error" in answer


def test_api_key_is_checked_on_every_request(engine, addition_models):
    _, _, tokenizer = addition_models
    with running(create_app(engine, api_key="s3cret")) as base:
        with pytest.raises(RemoteTeacherError, match="needs an API key"):
            RemoteTeacher(base)
        with pytest.raises(RemoteTeacherError, match="API key is wrong"):
            RemoteTeacher(base, api_key="wrong")
        got, _ = post(base, "/v1/score", {"sequences": [[1, 2]], "completion_starts": [1]})
        assert got == 401
        remote = RemoteTeacher(base, api_key="s3cret", tokenizer=tokenizer)
        rollouts = rollouts_of(addition_models, n=3)
        assert remote.score(rollouts, "sampled").token_logprobs.shape == rollouts.completion_mask.shape


def test_an_unreachable_server_raises_teacher_unavailable_naming_the_url():
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(TeacherUnavailableError, match=url.replace(".", r"\.")) as info:
        RemoteTeacher(url, retries=2, backoff=0.05)
    assert info.value.url == url and "3 attempts" in str(info.value)
    assert time.monotonic() - started < 10


# -- the real command, killed mid-run ----------------------------------------------------------------


def start_server(port: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "odistill", "serve-teacher", "--model", "addition-teacher"]
    proc = subprocess.Popen(
        command + ["--port", str(port), "--threads", "1"], env=env, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return proc
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("odistill serve-teacher did not start")


@pytest.mark.slow
def test_server_killed_mid_run_leaves_a_checkpoint_that_resumes_to_the_uninterrupted_numbers(
    tmp_path, addition_models
):
    _, teacher, tokenizer = addition_models
    data = TASK.make_dataset(200, seed=0)
    config = config_for(steps=6, estimator="sampled", output_dir=str(tmp_path / "run"))
    reference = distill(fresh_student(), teacher, tokenizer, data, replace(config, output_dir=None))

    port = free_port()
    server = start_server(port)
    url = f"http://127.0.0.1:{port}"
    try:

        def kill_after_step_3(row):
            if row.get("step") == 3:
                server.kill()
                server.wait()

        remote = RemoteTeacher(url, tokenizer=tokenizer, retries=2, backoff=0.05, timeout=5)
        with pytest.warns(UserWarning, match="unavailable: saved a checkpoint of step 3"):
            with pytest.raises(TeacherUnavailableError, match=f"{url}.*POST /v1/score"):
                distill(fresh_student(), remote, tokenizer, data, config, callback=kill_after_step_3)
        assert (tmp_path / "run" / "checkpoint-000003").is_dir()

        server = start_server(port)  # the server is back: --resume continues
        resumed = distill(
            fresh_student(),
            RemoteTeacher(url, tokenizer=tokenizer),
            tokenizer,
            data,
            config,
            resume_from=tmp_path / "run",
        )
    finally:
        server.kill()
        server.wait()
    assert [r["step"] for r in resumed.history if "loss" in r] == list(range(1, 7))
    for a, b in zip(reference.history, resumed.history, strict=True):
        assert math.isclose(a["loss"], b["loss"], abs_tol=1e-5), (a, b)


# -- the command line --------------------------------------------------------------------------------


def test_distill_command_with_teacher_url(url, capsys):
    from odistill.cli import main

    args = ["distill", "--task", "addition", "--estimator", "sampled", "--steps", "2", "--eval-every", "0"]
    assert main(args + ["--teacher-url", url, "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["steps"] == 2 and result["teacher_accuracy"] is None  # a served teacher is not measured
    assert result["config"]["estimator"] == "sampled"


def test_distill_command_with_an_unreachable_teacher_url_says_so(capsys):
    from odistill.cli import main

    dead = f"http://127.0.0.1:{free_port()}"
    code = main(["distill", "--task", "addition", "--steps", "1", "--teacher-url", dead, "--quiet"])
    assert code == 2 and dead in capsys.readouterr().err


def test_only_loopback_addresses_count_as_private():
    from odistill.serve.server import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("gpu-box")


@pytest.mark.slow
def test_two_torchrun_processes_share_one_server(url, engine, tmp_path):
    """Two training processes (gloo) score through one server at once: each gets its own rows right."""
    script = Path(__file__).parents[1] / "scripts" / "ddp_remote.py"
    served = dict(engine.served)
    run_two_processes(script, tmp_path, url, timeout=300)
    r0, r1 = (json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2))
    for r in (r0, r1):
        assert len(r["differences"]) == 3 and max(r["differences"]) <= 1e-5
    assert r0["fingerprint"] == r1["fingerprint"]  # in sync: the same update on both
    assert engine.served["rows"] - served["rows"] == r0["rows"] + r1["rows"]


@pytest.mark.filterwarnings("ignore:step 1.*reached max_new_tokens:RuntimeWarning")  # random models
def test_a_teacher_with_a_padded_lm_head_scores_over_the_shared_vocabulary(char_tokenizer):
    """Teacher V = 24 > student V = 16 = the tokenizer: the local teacher is cut to the first 16 logits;
    the served one must be too (distill() restricts it), or its log-probs and top-k differ."""
    from transformers import LlamaConfig, LlamaForCausalLM

    def tiny(vocab, seed):
        torch.manual_seed(seed)
        config = LlamaConfig(
            vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
            num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
            pad_token_id=0, bos_token_id=1, eos_token_id=2,
        )  # fmt: skip
        return LlamaForCausalLM(config).eval()

    tok = char_tokenizer
    student, teacher = tiny(len(tok), 0), tiny(len(tok) + 8, 1)
    engine = ScoringEngine(teacher, tok)
    data = [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a in range(10) for b in range(10)]
    config = config_for(estimator="sampled", max_new_tokens=4, steps=3)
    try:
        with running(create_app(engine)) as base:
            remote = RemoteTeacher(base, tokenizer=tok)
            assert remote.vocab_size == len(tok) + 8
            rollouts = sample(student, tok, [d["prompt"] for d in data[:6]], max_new_tokens=4, seed=0)
            local = TeacherScorer(teacher, vocab_size=len(tok))
            remote.restrict_vocab(len(tok))
            for mode, k in (("sampled", None), ("topk", 3)):
                got, want = remote.score(rollouts, mode, k=k), local.score(rollouts, mode, k=k)
                assert torch.allclose(got.token_logprobs, want.token_logprobs, atol=1e-5, rtol=0)
                if mode == "topk":
                    mask = rollouts.completion_mask
                    assert torch.equal(got.topk_ids[mask], want.topk_ids[mask])
                    assert int(got.topk_ids.max()) < len(tok)
            a = distill(copy.deepcopy(student), teacher, tok, data, config)
            b = distill(copy.deepcopy(student), RemoteTeacher(base, tokenizer=tok), tok, data, config)
    finally:
        engine.close()
    for x, y in zip(a.history, b.history, strict=True):
        assert math.isclose(x["loss"], y["loss"], abs_tol=1e-5), (x, y)
    with pytest.raises(ValueError, match=r"size must be an integer in \[1, 24\]"):
        remote.restrict_vocab(25)
