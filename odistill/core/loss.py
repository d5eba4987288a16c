r"""Distillation losses: what the student minimises, from the divergences and the teacher's scores.

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
``E[∇log p_θ(x) · (log p_θ(x) − log p_T(x))] = ∇ KL(p_θ ‖ p_T)`` (the extra ``E[∇log p_θ]`` term is 0):

.. math::

    \mathbb{E}_{x \sim p_\theta}\bigl[\nabla_\theta \log p_\theta(x)\,
    \bigl(\log p_\theta(x) - \log p_T(x)\bigr)\bigr] = \nabla_\theta\, \mathrm{KL}(p_\theta \,\|\, p_T)
"""

from __future__ import annotations

import torch

from .divergences import get_divergence
from .teacher import TeacherScores
from .tensor_ops import (
    MASKED_LOG_PROB,
    NonFiniteLossError,
    active_rows,
    check_mask,
    check_reduction,
    check_temperature,
    compute_dtype,
    masked_reduce,
    scatter_rows,
)

__all__ = [
    "distillation_loss",
    "sampled_token_loss",
    "BASELINES",
    "TOPK_VARIANTS",
    "topk_tail_distributions",
]

#: The baselines of the sampled estimator (see :func:`sampled_token_loss`); each leaves the row out.
BASELINES = ("none", "group_mean", "batch_mean")

#: How the full estimator uses top-k teacher scores (see :func:`distillation_loss`).
TOPK_VARIANTS = ("tail_bucket", "conditional")


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
    topk_variant: str = "tail_bucket",
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
        topk_variant: how top-k teacher scores are used (one of :data:`TOPK_VARIANTS`; see below).

    Top-k scores, ``topk_variant="tail_bucket"`` (the default): each position becomes a distribution
    over **k + 1 outcomes** — the teacher's k tokens, and "any other token" (the tail). The student's
    k + 1 probabilities come from its full softmax (its tail is everything it puts outside the teacher's
    k tokens); the teacher's from its top-k log-probs and ``topk_tail_logprob``
    (:func:`topk_tail_distributions`). The divergence of these coarser distributions is a lower bound of
    the full-vocabulary one (grouping outcomes never increases an f-divergence), it grows with k, equals
    the full divergence at k = V, and is positive whenever the two models give the teacher's k tokens
    different probabilities — at k = 1 too. It needs loss temperature 1 (the teacher's tail at another
    temperature is not known from its top k).

    ``topk_variant="conditional"``: both distributions are **renormalised over the teacher's top-k
    tokens** — the divergence between the two distributions *conditioned on that set*. It ignores how
    much mass the student puts outside the set, so at k = 1 it is identically 0 (with zero gradient)
    whatever the student does; notebook 02 measures the gap. It equals the full divergence at k = V.

    Where the student gives a top-k token probability 0 (a ``-inf`` logit), its log-probability there
    counts as :data:`~odistill.core.tensor_ops.MASKED_LOG_PROB`, so the value stays finite.

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
        return _topk_divergence(student_logits, teacher_scores, completion_mask, topk_variant, common)
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


def _leave_one_out_baseline(values, mask, kind: str, groups) -> torch.Tensor:
    """Each counted token's baseline: the token-mean of ``values`` over the *other* rows of its group
    (``"group_mean"``) or of the batch (``"batch_mean"``). ``(N,)`` in, ``(N,)`` out."""
    batch = mask.shape[0]
    rows = mask.nonzero()[:, 0]  # the row of each counted token, in the order of x[mask]
    row_sum = torch.zeros(batch, dtype=values.dtype, device=values.device).index_add_(0, rows, values)
    row_n = mask.sum(-1).to(values.dtype)
    if kind == "group_mean":
        if groups is None:
            raise ValueError(
                "baseline='group_mean' needs groups: the prompt of each row (Rollouts.prompt_index)"
            )
        groups = torch.as_tensor(groups, device=values.device)
        if groups.shape != (batch,):
            raise ValueError(
                f"groups must have shape ({batch},), one prompt id per row, got {tuple(groups.shape)}"
            )
        _, group = torch.unique(groups, return_inverse=True)
    else:
        group = torch.zeros(batch, dtype=torch.long, device=values.device)
    n_groups = int(group.max()) + 1 if batch else 0
    group_sum = torch.zeros(n_groups, dtype=values.dtype, device=values.device).index_add_(0, group, row_sum)
    group_n = torch.zeros(n_groups, dtype=values.dtype, device=values.device).index_add_(0, group, row_n)
    others_n = group_n[group] - row_n
    lonely = (others_n == 0) & (row_n > 0)
    if bool(lonely.any()):
        where = "prompt" if kind == "group_mean" else "batch"
        raise ValueError(
            f"baseline={kind!r}: a row has no other row with counted tokens in its {where} to take the "
            "baseline from (use num_generations >= 2 for 'group_mean', or a batch of >= 2 rows)"
        )
    baseline = (group_sum[group] - row_sum) / others_n.clamp_min(1)  # (B,) the others' token-mean
    return baseline[rows]


