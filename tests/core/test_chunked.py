"""The chunked divergences (odistill.core.chunked) against the plain autograd implementations.

Small vocabularies and chunk sizes of 1–5 rows, so every chunk boundary, gathered leftover and masked
row is exercised; float64 so that "the same numbers" means agreement to ~1e-12.
"""

from __future__ import annotations

import itertools

import pytest
import torch

import odistill.core.chunked as chunked
from odistill import (
    NonFiniteLossError,
    forward_kl,
    generalized_jsd,
    reverse_kl,
    skew_forward_kl,
    skew_reverse_kl,
    total_variation,
)
from odistill.core.divergences import DIVERGENCES, get_divergence
from odistill.core.fused import fused_linear_divergence

FUNCS = {
    "forward_kl": (forward_kl, {}),
    "reverse_kl": (reverse_kl, {}),
    "jsd_0": (generalized_jsd, {"beta": 0.0}),
    "jsd_0.3": (generalized_jsd, {"beta": 0.3}),
    "jsd_0.5": (generalized_jsd, {"beta": 0.5}),
    "jsd_0.9": (generalized_jsd, {"beta": 0.9}),
    "jsd_1": (generalized_jsd, {"beta": 1.0}),
    "skew_forward_kl": (skew_forward_kl, {"alpha": 0.1}),
    "skew_reverse_kl": (skew_reverse_kl, {"alpha": 0.25}),
    "total_variation": (total_variation, {}),
}


def _case(seed, shape=(3, 7, 11), dtype=torch.float64, with_inf=False, mask_p=0.6):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(*shape, generator=g, dtype=torch.float64) * 2.5
    t = torch.randn(*shape, generator=g, dtype=torch.float64) * 2.5
    if with_inf:
        s[..., 0] = t[..., 0] = float("-inf")  # both forbid token 0
        t[..., 1] = float("-inf")  # only the teacher forbids token 1
        s[0, 0, 2] = float("-inf")  # only the student forbids token 2, at one position
        s[1, 2, 3] = float("-inf")
    mask = torch.rand(shape[:-1], generator=g) < mask_p
    return s.to(dtype), t.to(dtype), mask


def _value_and_grads(fn, kw, s, t, mask, chunk_size, reduction="mean", temperature=1.0, seed=1):
    s = s.detach().clone().requires_grad_(True)
    t = t.detach().clone().requires_grad_(True)
    value = fn(s, t, mask, temperature=temperature, reduction=reduction, chunk_size=chunk_size, **kw)
    weights = torch.randn(value.shape, dtype=value.dtype, generator=torch.Generator().manual_seed(seed))
    grad_s, grad_t = torch.autograd.grad(value, (s, t), weights)
    return value, grad_s, grad_t


