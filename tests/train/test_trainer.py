"""The distill() loop: data branches, learning, skipped non-finite steps, checkpoints, bad inputs, config."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import make_tiny_llama

from odistill import ConfigError, DatasetError, DistillConfig, distill

DATA = [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a in range(20) for b in range(20)]


def _pair(tok, sharp=8.0):
    student = make_tiny_llama(len(tok), seed=0)
    teacher = make_tiny_llama(len(tok), seed=1, hidden=48)
    with torch.no_grad():  # a peaked teacher, so there is something to learn
        teacher.lm_head.weight.mul_(sharp)
    return student, teacher


def _cfg(**kw):
    base = dict(steps=6, batch_size=8, max_new_tokens=5, lr=3e-3, progress=False)
    base.update(kw)
    return DistillConfig(**base)


@pytest.mark.parametrize(
    "kw, sources",
    [
        (dict(lmbda=1.0), {"student"}),
        (dict(lmbda=0.0), {"dataset"}),
        (dict(lmbda=0.0, seq_kd=True), {"teacher"}),
        (dict(lmbda=1.0, estimator="sampled"), {"student"}),
        (dict(lmbda=0.0, seq_kd=True, estimator="sampled"), {"teacher"}),
    ],
)
def test_lambda_and_seq_kd_pick_the_right_data(char_tokenizer, kw, sources):
    student, teacher = _pair(char_tokenizer)
    result = distill(student, teacher, char_tokenizer, DATA, _cfg(**kw))
    rows = [r for r in result.history if "source" in r]
    assert len(rows) == 6 and {r["source"] for r in rows} == sources
    assert all(r["on_policy"] == (r["source"] == "student") for r in rows)
    assert all(math.isfinite(r["loss"]) and r["tokens"] > 0 for r in rows)


def test_lambda_is_the_probability_of_an_on_policy_batch(char_tokenizer):
    # the coin is a documented, seeded uniform draw per batch: on-policy iff u < λ
    import random

    student, teacher = _pair(char_tokenizer)
    cfg = _cfg(lmbda=0.25, steps=12, batch_size=2, max_new_tokens=2, seed=3)
    result = distill(student, teacher, char_tokenizer, DATA, cfg)
    coin = random.Random(cfg.seed)
    assert [r["on_policy"] for r in result.history] == [coin.random() < 0.25 for _ in range(12)]
    coin = random.Random(cfg.seed)
    assert abs(sum(coin.random() < 0.25 for _ in range(20_000)) / 20_000 - 0.25) < 0.015


def test_dataset_completions_are_used_verbatim_off_policy(char_tokenizer, monkeypatch):
    seen = []
    import odistill.train.steps as trainer_module

    original = trainer_module.rollouts_from_text

    def spy(tok, prompts, completions, **kw):
        seen.extend(zip(prompts, completions, strict=True))
        return original(tok, prompts, completions, **kw)

    monkeypatch.setattr(trainer_module, "rollouts_from_text", spy)
    student, teacher = _pair(char_tokenizer)
    distill(student, teacher, char_tokenizer, DATA, _cfg(lmbda=0.0, steps=2))
    assert len(seen) == 16 and all(str(eval(p[:-1])) == c for p, c in seen)


@pytest.mark.parametrize("estimator", ["full", "sampled"])
def test_on_policy_distillation_reduces_reverse_kl(char_tokenizer, estimator):
    student, teacher = _pair(char_tokenizer)
    result = distill(
        student,
        teacher,
        char_tokenizer,
        DATA,
        _cfg(lmbda=1.0, estimator=estimator, steps=60, batch_size=16, lr=1e-2),
    )
    rkl = [r["reverse_kl"] for r in result.history]
    first, last = sum(rkl[:8]) / 8, sum(rkl[-8:]) / 8
    assert last < 0.5 * first, (first, last)


def test_off_policy_forward_kl_reduces_loss(char_tokenizer):
    student, teacher = _pair(char_tokenizer)
    result = distill(
        student, teacher, char_tokenizer, DATA, _cfg(lmbda=0.0, beta=0.0, steps=40, batch_size=16, lr=1e-2)
    )
    loss = [r["loss"] for r in result.history]
    assert sum(loss[-8:]) / 8 < 0.7 * sum(loss[:8]) / 8


def test_same_seed_same_history(char_tokenizer):
    runs = []
    for _ in range(2):
        student, teacher = _pair(char_tokenizer)
        result = distill(student, teacher, char_tokenizer, DATA, _cfg(lmbda=0.5, steps=5))
        runs.append([(r["loss"], r["reverse_kl"], r["on_policy"]) for r in result.history])
    assert runs[0] == runs[1]


def test_eval_fn_is_called_before_during_and_after(char_tokenizer):
    calls = []

    def eval_fn(model):
        calls.append(model.training)
        return {"score": float(len(calls))}

    student, teacher = _pair(char_tokenizer)
    result = distill(student, teacher, char_tokenizer, DATA, _cfg(steps=5, eval_every=2), eval_fn=eval_fn)
    steps = [r["step"] for r in result.evals()]
    assert steps == [0, 2, 4, 5] and calls == [False] * 4
    assert [r["eval/score"] for r in result.evals()] == [1.0, 2.0, 3.0, 4.0]
    calls.clear()
    student, teacher = _pair(char_tokenizer)
    result = distill(student, teacher, char_tokenizer, DATA, _cfg(steps=3, eval_every=0), eval_fn=eval_fn)
    assert [r["step"] for r in result.evals()] == [0, 3]  # eval_every=0: before and after only


def test_grad_accumulation_counts_all_micro_batches(char_tokenizer):
    student, teacher = _pair(char_tokenizer)
    one = distill(student, teacher, char_tokenizer, DATA, _cfg(lmbda=0.0, steps=2, grad_accum=1))
    student, teacher = _pair(char_tokenizer)
    two = distill(student, teacher, char_tokenizer, DATA, _cfg(lmbda=0.0, steps=2, grad_accum=2))
    assert two.history[0]["tokens"] > one.history[0]["tokens"]


def test_non_finite_step_is_skipped_and_not_applied(char_tokenizer):
    student, teacher = _pair(char_tokenizer)
    calls = {"n": 0}

    def poison(module, args, output):  # NaN logits on the 3rd training forward only
        if torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] == 3:
                return output * float("nan")
        return output

    student.lm_head.register_forward_hook(poison)
    snapshots = []
    with pytest.warns(RuntimeWarning, match="step 3: the loss or its gradient is not finite"):
        result = distill(
            student,
            teacher,
            char_tokenizer,
            DATA,
            _cfg(lmbda=0.0, steps=5),
            callback=lambda row: snapshots.append(student.lm_head.weight.detach().clone()),
        )
    assert [r["skipped"] for r in result.history] == [False, False, True, False, False]
    assert result.skipped_steps == 1
    assert torch.equal(snapshots[1], snapshots[2])  # the poisoned step changed nothing
    assert not torch.equal(snapshots[2], snapshots[3])  # training went on
    assert all(torch.isfinite(p).all() for p in student.parameters())


def test_checkpoints_are_complete_folders(char_tokenizer, tmp_path):
    student, teacher = _pair(char_tokenizer)
    distill(student, teacher, char_tokenizer, DATA, _cfg(steps=4, save_every=2, output_dir=str(tmp_path)))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["checkpoint-000002", "checkpoint-000004"]  # no temporary leftovers
    ck = tmp_path / "checkpoint-000004"
    state = json.loads((ck / "trainer_state.json").read_text())
    assert state["step"] == 4 and len(state["history"]) == 4
    assert DistillConfig.load(ck / "distill_config.json").save_every == 2
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(ck)
    assert torch.equal(reloaded.lm_head.weight, student.lm_head.weight)


# ------------------------------------------------------------------------------------------------
# bad inputs
# ------------------------------------------------------------------------------------------------


def test_empty_dataset(char_tokenizer):
    student, teacher = _pair(char_tokenizer)
    with pytest.raises(DatasetError, match="the dataset is empty"):
        distill(student, teacher, char_tokenizer, [], _cfg())


def test_dataset_without_prompt_column_names_its_columns(char_tokenizer):
    from datasets import Dataset

    student, teacher = _pair(char_tokenizer)
    ds = Dataset.from_list([{"question": "1+1=", "answer": "2"}])
    with pytest.raises(DatasetError, match=r"no 'prompt' column \(it has \['question', 'answer'\]\)"):
        distill(student, teacher, char_tokenizer, ds, _cfg())


def test_off_policy_without_completions_is_a_clear_error(char_tokenizer):
    student, teacher = _pair(char_tokenizer)
    prompts_only = [{"prompt": "1+1="}]
    with pytest.raises(DatasetError, match="no completion column"):
        distill(student, teacher, char_tokenizer, prompts_only, _cfg(lmbda=0.5))
    distill(student, teacher, char_tokenizer, prompts_only, _cfg(lmbda=1.0, steps=1))  # fine on-policy


def test_chat_messages_dataset_works(char_tokenizer):
    from datasets import Dataset

    ds = Dataset.from_list(
        [
            {
                "messages": [
                    {"role": "user", "content": r["prompt"]},
                    {"role": "assistant", "content": r["answer"]},
                ]
            }
            for r in DATA[:50]
        ]
    )
    student, teacher = _pair(char_tokenizer)
    result = distill(student, teacher, char_tokenizer, ds, _cfg(lmbda=0.5, steps=4))
    assert len(result.history) == 4


def test_vocab_mismatch_between_student_and_teacher(char_tokenizer):
    student = make_tiny_llama(len(char_tokenizer))
    teacher = make_tiny_llama(len(char_tokenizer) - 3)
    with pytest.raises(ValueError, match=f"the student has {len(char_tokenizer)} output logits, the teacher"):
        distill(student, teacher, char_tokenizer, DATA, _cfg())


def test_prompt_longer_than_context(char_tokenizer):
    student, teacher = _pair(char_tokenizer)
    with pytest.raises(ValueError, match="exceeds the model's context window"):
        distill(student, teacher, char_tokenizer, [{"prompt": "1" * 70 + "="}], _cfg(lmbda=1.0))


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(lmbda=1.5), "lmbda must be in \\[0, 1\\]"),
        (dict(beta=-0.1), "beta must be in \\[0, 1\\]"),
        (dict(temperature=0), "temperature must be a finite number > 0"),
        (dict(loss_temperature=-1.0), "loss_temperature must be a finite number > 0"),
        (dict(steps=0), "steps must be an integer >= 1"),
        (dict(batch_size=2.5), "batch_size must be an integer"),
        (dict(estimator="magic"), r"estimator must be one of \['full', 'sampled'\]"),
        (dict(estimator="sampled", lmbda=0.5), "estimator='sampled' needs"),
        (dict(save_every=5), "save_every > 0 needs an output_dir"),
        (dict(teacher_top_k=0), "teacher_top_k must be an integer >= 1"),
        (dict(top_p=0.0), "top_p must be in \\(0, 1\\]"),
    ],
)
def test_invalid_config_values(kw, message):
    with pytest.raises(ConfigError, match=message):
        DistillConfig(**kw)


def test_config_files_round_trip_and_bad_files(tmp_path):
    cfg = DistillConfig(lmbda=0.5, beta=0.0, steps=7)
    cfg.save(tmp_path / "c.json")
    assert DistillConfig.load(tmp_path / "c.json") == cfg
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        DistillConfig.load(tmp_path / "bad.json")
    (tmp_path / "typo.json").write_text('{"lambda": 0.5}')
    with pytest.raises(ConfigError, match=r"unknown DistillConfig fields \['lambda'\]"):
        DistillConfig.load(tmp_path / "typo.json")
    with pytest.raises(FileNotFoundError):
        DistillConfig.load(tmp_path / "missing.json")


def test_describe_and_presets():
    assert (
        DistillConfig(lmbda=0.0, beta=0.0).describe()
        == "off-policy (λ=0) · forward KL (β=0) · full estimator"
    )
    assert DistillConfig(lmbda=1.0, estimator="sampled").describe().startswith("on-policy (λ=1) · reverse KL")
    assert DistillConfig.preset("tiny-cpu", steps=3).steps == 3
    with pytest.raises(ConfigError, match="unknown preset"):
        DistillConfig.preset("huge")


@pytest.mark.parametrize(
    "kw, rows_per_batch",
    [(dict(lmbda=1.0), 12), (dict(lmbda=0.0, seq_kd=True), 12), (dict(lmbda=0.0), 4)],
    ids=["on-policy", "seq_kd", "dataset"],
)
def test_num_generations_samples_each_prompt_that_many_times_prompt_major(
    char_tokenizer, monkeypatch, kw, rows_per_batch
):
    import odistill.train.trainer as trainer

    seen, real = [], trainer.make_rollouts

    def spy(state, step, micro):
        rollouts = real(state, step, micro)
        seen.append(rollouts)
        return rollouts

    monkeypatch.setattr(trainer, "make_rollouts", spy)
    student, teacher = _pair(char_tokenizer)
    distill(student, teacher, char_tokenizer, DATA, _cfg(steps=2, batch_size=4, num_generations=3, **kw))
    assert [len(r) for r in seen] == [rows_per_batch] * 2
    if rows_per_batch == 12:  # prompt-major: rows 3i, 3i+1, 3i+2 share prompt i
        for r in seen:
            assert r.prompt_index.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
            assert all(r.prompts[3 * i] == r.prompts[3 * i + j] for i in range(4) for j in range(3))
            assert len({r.prompts[0], r.prompts[3], r.prompts[6], r.prompts[9]}) > 1
