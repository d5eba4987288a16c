"""Distillation losses: what the student minimises, from the divergences and the teacher's scores.

Two gradient estimators of the same goal:

* **full** (GKD): the divergence between the student's and the teacher's next-token distributions,
  computed analytically over the vocabulary at every completion position —
  :func:`distillation_loss`. Needs the teacher's full (or top-k) log-probs.
* **sampled** (Thinking Machines' on-policy distillation): only the sampled tokens. The per-token
  reverse KL estimate ``log p_S(x_t) − log p_T(x_t)`` is a *negative advantage*,
  ``A_t = −(log p_S(x_t) − log p_T(x_t))`` (detached, discount 0: each token is judged on its own),
  and the student follows the importance-sampling policy gradient
  ``L = −Σ_t (p_θ(x_t) / q(x_t)) · A_t``, q being the distribution the token was sampled from —
  :func:`sampled_token_loss`. Needs only the teacher's log-prob of each sampled token.

Its expected gradient equals the gradient of the reverse KL: with x ~ q = p_θ,
``E[∇log p_θ(x) · (log p_θ(x) − log p_T(x))] = ∇ KL(p_θ ‖ p_T)`` (the extra ``E[∇log p_θ]`` term is 0).
"""

from __future__ import annotations

import torch

from .divergences import get_divergence
from .teacher import TeacherScores
from .tensor_ops import MASKED_LOG_PROB, NonFiniteLossError, check_mask, check_reduction, check_temperature

__all__ = ["distillation_loss", "sampled_token_loss"]


