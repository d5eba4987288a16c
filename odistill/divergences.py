"""Token-level divergences between a student and a teacher language model.

Every function compares two next-token distributions at each position. The vocabulary is the
last dimension: logits have shape ``(..., V)`` (typically ``(B, T, V)``), the optional ``mask`` has
shape ``(...)`` and marks the positions that count (completion tokens; never prompt or padding).

Conventions (the same everywhere in odistill)::

    p_S = softmax(student_logits / temperature)      p_T = softmax(teacher_logits / temperature)
    forward_kl  = KL(p_T ‖ p_S) = Σ_v p_T (log p_T − log p_S)     mode covering  (GKD β = 0)
    reverse_kl  = KL(p_S ‖ p_T) = Σ_v p_S (log p_S − log p_T)     mode seeking   (GKD β = 1)

Memory: large inputs (more than 2**22 logits) are computed chunk by chunk with the gradient written in
place (:mod:`odistill.chunked`): the same numbers in O(chunk·V) extra memory instead of several
``(N, V)`` temporaries. Every two-distribution divergence takes ``chunk_size``: ``"auto"`` (default),
``None`` (never chunk) or a number of rows per chunk.

Reductions: ``"mean"`` averages over the unmasked positions (0 when there are none, with zero
gradients, never NaN), ``"sum"`` adds them, ``"none"`` returns the per-position values with shape
``(...)`` and zeros at masked positions.

Numerics: the math runs in float32 (float64 if the inputs are float64), whatever the input dtype
(bf16 and fp16 logits are upcast). Masked positions are never computed, so a fully ``-inf`` padding
row cannot produce a NaN. A ``-inf`` logit means probability 0 (a masked vocabulary entry); terms
``0 · log 0`` count as 0, and where one distribution puts mass on a token the other forbids (a
mathematically infinite KL) the forbidden log-probability is replaced by :data:`MASKED_LOG_PROB`, so
the result is large but finite and its gradient is defined.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "MASKED_LOG_PROB",
    "forward_kl",
    "reverse_kl",
    "generalized_jsd",
    "skew_forward_kl",
    "skew_reverse_kl",
    "total_variation",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "token_log_probs",
    "logsumexp_rows",
    "NonFiniteLossError",
]

#: Log-probability that stands in for ``log 0`` (a ``-inf`` logit) inside the divergences.
MASKED_LOG_PROB = -1.0e4

_REDUCTIONS = ("mean", "sum", "none")


class NonFiniteLossError(ValueError):
    """A divergence or loss came out NaN: its inputs hold NaN/+inf, or a counted row is all -inf."""


# ----------------------------------------------------------------------------------------------
# validation and shared plumbing
# ----------------------------------------------------------------------------------------------


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if any input is float64, float32 otherwise (bf16/fp16 are upcast)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _check_unit_interval(name: str, value: float) -> float:
    value = float(value)
    if not (0.0 <= value <= 1.0):  # also rejects NaN
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return value


def _check_temperature(temperature: float) -> float:
    temperature = float(temperature)
    if not (temperature > 0.0 and math.isfinite(temperature)):
        raise ValueError(
            f"temperature must be a finite number > 0, got {temperature} "
            "(use 1.0 for the plain distributions; smaller values sharpen them)"
        )
    return temperature


def _check_mask(mask: torch.Tensor | None, batch_shape: torch.Size, what: str) -> torch.Tensor | None:
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor of bools, got {type(mask).__name__}")
    if mask.shape != batch_shape:
        raise ValueError(
            f"mask has shape {tuple(mask.shape)} but {what} has batch shape {tuple(batch_shape)}; "
            "the mask needs one entry per position (e.g. (B, T) for (B, T, V) logits)"
        )
    if mask.dtype == torch.bool:
        return mask
    if mask.dtype.is_floating_point or mask.dtype.is_complex:
        raise TypeError(f"mask must be bool (or integer 0/1), got {mask.dtype}")
    return mask != 0


def _check_logit_pair(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
    for name, t in (("student_logits", student_logits), ("teacher_logits", teacher_logits)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() < 1 or not t.dtype.is_floating_point:
            raise ValueError(f"{name} must be a floating tensor of shape (..., V), got {t.dtype} {tuple(t.shape)}")
    if student_logits.shape[-1] != teacher_logits.shape[-1]:
        raise ValueError(
            f"vocabulary sizes differ: student_logits has V={student_logits.shape[-1]}, teacher_logits has "
            f"V={teacher_logits.shape[-1]}. Student and teacher must share one tokenizer (and vocabulary); "
            "if one model pads its embedding matrix, slice both logits to the tokenizer's vocabulary size."
        )
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student_logits {tuple(student_logits.shape)} and teacher_logits {tuple(teacher_logits.shape)} "
            "must have the same shape (..., V): score the same sequences with both models"
        )


def _active_rows(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Gather the positions that count: (..., V) -> (N, V). Masked rows are never computed."""
    if mask is None:
        return x.reshape(-1, x.shape[-1])
    return x[mask]


