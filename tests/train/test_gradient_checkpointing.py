"""Gradient checkpointing: the same training as without it, the layers really recomputed in the backward
pass, and sampling still served from the KV cache (one new position per decoding call)."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_tiny_llama

from odistill import ConfigError, DistillConfig, distill, sample
from odistill.train.trainer import enable_gradient_checkpointing

DATA = [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a in range(20) for b in range(20)]


def config(**kw):
    base = dict(steps=3, batch_size=6, max_new_tokens=5, lr=3e-3, progress=False, seed=3)
    return DistillConfig(**{**base, **kw})


def count_layer_calls(model):
    """A list that receives the sequence length of every run of the first layer's MLP (its ``forward``
    is wrapped: a recomputation in the backward pass calls it again without the module's hooks)."""
    calls, mlp = [], model.model.layers[0].mlp
    forward = mlp.forward

    def counted(x, *args, **kwargs):
        calls.append(x.shape[1])
        return forward(x, *args, **kwargs)

    mlp.forward = counted
    return calls


@pytest.mark.filterwarnings("ignore:step 1.*reached max_new_tokens:RuntimeWarning")
@pytest.mark.parametrize(
    "kw", [dict(), dict(estimator="sampled"), dict(lmbda=0.0)], ids=["full", "sampled", "dataset"]
)
def test_the_same_losses_and_weights_with_and_without_checkpointing(char_tokenizer, kw):
    student = make_tiny_llama(len(char_tokenizer), seed=0, layers=2)
    teacher = make_tiny_llama(len(char_tokenizer), seed=1, hidden=48)
    runs = {}
    for on in (False, True):
        runs[on] = distill(
            copy.deepcopy(student), teacher, char_tokenizer, DATA, config(gradient_checkpointing=on, **kw)
        )
    for a, b in zip(runs[False].history, runs[True].history, strict=True):
        assert abs(a["loss"] - b["loss"]) <= 1e-5 and abs(a["grad_norm"] - b["grad_norm"]) <= 1e-5
    for p, q in zip(runs[False].student.parameters(), runs[True].student.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-5, rtol=0)
    student = runs[True].student
    assert getattr(student, "is_activation_checkpointing", None) or student.is_gradient_checkpointing


@pytest.mark.filterwarnings("ignore:step 1.*reached max_new_tokens:RuntimeWarning")
def test_layers_are_recomputed_in_training_and_sampling_keeps_its_cache(char_tokenizer):
    teacher = make_tiny_llama(len(char_tokenizer), seed=1, hidden=48)
    counts = {}
    for on in (False, True):
        student = make_tiny_llama(len(char_tokenizer), seed=0, layers=2)
        calls = count_layer_calls(student)
        distill(student, teacher, char_tokenizer, DATA, config(steps=1, gradient_checkpointing=on))
        counts[on] = len(calls)
        # sampling: one prefill over the prompts, then one new position per call (the KV cache)
        del calls[:]
        student.train()
        sample(student, char_tokenizer, ["1+2=", "13+4="], max_new_tokens=4, seed=0)
        assert calls[0] > 1 and set(calls[1:]) == {1}, calls
        assert student.training  # the sampler puts train mode back
    assert counts[True] == counts[False] + 1  # the training forward ran once more, in the backward pass


def test_a_model_without_checkpointing_is_refused():
    with pytest.raises(ConfigError, match="gradient_checkpointing_enable"):
        enable_gradient_checkpointing(torch.nn.Linear(2, 2))
