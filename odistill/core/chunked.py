"""Chunked divergences: the numbers of :mod:`odistill.core.divergences` in O(chunk·V) extra memory.

The plain implementations gather the counted rows into ``(N, V)`` copies, log-softmax them, build a
few more ``(N, V)`` temporaries, and let autograd keep several of them for the backward pass: peak
memory is many times the logits. Here one :class:`torch.autograd.Function` walks the counted rows in
chunks of ``chunk_size`` rows (a few MB, so each chunk stays in the CPU cache) and, for each chunk,

1. takes the rows of the student and teacher logits (a view when the rows are contiguous, else a
   small gathered copy; masked rows are never touched),
2. computes both log-softmaxes in float32 (float64 for float64 inputs), with ``-inf`` replaced by
   :data:`~odistill.core.tensor_ops.MASKED_LOG_PROB` exactly as the plain path does,
3. computes the per-row divergence **and its analytic gradient**, written straight into the
   preallocated gradient tensor (the same size as the logits: autograd needs it anyway).

Computing the gradient in the forward pass (the Liger-Kernel idea) instead of recomputing the
softmaxes in backward costs no extra peak memory — the ``(B, T, V)`` gradient has to exist when the
loss is back-propagated, and at the end of the forward pass the logits and the gradient are alive
together in either design — and it halves the exp/log work. The backward pass only multiplies by the
incoming gradient (skipped when it is 1, the usual ``loss.backward()``). A second backward through a
retained graph recomputes the gradient from the saved inputs.

The per-chunk math (values and closed-form gradients) is a *kernel* of :mod:`odistill.core.kernels`;
this module only walks the rows. You rarely call it directly: every two-distribution divergence of
:mod:`odistill.core.divergences` takes ``chunk_size="auto"`` (the default) and comes here when the
logits are large (more than :data:`AUTO_MIN_ELEMENTS` elements).
"""

from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

from .kernels import floored_log_probs
from .tensor_ops import masked_reduce

__all__ = ["AUTO_MIN_ELEMENTS", "TARGET_CHUNK_ELEMENTS", "default_chunk_rows", "chunked_divergence"]

#: ``chunk_size="auto"`` takes the chunked path when the logits have more elements than this
#: (16 MB of float32).
AUTO_MIN_ELEMENTS = 2**22

#: ``chunk_size="auto"`` processes about this many logits per chunk (rows = max(1, this // V)).
TARGET_CHUNK_ELEMENTS = 2**18

#: On CPU, run chunks on ``torch.get_num_threads()`` single-threaded workers (see :func:`_run_chunks`) …
PARALLEL_CHUNKS = True
#: … when the counted logits number at least this many (below it, starting threads costs more than it saves).
PARALLEL_MIN_ELEMENTS = 2**21


def default_chunk_rows(vocab_size: int) -> int:
    """Rows per chunk for ``chunk_size="auto"``: about :data:`TARGET_CHUNK_ELEMENTS` logits (1 MB of
    float32)."""
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
    machine but costs a scheduler time slice per barrier when other processes share the cores;
    independent workers have no barriers (``benchmarks/`` measures the difference).
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
        with ThreadPoolExecutor(
            max_workers=workers, initializer=torch.set_num_threads, initargs=(1,)
        ) as pool:
            for future in [pool.submit(single_threaded, item) for item in items]:
                future.result()  # re-raises a worker's exception
    finally:
        torch.set_num_threads(threads)  # the initializer changed the process-wide default


