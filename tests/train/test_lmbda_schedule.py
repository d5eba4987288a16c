"""λ schedules: λ moves from lmbda_start to lmbda over training; the coin follows it; configs stay JSON."""

from __future__ import annotations

import math
import random

import pytest
from conftest import make_tiny_llama

from odistill import ConfigError, DistillConfig, distill
from odistill.train.schedules import LMBDA_SCHEDULES, lmbda_at, register_lmbda_schedule

DATA = [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a in range(10) for b in range(10)]


def test_built_in_schedules_against_their_formulas():
    total = 9  # steps 0 … 8
    for s in range(total):
        assert lmbda_at("constant", s, total, 0.2, 0.7) == 0.7
        assert lmbda_at("linear", s, total, 0.2, 0.7) == pytest.approx(0.2 + 0.5 * s / 8, abs=1e-15)
        cosine = 0.2 + 0.5 * (1 - math.cos(math.pi * s / 8)) / 2
        assert lmbda_at("cosine", s, total, 0.2, 0.7) == pytest.approx(cosine, abs=1e-15)
    assert lmbda_at("linear", 0, 1, 0.0, 1.0) == 1.0  # a one-step run is at its end already


def test_distill_flips_the_coin_with_the_scheduled_lambda(char_tokenizer):
    cfg = DistillConfig(
        lmbda=1.0,
        lmbda_schedule="linear",
        lmbda_start=0.0,
        steps=9,
        batch_size=2,
        max_new_tokens=2,
        seed=5,
        progress=False,
        device="cpu",
    )
    v = len(char_tokenizer)
    result = distill(make_tiny_llama(v, seed=0), make_tiny_llama(v, seed=1), char_tokenizer, DATA, cfg)
    lambdas = [s / 8 for s in range(9)]
    assert [row["lmbda"] for row in result.history] == pytest.approx(lambdas)
    coin = random.Random(cfg.seed)  # the documented coin: on-policy iff u < λ(step)
    assert [row["on_policy"] for row in result.history] == [coin.random() < lam for lam in lambdas]
    assert result.history[0]["source"] == "dataset" and result.history[-1]["source"] == "student"


def test_a_registered_schedule_is_used_by_name_and_survives_json(char_tokenizer, tmp_path):
    register_lmbda_schedule("second_half", lambda step, total: 0.0 if step < total / 2 else 1.0)
    try:
        cfg = DistillConfig(lmbda_schedule="second_half", lmbda_start=0.0, lmbda=1.0, steps=4)
        cfg.save(tmp_path / "c.json")
        again = DistillConfig.load(tmp_path / "c.json")
        assert again == cfg and [again.lmbda_at(s) for s in range(1, 5)] == [0.0, 0.0, 1.0, 1.0]
        assert cfg.describe().startswith("λ second_half 0→1")
    finally:
        LMBDA_SCHEDULES.pop("second_half")


def test_broken_schedules_and_impossible_combinations_are_clear_errors():
    with pytest.raises(ValueError, match="must return a number in \\[0, 1\\]"):
        register_lmbda_schedule("too_big", lambda step, total: 2.0)
    assert "too_big" not in LMBDA_SCHEDULES
    with pytest.raises(ConfigError, match="lmbda_schedule must be one of"):
        DistillConfig(lmbda_schedule="sigmoid")
    with pytest.raises(ConfigError, match="lmbda_start must be in"):
        DistillConfig(lmbda_schedule="linear", lmbda_start=1.5)
    # the sampled estimator cannot take dataset batches: a schedule starting below 1 needs seq_kd
    with pytest.raises(ConfigError, match="λ down to 0.0"):
        DistillConfig(estimator="sampled", lmbda=1.0, lmbda_schedule="linear", lmbda_start=0.0)
    DistillConfig(estimator="sampled", lmbda=1.0, lmbda_schedule="linear", lmbda_start=0.0, seq_kd=True)
