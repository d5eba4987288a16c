"""The top-k loss with a tail bucket: k + 1 outcomes (the teacher's k tokens, and "any other token").

References: the k + 1 distributions built by hand in float64 from both models' full softmax, and the
full-vocabulary divergence (equal at k = V, an upper bound below it).
"""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_llama

from odistill import DistillConfig, distill
from odistill.core.divergences import forward_kl, generalized_jsd, reverse_kl, total_variation
from odistill.core.loss import distillation_loss, topk_tail_distributions
from odistill.core.rollouts import rollouts_from_text
from odistill.core.teacher import TeacherScorer, TeacherScores

V = 12


def _logits(seed, shape=(3, 4, V), scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64) * scale


def _topk_scores(teacher_logits, k, *, with_tail=True):
    log_pt = torch.log_softmax(teacher_logits, -1)
    values, ids = log_pt.topk(k, -1)
    tail = log_pt.scatter(-1, ids, float("-inf")).logsumexp(-1) if with_tail else None
    return TeacherScores(
        "topk",
        torch.zeros(teacher_logits.shape[:-1]),
        topk_logprobs=values,
        topk_ids=ids,
        topk_tail_logprob=tail,
    )


def _by_hand(s, t, k):
    """float64: both models' probabilities of the teacher's k tokens and of everything else, (B, T, k + 1)."""
    ps, pt = torch.softmax(s, -1), torch.softmax(t, -1)
    ids = pt.topk(k, -1).indices
    # the tail is the sum of the other tokens' probabilities (exactly 0 at k = V)
    return tuple(
        torch.cat([p.gather(-1, ids), p.scatter(-1, ids, 0.0).sum(-1, keepdim=True)], -1) for p in (ps, pt)
    )


def _kl(p, q):
    return torch.where(p > 0, p * (p.log() - q.log()), torch.zeros_like(p)).sum(-1)


REFERENCES = {
    "reverse_kl": lambda ps, pt: _kl(ps, pt),
    "forward_kl": lambda ps, pt: _kl(pt, ps),
    "jsd": lambda ps, pt: 0.5 * _kl(pt, 0.5 * ps + 0.5 * pt) + 0.5 * _kl(ps, 0.5 * ps + 0.5 * pt),
    "total_variation": lambda ps, pt: 0.5 * (ps - pt).abs().sum(-1),
}


@pytest.mark.parametrize("divergence", sorted(REFERENCES))
@pytest.mark.parametrize("k", [1, 3, V])
def test_tail_bucket_loss_is_the_divergence_of_the_k_plus_1_outcome_distributions(divergence, k):
    s, t = _logits(0), _logits(1)
    mask = torch.ones(s.shape[:-1], dtype=torch.bool)
    mask[0, -1] = False
    got = distillation_loss(s, _topk_scores(t, k), mask, divergence=divergence, beta=0.5, reduction="none")
    want = REFERENCES[divergence](*_by_hand(s, t, k)) * mask
    assert torch.allclose(got, want, atol=1e-10)


def test_k_equal_to_the_vocabulary_is_the_full_divergence_value_and_gradient():
    s, t = _logits(2).requires_grad_(True), _logits(3)
    tail = distillation_loss(s, _topk_scores(t, V), None, divergence="reverse_kl")
    (g_tail,) = torch.autograd.grad(tail, s)
    full = reverse_kl(s, t)
    (g_full,) = torch.autograd.grad(full, s)
    assert torch.allclose(tail, full, atol=1e-12) and torch.allclose(g_tail, g_full, atol=1e-12)


def test_k_1_gives_a_positive_loss_and_gradient_where_the_conditional_loss_is_identically_0():
    """The defect: at k = 1 the renormalised distributions are both a point mass on one token."""
    s, t = _logits(4).requires_grad_(True), _logits(5)
    scores = _topk_scores(t, 1)
    tail = distillation_loss(s, scores, None, divergence="reverse_kl")
    (g,) = torch.autograd.grad(tail, s)
    assert tail.item() > 0.05 and g.abs().max().item() > 1e-3
    conditional = distillation_loss(s, scores, None, divergence="reverse_kl", topk_variant="conditional")
    (g0,) = torch.autograd.grad(conditional, s)
    assert conditional.item() == 0.0 and g0.abs().max().item() == 0.0


