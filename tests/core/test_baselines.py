"""Baselines of the sampled estimator keep its gradient unbiased and lower its variance.

Reference: the exact expectation over every possible batch (V^R draws of R rows, enumerated and weighted by
their probability), against the exact gradient of the reverse KL. No sampling noise: tolerance 1e-10.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from odistill import ConfigError, DistillConfig
from odistill.core.divergences import reverse_kl
from odistill.core.loss import sampled_token_loss

V, ROWS = 4, 4
GROUPS = torch.tensor([0, 0, 1, 1])  # two prompts, two completions each (num_generations = 2)


def _models(seed=0, peaked=False):
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(V, dtype=torch.float64, generator=g)
    teacher = torch.randn(V, dtype=torch.float64, generator=g) * 2
    if peaked:  # a confident teacher whose favourite the student rarely picks: every log-ratio is large
        teacher = torch.full((V,), -6.0, dtype=torch.float64)
        teacher[int(student.argmin())] = 6.0
    return student, teacher


def _loss(theta, teacher, tokens, baseline, **kw):
    """One batch of ROWS one-token completions drawn from the student (the same context for every row)."""
    log_p = torch.log_softmax(theta, -1)[tokens][:, None]  # (R, 1)
    log_t = torch.log_softmax(teacher, -1)[tokens][:, None]
    mask = torch.ones(ROWS, 1, dtype=torch.bool)
    return sampled_token_loss(log_p, log_t, log_p.detach(), mask, baseline=baseline, groups=GROUPS, **kw)


def _moments(baseline, seed=0, own_mean=False, peaked=False, **kw):
    """The exact mean and total variance of the gradient over every batch of ROWS draws."""
    theta, teacher = _models(seed, peaked)
    p = torch.softmax(theta, -1)
    mean = torch.zeros(V, dtype=torch.float64)
    second = torch.zeros((), dtype=torch.float64)
    for draw in itertools.product(range(V), repeat=ROWS):
        tokens = torch.tensor(draw)
        x = theta.clone().requires_grad_(True)
        if own_mean:  # a baseline that includes the row itself: the batch mean of every advantage
            log_p = torch.log_softmax(x, -1)[tokens]
            advantage = -(log_p.detach() - torch.log_softmax(teacher, -1)[tokens])
            loss = -(torch.exp(log_p - log_p.detach()) * (advantage - advantage.mean())).mean()
        else:
            loss = _loss(x, teacher, tokens, baseline, **kw)
        (grad,) = torch.autograd.grad(loss, x)
        weight = p[tokens].prod()
        mean += weight * grad
        second += weight * (grad**2).sum()
    return mean, second - (mean**2).sum()


def _exact_gradient(seed=0, peaked=False):
    theta, teacher = _models(seed, peaked)
    x = theta.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(reverse_kl(x, teacher), x)
    return grad


@pytest.mark.parametrize("baseline", ["none", "group_mean", "batch_mean"])
@pytest.mark.parametrize("seed, peaked", [(0, False), (1, False), (0, True)])
def test_every_baseline_keeps_the_expected_gradient_exact(baseline, seed, peaked):
    mean, _ = _moments(baseline, seed, peaked=peaked)
    assert torch.allclose(mean, _exact_gradient(seed, peaked), atol=1e-10)


def test_a_baseline_that_includes_the_row_itself_is_biased():
    """The test above can fail: the batch mean over every row, the row's own token included, shifts the
    expected gradient."""
    mean, _ = _moments("none", own_mean=True)
    assert float((mean - _exact_gradient()).abs().max()) > 1e-3


def test_baselines_lower_the_variance_when_the_advantages_share_a_large_common_part():
    """A student far from a peaked teacher (the lab bench's case): every token's log-ratio is large and of
    one sign, and the baseline removes that common part. With advantages that mostly differ from token to
    token, one other completion is a noisy baseline and can add variance instead (the second assert)."""
    far = {name: float(_moments(name, peaked=True)[1]) for name in ("none", "group_mean", "batch_mean")}
    assert far["batch_mean"] < far["group_mean"] < 0.5 * far["none"]
    near = {name: float(_moments(name)[1]) for name in ("none", "group_mean")}
    assert near["group_mean"] > near["none"]


def test_advantage_clip_is_a_biased_stabiliser():
    mean, variance = _moments("none", advantage_clip=0.5)
    _, plain_variance = _moments("none")
    assert float((mean - _exact_gradient()).abs().max()) > 1e-3 and float(variance) < float(plain_variance)


def test_baselines_need_other_rows_and_clear_inputs():
    theta, teacher = _models()
    lp = torch.log_softmax(theta, -1)[torch.tensor([0, 1, 2, 3])][:, None]
    mask = torch.ones(4, 1, dtype=torch.bool)
    with pytest.raises(ValueError, match="needs groups"):
        sampled_token_loss(lp, lp, lp, mask, baseline="group_mean")
    with pytest.raises(ValueError, match="no other row"):
        sampled_token_loss(lp, lp, lp, mask, baseline="group_mean", groups=torch.arange(4))
    with pytest.raises(ValueError, match="baseline must be one of"):
        sampled_token_loss(lp, lp, lp, mask, baseline="mean")
    with pytest.raises(ConfigError, match="num_generations"):
        DistillConfig(estimator="sampled", sampled_baseline="group_mean")
    with pytest.raises(ConfigError, match="'sampled' estimator"):
        DistillConfig(sampled_baseline="batch_mean")
    DistillConfig(estimator="sampled", sampled_baseline="group_mean", num_generations=4, advantage_clip=5.0)
