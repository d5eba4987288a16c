"""Per-chunk divergence kernels: a chunk of log-probabilities in, per-row values and analytic gradients out.

The chunked path (:mod:`odistill.core.chunked`) and the fused LM-head path (:mod:`odistill.core.fused`)
walk the counted rows a chunk at a time and call one kernel per chunk. Every kernel has one signature::

    kernel(ls, lt, weight, fin_s, fin_t, out_s, out_t, scale) -> values (r,)

    ls, lt        (r, V) floored log-probabilities of the student and the teacher (the kernel may
                  overwrite them)
    weight        β of the generalized JSD or α of the skew KLs (None for the others)
    fin_s, fin_t  (r, V) bool, False where that log-probability was -inf and floored; None when all are finite
    out_s, out_t  (r, V) tensors to write scale · ∂value/∂z into (z = logits / τ), or None when not needed
    scale         1/τ, times 1/N for a mean over N rows

Closed forms (every gradient is multiplied by ``scale``)::

    KL(p_a ‖ p_b):   ∂/∂z_a = p_a ⊙ (log p_a − log p_b − KL)      ∂/∂z_b = p_b − p_a
    JSD(β), M = β p_T + (1 − β) p_S:
                     ∂/∂z_S = (1 − β) p_S ⊙ (log p_S − log M − KL(p_S ‖ M))
                     ∂/∂z_T = β p_T ⊙ (log p_T − log M − KL(p_T ‖ M))
    skew KL(p_a ‖ mix), mix = α p_a + (1 − α) p_b, r = p_a / mix:
                     ∂/∂z_a = p_a ⊙ (u − ⟨p_a, u⟩),  u = log p_a − log mix − α r
                     ∂/∂z_b = −(1 − α) p_b ⊙ (r − ⟨p_b, r⟩)
    TVD = ½ Σ |p_S − p_T|, w = ½ sign(p_S − p_T):
                     ∂/∂z_S = p_S ⊙ (w − ⟨p_S, w⟩)     ∂/∂z_T = −p_T ⊙ (w − ⟨p_T, w⟩)

Forward KL is KL(p_T ‖ p_S) (a = teacher), reverse KL is KL(p_S ‖ p_T) (a = student). Where a
log-probability was ``-inf`` (and floored), the plain path's gradient does not flow through the floored
entry; only ``∂/∂z_b`` of KL is affected, and it is then ``p_b ⟨p_a, f⟩ − p_a ⊙ f`` with ``f`` = 1 on the
entries of ``b`` that are finite — the same numbers as autograd on the plain path.

Kernels that take a weight carry ``kernel.takes_weight = True``. A new divergence adds its kernel here and
names it in its :data:`odistill.core.divergences.DIVERGENCES`
entry; the chunked and fused paths need no change.
"""

from __future__ import annotations

import torch

from .tensor_ops import MASKED_LOG_PROB

__all__ = [
    "floored_log_probs",
    "forward_kl_kernel",
    "reverse_kl_kernel",
    "jsd_kernel",
    "skew_forward_kl_kernel",
    "skew_reverse_kl_kernel",
    "total_variation_kernel",
]


def floored_log_probs(x: torch.Tensor, temperature: float, dtype: torch.dtype):
    """``log softmax(x / τ)`` of a chunk in ``dtype`` with -inf → MASKED_LOG_PROB, and the finite-entry mask
    (None when every entry is finite, the usual case). ``(r, V) -> ((r, V), (r, V) bool or None)``"""
    z = x.to(dtype)
    if temperature != 1.0:
        z = z / temperature
    logp = torch.log_softmax(z, dim=-1)  # (r, V), a fresh tensor the kernel may overwrite
    finite = None
    if bool(logp.amin() == float("-inf")):  # rare: a masked vocabulary entry (NaN compares False)
        finite = ~torch.isneginf(logp)
        logp.nan_to_num_(nan=float("nan"), posinf=float("inf"), neginf=MASKED_LOG_PROB)
    return logp, finite


def _rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vecdot(a, b)  # (r,) without an (r, V) temporary


def _finish(d: torch.Tensor, mean: torch.Tensor, p: torch.Tensor, scale: float, out: torch.Tensor) -> None:
    """out = scale · p ⊙ (d − mean[:, None]), reusing d."""
    d.sub_(mean.unsqueeze(1))
    torch.mul(d, p, out=out)
    if scale != 1.0:
        out.mul_(scale)


