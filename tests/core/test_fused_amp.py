"""The fused LM-head loss under autocast (bf16 / fp16 hidden states, fp32 LM head), as in Liger-Kernel's
``test_amp`` cases: both passes run, follow the plain path's dtypes, and match the float32 result."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_llama

from odistill import DistillConfig, distill
from odistill.core.divergences import get_divergence
from odistill.core.fused import fused_linear_divergence

V, H_S, H_T = 64, 16, 24


def _inputs(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    hs = torch.randn(3, 7, H_S, generator=g).to(dtype).requires_grad_(True)
    ws = (torch.randn(V, H_S, generator=g) * 0.5).requires_grad_(True)
    bs = (torch.randn(V, generator=g) * 0.1).requires_grad_(True)
    ht = torch.randn(3, 7, H_T, generator=g).to(dtype)
    wt = torch.randn(V, H_T, generator=g) * 0.5
    mask = torch.rand(3, 7, generator=g) > 0.2
    return hs, ws, bs, ht, wt, mask


def _plain(kind, hs, ws, bs, ht, wt, mask):
    spec = get_divergence(kind)
    s = torch.nn.functional.linear(hs, ws, bs)
    t = torch.nn.functional.linear(ht, wt)
    return spec.function(s, t, mask) if spec.param is None else spec.function(s, t, mask, **{spec.param: 0.5})


def _grads(loss, xs):
    return torch.autograd.grad(loss, xs)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("kind", ["reverse_kl", "forward_kl", "jsd"])
def test_fused_loss_under_autocast_matches_float32_and_the_plain_path_dtypes(dtype, kind):
    hs, ws, bs, ht, wt, mask = _inputs(dtype)
    weight = None if get_divergence(kind).param is None else 0.5
    with torch.autocast("cpu", dtype=dtype):
        fused = fused_linear_divergence(
            kind, hs, ws, ht, wt, mask, student_bias=bs, weight=weight, chunk_size=5
        )
        f_grads = _grads(fused, (hs, ws, bs))
        plain = _plain(kind, hs, ws, bs, ht, wt, mask)
        p_grads = _grads(plain, (hs, ws, bs))
    # the dtypes of the plain autocast path: each gradient in its input's dtype
    assert fused.dtype == plain.dtype == torch.float32
    assert [g.dtype for g in f_grads] == [g.dtype for g in p_grads] == [dtype, torch.float32, torch.float32]
    # the numbers of the float32 computation, to the precision of the low-precision inputs
    ref_inputs = [x.detach().float().requires_grad_(True) for x in (hs, ws, bs)]
    ref = _plain(kind, ref_inputs[0], ref_inputs[1], ref_inputs[2], ht.float(), wt, mask)
    r_grads = _grads(ref, ref_inputs)
    tol = 3e-2 if dtype == torch.bfloat16 else 5e-3
    assert fused.item() == pytest.approx(ref.item(), rel=tol)
    for got, want in zip(f_grads, r_grads, strict=True):
        err = float((got.float() - want).norm() / want.norm())
        assert err < tol, f"relative gradient error {err:.3g}"


def test_distill_with_bf16_mixed_precision_and_the_fused_lm_head_trains_like_the_plain_loss(char_tokenizer):
    """Through the loop (accelerate's CPU autocast): it used to crash in the weight gradient's addmm_."""
    data = [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a in range(10) for b in range(10)]
    v = len(char_tokenizer)
    runs = {}
    for fused in (False, True):
        cfg = DistillConfig(
            lmbda=0.0,
            divergence="reverse_kl",
            fused_lm_head=fused,
            mixed_precision="bf16",
            steps=3,
            batch_size=8,
            lr=1e-3,
            progress=False,
            device="cpu",
        )
        student, teacher = make_tiny_llama(v, seed=0), make_tiny_llama(v, seed=1, hidden=48)
        runs[fused] = distill(student, teacher, char_tokenizer, data, cfg).history
    for plain, fused in zip(runs[False], runs[True], strict=True):
        assert not fused["skipped"]
        assert fused["loss"] == pytest.approx(plain["loss"], rel=3e-2)
        assert fused["grad_norm"] == pytest.approx(plain["grad_norm"], rel=5e-2)
