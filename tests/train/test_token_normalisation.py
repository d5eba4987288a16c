"""A step's loss is the mean over every completion token of the step, however it is split.

Reference: the loss of all 16 rows in one batch, averaged over its tokens, differentiated directly. The
split runs (16 × 1, 8 × 2, 4 × 4 micro-batches) must give that gradient to 1e-6. Completions of very
different lengths make the old per-micro-batch mean (a short completion in a small micro-batch weighs
more) differ from it by far more than the tolerance.
"""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_llama

import odistill.train.trainer as trainer
from odistill import DistillConfig
from odistill.core.forward import completion_logits
from odistill.core.loss import distillation_loss, sampled_token_loss
from odistill.core.rollouts import rollouts_from_text
from odistill.core.tensor_ops import token_log_probs

# completions of 1 to 12 characters (+ EOS): the token count per row varies twelve-fold
DATA = [
    {"prompt": f"{a}+{b}=", "answer": str(a) * (1 + (a * 7 + b) % 12)} for a in range(10) for b in range(10)
]
ROWS = 16


def _models(tok):
    student = make_tiny_llama(len(tok), seed=0)
    teacher = make_tiny_llama(len(tok), seed=1, hidden=48)
    return student, teacher


def _fixed_rollouts(tok, student):
    """16 rows of very different lengths; log q = the student's own log-probs (on-policy, temperature 1)."""
    rows = DATA[:ROWS]
    rollouts = rollouts_from_text(tok, [r["prompt"] for r in rows], [r["answer"] for r in rows])
    with torch.no_grad():
        lp = token_log_probs(completion_logits(student, rollouts), rollouts.completion_ids)
    rollouts.sampling_logprobs = lp * rollouts.completion_mask
    rollouts.source = "student"
    lengths = rollouts.completion_mask.sum(-1)
    assert int(lengths.min()) == 2 and int(lengths.max()) == 13
    return rollouts


def _reference_grads(tok, estimator):
    """float64-free brute force: one forward pass over all 16 rows, the mean over their tokens."""
    student, teacher = _models(tok)
    rollouts = _fixed_rollouts(tok, student)
    student.train()
    logits = completion_logits(student, rollouts)
    mask = rollouts.completion_mask
    with torch.no_grad():
        t_logits = completion_logits(teacher, rollouts)
    if estimator == "full":
        loss = distillation_loss(logits, t_logits, mask, divergence="reverse_kl")
    else:
        lp = token_log_probs(logits, rollouts.completion_ids)
        t_lp = token_log_probs(t_logits, rollouts.completion_ids)
        loss = sampled_token_loss(lp, t_lp, rollouts.sampling_logprobs, mask)
    loss.backward()
    return [p.grad.clone() for p in student.parameters()]


def _split_grads(tok, estimator, batch_size, grad_accum, monkeypatch, fused=False):
    student, teacher = _models(tok)
    fixed = _fixed_rollouts(tok, student)
    # the loop's own rollouts are replaced by slices of the fixed 16 rows, in order
    monkeypatch.setattr(
        trainer,
        "make_rollouts",
        lambda state, step, micro: fixed.rows(micro * batch_size, (micro + 1) * batch_size),
    )
    config = DistillConfig(
        lmbda=1.0,
        estimator=estimator,
        divergence="reverse_kl",
        fused_lm_head=fused,
        batch_size=batch_size,
        grad_accum=grad_accum,
        progress=False,
        device="cpu",
        steps=1,
    )
    state = trainer.setup(student, teacher, tok, DATA, config)
    row, finite = trainer.accumulate_gradients(state, 1)
    assert finite and row["tokens"] == int(fixed.completion_mask.sum())
    return [p.grad.clone() for p in student.parameters()]


@pytest.mark.parametrize(
    "estimator, fused",
    [("full", False), ("full", True), ("sampled", False)],
    ids=["full", "fused", "sampled"],
)
@pytest.mark.parametrize("batch_size, grad_accum", [(16, 1), (8, 2), (4, 4)])
def test_any_split_of_the_step_gives_the_gradient_of_the_mean_over_its_tokens(
    char_tokenizer, monkeypatch, estimator, fused, batch_size, grad_accum
):
    reference = _reference_grads(char_tokenizer, estimator)
    grads = _split_grads(char_tokenizer, estimator, batch_size, grad_accum, monkeypatch, fused)
    worst = max(float((g - r).abs().max()) for g, r in zip(grads, reference, strict=True))
    scale = max(float(r.abs().max()) for r in reference)
    assert scale > 1e-3  # a gradient worth comparing
    assert worst < 1e-6, f"max |Δgrad| {worst:.3g} (gradient scale {scale:.3g})"


def test_the_per_micro_batch_mean_would_differ_by_far_more_than_the_tolerance(char_tokenizer):
    """The test above can fail: the average of the two halves' means is not the mean over all tokens here."""
    student, teacher = _models(char_tokenizer)
    rollouts = _fixed_rollouts(char_tokenizer, student)
    with torch.no_grad():
        s, t = completion_logits(student, rollouts), completion_logits(teacher, rollouts)
    mask = rollouts.completion_mask

    def mean(rows):
        return distillation_loss(s[rows], t[rows], mask[rows], divergence="reverse_kl")

    halves = (mean(slice(0, 8)) + mean(slice(8, 16))) / 2
    assert abs(float(halves - mean(slice(0, 16)))) > 1e-4
    assert int(mask[:8].sum()) != int(mask[8:].sum())


@pytest.mark.slow
@pytest.mark.parametrize(
    "estimator, fused",
    [("full", False), ("full", True), ("sampled", False)],
    ids=["full", "fused", "sampled"],
)
def test_two_processes_of_8_give_the_gradient_of_one_process_of_16(
    char_tokenizer, tmp_path, estimator, fused
):
    """gloo, two CPU processes: DDP averages the processes' gradients; each scales its share so that the
    result is the mean over all 16 rows' tokens, whatever each process's token count."""
    from pathlib import Path

    script = Path(__file__).parents[1] / "scripts" / "ddp_grads.py"
    from conftest import run_two_processes

    run_two_processes(script, tmp_path, estimator, "fused" if fused else "logits")
    reference = _reference_grads(char_tokenizer, estimator)
    for rank in range(2):
        saved = torch.load(tmp_path / f"grads-rank{rank}.pt")
        assert saved["world"] == 2
        worst = max(float((g - r).abs().max()) for g, r in zip(saved["grads"], reference, strict=True))
        assert worst < 1e-6, f"rank {rank}: max |Δgrad| {worst:.3g}"
