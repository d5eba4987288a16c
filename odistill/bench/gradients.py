"""How good is a sampled-token gradient? The sampled estimator's gradient against the exact one.

Both estimators follow the gradient of the same per-token reverse KL on the student's own samples. The
**full** estimator computes each position's KL over the whole vocabulary, so its only noise is which
prefixes were sampled; the **sampled** estimator replaces each position's KL by one sampled token's
log-ratio, an unbiased but noisy stand-in (notebook 02). :func:`gradient_agreement` measures the
difference on the lab bench: for ``n`` sampled completions, the cosine between each estimator's gradient
and a reference (the full estimator on ``reference_rows`` completions), and the fraction of coordinates
whose sign agrees with it — what Adam, which normalises each coordinate, mostly follows.
"""

from __future__ import annotations

import torch

from ..core.forward import completion_logits
from ..core.loss import distillation_loss, sampled_token_loss
from ..core.sampler import sample
from ..core.tensor_ops import token_log_probs

__all__ = ["estimator_gradient", "gradient_agreement"]


def estimator_gradient(student, teacher, rollouts, estimator: str, *, baseline: str = "none") -> torch.Tensor:
    """The gradient (flattened over every trainable parameter) of one estimator's loss on ``rollouts``:
    ``"full"`` (reverse KL over the vocabulary) or ``"sampled"`` (with ``baseline``)."""
    params = [p for p in student.parameters() if p.requires_grad]
    with torch.no_grad():
        t_logits = completion_logits(teacher, rollouts)
    logits = completion_logits(student, rollouts)
    mask = rollouts.completion_mask
    if estimator == "full":
        loss = distillation_loss(logits, t_logits, mask, divergence="reverse_kl")
    elif estimator == "sampled":
        tokens = rollouts.completion_ids
        loss = sampled_token_loss(
            token_log_probs(logits, tokens),
            token_log_probs(t_logits, tokens),
            rollouts.sampling_logprobs,
            mask,
            baseline=baseline,
            groups=rollouts.prompt_index,
        )
    else:
        raise ValueError(f"estimator must be 'full' or 'sampled', got {estimator!r}")
    grads = torch.autograd.grad(loss, params)
    return torch.cat([g.reshape(-1) for g in grads]).double()


def _agreement(grad: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    cosine = float(torch.nn.functional.cosine_similarity(grad, reference, dim=0))
    signs = float((torch.sign(grad) == torch.sign(reference)).double().mean())
    return cosine, signs


def gradient_agreement(
    student,
    teacher,
    tokenizer,
    prompts: list,
    *,
    sizes=(16, 64, 256, 1024),
    variants=(("full", "none"), ("sampled", "none"), ("sampled", "batch_mean")),
    draws: int = 3,
    reference_rows: int = 4096,
    max_new_tokens: int = 16,
    seed: int = 0,
) -> list[dict]:
    """Cosine and sign agreement with the reference gradient, per estimator variant and sample size.

    ``prompts`` are cycled to make each batch of ``n`` completions (one per prompt, temperature 1, the
    student in eval mode: its sampling distribution is its training distribution). The reference is the
    full estimator's gradient on ``reference_rows`` completions. Returns one dict per (variant, n, draw):
    ``estimator, baseline, n, draw, cosine, sign_agreement``.
    """
    was_training = student.training
    student.eval()

    def batch(n, salt):
        chosen = [prompts[(salt * 7919 + i) % len(prompts)] for i in range(n)]
        return sample(student, tokenizer, chosen, max_new_tokens=max_new_tokens, seed=seed * 1_000_003 + salt)

    try:
        reference = estimator_gradient(student, teacher, batch(reference_rows, 0), "full")
        rows = []
        for n in sizes:
            for draw in range(draws):
                rollouts = batch(n, 1 + draw + 100 * n)
                for estimator, baseline in variants:
                    grad = estimator_gradient(student, teacher, rollouts, estimator, baseline=baseline)
                    cosine, signs = _agreement(grad, reference)
                    rows.append(
                        dict(
                            estimator=estimator,
                            baseline=baseline,
                            n=n,
                            draw=draw,
                            cosine=cosine,
                            sign_agreement=signs,
                        )
                    )
        return rows
    finally:
        student.train(was_training)