@pytest.mark.parametrize("name", list(FUNCS))
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("chunk_size", [1, 3])
def test_values_and_gradients_match_the_plain_path(name, reduction, chunk_size):
    fn, kw = FUNCS[name]
    for seed, with_inf, use_mask in itertools.product(range(2), (False, True), (False, True)):
        s, t, mask = _case(seed, with_inf=with_inf)
        mask = mask if use_mask else None
        want = _value_and_grads(fn, kw, s, t, mask, None, reduction, temperature=0.7)
        got = _value_and_grads(fn, kw, s, t, mask, chunk_size, reduction, temperature=0.7)
        for w, g in zip(want, got, strict=True):
            assert g.dtype == w.dtype and g.shape == w.shape
            torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", list(FUNCS))
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradcheck_float64_student_and_teacher(name, reduction):
    fn, kw = FUNCS[name]
    s, t, mask = _case(5, shape=(2, 3, 5))
    s.requires_grad_(True)
    t.requires_grad_(True)
    f = lambda a, b: fn(a, b, mask, temperature=1.3, reduction=reduction, chunk_size=2, **kw)
    assert torch.autograd.gradcheck(f, (s, t), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("temperature", [0.3, 1.0, 2.5])
@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.99, 1.0])
def test_jsd_temperatures_and_betas_random_masks(temperature, beta):
    for seed in range(3):
        s, t, mask = _case(100 + seed, shape=(4, 9, 23), mask_p=0.5)
        want = _value_and_grads(generalized_jsd, {"beta": beta}, s, t, mask, None, temperature=temperature)
        got = _value_and_grads(generalized_jsd, {"beta": beta}, s, t, mask, 4, temperature=temperature)
        for w, g in zip(want, got, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


def test_float32_agrees_with_a_float64_reference():
    s, t, mask = _case(7, shape=(4, 16, 1000), dtype=torch.float32)
    for beta in (0.0, 0.5, 1.0):
        ref = _value_and_grads(generalized_jsd, {"beta": beta}, s.double(), t.double(), mask, None)
        got = _value_and_grads(generalized_jsd, {"beta": beta}, s, t, mask, 5)
        assert got[0].dtype == torch.float32
        for r, g in zip(ref[:2], got[:2], strict=True):
            assert (g.double() - r).abs().max() <= 1e-5 * r.abs().max()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_are_upcast_per_chunk(dtype):
    s, t, mask = _case(9, shape=(3, 5, 40), dtype=dtype)
    s.requires_grad_(True)
    for fn, kw in FUNCS.values():
        got = fn(s, t, mask, chunk_size=2, **kw)
        want = fn(s.detach().float(), t.float(), mask, chunk_size=None, **kw)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
        (grad,) = torch.autograd.grad(got, s)
        assert grad.dtype == dtype and torch.isfinite(grad.float()).all()


def test_non_contiguous_logits_are_read_in_place():
    # logits[:, :-1] of a (B, T + 1, V) tensor, as completion_logits returns them
    g = torch.Generator().manual_seed(3)
    base = torch.randn(4, 9, 13, dtype=torch.float64, generator=g, requires_grad=True)
    teacher = torch.randn(4, 9, 13, dtype=torch.float64, generator=g)
    mask = torch.rand(4, 8, generator=g) < 0.7
    results = []
    for chunk_size in (None, 1, 3, 100):
        value = reverse_kl(base[:, :-1], teacher[:, 1:], mask, reduction="none", chunk_size=chunk_size)
        (grad,) = torch.autograd.grad(value.sum(), base)
        results.append((value, grad))
    for value, grad in results[1:]:
        torch.testing.assert_close(value, results[0][0], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(grad, results[0][1], rtol=1e-12, atol=1e-14)
    permuted = torch.randn(5, 3, 2, 7, dtype=torch.float64).permute(1, 0, 2, 3)  # no row view at all
    other = torch.randn(3, 5, 2, 7, dtype=torch.float64)
    m = torch.rand(3, 5, 2) < 0.5
    torch.testing.assert_close(
        forward_kl(permuted, other, m, chunk_size=2, reduction="none"),
        forward_kl(permuted, other, m, chunk_size=None, reduction="none"),
    )


@pytest.mark.parametrize("name", list(FUNCS))
def test_all_masked_gives_zero_and_zero_gradients(name):
    fn, kw = FUNCS[name]
    s = torch.randn(2, 3, 5, requires_grad=True)
    t = torch.randn(2, 3, 5)
    mask = torch.zeros(2, 3, dtype=torch.bool)
    for reduction in ("mean", "sum"):
        loss = fn(s, t, mask, reduction=reduction, chunk_size=2, **kw)
        assert loss.item() == 0.0
        (grad,) = torch.autograd.grad(loss, s)
        assert torch.equal(grad, torch.zeros_like(s))
    assert torch.equal(fn(s, t, mask, reduction="none", chunk_size=2, **kw), torch.zeros(2, 3))


def test_masked_rows_are_never_computed_and_get_zero_gradient():
    s, t, mask = _case(11, dtype=torch.float32)
    s[~mask] = float("nan")  # garbage at masked positions must not leak
    s.requires_grad_(True)
    loss = reverse_kl(s, t, mask, chunk_size=3)
    (grad,) = torch.autograd.grad(loss, s)
    assert torch.isfinite(loss)
    assert torch.equal(grad[~mask], torch.zeros_like(grad[~mask]))


def test_nan_and_all_inf_rows_raise():
    s = torch.randn(2, 5)
    s[1, 2] = float("nan")
    with pytest.raises(NonFiniteLossError, match="NaN"):
        reverse_kl(s, torch.randn(2, 5), chunk_size=1)
    with pytest.raises(NonFiniteLossError, match="every logit at -inf"):
        forward_kl(torch.full((1, 5), float("-inf")), torch.randn(1, 5), chunk_size=1)


def test_second_backward_through_a_retained_graph_recomputes():
    s, t, mask = _case(13)
    s.requires_grad_(True)
    loss = generalized_jsd(s, t, mask, beta=0.4, chunk_size=2)
    (first,) = torch.autograd.grad(loss, s, retain_graph=True)
    (second,) = torch.autograd.grad(loss, s, torch.tensor(3.0, dtype=torch.float64))
    torch.testing.assert_close(second, 3 * first)
    with pytest.raises(RuntimeError):  # the graph was freed: autograd's usual error
        torch.autograd.grad(loss, s)


def test_inference_mode_teacher_and_no_grad():
    with torch.inference_mode():
        teacher = torch.randn(3, 4, 6)
    student = torch.randn(3, 4, 6, requires_grad=True)
    reverse_kl(student, teacher, chunk_size=2).backward()
    want = torch.autograd.grad(reverse_kl(student, teacher.clone(), chunk_size=None), student)[0]
    torch.testing.assert_close(student.grad, want)
    with torch.no_grad():
        assert not reverse_kl(student, teacher, chunk_size=2).requires_grad
    with torch.inference_mode():
        assert torch.isfinite(reverse_kl(student, teacher, chunk_size=2))


def test_parallel_and_serial_chunks_agree(monkeypatch):
    s, t, mask = _case(17, shape=(4, 10, 50), dtype=torch.float32)
    threads = torch.get_num_threads()
    runs = []
    for parallel in (True, False):
        monkeypatch.setattr(chunked, "PARALLEL_CHUNKS", parallel)
        monkeypatch.setattr(chunked, "PARALLEL_MIN_ELEMENTS", 0)
        runs.append(_value_and_grads(generalized_jsd, {"beta": 0.5}, s, t, mask, 3))
    assert torch.get_num_threads() == threads  # the worker pool restores the thread count
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


def test_auto_dispatch_and_chunk_size_validation(monkeypatch):
    calls = []
    real = chunked.chunked_divergence
    monkeypatch.setattr(
        chunked, "chunked_divergence", lambda *a, **k: calls.append(k["chunk_size"]) or real(*a, **k)
    )
    small = torch.randn(2, 3, 5)
    reverse_kl(small, small)  # "auto": tiny inputs take the plain path
    assert calls == []
    monkeypatch.setattr(chunked, "AUTO_MIN_ELEMENTS", 10)
    reverse_kl(small, small)  # "auto" above the threshold: chunked, automatic rows
    reverse_kl(small, small, chunk_size=4)
    assert calls == [None, 4]
    assert chunked.default_chunk_rows(32000) >= 1 and chunked.default_chunk_rows(10**9) == 1
    for bad in (0, -1, 2.5, "big", True):
        with pytest.raises(ValueError, match="chunk_size"):
            reverse_kl(small, small, chunk_size=bad)


def test_validation_errors_are_the_plain_paths():
    with pytest.raises(ValueError, match=r"V=5.*V=7"):
        reverse_kl(torch.randn(2, 5), torch.randn(2, 7), chunk_size=1)
    with pytest.raises(ValueError, match=r"mask has shape"):
        forward_kl(
            torch.randn(2, 3, 5), torch.randn(2, 3, 5), torch.ones(2, 4, dtype=torch.bool), chunk_size=1
        )
    with pytest.raises(ValueError, match="temperature"):
        forward_kl(torch.randn(2, 5), torch.randn(2, 5), temperature=0.0, chunk_size=1)
    with pytest.raises(TypeError, match="kernel must be a chunk kernel"):
        chunked.chunked_divergence("nope", torch.randn(2, 5), torch.randn(2, 5))
    with pytest.raises(ValueError, match="unknown divergence 'nope'; registered divergences"):
        get_divergence("nope")


def test_integer_mask_and_skew_alpha_one():
    s, t, mask = _case(19)
    torch.testing.assert_close(
        reverse_kl(s, t, mask.long(), chunk_size=2), reverse_kl(s, t, mask, chunk_size=None)
    )
    assert skew_forward_kl(s, t, alpha=1.0, chunk_size=2).item() == 0.0  # identically 0: plain path


# ------------------------------------------------------------------------------------------------
# fused LM head + divergence (never materialises the logits)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, fn, kw",
    [
        ("reverse_kl", reverse_kl, {}),
        ("forward_kl", forward_kl, {}),
        ("jsd", generalized_jsd, {"beta": 0.4}),
        ("skew_reverse_kl", skew_reverse_kl, {"alpha": 0.2}),
        ("total_variation", total_variation, {}),
    ],
)
def test_fused_linear_matches_logits_then_divergence(kind, fn, kw):
    g = torch.Generator().manual_seed(23)
    hs = torch.randn(3, 5, 8, dtype=torch.float64, generator=g, requires_grad=True)
    ws = torch.randn(40, 8, dtype=torch.float64, generator=g, requires_grad=True)
    bs = torch.randn(40, dtype=torch.float64, generator=g, requires_grad=True)
    ht = torch.randn(3, 5, 6, dtype=torch.float64, generator=g, requires_grad=True)
    wt = torch.randn(40, 6, dtype=torch.float64, generator=g, requires_grad=True)
    mask = torch.rand(3, 5, generator=g) < 0.6
    weight = kw.get("beta", kw.get("alpha"))
    got = fused_linear_divergence(
        kind, hs, ws, ht, wt, mask, student_bias=bs, weight=weight, temperature=1.3, chunk_size=2
    )
    want = fn(torch.nn.functional.linear(hs, ws, bs), ht @ wt.T, mask, temperature=1.3, chunk_size=None, **kw)
    inputs = (hs, ws, bs, ht, wt)
    for a, b in zip(torch.autograd.grad(2 * got, inputs), torch.autograd.grad(2 * want, inputs), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    f = lambda h, w: fused_linear_divergence(
        kind, h, w, ht.detach(), wt.detach(), mask, weight=weight, chunk_size=2
    )
    assert torch.autograd.gradcheck(f, (hs, ws))


def test_fused_linear_none_reduction_and_errors():
    hs, ws, ht, wt = torch.randn(2, 3, 4), torch.randn(10, 4), torch.randn(2, 3, 5), torch.randn(10, 5)
    mask = torch.tensor([[True, False, True], [False, True, True]])
    values = fused_linear_divergence("reverse_kl", hs, ws, ht, wt, mask, reduction="none", chunk_size=2)
    torch.testing.assert_close(
        values, reverse_kl(hs @ ws.T, ht @ wt.T, mask, reduction="none", chunk_size=None)
    )
    with pytest.raises(ValueError, match="reduction='none' has no gradient"):
        fused_linear_divergence("reverse_kl", hs.requires_grad_(), ws, ht, wt, reduction="none")
    with pytest.raises(ValueError, match="vocabulary sizes differ"):
        fused_linear_divergence("reverse_kl", hs, ws, ht, torch.randn(11, 5))


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_every_registered_kernel_matches_its_plain_path(name):
    """A divergence added to the registry is checked here without a new test: chunked and fused vs plain."""
    spec = DIVERGENCES[name]
    kw = {} if spec.param is None else {spec.param: 0.35}
    s, t, mask = _case(29, shape=(3, 7, 13), dtype=torch.float64)
    plain = _value_and_grads(spec.function, kw, s, t, mask, None)
    for a, b in zip(_value_and_grads(spec.function, kw, s, t, mask, 3), plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    hs = torch.randn(3, 7, 5, dtype=torch.float64, requires_grad=True)
    ws = torch.randn(13, 5, dtype=torch.float64, requires_grad=True)
    ht, wt = torch.randn(3, 7, 4, dtype=torch.float64), torch.randn(13, 4, dtype=torch.float64)
    fused = fused_linear_divergence(name, hs, ws, ht, wt, mask, weight=kw.get(spec.param), chunk_size=4)
    torch.testing.assert_close(fused, spec.function(hs @ ws.T, ht @ wt.T, mask, chunk_size=None, **kw))


def test_chunked_kernels_refuse_weights_outside_the_open_interval():
    s, t = torch.randn(3, 5), torch.randn(3, 5)
    for bad in (0.0, 1.0, 1.5, None):
        with pytest.raises(ValueError, match="needs a weight strictly inside \\(0, 1\\)"):
            chunked.chunked_divergence(DIVERGENCES["jsd"].kernel, s, t, weight=bad)
    with pytest.raises(ValueError, match="takes no weight"):
        chunked.chunked_divergence(DIVERGENCES["reverse_kl"].kernel, s, t, weight=0.5)


def test_registry_resolves_end_points_defaults_and_aliases():
    jsd = DIVERGENCES["jsd"]
    assert jsd.resolve(0.0)[0].name == "forward_kl" and jsd.resolve(1.0)[0].name == "reverse_kl"
    assert jsd.resolve() == (jsd, 0.5) and jsd.describe() == "generalized JSD (β=0.5)"
    assert DIVERGENCES["skew_reverse_kl"].resolve(0.0)[0].name == "reverse_kl"
    assert DIVERGENCES["skew_forward_kl"].effective_beta() is None
    assert DIVERGENCES["skew_forward_kl"].effective_beta(0.0) == 0.0
    assert get_divergence("generalized_jsd") is jsd
