"""gradient_agreement: the sampled estimator's gradient against the reference, by sample size."""

from __future__ import annotations

import statistics

import pytest
import torch
from conftest import make_tiny_llama

from odistill.bench.gradients import estimator_gradient, gradient_agreement
from odistill.core.rollouts import rollouts_from_text

PROMPTS = [f"{a}+{b}=" for a in range(10) for b in range(10)]


def test_more_samples_give_gradients_closer_to_the_reference(char_tokenizer):
    v = len(char_tokenizer)
    student, teacher = make_tiny_llama(v, seed=0), make_tiny_llama(v, seed=1, hidden=48)
    with torch.no_grad():
        teacher.lm_head.weight.mul_(4.0)
    rows = gradient_agreement(
        student,
        teacher,
        char_tokenizer,
        PROMPTS,
        sizes=(8, 512),
        draws=2,
        reference_rows=1024,
        max_new_tokens=4,
    )
    assert len(rows) == 2 * 2 * 3 and student.training is False  # the model's mode is restored (eval here)
    assert all(-1 <= r["cosine"] <= 1 and 0 <= r["sign_agreement"] <= 1 for r in rows)

    def mean(estimator, n, key="cosine"):
        return statistics.mean(r[key] for r in rows if r["estimator"] == estimator and r["n"] == n)

    for estimator in ("full", "sampled"):
        assert mean(estimator, 512) > mean(estimator, 8)
    assert mean("full", 512) > mean("sampled", 512)  # one token per position is noisier than the vocabulary
    assert mean("full", 512) > 0.9


def test_the_full_gradient_is_the_gradient_of_the_reverse_kl_and_bad_names_fail(char_tokenizer):
    v = len(char_tokenizer)
    student, teacher = make_tiny_llama(v, seed=0), make_tiny_llama(v, seed=1)
    rollouts = rollouts_from_text(char_tokenizer, PROMPTS[:4], ["3", "12", "5", "7"])
    grad = estimator_gradient(student, teacher, rollouts, "full")
    assert grad.numel() == sum(p.numel() for p in student.parameters()) and torch.isfinite(grad).all()
    with pytest.raises(ValueError, match="estimator must be"):
        estimator_gradient(student, teacher, rollouts, "exact")
