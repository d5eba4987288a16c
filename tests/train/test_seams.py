"""The seams and registries: a Teacher that is not a module, the divergence registry end to end, config help
text in one place, schedules shared by distill and SFT, loggers, the thread policy, old module paths."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings
from dataclasses import fields

import pytest
import torch
from conftest import make_tiny_llama

from odistill import DIVERGENCES, DistillConfig, TeacherScorer, distill, distillation_loss, sample
from odistill.cli import build_parser
from odistill.core.teacher import Teacher
from odistill.train.config import SECTIONS, field_choices
from odistill.train.runtime import cpu_threads
from odistill.train.schedules import SCHEDULES, lr_factor, make_scheduler

DATA = [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a in range(20) for b in range(20)]


def _cfg(**kw):
    base = dict(steps=4, batch_size=6, max_new_tokens=4, lr=3e-3, progress=False, device="cpu")
    base.update(kw)
    return DistillConfig(**base)


class _ElsewhereTeacher:
    """A teacher that is not a torch.nn.Module: it only answers score() (as a served teacher would)."""

    def __init__(self, model, vocab_size):
        self._local = TeacherScorer(model, vocab_size=vocab_size)
        self.vocab_size = vocab_size
        self.calls = []

    def score(self, rollouts, mode="sampled", *, k=None):
        self.calls.append(mode)
        scores = self._local.score(rollouts.to("cpu"), mode, k=k)
        return scores.to(rollouts.input_ids.device)


@pytest.mark.parametrize("estimator", ["full", "sampled"])
def test_a_teacher_that_is_not_a_module_trains_exactly_like_the_model(char_tokenizer, estimator):
    v = len(char_tokenizer)
    runs = []
    for wrap in (False, True):
        student, teacher = make_tiny_llama(v, seed=0), make_tiny_llama(v, seed=1, hidden=48)
        given = _ElsewhereTeacher(teacher, v) if wrap else teacher
        result = distill(student, given, char_tokenizer, DATA, _cfg(estimator=estimator))
        runs.append(
            ([r["loss"] for r in result.history], [p.detach().clone() for p in result.student.parameters()])
        )
        if wrap:
            assert isinstance(given, Teacher) and set(given.calls) == {
                "full" if estimator == "full" else "sampled"
            }
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1], strict=True))


def test_a_remote_style_teacher_is_checked_before_training(char_tokenizer):
    v = len(char_tokenizer)
    student, teacher = make_tiny_llama(v, seed=0), make_tiny_llama(v, seed=1)
    with pytest.raises(TypeError, match="has no sample\\(\\), which this config needs \\(seq_kd=True\\)"):
        distill(student, _ElsewhereTeacher(teacher, v), char_tokenizer, DATA, _cfg(lmbda=0.0, seq_kd=True))
    with pytest.raises(
        ValueError, match="vocabularies differ: the student has 16 output logits, the teacher 10"
    ):
        distill(student, _ElsewhereTeacher(teacher, 10), char_tokenizer, DATA, _cfg())
    with pytest.raises(TypeError, match="neither a torch.nn.Module nor a Teacher"):
        distill(student, object(), char_tokenizer, DATA, _cfg())


def test_every_registered_divergence_reaches_the_loss_config_and_cli():
    g = torch.Generator().manual_seed(0)
    s, t = (
        torch.randn(2, 3, 9, generator=g, dtype=torch.float64),
        torch.randn(2, 3, 9, generator=g, dtype=torch.float64),
    )
    mask = torch.tensor([[True, True, False], [True, False, True]])
    distill_action = next(
        a
        for a in build_parser()._subparsers._group_actions[0].choices["distill"]._actions
        if a.dest == "divergence"
    )
    assert set(distill_action.choices) == set(DIVERGENCES)
    for name, spec in DIVERGENCES.items():
        params = {} if spec.param is None else {spec.param: 0.3}
        want = spec.function(s, t, mask, chunk_size=None, **params)
        got = distillation_loss(s, t, mask, divergence=name, beta=0.3, alpha=0.3)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        config = DistillConfig(divergence=name, beta=0.3, skew_alpha=0.3)
        assert config.describe().split(" · ")[1] == spec.describe(0.3 if spec.param else None)
    assert DistillConfig(divergence="jsd", beta=0.0).describe().split(" · ")[1] == "forward KL (β=0)"
    assert DistillConfig(divergence="skew_forward_kl", skew_alpha=0.0).effective_beta == 0.0
    assert DistillConfig(divergence="total_variation").effective_beta is None


def test_each_config_field_has_its_help_once_and_the_cli_shows_it():
    distill_parser = build_parser()._subparsers._group_actions[0].choices["distill"]
    actions = {a.dest: a for a in distill_parser._actions}
    table = DistillConfig.describe_fields()
    for f in fields(DistillConfig):
        assert f.metadata["help"] and f.metadata["section"] in SECTIONS, f.name
        assert f.name in table and f.metadata["help"] in table
        if f.metadata["cli"]:
            assert actions[f.name].help.startswith(f.metadata["help"]), f.name
            if field_choices(f):
                assert set(actions[f.name].choices) == set(field_choices(f))
    assert "(tiny-cpu preset: 150)" in actions["steps"].help  # read from PRESETS, not typed


def test_distill_help_runs_as_a_module():
    out = subprocess.run(
        [sys.executable, "-m", "odistill.cli", "distill", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "--divergence" in out.stdout and "DistillConfig: sampling" in out.stdout


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedules_match_their_formula_and_the_scheduler(name):
    total, warmup = 10, 3
    formula = {
        "constant": lambda p: 1.0,
        "cosine": lambda p: 0.5 * (1 + math.cos(math.pi * p)),
        "linear": lambda p: 1 - p,
    }[name]
    expected = [
        (s + 1) / warmup if s < warmup else formula((s - warmup) / (total - warmup)) for s in range(total)
    ]
    got = [lr_factor(name, s, total, warmup) for s in range(total)]
    assert got == pytest.approx(expected, abs=1e-12)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    scheduler = make_scheduler(optimizer, name, total, warmup)
    lrs = []
    for _ in range(total):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([2.0 * x for x in expected], abs=1e-12)
    with pytest.raises(ValueError, match="unknown learning-rate schedule"):
        lr_factor("triangle", 0, 10)


def test_sft_and_distill_share_the_schedule_registry(char_tokenizer):
    from odistill import train_sft

    model = make_tiny_llama(len(char_tokenizer), seed=0)
    data = {"prompt": ["1+2="] * 8, "answer": ["3"] * 8}
    with pytest.raises(ValueError, match="schedule must be one of \\['constant', 'cosine', 'linear'\\]"):
        train_sft(model, char_tokenizer, data, steps=2, batch_size=4, schedule="triangle", progress=False)
    history = train_sft(model, char_tokenizer, data, steps=2, batch_size=4, schedule="linear", progress=False)
    assert len(history["loss"]) == 2


def test_jsonl_logger_writes_every_history_row(char_tokenizer, tmp_path):
    v = len(char_tokenizer)
    student, teacher = make_tiny_llama(v, seed=0), make_tiny_llama(v, seed=1)
    seen = []
    result = distill(
        student,
        teacher,
        char_tokenizer,
        DATA,
        _cfg(report_to=["jsonl"], output_dir=str(tmp_path)),
        eval_fn=lambda m: {"x": 1.0},
        callback=seen.append,
    )
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [r["step"] for r in result.history] == [0, 1, 2, 3, 4]
    assert rows[1]["loss"] == pytest.approx(result.history[1]["loss"]) and rows[0]["eval/x"] == 1.0
    assert seen == result.history
    with pytest.raises(ValueError, match="report_to 'jsonl' needs an output_dir"):
        DistillConfig(report_to=["jsonl"])
    with pytest.raises(ValueError, match="report_to must be a list of logger names"):
        DistillConfig(report_to=["tensorboard-please"])


def test_cpu_threads_policy_restores_the_thread_count(monkeypatch):
    before = torch.get_num_threads()
    with cpu_threads(1) as n:
        assert n == torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    with cpu_threads(parameters=5_000_000) as n:  # a lab-bench-sized model: one thread
        assert n == 1
    with cpu_threads(parameters=500_000_000) as n:  # a big one: torch's own count, untouched
        assert n == before
    with cpu_threads(3, parameters=5_000_000) as n:  # an explicit count wins
        assert n == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    with cpu_threads(parameters=5_000_000) as n:  # OMP_NUM_THREADS is the user's choice: respected
        assert n == before
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads must be an integer >= 1"):
        with cpu_threads(0):
            pass


def test_distill_reports_the_thread_policys_choice(char_tokenizer, monkeypatch, capsys):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    v = len(char_tokenizer)
    seen = []
    cfg = _cfg(steps=1, progress=True)
    result = distill(
        make_tiny_llama(v, seed=0),
        make_tiny_llama(v, seed=1),
        char_tokenizer,
        DATA,
        cfg,
        callback=lambda row: seen.append(torch.get_num_threads()),
    )
    assert result.threads == 1 and seen == [1]  # tiny models: one thread inside the loop
    assert "1 CPU thread" in capsys.readouterr().err  # the progress bar says so
    result = distill(
        make_tiny_llama(v, seed=0), make_tiny_llama(v, seed=1), char_tokenizer, DATA, _cfg(steps=1, threads=2)
    )
    assert result.threads == 2


def test_evaluation_measures_with_the_training_sampler():
    from odistill import generate_completions, load_model

    model, tok = load_model("permutations-teacher")
    prompts = ["cab:", "dcab:", "ba:"]
    texts = generate_completions(
        model, tok, prompts, max_new_tokens=6, temperature=1.0, num_samples=3, seed=7
    )
    rollouts = sample(
        model, tok, prompts, n=3, max_new_tokens=6, temperature=1.0, seed=7, keep_special_tokens=True
    )
    assert [t for group in texts for t in group] == rollouts.texts


def test_keep_special_tokens_keeps_what_a_verifier_must_see(char_tokenizer):
    model = make_tiny_llama(len(char_tokenizer), seed=3)  # untrained: writes special tokens often
    prompts = [f"{a}+{a}=" for a in range(16)]
    kept = sample(model, char_tokenizer, prompts, max_new_tokens=8, seed=0, keep_special_tokens=True)
    plain = sample(model, char_tokenizer, prompts, max_new_tokens=8, seed=0)
    assert torch.equal(kept.input_ids, plain.input_ids)
    specials = ("<bos>", "<unk>", "<pad>")
    assert any(s in text for text in kept.texts for s in specials)
    assert not any(s in text for text in plain.texts for s in specials)
    for a, b in zip(kept.texts, plain.texts, strict=True):
        stripped = a
        for s in specials:
            stripped = stripped.replace(s, "")
        assert stripped == b and "<eos>" not in a


def test_old_module_paths_still_import_with_a_warning():
    import odistill.train.trainer as new

    sys.modules.pop("odistill.trainer", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import odistill.trainer as old
    assert old is new and old.__spec__.name == "odistill.train.trainer"
    assert any("odistill.trainer moved to odistill.train.trainer" in str(w.message) for w in caught)


def test_forward_and_backward_run_inside_gradient_sync(char_tokenizer, monkeypatch):
    """DDP synchronises gradients unless the forward pass too runs inside no_sync: check the order."""
    import contextlib

    import odistill.train.trainer as trainer

    inside, seen = [], []
    real_sync, real_loss = trainer.gradient_sync, trainer.loss_and_metrics

    @contextlib.contextmanager
    def sync(state, *, last):
        inside.append(last)
        with real_sync(state, last=last):
            yield
        inside.pop()

    def loss(state, rollouts, scores):
        seen.append(list(inside))
        return real_loss(state, rollouts, scores)

    monkeypatch.setattr(trainer, "gradient_sync", sync)
    monkeypatch.setattr(trainer, "loss_and_metrics", loss)
    v = len(char_tokenizer)
    distill(
        make_tiny_llama(v, seed=0),
        make_tiny_llama(v, seed=1),
        char_tokenizer,
        DATA,
        _cfg(steps=2, grad_accum=3),
    )
    assert seen == [[False], [False], [True]] * 2  # no sync on the first two micro-batches, sync on the last


def test_jsonl_logger_continues_a_resumed_run_without_duplicates(char_tokenizer, tmp_path):
    v = len(char_tokenizer)
    cfg = _cfg(steps=4, save_every=2, report_to=["jsonl"], output_dir=str(tmp_path))
    distill(make_tiny_llama(v, seed=0), make_tiny_llama(v, seed=1), char_tokenizer, DATA, cfg)
    rows = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == [1, 2, 3, 4]
    distill(
        make_tiny_llama(v, seed=0),
        make_tiny_llama(v, seed=1),
        char_tokenizer,
        DATA,
        cfg,
        resume_from=tmp_path / "checkpoint-000002",
    )
    again = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in again] == [1, 2, 3, 4]
    assert again[:2] == rows[:2]


def test_names_that_moved_module_are_reachable_from_the_old_path():
    from odistill.core.forward import completion_logits
    from odistill.core.fused import fused_linear_divergence
    from odistill.core.tensor_ops import token_log_probs

    for old in ("odistill.divergences", "odistill.chunked", "odistill.rollouts"):
        sys.modules.pop(old, None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from odistill.chunked import fused_linear_divergence as old_fused
        from odistill.divergences import token_log_probs as old_token_log_probs
        from odistill.rollouts import completion_logits as old_completion_logits
    assert old_fused is fused_linear_divergence and old_token_log_probs is token_log_probs
    assert old_completion_logits is completion_logits


def _dropout_llama(vocab_size: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        attention_dropout=0.5,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaForCausalLM(config)


@pytest.mark.parametrize("disable", [True, False])
def test_student_dropout_is_off_in_the_loop(char_tokenizer, monkeypatch, disable):
    """With dropout on, the training forward pass is not the distribution that sampled the tokens: the
    importance ratio p_θ/q of the sampled estimator drifts from 1 on-policy at temperature 1."""
    import odistill.train.steps as steps

    gaps = []
    real = steps.sampled_token_loss

    def spy(student_lp, teacher_lp, sampling_lp, mask, **kw):
        gaps.append(float((student_lp.detach() - sampling_lp).abs()[mask].max()))
        return real(student_lp, teacher_lp, sampling_lp, mask, **kw)

    monkeypatch.setattr(steps, "sampled_token_loss", spy)
    v = len(char_tokenizer)
    student = _dropout_llama(v)
    cfg = _cfg(estimator="sampled", steps=2, disable_dropout=disable)
    result = distill(student, make_tiny_llama(v, seed=1), char_tokenizer, DATA, cfg)
    if disable:
        assert max(gaps) < 1e-5  # ratio 1: the same distribution sampled and trained on
        batch = torch.randint(3, v, (4, 6))
        result.student.train()
        with torch.no_grad():
            a, b = result.student(batch).logits, result.student(batch).logits
        assert torch.equal(a, b)  # two forward passes of one batch agree in train mode
        assert result.student.config.attention_dropout == 0.5  # the user's config is left alone
    else:
        assert max(gaps) > 1e-2  # control: with dropout on, the ratio drifts (the check above has power)


def test_adam_settings_and_save_total_limit_reach_the_run(char_tokenizer, tmp_path):
    v = len(char_tokenizer)
    cfg = _cfg(
        steps=5,
        save_every=1,
        save_total_limit=2,
        output_dir=str(tmp_path),
        adam_betas=(0.9, 0.95),
        adam_eps=1e-6,
    )
    distill(make_tiny_llama(v, seed=0), make_tiny_llama(v, seed=1), char_tokenizer, DATA, cfg)
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-000004", "checkpoint-000005"]
    state = torch.load(tmp_path / "checkpoint-000005" / "trainer_state.pt", weights_only=False)
    group = state["optimizer"]["param_groups"][0]
    assert tuple(group["betas"]) == (0.9, 0.95) and group["eps"] == 1e-6
    saved = DistillConfig.load(tmp_path / "checkpoint-000005" / "distill_config.json")
    assert saved.adam_betas == (0.9, 0.95) and saved == cfg  # JSON round trip keeps the tuple
    with pytest.raises(ValueError, match="adam_betas must be two numbers in \\[0, 1\\)"):
        DistillConfig(adam_betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="save_total_limit must be an integer >= 1 or None"):
        DistillConfig(save_total_limit=0)


def test_one_process_can_train_in_bf16_then_in_float32():
    """accelerate refuses a second Accelerator with another precision unless its state is reset."""
    from odistill.train.runtime import make_accelerator

    assert make_accelerator("cpu", "bf16").mixed_precision == "bf16"
    assert make_accelerator("cpu", "no").mixed_precision == "no"
    assert make_accelerator("cpu", "no").mixed_precision == "no"