def _discounted_to_go(values: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """``Σ_{s ≥ t} γ^{s−t} v_s`` over each row's counted positions (``(N,)`` in, ``(N,)`` out)."""
    per_position = torch.zeros(mask.shape, dtype=values.dtype, device=values.device)
    per_position = per_position.masked_scatter(mask, values)  # (B, T), 0 where not counted
    to_go, running = torch.zeros_like(per_position), torch.zeros_like(per_position[:, 0])
    for t in range(mask.shape[1] - 1, -1, -1):
        running = per_position[:, t] + gamma * running
        to_go[:, t] = running
    return to_go[mask]


def _topk_divergence(student_logits, scores: TeacherScores, mask, variant, common):
    if variant not in TOPK_VARIANTS:
        raise ValueError(f"topk_variant must be one of {list(TOPK_VARIANTS)}, got {variant!r}")
    ids = scores.topk_ids.to(student_logits.device)
    if ids.shape[:-1] != student_logits.shape[:-1]:
        raise ValueError(
            f"teacher top-k scores {tuple(ids.shape)} do not match student logits "
            f"{tuple(student_logits.shape)}"
        )
    if variant == "conditional":
        student_on_support = student_logits.gather(-1, ids)  # (B, T, k)
        # a student that forbids (-inf) every top-k token has no distribution on the support: a finite
        # floor keeps the row defined (uniform there) instead of NaN
        floor = torch.full_like(student_on_support, MASKED_LOG_PROB)
        student_on_support = torch.where(torch.isneginf(student_on_support), floor, student_on_support)
        return _divergence(student_on_support, scores.topk_logprobs, mask, *common)
    divergence, beta, alpha, temperature, reduction = common
    if check_temperature(temperature) != 1.0:
        raise ValueError(
            f"the tail-bucket top-k loss needs loss temperature 1 (got {temperature}): the teacher's mass "
            "outside its top k at another temperature is not known from its top-k log-probs. Use "
            "temperature 1, topk_variant='conditional', or full teacher scores"
        )
    check_reduction(reduction)
    mask = check_mask(mask, student_logits.shape[:-1], "student_logits")
    student_k1, teacher_k1 = topk_tail_distributions(student_logits, scores, mask)  # (N, k + 1) each
    values = _divergence(student_k1, teacher_k1, None, divergence, beta, alpha, 1.0, "none")  # (N,)
    if reduction == "none":
        return scatter_rows(values, mask, student_logits.shape[:-1])
    return masked_reduce(values, None, values.shape, reduction)


def topk_tail_distributions(
    student_logits: torch.Tensor, scores: TeacherScores, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both models' log-probabilities of the k + 1 outcomes "each of the teacher's top-k tokens" and
    "any other token", at the counted positions: two ``(N, k + 1)`` tensors (the student's with gradients).

    The student's come from its full log-softmax (its last column is the log of the mass it puts outside
    the teacher's k tokens); the teacher's are ``topk_logprobs`` and ``topk_tail_logprob`` (or, for a
    teacher that does not report the tail, ``log(1 − Σ exp(topk_logprobs))``). A column is ``-inf`` where a
    model gives it probability 0 (e.g. the tail when k = V).
    """
    device = student_logits.device
    if mask is not None:
        mask = mask.to(device)
    rows = active_rows(student_logits, mask)  # (N, V)
    ids = active_rows(scores.topk_ids.to(device), mask)  # (N, k)
    log_p = torch.log_softmax(rows.to(compute_dtype(rows)), dim=-1)
    on_top = log_p.gather(-1, ids)  # (N, k)
    outside = log_p.scatter(-1, ids, float("-inf"))  # the student's log-probs off the teacher's top k
    has_tail = torch.isfinite(outside).any(-1, keepdim=True)
    # a row with no mass outside gets a constant filler: logsumexp of an all −inf row has a NaN gradient
    tail = torch.where(has_tail, outside, 0.0).logsumexp(-1, keepdim=True)
    tail = torch.where(has_tail, tail, float("-inf"))
    student = torch.cat([on_top, tail], dim=-1)
    teacher_top = active_rows(scores.topk_logprobs.to(device), mask).to(student.dtype)
    if scores.topk_tail_logprob is not None:
        teacher_tail = active_rows(scores.topk_tail_logprob.to(device)[..., None], mask).to(student.dtype)
    else:  # log(1 − p_top) = log(−expm1(log p_top)); −inf once rounding puts the top-k mass at 1
        top_mass = teacher_top.logsumexp(-1, keepdim=True).clamp_max(0.0)
        teacher_tail = torch.log(-torch.expm1(top_mass))
    return student, torch.cat([teacher_top, teacher_tail], dim=-1)


def sampled_token_loss(
    student_logprobs: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    sampling_logprobs: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    reduction: str = "mean",
    max_ratio: float | None = None,
    kl_coef: float = 1.0,
    kl_discount: float = 0.0,
    baseline: str = "none",
    groups: torch.Tensor | None = None,
    advantage_clip: float | None = None,
) -> torch.Tensor:
    r"""Importance-sampling policy-gradient loss with per-token reverse KL as the negative advantage.

    ``d_t = log p_S(x_t) − log p_T(x_t)`` (detached), the advantage
    ``A_t = −kl_coef · Σ_{s ≥ t} kl_discount^{s−t} d_s`` (over the same completion's counted tokens;
    with the default ``kl_discount=0`` simply ``−kl_coef · d_t``), ``ratio_t = p_θ(x_t) / q(x_t)``, and
    ``L = −Σ_t ratio_t · A_t`` over completion tokens (mean or sum):

    .. math::

        d_t = \log p_S(x_t) - \log p_T(x_t), \qquad
        A_t = -c \sum_{s \ge t} \gamma^{\,s-t}\, d_s, \qquad
        L = -\sum_t \frac{p_\theta(x_t)}{q(x_t)}\, A_t

    with :math:`c` = ``kl_coef`` and :math:`\gamma` = ``kl_discount`` (:math:`d_t` and :math:`A_t` carry
    no gradient).

    Args:
        student_logprobs: ``(B, T)`` log p_θ(x_t) of the sampled tokens, **with gradients** (from the
            student's forward pass at temperature 1).
        teacher_logprobs: ``(B, T)`` log p_T(x_t) of the same tokens (no gradient needed).
        sampling_logprobs: ``(B, T)`` log q(x_t), the distribution the tokens were drawn from
            (:attr:`Rollouts.sampling_logprobs`). On-policy at temperature 1, q = p_θ and the ratio is 1.
        completion_mask: ``(B, T)`` bool, True on the tokens that count.
        reduction: ``"mean"`` over counted tokens, ``"sum"``, or ``"none"`` → ``(B, T)``.
        max_ratio: optionally clip the importance ratio from above (PPO-style stabiliser, biased): a
            token whose ratio is clipped contributes ``max_ratio · A_t`` to the value and no gradient.
        kl_coef: scales the advantage (Tinker's ``kl_penalty_coef``). With Adam it mostly rescales the
            loss; it matters next to other advantages (rewards) added to the same tokens.
        kl_discount: γ in [0, 1]: each token's advantage is the discounted sum of the per-token reverse KL
            from it to the end of its completion (Tinker's ``kl_discount_factor``), so a token is also
            judged by what follows it. 0 judges each token on its own (Thinking Machines' recipe).
        baseline: subtract a baseline from every advantage, to reduce the variance of the gradient while
            keeping it **unbiased** (one of :data:`BASELINES`): ``"none"``; ``"group_mean"``, the token-mean
            advantage of the *other* completions of the same prompt (``groups``; needs ≥ 2 per prompt,
            e.g. ``num_generations``); ``"batch_mean"``, the token-mean advantage of every *other* row of
            the batch. Leaving the row itself out is what keeps it unbiased: the baseline of a token then
            does not depend on that token (nor on anything its row sampled), and
            ``E[∇log p_θ(x_t)] · b = 0``.
        groups: ``(B,)`` the prompt each row came from (:attr:`Rollouts.prompt_index`), for ``"group_mean"``.
        advantage_clip: clip every advantage (after the baseline) to ``[−c, c]``: a **biased** stabiliser
            against a few huge per-token log-ratios.

    Returns:
        The loss. Its value is ``−E[ratio·A]`` (≈ the reverse KL estimate when on-policy, without a
        baseline; with one it is centred near 0, and the reverse KL is ``mean(log p_S − log p_T)``, what
        ``distill()`` logs as ``reverse_kl``); its gradient is the policy gradient of the reverse KL.

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
    kl_coef = check_temperature(kl_coef, "kl_coef")
    if baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {list(BASELINES)}, got {baseline!r}")
    if isinstance(kl_discount, bool) or not (isinstance(kl_discount, int | float) and 0 <= kl_discount <= 1):
        raise ValueError(f"kl_discount must be a number in [0, 1], got {kl_discount!r}")
    dtype = torch.float64 if student_logprobs.dtype == torch.float64 else torch.float32
    logp = student_logprobs[mask].to(dtype).clamp_min(MASKED_LOG_PROB)  # (N,)
    logp_teacher = teacher_logprobs.to(student_logprobs.device)[mask].to(dtype).clamp_min(MASKED_LOG_PROB)
    logq = sampling_logprobs.to(student_logprobs.device)[mask].to(dtype).clamp_min(MASKED_LOG_PROB)
    advantage = -kl_coef * (logp.detach() - logp_teacher)  # (N,) negative per-token reverse KL
    if kl_discount > 0:
        advantage = _discounted_to_go(advantage, mask, float(kl_discount))
    if baseline != "none":
        advantage = advantage - _leave_one_out_baseline(advantage, mask, baseline, groups)
    if advantage_clip is not None:
        clip = check_temperature(advantage_clip, "advantage_clip")
        advantage = advantage.clamp(-clip, clip)
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
