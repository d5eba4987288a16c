"""Check functions for the classroom exercises in ``notebooks/exercises/``.

Each ``check_*`` takes the learner's answer, tests it against odistill's own implementation on random
inputs (and on traps: large logits, masks, detached advantages), and either returns a short success
message or raises :class:`ExerciseError` with a hint about *what* is wrong — never just "wrong".

    >>> from odistill.classroom.exercises import check_reverse_kl
    >>> def my_reverse_kl(s, t):
    ...     ls, lt = s.log_softmax(-1), t.log_softmax(-1)
    ...     return (ls.exp() * (ls - lt)).sum(-1)
    >>> check_reverse_kl(my_reverse_kl)
    'reverse KL: correct on 4 random cases, large logits included. Well done!'
"""

from __future__ import annotations

import math

import torch

from ..core.divergences import forward_kl, kl_k1, kl_k2, kl_k3, reverse_kl
from ..core.loss import sampled_token_loss

__all__ = [
    "ExerciseError",
    "check_reverse_kl",
    "check_k3",
    "check_is_loss",
    "check_lambda_schedule",
    "check_diagnosis",
    "DIAGNOSIS_CHOICES",
]


class ExerciseError(AssertionError):
    """The answer is not right yet; the message says what looks wrong and gives a hint."""


def _close(a: torch.Tensor, b: torch.Tensor, tol=1e-4) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a.double(), b.double(), rtol=tol, atol=tol))


