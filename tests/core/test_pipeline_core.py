"""Sampler, teacher scorer and losses: masks, determinism, agreement with direct forwards, gradients."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from conftest import make_tiny_llama

from odistill import reverse_kl
from odistill.core.forward import completion_logits
from odistill.core.loss import distillation_loss, sampled_token_loss
from odistill.core.rollouts import completion_mask_from_ids, rollouts_from_text
from odistill.core.sampler import sample
from odistill.core.teacher import TeacherScorer, check_vocab_compatible

PROMPTS = ["12+3=", "4+56=", "789+1=", "0+0="]


# ------------------------------------------------------------------------------------------------
# sampler
# ------------------------------------------------------------------------------------------------


def test_completion_mask_up_to_and_including_first_eos():
    eos, pad = 2, 0
    ids = torch.tensor(
        [[5, 6, eos, 7, eos], [5, 5, 5, 5, 5], [eos, pad, pad, pad, pad], [5, pad, eos, pad, pad]]
    )
    mask = completion_mask_from_ids(ids, [eos])
    assert mask.tolist() == [
        [True, True, True, False, False],
        [True] * 5,  # never stopped
        [True, False, False, False, False],
        [True, True, True, False, False],  # a sampled pad before EOS is a real token
    ]
    assert completion_mask_from_ids(torch.tensor([[5, 3, 6, 2]]), [3, 2]).tolist() == [
        [True, True, False, False]
    ]


def test_sample_layout_masks_and_texts(tiny_pair, char_tokenizer):
    student, _ = tiny_pair
    r = sample(student, char_tokenizer, PROMPTS, n=3, max_new_tokens=6, seed=0)
    B, P = len(PROMPTS) * 3, max(len(p) for p in PROMPTS) + 1  # + BOS
    assert r.input_ids.shape[0] == B and r.prompt_width == P
    T = r.input_ids.shape[1] - P
    assert 1 <= T <= 6 and r.completion_mask.shape == (B, T) and r.sampling_logprobs.shape == (B, T)
    assert r.prompt_index.tolist() == [i for i in range(4) for _ in range(3)]
    pad, eos = char_tokenizer.pad_token_id, char_tokenizer.eos_token_id
    for row in range(B):
        prompt = PROMPTS[row // 3]
        # left padding: pads, then BOS + prompt, ending at column P
        n_pad = P - len(prompt) - 1
        assert r.input_ids[row, :n_pad].eq(pad).all() and r.attention_mask[row, :n_pad].eq(0).all()
        assert char_tokenizer.decode(r.input_ids[row, n_pad:P], skip_special_tokens=True) == prompt
        comp, m = r.completion_ids[row], r.completion_mask[row]
        k = int(m.sum())
        assert m[:k].all() and not m[k:].any()  # a prefix of the completion counts
        if (comp[:k] == eos).any():  # the only EOS counted is the last counted token
            assert comp[k - 1] == eos and not (comp[: k - 1] == eos).any()
        else:
            assert k == T  # never stopped: the whole width counts
        assert comp[k:].eq(pad).all() and r.attention_mask[row, P:].bool().eq(m).all()
        assert r.texts[row] == char_tokenizer.decode(comp[:k], skip_special_tokens=True)
        assert (r.sampling_logprobs[row, ~m] == 0).all() and (r.sampling_logprobs[row, m] <= 0).all()


def test_sample_is_deterministic_with_a_seed_and_leaves_global_rng_alone(tiny_pair, char_tokenizer):
    student, _ = tiny_pair
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = sample(student, char_tokenizer, PROMPTS, n=4, max_new_tokens=6, seed=7)
    assert torch.equal(torch.random.get_rng_state(), before)
    b = sample(student, char_tokenizer, PROMPTS, n=4, max_new_tokens=6, seed=7)
    c = sample(student, char_tokenizer, PROMPTS, n=4, max_new_tokens=6, seed=8)
    assert torch.equal(a.input_ids, b.input_ids) and a.texts == b.texts
    assert not torch.equal(a.input_ids, c.input_ids)


def test_sampling_logprobs_equal_a_direct_forward_at_temperature(tiny_pair, char_tokenizer):
    student, _ = tiny_pair
    for temperature in (1.0, 0.7):
        r = sample(student, char_tokenizer, PROMPTS, n=2, max_new_tokens=6, temperature=temperature, seed=1)
        with torch.no_grad():
            logits = completion_logits(student, r)  # (B, T, V), left padding handled by position ids
        direct = (
            torch.log_softmax(logits / temperature, -1).gather(-1, r.completion_ids[..., None]).squeeze(-1)
        )
        m = r.completion_mask
        assert torch.allclose(direct[m], r.sampling_logprobs[m], atol=1e-5)


def test_top_k_sampling_logprobs_are_renormalised_over_k(tiny_pair, char_tokenizer):
    student, _ = tiny_pair
    r = sample(student, char_tokenizer, PROMPTS, n=4, max_new_tokens=5, top_k=2, seed=3)
    with torch.no_grad():
        logits = completion_logits(student, r)
    top2 = logits.topk(2, -1)
    for b, t in r.completion_mask.nonzero().tolist():
        tok = r.completion_ids[b, t]
        assert tok in top2.indices[b, t]
        want = torch.log_softmax(top2.values[b, t], -1)[(top2.indices[b, t] == tok).nonzero()[0, 0]]
        assert math.isclose(r.sampling_logprobs[b, t].item(), want.item(), abs_tol=1e-5)


def test_greedy_matches_argmax_and_ignores_checkpoint_generation_defaults(tiny_pair, char_tokenizer):
    student, _ = tiny_pair
    student.generation_config.repetition_penalty = 5.0  # a hub checkpoint default that must not leak in
    student.generation_config.top_k = 1
    r = sample(student, char_tokenizer, PROMPTS, max_new_tokens=5, temperature=0.0)
    assert student.generation_config.repetition_penalty == 5.0  # restored
    with torch.no_grad():
        logits = completion_logits(student, r)
    m = r.completion_mask
    assert torch.equal(logits.argmax(-1)[m], r.completion_ids[m])
    assert (r.sampling_logprobs == 0).all()


def test_chat_conversations_use_the_chat_template(tiny_pair, char_tokenizer):
    student, _ = tiny_pair
    chats = [[{"role": "user", "content": p}] for p in PROMPTS]
    a = sample(student, char_tokenizer, chats, max_new_tokens=4, seed=0)
    b = sample(student, char_tokenizer, PROMPTS, max_new_tokens=4, seed=0)
    assert torch.equal(a.input_ids, b.input_ids)  # this template renders a user turn as its text


def test_sampler_bad_inputs(tiny_pair, char_tokenizer):
    student, _ = tiny_pair
    with pytest.raises(ValueError, match="context window of 64"):
        sample(student, char_tokenizer, ["1" * 60 + "="], max_new_tokens=8)
    with pytest.raises(ValueError, match="prompts is empty"):
        sample(student, char_tokenizer, [], max_new_tokens=4)
    with pytest.raises(ValueError, match="n \\(completions per prompt\\)"):
        sample(student, char_tokenizer, PROMPTS, n=0)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        sample(student, char_tokenizer, PROMPTS, temperature=-1)
    with pytest.raises(ValueError, match="top_p must be in"):
        sample(student, char_tokenizer, PROMPTS, top_p=0)
    with pytest.raises(TypeError, match="list of strings"):
        sample(student, char_tokenizer, "12+3=")


def test_tokenizer_without_pad_token_warns_and_pads_with_eos(tiny_pair, char_tokenizer):
    student, _ = tiny_pair
    import copy

    no_pad = copy.deepcopy(char_tokenizer)
    no_pad.pad_token = None
    with pytest.warns(UserWarning, match="no pad_token"):
        r = sample(student, no_pad, PROMPTS, max_new_tokens=5, seed=0)
    ref = sample(student, char_tokenizer, PROMPTS, max_new_tokens=5, seed=0)
    assert torch.equal(r.completion_mask, ref.completion_mask) and r.texts == ref.texts


def test_rollouts_from_text(char_tokenizer):
    r = rollouts_from_text(char_tokenizer, ["12+3=", "4+5="], ["15", "9"])
    eos = char_tokenizer.eos_token_id
    assert r.completion_mask.tolist() == [[True, True, True], [True, True, False]]
    assert r.completion_ids[0].tolist()[2] == eos and r.completion_ids[1].tolist()[1] == eos
    assert r.sampling_logprobs is None and r.source == "dataset"
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        rollouts_from_text(char_tokenizer, ["1=", "2="], ["1"])


# ------------------------------------------------------------------------------------------------
# teacher scorer
# ------------------------------------------------------------------------------------------------


@pytest.fixture()
def rollouts(tiny_pair, char_tokenizer):
    return sample(tiny_pair[0], char_tokenizer, PROMPTS, n=2, max_new_tokens=6, seed=2)


def test_full_scores_equal_a_direct_forward(tiny_pair, rollouts):
    _, teacher = tiny_pair
    scores = TeacherScorer(teacher, mode="full")(rollouts)
    with torch.no_grad():
        direct = torch.log_softmax(completion_logits(teacher, rollouts), -1)
    m = rollouts.completion_mask
    assert scores.logprobs.shape == direct.shape
    assert torch.allclose(scores.logprobs[m], direct[m], atol=1e-6)


def test_direct_forward_without_padding_agrees(tiny_pair, char_tokenizer, rollouts):
    # the left-padded, position-corrected forward equals an unpadded forward of the same row
    _, teacher = tiny_pair
    scores = TeacherScorer(teacher, mode="sampled")(rollouts)
    for row in range(len(rollouts)):
        keep = rollouts.attention_mask[row].bool()
        ids = rollouts.input_ids[row][keep][None]
        with torch.no_grad():
            lp = torch.log_softmax(teacher(ids).logits[0, :-1], -1)
        n_prompt = int(rollouts.prompt_lengths[row])
        tokens = ids[0, n_prompt:]
        want = lp[n_prompt - 1 :].gather(-1, tokens[:, None]).squeeze(-1)
        got = scores.token_logprobs[row][rollouts.completion_mask[row]]
        assert torch.allclose(got, want, atol=1e-5)


def test_sampled_is_a_gather_of_full_and_topk_is_the_top_of_full(tiny_pair, rollouts):
    _, teacher = tiny_pair
    full = TeacherScorer(teacher, mode="full")(rollouts)
    sampled = TeacherScorer(teacher, mode="sampled", micro_batch_size=3)(rollouts)
    topk = TeacherScorer(teacher, mode="topk", k=4)(rollouts)
    m = rollouts.completion_mask
    gathered = full.logprobs.gather(-1, rollouts.completion_ids[..., None]).squeeze(-1)
    assert torch.allclose(sampled.token_logprobs[m], gathered[m], atol=1e-6)
    assert sampled.logprobs is None and sampled.token_logprobs.shape == m.shape
    values, ids = full.logprobs.topk(4, -1)
    assert torch.allclose(topk.topk_logprobs, values) and torch.equal(topk.topk_ids, ids)


def test_teacher_in_train_mode_is_put_in_eval(char_tokenizer):
    teacher = make_tiny_llama(len(char_tokenizer), seed=1)
    teacher.train()
    TeacherScorer(teacher)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


def test_vocab_mismatch_is_a_clear_error(char_tokenizer):
    student = make_tiny_llama(len(char_tokenizer))
    teacher = make_tiny_llama(len(char_tokenizer) + 3)
    assert check_vocab_compatible(student, teacher, char_tokenizer) == len(char_tokenizer)  # padded head: ok
    small = make_tiny_llama(len(char_tokenizer) - 2)
    with pytest.raises(
        ValueError,
        match=rf"student has {len(char_tokenizer)} output logits, the teacher {len(char_tokenizer) - 2}",
    ):
        check_vocab_compatible(student, small, char_tokenizer)


def test_topk_bad_k(tiny_pair):
    with pytest.raises(ValueError, match="k must be an integer in \\[1, V="):
        TeacherScorer(tiny_pair[1], mode="topk", k=0)
    with pytest.raises(ValueError, match="mode must be one of"):
        TeacherScorer(tiny_pair[1], mode="logits")


# ------------------------------------------------------------------------------------------------
# losses
# ------------------------------------------------------------------------------------------------


def test_distillation_loss_full_equals_the_divergence(tiny_pair, rollouts):
    student, teacher = tiny_pair
    scores = TeacherScorer(teacher, mode="full")(rollouts)
    logits = completion_logits(student, rollouts)
    m = rollouts.completion_mask
    for divergence, beta in (("reverse_kl", 1.0), ("forward_kl", 0.0), ("jsd", 0.3)):
        loss = distillation_loss(logits, scores, m, divergence=divergence, beta=beta, temperature=2.0)
        from odistill import generalized_jsd

        want = generalized_jsd(logits, scores.logprobs, m, beta=beta, temperature=2.0)
        assert torch.allclose(loss, want)


def test_conditional_topk_loss_renormalises_over_the_teacher_support():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 3, 10, generator=g), torch.randn(2, 3, 10, generator=g)
    m = torch.ones(2, 3, dtype=torch.bool)
    values, ids = torch.log_softmax(t, -1).topk(4, -1)
    from odistill.core.teacher import TeacherScores

    scores = TeacherScores("topk", torch.zeros(2, 3), topk_logprobs=values, topk_ids=ids)
    got = distillation_loss(s, scores, m, divergence="reverse_kl", topk_variant="conditional")
    # reference: restrict both to the support and renormalise, by hand
    ps = torch.softmax(s.gather(-1, ids).double(), -1)
    pt = torch.softmax(values.double(), -1)
    want = (ps * (ps.log() - pt.log())).sum(-1).mean()
    assert torch.allclose(got.double(), want, atol=1e-6)
    # with k = V it is exactly the full divergence
    values_all, ids_all = torch.log_softmax(t, -1).topk(10, -1)
    full_k = distillation_loss(
        s,
        TeacherScores("topk", torch.zeros(2, 3), topk_logprobs=values_all, topk_ids=ids_all),
        m,
        topk_variant="conditional",
    )
    assert torch.allclose(full_k, reverse_kl(s, t, m), atol=1e-6)


def test_sampled_scores_cannot_feed_the_full_estimator():
    from odistill.core.teacher import TeacherScores

    with pytest.raises(ValueError, match="sampled_token_loss"):
        distillation_loss(
            torch.randn(1, 2, 3),
            TeacherScores("sampled", torch.zeros(1, 2)),
            torch.ones(1, 2, dtype=torch.bool),
        )


def test_sampled_token_loss_expected_gradient_is_the_reverse_kl_gradient():
    """Monte Carlo: the average IS policy gradient over many samples matches ∇ KL(p_θ ‖ p_T).

    Tolerance: 6 standard errors of the per-sample gradient, estimated from the samples themselves.
    """
    g = torch.Generator().manual_seed(0)
    V, N = 6, 200_000
    z = torch.randn(V, dtype=torch.float64, generator=g, requires_grad=True)
    teacher = torch.log_softmax(torch.randn(V, dtype=torch.float64, generator=g), -1)
    (analytic,) = torch.autograd.grad(reverse_kl(z, teacher), z)

    logp_all = torch.log_softmax(z, -1)
    x = torch.multinomial(logp_all.detach().exp(), N, replacement=True, generator=g)  # x ~ q = p_θ
    logp = logp_all[x]  # (N,) with gradients
    ones = torch.ones(N, dtype=torch.bool)
    loss = sampled_token_loss(logp[None], teacher[x][None], logp.detach()[None], ones[None], reduction="none")
    # per-sample gradients in closed form of d/dz [ratio·A]: for a softmax, ∇log p(x) = e_x − p
    p = logp_all.detach().exp()
    adv = -(logp.detach() - teacher[x])
    per_sample = -(torch.nn.functional.one_hot(x, V).double() - p) * adv[:, None]  # (N, V)
    (mc,) = torch.autograd.grad(loss.sum() / N, z)
    assert torch.allclose(mc, per_sample.mean(0), atol=1e-10)  # autograd agrees with the closed form
    se = per_sample.std(0) / math.sqrt(N)
    assert torch.all((mc - analytic).abs() < 6 * se + 1e-12), (mc, analytic, se)


def test_sampled_token_loss_value_ratio_and_mask():
    lp = torch.tensor([[-0.5, -1.0, -2.0]], requires_grad=True)
    teacher = torch.tensor([[-0.2, -3.0, -9.0]])
    q = torch.tensor([[-0.6, -1.0, -2.0]])  # token 0 was sampled from another distribution
    mask = torch.tensor([[True, True, False]])
    loss = sampled_token_loss(lp, teacher, q, mask, reduction="sum")
    ratio0 = math.exp(-0.5 + 0.6)
    assert math.isclose(loss.item(), -(ratio0 * -(-0.5 + 0.2)) - (1.0 * -(-1.0 + 3.0)), rel_tol=1e-6)
    (grad,) = torch.autograd.grad(loss, lp)
    assert grad[0, 2] == 0  # masked token: no gradient
    assert math.isclose(grad[0, 1].item(), 2.0, rel_tol=1e-6)  # d/dlp of −exp(lp − q)·A at ratio 1 = −A
    clipped = sampled_token_loss(lp, teacher, q, mask, reduction="sum", max_ratio=1.0)
    assert clipped.item() != loss.item()
    all_masked = sampled_token_loss(lp, teacher, q, torch.zeros_like(mask))
    assert all_masked.item() == 0.0
    with pytest.raises(ValueError, match="share one \\(B, T\\) shape"):
        sampled_token_loss(lp, teacher[:, :2], q, mask)


def test_losses_backpropagate_into_the_student(tiny_pair, rollouts):
    student, teacher = tiny_pair
    for mode in ("full", "sampled"):
        student.zero_grad()
        scores = TeacherScorer(teacher, mode=mode)(rollouts)
        logits = completion_logits(student, rollouts)
        if mode == "full":
            loss = distillation_loss(logits, scores, rollouts.completion_mask)
        else:
            lp = (
                torch.log_softmax(logits.float(), -1)
                .gather(-1, rollouts.completion_ids[..., None])
                .squeeze(-1)
            )
            loss = sampled_token_loss(
                lp, scores.token_logprobs, rollouts.sampling_logprobs, rollouts.completion_mask
            )
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            loss.backward()
        grads = [p.grad for p in student.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_completions_stop_at_every_stop_id_of_the_generation_config(char_tokenizer):
    """Chat models stop at several ids (end of turn, EOS): the union of the tokenizer's EOS and the model's
    generation_config.eos_token_id ends a completion, as in Hugging Face generate."""
    model = make_tiny_llama(len(char_tokenizer), seed=5)
    stop = char_tokenizer.convert_tokens_to_ids("7")
    prompts = [f"{a}+{b}=" for a in range(8) for b in range(4)]
    plain = sample(model, char_tokenizer, prompts, max_new_tokens=10, seed=1)
    written = plain.completion_ids[plain.completion_mask]
    assert (written == stop).any()  # without the extra stop id, '7' is an ordinary token mid-completion
    model.generation_config.eos_token_id = [char_tokenizer.eos_token_id, stop]
    both = sample(model, char_tokenizer, prompts, max_new_tokens=10, seed=1)
    eos = {char_tokenizer.eos_token_id, stop}
    for ids, mask, text in zip(
        both.completion_ids.tolist(), both.completion_mask.tolist(), both.texts, strict=True
    ):
        counted = [t for t, m in zip(ids, mask, strict=True) if m]
        ends = [i for i, t in enumerate(counted) if t in eos]
        assert ends in ([], [len(counted) - 1])  # a stop id is only ever the last counted token
        assert "7" not in text
    assert any(
        ids[sum(mask) - 1] == stop
        for ids, mask in zip(both.completion_ids.tolist(), both.completion_mask.tolist(), strict=True)
    )
