"""Token-level divergences between a student and a teacher language model, and their registry.

Every function compares two next-token distributions at each position. The vocabulary is the
last dimension: logits have shape ``(..., V)`` (typically ``(B, T, V)``), the optional ``mask`` has
shape ``(...)`` and marks the positions that count (completion tokens; never prompt or padding).

Conventions (the same everywhere in odistill)::

    p_S = softmax(student_logits / temperature)      p_T = softmax(teacher_logits / temperature)
    forward_kl  = KL(p_T ‖ p_S) = Σ_v p_T (log p_T − log p_S)     mode covering  (GKD β = 0)
    reverse_kl  = KL(p_S ‖ p_T) = Σ_v p_S (log p_S − log p_T)     mode seeking   (GKD β = 1)

Memory: large inputs (more than :data:`~odistill.core.chunked.AUTO_MIN_ELEMENTS` logits) are computed
chunk by chunk with the gradient written in place (:mod:`odistill.core.chunked`): the same numbers in
O(chunk·V) extra memory instead of several ``(N, V)`` temporaries. Every two-distribution divergence
takes ``chunk_size``: ``"auto"`` (default), ``None`` (never chunk) or a number of rows per chunk.

Reductions: ``"mean"`` averages over the unmasked positions (0 when there are none, with zero
gradients, never NaN), ``"sum"`` adds them, ``"none"`` returns the per-position values with shape
``(...)`` and zeros at masked positions.

Numerics: the math runs in float32 (float64 if the inputs are float64), whatever the input dtype
(bf16 and fp16 logits are upcast). Masked positions are never computed, so a fully ``-inf`` padding
row cannot produce a NaN. A ``-inf`` logit means probability 0 (a masked vocabulary entry); terms
``0 · log 0`` count as 0, and where one distribution puts mass on a token the other forbids (a
mathematically infinite KL) the forbidden log-probability is replaced by :data:`MASKED_LOG_PROB`, so
the result is large but finite and its gradient is defined.

The registry :data:`DIVERGENCES` (name → :class:`Divergence`) is what the loss, the config, the command
line and the fused LM-head path read: a new divergence is its row formula and public function here, its
chunk kernel in :mod:`odistill.core.kernels`, one registry entry, and its test.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from . import chunked, kernels
from .tensor_ops import (
    MASKED_LOG_PROB,
    active_rows,
    check_mask,
    check_reduction,
    check_temperature,
    check_unit_interval,
    compute_dtype,
    floored_log_softmax,
    masked_reduce,
)

__all__ = [
    "Divergence",
    "DIVERGENCES",
    "get_divergence",
    "forward_kl",
    "reverse_kl",
    "generalized_jsd",
    "skew_forward_kl",
    "skew_reverse_kl",
    "total_variation",
    "kl_k1",
    "kl_k2",
    "kl_k3",
]


# ----------------------------------------------------------------------------------------------
# validation and the shared path of every two-distribution divergence
# ----------------------------------------------------------------------------------------------


def _check_logit_pair(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
    for name, t in (("student_logits", student_logits), ("teacher_logits", teacher_logits)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() < 1 or not t.dtype.is_floating_point:
            raise ValueError(
                f"{name} must be a floating tensor of shape (..., V), got {t.dtype} {tuple(t.shape)}"
            )
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


def _use_chunks(student_logits: torch.Tensor, chunk_size) -> bool:
    """``"auto"``: chunk when the logits have more than ``AUTO_MIN_ELEMENTS`` elements; ``None``: never;
    an int ≥ 1: always, with that many rows per chunk."""
    if chunk_size is None:
        return False
    if isinstance(chunk_size, str):
        if chunk_size != "auto":
            raise ValueError(f"chunk_size must be 'auto', None or an integer >= 1, got {chunk_size!r}")
        return student_logits.numel() > chunked.AUTO_MIN_ELEMENTS
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be 'auto', None or an integer >= 1, got {chunk_size!r}")
    return True


def _evaluate(name, student_logits, teacher_logits, mask, weight, temperature, reduction, chunk_size):
    """Validate, resolve end points, then compute chunk by chunk or on the plain autograd path."""
    _check_logit_pair(student_logits, teacher_logits)
    check_reduction(reduction)
    temperature = check_temperature(temperature)
    mask = check_mask(mask, student_logits.shape[:-1], "student_logits")
    if mask is not None:
        mask = mask.to(student_logits.device)
    teacher_logits = teacher_logits.to(student_logits.device)
    spec, weight = DIVERGENCES[name].resolve(weight)
    interior = weight is None or 0.0 < weight < 1.0  # the kernels take a weight strictly inside (0, 1)
    if spec.kernel is not None and interior and _use_chunks(student_logits, chunk_size):
        rows = None if chunk_size == "auto" else chunk_size
        return chunked.chunked_divergence(
            spec.kernel,
            student_logits,
            teacher_logits,
            mask,
            weight=weight,
            temperature=temperature,
            reduction=reduction,
            chunk_size=rows,
        )
    dtype = compute_dtype(student_logits, teacher_logits)
    log_s = floored_log_softmax(active_rows(student_logits, mask), temperature, dtype)  # (N, V)
    log_t = floored_log_softmax(active_rows(teacher_logits, mask), temperature, dtype)  # (N, V)
    return masked_reduce(spec.rows(log_s, log_t, weight), mask, student_logits.shape[:-1], reduction)


# ----------------------------------------------------------------------------------------------
# row formulas of the plain path: (N, V) log-probs -> (N,) values
# ----------------------------------------------------------------------------------------------


def _kl_rows(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) = Σ_v p (log p − log q) per row. (N, V), (N, V) -> (N,)"""
    return (logp.exp() * (logp - logq)).sum(-1)