def _floored_log_softmax(logits: torch.Tensor, temperature: float, dtype: torch.dtype) -> torch.Tensor:
    """log softmax(logits / temperature) in ``dtype``, with log 0 replaced by MASKED_LOG_PROB."""
    logp = torch.log_softmax(logits.to(dtype) / temperature, dim=-1)
    return torch.where(torch.isneginf(logp), torch.full_like(logp, MASKED_LOG_PROB), logp)


def _kl_rows(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) = Σ_v p (log p − log q) per row. (N, V), (N, V) -> (N,)"""
    return (logp.exp() * (logp - logq)).sum(-1)


def _reduce(values: torch.Tensor, mask: torch.Tensor | None, batch_shape: torch.Size, reduction: str):
    """Reduce per-active-position values (N,) to a scalar, or scatter them back to ``batch_shape``."""
    if values.numel() and torch.isnan(values).any():
        raise NonFiniteLossError(
            "the divergence is NaN: the logits contain NaN or +inf, or a position that counts has every "
            "logit at -inf. Check the model outputs, and mask out positions with no valid token."
        )
    if reduction == "sum":
        return values.sum()
    if reduction == "mean":
        return values.sum() / max(values.numel(), 1)
    if mask is None:
        return values.reshape(batch_shape)
    return torch.zeros(batch_shape, dtype=values.dtype, device=values.device).masked_scatter(mask, values)


def _validate_pair(student_logits, teacher_logits, mask, temperature, reduction):
    """Validate the inputs of a two-distribution divergence; the mask comes back as bool on the logits' device."""
    _check_logit_pair(student_logits, teacher_logits)
    _check_reduction(reduction)
    temperature = _check_temperature(temperature)
    mask = _check_mask(mask, student_logits.shape[:-1], "student_logits")
    if mask is not None and mask.device != student_logits.device:
        mask = mask.to(student_logits.device)
    return teacher_logits.to(student_logits.device), mask, temperature


def _pairwise(student_logits, teacher_logits, mask, temperature, reduction):
    """Shared front half of every two-distribution divergence: validate, gather, log-softmax."""
    teacher_logits, mask, temperature = _validate_pair(student_logits, teacher_logits, mask, temperature, reduction)
    batch_shape = student_logits.shape[:-1]
    dtype = _compute_dtype(student_logits, teacher_logits)
    log_s = _floored_log_softmax(_active_rows(student_logits, mask), temperature, dtype)  # (N, V)
    log_t = _floored_log_softmax(_active_rows(teacher_logits, mask), temperature, dtype)  # (N, V)
    return log_s, log_t, mask, batch_shape


# ----------------------------------------------------------------------------------------------
# chunking hook: large logits go through odistill.chunked (same numbers, O(chunk·V) extra memory)
# ----------------------------------------------------------------------------------------------


def _use_chunks(student_logits, chunk_size) -> bool:
    """``chunk_size="auto"``: chunk when the logits have more than ``chunked.AUTO_MIN_ELEMENTS`` elements;
    ``None``: never (the plain autograd path); an int ≥ 1: always, with that many rows per chunk."""
    if chunk_size is None:
        return False
    if isinstance(chunk_size, str):
        if chunk_size != "auto":
            raise ValueError(f"chunk_size must be 'auto', None or an integer >= 1, got {chunk_size!r}")
        from .chunked import AUTO_MIN_ELEMENTS

        return isinstance(student_logits, torch.Tensor) and student_logits.numel() > AUTO_MIN_ELEMENTS
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be 'auto', None or an integer >= 1, got {chunk_size!r}")
    return True


def _chunked(kind, student_logits, teacher_logits, mask, temperature, reduction, chunk_size, weight=None):
    """Validate exactly as the plain path does, then compute chunk by chunk (see :mod:`odistill.chunked`)."""
    from .chunked import chunked_divergence

    teacher_logits, mask, temperature = _validate_pair(student_logits, teacher_logits, mask, temperature, reduction)
    rows = None if chunk_size == "auto" else chunk_size
    return chunked_divergence(kind, student_logits, teacher_logits, mask, weight=weight, temperature=temperature,
                              reduction=reduction, chunk_size=rows)


