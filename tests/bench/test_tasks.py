"""Tasks: deterministic generators, disjoint splits, and verifiers that are right on any completion."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from odistill.bench.tasks import Addition, Permutations, Sorting, Task, get_task, list_tasks, split_of

TASK_NAMES = ["addition", "permutations", "sorting"]


def test_registry_lists_the_tasks_and_rejects_unknown_names():
    assert set(TASK_NAMES) <= set(list_tasks())
    for name in TASK_NAMES:
        task = get_task(name)
        assert isinstance(task, Task) and task.name == name
    with pytest.raises(ValueError, match="addition"):  # the error lists the known tasks
        get_task("multiplication")
    task = get_task("addition", digits=2)
    assert get_task(task) is task and task.digits == 2


@pytest.mark.parametrize("name", TASK_NAMES)
def test_make_dataset_is_deterministic_by_seed(name):
    task = get_task(name)
    a = task.make_dataset(40, seed=3).to_dict()
    b = get_task(name).make_dataset(40, seed=3).to_dict()
    c = task.make_dataset(40, seed=4).to_dict()
    assert a == b
    assert a["prompt"] != c["prompt"]
    assert len(set(a["prompt"])) == 40  # distinct prompts


@pytest.mark.parametrize("name", TASK_NAMES)
def test_dataset_columns_and_chat_messages(name):
    task = get_task(name)
    data = task.make_dataset(10, seed=0, split="test")
    assert {"prompt", "answer", "messages"} <= set(data.column_names)
    for row in data:
        assert row["messages"] == [
            {"role": "user", "content": row["prompt"]},
            {"role": "assistant", "content": row["answer"]},
        ]
        assert set(row["prompt"] + row["answer"]) <= set(task.symbols)
        assert len(row["answer"]) + 1 <= task.max_new_tokens  # answer + EOS fits


@pytest.mark.parametrize("name", TASK_NAMES)
def test_train_and_test_prompts_never_overlap(name):
    task = get_task(name)
    train = set(task.make_dataset(3000, seed=0, split="train")["prompt"])
    test = set(task.make_dataset(500, seed=0, split="test")["prompt"]) | set(
        task.sample_prompts(500, seed=7, split="test")
    )
    assert not train & test
    assert all(split_of(p) == "train" for p in train) and all(split_of(p) == "test" for p in test)
    with pytest.raises(ValueError, match="split"):
        task.make_dataset(1, split="validation")


@pytest.mark.parametrize("name", TASK_NAMES)
def test_reference_answers_score_one_and_corruptions_score_zero(name):
    task = get_task(name)
    rng = random.Random(0)
    for row in task.make_dataset(50, seed=1):
        prompt, answer = row["prompt"], row["answer"]
        assert task.score(prompt, answer) == 1.0
        assert all(task.score(prompt, ref) == 1.0 for ref in task.reference_answers(prompt))
        for wrong in (answer[:-1], answer + answer[-1], "", answer + "=", " " + answer):
            assert task.score(prompt, wrong) == 0.0, (prompt, wrong)
        i = rng.randrange(len(answer))  # change one character to another symbol of the task
        other = rng.choice([c for c in task.symbols if c != answer[i] and c not in answer])
        assert task.score(prompt, answer[:i] + other + answer[i + 1 :]) == 0.0


def test_addition_answers_are_right():
    task = Addition()
    assert task.sample_answer("023+456=") == "0479"
    assert task.sample_answer("999+999=") == "1998"
    assert task.score("000+000=", "0000") == 1.0 and task.score("000+000=", "000") == 0.0
    reversed_task = Addition(digits=4, reverse=True)
    assert reversed_task.sample_answer("4321+8765=") == "21960"  # 1234 + 5678 = 06912
    for prompt in reversed_task.sample_prompts(20, seed=0):
        a, b = int(prompt[:4][::-1]), int(prompt[5:9][::-1])
        assert int(reversed_task.sample_answer(prompt)[::-1]) == a + b
    with pytest.raises(ValueError, match="addition prompt"):
        task.score("12+3=", "15")  # a malformed prompt is the caller's bug: say so


def test_permutations_has_many_answers():
    task = Permutations()
    assert task.is_multi_answer
    refs = task.reference_answers("qxbfa=")
    assert len(refs) == 120 == len(set(refs))
    answers = set(task.make_dataset(300, seed=0)["answer"])
    assert len(answers) > 250  # training answers are random orderings, not a canonical one
    assert task.score("qxbfa=", "abfqx") == task.score("qxbfa=", "xqfba") == 1.0
    assert task.score("qxbfa=", "abfqz") == 0.0


def test_sorting_scores_validity_and_teaches_recovery():
    task = Sorting(length=5)
    assert task.sample_answer("edcba=") == "abcde"
    assert task.score("edcba=", "abced") == 1.0 and not task.is_sorted_answer("edcba=", "abced")
    assert task.recover("edcba=", "ac") == "bde"
    data = task.make_sft_dataset(400, seed=0, role="teacher")
    starts = data["loss_start"]
    assert 0.3 < sum(s > 0 for s in starts) / len(starts) < 0.7  # about corrupt_fraction = 0.5
    for prompt, answer, start in zip(data["prompt"], data["answer"], starts, strict=True):
        assert task.score(prompt, answer) == 1.0
        assert answer[start:] == task.recover(prompt, answer[:start])  # the loss part is the recovery
    assert "loss_start" not in task.make_sft_dataset(10, role="student").column_names


@pytest.mark.parametrize("name", TASK_NAMES)
@settings(max_examples=60, deadline=None)
@given(completion=st.text(max_size=20) | st.text(alphabet="0123456789+=abcdexyz<>", max_size=12))
def test_verifiers_never_raise_on_malformed_completions(name, completion):
    task = get_task(name)
    prompt = task.sample_prompts(1, seed=0)[0]
    score = task.score(prompt, completion)
    if name == "addition":  # an independent oracle for each verifier
        a, b = prompt[:-1].split("+")
        expected = completion == f"{int(a) + int(b):04d}"
    else:
        expected = sorted(completion) == sorted(prompt[:-1])
    assert score == (1.0 if expected else 0.0)
    for answer in task.reference_answers(prompt)[:3]:  # and the right answer with junk around it
        assert task.score(prompt, answer + completion) == (1.0 if completion == "" else 0.0)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_verifiers_accept_non_strings(name):
    task = get_task(name)
    prompt = task.sample_prompts(1, seed=0)[0]
    for junk in (None, 42, ["a"], b"0479"):
        assert task.score(prompt, junk) == 0.0


def test_permutation_validity_is_exactly_a_rearrangement():
    task = Permutations(length=3)
    prompt = "cab="
    valid = {"".join(p) for p in itertools.permutations("abc")}
    for n in range(5):
        for letters in itertools.product("abcd", repeat=n):
            text = "".join(letters)
            assert task.score(prompt, text) == (1.0 if text in valid else 0.0)
