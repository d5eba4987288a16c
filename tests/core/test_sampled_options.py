"""The sampled estimator's options: kl_coef, kl_discount (advantage to go) and max_ratio (clip).

Reference: the advantages and the gradient written out token by token in float64 with Python loops."""

from __future__ import annotations

import math

import pytest
import torch

from odistill import ConfigError, DistillConfig
from odistill.core.loss import sampled_token_loss


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    student = -torch.rand(3, 5, generator=g, dtype=torch.float64) * 3
    teacher = -torch.rand(3, 5, generator=g, dtype=torch.float64) * 3
    sampling = student + torch.randn(3, 5, generator=g, dtype=torch.float64) * 0.3  # slightly off-policy
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.bool)
    return student, teacher, sampling, mask


def _by_hand(student, teacher, sampling, mask, coef, gamma, max_ratio=None):
    """(loss value, d loss / d student) of the mean reduction, with loops."""
    value, grad, n = 0.0, torch.zeros_like(student), int(mask.sum())
    for b in range(mask.shape[0]):
        length = int(mask[b].sum())
        d = [float(student[b, t] - teacher[b, t]) for t in range(length)]
        for t in range(length):
            advantage = -coef * sum(gamma ** (s - t) * d[s] for s in range(t, length))
            ratio = math.exp(float(student[b, t] - sampling[b, t]))
            clipped = max_ratio is not None and ratio > max_ratio
            value += -(max_ratio if clipped else ratio) * advantage / n
            grad[b, t] = 0.0 if clipped else -ratio * advantage / n  # d ratio / d log p = ratio
    return value, grad


@pytest.mark.parametrize("coef, gamma", [(1.0, 0.0), (0.5, 0.0), (1.0, 0.9), (2.0, 1.0)])
def test_the_advantage_is_the_discounted_reverse_kl_to_go(coef, gamma):
    student, teacher, sampling, mask = _batch()
    x = student.clone().requires_grad_(True)
    loss = sampled_token_loss(x, teacher, sampling, mask, kl_coef=coef, kl_discount=gamma)
    (grad,) = torch.autograd.grad(loss, x)
    want_value, want_grad = _by_hand(student, teacher, sampling, mask, coef, gamma)
    assert loss.item() == pytest.approx(want_value, abs=1e-12)
    assert torch.allclose(grad, want_grad, atol=1e-12)


def test_a_discount_changes_the_gradient_of_early_tokens_only_through_later_ones():
    student, teacher, sampling, mask = _batch(1)
    grads = []
    for gamma in (0.0, 0.5):
        x = student.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(sampled_token_loss(x, teacher, sampling, mask, kl_discount=gamma), x)
        grads.append(g)
    last = mask.sum(-1) - 1
    rows = torch.arange(3)
    # the last counted token of each completion has nothing after it: unchanged; earlier ones change
    assert torch.allclose(grads[0][rows, last], grads[1][rows, last])
    assert not torch.allclose(grads[0][0, :4], grads[1][0, :4])


def test_max_ratio_clips_the_value_and_stops_the_gradient_of_clipped_tokens():
    student, teacher, sampling, mask = _batch(2)
    ratios = (student - sampling).exp()[mask]
    cap = float(ratios.median())  # about half the tokens are clipped
    x = student.clone().requires_grad_(True)
    loss = sampled_token_loss(x, teacher, sampling, mask, max_ratio=cap)
    (grad,) = torch.autograd.grad(loss, x)
    want_value, want_grad = _by_hand(student, teacher, sampling, mask, 1.0, 0.0, max_ratio=cap)
    assert loss.item() == pytest.approx(want_value, abs=1e-12) and torch.allclose(grad, want_grad, atol=1e-12)
    assert int((grad[mask] == 0).sum()) >= 1


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(kl_discount=1.5), "kl_discount must be"),
        (dict(kl_coef=0.0), "kl_coef must be"),
        (dict(max_ratio=-1.0), "max_ratio must be"),
    ],
)
def test_bad_values_are_clear_errors(kw, match):
    student, teacher, sampling, mask = _batch()
    with pytest.raises(ValueError, match=match):
        sampled_token_loss(student, teacher, sampling, mask, **kw)
    with pytest.raises(ConfigError, match=match):
        DistillConfig(estimator="sampled", **kw)


def test_the_options_are_refused_with_the_full_estimator_instead_of_ignored():
    with pytest.raises(ConfigError, match="kl_discount.*'sampled' estimator"):
        DistillConfig(estimator="full", kl_discount=0.9)
    cfg = DistillConfig(estimator="sampled", kl_discount=0.9, kl_coef=0.5, max_ratio=2.0)
    assert DistillConfig.from_dict(cfg.to_dict()) == cfg


def test_distill_passes_the_options_to_the_loss(char_tokenizer):
    """Step 1 sees the same rollouts in every run: kl_coef=2 doubles its loss, a discount changes it."""
    from conftest import make_tiny_llama

    from odistill import distill

    data = [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a in range(10) for b in range(10)]
    v = len(char_tokenizer)
    first = {}
    for name, kw in {"plain": {}, "coef": dict(kl_coef=2.0), "discount": dict(kl_discount=0.9)}.items():
        cfg = DistillConfig(
            estimator="sampled", steps=1, batch_size=4, max_new_tokens=4, progress=False, device="cpu", **kw
        )
        student, teacher = make_tiny_llama(v, seed=0), make_tiny_llama(v, seed=1, hidden=48)
        first[name] = distill(student, teacher, char_tokenizer, data, cfg).history[0]["loss"]
    assert first["coef"] == pytest.approx(2 * first["plain"], rel=1e-5)
    assert abs(first["discount"] - first["plain"]) > 1e-3 * abs(first["plain"])