def _log_mixture(log_a: torch.Tensor, log_b: torch.Tensor, weight_a: float) -> torch.Tensor:
    """log(w·a + (1 − w)·b) for 0 < w < 1, computed stably from log a and log b."""
    return torch.logaddexp(log_a + math.log(weight_a), log_b + math.log1p(-weight_a))


def _forward_kl_rows(log_s, log_t, weight):
    return _kl_rows(log_t, log_s)


def _reverse_kl_rows(log_s, log_t, weight):
    return _kl_rows(log_s, log_t)


def _jsd_rows(log_s, log_t, beta):  # 0 < β < 1: the end points resolve to forward / reverse KL
    log_m = _log_mixture(log_t, log_s, beta)  # (N, V)
    return beta * _kl_rows(log_t, log_m) + (1.0 - beta) * _kl_rows(log_s, log_m)


def _skew_forward_kl_rows(log_s, log_t, alpha):  # 0 < α ≤ 1 (α = 0 resolves to forward KL)
    if alpha == 1.0:
        return torch.zeros(log_s.shape[:-1], dtype=log_s.dtype, device=log_s.device)
    return _kl_rows(log_t, _log_mixture(log_t, log_s, alpha))


def _skew_reverse_kl_rows(log_s, log_t, alpha):  # 0 < α ≤ 1 (α = 0 resolves to reverse KL)
    if alpha == 1.0:
        return torch.zeros(log_s.shape[:-1], dtype=log_s.dtype, device=log_s.device)
    return _kl_rows(log_s, _log_mixture(log_s, log_t, alpha))


def _total_variation_rows(log_s, log_t, weight):
    return 0.5 * (log_s.exp() - log_t.exp()).abs().sum(-1)


# ----------------------------------------------------------------------------------------------
# divergences over the full vocabulary
# ----------------------------------------------------------------------------------------------


