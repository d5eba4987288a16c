"""The real-model recipe (``examples/distill_qwen.py``) runs end to end on CPU with local tiny models of
the same architecture (Qwen2, built from a config) and a local chat dataset: LoRA, gradient
checkpointing and the JSON-lines tracker on, the merged student saved and loadable."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import free_port

from odistill import build_char_tokenizer, build_model, load_model

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("peft")


def _tiny_qwen_pair_and_chats(tmp_path) -> list[str]:
    """A Qwen2 teacher and student built from configs, and a chat dataset; returns the recipe's arguments."""
    tok = build_char_tokenizer("0123456789+= abcdefghijklmnopqrstuvwxyz?")
    for name, size, seed in (("teacher", {"layers": 2, "hidden": 48, "heads": 2, "mlp": 96}, 1),
                             ("student", {"layers": 1, "hidden": 32, "heads": 2, "mlp": 64}, 0)):  # fmt: skip
        model = build_model(size, tokenizer=tok, seed=seed, arch="qwen2", max_positions=128)
        model.save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    chats = [
        {
            "messages": [
                {"role": "user", "content": f"what is {a}+{b}?"},
                {"role": "assistant", "content": str(a + b)},
            ]
        }
        for a in range(6)
        for b in range(6)
    ]
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps(c) + "\n" for c in chats))
    return [
        "--teacher",
        str(tmp_path / "teacher"),
        "--student",
        str(tmp_path / "student"),
        "--dataset",
        str(data),
    ]


@pytest.mark.slow
def test_the_qwen_recipe_runs_on_cpu_with_tiny_qwen2_models(tmp_path):
    models = _tiny_qwen_pair_and_chats(tmp_path)
    out = tmp_path / "run"
    command = [sys.executable, str(ROOT / "examples" / "distill_qwen.py"), *models, "--steps", "3"]
    command += ["--batch-size", "2"]
    command += ["--grad-accum", "2", "--max-new-tokens", "4", "--lr", "1e-3", "--lora-r", "4"]
    command += [
        "--gradient-checkpointing",
        "--report-to",
        "jsonl",
        "--save-every",
        "3",
        "--output-dir",
        str(out),
    ]
    command += ["--device", "cpu"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 3
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3]
    assert (out / "checkpoint-000003" / "adapter_config.json").is_file()  # LoRA, PEFT's format
    final = out / "final"
    assert (final / "config.json").is_file() and not (final / "adapter_config.json").exists()  # merged
    model, _ = load_model(final)
    assert type(model).__name__ == "Qwen2ForCausalLM"


@pytest.mark.slow
def test_the_qwen_recipe_runs_under_the_shipped_fsdp_config(tmp_path):
    """`accelerate launch --config_file configs/accelerate/fsdp_cpu.yaml examples/distill_qwen.py`: two
    CPU processes, the Qwen2 student and teacher sharded, a checkpoint, the final full weights saved once."""
    import os

    models = _tiny_qwen_pair_and_chats(tmp_path)
    out = tmp_path / "run"
    accelerate = Path(sys.executable).with_name("accelerate")
    command = [
        str(accelerate),
        "launch",
        "--config_file",
        str(ROOT / "configs" / "accelerate" / "fsdp_cpu.yaml"),
    ]
    command += ["--main_process_port", str(free_port()), str(ROOT / "examples" / "distill_qwen.py"), *models]
    command += ["--steps", "2", "--batch-size", "2", "--max-new-tokens", "4", "--lr", "1e-2"]
    command += ["--fsdp-shard-teacher", "--save-every", "2", "--output-dir", str(out), "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summaries = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1  # the main process reports
    assert summaries[0]["steps"] == 2 and summaries[0]["processes"] == 2
    assert (out / "checkpoint-000002" / "model.safetensors").is_file()
    model, _ = load_model(out / "final")
    start, _ = load_model(tmp_path / "student")
    trained = dict(model.named_parameters())
    assert trained.keys() == dict(start.named_parameters()).keys()
    assert any(not torch.equal(p, trained[n]) for n, p in start.named_parameters())  # full weights, trained
