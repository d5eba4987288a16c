"""Each benchmark starts and finishes at its tiny ``--quick`` size (CI does not run the real benchmarks).

TRL is optional (the ``bench`` extra): without it the scripts print "TRL not installed: peer columns
skipped" and still measure odistill, which is what CI (``dev`` extra only) exercises.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
HAVE_TRL = importlib.util.find_spec("trl") is not None
SCRIPTS = {
    "bench_jsd.py": [],
    "bench_step.py": [],
    "bench_teacher_memory.py": [
        "--spawn"
    ],  # one script also runs its jobs in fresh processes, as the real run does
    "bench_steps_to_target.py": [],
    "bench_fused.py": [],
    "bench_estimators.py": [],
    "profile_step.py": [],
    "bench_remote.py": ["--modes", "sampled"],  # starts odistill serve-teacher in a process of its own
}


def _run(args, tmp_path, timeout=120):
    env = {"TRL_EXPERIMENTAL_SILENCE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
    import os

    proc = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **env},
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("script", list(SCRIPTS))
def test_benchmark_quick_run(script, tmp_path):
    out_json = tmp_path / "out.json"
    stdout = _run(
        [str(BENCH / script), "--quick", "--json", str(out_json), *SCRIPTS[script]], tmp_path, timeout=300
    )
    assert "| " in stdout  # a table was printed
    payload = json.loads(out_json.read_text())
    assert payload["benchmark"] and payload["machine"]["torch"]
    assert "ERROR" not in stdout
    if script in ("bench_jsd.py", "bench_step.py"):
        assert payload["peer"] == HAVE_TRL
        if not HAVE_TRL:
            assert "TRL not installed: peer columns skipped" in stdout


def test_report_builds_markdown_json_and_plot(tmp_path):
    """The report step of run_all, from hand-made results (no benchmark run needed)."""
    s = {"min": 0.1, "median": 0.2, "max": 0.3, "n": 3}
    machine = {"time": "now", "cpu_count": 2, "torch": "x", "trl": "y", "load_avg_1_5_15": [1, 1, 1]}
    (tmp_path / "jsd.json").write_text(
        json.dumps(
            {
                "peer": True,
                "machine": machine,
                "table_md": "| a |",
                "accuracy_md": "| b |",
                "cases": [{"shape": [2, 4, 8], "beta": 0.5, "memory_ratio": s, "time_ratio": s}],
                "accuracy": [
                    {
                        "odistill_value_rel_err": 1e-7,
                        "odistill_grad_rel_err": 2e-7,
                        "odistill_vs_trl_value_rel": 1e-7,
                        "odistill_vs_trl_grad_rel": 1e-7,
                    }
                ],
            }
        )
    )
    (tmp_path / "step.json").write_text(
        json.dumps(
            {
                "peer": True,
                "machine": machine,
                "table_md": "| c |",
                "cases": [
                    {
                        "case": "vocab32k",
                        "speedup_trl_over_odistill": {"min": 2.2, "median": 2.5, "max": 2.8, "n": 3},
                        "memory_ratio": s,
                    }
                ],
            }
        )
    )
    _run([str(BENCH / "report.py"), "--dir", str(tmp_path)], tmp_path)
    text = (tmp_path / "results.md").read_text()
    assert "Headline" in text and "met" in text
    headline = json.loads((tmp_path / "results.json").read_text())["headline"]
    assert {h["met"] for h in headline} == {True}
    assert (tmp_path / "ratios.png").stat().st_size > 1000
    assert (tmp_path / "summary.md").read_text().count("\n|") == len(
        headline
    ) + 1  # header rule + one row each
