"""The lab-bench experiments: the sampled estimator learns with its preset."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_the_sampled_estimator_learns_on_the_lab_bench_with_its_preset():
    """Thinking Machines' recipe, from the shipped addition student, with the 'tiny-cpu-sampled' preset
    (256 prompts per step, leave-one-out batch-mean baseline, no clipping). Seeds 1–3 measured +0.43,
    +0.13, +0.11 greedy accuracy after 150 steps (300 prompts); seed 2 must gain more than 0.05."""
    from odistill import DistillConfig
    from odistill.bench.experiments import run_distillation

    config = DistillConfig.preset("tiny-cpu-sampled", steps=150, eval_every=0, progress=False, seed=2)
    result = run_distillation("addition", config=config, final_eval_n=300, samples_per_prompt=1)
    assert result["student_accuracy_after"] > result["student_accuracy_before"] + 0.05
