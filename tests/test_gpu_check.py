"""scripts/gpu_check.py runs every one of its checks at toy sizes on CPU (--dry-run) and writes the JSON
the GPU run will write; a check whose package is missing says so instead of failing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_gpu_check_dry_runs_on_cpu(tmp_path):
    out = tmp_path / "dry.json"
    cmd = [sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--dry-run", "--out", str(out)]
    cmd += ["--only", "card,models,step,fused,vllm", "--work", str(tmp_path / "work")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["dry_run"] and report["device"] == "cpu"
    assert report["card"]["packages"]["torch"]
    assert report["models"]["status"] == "ok" and report["models"]["student"]["parameters"] > 0
    assert (tmp_path / "work" / "models" / "teacher" / "config.json").is_file()
    step = report["step"]
    assert step["status"] == "ok" and step["odistill"]["median_s"] > 0
    assert step["trl"].get("status") == "skipped" or step["trl"]["median_s"] > 0
    fused = report["fused"]
    assert fused["status"] == "ok" and fused["odistill"]["loss"] > 0
    assert fused["liger"]["status"] == "skipped"  # Triton GPU kernels: never on CPU
    assert report["vllm"]["status"] == "skipped" and report["vllm"]["reason"]


def test_the_gpu_check_refuses_to_pretend_on_a_cpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    cmd = [sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--out", str(tmp_path / "x.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--dry-run" in proc.stderr
