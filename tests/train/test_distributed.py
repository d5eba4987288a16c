"""Two CPU processes (gloo) distil together and stay in sync."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_two_processes


@pytest.mark.slow
@pytest.mark.parametrize("loss_path", ["logits", "fused"])
def test_two_processes_stay_in_sync(tmp_path, loss_path):
    script = Path(__file__).parents[1] / "scripts" / "ddp_distill.py"
    run_two_processes(script, tmp_path, loss_path)
    r0, r1 = (json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2))
    assert r0["world"] == r1["world"] == 2 and r0["backend"] == "gloo"
    # the processes trained on different prompts ...
    assert len(r0["prompts"]) == len(r1["prompts"]) == 12 and r0["prompts"] != r1["prompts"]
    # ... and ended with identical weights (gradients were all-reduced every step)
    assert r0["fingerprint"] == r1["fingerprint"]
