"""RemoteTeacher(protocol="vllm") against a stand-in for vLLM's OpenAI-compatible server.

The stand-in answers ``/v1/models``, ``/tokenize`` and ``/v1/completions`` with ``prompt_logprobs`` in
vLLM's documented shape (per prompt position: None for the first token, then a dict keyed by token id
holding the prompt token and the top ``prompt_logprobs`` tokens, each with ``logprob``, ``rank`` and
``decoded_token``), computed here from one unpadded forward pass per sequence — an independent reference
for the client's parsing. A real vLLM server is exercised by ``scripts/gpu_check.sh`` on a GPU machine."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("starlette")

from serving import rollouts_of, running  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402

from odistill.core.remote import RemoteTeacher, RemoteTeacherError  # noqa: E402
from odistill.core.teacher import TeacherScorer  # noqa: E402


def fake_vllm(teacher, tokenizer, *, name="org/teacher", max_logprobs=5):
    seen = {"bodies": []}

    async def models_route(request: Request):
        return JSONResponse({"object": "list", "data": [{"id": name, "object": "model"}]})

    async def tokenize(request: Request):
        body = await request.json()
        ids = tokenizer(body["prompt"], add_special_tokens=body.get("add_special_tokens", True))["input_ids"]
        return JSONResponse({"tokens": ids, "count": len(ids), "max_model_len": 128})

    async def completions(request: Request):
        body = json.loads(await request.body())
        seen["bodies"].append(body)
        k = body["prompt_logprobs"]
        if k > max_logprobs:
            return JSONResponse(
                {"error": {"message": f"Requested prompt logprobs of {k}, max {max_logprobs}"}}, 400
            )
        choices = []
        for index, seq in enumerate(body["prompt"]):
            with torch.no_grad():
                logits = teacher(torch.tensor([seq])).logits[0].double()
            logprobs = torch.log_softmax(logits, -1)
            positions = [None]
            for t in range(1, len(seq)):
                row = logprobs[t - 1]
                order = torch.argsort(row, descending=True).tolist()
                entry = {
                    str(tid): {"logprob": row[tid].item(), "rank": r + 1, "decoded_token": "?"}
                    for r, tid in enumerate(order[:k])
                }
                entry[str(seq[t])] = {
                    "logprob": row[seq[t]].item(),
                    "rank": order.index(seq[t]) + 1,
                    "decoded_token": "?",
                }
                positions.append(entry)
            choices.append(
                {"index": index, "text": "x", "prompt_logprobs": positions, "finish_reason": "length"}
            )
        return JSONResponse(
            {"object": "text_completion", "model": name, "choices": choices[::-1]}
        )  # any order

    routes = [
        Route("/v1/models", models_route, methods=["GET"]),
        Route("/tokenize", tokenize, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
    ]
    return Starlette(routes=routes), seen


@pytest.fixture(scope="module")
def vllm(addition_models):
    _, teacher, tokenizer = addition_models
    app, seen = fake_vllm(teacher, tokenizer)
    with running(app) as url:
        yield url, seen


@pytest.mark.parametrize("mode,k", [("sampled", None), ("topk", 4)])
def test_vllm_prompt_logprobs_give_the_local_scores(vllm, addition_models, mode, k):
    url, seen = vllm
    _, teacher, tokenizer = addition_models
    remote = RemoteTeacher(url, protocol="vllm", tokenizer=tokenizer)
    assert remote.model == "org/teacher" and remote.vocab_size == len(tokenizer)
    rollouts = rollouts_of(addition_models)
    local = TeacherScorer(teacher).score(rollouts, mode, k=k)
    scores = remote.score(rollouts, mode, k=k)
    body = seen["bodies"][-1]
    assert body["max_tokens"] == 1 and body["prompt_logprobs"] == (k if mode == "topk" else 0)
    mask = rollouts.completion_mask
    assert torch.allclose(scores.token_logprobs, local.token_logprobs, atol=1e-5, rtol=0)
    if mode == "topk":
        assert torch.equal(scores.topk_ids[mask], local.topk_ids[mask])
        assert torch.allclose(scores.topk_logprobs[mask], local.topk_logprobs[mask], atol=1e-5, rtol=0)
        assert scores.topk_tail_logprob is None  # vLLM does not report it: the loss derives it


def test_vllm_errors_are_clear(vllm, addition_models):
    url, _ = vllm
    _, _, tokenizer = addition_models
    with pytest.raises(ValueError, match="does not serve 'other/model'"):
        RemoteTeacher(url, protocol="vllm", model="other/model", tokenizer=tokenizer)
    with pytest.raises(ValueError, match="vocab_size= or tokenizer="):
        RemoteTeacher(url, protocol="vllm")
    remote = RemoteTeacher(url, protocol="vllm", tokenizer=tokenizer)
    with pytest.raises(RemoteTeacherError, match="HTTP 400.*max 5"):
        remote.score(rollouts_of(addition_models, n=2), "topk", k=6)


def test_a_vllm_teacher_with_another_tokenizer_is_refused(vllm, addition_models):
    url, _ = vllm
    _, _, tokenizer = addition_models

    class Shifted:  # ids off by one from the server's
        def __call__(self, text, add_special_tokens=True):
            return {
                "input_ids": [
                    i + 1 for i in tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]
                ]
            }

        def __len__(self):
            return len(tokenizer)

    with pytest.raises(ValueError, match="tokenizes a probe text differently"):
        RemoteTeacher(url, protocol="vllm", tokenizer=Shifted())
