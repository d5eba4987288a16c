"""Interrupted runs resume to the same numbers as uninterrupted ones (CPU, same seed)."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_llama

from odistill import DistillConfig, distill
from odistill.train.trainer import latest_checkpoint

DATA = [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a in range(20) for b in range(20)]


def _models(tok):
    student = make_tiny_llama(len(tok), seed=0)
    teacher = make_tiny_llama(len(tok), seed=1, hidden=48)
    with torch.no_grad():
        teacher.lm_head.weight.mul_(8.0)
    return student, teacher


def _cfg(out, **kw):
    base = dict(
        lmbda=0.5,
        steps=6,
        batch_size=8,
        max_new_tokens=5,
        lr=3e-3,
        progress=False,
        save_every=2,
        output_dir=str(out),
        seed=5,
    )
    base.update(kw)
    return DistillConfig(**base)


def _numbers(history):
    return [(r["step"], r["loss"], r["reverse_kl"], r["on_policy"]) for r in history if "loss" in r]


class _Stop(KeyboardInterrupt):
    pass


@pytest.mark.parametrize("stop_at", [3, 4])
def test_ctrl_c_saves_and_resume_reproduces_the_uninterrupted_run(char_tokenizer, tmp_path, stop_at):
    student, teacher = _models(char_tokenizer)
    full = distill(student, teacher, char_tokenizer, DATA, _cfg(tmp_path / "full"))
    final_weights = [p.detach().clone() for p in full.student.parameters()]

    student, teacher = _models(char_tokenizer)

    def interrupt(row):  # Ctrl-C right after step `stop_at` finished
        if row["step"] == stop_at:
            raise _Stop()

    with pytest.warns(UserWarning, match=f"interrupted: saved a checkpoint of step {stop_at}"):
        with pytest.raises(KeyboardInterrupt):
            distill(student, teacher, char_tokenizer, DATA, _cfg(tmp_path / "cut"), callback=interrupt)
    assert latest_checkpoint(tmp_path / "cut").name == f"checkpoint-{stop_at:06d}"

    student, teacher = _models(char_tokenizer)  # a fresh process would start from scratch weights
    resumed = distill(
        student, teacher, char_tokenizer, DATA, _cfg(tmp_path / "cut"), resume_from=tmp_path / "cut"
    )
    assert _numbers(resumed.history) == _numbers(full.history)
    for a, b in zip(final_weights, resumed.student.parameters(), strict=True):
        assert torch.equal(a, b)


def test_resume_from_nothing_is_a_clear_error(char_tokenizer, tmp_path):
    student, teacher = _models(char_tokenizer)
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume from"):
        distill(student, teacher, char_tokenizer, DATA, _cfg(tmp_path), resume_from=tmp_path / "empty")
