"""Fused LM head + divergence: the ``(N, V)`` logits of neither model ever exist (the Liger "fused
linear" idea).

``divergence(h_S @ W_Sᵀ, h_T @ W_Tᵀ)`` is computed one chunk of rows at a time: each chunk's logits,
log-softmaxes and logit-gradients exist only for that chunk (the same kernels as the chunked path,
:mod:`odistill.core.kernels`), and the gradient is pushed through the LM head at once
(``dh = g W``, ``dW += gᵀ h``, ``db += Σ g``). Used by ``DistillConfig(fused_lm_head=True)`` with the
teacher's ``"hidden"`` scores.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .divergences import get_divergence
from .kernels import floored_log_probs
from .tensor_ops import (
    active_rows,
    check_mask,
    check_reduction,
    check_temperature,
    masked_reduce,
    scatter_rows,
)

__all__ = ["FUSED_CHUNK_ELEMENTS", "fused_linear_divergence"]

#: :func:`fused_linear_divergence` computes about this many logits per chunk by default (64 MB of float32):
#: each chunk reads both LM-head weights once, so chunks of a few rows would make the matmuls memory-bound.
FUSED_CHUNK_ELEMENTS = 2**24


def _token_log_probs(
    logits: torch.Tensor, logp: torch.Tensor, tokens: torch.Tensor, temperature: float, dtype
):
    """log p(token) at temperature 1 for each row of a chunk: from ``logp`` when it already is at τ = 1."""
    if temperature == 1.0:
        return logp.gather(1, tokens[:, None]).squeeze(1)
    z = logits.to(dtype)
    return z.gather(1, tokens[:, None]).squeeze(1) - z.logsumexp(-1)


def _fused_compute(
    kernel, weight, hs, ws, bs, ht, wt, bt, temperature, reduction, chunk_rows, dtype, need, tokens=None
):
    """Per chunk of rows: logits = h @ Wᵀ (+ b) for both models, divergence and its logit-gradient, then
    the gradient pushed through the LM head at once (dh = g W, dW += gᵀ h, db += Σ g). Returns the
    per-row values, the gradients of (hs, ws, bs, ht, wt, bt) (None where not needed) and, when
    ``tokens`` (N,) is given, both models' log-probabilities of those tokens at temperature 1 (else None)."""
    n_rows = hs.shape[0]
    values = torch.empty(n_rows, dtype=dtype, device=hs.device)
    token_lp = None if tokens is None else torch.empty(2, n_rows, dtype=dtype, device=hs.device)
    scale = 1.0 / temperature
    if reduction == "mean":
        scale /= max(n_rows, 1)
    need_s, need_t = any(need[:3]), any(need[3:])
    grads = [
        torch.zeros_like(x) if (n and x is not None) else None
        for n, x in zip(need, (hs, ws, bs, ht, wt, bt), strict=True)
    ]
    for start in range(0, n_rows, chunk_rows):
        stop = min(start + chunk_rows, n_rows)
        logits_s = torch.nn.functional.linear(hs[start:stop], ws, bs)  # (r, V), only this chunk
        logits_t = torch.nn.functional.linear(ht[start:stop], wt, bt)
        ls, fin_s = floored_log_probs(logits_s, temperature, dtype)
        lt, fin_t = floored_log_probs(logits_t, temperature, dtype)
        if tokens is not None:  # before the kernel, which may overwrite ls / lt
            tok = tokens[start:stop]
            token_lp[0, start:stop] = _token_log_probs(logits_s, ls, tok, temperature, dtype)
            token_lp[1, start:stop] = _token_log_probs(logits_t, lt, tok, temperature, dtype)
        del logits_s, logits_t
        out_s = torch.empty_like(ls) if need_s else None
        out_t = torch.empty_like(lt) if need_t else None
        values[start:stop] = kernel(ls, lt, weight, fin_s, fin_t, out_s, out_t, scale)
        for out, (h, w, off) in ((out_s, (hs, ws, 0)), (out_t, (ht, wt, 3))):
            if out is None:
                continue
            # dtypes: each gradient has its input's dtype, whatever autocast did to the logits (hidden
            # states in bf16/fp16 with an fp32 LM head, under mixed precision); the weight gradient is
            # accumulated in the weight's dtype. In-place addmm_ is not autocast, so cast explicitly.
            g = out.to(w.dtype)  # (r, V) gradient w.r.t. this chunk's logits
            if grads[off] is not None:
                grads[off][start:stop] = (g @ w).to(h.dtype)  # (r, H)
            if grads[off + 1] is not None:
                grads[off + 1].addmm_(g.t(), h[start:stop].to(w.dtype))  # (V, H)
            if grads[off + 2] is not None:
                grads[off + 2].add_(g.sum(0).to(grads[off + 2].dtype))
    return values, grads, token_lp