def forward_kl(
    student_logits, teacher_logits, mask=None, *, temperature=1.0, reduction="mean", chunk_size="auto"
):
    r"""Forward KL, KL(p_T ‖ p_S) = Σ_v p_T (log p_T − log p_S): mode covering (GKD β = 0).

    .. math::

        \mathrm{KL}(p_T \,\|\, p_S) = \sum_{v=1}^{V} p_T(v)\,\bigl(\log p_T(v) - \log p_S(v)\bigr)

    The student is penalised wherever the teacher has mass and the student has little, so it spreads
    out to cover every mode of the teacher. This is classic (word-level) knowledge distillation.

    Args:
        student_logits: ``(..., V)`` student logits (or log-probabilities).
        teacher_logits: ``(..., V)`` teacher logits, same shape.
        mask: optional ``(...)`` bool tensor, True where the position counts.
        temperature: both logits are divided by it before the softmax (> 0).
        reduction: ``"mean"`` over unmasked positions, ``"sum"``, or ``"none"`` → ``(...)``.
        chunk_size: ``"auto"`` (default) computes large inputs (more than 2**22 logits) chunk by chunk
            in O(chunk·V) extra memory (:mod:`odistill.core.chunked`, same numbers); ``None`` never
            chunks; an integer always chunks, with that many rows per chunk.

    Example:
        >>> s, t = torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, math.log(3.0)]])
        >>> round(forward_kl(s, t).item(), 4)  # 0.25·log(0.25/0.5) + 0.75·log(0.75/0.5)
        0.1308
    """
    return _evaluate(
        "forward_kl", student_logits, teacher_logits, mask, None, temperature, reduction, chunk_size
    )


def reverse_kl(
    student_logits, teacher_logits, mask=None, *, temperature=1.0, reduction="mean", chunk_size="auto"
):
    r"""Reverse KL, KL(p_S ‖ p_T) = Σ_v p_S (log p_S − log p_T): mode seeking (GKD β = 1).

    .. math::

        \mathrm{KL}(p_S \,\|\, p_T) = \sum_{v=1}^{V} p_S(v)\,\bigl(\log p_S(v) - \log p_T(v)\bigr)

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
            in O(chunk·V) extra memory (:mod:`odistill.core.chunked`, same numbers); ``None`` never
            chunks; an integer always chunks, with that many rows per chunk.

    Example:
        >>> s, t = torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, math.log(3.0)]])
        >>> round(reverse_kl(s, t).item(), 4)  # 0.5·log(0.5/0.25) + 0.5·log(0.5/0.75)
        0.1438
    """
    return _evaluate(
        "reverse_kl", student_logits, teacher_logits, mask, None, temperature, reduction, chunk_size
    )


def generalized_jsd(
    student_logits,
    teacher_logits,
    mask=None,
    *,
    beta=0.5,
    temperature=1.0,
    reduction="mean",
    chunk_size="auto",
):
    r"""Generalized Jensen–Shannon divergence JSD(β) of GKD (Agarwal et al., 2024).

    With M the mixture of the two distributions:

    .. math::

        M = \beta\, p_T + (1 - \beta)\, p_S, \qquad
        \mathrm{JSD}(\beta) = \beta\, \mathrm{KL}(p_T \,\|\, M) + (1 - \beta)\, \mathrm{KL}(p_S \,\|\, M)

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
            in O(chunk·V) extra memory (:mod:`odistill.core.chunked`, same numbers); ``None`` never
            chunks; an integer always chunks, with that many rows per chunk.

    Example:
        >>> s, t = torch.tensor([[10.0, -10.0]]), torch.tensor([[-10.0, 10.0]])
        >>> round(generalized_jsd(s, t, beta=0.5).item(), 4)  # disjoint supports → log 2
        0.6931
    """
    beta = check_unit_interval("beta", beta)
    return _evaluate("jsd", student_logits, teacher_logits, mask, beta, temperature, reduction, chunk_size)


