"""Tensor plumbing shared by the whole core: checks, masked reductions, the compute dtype, log-probs.

Every divergence, loss and scorer in odistill goes through these few functions, so that they agree on
the conventions::

    shapes      logits (..., V) · masks (...) of bools · per-token values (...)
    dtype       the math runs in float32 (float64 when any input is float64); bf16/fp16 are upcast
    log 0       a -inf log-probability (a forbidden token) is floored at MASKED_LOG_PROB, so that
                "mass where the other model has none" is large but finite, with a defined gradient
    reduction   "mean" over the counted positions (0 when there are none, never NaN), "sum", or
                "none" → the per-position values scattered back to (...), 0 where the mask is False
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "MASKED_LOG_PROB",
    "REDUCTIONS",
    "NonFiniteLossError",
    "compute_dtype",
    "check_reduction",
    "check_temperature",
    "check_unit_interval",
    "check_mask",
    "active_rows",
    "scatter_rows",
    "floored_log_softmax",
    "masked_reduce",
    "token_log_probs",
    "logsumexp_rows",
]

#: Log-probability that stands in for ``log 0`` (a ``-inf`` logit) inside the divergences and losses.
MASKED_LOG_PROB = -1.0e4

#: The reductions every divergence and loss accepts.
REDUCTIONS = ("mean", "sum", "none")

#: ``logsumexp_rows`` without a gradient works on chunks of about this many logits.
_LSE_CHUNK_ELEMENTS = 2**18


class NonFiniteLossError(ValueError):
    """A divergence or loss came out NaN: its inputs hold NaN/+inf, or a counted row is all -inf."""


def compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """float64 if any input is float64, float32 otherwise (bf16/fp16 are upcast). ``None`` entries are
    skipped."""
    return (
        torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32
    )


def check_reduction(reduction: str) -> None:
    """Raise ``ValueError`` unless ``reduction`` is one of :data:`REDUCTIONS`."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def check_unit_interval(name: str, value: float) -> float:
    """``value`` as a float in [0, 1] (NaN rejected), or a ``ValueError`` naming ``name``."""
    value = float(value)
    if not (0.0 <= value <= 1.0):  # also rejects NaN
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return value


def check_temperature(temperature: float, name: str = "temperature") -> float:
    """``temperature`` as a finite float > 0, or a ``ValueError`` that says what to pass."""
    temperature = float(temperature)
    if not (temperature > 0.0 and math.isfinite(temperature)):
        raise ValueError(
            f"{name} must be a finite number > 0, got {temperature} "
            "(use 1.0 for the plain distributions; smaller values sharpen them)"
        )
    return temperature


def check_mask(mask: torch.Tensor | None, batch_shape: torch.Size, what: str) -> torch.Tensor | None:
    """A ``(...)`` mask as bools, checked against ``batch_shape`` (the shape of ``what`` without ``V``).

    Integer 0/1 masks are accepted and converted; floating masks are rejected (a soft weight is not a mask).
    """
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


def active_rows(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The positions that count: ``(..., D) -> (N, D)``. Masked rows are never read again."""
    if mask is None:
        return x.reshape(-1, x.shape[-1])
    return x[mask.to(x.device)]


def scatter_rows(values: torch.Tensor, mask: torch.Tensor | None, batch_shape: torch.Size) -> torch.Tensor:
    """The inverse of :func:`active_rows` for per-position values: ``(N,) -> batch_shape``, 0 where masked."""
    if mask is None:
        return values.reshape(batch_shape)
    out = torch.zeros(batch_shape, dtype=values.dtype, device=values.device)
    return out.masked_scatter(mask.to(values.device), values)


def floored_log_softmax(logits: torch.Tensor, temperature: float, dtype: torch.dtype) -> torch.Tensor:
    """``log softmax(logits / temperature)`` in ``dtype``, with ``log 0`` replaced by
    :data:`MASKED_LOG_PROB`."""
    logp = torch.log_softmax(logits.to(dtype) / temperature, dim=-1)
    return torch.where(torch.isneginf(logp), torch.full_like(logp, MASKED_LOG_PROB), logp)


def masked_reduce(values: torch.Tensor, mask: torch.Tensor | None, batch_shape: torch.Size, reduction: str):
    """Reduce per-counted-position values ``(N,)`` to a scalar, or scatter them back to ``batch_shape``.

    Raises:
        NonFiniteLossError: a value is NaN (NaN or +inf inputs, or a counted row that is all -inf).
    """
    if values.numel() and torch.isnan(values).any():
        raise NonFiniteLossError(
            "the divergence is NaN: the logits contain NaN or +inf, or a position that counts has every "
            "logit at -inf. Check the model outputs, and mask out positions with no valid token."
        )
    if reduction == "sum":
        return values.sum()
    if reduction == "mean":
        return values.sum() / max(values.numel(), 1)
    return scatter_rows(values, mask, batch_shape)


def token_log_probs(logits: torch.Tensor, tokens: torch.Tensor, *, temperature: float = 1.0) -> torch.Tensor:
    """Log-probability of each given token: ``log softmax(logits / temperature)[..., token]``.

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
    temperature = check_temperature(temperature)
    if logits.shape[:-1] != tokens.shape:
        raise ValueError(
            f"tokens {tuple(tokens.shape)} must match the batch shape of logits {tuple(logits.shape)}"
        )
    dtype = compute_dtype(logits)
    picked = logits.gather(-1, tokens.unsqueeze(-1).long()).squeeze(-1).to(dtype) / temperature
    return picked - logsumexp_rows(logits, dtype=dtype, temperature=temperature)


def logsumexp_rows(
    logits: torch.Tensor,
    *,
    dtype: torch.dtype = torch.float32,
    temperature: float = 1.0,
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """``logsumexp(logits / temperature, dim=-1)`` computed in ``dtype``. ``(..., V) -> (...)``

    ``exclude``: ``(..., k)`` indices of entries left out of each row's sum (e.g. a teacher's top-k tokens,
    for the log of its mass outside them; ``-inf`` when nothing is left).
    When no gradient is needed it runs a few rows at a time, so low-precision logits are never upcast
    (or copied, with ``exclude``) as a whole and each chunk stays in the CPU cache. The numbers are
    those of one call on the whole tensor.
    """
    if torch.is_grad_enabled() and logits.requires_grad:
        z = logits.to(dtype)
        if exclude is not None:
            z = z.scatter(-1, exclude, float("-inf"))
        return torch.logsumexp(z / temperature if temperature != 1.0 else z, dim=-1)
    rows = logits.reshape(-1, logits.shape[-1])
    left_out = None if exclude is None else exclude.reshape(-1, exclude.shape[-1])
    step = max(1, _LSE_CHUNK_ELEMENTS // max(rows.shape[-1], 1))
    parts = []
    for start in range(0, rows.shape[0], step):
        z = rows[start : start + step].to(dtype)
        if left_out is not None:  # a copy of this chunk only (``to`` may have returned the input itself)
            z = z.scatter(-1, left_out[start : start + step], float("-inf"))
        parts.append((z / temperature if temperature != 1.0 else z).logsumexp(-1))
    lse = torch.cat(parts) if parts else rows.new_zeros(0, dtype=dtype)
    return lse.reshape(logits.shape[:-1])
