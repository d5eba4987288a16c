"""The default sampling backend (odistill's decode loop, ``"hf"``) against ``model.generate``
(``"hf-generate"``): the same completions, masks and log-probs for the same seed, on several
architectures, with left padding, stop tokens, n > 1, temperature, top-k, top-p and greedy decoding."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_llama
from transformers import GPT2Config, GPT2LMHeadModel, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from odistill.core.sampler import BACKENDS, DecodeLoopBackend, _decode_signature, sample

PROMPTS = ["1+2=", "12+34=", "7=", "123+456+7="]  # different lengths: left padding


def _qwen2(vocab):
    torch.manual_seed(3)
    config = Qwen2Config(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return Qwen2ForCausalLM(config).eval()


def _gpt2(vocab):
    torch.manual_seed(4)
    config = GPT2Config(
        vocab_size=vocab, n_embd=32, n_layer=2, n_head=2, n_positions=64, pad_token_id=0, eos_token_id=2
    )
    return GPT2LMHeadModel(config).eval()


def _peaked_llama(vocab):
    """A llama whose EOS logit is raised, so that many rows stop early (and the loop ends before the cap)."""
    model = make_tiny_llama(vocab, seed=5, layers=2)
    with torch.no_grad():
        model.lm_head.weight[2] += 0.4 * model.lm_head.weight.abs().mean()
        model.lm_head.weight[2] *= 6
    return model


MODELS = {"llama": lambda v: make_tiny_llama(v, seed=0, layers=2), "qwen2": _qwen2, "gpt2": _gpt2}


def _both(model, tok, **kw):
    return [sample(model, tok, PROMPTS, backend=name, **kw) for name in ("hf", "hf-generate")]


def _assert_same(a, b):
    assert a.completion_ids.shape == b.completion_ids.shape
    assert torch.equal(a.completion_ids, b.completion_ids)
    assert torch.equal(a.completion_mask, b.completion_mask)
    assert torch.equal(a.attention_mask, b.attention_mask)
    assert torch.equal(a.clipped, b.clipped)
    torch.testing.assert_close(a.sampling_logprobs, b.sampling_logprobs, rtol=0, atol=1e-6)
    assert a.texts == b.texts


@pytest.mark.parametrize("arch", sorted(MODELS))
@pytest.mark.parametrize(
    "options",
    [
        dict(temperature=1.0),
        dict(temperature=0.7, n=3),
        dict(temperature=1.3, top_k=4),
        dict(temperature=1.0, top_p=0.8),
        dict(temperature=0.0),
    ],
    ids=["t1", "t0.7-n3", "topk4", "topp0.8", "greedy"],
)
def test_decode_loop_draws_what_generate_draws(arch, options, char_tokenizer):
    model = MODELS[arch](len(char_tokenizer))
    assert _decode_signature(model) is not None, f"{arch} should take the decode loop"
    for seed in (0, 1):
        loop, gen = _both(model, char_tokenizer, max_new_tokens=9, seed=seed, **options)
        _assert_same(loop, gen)


def test_rows_that_stop_early_are_padded_and_the_loop_ends_when_all_have_stopped(char_tokenizer):
    model = _peaked_llama(len(char_tokenizer))
    loop, gen = _both(model, char_tokenizer, max_new_tokens=30, seed=2, n=4)
    _assert_same(loop, gen)
    finished = ~loop.clipped
    assert finished.sum() >= len(loop) // 2, "the test needs rows that stop before the cap"
    assert loop.completion_ids.shape[1] < 30 or bool(loop.clipped.any())
    # every position after a row's stop token is padding, outside the mask
    assert not bool(loop.completion_mask[:, 1:][~loop.completion_mask[:, :-1]].any())


def test_loop_logprobs_equal_a_direct_forward(char_tokenizer):
    """Independent of generate: log q(x_t) recorded in the loop equals the log-softmax of a full forward."""
    from odistill.core.forward import completion_logits

    model = MODELS["qwen2"](len(char_tokenizer))
    r = sample(model, char_tokenizer, PROMPTS, max_new_tokens=8, seed=7, temperature=0.9)
    with torch.no_grad():
        logits = completion_logits(model, r)
    want = torch.log_softmax(logits.double() / 0.9, -1).gather(-1, r.completion_ids[..., None]).squeeze(-1)
    want = want.masked_fill(~r.completion_mask, 0.0)
    torch.testing.assert_close(r.sampling_logprobs.double(), want, rtol=0, atol=2e-5)


class _NoCacheArgument(LlamaForCausalLM):
    """A model whose forward does not name a cache argument (so the loop cannot call it)."""

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)


def test_a_model_without_a_cache_argument_is_sampled_with_generate(char_tokenizer, monkeypatch):
    reference = make_tiny_llama(len(char_tokenizer), seed=0)
    model = _NoCacheArgument(reference.config).eval()
    model.load_state_dict(reference.state_dict())
    assert _decode_signature(model) is None
    calls = []
    fallback = DecodeLoopBackend.fallback
    monkeypatch.setattr(
        DecodeLoopBackend,
        "fallback",
        type("Spy", (), {"generate": lambda self, *a, **k: calls.append(1) or fallback.generate(*a, **k)})(),
    )
    got = sample(model, char_tokenizer, PROMPTS, max_new_tokens=6, seed=0)
    want = sample(reference, char_tokenizer, PROMPTS, max_new_tokens=6, seed=0, backend="hf-generate")
    assert calls == [1]
    _assert_same(got, want)


def test_both_backends_are_registered_and_hf_is_the_loop():
    assert isinstance(BACKENDS["hf"], DecodeLoopBackend)
    assert "hf-generate" in BACKENDS