def skew_forward_kl(
    student_logits,
    teacher_logits,
    mask=None,
    *,
    alpha=0.1,
    temperature=1.0,
    reduction="mean",
    chunk_size="auto",
):
    r"""Skew forward KL of DistiLLM: KL(p_T ‖ α·p_T + (1 − α)·p_S).

    .. math::

        \mathrm{SKL}_\alpha(p_T, p_S) = \mathrm{KL}\bigl(p_T \,\|\, \alpha\, p_T + (1 - \alpha)\, p_S\bigr)

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
    alpha = check_unit_interval("alpha", alpha)
    return _evaluate(
        "skew_forward_kl", student_logits, teacher_logits, mask, alpha, temperature, reduction, chunk_size
    )


def skew_reverse_kl(
    student_logits,
    teacher_logits,
    mask=None,
    *,
    alpha=0.1,
    temperature=1.0,
    reduction="mean",
    chunk_size="auto",
):
    r"""Skew reverse KL of DistiLLM: KL(p_S ‖ α·p_S + (1 − α)·p_T).

    .. math::

        \mathrm{SRKL}_\alpha(p_S, p_T) = \mathrm{KL}\bigl(p_S \,\|\, \alpha\, p_S + (1 - \alpha)\, p_T\bigr)

    α = 0 is :func:`reverse_kl`; α = 1 gives 0; the value is bounded by −log α.

    Args:
        student_logits, teacher_logits, mask, temperature, reduction, chunk_size: as in :func:`reverse_kl`.
        alpha: skew in [0, 1] (DistiLLM uses 0.1).

    Example:
        >>> s = t = torch.tensor([[1.0, 2.0, 3.0]])
        >>> skew_reverse_kl(s, t).item()
        0.0
    """
    alpha = check_unit_interval("alpha", alpha)
    return _evaluate(
        "skew_reverse_kl", student_logits, teacher_logits, mask, alpha, temperature, reduction, chunk_size
    )


def total_variation(
    student_logits, teacher_logits, mask=None, *, temperature=1.0, reduction="mean", chunk_size="auto"
):
    r"""Total variation distance, ``TVD(p_S, p_T) = ½ Σ_v |p_S − p_T|`` ∈ [0, 1].

    .. math::

        \mathrm{TVD}(p_S, p_T) = \tfrac{1}{2} \sum_{v=1}^{V} \bigl|p_S(v) - p_T(v)\bigr| \in [0, 1]

    Symmetric and bounded: the largest difference in probability the two models give any event.

    Args:
        student_logits, teacher_logits, mask, temperature, reduction, chunk_size: as in :func:`forward_kl`.

    Example:
        >>> s, t = torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, math.log(3.0)]])
        >>> round(total_variation(s, t).item(), 4)  # ½(|0.5 − 0.25| + |0.5 − 0.75|)
        0.25
    """
    return _evaluate(
        "total_variation", student_logits, teacher_logits, mask, None, temperature, reduction, chunk_size
    )


# ----------------------------------------------------------------------------------------------
# the registry
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Divergence:
    """One divergence of the registry: what the loss, the config, the CLI and the fused path need to know.

    Attributes:
        name: the registry key (``DistillConfig.divergence``, ``odistill distill --divergence``).
        function: the public function, ``function(student_logits, teacher_logits, mask, **kw)``.
        rows: the plain-path row formula ``rows(log_s (N, V), log_t (N, V), weight) -> (N,)``.
        kernel: the chunk kernel of :mod:`odistill.core.kernels` (values and analytic gradients).
        label: a short human name ("reverse KL").
        formula: the math, e.g. ``"KL(p_S ‖ p_T)"``.
        param: the name of its one extra parameter (``"beta"``, ``"alpha"``) or None.
        default: that parameter's default value.
        endpoints: parameter values at which it *is* another registered divergence (by name), e.g.
            generalized JSD at β = 0 is forward KL. The chunked and fused paths compute that one.
        config_field: the :class:`~odistill.train.config.DistillConfig` field that holds the parameter
            (``"beta"``, ``"skew_alpha"``), or None.
        gkd_beta: the β of GKD's generalized JSD this divergence equals (forward KL 0, reverse KL 1),
            or None when it has no fixed β.
    """

    name: str
    function: Callable
    rows: Callable
    kernel: Callable | None
    label: str
    formula: str
    param: str | None = None
    default: float | None = None
    endpoints: Mapping[float, str] = field(default_factory=dict)
    gkd_beta: float | None = None
    config_field: str | None = None

    def resolve(self, weight: float | None = None) -> tuple[Divergence, float | None]:
        """The divergence actually computed at parameter value ``weight`` (None: the default), and the
        weight it takes."""
        if self.param is None:
            return self, None
        weight = self.default if weight is None else weight
        target = self.endpoints.get(float(weight))
        return (DIVERGENCES[target], None) if target is not None else (self, float(weight))

    def effective_beta(self, weight: float | None = None) -> float | None:
        """GKD's β for this divergence at ``weight``: 0 forward KL, 1 reverse KL, β for JSD, else None."""
        spec, weight = self.resolve(weight)
        if spec.gkd_beta is not None:
            return spec.gkd_beta
        return weight if spec.param == "beta" else None

    def describe(self, weight: float | None = None) -> str:
        """A short name with its parameter: ``"reverse KL (β=1)"``, ``"skew forward KL (α=0.1)"``."""
        spec, resolved = self.resolve(weight)
        beta = self.effective_beta(weight)
        if beta is not None:
            return f"{spec.label} (β={beta:g})"
        if spec.param is not None:
            return f"{spec.label} ({_SYMBOLS.get(spec.param, spec.param)}={resolved:g})"
        return spec.label