class _FusedLinearDivergence(torch.autograd.Function):
    """As in :mod:`odistill.core.chunked`: gradients computed in forward, recomputed for a second backward."""

    @staticmethod
    def forward(ctx, hs, ws, bs, ht, wt, bt, spec):
        kernel, weight, temperature, reduction, chunk_rows, dtype, need, tokens = spec
        values, grads, token_lp = _fused_compute(
            kernel, weight, hs, ws, bs, ht, wt, bt, temperature, reduction, chunk_rows, dtype, need, tokens
        )
        out = masked_reduce(values, None, values.shape, reduction)  # raises NonFiniteLossError on NaN
        ctx.grads, ctx.spec = grads, spec
        inputs = (hs, ws, bs, ht, wt, bt)
        ctx.inference_inputs = any(x is not None and x.is_inference() for x in inputs)
        if not ctx.inference_inputs:
            ctx.save_for_backward(*inputs)  # kept only with retain_graph=True (re-backward)
        if token_lp is None:
            return out
        ctx.mark_non_differentiable(token_lp)
        return out, token_lp

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, grad_token_lp=None):
        if ctx.grads is not None:
            grads, ctx.grads = ctx.grads, None
        elif ctx.inference_inputs:
            raise RuntimeError("a fused divergence of inference-mode tensors can be back-propagated once")
        else:
            kernel, weight, temperature, reduction, chunk_rows, dtype, need, _ = ctx.spec
            _, grads, _ = _fused_compute(
                kernel, weight, *ctx.saved_tensors, temperature, reduction, chunk_rows, dtype, need
            )
        if bool(grad_out != 1):
            for g in grads:
                if g is not None:
                    g.mul_(grad_out)
        return (*grads, None)


