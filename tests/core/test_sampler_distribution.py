"""The sampler draws from exactly the distribution it reports: frequency tests of the inverse-CDF draw.

Each test compares empirical token frequencies over many draws with the probabilities computed
independently (float64 softmax of the logits), using Pearson's chi-square statistic. Under a correct
sampler the statistic has mean ``df`` and standard deviation ``sqrt(2·df)``; the bound used,
``df + 6·sqrt(2·df)``, fails with probability far below 1e-6, while a sampler that ignores the
temperature, top-k or top-p (or is off by one token) exceeds it by orders of magnitude at these
sample sizes. Seeds are fixed, so the tests are deterministic.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_tiny_llama
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

from odistill.core.forward import completion_logits
from odistill.core.sampler import InverseCDFSampler, sample


def _chi_square(counts: torch.Tensor, probs: torch.Tensor) -> tuple[float, int]:
    """Pearson's statistic over the categories with positive probability, and its degrees of freedom."""
    n = counts.sum().item()
    support = probs > 0
    expected = probs[support] * n
    stat = (((counts[support].double() - expected) ** 2) / expected).sum().item()
    return stat, int(support.sum()) - 1


def _bound(df: int) -> float:
    return df + 6 * math.sqrt(2 * df)


def _draw(processor: InverseCDFSampler, logits: torch.Tensor, rows: int, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    processor(torch.zeros(rows, 1, dtype=torch.long), logits.expand(rows, -1).clone())
    return processor.tokens[-1]


LOGITS = torch.tensor([2.0, 0.5, -1.0, float("-inf"), 0.0, 3.0, -4.0, 1.0, float("-inf"), -0.5])


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_inverse_cdf_frequencies_match_the_softmax(temperature):
    rows = 200_000
    tokens = _draw(InverseCDFSampler(temperature, 0, 1.0), LOGITS, rows, seed=0)
    counts = torch.bincount(tokens, minlength=len(LOGITS))
    probs = torch.softmax(LOGITS.double() / temperature, -1)
    assert counts[probs == 0].sum() == 0, "a token of probability 0 was drawn"
    stat, df = _chi_square(counts, probs)
    assert stat < _bound(df), (stat, df)
    # and the sampler really depends on the temperature: the T=1 frequencies fail at T=0.5
    if temperature != 1.0:
        wrong = torch.softmax(LOGITS.double(), -1)
        assert _chi_square(counts, wrong)[0] > 100 * _bound(df)


def test_recorded_logprobs_are_the_log_softmax_of_the_drawn_tokens():
    processor = InverseCDFSampler(0.7, 0, 1.0)
    torch.manual_seed(1)
    logits = torch.randn(64, 50) * 3
    out = processor(torch.zeros(64, 1, dtype=torch.long), logits.clone())
    token = processor.tokens[-1]
    want = torch.log_softmax(logits.double() / 0.7, -1).gather(1, token[:, None]).squeeze(1)
    assert torch.allclose(processor.logprobs[-1].double(), want, atol=1e-5)
    # the processed scores leave exactly the drawn token, so greedy decoding picks it
    assert torch.equal(out.argmax(-1), token)
    assert torch.equal(torch.isfinite(out).sum(-1), torch.ones(64, dtype=torch.long))


def test_reused_output_buffer_keeps_exactly_one_finite_entry_per_row():
    processor = InverseCDFSampler(1.0, 0, 1.0)
    torch.manual_seed(2)
    for _ in range(5):
        out = processor(torch.zeros(8, 1, dtype=torch.long), torch.randn(8, 30))
        assert torch.equal(torch.isfinite(out).sum(-1), torch.ones(8, dtype=torch.long))
        assert torch.equal(out.argmax(-1), processor.tokens[-1])


@pytest.mark.parametrize("top_k,top_p", [(3, 1.0), (0, 0.8), (4, 0.9)])
def test_top_k_and_top_p_frequencies_match_the_truncated_softmax(top_k, top_p):
    rows = 200_000
    tokens = _draw(InverseCDFSampler(1.0, top_k, top_p), LOGITS, rows, seed=3)
    counts = torch.bincount(tokens, minlength=len(LOGITS))
    # independent reference: the transformers warpers applied to the logits, then a float64 softmax
    warped = LOGITS[None].clone()
    if top_k:
        warped = TopKLogitsWarper(top_k)(None, warped)
    if top_p < 1.0:
        warped = TopPLogitsWarper(top_p)(None, warped)
    probs = torch.softmax(warped[0].double(), -1)
    assert counts[probs == 0].sum() == 0, "a token outside the top-k / top-p set was drawn"
    stat, df = _chi_square(counts, probs)
    assert stat < _bound(df), (stat, df)


def test_sample_first_token_frequencies_match_the_model(char_tokenizer):
    """End to end through ``generate``: the first completion token of many rows of one prompt."""
    model = make_tiny_llama(len(char_tokenizer), seed=5)
    with torch.no_grad():  # make the distribution less flat so the test has power
        model.lm_head.weight.mul_(8.0)
    n = 4000
    r = sample(model, char_tokenizer, ["12+34="], n=n, max_new_tokens=1, temperature=0.8, seed=0)
    first = r.completion_ids[:, 0]
    with torch.no_grad():
        logits = completion_logits(model, r)[0, 0]  # every row has the same prompt
    probs = torch.softmax(logits.double() / 0.8, -1)
    counts = torch.bincount(first, minlength=len(probs))
    stat, df = _chi_square(counts, probs)
    assert stat < _bound(df), (stat, df)
    # the recorded log q(x) of each row is the model's own
    assert torch.allclose(r.sampling_logprobs[:, 0].double(), probs.log()[first], atol=1e-5)


def _sparse_probs(vocab: int, positions: list[int], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    probs = torch.zeros(vocab, dtype=torch.float32)
    probs[positions] = torch.rand(len(positions), generator=g) + 0.05
    return probs


@pytest.fixture(params=["one-level", "two-level"])
def draw_path(request, monkeypatch):
    """Run a test through both draws of ``inverse_cdf_draw`` (one cumulative sum over the row, or blocks)."""
    from odistill.core import sampler

    monkeypatch.setattr(sampler, "_ONE_LEVEL_MAX", 10**9 if request.param == "one-level" else 0)
    return request.param


@pytest.mark.parametrize(
    "vocab, positions, scale",
    [
        # mass on both sides of every block boundary (256, 512, 768), whole blocks empty, the last real entry
        (1000, [0, 255, 256, 257, 511, 512, 767, 768, 998, 999], 1.0),
        # one block only, the padded tail of the last block, an unnormalised total
        (300, [3, 100, 255, 256, 299], 3.0),
        # most blocks empty, mass in the first and the last
        (5000, [1, 2, 4990, 4999], 0.2),
    ],
)
def test_inverse_cdf_draw_frequencies_across_block_boundaries(vocab, positions, scale, draw_path):
    from odistill.core.sampler import inverse_cdf_draw

    probs = _sparse_probs(vocab, positions, seed=vocab) * scale
    rows = 120_000
    torch.manual_seed(11)
    tokens = inverse_cdf_draw(probs.expand(rows, -1).contiguous()).squeeze(1)
    counts = torch.bincount(tokens, minlength=vocab)
    want = probs.double() / probs.double().sum()
    assert counts[want == 0].sum() == 0, (
        f"drew tokens of probability 0: {torch.nonzero(counts * (want == 0))[:5]}"
    )
    stat, df = _chi_square(counts, want)
    assert stat < _bound(df), (stat, df)


def test_inverse_cdf_draw_handles_a_point_mass_and_tiny_probabilities(draw_path):
    from odistill.core.sampler import inverse_cdf_draw

    vocab = 1000
    probs = torch.zeros(4, vocab)
    probs[0, 999] = 1.0  # point mass on the last entry of a padded block
    probs[1, 256] = 1.0  # point mass on the first entry of a block
    probs[2] = 1e-30  # every entry tiny but positive
    probs[3, 0], probs[3, 500] = 1e-40, 1.0  # a denormal next to the mass
    torch.manual_seed(0)
    for _ in range(200):
        token = inverse_cdf_draw(probs).squeeze(1)
        assert token[0] == 999 and token[1] == 256 and 0 <= token[2] < vocab and token[3] in (0, 500)


def test_the_two_draws_pick_the_same_token_from_the_same_uniform(monkeypatch):
    """One float64 uniform per row either way, so the one-level and the two-level draw agree row by row
    (they could differ only where the uniform falls within rounding of a boundary)."""
    from odistill.core import sampler

    g = torch.Generator().manual_seed(3)
    probs = torch.softmax(3 * torch.randn(2000, 1000, generator=g), dim=-1)
    draws = {}
    for name, limit in (("one", 10**9), ("two", 0)):
        monkeypatch.setattr(sampler, "_ONE_LEVEL_MAX", limit)
        torch.manual_seed(5)
        draws[name] = sampler.inverse_cdf_draw(probs)
    assert torch.equal(draws["one"], draws["two"])