# ----------------------------------------------------------------------------------------------
# divergences over the full vocabulary
# ----------------------------------------------------------------------------------------------


def forward_kl(student_logits, teacher_logits, mask=None, *, temperature=1.0, reduction="mean", chunk_size="auto"):
    """Forward KL, KL(p_T ‖ p_S) = Σ_v p_T (log p_T − log p_S): mode covering (GKD β = 0).

    The student is penalised wherever the teacher has mass and the student has little, so it spreads
    out to cover every mode of the teacher. This is classic (word-level) knowledge distillation.

    Args:
        student_logits: ``(..., V)`` student logits (or log-probabilities).
        teacher_logits: ``(..., V)`` teacher logits, same shape.
        mask: optional ``(...)`` bool tensor, True where the position counts.
        temperature: both logits are divided by it before the softmax (> 0).
        reduction: ``"mean"`` over unmasked positions, ``"sum"``, or ``"none"`` → ``(...)``.
        chunk_size: ``"auto"`` (default) computes large inputs (more than 2**22 logits) chunk by chunk
            in O(chunk·V) extra memory (:mod:`odistill.chunked`, same numbers); ``None`` never
            chunks; an integer always chunks, with that many rows per chunk.

    Example:
        >>> s, t = torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, math.log(3.0)]])
        >>> round(forward_kl(s, t).item(), 4)  # 0.25·log(0.25/0.5) + 0.75·log(0.75/0.5)
        0.1308
    """
    if _use_chunks(student_logits, chunk_size):
        return _chunked("forward_kl", student_logits, teacher_logits, mask, temperature, reduction, chunk_size)
    log_s, log_t, mask, shape = _pairwise(student_logits, teacher_logits, mask, temperature, reduction)
    return _reduce(_kl_rows(log_t, log_s), mask, shape, reduction)


def reverse_kl(student_logits, teacher_logits, mask=None, *, temperature=1.0, reduction="mean", chunk_size="auto"):
    """Reverse KL, KL(p_S ‖ p_T) = Σ_v p_S (log p_S − log p_T): mode seeking (GKD β = 1).

    The student is penalised wherever *it* puts mass that the teacher does not, so it prefers to sit
    on one mode of the teacher rather than cover them all. On-policy distillation minimises this on
    sequences the student samples itself.

    Args:
        student_logits: ``(..., V)`` student logits (or log-probabilities).
        teacher_logits: ``(..., V)`` teacher logits, same shape.
        mask: optional ``(...)`` bool tensor, True where the position counts.
        temperature: both logits are divided by it before the softmax (> 0).
        reduction: ``"mean"`` over unmasked positions, ``"sum"``, or ``"none"`` → ``(...)``.
        chunk_size: ``"auto"`` (default) computes large inputs (more than 2**22 logits) chunk by chunk
            in O(chunk·V) extra memory (:mod:`odistill.chunked`, same numbers); ``None`` never
            chunks; an integer always chunks, with that many rows per chunk.

    Example:
        >>> s, t = torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, math.log(3.0)]])
        >>> round(reverse_kl(s, t).item(), 4)  # 0.5·log(0.5/0.25) + 0.5·log(0.5/0.75)
        0.1438
    """
    if _use_chunks(student_logits, chunk_size):
        return _chunked("reverse_kl", student_logits, teacher_logits, mask, temperature, reduction, chunk_size)
    log_s, log_t, mask, shape = _pairwise(student_logits, teacher_logits, mask, temperature, reduction)
    return _reduce(_kl_rows(log_s, log_t), mask, shape, reduction)


def _log_mixture(log_a: torch.Tensor, log_b: torch.Tensor, weight_a: float) -> torch.Tensor:
    """log(w·a + (1 − w)·b) for 0 < w < 1, computed stably from log a and log b."""
    return torch.logaddexp(log_a + math.log(weight_a), log_b + math.log1p(-weight_a))


