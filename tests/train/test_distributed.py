"""Two CPU processes (gloo) distil together and stay in sync."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("loss_path", ["logits", "fused"])
def test_two_processes_stay_in_sync(tmp_path, loss_path):
    script = Path(__file__).parents[1] / "scripts" / "ddp_distill.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        str(script),
        str(tmp_path),
        loss_path,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2))
    assert r0["world"] == r1["world"] == 2 and r0["backend"] == "gloo"
    # the processes trained on different prompts ...
    assert len(r0["prompts"]) == len(r1["prompts"]) == 12 and r0["prompts"] != r1["prompts"]
    # ... and ended with identical weights (gradients were all-reduced every step)
    assert r0["fingerprint"] == r1["fingerprint"]
