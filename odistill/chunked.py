"""Chunked divergences: the numbers of :mod:`odistill.divergences` in O(chunk·V) extra memory.

The plain implementations gather the counted rows into ``(N, V)`` copies, log-softmax them, build a
few more ``(N, V)`` temporaries, and let autograd keep several of them for the backward pass: peak
memory is many times the logits. Here one :class:`torch.autograd.Function` walks the counted rows in
chunks of ``chunk_size`` rows (a few MB, so each chunk stays in the CPU cache) and, for each chunk,

1. takes the rows of the student and teacher logits (a view when the rows are contiguous, else a
   small gathered copy; masked rows are never touched),
2. computes both log-softmaxes in float32 (float64 for float64 inputs), with ``-inf`` replaced by
   :data:`~odistill.divergences.MASKED_LOG_PROB` exactly as the plain path does,
3. computes the per-row divergence **and its analytic gradient**, written straight into the
   preallocated gradient tensor (the same size as the logits: autograd needs it anyway).

Computing the gradient in the forward pass (the Liger-Kernel idea) instead of recomputing the
softmaxes in backward costs no extra peak memory — the ``(B, T, V)`` gradient has to exist when the
loss is back-propagated, and at the end of the forward pass the logits and the gradient are alive
together in either design — and it halves the exp/log work. The backward pass only multiplies by the
incoming gradient (skipped when it is 1, the usual ``loss.backward()``). A second backward through a
retained graph recomputes the gradient from the saved inputs.

Closed forms (``z = logits / τ``; every gradient is multiplied by ``1/τ`` and by ``1/N`` for
``reduction="mean"``)::

    KL(p_a ‖ p_b):   ∂/∂z_a = p_a ⊙ (log p_a − log p_b − KL)      ∂/∂z_b = p_b − p_a
    JSD(β), M = β p_T + (1 − β) p_S:
                     ∂/∂z_S = (1 − β) p_S ⊙ (log p_S − log M − KL(p_S ‖ M))
                     ∂/∂z_T = β p_T ⊙ (log p_T − log M − KL(p_T ‖ M))
    skew KL(p_a ‖ mix), mix = α p_a + (1 − α) p_b, r = p_a / mix:
                     ∂/∂z_a = p_a ⊙ (u − ⟨p_a, u⟩),  u = log p_a − log mix − α r
                     ∂/∂z_b = −(1 − α) p_b ⊙ (r − ⟨p_b, r⟩)
    TVD = ½ Σ |p_S − p_T|, w = ½ sign(p_S − p_T):
                     ∂/∂z_S = p_S ⊙ (w − ⟨p_S, w⟩)     ∂/∂z_T = −p_T ⊙ (w − ⟨p_T, w⟩)

forward KL is KL(p_T ‖ p_S) (a = teacher), reverse KL is KL(p_S ‖ p_T) (a = student). Where a
log-probability was ``-inf`` (and floored), the plain path's gradient does not flow through the
floored entry; only ``∂/∂z_b`` of KL is affected, and it is then ``p_b ⟨p_a, f⟩ − p_a ⊙ f`` with
``f`` = 1 on the entries of ``b`` that are finite — the same numbers as autograd on the plain path.

You rarely call this module directly: every two-distribution divergence of
:mod:`odistill.divergences` takes ``chunk_size="auto"`` (the default) and comes here when the logits
are large (more than :data:`AUTO_MIN_ELEMENTS` elements).
"""

from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

__all__ = ["KINDS", "AUTO_MIN_ELEMENTS", "TARGET_CHUNK_ELEMENTS", "FUSED_CHUNK_ELEMENTS", "default_chunk_rows",
           "chunked_divergence", "fused_linear_divergence"]

#: Divergences computed here (the names of the public functions in :mod:`odistill.divergences`).
KINDS = ("forward_kl", "reverse_kl", "generalized_jsd", "skew_forward_kl", "skew_reverse_kl", "total_variation")