def generalized_jsd(student_logits, teacher_logits, mask=None, *, beta=0.5, temperature=1.0, reduction="mean",
                    chunk_size="auto"):
    """Generalized Jensen–Shannon divergence JSD(β) of GKD (Agarwal et al., 2024).

    ``M = β·p_T + (1 − β)·p_S`` and ``JSD(β) = β·KL(p_T ‖ M) + (1 − β)·KL(p_S ‖ M)``.

    β convention (the same as TRL and Liger-Kernel): **β = 0 is forward KL, β = 1 is reverse KL.**
    The end points are special-cased: the interior formula tends to 0 at both ends, while
    JSD(β)/β → KL(p_T ‖ p_S) as β → 0 and JSD(β)/(1 − β) → KL(p_S ‖ p_T) as β → 1. So
    ``generalized_jsd(β=0)`` returns exactly :func:`forward_kl` and ``β=1`` exactly
    :func:`reverse_kl`; β = 0.5 is the symmetric Jensen–Shannon divergence (bounded by log 2).

    Args:
        student_logits: ``(..., V)`` student logits.
        teacher_logits: ``(..., V)`` teacher logits, same shape.
        mask: optional ``(...)`` bool tensor, True where the position counts.
        beta: interpolation weight in [0, 1] (weight of the teacher in the mixture M).
        temperature: both logits are divided by it before the softmax (> 0).
        reduction: ``"mean"`` over unmasked positions, ``"sum"``, or ``"none"`` → ``(...)``.
        chunk_size: ``"auto"`` (default) computes large inputs (more than 2**22 logits) chunk by chunk
            in O(chunk·V) extra memory (:mod:`odistill.chunked`, same numbers); ``None`` never
            chunks; an integer always chunks, with that many rows per chunk.

    Example:
        >>> s, t = torch.tensor([[10.0, -10.0]]), torch.tensor([[-10.0, 10.0]])
        >>> round(generalized_jsd(s, t, beta=0.5).item(), 4)  # disjoint supports → log 2
        0.6931
    """
    beta = _check_unit_interval("beta", beta)
    if _use_chunks(student_logits, chunk_size):
        return _chunked("generalized_jsd", student_logits, teacher_logits, mask, temperature, reduction, chunk_size, beta)
    log_s, log_t, mask, shape = _pairwise(student_logits, teacher_logits, mask, temperature, reduction)
    if beta == 0.0:
        values = _kl_rows(log_t, log_s)
    elif beta == 1.0:
        values = _kl_rows(log_s, log_t)
    else:
        log_m = _log_mixture(log_t, log_s, beta)  # (N, V)
        values = beta * _kl_rows(log_t, log_m) + (1.0 - beta) * _kl_rows(log_s, log_m)
    return _reduce(values, mask, shape, reduction)


def skew_forward_kl(student_logits, teacher_logits, mask=None, *, alpha=0.1, temperature=1.0, reduction="mean",
                    chunk_size="auto"):
    """Skew forward KL of DistiLLM: KL(p_T ‖ α·p_T + (1 − α)·p_S).

    Mixing a little of the teacher into the student keeps the divergence bounded (≤ −log α) and its
    gradients stable when the student gives a teacher token almost no mass. α = 0 is
    :func:`forward_kl`; α = 1 gives 0.

    Args:
        student_logits, teacher_logits, mask, temperature, reduction, chunk_size: as in :func:`forward_kl`.
        alpha: skew in [0, 1] (DistiLLM uses 0.1).

    Example:
        >>> s, t = torch.tensor([[10.0, -10.0]]), torch.tensor([[-10.0, 10.0]])
        >>> round(skew_forward_kl(s, t, alpha=0.1).item(), 2)  # ≈ −log(0.1)
        2.3
    """
    alpha = _check_unit_interval("alpha", alpha)
    if alpha < 1.0 and _use_chunks(student_logits, chunk_size):
        return _chunked("skew_forward_kl", student_logits, teacher_logits, mask, temperature, reduction, chunk_size, alpha)
    log_s, log_t, mask, shape = _pairwise(student_logits, teacher_logits, mask, temperature, reduction)
    if alpha == 0.0:
        log_mix = log_s
    elif alpha == 1.0:
        log_mix = log_t
    else:
        log_mix = _log_mixture(log_t, log_s, alpha)
    return _reduce(_kl_rows(log_t, log_mix), mask, shape, reduction)


