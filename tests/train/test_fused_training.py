"""The fused LM-head path: hidden states + LM-head weights instead of logits, same numbers as the logits
path."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_llama

from odistill import ConfigError, DistillConfig, distill
from odistill.core.divergences import generalized_jsd
from odistill.core.forward import completion_hidden, completion_logits, lm_head_of
from odistill.core.fused import fused_linear_divergence
from odistill.core.loss import distillation_loss
from odistill.core.sampler import sample
from odistill.core.teacher import TeacherScorer

DATA = [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a in range(20) for b in range(20)]
PROMPTS = ["12+3=", "4+56=", "789+1=", "0+0="]


def _pair(tok):
    student = make_tiny_llama(len(tok), seed=0)
    teacher = make_tiny_llama(len(tok), seed=1, hidden=48)
    with torch.no_grad():
        teacher.lm_head.weight.mul_(6.0)
    return student, teacher


def test_lm_head_of_completion_hidden_is_completion_logits(char_tokenizer):
    student, _ = _pair(char_tokenizer)
    r = sample(student, char_tokenizer, PROMPTS, n=2, max_new_tokens=5, seed=0)  # left-padded prompts
    with torch.no_grad():
        hidden = completion_hidden(student, r)
        logits = completion_logits(student, r)
    weight, bias = lm_head_of(student)
    assert hidden.shape == (*logits.shape[:2], student.config.hidden_size)
    assert torch.allclose(torch.nn.functional.linear(hidden, weight, bias), logits, atol=1e-5)


def test_hidden_teacher_scores_and_errors(char_tokenizer):
    student, teacher = _pair(char_tokenizer)
    r = sample(student, char_tokenizer, PROMPTS, max_new_tokens=4, seed=1)
    scores = TeacherScorer(teacher, mode="hidden", micro_batch_size=3)(r)  # two micro-batches, concatenated
    assert scores.token_logprobs is None and scores.logprobs is None
    w, b = TeacherScorer(teacher, mode="hidden").lm_head()
    with torch.no_grad():
        want = completion_logits(teacher, r)
    assert torch.allclose(torch.nn.functional.linear(scores.hidden, w, b), want, atol=1e-5)
    with pytest.raises(ValueError, match="'hidden' mode hold the teacher's hidden states"):
        distillation_loss(torch.zeros(*want.shape), scores, r.completion_mask)
    capped = make_tiny_llama(len(char_tokenizer), seed=2)
    capped.config.final_logit_softcapping = 30.0
    with pytest.raises(ValueError, match="final_logit_softcapping=30.0"):
        TeacherScorer(capped, mode="hidden")


def test_fused_token_logprobs_are_the_models_own_at_temperature_one():
    torch.manual_seed(0)
    hs, ws = torch.randn(2, 5, 8, requires_grad=True), torch.randn(30, 8, requires_grad=True)
    ht, wt = torch.randn(2, 5, 12), torch.randn(30, 12)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    ids = torch.randint(0, 30, (2, 5))
    loss, lp_s, lp_t = fused_linear_divergence(
        "jsd", hs, ws, ht, wt, mask, weight=0.3, temperature=2.0, token_ids=ids, chunk_size=3
    )
    ref = generalized_jsd(hs @ ws.T, ht @ wt.T, mask, beta=0.3, temperature=2.0)
    assert torch.allclose(loss, ref, atol=1e-6)
    for lp, logits in ((lp_s, hs @ ws.T), (lp_t, ht @ wt.T)):
        want = torch.log_softmax(logits.double(), -1).gather(-1, ids[..., None]).squeeze(-1) * mask
        assert torch.allclose(lp.double(), want, atol=1e-5)
        assert not lp.requires_grad
    loss.backward()  # the by-products do not get in the way of the gradient
    (g,) = torch.autograd.grad(generalized_jsd(hs @ ws.T, ht @ wt.T, mask, beta=0.3, temperature=2.0), ws)
    assert torch.allclose(ws.grad, g, atol=1e-5)
    with pytest.raises(ValueError, match="one token id per position"):
        fused_linear_divergence("reverse_kl", hs, ws, ht, wt, mask, token_ids=ids[:, :3])
    with pytest.raises(ValueError, match=r"token_ids must lie in \[0, V=30\)"):
        fused_linear_divergence("reverse_kl", hs, ws, ht, wt, mask, token_ids=ids + 30)


@pytest.mark.parametrize(
    "kw",
    [
        dict(lmbda=1.0, beta=1.0),
        dict(lmbda=1.0, beta=0.5, loss_temperature=2.0),
        dict(lmbda=0.0, beta=0.0),
        dict(lmbda=1.0, divergence="forward_kl"),
        dict(lmbda=1.0, divergence="skew_reverse_kl", skew_alpha=0.2),
        dict(lmbda=0.0, divergence="skew_forward_kl", skew_alpha=0.1),
        dict(lmbda=1.0, divergence="total_variation"),
    ],
)
def test_distill_fused_matches_the_logits_path(char_tokenizer, kw):
    """Same seed, same batches: the fused run ends with the same weights and the same per-step numbers."""
    runs = []
    for fused in (False, True):
        student, teacher = _pair(char_tokenizer)
        cfg = DistillConfig(
            steps=4, batch_size=8, max_new_tokens=5, lr=1e-2, progress=False, fused_lm_head=fused, **kw
        )
        result = distill(student, teacher, char_tokenizer, DATA, cfg)
        runs.append(result)
    plain, fused = runs
    for a, b in zip(plain.history, fused.history, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-6)
        assert a["reverse_kl"] == pytest.approx(b["reverse_kl"], rel=1e-4, abs=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-3)
    for p, q in zip(plain.student.parameters(), fused.student.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-4)
    # and training did something (the comparison is not between two untouched models)
    fresh, _ = _pair(char_tokenizer)
    assert not torch.allclose(next(fresh.parameters()), next(fused.student.parameters()))


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(fused_lm_head=True, estimator="sampled"), "does not combine with estimator='sampled'"),
        (
            dict(fused_lm_head=True, teacher_top_k=4),
            "does not combine with estimator='sampled' or teacher_top_k",
        ),
        (dict(fused_lm_head="yes"), "fused_lm_head must be True or False"),
    ],
)
def test_fused_config_errors(kw, message):
    with pytest.raises(ConfigError, match=message):
        DistillConfig(**kw)


def test_fused_refuses_a_student_with_transformed_logits(char_tokenizer):
    student, teacher = _pair(char_tokenizer)
    student.config.logit_scale = 0.5
    with pytest.raises(ValueError, match="logit_scale=0.5"):
        distill(
            student,
            teacher,
            char_tokenizer,
            DATA,
            DistillConfig(steps=1, batch_size=4, progress=False, fused_lm_head=True),
        )