def _kl(la, lb, finite_b, out_a, out_b, scale):
    """KL(p_a ‖ p_b) per row; gradients w.r.t. z_a into out_a and z_b into out_b (when given)."""
    pa = torch.exp(la)
    pb = torch.exp(lb) if out_b is not None else None
    d = la.sub_(lb)  # log p_a − log p_b
    kl = _rowdot(pa, d)
    if out_a is not None:
        _finish(d, kl, pa, scale, out_a)
    if out_b is not None:
        if finite_b is None:
            torch.sub(pb, pa, out=out_b)
        else:  # the plain path's gradient does not flow through floored entries of log p_b
            pa.mul_(finite_b)
            torch.mul(pb, pa.sum(-1, keepdim=True), out=out_b)
            out_b.sub_(pa)
        if scale != 1.0:
            out_b.mul_(scale)
    return kl


def _log_mixture(p: torch.Tensor, q: torch.Tensor, weight_q: float) -> torch.Tensor:
    """log((1 − w)·p + w·q) as a new tensor; clamped at the smallest normal float so that entries
    where both probabilities underflow give a finite log (their terms are 0 · finite = 0)."""
    m = torch.lerp(p, q, weight_q)
    return m.clamp_min_(torch.finfo(m.dtype).tiny).log_()


def _skew(la, lb, alpha, out_a, out_b, scale):
    """KL(p_a ‖ α p_a + (1 − α) p_b) for 0 < α < 1."""
    pa, pb = torch.exp(la), torch.exp(lb)
    lmix = _log_mixture(pb, pa, alpha)
    d = la.sub_(lmix)  # log p_a − log mix
    value = _rowdot(pa, d)
    ratio = torch.exp(d)  # p_a / mix
    if out_b is not None:
        lb.copy_(ratio)
        _finish(lb, _rowdot(pb, ratio), pb, -(1.0 - alpha) * scale, out_b)
    if out_a is not None:
        d.sub_(ratio, alpha=alpha)  # u = log p_a − log mix − α r
        _finish(d, _rowdot(pa, d), pa, scale, out_a)
    return value


def _takes_weight(kernel):
    """Mark a kernel whose ``weight`` (β or α) must lie strictly inside (0, 1)."""
    kernel.takes_weight = True
    return kernel


def forward_kl_kernel(ls, lt, weight, fin_s, fin_t, out_s, out_t, scale):
    """KL(p_T ‖ p_S): a = teacher, b = student."""
    return _kl(lt, ls, fin_s, out_t, out_s, scale)


def reverse_kl_kernel(ls, lt, weight, fin_s, fin_t, out_s, out_t, scale):
    """KL(p_S ‖ p_T): a = student, b = teacher."""
    return _kl(ls, lt, fin_t, out_s, out_t, scale)


@_takes_weight
def jsd_kernel(ls, lt, beta, fin_s, fin_t, out_s, out_t, scale):
    """β·KL(p_T ‖ M) + (1 − β)·KL(p_S ‖ M), M = β p_T + (1 − β) p_S, for 0 < β < 1."""
    ps, pt = torch.exp(ls), torch.exp(lt)
    lm = _log_mixture(ps, pt, beta)
    ds, dt = ls.sub_(lm), lt.sub_(lm)  # log p − log M
    kl_s, kl_t = _rowdot(ps, ds), _rowdot(pt, dt)
    if out_s is not None:
        _finish(ds, kl_s, ps, (1.0 - beta) * scale, out_s)
    if out_t is not None:
        _finish(dt, kl_t, pt, beta * scale, out_t)
    return beta * kl_t + (1.0 - beta) * kl_s


@_takes_weight
def skew_forward_kl_kernel(ls, lt, alpha, fin_s, fin_t, out_s, out_t, scale):
    """KL(p_T ‖ α p_T + (1 − α) p_S), 0 < α < 1."""
    return _skew(lt, ls, alpha, out_t, out_s, scale)


@_takes_weight
def skew_reverse_kl_kernel(ls, lt, alpha, fin_s, fin_t, out_s, out_t, scale):
    """KL(p_S ‖ α p_S + (1 − α) p_T), 0 < α < 1."""
    return _skew(ls, lt, alpha, out_s, out_t, scale)


def total_variation_kernel(ls, lt, weight, fin_s, fin_t, out_s, out_t, scale):
    """``½ Σ |p_S − p_T|`` per row."""
    ps, pt = torch.exp(ls), torch.exp(lt)
    diff = torch.sub(ps, pt, out=ls)
    value = 0.5 * torch.abs(diff, out=lt).sum(-1)
    w = diff.sign_().mul_(0.5)  # ½ sign(p_S − p_T)
    if out_s is not None:
        tmp = w.clone() if out_t is not None else w
        _finish(tmp, _rowdot(ps, tmp), ps, scale, out_s)
    if out_t is not None:
        _finish(w, _rowdot(pt, w), pt, -scale, out_t)
    return value
