"""Numerics of both loss estimators under hostile inputs (hypothesis): extreme logits, masked vocabulary,
low precision. The result is finite, non-negative where the math says so, zero when student = teacher,
and its gradient is finite."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from odistill import distillation_loss, sampled_token_loss
from odistill.core.teacher import TeacherScores


@st.composite
def logits_pairs(draw):
    b, t, v = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(2, 9))
    n = b * t * v
    values = st.one_of(
        st.floats(-1e4, 1e4, allow_nan=False, width=32),
        st.just(float("-inf")),
        st.floats(-5, 5, allow_nan=False, width=32),
    )
    s = torch.tensor(draw(st.lists(values, min_size=n, max_size=n)), dtype=torch.float32).reshape(b, t, v)
    te = torch.tensor(draw(st.lists(values, min_size=n, max_size=n)), dtype=torch.float32).reshape(b, t, v)
    # every row keeps at least one finite logit in each model (a row of all -inf is a distribution of nothing)
    s[..., 0] = s[..., 0].clamp_min(-1e4).nan_to_num(neginf=0.0)
    te[..., 0] = te[..., 0].clamp_min(-1e4).nan_to_num(neginf=0.0)
    mask = torch.tensor(draw(st.lists(st.booleans(), min_size=b * t, max_size=b * t))).reshape(b, t)
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16, torch.float16]))
    return s.to(dtype), te.to(dtype), mask


@settings(max_examples=150, deadline=None)
@given(
    logits_pairs(), st.sampled_from(["forward_kl", "reverse_kl", "jsd"]), st.floats(0, 1), st.floats(0.25, 4)
)
def test_full_estimator_is_finite_nonnegative_with_finite_gradients(pair, divergence, beta, temperature):
    s, t, mask = pair
    s = s.clone().requires_grad_(True)
    loss = distillation_loss(s, t, mask, divergence=divergence, beta=beta, temperature=temperature)
    assert torch.isfinite(loss) and loss.item() >= -1e-4
    (grad,) = torch.autograd.grad(loss, s)
    assert torch.isfinite(grad).all()
    same = distillation_loss(
        s.detach(), s.detach().clone(), mask, divergence=divergence, beta=beta, temperature=temperature
    )
    assert abs(same.item()) < 1e-5
    if not mask.any():
        assert loss.item() == 0.0 and torch.equal(grad, torch.zeros_like(grad))


@settings(max_examples=150, deadline=None)
@given(logits_pairs())
def test_sampled_estimator_is_finite_with_finite_gradients(pair):
    s, t, mask = pair
    s = s.float()
    tokens = s.argmax(-1)  # a token the student gives positive probability
    s = s.clone().requires_grad_(True)
    logp = torch.log_softmax(s, -1).gather(-1, tokens[..., None]).squeeze(-1)
    teacher_lp = torch.log_softmax(t.float(), -1).gather(-1, tokens[..., None]).squeeze(-1)  # may be -inf
    loss = sampled_token_loss(logp, teacher_lp, logp.detach(), mask)
    assert torch.isfinite(loss)
    (grad,) = torch.autograd.grad(loss, s)
    assert torch.isfinite(grad).all()
    equal = sampled_token_loss(logp, logp.detach(), logp.detach(), mask)
    assert abs(equal.item()) < 1e-6  # student = teacher: zero advantage


@settings(max_examples=60, deadline=None)
@given(logits_pairs(), st.integers(1, 4), st.sampled_from(["tail_bucket", "conditional"]))
def test_topk_scores_are_finite(pair, k, variant):
    s, t, mask = pair
    k = min(k, s.shape[-1])
    values, ids = torch.log_softmax(t.float(), -1).topk(k, -1)
    scores = TeacherScores("topk", torch.zeros(mask.shape), topk_logprobs=values, topk_ids=ids)
    s = s.clone().float().requires_grad_(True)
    loss = distillation_loss(s, scores, mask, divergence="reverse_kl", topk_variant=variant)
    (grad,) = torch.autograd.grad(loss, s)
    assert torch.isfinite(loss) and loss.item() >= -1e-4 and torch.isfinite(grad).all()


def test_all_masked_batch_gives_zero_loss_and_zero_gradient_for_both_estimators():
    s = torch.randn(2, 3, 5, requires_grad=True)
    mask = torch.zeros(2, 3, dtype=torch.bool)
    loss = distillation_loss(s, torch.randn(2, 3, 5), mask)
    (g,) = torch.autograd.grad(loss, s)
    assert loss.item() == 0.0 and torch.equal(g, torch.zeros_like(g))
    lp = torch.randn(2, 3, requires_grad=True)
    loss = sampled_token_loss(lp, torch.randn(2, 3), lp.detach(), mask)
    (g,) = torch.autograd.grad(loss, lp)
    assert loss.item() == 0.0 and torch.equal(g, torch.zeros_like(g))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_sampled_loss_is_computed_in_float32(dtype):
    lp = torch.tensor([[-0.5, -1.25]], dtype=dtype, requires_grad=True)
    loss = sampled_token_loss(
        lp, torch.tensor([[-0.25, -3.0]]), lp.detach(), torch.ones(1, 2, dtype=torch.bool)
    )
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(((-0.5 + 0.25) + (-1.25 + 3.0)) / 2, rel=1e-6)