def skew_reverse_kl(student_logits, teacher_logits, mask=None, *, alpha=0.1, temperature=1.0, reduction="mean",
                    chunk_size="auto"):
    """Skew reverse KL of DistiLLM: KL(p_S ‖ α·p_S + (1 − α)·p_T).

    α = 0 is :func:`reverse_kl`; α = 1 gives 0; the value is bounded by −log α.

    Args:
        student_logits, teacher_logits, mask, temperature, reduction, chunk_size: as in :func:`reverse_kl`.
        alpha: skew in [0, 1] (DistiLLM uses 0.1).

    Example:
        >>> s = t = torch.tensor([[1.0, 2.0, 3.0]])
        >>> skew_reverse_kl(s, t).item()
        0.0
    """
    alpha = _check_unit_interval("alpha", alpha)
    if alpha < 1.0 and _use_chunks(student_logits, chunk_size):
        return _chunked("skew_reverse_kl", student_logits, teacher_logits, mask, temperature, reduction, chunk_size, alpha)
    log_s, log_t, mask, shape = _pairwise(student_logits, teacher_logits, mask, temperature, reduction)
    if alpha == 0.0:
        log_mix = log_t
    elif alpha == 1.0:
        log_mix = log_s
    else:
        log_mix = _log_mixture(log_s, log_t, alpha)
    return _reduce(_kl_rows(log_s, log_mix), mask, shape, reduction)


def total_variation(student_logits, teacher_logits, mask=None, *, temperature=1.0, reduction="mean",
                    chunk_size="auto"):
    """Total variation distance, ``TVD(p_S, p_T) = ½ Σ_v |p_S − p_T|`` ∈ [0, 1].

    Symmetric and bounded: the largest difference in probability the two models give any event.

    Args:
        student_logits, teacher_logits, mask, temperature, reduction, chunk_size: as in :func:`forward_kl`.

    Example:
        >>> s, t = torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, math.log(3.0)]])
        >>> round(total_variation(s, t).item(), 4)  # ½(|0.5 − 0.25| + |0.5 − 0.75|)
        0.25
    """
    if _use_chunks(student_logits, chunk_size):
        return _chunked("total_variation", student_logits, teacher_logits, mask, temperature, reduction, chunk_size)
    log_s, log_t, mask, shape = _pairwise(student_logits, teacher_logits, mask, temperature, reduction)
    values = 0.5 * (log_s.exp() - log_t.exp()).abs().sum(-1)
    return _reduce(values, mask, shape, reduction)


# ----------------------------------------------------------------------------------------------
# single-sample estimators of KL from log-ratios (J. Schulman, "Approximating KL divergence", 2020)
# ----------------------------------------------------------------------------------------------


def _sample_log_ratio(sampler_logprobs, target_logprobs, mask, reduction):
    for name, t in (("sampler_logprobs", sampler_logprobs), ("target_logprobs", target_logprobs)):
        if not isinstance(t, torch.Tensor) or not t.dtype.is_floating_point:
            raise TypeError(f"{name} must be a floating torch.Tensor of per-token log-probs (B, T)")
    if sampler_logprobs.shape != target_logprobs.shape:
        raise ValueError(
            f"sampler_logprobs {tuple(sampler_logprobs.shape)} and target_logprobs "
            f"{tuple(target_logprobs.shape)} must have the same shape: one log-prob per sampled token"
        )
    _check_reduction(reduction)
    shape = sampler_logprobs.shape
    mask = _check_mask(mask, shape, "sampler_logprobs")
    dtype = _compute_dtype(sampler_logprobs, target_logprobs)
    target_logprobs = target_logprobs.to(sampler_logprobs.device)
    if mask is None:
        lp, lq = sampler_logprobs.reshape(-1), target_logprobs.reshape(-1)
    else:
        mask = mask.to(sampler_logprobs.device)
        lp, lq = sampler_logprobs[mask], target_logprobs[mask]
    lp = lp.to(dtype).clamp_min(MASKED_LOG_PROB)
    lq = lq.to(dtype).clamp_min(MASKED_LOG_PROB)
    return lq - lp, mask, shape  # log r = log q(x) − log p(x), x ~ p


def kl_k1(sampler_logprobs, target_logprobs, mask=None, *, reduction="mean"):
    """k1 = −log r = log p(x) − log q(x): the unbiased, high-variance single-sample estimate of KL(p ‖ q).

    ``x`` was sampled from ``p`` (the sampler); ``r = q(x)/p(x)``. Individual values can be negative;
    only their average is the KL. In on-policy distillation ``p`` is the student and ``q`` the
    teacher: k1 is the per-token reverse KL that Thinking Machines use as a negative advantage, and
    it needs only the teacher's log-prob of each sampled token.

    Args:
        sampler_logprobs: ``(...)`` log p(x_t) of the sampled tokens under the sampling distribution.
        target_logprobs: ``(...)`` log q(x_t) of the same tokens under the other distribution.
        mask: optional ``(...)`` bool, True where the token counts.
        reduction: ``"mean"`` over unmasked tokens, ``"sum"``, or ``"none"``.

    Example:
        >>> kl_k1(torch.tensor([-0.1, -2.0]), torch.tensor([-0.5, -1.0]), reduction="none")
        tensor([ 0.4000, -1.0000])
    """
    log_r, mask, shape = _sample_log_ratio(sampler_logprobs, target_logprobs, mask, reduction)
    return _reduce(-log_r, mask, shape, reduction)