def _divergence(student_logits, teacher_logits, mask, divergence, beta, alpha, temperature, reduction):
    spec = get_divergence(divergence)
    params = {} if spec.param is None else {spec.param: {"beta": beta, "alpha": alpha}[spec.param]}
    return spec.function(
        student_logits, teacher_logits, mask, temperature=temperature, reduction=reduction, **params
    )


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_scores: TeacherScores | torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    divergence: str = "reverse_kl",
    beta: float = 0.5,
    alpha: float = 0.1,
    temperature: float = 1.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Per-token divergence between student and teacher over the vocabulary (the "full" estimator).

    Args:
        student_logits: ``(B, T, V)`` student logits at completion positions (with gradients).
        teacher_scores: :class:`~odistill.core.teacher.TeacherScores` in ``"full"`` or ``"topk"`` mode, or
            a ``(B, T, V)`` tensor of teacher logits / log-probs.
        completion_mask: ``(B, T)`` bool, True on the completion tokens that count.
        divergence: a name of :data:`~odistill.core.divergences.DIVERGENCES`: ``"forward_kl"``
            (KL(p_T‖p_S), β = 0), ``"reverse_kl"`` (KL(p_S‖p_T), β = 1), ``"jsd"`` (generalized JSD(β),
            β = 0 forward KL … β = 1 reverse KL), ``"skew_forward_kl"``, ``"skew_reverse_kl"`` (α) or
            ``"total_variation"``.
        beta: the JSD interpolation weight (used only by ``"jsd"``).
        alpha: the skew of the skew KLs (used only by them).
        temperature: the **loss** temperature, dividing both logits (independent of the sampling
            temperature).
        reduction: ``"mean"`` over counted tokens, ``"sum"``, or ``"none"`` → ``(B, T)``.

    Top-k scores: both distributions are **renormalised over the teacher's top-k tokens** at each
    position — the student's logits are gathered at the teacher's top-k ids and both are
    log-softmaxed over those k entries. The result is the divergence between the two distributions
    *conditioned on that set*: it ignores how much mass the student puts outside the set, so it is not
    the full-vocabulary divergence (notebook 02 measures the gap). It tends to the full divergence as
    k grows to cover the mass of both models, and equals it at k = V. Use it to save teacher memory
    with a k that covers most of the mass.
    Where the student gives a top-k token probability 0 (a ``-inf`` logit), its logit there counts as
    :data:`~odistill.core.tensor_ops.MASKED_LOG_PROB`, so the value stays finite.

    Example:
        >>> s, t = torch.zeros(1, 2, 3), torch.tensor([[[0.0, 1.0, 2.0], [0.0, 0.0, 0.0]]])
        >>> round(
        ...     distillation_loss(s, t, torch.tensor([[True, False]])).item(), 4
        ... )  # reverse KL at t=0: log(1/3) − mean(log softmax([0, 1, 2]))
        0.309
    """
    get_divergence(divergence)  # a clear error for an unknown name, before any work
    common = (divergence, beta, alpha, temperature, reduction)
    if isinstance(teacher_scores, torch.Tensor):
        return _divergence(student_logits, teacher_scores, completion_mask, *common)
    if teacher_scores.mode == "full":
        return _divergence(student_logits, teacher_scores.logprobs, completion_mask, *common)
    if teacher_scores.mode == "topk":
        ids = teacher_scores.topk_ids.to(student_logits.device)
        if ids.shape[:-1] != student_logits.shape[:-1]:
            raise ValueError(
                f"teacher top-k scores {tuple(ids.shape)} do not match student logits "
                f"{tuple(student_logits.shape)}"
            )
        student_on_support = student_logits.gather(-1, ids)  # (B, T, k)
        # a student that forbids (-inf) every top-k token has no distribution on the support: a finite
        # floor keeps the row defined (uniform there) instead of NaN
        floor = torch.full_like(student_on_support, MASKED_LOG_PROB)
        student_on_support = torch.where(torch.isneginf(student_on_support), floor, student_on_support)
        return _divergence(student_on_support, teacher_scores.topk_logprobs, completion_mask, *common)
    if teacher_scores.mode == "hidden":
        raise ValueError(
            "teacher scores in 'hidden' mode hold the teacher's hidden states, not its logits: compute the "
            "loss from both models' hidden states with odistill.core.fused.fused_linear_divergence (what "
            "DistillConfig(fused_lm_head=True) does), or score with mode='full' or 'topk'"
        )
    raise ValueError(
        "teacher scores in 'sampled' mode hold only the sampled tokens' log-probs, which are not enough "
        "for the 'full' estimator: use sampled_token_loss (estimator='sampled'), or score with "
        "mode='full' or 'topk'"
    )


def sampled_token_loss(
    student_logprobs: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    sampling_logprobs: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    reduction: str = "mean",
    max_ratio: float | None = None,
) -> torch.Tensor:
    """Importance-sampling policy-gradient loss with per-token reverse KL as the negative advantage.

    ``A_t = −(log p_S(x_t) − log p_T(x_t))`` (detached), ``ratio_t = p_θ(x_t) / q(x_t)``,
    ``L = −Σ_t ratio_t · A_t`` over completion tokens (mean or sum).

    Args:
        student_logprobs: ``(B, T)`` log p_θ(x_t) of the sampled tokens, **with gradients** (from the
            student's forward pass at temperature 1).
        teacher_logprobs: ``(B, T)`` log p_T(x_t) of the same tokens (no gradient needed).
        sampling_logprobs: ``(B, T)`` log q(x_t), the distribution the tokens were drawn from
            (:attr:`Rollouts.sampling_logprobs`). On-policy at temperature 1, q = p_θ and the ratio is 1.
        completion_mask: ``(B, T)`` bool, True on the tokens that count.
        reduction: ``"mean"`` over counted tokens, ``"sum"``, or ``"none"`` → ``(B, T)``.
        max_ratio: optionally clip the importance ratio from above (PPO-style stabiliser, biased).

    Returns:
        The loss. Its value is ``−E[ratio·A]`` (≈ the reverse KL estimate when on-policy); its
        gradient is the policy gradient of the reverse KL.

    Example:
        >>> lp = torch.tensor([[-0.5, -1.0]], requires_grad=True)
        >>> loss = sampled_token_loss(
        ...     lp, torch.tensor([[-0.2, -3.0]]), lp.detach(), torch.tensor([[True, True]])
        ... )
        >>> round(loss.item(), 4)  # mean of (−0.5 + 0.2) and (−1 + 3) = (−0.3 + 2.0) / 2
        0.85
    """
    check_reduction(reduction)
    shapes = {tuple(t.shape) for t in (student_logprobs, teacher_logprobs, sampling_logprobs)}
    if len(shapes) != 1:
        raise ValueError(
            "student_logprobs, teacher_logprobs and sampling_logprobs must share one (B, T) shape, got "
            f"{tuple(student_logprobs.shape)}, {tuple(teacher_logprobs.shape)}, "
            f"{tuple(sampling_logprobs.shape)}"
        )
    mask = check_mask(completion_mask, student_logprobs.shape, "student_logprobs").to(student_logprobs.device)
    if max_ratio is not None:
        check_temperature(max_ratio, "max_ratio")  # a finite positive number
    dtype = torch.float64 if student_logprobs.dtype == torch.float64 else torch.float32
    logp = student_logprobs[mask].to(dtype).clamp_min(MASKED_LOG_PROB)  # (N,)
    logp_teacher = teacher_logprobs.to(student_logprobs.device)[mask].to(dtype).clamp_min(MASKED_LOG_PROB)
    logq = sampling_logprobs.to(student_logprobs.device)[mask].to(dtype).clamp_min(MASKED_LOG_PROB)
    advantage = -(logp.detach() - logp_teacher)  # (N,) negative per-token reverse KL
    ratio = torch.exp(logp - logq)  # (N,) p_θ / q, = 1 on-policy (with gradient ∇log p_θ)
    if max_ratio is not None:
        ratio = ratio.clamp(max=float(max_ratio))
    per_token = -(ratio * advantage)
    if torch.isnan(per_token).any():
        raise NonFiniteLossError("the sampled-token loss is NaN: check the log-probs for NaN values")
    if reduction == "sum":
        return per_token.sum()
    if reduction == "mean":
        return per_token.sum() / max(per_token.numel(), 1)
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_scatter(mask, per_token)