_SYMBOLS = {"beta": "β", "alpha": "α"}

#: Registered divergences, by name. Read by the loss, :class:`~odistill.train.config.DistillConfig`
#: validation, ``odistill distill --divergence`` and the fused LM-head path.
DIVERGENCES: dict[str, Divergence] = {
    d.name: d
    for d in (
        Divergence(
            "forward_kl",
            forward_kl,
            _forward_kl_rows,
            kernels.forward_kl_kernel,
            "forward KL",
            "KL(p_T ‖ p_S)",
            gkd_beta=0.0,
        ),
        Divergence(
            "reverse_kl",
            reverse_kl,
            _reverse_kl_rows,
            kernels.reverse_kl_kernel,
            "reverse KL",
            "KL(p_S ‖ p_T)",
            gkd_beta=1.0,
        ),
        Divergence(
            "jsd",
            generalized_jsd,
            _jsd_rows,
            kernels.jsd_kernel,
            "generalized JSD",
            "β·KL(p_T ‖ M) + (1 − β)·KL(p_S ‖ M), M = β·p_T + (1 − β)·p_S",
            param="beta",
            config_field="beta",
            default=0.5,
            endpoints={0.0: "forward_kl", 1.0: "reverse_kl"},
        ),
        Divergence(
            "skew_forward_kl",
            skew_forward_kl,
            _skew_forward_kl_rows,
            kernels.skew_forward_kl_kernel,
            "skew forward KL",
            "KL(p_T ‖ α·p_T + (1 − α)·p_S)",
            param="alpha",
            config_field="skew_alpha",
            default=0.1,
            endpoints={0.0: "forward_kl"},
        ),
        Divergence(
            "skew_reverse_kl",
            skew_reverse_kl,
            _skew_reverse_kl_rows,
            kernels.skew_reverse_kl_kernel,
            "skew reverse KL",
            "KL(p_S ‖ α·p_S + (1 − α)·p_T)",
            param="alpha",
            config_field="skew_alpha",
            default=0.1,
            endpoints={0.0: "reverse_kl"},
        ),
        Divergence(
            "total_variation",
            total_variation,
            _total_variation_rows,
            kernels.total_variation_kernel,
            "total variation",
            "½ Σ_v |p_S − p_T|",
        ),
    )
}


