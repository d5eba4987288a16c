"""The ``odistill`` command: help, eval (text and JSON), train-teacher, and clean errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from odistill.bench.models import load_model, read_metadata
from odistill.cli import main


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "train-teacher" in out and "eval" in out and "addition-teacher" in out
    assert main([]) == 1  # no command: print help, fail


def test_eval_json_prints_one_object(capsys):
    assert main(["eval", "--task", "addition", "--json", "--n", "100"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"task", "model", "accuracy", "n"} <= set(result)
    assert result["task"] == "addition" and result["model"] == "addition-teacher" and result["n"] == 100
    assert result["accuracy"] >= 0.95


def test_eval_text_for_a_multi_answer_task(capsys):
    assert main(["eval", "--task", "permutations", "--model", "permutations-student", "--n", "50"]) == 0
    out = capsys.readouterr().out
    assert "permutations-student on permutations: accuracy" in out and "distinct valid" in out


def test_eval_with_a_missing_model_fails_cleanly(capsys, tmp_path):
    assert main(["eval", "--task", "addition", "--model", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "error" in err and "addition-teacher" in err  # says what exists


def test_train_teacher_writes_a_loadable_checkpoint(tmp_path, capsys):
    out = tmp_path / "t"
    args = [
        "train-teacher",
        "--task",
        "addition",
        "--out",
        str(out),
        "--steps",
        "5",
        "--size",
        "tiny",
        "--eval-n",
        "20",
        "--quiet",
        "--seed",
        "1",
    ]
    assert main(args) == 0
    assert "saved teacher" in capsys.readouterr().out
    model, tok = load_model(out)
    meta = read_metadata(out)
    assert meta["steps"] == 5 and meta["size"] == "tiny" and meta["seed"] == 1 and meta["eval"]["n"] == 20
    assert model.config.num_hidden_layers == 2 and len(tok) == model.config.vocab_size


def test_console_script_works_in_a_fresh_process():
    script = Path(sys.executable).parent / "odistill"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "odistill.cli"]
    result = subprocess.run(
        command + ["eval", "--task", "addition", "--json", "--n", "50"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["accuracy"] >= 0.95


def test_quiet_silences_transformers_and_datasets_bars_during_the_command_only(monkeypatch):
    import datasets
    from transformers.utils import logging as hf_logging

    import odistill.cli.distill as distill_command

    seen = {}

    def fake_run(*args, **kwargs):
        seen["transformers"] = hf_logging.is_progress_bar_enabled()
        seen["datasets"] = datasets.is_progress_bar_enabled()
        seen["info"] = hf_logging.get_verbosity() <= hf_logging.INFO
        raise ValueError("stop here")

    monkeypatch.setattr(distill_command, "run_distillation", fake_run)
    hf_logging.enable_progress_bar()
    datasets.enable_progress_bars()
    assert main(["distill", "--task", "addition", "--quiet"]) == 2
    assert seen == {"transformers": False, "datasets": False, "info": False}
    assert hf_logging.is_progress_bar_enabled() and datasets.is_progress_bar_enabled()  # restored
    seen.clear()
    assert main(["distill", "--task", "addition"]) == 2
    assert seen["transformers"] and seen["datasets"]  # without --quiet nothing is changed
