"""The exercise checkers accept the solutions and reject known-wrong answers with a helpful hint."""

from __future__ import annotations

import pytest
import torch

from odistill.classroom.exercises import (
    ExerciseError,
    check_diagnosis,
    check_is_loss,
    check_k3,
    check_lambda_schedule,
    check_reverse_kl,
)

# ---------------------------------------------------------------- solutions


def reverse_kl_solution(s, t):
    ls, lt = s.log_softmax(-1), t.log_softmax(-1)
    return (ls.exp() * (ls - lt)).sum(-1)


def k3_solution(lp, lq):
    log_r = lq - lp
    return log_r.exp() - 1 - log_r


def is_loss_solution(lp, lt, lq, mask):
    adv = -(lp.detach() - lt)
    per_token = -torch.exp(lp - lq) * adv
    return per_token[mask].mean()


def test_solutions_pass():
    assert "Well done" in check_reverse_kl(reverse_kl_solution)
    assert "Well done" in check_k3(k3_solution)
    assert "Well done" in check_is_loss(is_loss_solution)
    assert "Well done" in check_lambda_schedule(lambda step, total: step / total)
    assert check_diagnosis("b").startswith("Right")


@pytest.mark.parametrize(
    "fn, hint",
    [
        (lambda s, t: reverse_kl_solution(t, s), "forward KL"),
        (lambda s, t: -reverse_kl_solution(s, t), "sign is flipped"),
        (lambda s, t: (s.softmax(-1) * (s.softmax(-1).log() - t.softmax(-1).log())).sum(-1), "log_softmax"),
        (lambda s, t: reverse_kl_solution(s, t).sum(), "one value per position"),
        (lambda s, t: (s.log_softmax(-1) - t.log_softmax(-1)).sum(-1), "differ"),
    ],
)
def test_reverse_kl_wrong_answers(fn, hint):
    with pytest.raises(ExerciseError, match=hint):
        check_reverse_kl(fn)


@pytest.mark.parametrize(
    "fn, hint",
    [
        (lambda lp, lq: lp - lq, "this is k1"),
        (lambda lp, lq: 0.5 * (lq - lp) ** 2, "this is k2"),
        (lambda lp, lq: k3_solution(lq, lp), "upside down"),
        (lambda lp, lq: (lq - lp).exp() - 1, "not k3 yet"),
    ],
)
def test_k3_wrong_answers(fn, hint):
    with pytest.raises(ExerciseError, match=hint):
        check_k3(fn)


@pytest.mark.parametrize(
    "fn, hint",
    [
        (lambda lp, lt, lq, m: (-torch.exp(lp - lq) * -(lp - lt))[m].mean(), "detach"),
        (lambda lp, lt, lq, m: (torch.exp(lp - lq) * -(lp.detach() - lt))[m].mean(), "wrong way"),
        (lambda lp, lt, lq, m: (-torch.exp(lp - lq) * -(lp.detach() - lt)).mean(), "masked tokens"),
        (lambda lp, lt, lq, m: (-(lp - lq) * -(lp.detach() - lt))[m].mean(), "not the IS loss"),
        (lambda lp, lt, lq, m: (-torch.exp(lp - lq) * -(lp - lt)).detach()[m].mean(), "no gradient"),
    ],
)
def test_is_loss_wrong_answers(fn, hint):
    with pytest.raises(ExerciseError, match=hint):
        check_is_loss(fn)


@pytest.mark.parametrize(
    "fn, hint",
    [
        (lambda s, n: 1 - s / n, "start off-policy"),
        (lambda s, n: 0.5 * s / n, "end fully on-policy"),
        (lambda s, n: 2 * s / n, "must be in \\[0, 1\\]"),
        (lambda s, n: 0.0 if s == 0 else (1.0 if s in (10, n) else 0.5), "never decrease"),
        (lambda s, n: float("nan"), "must be a number"),
    ],
)
def test_lambda_schedule_wrong_answers(fn, hint):
    with pytest.raises(ExerciseError, match=hint):
        check_lambda_schedule(fn)


@pytest.mark.parametrize("answer", ["a", "c", "d", "z"])
def test_diagnosis_wrong_answers(answer):
    with pytest.raises(ExerciseError):
        check_diagnosis(answer)
