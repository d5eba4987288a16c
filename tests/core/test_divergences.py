"""The divergence library against independent float64 references, limits, gradients and bad inputs.

The references below never call odistill or torch.log_softmax: they exponentiate and normalise by
hand in numpy float64 and sum over the vocabulary explicitly.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import odistill
from odistill import (
    forward_kl,
    generalized_jsd,
    kl_k1,
    kl_k2,
    kl_k3,
    reverse_kl,
    skew_forward_kl,
    skew_reverse_kl,
    token_log_probs,
    total_variation,
)

# ------------------------------------------------------------------------------------------------
# brute-force references (numpy float64, one position at a time)
# ------------------------------------------------------------------------------------------------


def _probs(logits_row: np.ndarray, temperature: float) -> np.ndarray:
    z = logits_row.astype(np.float64) / temperature
    e = np.exp(z - z.max())
    return e / e.sum()


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    total = 0.0
    for pi, qi in zip(p, q, strict=True):
        if pi > 0:
            total += pi * (math.log(pi) - math.log(qi))
    return total


def ref_pointwise(name: str, p_s: np.ndarray, p_t: np.ndarray, **kw) -> float:
    if name == "forward_kl":
        return _kl(p_t, p_s)
    if name == "reverse_kl":
        return _kl(p_s, p_t)
    if name == "generalized_jsd":
        b = kw["beta"]
        if b == 0:
            return _kl(p_t, p_s)
        if b == 1:
            return _kl(p_s, p_t)
        m = b * p_t + (1 - b) * p_s
        return b * _kl(p_t, m) + (1 - b) * _kl(p_s, m)
    if name == "skew_forward_kl":
        a = kw["alpha"]
        return _kl(p_t, a * p_t + (1 - a) * p_s)
    if name == "skew_reverse_kl":
        a = kw["alpha"]
        return _kl(p_s, a * p_s + (1 - a) * p_t)
    if name == "total_variation":
        return 0.5 * sum(abs(a - b) for a, b in zip(p_s, p_t, strict=True))
    raise KeyError(name)


def reference(name, student, teacher, mask=None, temperature=1.0, reduction="mean", **kw):
    s = student.detach().double().numpy()
    t = teacher.detach().double().numpy()
    batch_shape = s.shape[:-1]
    m = np.ones(batch_shape, dtype=bool) if mask is None else mask.numpy()
    out = np.zeros(batch_shape)
    for idx in np.ndindex(*batch_shape):
        if m[idx]:
            out[idx] = ref_pointwise(name, _probs(s[idx], temperature), _probs(t[idx], temperature), **kw)
    if reduction == "none":
        return out
    if reduction == "sum":
        return out.sum()
    return out.sum() / max(m.sum(), 1)


FUNCS = {
    "forward_kl": (forward_kl, {}),
    "reverse_kl": (reverse_kl, {}),
    "generalized_jsd": (generalized_jsd, {"beta": 0.3}),
    "skew_forward_kl": (skew_forward_kl, {"alpha": 0.1}),
    "skew_reverse_kl": (skew_reverse_kl, {"alpha": 0.25}),
    "total_variation": (total_variation, {}),
}


def _random_case(seed: int, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    nb = int(torch.randint(1, 3, (1,), generator=g))
    batch = tuple(int(x) for x in torch.randint(1, 5, (nb,), generator=g))
    vocab = int(torch.randint(2, 17, (1,), generator=g))
    scale = float(torch.empty(1).uniform_(0.5, 4.0, generator=g))
    s = torch.randn(*batch, vocab, generator=g, dtype=torch.float64) * scale
    t = torch.randn(*batch, vocab, generator=g, dtype=torch.float64) * scale
    mask = torch.rand(*batch, generator=g) < 0.7
    temperature = float(torch.empty(1).uniform_(0.3, 3.0, generator=g))
    return s.to(dtype), t.to(dtype), mask, temperature


# ------------------------------------------------------------------------------------------------
# values against the reference
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(FUNCS))
@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_matches_float64_reference(name, seed, reduction):
    fn, kw = FUNCS[name]
    s, t, mask, temperature = _random_case(seed)
    got = fn(s, t, mask, temperature=temperature, reduction=reduction, **kw)
    want = reference(name, s, t, mask, temperature, reduction, **kw)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.double().numpy(), want, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("name", list(FUNCS))
def test_float64_inputs_are_computed_in_float64(name):
    fn, kw = FUNCS[name]
    s, t, mask, temperature = _random_case(123, dtype=torch.float64)
    got = fn(s, t, mask, temperature=temperature, **kw)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(
        got.item(), reference(name, s, t, mask, temperature, **kw), rtol=1e-12, atol=1e-14
    )


@pytest.mark.parametrize("name", list(FUNCS))
def test_no_mask_equals_all_true_mask(name):
    fn, kw = FUNCS[name]
    s, t, _, _ = _random_case(7)
    full = torch.ones(s.shape[:-1], dtype=torch.bool)
    assert torch.allclose(fn(s, t, **kw), fn(s, t, full, **kw))
    assert torch.allclose(fn(s, t, reduction="none", **kw), fn(s, t, full, reduction="none", **kw))


def test_integer_mask_is_accepted_as_bool():
    s, t, mask, _ = _random_case(3)
    assert torch.equal(
        reverse_kl(s, t, mask.long(), reduction="none"), reverse_kl(s, t, mask, reduction="none")
    )


def test_masked_positions_are_zero_in_none_reduction_and_ignored_by_mean():
    s, t, mask, _ = _random_case(5)
    mask[..., 0] = False
    per_pos = forward_kl(s, t, mask, reduction="none")
    assert torch.all(per_pos[~mask] == 0)
    assert torch.allclose(forward_kl(s, t, mask), per_pos.sum() / mask.sum())
    # garbage (NaN) at a masked position must not leak into the result
    s2 = s.clone()
    s2[~mask] = float("nan")
    assert torch.allclose(forward_kl(s2, t, mask), forward_kl(s, t, mask))


def test_temperature_divides_the_logits():
    s, t, mask, _ = _random_case(11)
    assert torch.allclose(
        reverse_kl(s, t, mask, temperature=2.5), reverse_kl(s / 2.5, t / 2.5, mask), atol=1e-6
    )


def test_docstring_numbers_by_hand():
    s, t = torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, math.log(3.0)]])
    assert forward_kl(s, t).item() == pytest.approx(0.25 * math.log(0.5) + 0.75 * math.log(1.5), rel=1e-6)
    assert reverse_kl(s, t).item() == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(0.5 / 0.75), rel=1e-6)


# ------------------------------------------------------------------------------------------------
# the β convention and its limits — the most asked question
# ------------------------------------------------------------------------------------------------


def test_beta_end_points_are_exactly_forward_and_reverse_kl():
    s, t, mask, temperature = _random_case(21)
    assert torch.equal(
        generalized_jsd(s, t, mask, beta=0.0, temperature=temperature),
        forward_kl(s, t, mask, temperature=temperature),
    )
    assert torch.equal(
        generalized_jsd(s, t, mask, beta=1.0, temperature=temperature),
        reverse_kl(s, t, mask, temperature=temperature),
    )


@pytest.mark.parametrize("seed", range(4))
def test_jsd_over_beta_tends_to_forward_kl_and_over_one_minus_beta_to_reverse_kl(seed):
    s, t, mask, _ = _random_case(seed, dtype=torch.float64)
    fkl = forward_kl(s, t, mask).item()
    rkl = reverse_kl(s, t, mask).item()
    errors_f, errors_r = [], []
    for eps in (1e-2, 1e-3, 1e-4):
        errors_f.append(abs(generalized_jsd(s, t, mask, beta=eps).item() / eps - fkl))
        errors_r.append(abs(generalized_jsd(s, t, mask, beta=1 - eps).item() / eps - rkl))
    # the error shrinks linearly with eps (÷10 per decade) and is small relative to the limit
    for errors, limit in ((errors_f, fkl), (errors_r, rkl)):
        assert errors[1] < 0.2 * errors[0] and errors[2] < 0.2 * errors[1]
        assert errors[2] < 1e-2 * limit


def test_interior_jsd_tends_to_zero_at_both_ends():
    s, t, mask, _ = _random_case(2, dtype=torch.float64)
    assert generalized_jsd(s, t, mask, beta=1e-6).item() < 1e-4
    assert generalized_jsd(s, t, mask, beta=1 - 1e-6).item() < 1e-4


def test_jsd_half_is_bounded_by_log_two():
    s = torch.tensor([[30.0, -30.0, -30.0]])
    t = torch.tensor([[-30.0, -30.0, 30.0]])
    assert generalized_jsd(s, t, beta=0.5).item() == pytest.approx(math.log(2), rel=1e-5)


def test_skew_alpha_end_points():
    s, t, mask, _ = _random_case(9)
    assert torch.equal(skew_forward_kl(s, t, mask, alpha=0.0), forward_kl(s, t, mask))
    assert torch.equal(skew_reverse_kl(s, t, mask, alpha=0.0), reverse_kl(s, t, mask))
    assert skew_forward_kl(s, t, mask, alpha=1.0).item() == 0.0
    assert skew_reverse_kl(s, t, mask, alpha=1.0).item() == 0.0


def test_skew_kl_is_bounded_by_minus_log_alpha():
    s = torch.tensor([[50.0, -50.0]])
    t = torch.tensor([[-50.0, 50.0]])
    assert forward_kl(s, t).item() > 50  # unbounded without skew
    assert skew_forward_kl(s, t, alpha=0.1).item() <= -math.log(0.1) + 1e-5
    assert skew_reverse_kl(s, t, alpha=0.1).item() <= -math.log(0.1) + 1e-5


# ------------------------------------------------------------------------------------------------
# gradients
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(FUNCS))
@pytest.mark.parametrize("wrt", ["student", "teacher"])
def test_gradcheck_float64(name, wrt):
    fn, kw = FUNCS[name]
    s, t, mask, temperature = _random_case(31, dtype=torch.float64)
    s.requires_grad_(wrt == "student")
    t.requires_grad_(wrt == "teacher")
    f = (
        (lambda x: fn(x, t, mask, temperature=temperature, **kw))
        if wrt == "student"
        else (lambda x: fn(s, x, mask, temperature=temperature, **kw))
    )
    assert torch.autograd.gradcheck(f, (s if wrt == "student" else t,), eps=1e-6, atol=1e-5)


def test_reverse_kl_gradient_matches_closed_form():
    # d/dz_i KL(p_S ‖ p_T) = p_S,i (log p_S,i − log p_T,i − KL)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, dtype=torch.float64, generator=g, requires_grad=True)
    t = torch.randn(6, dtype=torch.float64, generator=g)
    kl = reverse_kl(z, t)
    (grad,) = torch.autograd.grad(kl, z)
    p, lp, lq = torch.softmax(z, -1), torch.log_softmax(z, -1), torch.log_softmax(t, -1)
    assert torch.allclose(grad, p * (lp - lq - kl.detach()), atol=1e-12)


@pytest.mark.parametrize("name", list(FUNCS))
def test_all_masked_batch_gives_zero_loss_and_zero_gradient(name):
    fn, kw = FUNCS[name]
    s = torch.randn(2, 3, 5, requires_grad=True)
    t = torch.randn(2, 3, 5)
    mask = torch.zeros(2, 3, dtype=torch.bool)
    for reduction in ("mean", "sum"):
        loss = fn(s, t, mask, reduction=reduction, **kw)
        assert loss.item() == 0.0 and not torch.isnan(loss)
        (grad,) = torch.autograd.grad(loss, s)
        assert torch.equal(grad, torch.zeros_like(s))


# ------------------------------------------------------------------------------------------------
# properties (hypothesis)
# ------------------------------------------------------------------------------------------------

_vocab = st.integers(2, 12)


@st.composite
def _pairs(draw):
    v = draw(_vocab)
    n = draw(st.integers(1, 4))
    floats = st.floats(-30, 30, allow_nan=False, allow_infinity=False, width=32)
    s = torch.tensor(draw(st.lists(floats, min_size=n * v, max_size=n * v))).reshape(n, v)
    t = torch.tensor(draw(st.lists(floats, min_size=n * v, max_size=n * v))).reshape(n, v)
    return s, t


@settings(max_examples=150, deadline=None)
@given(_pairs(), st.sampled_from(list(FUNCS)), st.floats(0.0, 1.0))
def test_properties_nonnegative_and_zero_on_equal(pair, name, weight):
    s, t = pair
    fn, kw = FUNCS[name]
    kw = {k: weight for k in kw}  # random beta / alpha in [0, 1]
    values = fn(s, t, reduction="none", **kw)
    assert torch.isfinite(values).all()
    assert (values >= -1e-5).all()
    same = fn(s, s.clone(), reduction="none", **kw)
    assert torch.allclose(same, torch.zeros_like(same), atol=1e-5)


@settings(max_examples=100, deadline=None)
@given(_pairs())
def test_jsd_half_and_tvd_are_symmetric(pair):
    s, t = pair
    assert torch.allclose(
        generalized_jsd(s, t, beta=0.5, reduction="none"),
        generalized_jsd(t, s, beta=0.5, reduction="none"),
        atol=1e-5,
    )
    assert torch.allclose(
        total_variation(s, t, reduction="none"), total_variation(t, s, reduction="none"), atol=1e-6
    )
    assert (total_variation(s, t, reduction="none") <= 1 + 1e-6).all()


@settings(max_examples=100, deadline=None)
@given(_pairs(), st.floats(0.01, 0.99))
def test_generalized_jsd_swapping_models_mirrors_beta(pair, beta):
    # JSD(β; p_S, p_T) == JSD(1 − β; p_T, p_S): the same formula with the roles exchanged
    s, t = pair
    a = generalized_jsd(s, t, beta=beta, reduction="none")
    b = generalized_jsd(t, s, beta=1 - beta, reduction="none")
    assert torch.allclose(a, b, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# numerics: masked vocabulary, low precision, extreme values
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(FUNCS))
def test_masked_vocabulary_entries_give_finite_values_and_gradients(name):
    fn, kw = FUNCS[name]
    s = torch.randn(3, 4, 8)
    t = torch.randn(3, 4, 8)
    s[..., 0] = float("-inf")  # both models forbid token 0
    t[..., 0] = float("-inf")
    t[..., 1] = float("-inf")  # only the teacher forbids token 1
    s[0, 0, 2] = float("-inf")  # only the student forbids token 2 at one position
    s.requires_grad_(True)
    loss = fn(s, t, **kw)
    assert torch.isfinite(loss)
    (grad,) = torch.autograd.grad(loss, s)
    assert torch.isfinite(grad).all()


def test_shared_masked_entries_change_nothing():
    s, t = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    s_inf = torch.cat([s, torch.full((4, 2), float("-inf"), dtype=torch.float64)], -1)
    t_inf = torch.cat([t, torch.full((4, 2), float("-inf"), dtype=torch.float64)], -1)
    for fn, kw in FUNCS.values():
        assert torch.allclose(fn(s_inf, t_inf, **kw), fn(s, t, **kw), atol=1e-12)


def test_forbidden_token_with_student_mass_is_large_not_infinite():
    s = torch.tensor([[0.0, 0.0]])
    t = torch.tensor([[0.0, float("-inf")]])
    value = reverse_kl(s, t).item()
    assert math.isfinite(value) and value > 100  # mathematically +inf


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", list(FUNCS))
def test_low_precision_inputs_are_upcast(name, dtype):
    fn, kw = FUNCS[name]
    s, t, mask, temperature = _random_case(41)
    s16, t16 = s.to(dtype), t.to(dtype)
    got = fn(s16, t16, mask, temperature=temperature, **kw)
    assert got.dtype == torch.float32 and torch.isfinite(got)
    # the same as float32 math on the rounded inputs: nothing is computed in 16 bits
    want = fn(s16.float(), t16.float(), mask, temperature=temperature, **kw)
    assert torch.equal(got, want)


def test_extreme_logits_stay_finite():
    s = torch.tensor([[1e4, -1e4, 0.0]], requires_grad=True)
    t = torch.tensor([[-1e4, 1e4, 0.0]])
    for fn, kw in FUNCS.values():
        v = fn(s, t, **kw)
        (g,) = torch.autograd.grad(v, s)
        assert torch.isfinite(v) and torch.isfinite(g).all()


# ------------------------------------------------------------------------------------------------
# bad inputs: clear errors
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(FUNCS))
def test_vocab_mismatch_names_both_sizes(name):
    fn, kw = FUNCS[name]
    with pytest.raises(ValueError, match=r"V=5.*V=7"):
        fn(torch.randn(2, 5), torch.randn(2, 7), **kw)


def test_shape_mismatch_and_wrong_mask_shape():
    with pytest.raises(ValueError, match="same shape"):
        forward_kl(torch.randn(2, 3, 5), torch.randn(2, 4, 5))
    with pytest.raises(ValueError, match=r"mask has shape \(2, 4\)"):
        forward_kl(torch.randn(2, 3, 5), torch.randn(2, 3, 5), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask must be bool"):
        forward_kl(torch.randn(2, 5), torch.randn(2, 5), torch.ones(2))


@pytest.mark.parametrize("beta", [-0.1, 1.5, float("nan")])
def test_beta_outside_unit_interval(beta):
    with pytest.raises(ValueError, match="beta must be in \\[0, 1\\]"):
        generalized_jsd(torch.randn(2, 5), torch.randn(2, 5), beta=beta)


@pytest.mark.parametrize("alpha", [-1.0, 2.0])
def test_alpha_outside_unit_interval(alpha):
    with pytest.raises(ValueError, match="alpha must be in"):
        skew_forward_kl(torch.randn(2, 5), torch.randn(2, 5), alpha=alpha)


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("inf"), float("nan")])
def test_bad_temperature(temperature):
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        reverse_kl(torch.randn(2, 5), torch.randn(2, 5), temperature=temperature)


def test_bad_reduction_and_types():
    with pytest.raises(ValueError, match="reduction must be one of"):
        reverse_kl(torch.randn(2, 5), torch.randn(2, 5), reduction="batchmean")
    with pytest.raises(TypeError, match="student_logits must be a torch.Tensor"):
        reverse_kl([[0.0, 1.0]], torch.randn(1, 2))
    with pytest.raises(ValueError, match="floating tensor"):
        reverse_kl(torch.ones(2, 5, dtype=torch.long), torch.randn(2, 5))


def test_nan_logits_at_counted_positions_raise_a_clear_error():
    s = torch.randn(2, 5)
    s[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        reverse_kl(s, torch.randn(2, 5))
    all_masked_row = torch.full((1, 5), float("-inf"))
    with pytest.raises(ValueError, match="every logit at -inf"):
        forward_kl(all_masked_row, torch.randn(1, 5))


# ------------------------------------------------------------------------------------------------
# single-sample estimators k1, k2, k3
# ------------------------------------------------------------------------------------------------


def test_k_estimators_by_hand():
    lp = torch.tensor([-0.1, -2.0, -0.7], dtype=torch.float64)
    lq = torch.tensor([-0.5, -1.0, -0.7], dtype=torch.float64)
    log_r = (lq - lp).numpy()
    np.testing.assert_allclose(kl_k1(lp, lq, reduction="none").numpy(), -log_r)
    np.testing.assert_allclose(kl_k2(lp, lq, reduction="none").numpy(), 0.5 * log_r**2)
    np.testing.assert_allclose(kl_k3(lp, lq, reduction="none").numpy(), np.exp(log_r) - 1 - log_r)


def test_k1_and_k3_are_unbiased_and_k2_is_biased_for_a_categorical():
    g = torch.Generator().manual_seed(0)
    p_logits = torch.randn(10, dtype=torch.float64, generator=g)
    q_logits = torch.randn(10, dtype=torch.float64, generator=g)
    logp, logq = torch.log_softmax(p_logits, -1), torch.log_softmax(q_logits, -1)
    true_kl = reverse_kl(p_logits, q_logits).item()  # KL(p ‖ q)
    # exact expectations over x ~ p (no sampling noise): Σ_x p(x) k(x)
    p = logp.exp()
    exp_k1 = (p * kl_k1(logp, logq, reduction="none")).sum().item()
    exp_k2 = (p * kl_k2(logp, logq, reduction="none")).sum().item()
    exp_k3 = (p * kl_k3(logp, logq, reduction="none")).sum().item()
    assert exp_k1 == pytest.approx(true_kl, rel=1e-10)
    assert exp_k3 == pytest.approx(true_kl, rel=1e-10)
    assert abs(exp_k2 - true_kl) > 1e-3  # k2 is biased for distributions this far apart
    # and by sampling: the Monte-Carlo mean of k3 is within 5 standard errors of the truth
    x = torch.multinomial(p, 200_000, replacement=True, generator=g)
    k3 = kl_k3(logp[x], logq[x], reduction="none")
    se = k3.std().item() / math.sqrt(x.numel())
    assert abs(k3.mean().item() - true_kl) < 5 * se
    # k3 has lower variance than k1 here
    assert k3.var() < kl_k1(logp[x], logq[x], reduction="none").var()


def test_k2_and_k3_are_nonnegative_and_estimators_validate_input():
    lp, lq = torch.randn(50), torch.randn(50)
    assert (kl_k2(lp, lq, reduction="none") >= 0).all()
    assert (kl_k3(lp, lq, reduction="none") >= 0).all()
    mask = torch.rand(50) < 0.5
    assert torch.allclose(kl_k1(lp, lq, mask), (lp - lq)[mask].mean())
    assert kl_k1(lp, lq, torch.zeros(50, dtype=torch.bool)).item() == 0.0
    with pytest.raises(ValueError, match="same shape"):
        kl_k1(torch.randn(3), torch.randn(4))
    with pytest.raises(ValueError, match="mask has shape"):
        kl_k3(lp, lq, torch.ones(49, dtype=torch.bool))


def test_token_log_probs_matches_log_softmax_gather():
    logits = torch.randn(2, 3, 7)
    tokens = torch.randint(0, 7, (2, 3))
    want = torch.log_softmax(logits / 0.7, -1).gather(-1, tokens[..., None]).squeeze(-1)
    assert torch.allclose(token_log_probs(logits, tokens, temperature=0.7), want, atol=1e-6)
    with pytest.raises(ValueError, match="must match the batch shape"):
        token_log_probs(logits, tokens[:, :2])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_logsumexp_rows_chunked_equals_float64_reference(dtype):
    from odistill.core.tensor_ops import logsumexp_rows

    g = torch.Generator().manual_seed(3)
    logits = (torch.randn(5, 3, 2**17, generator=g) * 4).to(dtype)  # 2 rows per chunk: 8 chunks
    ref = torch.logsumexp(logits.double() / 0.7, dim=-1)
    with torch.no_grad():
        got = logsumexp_rows(logits, temperature=0.7)
    assert got.dtype == torch.float32 and got.shape == (5, 3)
    assert torch.allclose(got.double(), ref, rtol=1e-6)
    assert logsumexp_rows(torch.zeros(0, 4)).shape == (0,)
    # with a gradient wanted it is one differentiable call, the same numbers
    x = logits[:2].float().requires_grad_(True)
    out = logsumexp_rows(x, temperature=0.7)
    out.sum().backward()
    assert torch.allclose(out.double(), ref[:2], rtol=1e-6)
    assert torch.allclose(x.grad.sum(-1), torch.full((2, 3), 1 / 0.7), atol=1e-4)  # softmax rows sum to 1


def test_token_log_probs_without_grad_equals_with_grad():
    logits = torch.randn(3, 40, 9000) * 3  # several chunks without a gradient
    tokens = torch.randint(0, 9000, (3, 40))
    with torch.no_grad():
        fast = token_log_probs(logits, tokens)
    slow = token_log_probs(logits.requires_grad_(True), tokens)
    assert torch.allclose(fast, slow.detach(), atol=1e-5)


def test_public_api_exports():
    for name in (
        "forward_kl",
        "reverse_kl",
        "generalized_jsd",
        "skew_forward_kl",
        "skew_reverse_kl",
        "total_variation",
        "kl_k1",
        "kl_k2",
        "kl_k3",
    ):
        assert callable(getattr(odistill, name)) and name in odistill.__all__
