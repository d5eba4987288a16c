"""max_prompt_length: longer prompts are cut from the left (the end kept), with a warning."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_llama

from odistill import DistillConfig, distill
from odistill.core.rollouts import render_prompts, rollouts_from_text
from odistill.core.sampler import sample

PROMPTS = ["123+456=", "7+8=", "99999+11111="]


def test_prompts_are_cut_from_the_left_to_their_last_tokens(char_tokenizer):
    _, whole = render_prompts(char_tokenizer, PROMPTS)
    with pytest.warns(UserWarning, match="cut from the left"):
        texts, cut = render_prompts(char_tokenizer, PROMPTS, max_length=5)
    assert cut == [row[-5:] for row in whole]  # the reference: the last 5 tokens of the whole prompt
    assert len(whole[1]) == 5 and texts[1] == "7+8="  # BOS + 4 characters: short enough, untouched
    assert texts[2].endswith("1111=") and len(cut[2]) == 5


def test_short_prompts_are_untouched_and_silent(char_tokenizer, recwarn):
    _, whole = render_prompts(char_tokenizer, PROMPTS)
    texts, same = render_prompts(char_tokenizer, PROMPTS, max_length=100)
    assert same == whole and texts == PROMPTS
    assert not [w for w in recwarn if "cut from the left" in str(w.message)]


def test_the_sampler_and_dataset_rollouts_use_the_cut_prompts(char_tokenizer):
    model = make_tiny_llama(len(char_tokenizer), seed=0)
    with pytest.warns(UserWarning, match="max_prompt_length=5"):
        sampled = sample(model, char_tokenizer, PROMPTS, max_new_tokens=3, seed=0, max_prompt_length=5)
    with pytest.warns(UserWarning, match="max_prompt_length=5"):
        data = rollouts_from_text(char_tokenizer, PROMPTS, ["579", "15", "111110"], max_prompt_length=5)
    for rollouts in (sampled, data):
        assert rollouts.prompt_width == 5 and int(rollouts.prompt_lengths.max()) == 5


def test_distill_cuts_prompts_a_model_could_not_fit(char_tokenizer):
    """A 16-position model cannot take a 20-token prompt: a clear error without max_prompt_length, training
    with it."""
    v = len(char_tokenizer)
    data = [{"prompt": "1" * 15 + f"{a}+{a}=", "answer": str(2 * a)} for a in range(10)]
    cfg = dict(lmbda=1.0, steps=1, batch_size=4, max_new_tokens=4, progress=False, device="cpu")

    def models():
        return make_tiny_llama(v, seed=0, max_positions=16), make_tiny_llama(v, seed=1, max_positions=16)

    with pytest.raises(ValueError, match="max_prompt_length cuts them from the left"):
        distill(*models(), char_tokenizer, data, DistillConfig(**cfg))
    with pytest.warns(UserWarning, match="cut from the left"):
        result = distill(*models(), char_tokenizer, data, DistillConfig(max_prompt_length=12, **cfg))
    assert torch.isfinite(torch.tensor(result.history[-1]["loss"]))


def test_a_bad_max_prompt_length_is_a_clear_error(char_tokenizer):
    with pytest.raises(ValueError, match="max_prompt_length must be an integer >= 1"):
        render_prompts(char_tokenizer, PROMPTS, max_length=0)