def _as_tensor(value, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise ExerciseError(f"{name} should return a torch.Tensor, got {type(value).__name__}")
    if not torch.isfinite(value).all():
        raise ExerciseError(
            f"{name} returned NaN or inf values. Hint: use log_softmax (not log(softmax)) for stability."
        )
    return value


def check_reverse_kl(fn) -> str:
    """Exercise 1: ``fn(student_logits, teacher_logits) -> (B, T)`` per-token KL(p_S ‖ p_T)."""
    g = torch.Generator().manual_seed(0)
    cases = [torch.randn(2, 3, 7, generator=g) * s for s in (1.0, 3.0)]
    cases += [torch.randn(2, 3, 7, generator=g) * 60.0, torch.randn(1, 1, 5, generator=g)]
    for i, s in enumerate(cases):
        t = torch.randn(s.shape, generator=g) * (3.0 if i < 3 else 1.0)
        got = _as_tensor(fn(s.clone(), t.clone()), "your function")
        want = reverse_kl(s, t, reduction="none")
        if got.shape != want.shape:
            raise ExerciseError(
                f"expected one value per position, shape {tuple(want.shape)}, got {tuple(got.shape)}. "
                "Hint: sum over the vocabulary (the last dimension) only."
            )
        if _close(got, want):
            continue
        if _close(got, forward_kl(s, t, reduction="none")):
            raise ExerciseError(
                "this is forward KL, KL(p_T ‖ p_S). "
                "Reverse KL weights by the *student*: Σ p_S (log p_S − log p_T)."
            )
        if _close(got, -want):
            raise ExerciseError(
                "the sign is flipped: KL(p_S ‖ p_T) = Σ p_S (log p_S − log p_T) is never negative."
            )
        if i == 2:
            raise ExerciseError(
                "correct for moderate logits but not for large ones (±100). "
                "Hint: torch.log_softmax is stable; log(softmax(x)) underflows."
            )
        raise ExerciseError(
            "the values differ from KL(p_S ‖ p_T). "
            "Hint: p_S = softmax(student_logits) over the last dimension."
        )
    return "reverse KL: correct on 4 random cases, large logits included. Well done!"


def check_k3(fn) -> str:
    """Exercise 2: ``fn(sampler_logprobs, target_logprobs) -> (N,)`` the k3 estimate of KL(p ‖ q), x ~ p."""
    g = torch.Generator().manual_seed(1)
    lp = -torch.rand(50, generator=g, dtype=torch.float64) * 3
    lq = -torch.rand(50, generator=g, dtype=torch.float64) * 3
    got = _as_tensor(fn(lp.clone(), lq.clone()), "your function")
    want = kl_k3(lp, lq, reduction="none")
    if got.shape != want.shape:
        raise ExerciseError(
            f"expected one estimate per sample, shape {tuple(want.shape)}, got {tuple(got.shape)}"
        )
    if _close(got, want, 1e-6):
        if (got < 0).any():
            raise ExerciseError("k3 must be non-negative for every sample")
        return "k3: correct — unbiased, and never negative. Well done!"
    if _close(got, kl_k1(lp, lq, reduction="none"), 1e-6):
        raise ExerciseError(
            "this is k1 = log p − log q. k3 adds the zero-mean control variate (r − 1), with r = q/p."
        )
    if _close(got, kl_k2(lp, lq, reduction="none"), 1e-6):
        raise ExerciseError("this is k2 = ½ (log r)². k3 is (r − 1) − log r, with r = q(x)/p(x).")
    if _close(got, kl_k3(lq, lp, reduction="none"), 1e-6):
        raise ExerciseError(
            "the ratio is upside down: r = q(x)/p(x) (target over sampler), since x was drawn from p."
        )
    raise ExerciseError("not k3 yet. With log r = log q − log p: k3 = exp(log r) − 1 − log r.")


def check_is_loss(fn) -> str:
    """Exercise 3: ``fn(student_logprobs, teacher_logprobs, sampling_logprobs, mask) -> scalar`` IS loss."""
    g = torch.Generator().manual_seed(2)
    shape = (3, 5)
    base = -torch.rand(shape, generator=g, dtype=torch.float64) * 2
    teacher = -torch.rand(shape, generator=g, dtype=torch.float64) * 2
    q = base - 0.1 * torch.rand(shape, generator=g, dtype=torch.float64)  # slightly off-policy
    mask = torch.rand(shape, generator=g) < 0.7
    mine = base.clone().requires_grad_(True)
    ref = base.clone().requires_grad_(True)
    got = fn(mine, teacher, q, mask)
    if not isinstance(got, torch.Tensor) or got.dim() != 0:
        raise ExerciseError("the loss must be a scalar tensor (average over the counted tokens)")
    want = sampled_token_loss(ref, teacher, q, mask)
    if not got.requires_grad:
        raise ExerciseError(
            "the loss has no gradient. Hint: the ratio exp(log p_θ − log q) must keep log p_θ's gradient."
        )
    (g_mine,) = torch.autograd.grad(got, mine)
    (g_ref,) = torch.autograd.grad(want, ref)
    if _close(g_mine, g_ref, 1e-6) and math.isclose(got.item(), want.item(), rel_tol=1e-6, abs_tol=1e-9):
        return "importance-sampling loss: value and gradient match. Well done!"
    if _close(g_mine, -g_ref, 1e-6):
        raise ExerciseError(
            "the gradient points the wrong way: the loss is −ratio·A with A = −(log p_S − log p_T)."
        )
    if (g_mine[~mask] != 0).any():
        raise ExerciseError(
            "masked tokens (prompt/padding) receive gradient. Hint: average only where mask is True."
        )
    if _close(got.detach(), want.detach(), 1e-6):
        raise ExerciseError(
            "the value is right but the gradient is not. Did you detach the advantage "
            "A = −(log p_S − log p_T)? It is a reward signal, not something to differentiate."
        )
    raise ExerciseError(
        "not the IS loss yet: per token −exp(log p_θ − log q) · A with A = −(log p_θ − log p_T).detach(), "
        "averaged over the counted tokens."
    )


def check_lambda_schedule(fn, total_steps: int = 100) -> str:
    """Exercise 4: ``fn(step, total_steps) -> λ``: start off-policy (λ=0), end on-policy (λ=1), never
    decrease."""
    values = [fn(s, total_steps) for s in range(total_steps + 1)]
    for s, v in enumerate(values):
        if not isinstance(v, int | float) or math.isnan(v):
            raise ExerciseError(f"λ must be a number; at step {s} your schedule returned {v!r}")
        if not 0.0 <= v <= 1.0:
            raise ExerciseError(f"λ is a probability, so it must be in [0, 1]; at step {s} it is {v}")
    if values[0] != 0.0:
        raise ExerciseError(f"the schedule should start off-policy: λ(0) = 0, got {values[0]}")
    if values[-1] != 1.0:
        raise ExerciseError(f"the schedule should end fully on-policy: λ(total_steps) = 1, got {values[-1]}")
    drops = [s for s in range(total_steps) if values[s + 1] < values[s] - 1e-12]
    if drops:
        raise ExerciseError(f"λ should never decrease, but it drops after step {drops[0]}")
    return f"λ schedule: from 0 to 1 in {total_steps} steps, never decreasing. Well done!"


#: The multiple-choice answers of exercise 5 ("diagnose a failing distillation run").
DIAGNOSIS_CHOICES = {
    "a": "the learning rate is too small for 30 steps to change the student",
    "b": "the teacher knows the task no better than the student does",
    "c": "reverse KL was the wrong choice: forward KL would have moved the student",
    "d": "sampling at temperature 1 makes the student's completions too noisy to learn from",
}

_DIAGNOSIS_FEEDBACK = {
    "a": "A small learning rate makes progress slow, but here the loss falls quickly — "
    "the student learns fast. Learns *what*? Look at what the loss is measured against.",
    "c": "The direction of the KL changes how the student spreads its mass, but either direction would make "
    "the student match a good teacher. Why is matching not helping?",
    "d": "A high temperature makes samples noisy, but the greedy accuracy of a student that matches a good "
    "teacher would still rise. Compare the teacher's own accuracy to the student's.",
}


def check_diagnosis(answer: str) -> str:
    """Exercise 5: which cause explains the run (see the exercise notebook)? Answer with a letter."""
    key = str(answer).strip().lower()[:1]
    if key not in DIAGNOSIS_CHOICES:
        raise ExerciseError(f"answer with one of the letters {sorted(DIAGNOSIS_CHOICES)}")
    if key == "b":
        return (
            "Right: the loss (KL to the 'teacher') is almost 0 from the start and accuracy stays flat, "
            "because the 'teacher' is the student itself. Always evaluate the teacher first."
        )
    raise ExerciseError(_DIAGNOSIS_FEEDBACK[key])
