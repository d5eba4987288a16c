"""Completions cut at max_new_tokens are counted (clipped_ratio) and warned about once."""

from __future__ import annotations

import warnings

import torch
from conftest import make_tiny_llama

from odistill import DistillConfig, distill
from odistill.core.rollouts import resolve_special_ids
from odistill.core.sampler import sample

DATA = [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a in range(10) for b in range(10)]


def test_the_sampler_marks_exactly_the_rows_cut_before_a_stop_token(char_tokenizer):
    model = make_tiny_llama(len(char_tokenizer), seed=3)
    rollouts = sample(model, char_tokenizer, ["1+2=", "3+4="], n=32, max_new_tokens=20, seed=0)
    _, eos_ids = resolve_special_ids(char_tokenizer, model)
    lengths = rollouts.completion_mask.sum(-1)
    ids = rollouts.completion_ids
    last = ids.gather(-1, (lengths - 1).clamp_min(0)[:, None]).squeeze(-1)
    # reference: a row is cut when it used every new token and its last counted token is no stop token
    cut = (lengths == 20) & ~torch.isin(last, torch.tensor(eos_ids))
    assert torch.equal(rollouts.clipped, cut)
    assert 0 < rollouts.num_clipped < len(rollouts)  # both kinds occur, so the test can tell them apart
    assert torch.equal(rollouts.rows(3, 9).clipped, cut[3:9])


def test_clipped_ratio_is_in_the_history_and_a_mostly_cut_run_warns_once(char_tokenizer):
    v = len(char_tokenizer)
    cfg = DistillConfig(lmbda=1.0, steps=3, batch_size=8, max_new_tokens=2, progress=False, device="cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = distill(make_tiny_llama(v, seed=0), make_tiny_llama(v, seed=1), char_tokenizer, DATA, cfg)
    ratios = [row["clipped_ratio"] for row in result.history]
    assert all(r > 0.5 for r in ratios)  # 2 new tokens: a random student rarely stops that early
    cut = [w for w in caught if "without a stop token" in str(w.message)]
    assert len(cut) == 1 and "max_new_tokens=2" in str(cut[0].message) and "128" in str(cut[0].message)


def test_dataset_completions_are_never_clipped(char_tokenizer):
    v = len(char_tokenizer)
    cfg = DistillConfig(lmbda=0.0, steps=2, batch_size=8, max_new_tokens=2, progress=False, device="cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = distill(make_tiny_llama(v, seed=0), make_tiny_llama(v, seed=1), char_tokenizer, DATA, cfg)
    assert [row["clipped_ratio"] for row in result.history] == [0.0, 0.0]
    assert not [w for w in caught if "without a stop token" in str(w.message)]