#: Other names accepted by :func:`get_divergence` (the public function's name for the registry key).
ALIASES = {"generalized_jsd": "jsd"}


def get_divergence(name: str) -> Divergence:
    """The registered :class:`Divergence` called ``name`` (or an alias of :data:`ALIASES`), or a
    ``ValueError`` listing the names."""
    name = ALIASES.get(name, name)
    if name not in DIVERGENCES:
        raise ValueError(f"unknown divergence {name!r}; registered divergences: {sorted(DIVERGENCES)}")
    return DIVERGENCES[name]


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
    check_reduction(reduction)
    shape = sampler_logprobs.shape
    mask = check_mask(mask, shape, "sampler_logprobs")
    dtype = compute_dtype(sampler_logprobs, target_logprobs)
    target_logprobs = target_logprobs.to(sampler_logprobs.device)
    lp = active_rows(sampler_logprobs[..., None], mask).squeeze(-1).to(dtype).clamp_min(MASKED_LOG_PROB)
    lq = active_rows(target_logprobs[..., None], mask).squeeze(-1).to(dtype).clamp_min(MASKED_LOG_PROB)
    return lq - lp, mask, shape  # log r = log q(x) − log p(x), x ~ p


def kl_k1(sampler_logprobs, target_logprobs, mask=None, *, reduction="mean"):
    r"""k1 = −log r = log p(x) − log q(x): the unbiased, high-variance single-sample estimate of KL(p ‖ q).

    .. math::

        k_1 = -\log r, \qquad r = \frac{q(x)}{p(x)}, \quad x \sim p,
        \qquad \mathbb{E}_p[k_1] = \mathrm{KL}(p \,\|\, q)

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
    return masked_reduce(-log_r, mask, shape, reduction)


def kl_k2(sampler_logprobs, target_logprobs, mask=None, *, reduction="mean"):
    r"""k2 = ½ (log r)²: a biased, low-variance, always non-negative estimate of KL(p ‖ q), x ~ p.

    .. math::

        k_2 = \tfrac{1}{2} (\log r)^2, \qquad r = \frac{q(x)}{p(x)}, \quad x \sim p

    Its bias is small when p and q are close (it matches KL to second order). Its expectation is
    an f-divergence, and its gradient is the reverse-KL gradient in expectation (on-policy).

    Args: as in :func:`kl_k1`.

    Example:
        >>> kl_k2(torch.tensor([-0.1]), torch.tensor([-0.5]))
        tensor(0.0800)
    """
    log_r, mask, shape = _sample_log_ratio(sampler_logprobs, target_logprobs, mask, reduction)
    return masked_reduce(0.5 * log_r.square(), mask, shape, reduction)


def kl_k3(sampler_logprobs, target_logprobs, mask=None, *, reduction="mean"):
    r"""k3 = (r − 1) − log r: unbiased *and* always non-negative estimate of KL(p ‖ q), x ~ p.

    .. math::

        k_3 = (r - 1) - \log r, \qquad r = \frac{q(x)}{p(x)}, \quad x \sim p,
        \qquad \mathbb{E}_p[k_3] = \mathrm{KL}(p \,\|\, q)

    Adding the zero-mean control variate (r − 1) to k1 removes most of its variance while keeping
    it unbiased, since E_p[r] = 1. Large positive log r (the target far likelier than the sampler)
    makes r overflow; the value is then ``inf``, never NaN.

    Args: as in :func:`kl_k1`.

    Example:
        >>> round(kl_k3(torch.tensor([-0.1]), torch.tensor([-0.5])).item(), 4)  # e^-0.4 − 1 + 0.4
        0.0703
    """
    log_r, mask, shape = _sample_log_ratio(sampler_logprobs, target_logprobs, mask, reduction)
    return masked_reduce(torch.expm1(log_r) - log_r, mask, shape, reduction)