def fused_linear_divergence(
    kind,
    student_hidden,
    student_weight,
    teacher_hidden,
    teacher_weight,
    mask=None,
    *,
    student_bias=None,
    teacher_bias=None,
    weight=None,
    temperature=1.0,
    reduction="mean",
    chunk_size=None,
    token_ids=None,
):
    """A divergence between two LM heads' distributions, never materialising the ``(N, V)`` logits.

    ``divergence(student_hidden @ student_weightᵀ, teacher_hidden @ teacher_weightᵀ)`` computed chunk by
    chunk of rows: each chunk's logits, log-softmaxes and logit-gradients exist only for that chunk, and
    the gradient flows straight on to the hidden states and the LM-head weight. Extra memory is
    O(chunk·V) plus the gradients of the inputs (the weight's gradient is as large as the weight).

    Args:
        kind: the name of a registered divergence (``"reverse_kl"``, ``"jsd"`` …; see
            :data:`~odistill.core.divergences.DIVERGENCES`).
        student_hidden: ``(..., H_S)`` the student's last hidden states (before the LM head).
        student_weight: ``(V, H_S)`` the student's LM-head weight (``model.lm_head.weight``).
        teacher_hidden: ``(..., H_T)`` the teacher's last hidden states (same batch shape).
        teacher_weight: ``(V, H_T)`` the teacher's LM-head weight (same V).
        mask: ``(...)`` bool, True where the position counts.
        student_bias, teacher_bias: optional ``(V,)`` LM-head biases.
        weight: β of ``"jsd"`` or α of the skew KLs.
        temperature: divides both logits.
        reduction: ``"mean"`` or ``"sum"`` (``"none"`` works without gradients).
        chunk_size: rows per chunk (None: ``max(1, min(2**24 // V, ⌈N / 8⌉))`` for N counted rows —
            about :data:`FUSED_CHUNK_ELEMENTS` logits, but at most an eighth of the rows, so that a chunk's
            few temporaries stay well below the full logits; extra memory is a few times one chunk).
        token_ids: ``(...)`` token ids (e.g. the sampled completion tokens). When given, the result is
            ``(loss, student_token_logprobs, teacher_token_logprobs)``: both models' log p(token) at
            temperature 1 at every position (0 where ``mask`` is False), without gradients — a free
            by-product for per-token metrics such as the k1 reverse-KL estimate.

    Example:
        >>> h_s, w_s = torch.randn(2, 5, 8, requires_grad=True), torch.randn(50, 8, requires_grad=True)
        >>> h_t, w_t = torch.randn(2, 5, 16), torch.randn(50, 16)
        >>> loss = fused_linear_divergence("reverse_kl", h_s, w_s, h_t, w_t, chunk_size=3)
        >>> from odistill.core.divergences import reverse_kl
        >>> torch.allclose(loss, reverse_kl(h_s @ w_s.T, h_t @ w_t.T), atol=1e-6)
        True
    """
    spec, weight = get_divergence(kind).resolve(weight)
    if spec.kernel is None:
        raise ValueError(f"divergence {kind!r} has no chunk kernel, so it cannot be fused with the LM head")
    if weight is not None and not 0.0 < weight < 1.0:
        raise ValueError(
            f"{spec.param}={weight} makes {kind!r} identically 0: nothing to fuse (use a value in (0, 1))"
        )
    check_reduction(reduction)
    temperature = check_temperature(temperature)
    batch_shape, mask = _check_fused_shapes(
        student_hidden, student_weight, teacher_hidden, teacher_weight, mask
    )
    hs = active_rows(student_hidden, mask)  # (N, H): small copies
    ht = active_rows(teacher_hidden.to(student_hidden.device), mask)
    inputs = (hs, student_weight, student_bias, ht, teacher_weight, teacher_bias)
    need = tuple(bool(torch.is_grad_enabled() and x is not None and x.requires_grad) for x in inputs)
    if reduction == "none" and any(need):
        raise ValueError(
            "fused_linear_divergence: reduction='none' has no gradient (the LM-head gradient sums "
            "over rows); use 'mean' or 'sum', or call it under torch.no_grad()"
        )
    vocab = student_weight.shape[0]
    tokens = None if token_ids is None else _counted_tokens(token_ids, batch_shape, mask, vocab, hs.device)
    dtype = (
        torch.float64 if any(x is not None and x.dtype == torch.float64 for x in inputs) else torch.float32
    )
    chunk_rows = _fused_chunk_rows(chunk_size, vocab, hs.shape[0])
    result = _FusedLinearDivergence.apply(
        *inputs, (spec.kernel, weight, temperature, reduction, chunk_rows, dtype, need, tokens)
    )
    out, token_lp = result if tokens is not None else (result, None)
    if reduction == "none":
        out = scatter_rows(out, mask, batch_shape)
    if token_lp is None:
        return out
    return out, scatter_rows(token_lp[0], mask, batch_shape), scatter_rows(token_lp[1], mask, batch_shape)


def _check_fused_shapes(student_hidden, student_weight, teacher_hidden, teacher_weight, mask):
    if student_weight.shape[0] != teacher_weight.shape[0]:
        raise ValueError(
            f"vocabulary sizes differ: student LM head has V={student_weight.shape[0]}, teacher "
            f"V={teacher_weight.shape[0]}"
        )
    if student_hidden.shape[:-1] != teacher_hidden.shape[:-1]:
        raise ValueError(
            f"student_hidden {tuple(student_hidden.shape)} and teacher_hidden "
            f"{tuple(teacher_hidden.shape)} must share the batch shape (...)"
        )
    batch_shape = student_hidden.shape[:-1]
    return batch_shape, check_mask(mask, batch_shape, "student_hidden")


def _counted_tokens(token_ids, batch_shape, mask, vocab, device) -> torch.Tensor:
    """The token ids at the counted positions, ``(N,)``, checked to lie in the vocabulary."""
    if tuple(token_ids.shape) != tuple(batch_shape):
        raise ValueError(
            f"token_ids has shape {tuple(token_ids.shape)} but the hidden states have batch shape "
            f"{tuple(batch_shape)}; pass one token id per position"
        )
    tokens = active_rows(token_ids[..., None].to(device), mask).squeeze(-1)
    if tokens.numel() and not (0 <= int(tokens.min()) and int(tokens.max()) < vocab):
        raise ValueError(f"token_ids must lie in [0, V={vocab}) at counted positions")
    return tokens


def _fused_chunk_rows(chunk_size, vocab: int, n_rows: int) -> int:
    """Rows per chunk: big enough for efficient matmuls, small next to the full logits."""
    if chunk_size is None:
        return max(1, min(FUSED_CHUNK_ELEMENTS // max(vocab, 1), -(-n_rows // 8)))
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1 rows or None, got {chunk_size!r}")
    return chunk_size