def _compute(
    kernel, weight, student, teacher, mask, temperature, reduction, chunk_rows, dtype, need_s, need_t
):
    """Run every chunk. Returns per-counted-row values (N,) and the scaled gradients (or None)."""
    vocab = student.shape[-1]
    n_rows = math.prod(student.shape[:-1])
    mask_flat = None if mask is None else mask.reshape(-1)
    plan = _plan(mask_flat, n_rows, chunk_rows, student.device)
    n_active = (
        n_rows
        if mask_flat is None
        else sum((c[1] - c[0]) if isinstance(c, tuple) else c.numel() for c in plan)
    )
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

    def run(item):  # one chunk; chunks write disjoint rows, so they may run on different threads
        chunk, done = item
        if isinstance(chunk, tuple):
            xs, xt = rows_s.take(*chunk), rows_t.take(*chunk)
        else:
            xs, xt = rows_s.gather(chunk), rows_t.gather(chunk)
        r = xs.shape[0]
        ls, fin_s = floored_log_probs(xs, temperature, dtype)
        lt, fin_t = floored_log_probs(xt, temperature, dtype)
        in_place = isinstance(chunk, tuple)
        outs = []
        for flat in (flat_s, flat_t):
            if flat is None:
                outs.append(None)
            elif in_place and flat.dtype == dtype:
                outs.append(flat[chunk[0] : chunk[1]])  # the gradient is written straight into place
            else:
                outs.append(torch.empty((r, vocab), dtype=dtype, device=student.device))
        values[done : done + r] = kernel(ls, lt, weight, fin_s, fin_t, outs[0], outs[1], scale)
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
        kernel, weight, temperature, reduction, chunk_rows, dtype, need_s, need_t = spec
        values, grad_s, grad_t, plan = _compute(
            kernel, weight, student, teacher, mask, temperature, reduction, chunk_rows, dtype, need_s, need_t
        )
        batch_shape = student.shape[:-1]
        if mask is not None and reduction == "none":
            order = _scatter_order(plan).to(student.device)
            is_sorted = order.numel() < 2 or bool((order[1:] > order[:-1]).all())
            if not is_sorted:  # leftover rows were gathered after the runs: restore ascending order
                values = values[torch.argsort(order)]
        out = masked_reduce(values, mask, batch_shape, reduction)  # raises NonFiniteLossError on NaN
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
                    "pass chunk_size=None to use the plain implementation"
                )
            student, teacher = ctx.saved_tensors
            kernel, weight, temperature, reduction, chunk_rows, dtype, need_s, need_t = ctx.spec
            _, grad_s, grad_t, _ = _compute(
                kernel,
                weight,
                student,
                teacher,
                ctx.mask,
                temperature,
                reduction,
                chunk_rows,
                dtype,
                need_s,
                need_t,
            )
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


def chunked_divergence(
    kernel,
    student_logits,
    teacher_logits,
    mask=None,
    *,
    weight=None,
    temperature=1.0,
    reduction="mean",
    chunk_size=None,
):
    """A divergence computed chunk by chunk with one of the kernels of :mod:`odistill.core.kernels`.

    Inputs must already be validated (the public functions of :mod:`odistill.core.divergences` do it):
    same-shape floating logits ``(..., V)``, a bool ``mask`` ``(...)`` on their device or None,
    ``temperature > 0``, and a ``weight`` strictly inside (0, 1) for the kernels that take one (the end
    points are other divergences: :meth:`~odistill.core.divergences.Divergence.resolve`).

    Args:
        kernel: a chunk kernel, e.g. ``DIVERGENCES["reverse_kl"].kernel``.
        student_logits, teacher_logits: ``(..., V)`` logits (any float dtype; bf16/fp16 are upcast
            to float32 chunk by chunk). Gradients flow to whichever requires grad.
        mask: ``(...)`` bool, True where the position counts.
        weight: β of the generalized JSD or α of the skew KLs.
        temperature: divides both logits.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        chunk_size: rows per chunk (None: :func:`default_chunk_rows`).

    Example:
        >>> from odistill.core.divergences import DIVERGENCES, reverse_kl
        >>> s, t = torch.randn(4, 8, 100), torch.randn(4, 8, 100)
        >>> chunked = chunked_divergence(DIVERGENCES["reverse_kl"].kernel, s, t, chunk_size=3)
        >>> torch.allclose(chunked, reverse_kl(s, t, chunk_size=None))
        True
    """
    if not callable(kernel):
        raise TypeError(f"kernel must be a chunk kernel of odistill.core.kernels, got {kernel!r}")
    if getattr(kernel, "takes_weight", False):
        if weight is None or not 0.0 < float(weight) < 1.0:
            raise ValueError(
                f"{kernel.__name__} needs a weight strictly inside (0, 1), got {weight!r}; at the end points "
                "it is another divergence: use DIVERGENCES[name].resolve(weight)"
            )
    elif weight is not None:
        raise ValueError(f"{kernel.__name__} takes no weight, got {weight!r}")
    vocab = student_logits.shape[-1]
    chunk_rows = default_chunk_rows(vocab) if chunk_size is None else int(chunk_size)
    if chunk_rows < 1:
        raise ValueError(f"chunk_size must be >= 1 rows, got {chunk_size!r}")
    dtype = torch.float64 if torch.float64 in (student_logits.dtype, teacher_logits.dtype) else torch.float32
    grad_on = torch.is_grad_enabled()
    need_s = grad_on and student_logits.requires_grad
    need_t = grad_on and teacher_logits.requires_grad
    spec = (kernel, weight, float(temperature), reduction, chunk_rows, dtype, need_s, need_t)
    return _ChunkedDivergence.apply(student_logits, teacher_logits, mask, spec)