def kl_k2(sampler_logprobs, target_logprobs, mask=None, *, reduction="mean"):
    """k2 = ½ (log r)²: a biased, low-variance, always non-negative estimate of KL(p ‖ q), x ~ p.

    Its bias is small when p and q are close (it matches KL to second order). Its expectation is
    an f-divergence, and its gradient is the reverse-KL gradient in expectation (on-policy).

    Args and example: as in :func:`kl_k1`.

    Example:
        >>> kl_k2(torch.tensor([-0.1]), torch.tensor([-0.5]))
        tensor(0.0800)
    """
    log_r, mask, shape = _sample_log_ratio(sampler_logprobs, target_logprobs, mask, reduction)
    return _reduce(0.5 * log_r.square(), mask, shape, reduction)


def kl_k3(sampler_logprobs, target_logprobs, mask=None, *, reduction="mean"):
    """k3 = (r − 1) − log r: unbiased *and* always non-negative estimate of KL(p ‖ q), x ~ p.

    Adding the zero-mean control variate (r − 1) to k1 removes most of its variance while keeping
    it unbiased, since E_p[r] = 1. Large positive log r (the target far likelier than the sampler)
    makes r overflow; the value is then ``inf``, never NaN.

    Args and example: as in :func:`kl_k1`.

    Example:
        >>> round(kl_k3(torch.tensor([-0.1]), torch.tensor([-0.5])).item(), 4)  # e^-0.4 − 1 + 0.4
        0.0703
    """
    log_r, mask, shape = _sample_log_ratio(sampler_logprobs, target_logprobs, mask, reduction)
    return _reduce(torch.expm1(log_r) - log_r, mask, shape, reduction)


# ----------------------------------------------------------------------------------------------
# helpers used across the package
# ----------------------------------------------------------------------------------------------


def token_log_probs(logits: torch.Tensor, tokens: torch.Tensor, *, temperature: float = 1.0) -> torch.Tensor:
    """Log-probability of each given token: log softmax(logits / temperature)[..., token].

    Args:
        logits: ``(..., V)`` logits.
        tokens: ``(...)`` integer token ids.
        temperature: logits are divided by it first (> 0).

    Returns:
        ``(...)`` float32 (float64 for float64 logits) log-probabilities.

    Example:
        >>> token_log_probs(torch.tensor([[0.0, 0.0]]), torch.tensor([1])).exp()
        tensor([0.5000])
    """
    temperature = _check_temperature(temperature)
    if logits.shape[:-1] != tokens.shape:
        raise ValueError(f"tokens {tuple(tokens.shape)} must match the batch shape of logits {tuple(logits.shape)}")
    dtype = _compute_dtype(logits)
    picked = logits.gather(-1, tokens.unsqueeze(-1).long()).squeeze(-1).to(dtype) / temperature
    return picked - logsumexp_rows(logits, dtype=dtype, temperature=temperature)


def logsumexp_rows(logits: torch.Tensor, *, dtype: torch.dtype = torch.float32, temperature: float = 1.0) -> torch.Tensor:
    """``logsumexp(logits / temperature, dim=-1)`` computed in ``dtype``. ``(..., V) -> (...)``

    When no gradient is needed it runs a few rows at a time (about 2**18 logits per chunk): no full-size
    upcast copy of low-precision logits, and each chunk stays in the CPU cache (about twice as fast at
    V = 32k). The numbers are the same as one call on the whole tensor.
    """
    if torch.is_grad_enabled() and logits.requires_grad:
        z = logits.to(dtype)
        return torch.logsumexp(z / temperature if temperature != 1.0 else z, dim=-1)
    rows = logits.reshape(-1, logits.shape[-1])
    step = max(1, 2**18 // max(rows.shape[-1], 1))
    parts = []
    for chunk in rows.split(step):
        z = chunk.to(dtype)
        parts.append((z / temperature if temperature != 1.0 else z).logsumexp(-1))
    lse = torch.cat(parts) if parts else rows.new_zeros(0, dtype=dtype)
    return lse.reshape(logits.shape[:-1])
