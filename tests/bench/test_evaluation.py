"""Generation and evaluation: batched = one by one, seeded sampling, and the shipped teachers/students."""

from __future__ import annotations

import pytest
import torch

from odistill.bench.evaluation import evaluate, generate_completions
from odistill.bench.models import load_model
from odistill.bench.tasks import get_task

TASKS = ["addition", "permutations", "sorting"]


@pytest.fixture(scope="module")
def addition_teacher():
    return load_model("addition-teacher")


def test_greedy_batched_equals_one_by_one_even_with_padding(addition_teacher):
    model, tok = addition_teacher
    task = get_task("addition")
    prompts = task.sample_prompts(6, seed=0, split="test") + ["1+2=", "45+9="]  # two shorter, left-padded
    batched = generate_completions(model, tok, prompts, max_new_tokens=task.max_new_tokens, batch_size=8)
    single = [generate_completions(model, tok, [p], max_new_tokens=task.max_new_tokens)[0] for p in prompts]
    assert batched == single
    assert all(task.score(p, c[0]) == 1.0 for p, c in zip(prompts[:6], batched[:6], strict=True))


def test_sampling_is_seeded_and_leaves_global_rng_alone():
    model, tok = load_model("permutations-teacher")
    prompts = get_task("permutations").sample_prompts(4, seed=0, split="test")
    state = torch.random.get_rng_state()
    a = generate_completions(model, tok, prompts, max_new_tokens=6, temperature=1.0, num_samples=8, seed=1)
    b = generate_completions(model, tok, prompts, max_new_tokens=6, temperature=1.0, num_samples=8, seed=1)
    c = generate_completions(model, tok, prompts, max_new_tokens=6, temperature=1.0, num_samples=8, seed=2)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert a == b and a != c
    assert [len(group) for group in a] == [8] * 4
    assert len({s for group in a for s in group}) > 8  # a multimodal teacher samples different orderings
    with pytest.raises(ValueError, match="temperature"):
        generate_completions(model, tok, prompts, max_new_tokens=6, num_samples=2)


def test_completions_stop_at_eos_and_keep_other_special_tokens():
    model, tok = load_model("addition-student")
    prompts = get_task("addition").sample_prompts(64, seed=0, split="test")
    for group in generate_completions(model, tok, prompts, max_new_tokens=12, temperature=1.0, num_samples=2):
        for text in group:
            assert "<eos>" not in text and "<pad>" not in text


@pytest.mark.parametrize("task_name", TASKS)
def test_shipped_teacher_is_accurate_and_student_clearly_worse(task_name):
    task = get_task(task_name)
    teacher, tok = load_model(f"{task_name}-teacher")
    student, _ = load_model(f"{task_name}-student")
    t = evaluate(teacher, tok, task, n=500, seed=0, samples_per_prompt=4 if task.is_multi_answer else None)
    s = evaluate(student, tok, task, n=500, seed=0, samples_per_prompt=4 if task.is_multi_answer else None)
    assert t["n"] == s["n"] == 500
    assert t["accuracy"] >= 0.95, t
    assert s["accuracy"] <= t["accuracy"] - 0.15, (t["accuracy"], s["accuracy"])
    if task.is_multi_answer:
        assert t["sampled_validity"] >= 0.9
        assert t["sampled_validity"] >= s["sampled_validity"] + 0.15
        assert 1.0 < t["distinct_valid"] <= t["samples_per_prompt"]  # the teacher is multimodal


def test_evaluate_reports_what_it_promises(addition_teacher):
    model, tok = addition_teacher
    result = evaluate(model, tok, "addition", n=50, samples_per_prompt=2, seed=3)
    assert {"task", "n", "accuracy", "temperature", "sampled_validity", "distinct_valid", "examples"} <= set(
        result
    )
    assert result["n"] == 50 and 0.0 <= result["accuracy"] <= 1.0
    assert result["distinct_valid"] <= 1.0  # one correct answer per prompt
    again = evaluate(model, tok, "addition", n=50, samples_per_prompt=2, seed=3)
    assert again["accuracy"] == result["accuracy"] and again["sampled_validity"] == result["sampled_validity"]
