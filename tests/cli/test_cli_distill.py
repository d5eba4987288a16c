"""`odistill distill` and `odistill demo` end to end on the shipped lab bench (a few steps)."""

from __future__ import annotations

import json

import pytest

from odistill.cli import main


def test_distill_json_reports_before_after_and_teacher(capsys):
    code = main(
        [
            "distill",
            "--task",
            "addition",
            "--steps",
            "3",
            "--batch-size",
            "8",
            "--eval-every",
            "0",
            "--lmbda",
            "1",
            "--beta",
            "1",
            "--estimator",
            "sampled",
            "--threads",
            "1",
            "--json",
        ]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("student_accuracy_before", "student_accuracy_after", "teacher_accuracy", "steps", "seconds"):
        assert key in out
    assert out["steps"] == 3 and out["task"] == "addition" and out["teacher_accuracy"] > 0.95
    assert out["config"]["estimator"] == "sampled" and out["config"]["lmbda"] == 1.0
    assert out["student_accuracy_before"] < out["teacher_accuracy"] - 0.15


def test_distill_bad_values_are_clear_errors(capsys, tmp_path):
    assert main(["distill", "--lmbda", "2", "--steps", "1"]) == 2
    assert "lmbda must be in [0, 1]" in capsys.readouterr().err
    bad = tmp_path / "c.json"
    bad.write_text("{oops")
    assert main(["distill", "--config", str(bad)]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert main(["distill", "--student", str(tmp_path / "nope"), "--steps", "1"]) == 2
    assert "nope" in capsys.readouterr().err


def test_distill_config_file_is_used_and_flags_override(capsys, tmp_path):
    from odistill import DistillConfig

    cfg = tmp_path / "c.json"
    DistillConfig(lmbda=0.0, beta=0.0, steps=2, batch_size=4, eval_every=0).save(cfg)
    assert main(["distill", "--config", str(cfg), "--steps", "1", "--threads", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["steps"] == 1 and out["config"]["lmbda"] == 0.0 and out["config"]["batch_size"] == 4


def test_distill_fused_lm_head_flag(capsys):
    assert (
        main(
            [
                "distill",
                "--fused-lm-head",
                "--steps",
                "2",
                "--batch-size",
                "4",
                "--eval-every",
                "0",
                "--threads",
                "1",
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["config"]["fused_lm_head"] is True and out["steps"] == 2
    assert main(["distill", "--fused-lm-head", "--estimator", "sampled", "--steps", "1"]) == 2
    assert "fused_lm_head" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_writes_a_table_a_plot_and_results(capsys, tmp_path):
    code = main(["demo", "--steps", "2", "--out", str(tmp_path), "--threads", "1", "--quiet"])
    assert code == 0
    out = capsys.readouterr().out
    assert "off-policy forward KL" in out and "on-policy reverse KL" in out and "teacher" in out
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["config"]["lmbda"] for r in results["runs"]] == [0.0, 1.0]
    png = (tmp_path / "accuracy_vs_step.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_the_sampled_estimator_starts_from_its_own_preset_and_preset_picks_one(capsys, monkeypatch):
    import odistill.cli.distill as distill_command

    seen = []

    def fake_run(task, *, config, **kwargs):
        seen.append(config)
        raise ValueError("stop here")

    monkeypatch.setattr(distill_command, "run_distillation", fake_run)
    assert main(["distill", "--estimator", "sampled"]) == 2
    assert main(["distill"]) == 2
    assert main(["distill", "--preset", "cookbook", "--lr", "5e-4"]) == 2
    sampled, full, cookbook = seen
    assert (sampled.estimator, sampled.batch_size, sampled.sampled_baseline, sampled.max_grad_norm) == (
        "sampled",
        256,
        "batch_mean",
        None,
    )
    assert full.estimator == "full" and full.batch_size == 64
    assert cookbook.num_generations == 4 and cookbook.adam_betas == (0.9, 0.95) and cookbook.lr == 5e-4