@pytest.mark.parametrize("divergence", ["reverse_kl", "forward_kl"])
def test_the_tail_bucket_loss_grows_with_k_to_the_full_divergence(divergence):
    s, t = _logits(6), _logits(7)
    full = {"reverse_kl": reverse_kl, "forward_kl": forward_kl}[divergence](s, t).item()
    values = [
        distillation_loss(s, _topk_scores(t, k), None, divergence=divergence).item() for k in range(1, V + 1)
    ]
    assert all(
        a <= b + 1e-12 for a, b in zip(values, values[1:], strict=False)
    )  # grouping outcomes loses information
    assert values[0] > 0 and values[-1] == pytest.approx(full, abs=1e-12)


def test_forbidden_tokens_give_a_finite_loss_and_gradient():
    s, t = _logits(8), _logits(9)
    scores = _topk_scores(t, 3)
    s = s.clone()
    s[0, 0].scatter_(-1, scores.topk_ids[0, 0], float("-inf"))  # the student forbids the teacher's top 3
    s[0, 1, :] = float("-inf")
    s[0, 1, scores.topk_ids[0, 1, 0]] = 0.0  # the student has no tail at all
    t = t.clone()
    t[1, 0, :] = float("-inf")
    t[1, 0, :3] = 0.0  # the teacher has no tail (its tail log-prob is -inf)
    scores = _topk_scores(t, 3)
    for divergence in ("reverse_kl", "forward_kl", "jsd", "total_variation"):
        x = s.clone().requires_grad_(True)
        loss = distillation_loss(x, scores, None, divergence=divergence)
        (g,) = torch.autograd.grad(loss, x)
        assert torch.isfinite(loss) and loss.item() > 0 and torch.isfinite(g).all(), divergence


def test_a_teacher_without_the_tail_field_gets_it_from_its_top_k_log_probs():
    s, t = _logits(10), _logits(11)
    with_tail = distillation_loss(s, _topk_scores(t, 4), None)
    without = distillation_loss(s, _topk_scores(t, 4, with_tail=False), None)
    assert torch.allclose(with_tail, without, atol=1e-9)


def test_the_teacher_scorer_reports_its_mass_outside_the_top_k(char_tokenizer):
    teacher = make_tiny_llama(len(char_tokenizer), seed=1, hidden=48)
    with torch.no_grad():
        teacher.lm_head.weight.mul_(6.0)  # peaked: the tail is small, where 1 − Σ top-k loses digits
    rollouts = rollouts_from_text(char_tokenizer, ["1+2=", "13+4="], ["3", "17"])
    full = TeacherScorer(teacher, mode="full")(rollouts)
    reference = full.logprobs.double().exp()
    v = full.logprobs.shape[-1]
    for k in (1, 3, v):
        scores = TeacherScorer(teacher, mode="topk", k=k)(rollouts)
        ids = scores.topk_ids
        rest = reference.scatter(-1, ids, 0.0).sum(-1)  # float64 sum of the other tokens' probabilities
        mask = rollouts.completion_mask
        got = scores.topk_tail_logprob[mask].double()
        if k == v:
            assert torch.isneginf(got).all()
        else:
            assert torch.allclose(got, rest.log()[mask], rtol=1e-4)
    joined = TeacherScores.cat([scores, scores])  # the field survives joining and moving
    assert joined.to("cpu").topk_tail_logprob.shape == (4, mask.shape[1])


def test_bad_variant_and_a_loss_temperature_the_tail_cannot_follow_are_clear_errors():
    s, t = _logits(12), _logits(13)
    with pytest.raises(ValueError, match="topk_variant must be one of"):
        distillation_loss(s, _topk_scores(t, 2), None, topk_variant="renormalized")
    with pytest.raises(ValueError, match="loss temperature 1"):
        distillation_loss(s, _topk_scores(t, 2), None, temperature=2.0)
    # the conditional variant follows a temperature (it renormalises anyway)
    assert torch.isfinite(
        distillation_loss(s, _topk_scores(t, 2), None, temperature=2.0, topk_variant="conditional")
    )