#: ``chunk_size="auto"`` takes the chunked path when the logits have more elements than this (16 MB of float32).
AUTO_MIN_ELEMENTS = 2**22

#: ``chunk_size="auto"`` processes about this many logits per chunk (rows = max(1, this // V)).
TARGET_CHUNK_ELEMENTS = 2**18

#: :func:`fused_linear_divergence` computes about this many logits per chunk by default (64 MB of float32):
#: each chunk reads both LM-head weights once, so chunks of a few rows would make the matmuls
#: memory-bound (at V = 151,936 a 1-row chunk was 2× slower than 128 rows on a CPU).
FUSED_CHUNK_ELEMENTS = 2**24

#: On CPU, run chunks on ``torch.get_num_threads()`` single-threaded workers (see :func:`_run_chunks`) …
PARALLEL_CHUNKS = True
#: … when the counted logits number at least this many (below it, starting threads costs more than it saves).
PARALLEL_MIN_ELEMENTS = 2**21


def default_chunk_rows(vocab_size: int) -> int:
    """Rows per chunk for ``chunk_size="auto"``: about :data:`TARGET_CHUNK_ELEMENTS` logits (1 MB of float32)."""
    return max(1, TARGET_CHUNK_ELEMENTS // max(1, int(vocab_size)))


# ----------------------------------------------------------------------------------------------
# row access without copies: (..., V) -> chunks of rows
# ----------------------------------------------------------------------------------------------


class _Rows:
    """Rows of a ``(..., V)`` tensor by flat position, as views where the memory layout allows."""

    def __init__(self, x: torch.Tensor):
        self.x, self.vocab = x, x.shape[-1]
        self.batch_shape = x.shape[:-1]
        self.flat = self.blocks = None
        try:
            self.flat = x.view(-1, self.vocab)  # (n, V): any contiguous layout
        except RuntimeError:
            if x.dim() >= 3:  # e.g. logits[:, :-1] of a (B, T + 1, V) tensor: each b is a contiguous block
                try:
                    self.blocks = x.view(-1, x.shape[-2], self.vocab)  # (blocks, R, V)
                except RuntimeError:
                    pass

    def take(self, start: int, stop: int) -> torch.Tensor:
        """Rows start..stop-1 (flat positions): a view when possible."""
        if self.flat is not None:
            return self.flat[start:stop]
        if self.blocks is not None:
            rows = self.blocks.shape[1]
            if start // rows == (stop - 1) // rows:
                first = start % rows
                return self.blocks[start // rows, first : first + stop - start]
        return self.gather(torch.arange(start, stop, device=self.x.device))

    def gather(self, index: torch.Tensor) -> torch.Tensor:
        """Rows at the given flat positions: an (r, V) copy of those rows only."""
        if self.flat is not None:
            return self.flat.index_select(0, index)
        if self.blocks is not None:
            rows = self.blocks.shape[1]
            return self.blocks[index // rows, index % rows]
        return self.x[torch.unravel_index(index, self.batch_shape)]


def _plan(mask_flat: torch.Tensor | None, n_rows: int, chunk_rows: int, device) -> list:
    """Split the counted rows into chunks: ``(start, stop)`` for runs of consecutive rows (read as views),
    then index tensors for the short leftovers of the runs (gathered, ``chunk_rows`` at a time). The
    leftovers come last, so the chunks' rows are not in ascending order (see :func:`_scatter_order`)."""
    if mask_flat is None:
        return [(a, min(a + chunk_rows, n_rows)) for a in range(0, n_rows, chunk_rows)]
    positions = mask_flat.nonzero().squeeze(1).cpu()  # (N,) counted rows, ascending
    if positions.numel() == 0:
        return []
    breaks = (torch.nonzero(positions[1:] - positions[:-1] != 1).squeeze(1) + 1).tolist()
    bounds = [0, *breaks, positions.numel()]
    plan, pending = [], []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):  # one run of consecutive rows
        first = int(positions[lo])
        length = hi - lo
        full = length - length % chunk_rows
        plan.extend((first + a, first + a + chunk_rows) for a in range(0, full, chunk_rows))
        rest = length - full
        if rest and rest * 2 >= chunk_rows:
            plan.append((first + full, first + length))
        elif rest:
            pending.append(positions[lo + full : hi])
    if pending:
        leftovers = torch.cat(pending)
        plan.extend(leftovers[a : a + chunk_rows].to(device) for a in range(0, leftovers.numel(), chunk_rows))
    return plan


def _chunk_positions(chunk) -> torch.Tensor:
    return torch.arange(chunk[0], chunk[1]) if isinstance(chunk, tuple) else chunk.cpu()


# ----------------------------------------------------------------------------------------------
# per-chunk math: (r, V) log-probs -> (r,) values and (r, V) gradients
# ----------------------------------------------------------------------------------------------


def _floored_log_probs(x: torch.Tensor, temperature: float, dtype: torch.dtype, want_finite: bool):
    """log softmax(x / τ) in ``dtype`` with -inf -> MASKED_LOG_PROB; also the finite-entry mask (or None
    when every entry is finite) if ``want_finite``."""
    from .divergences import MASKED_LOG_PROB

    z = x.to(dtype)
    if temperature != 1.0:
        z = z / temperature
    logp = torch.log_softmax(z, dim=-1)  # (r, V), a fresh tensor we may overwrite
    finite = None
    if bool(logp.amin() == float("-inf")):  # rare: a masked vocabulary entry (NaN compares False)
        if want_finite:
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


def _kl_chunk(la, lb, finite_b, out_a, out_b, scale):
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


def _log_mixture_(p: torch.Tensor, q: torch.Tensor, weight_q: float) -> torch.Tensor:
    """log((1 − w)·p + w·q) as a new tensor; clamped at the smallest normal float so that entries
    where both probabilities underflow give a finite log (their terms are 0 · finite = 0)."""
    m = torch.lerp(p, q, weight_q)
    return m.clamp_min_(torch.finfo(m.dtype).tiny).log_()


def _jsd_chunk(ls, lt, beta, out_s, out_t, scale):
    """β·KL(p_T ‖ M) + (1 − β)·KL(p_S ‖ M), M = β p_T + (1 − β) p_S, for 0 < β < 1."""
    ps, pt = torch.exp(ls), torch.exp(lt)
    lm = _log_mixture_(ps, pt, beta)
    ds, dt = ls.sub_(lm), lt.sub_(lm)  # log p − log M
    kl_s, kl_t = _rowdot(ps, ds), _rowdot(pt, dt)
    if out_s is not None:
        _finish(ds, kl_s, ps, (1.0 - beta) * scale, out_s)
    if out_t is not None:
        _finish(dt, kl_t, pt, beta * scale, out_t)
    return beta * kl_t + (1.0 - beta) * kl_s


def _skew_chunk(la, lb, alpha, out_a, out_b, scale):
    """KL(p_a ‖ α p_a + (1 − α) p_b) for 0 < α < 1."""
    pa, pb = torch.exp(la), torch.exp(lb)
    lmix = _log_mixture_(pb, pa, alpha)
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


def _tvd_chunk(ls, lt, out_s, out_t, scale):
    """½ Σ |p_S − p_T| per row."""
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


def _chunk_values(kind, weight, ls, lt, fin_s, fin_t, out_s, out_t, scale):
    """Dispatch one chunk; ``kind`` is already reduced to its non-degenerate form."""
    if kind == "forward_kl":  # KL(p_T ‖ p_S): a = teacher, b = student
        return _kl_chunk(lt, ls, fin_s, out_t, out_s, scale)
    if kind == "reverse_kl":  # KL(p_S ‖ p_T)
        return _kl_chunk(ls, lt, fin_t, out_s, out_t, scale)
    if kind == "generalized_jsd":
        return _jsd_chunk(ls, lt, weight, out_s, out_t, scale)
    if kind == "skew_forward_kl":  # KL(p_T ‖ α p_T + (1 − α) p_S)
        return _skew_chunk(lt, ls, weight, out_t, out_s, scale)
    if kind == "skew_reverse_kl":  # KL(p_S ‖ α p_S + (1 − α) p_T)
        return _skew_chunk(ls, lt, weight, out_s, out_t, scale)
    if kind == "total_variation":
        return _tvd_chunk(ls, lt, out_s, out_t, scale)
    raise ValueError(f"unknown divergence {kind!r}; chunked divergences: {KINDS}")


def _canonical(kind: str, weight: float | None) -> tuple[str, float | None]:
    """Map the end points of β / α to the divergence they equal (exactly as the plain path does)."""
    if kind == "generalized_jsd":
        if weight == 0.0:
            return "forward_kl", None
        if weight == 1.0:
            return "reverse_kl", None
    if kind == "skew_forward_kl" and weight == 0.0:
        return "forward_kl", None
    if kind == "skew_reverse_kl" and weight == 0.0:
        return "reverse_kl", None
    if kind in ("skew_forward_kl", "skew_reverse_kl") and weight == 1.0:
        raise ValueError("alpha = 1 makes the skew KL identically 0; the plain path handles it")
    return kind, weight


def _cpu_workers(device: torch.device, n_chunks: int, n_elements: int) -> int:
    """How many threads run chunks side by side: on CPU one single-threaded worker per intra-op thread
    (see :func:`_run_chunks`); elsewhere, or for small inputs, 1 (the chunks run in order)."""
    if device.type != "cpu" or n_chunks < 2 or not PARALLEL_CHUNKS or n_elements < PARALLEL_MIN_ELEMENTS:
        return 1
    return min(torch.get_num_threads(), n_chunks)


def _run_chunks(run, items, device, n_elements: int) -> None:
    """Run ``run(item)`` for every chunk.

    On CPU the chunks are spread over ``torch.get_num_threads()`` Python threads, each running its
    chunk's ops single-threaded (the ops release the GIL). Each chunk is a ~20 small ops; letting every
    op fan out over OpenMP threads instead puts a barrier after each of them, which is cheap on an idle
    machine but costs a scheduler time slice per barrier when other processes share the cores (we
    measured 4–8× slowdowns at load 6 on 2 cores); independent workers have no barriers.
    """
    workers = _cpu_workers(device, len(items), n_elements)
    grad_mode, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()
    if workers == 1:
        for item in items:
            run(item)
        return
    from concurrent.futures import ThreadPoolExecutor

    threads = torch.get_num_threads()

    def single_threaded(item):
        with torch.inference_mode(inference), torch.set_grad_enabled(grad_mode):  # thread-local: the caller's
            run(item)

    try:
        with ThreadPoolExecutor(max_workers=workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            for future in [pool.submit(single_threaded, item) for item in items]:
                future.result()  # re-raises a worker's exception
    finally:
        torch.set_num_threads(threads)  # the initializer changed the process-wide default


def _compute(kind, weight, student, teacher, mask, temperature, reduction, chunk_rows, dtype, need_s, need_t):
    """Run every chunk. Returns per-counted-row values (N,) and the scaled gradients (or None)."""
    vocab = student.shape[-1]
    n_rows = math.prod(student.shape[:-1])
    mask_flat = None if mask is None else mask.reshape(-1)
    plan = _plan(mask_flat, n_rows, chunk_rows, student.device)
    n_active = n_rows if mask_flat is None else sum(
        (c[1] - c[0]) if isinstance(c, tuple) else c.numel() for c in plan)
    rows_s, rows_t = _Rows(student), _Rows(teacher)
    values = torch.empty(n_active, dtype=dtype, device=student.device)
    scale = 1.0 / temperature
    if reduction == "mean":
        scale /= max(n_active, 1)

    def new_grad(x):
        grad = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        if n_active < n_rows:  # rows that do not count get exactly zero gradient
            grad.view(-1, vocab).index_fill_(0, (~mask_flat).nonzero().squeeze(1), 0.0)
        return grad

    grad_s = new_grad(student) if need_s else None
    grad_t = new_grad(teacher) if need_t else None
    flat_s = None if grad_s is None else grad_s.view(-1, vocab)
    flat_t = None if grad_t is None else grad_t.view(-1, vocab)
    want_fin_s = need_s and kind in ("forward_kl",)
    want_fin_t = need_t and kind in ("reverse_kl",)

    def run(item):  # one chunk; chunks write disjoint rows, so they may run on different threads
        chunk, done = item
        if isinstance(chunk, tuple):
            xs, xt = rows_s.take(*chunk), rows_t.take(*chunk)
        else:
            xs, xt = rows_s.gather(chunk), rows_t.gather(chunk)
        r = xs.shape[0]
        ls, fin_s = _floored_log_probs(xs, temperature, dtype, want_fin_s)
        lt, fin_t = _floored_log_probs(xt, temperature, dtype, want_fin_t)
        in_place = isinstance(chunk, tuple)
        outs = []
        for flat in (flat_s, flat_t):
            if flat is None:
                outs.append(None)
            elif in_place and flat.dtype == dtype:
                outs.append(flat[chunk[0] : chunk[1]])  # the gradient is written straight into place
            else:
                outs.append(torch.empty((r, vocab), dtype=dtype, device=student.device))
        values[done : done + r] = _chunk_values(kind, weight, ls, lt, fin_s, fin_t, outs[0], outs[1], scale)
        for flat, out in zip((flat_s, flat_t), outs, strict=True):
            if out is None or (in_place and flat.dtype == dtype):
                continue
            if in_place:
                flat[chunk[0] : chunk[1]].copy_(out)
            else:
                flat.index_copy_(0, chunk, out.to(flat.dtype))

    offsets, done = [], 0
    for chunk in plan:
        offsets.append(done)
        done += (chunk[1] - chunk[0]) if isinstance(chunk, tuple) else chunk.numel()
    _run_chunks(run, list(zip(plan, offsets, strict=True)), student.device, n_active * vocab)
    return values, grad_s, grad_t, plan


def _scatter_order(plan) -> torch.Tensor:
    """Flat positions of the counted rows in the order the chunks produced their values."""
    return torch.cat([_chunk_positions(c) for c in plan]) if plan else torch.zeros(0, dtype=torch.long)


class _ChunkedDivergence(torch.autograd.Function):
    """values = divergence(student, teacher) per counted row, reduced; gradients computed in forward."""

    @staticmethod
    def forward(ctx, student, teacher, mask, spec):
        from .divergences import _reduce

        kind, weight, temperature, reduction, chunk_rows, dtype, need_s, need_t = spec
        values, grad_s, grad_t, plan = _compute(kind, weight, student, teacher, mask, temperature, reduction,
                                                chunk_rows, dtype, need_s, need_t)
        batch_shape = student.shape[:-1]
        if mask is not None and reduction == "none":
            order = _scatter_order(plan).to(student.device)
            is_sorted = order.numel() < 2 or bool((order[1:] > order[:-1]).all())
            if not is_sorted:  # leftover rows were gathered after the runs: restore ascending order
                values = values[torch.argsort(order)]
        out = _reduce(values, mask, batch_shape, reduction)  # raises NonFiniteLossError on NaN
        ctx.spec, ctx.mask, ctx.grads = spec, mask, (grad_s, grad_t)
        ctx.inference_inputs = student.is_inference() or teacher.is_inference()
        if not ctx.inference_inputs:
            ctx.save_for_backward(student, teacher)  # kept only with retain_graph=True (re-backward)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        if ctx.grads is not None:  # first backward: the gradients from the forward pass
            grad_s, grad_t = ctx.grads
            ctx.grads = None  # free them as soon as autograd is done with them
        else:  # a second backward through a retained graph: recompute
            if ctx.inference_inputs:
                raise RuntimeError(
                    "a chunked divergence of inference-mode tensors can be back-propagated once; "
                    "pass chunk_size=None to use the plain implementation")
            student, teacher = ctx.saved_tensors
            kind, weight, temperature, reduction, chunk_rows, dtype, need_s, need_t = ctx.spec
            _, grad_s, grad_t, _ = _compute(kind, weight, student, teacher, ctx.mask, temperature, reduction,
                                            chunk_rows, dtype, need_s, need_t)
        reduction = ctx.spec[3]
        for grad in (grad_s, grad_t):
            if grad is None:
                continue
            if reduction == "none":
                weights = grad_out.reshape(-1)
                if ctx.mask is not None:
                    weights = weights.masked_fill(~ctx.mask.reshape(-1), 0.0)
                grad.view(-1, grad.shape[-1]).mul_(weights.unsqueeze(1))
            elif bool(grad_out != 1):
                grad.mul_(grad_out)
        return grad_s, grad_t, None, None


def chunked_divergence(kind, student_logits, teacher_logits, mask=None, *, weight=None, temperature=1.0,
                       reduction="mean", chunk_size=None):
    """A divergence of :mod:`odistill.divergences`, computed chunk by chunk.

    Inputs must already be validated (the public functions do it): same-shape floating logits
    ``(..., V)``, a bool ``mask`` ``(...)`` on their device or None, ``temperature > 0``.

    Args:
        kind: one of :data:`KINDS`.
        student_logits, teacher_logits: ``(..., V)`` logits (any float dtype; bf16/fp16 are upcast
            to float32 chunk by chunk). Gradients flow to whichever requires grad.
        mask: ``(...)`` bool, True where the position counts.
        weight: β of ``generalized_jsd`` or α of the skew KLs.
        temperature: divides both logits.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        chunk_size: rows per chunk (None: :func:`default_chunk_rows`).

    Example:
        >>> s, t = torch.randn(4, 8, 100), torch.randn(4, 8, 100)
        >>> from odistill.divergences import reverse_kl
        >>> torch.allclose(chunked_divergence("reverse_kl", s, t, chunk_size=3), reverse_kl(s, t, chunk_size=None))
        True
    """
    if kind not in KINDS:
        raise ValueError(f"unknown divergence {kind!r}; chunked divergences: {KINDS}")
    kind, weight = _canonical(kind, weight)
    vocab = student_logits.shape[-1]
    chunk_rows = default_chunk_rows(vocab) if chunk_size is None else int(chunk_size)
    dtype = torch.float64 if torch.float64 in (student_logits.dtype, teacher_logits.dtype) else torch.float32
    grad_on = torch.is_grad_enabled()
    need_s = grad_on and student_logits.requires_grad
    need_t = grad_on and teacher_logits.requires_grad
    spec = (kind, weight, float(temperature), reduction, chunk_rows, dtype, need_s, need_t)
    return _ChunkedDivergence.apply(student_logits, teacher_logits, mask, spec)


# ----------------------------------------------------------------------------------------------
# fused LM head + divergence: the (N, V) logits never exist (the Liger "fused linear" idea)
# ----------------------------------------------------------------------------------------------


def _token_log_probs(logits: torch.Tensor, logp: torch.Tensor, tokens: torch.Tensor, temperature: float, dtype):
    """log p(token) at temperature 1 for each row of a chunk: from ``logp`` when it already is at τ = 1."""
    if temperature == 1.0:
        return logp.gather(1, tokens[:, None]).squeeze(1)
    z = logits.to(dtype)
    return z.gather(1, tokens[:, None]).squeeze(1) - z.logsumexp(-1)


def _fused_compute(kind, weight, hs, ws, bs, ht, wt, bt, temperature, reduction, chunk_rows, dtype, need,
                   tokens=None):
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
    grads = [torch.zeros_like(x) if (n and x is not None) else None for n, x in zip(need, (hs, ws, bs, ht, wt, bt),
                                                                                      strict=True)]
    want_fin_s = need_s and kind == "forward_kl"
    want_fin_t = need_t and kind == "reverse_kl"
    for start in range(0, n_rows, chunk_rows):
        stop = min(start + chunk_rows, n_rows)
        logits_s = torch.nn.functional.linear(hs[start:stop], ws, bs)  # (r, V), only this chunk
        logits_t = torch.nn.functional.linear(ht[start:stop], wt, bt)
        ls, fin_s = _floored_log_probs(logits_s, temperature, dtype, want_fin_s)
        lt, fin_t = _floored_log_probs(logits_t, temperature, dtype, want_fin_t)
        if tokens is not None:  # before _chunk_values, which may overwrite ls / lt
            tok = tokens[start:stop]
            token_lp[0, start:stop] = _token_log_probs(logits_s, ls, tok, temperature, dtype)
            token_lp[1, start:stop] = _token_log_probs(logits_t, lt, tok, temperature, dtype)
        del logits_s, logits_t
        out_s = torch.empty_like(ls) if need_s else None
        out_t = torch.empty_like(lt) if need_t else None
        values[start:stop] = _chunk_values(kind, weight, ls, lt, fin_s, fin_t, out_s, out_t, scale)
        for out, (h, w, off) in ((out_s, (hs, ws, 0)), (out_t, (ht, wt, 3))):
            if out is None:
                continue
            g = out.to(w.dtype)  # (r, V) gradient w.r.t. this chunk's logits
            if grads[off] is not None:
                grads[off][start:stop] = g @ w  # (r, H)
            if grads[off + 1] is not None:
                grads[off + 1].addmm_(g.t(), h[start:stop])  # (V, H)
            if grads[off + 2] is not None:
                grads[off + 2].add_(g.sum(0))
    return values, grads, token_lp


class _FusedLinearDivergence(torch.autograd.Function):
    """Like :class:`_ChunkedDivergence`: gradients computed in forward, recomputed for a second backward."""

    @staticmethod
    def forward(ctx, hs, ws, bs, ht, wt, bt, spec):
        from .divergences import _reduce

        kind, weight, temperature, reduction, chunk_rows, dtype, need, tokens = spec
        values, grads, token_lp = _fused_compute(kind, weight, hs, ws, bs, ht, wt, bt, temperature, reduction,
                                                 chunk_rows, dtype, need, tokens)
        out = _reduce(values, None, values.shape, reduction)  # raises NonFiniteLossError on NaN
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
            kind, weight, temperature, reduction, chunk_rows, dtype, need, _ = ctx.spec
            _, grads, _ = _fused_compute(kind, weight, *ctx.saved_tensors, temperature, reduction, chunk_rows, dtype,
                                         need)
        if bool(grad_out != 1):
            for g in grads:
                if g is not None:
                    g.mul_(grad_out)
        return (*grads, None)


def fused_linear_divergence(kind, student_hidden, student_weight, teacher_hidden, teacher_weight, mask=None, *,
                            student_bias=None, teacher_bias=None, weight=None, temperature=1.0, reduction="mean",
                            chunk_size=None, token_ids=None):
    """A divergence between two LM heads' distributions, never materialising the ``(N, V)`` logits.

    ``divergence(student_hidden @ student_weightᵀ, teacher_hidden @ teacher_weightᵀ)`` computed chunk by
    chunk of rows: each chunk's logits, log-softmaxes and logit-gradients exist only for that chunk, and
    the gradient flows straight on to the hidden states and the LM-head weight. Extra memory is
    O(chunk·V) plus the gradients of the inputs (the weight's gradient is as large as the weight).

    Args:
        kind: one of :data:`KINDS` (``"reverse_kl"``, ``"generalized_jsd"`` …).
        student_hidden: ``(..., H_S)`` the student's last hidden states (before the LM head).
        student_weight: ``(V, H_S)`` the student's LM-head weight (``model.lm_head.weight``).
        teacher_hidden: ``(..., H_T)`` the teacher's last hidden states (same batch shape).
        teacher_weight: ``(V, H_T)`` the teacher's LM-head weight (same V).
        mask: ``(...)`` bool, True where the position counts.
        student_bias, teacher_bias: optional ``(V,)`` LM-head biases.
        weight: β of ``generalized_jsd`` or α of the skew KLs.
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
        >>> from odistill.divergences import reverse_kl
        >>> torch.allclose(loss, reverse_kl(h_s @ w_s.T, h_t @ w_t.T), atol=1e-6)
        True
    """
    from .divergences import _check_mask, _check_reduction, _check_temperature

    if kind not in KINDS:
        raise ValueError(f"unknown divergence {kind!r}; chunked divergences: {KINDS}")
    _check_reduction(reduction)
    temperature = _check_temperature(temperature)
    if student_weight.shape[0] != teacher_weight.shape[0]:
        raise ValueError(f"vocabulary sizes differ: student LM head has V={student_weight.shape[0]}, teacher "
                         f"V={teacher_weight.shape[0]}")
    if student_hidden.shape[:-1] != teacher_hidden.shape[:-1]:
        raise ValueError(f"student_hidden {tuple(student_hidden.shape)} and teacher_hidden {tuple(teacher_hidden.shape)} "
                         "must share the batch shape (...)")
    batch_shape = student_hidden.shape[:-1]
    mask = _check_mask(mask, batch_shape, "student_hidden")
    kind, weight = _canonical(kind, weight)
    rows = (lambda x: x.reshape(-1, x.shape[-1])) if mask is None else (lambda x: x[mask.to(x.device)])
    hs, ht = rows(student_hidden), rows(teacher_hidden.to(student_hidden.device))  # (N, H): small copies
    inputs = (hs, student_weight, student_bias, ht, teacher_weight, teacher_bias)
    grad_on = torch.is_grad_enabled()
    need = tuple(bool(grad_on and x is not None and x.requires_grad) for x in inputs)
    dtype = torch.float64 if any(x is not None and x.dtype == torch.float64 for x in inputs) else torch.float32
    vocab = student_weight.shape[0]
    if chunk_size is None:  # big enough for efficient matmuls, small next to the full logits
        chunk_rows = max(1, min(FUSED_CHUNK_ELEMENTS // max(vocab, 1), -(-hs.shape[0] // 8)))
    else:
        chunk_rows = int(chunk_size)
    if chunk_rows < 1:
        raise ValueError(f"chunk_size must be >= 1 rows, got {chunk_size!r}")
    if reduction == "none" and any(need):
        raise ValueError("fused_linear_divergence: reduction='none' has no gradient (the LM-head gradient sums "
                         "over rows); use 'mean' or 'sum', or call it under torch.no_grad()")
    tokens = None
    if token_ids is not None:
        if tuple(token_ids.shape) != tuple(batch_shape):
            raise ValueError(f"token_ids has shape {tuple(token_ids.shape)} but the hidden states have batch shape "
                             f"{tuple(batch_shape)}; pass one token id per position")
        tokens = rows(token_ids[..., None].to(hs.device)).squeeze(-1)
        if tokens.numel() and not (0 <= int(tokens.min()) and int(tokens.max()) < vocab):
            raise ValueError(f"token_ids must lie in [0, V={vocab}) at counted positions")
    spec = (kind, weight, temperature, reduction, chunk_rows, dtype, need, tokens)
    result = _FusedLinearDivergence.apply(*inputs, spec)
    out, token_lp = result if tokens is not None else (result, None)

    def unflatten(x):
        if mask is None:
            return x.reshape(batch_shape)
        return torch.zeros(batch_shape, dtype=x.dtype, device=x.device).masked_scatter(mask.to(x.device), x)

    if reduction == "none":
        out = unflatten(out)
    if token_lp is None:
        return out
    return out, unflatten(token_lp[0]), unflatten(token_lp[1])