def test_topk_tail_distributions_are_distributions():
    s, t = _logits(14), _logits(15)
    mask = torch.rand(s.shape[:-1], generator=torch.Generator().manual_seed(0)) > 0.3
    student, teacher = topk_tail_distributions(s, _topk_scores(t, 5), mask)
    assert student.shape == teacher.shape == (int(mask.sum()), 6)
    for x in (student, teacher):
        assert torch.allclose(x.exp().sum(-1), torch.ones(len(x), dtype=x.dtype), atol=1e-12)


def test_distill_with_teacher_top_k_1_learns(char_tokenizer):
    """Through the loop: with k = 1 the student moves towards the teacher (the conditional loss cannot): the
    full-vocabulary reverse KL on a fixed batch falls."""
    from odistill.core.forward import completion_logits

    data = [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a in range(10) for b in range(10)]
    v = len(char_tokenizer)
    fixed = rollouts_from_text(
        char_tokenizer, [d["prompt"] for d in data[:32]], [d["answer"] for d in data[:32]]
    )
    rows = {}
    for variant in ("tail_bucket", "conditional"):
        student, teacher = make_tiny_llama(v, seed=0), make_tiny_llama(v, seed=1, hidden=48)
        with torch.no_grad():
            teacher.lm_head.weight.mul_(8.0)
            t_logits = completion_logits(teacher, fixed)

        def eval_fn(model, t_logits=t_logits):
            return {
                "rkl": reverse_kl(completion_logits(model, fixed), t_logits, fixed.completion_mask).item()
            }

        cfg = DistillConfig(
            lmbda=0.0,
            teacher_top_k=1,
            teacher_top_k_variant=variant,
            divergence="reverse_kl",
            steps=15,
            batch_size=8,
            lr=3e-3,
            progress=False,
            device="cpu",
        )
        rows[variant] = distill(student, teacher, char_tokenizer, data, cfg, eval_fn=eval_fn).history
    tail, conditional = rows["tail_bucket"], rows["conditional"]
    assert min(r["loss"] for r in tail[1:]) > 0
    assert tail[-1]["eval/rkl"] < 0.8 * tail[0]["eval/rkl"]
    assert all(r["loss"] == 0.0 and r["grad_norm"] == 0.0 for r in conditional[1:])
    assert conditional[-1]["eval/rkl"] == conditional[0]["eval/rkl"]  # nothing moved


def test_generalized_jsd_reference_matches_odistill_on_full_distributions():
    """The by-hand JSD(0.5) of REFERENCES is odistill's JSD convention (so the tail test compares like with
    like); total variation likewise."""
    s, t = _logits(16), _logits(17)
    ps, pt = torch.softmax(s, -1), torch.softmax(t, -1)
    assert torch.allclose(REFERENCES["jsd"](ps, pt), generalized_jsd(s, t, beta=0.5, reduction="none"))
    assert torch.allclose(REFERENCES["total_variation"](ps, pt), total_variation(s, t, reduction="none"))


def test_logsumexp_rows_leaves_the_excluded_entries_out_chunk_by_chunk(monkeypatch):
    import odistill.core.tensor_ops as tensor_ops

    monkeypatch.setattr(tensor_ops, "_LSE_CHUNK_ELEMENTS", 3 * V)  # 3 rows per chunk: several chunks
    logits = _logits(18, shape=(4, 5, V)).float()
    ids = logits.topk(3, -1).indices
    reference = logits.double().scatter(-1, ids, float("-inf")).logsumexp(-1)
    got = tensor_ops.logsumexp_rows(logits, exclude=ids)
    assert torch.allclose(got.double(), reference, atol=1e-5)
    everything = tensor_ops.logsumexp_rows(logits, exclude=logits.topk(V, -1).indices)
    assert torch.isneginf(everything).all()
    assert torch.equal(logits, _logits(18, shape=(4, 5, V)).float())  # the input is not modified
