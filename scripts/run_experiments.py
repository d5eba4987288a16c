#!/usr/bin/env python
"""The lab-bench sweeps too long for a notebook cell; their results are committed as data the notebooks load.

    python scripts/run_experiments.py                     # every experiment (what `make experiments` runs)
    python scripts/run_experiments.py beta-lambda-permutations --workers 2

Each experiment is an :func:`odistill.bench.sweep.run_sweep` call and writes one JSON file under
``notebooks/data/`` (:meth:`~odistill.bench.sweep.SweepResult.to_json`: the settings, every run and its
learning curve). Every run is deterministic in its seed at one CPU thread, so a notebook can re-run a few
of them live and check that it gets exactly the committed curves (notebook 06 does).

Experiments (β ∈ {0, 0.5, 1} × λ ∈ {0, 0.25, 1}, 3 seeds, 150 steps of the ``tiny-cpu`` preset, greedy
accuracy on 200 held-out prompts every 15 steps):

* ``beta-lambda-permutations``: permutations (120 valid answers per prompt), off-policy batches from the
  dataset (TRL's λ < 1), plus temperature-1 validity and diversity (4 samples per prompt) at each evaluation;
* ``beta-lambda-permutations-seqkd``: the same with off-policy batches sampled from the teacher
  (``seq_kd=True``), for β ∈ {0, 1} and λ ∈ {0, 0.25} (λ = 1 has no off-policy batch: it is the run above);
* ``beta-lambda-sorting``: sorting (one answer per prompt), off-policy batches from the dataset;
* ``beta-permutations-8-seeds``: β ∈ {0, 1} at λ = 0 on permutations with 8 seeds (seeds 0–2 are runs of
  ``beta-lambda-permutations``): notebook 06's exercise 2;
* ``competent-student-permutations``: permutations from a *head-started* student (the shipped one after
  150 steps of ``lmbda=0, beta=1``, :func:`~odistill.bench.sweep.train_head_start`, seed 0), β = 1 and
  λ ∈ {0, 1}: notebook 06's exercise 1, answered in ``notebooks/exercises/notebook_exercise_solutions.ipynb``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from odistill.bench.sweep import run_sweep, train_head_start

DATA = Path(__file__).resolve().parent.parent / "notebooks" / "data"
BETAS, LAMBDAS = [0.0, 0.5, 1.0], [0.0, 0.25, 1.0]
COMMON = dict(base="tiny-cpu", seeds=3, steps=150, eval_every=15, eval_n=200)

EXPERIMENTS = {
    "beta-lambda-permutations": dict(
        task="permutations", grid={"beta": BETAS, "lmbda": LAMBDAS}, samples_per_prompt=4, **COMMON
    ),
    "beta-lambda-permutations-seqkd": dict(
        task="permutations",
        grid={"beta": [0.0, 1.0], "lmbda": [0.0, 0.25]},
        samples_per_prompt=4,
        seq_kd=True,
        **COMMON,
    ),
    "beta-lambda-sorting": dict(task="sorting", grid={"beta": BETAS, "lmbda": LAMBDAS}, **COMMON),
    "beta-permutations-8-seeds": dict(
        task="permutations",
        grid={"beta": [0.0, 1.0], "lmbda": [0.0]},
        samples_per_prompt=4,
        **{**COMMON, "seeds": 8},
    ),
    "competent-student-permutations": dict(
        task="permutations",
        grid={"beta": [1.0], "lmbda": [0.0, 1.0]},
        samples_per_prompt=4,
        head_start=dict(steps=150, lmbda=0.0, beta=1.0, seed=0),
        **COMMON,
    ),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"experiments (default: all): {', '.join(EXPERIMENTS)}")
    parser.add_argument("--workers", type=int, default=2, help="runs at a time (fresh processes, 1 thread)")
    parser.add_argument("--out", type=Path, default=DATA, help="folder for the JSON files")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in EXPERIMENTS]
    if unknown:
        parser.error(f"unknown experiments {unknown}; known: {sorted(EXPERIMENTS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.names or EXPERIMENTS:
        spec = dict(EXPERIMENTS[name])
        start = time.perf_counter()
        print(f"{name}: {spec['task']}, grid {spec['grid']}", flush=True)
        head_start = spec.pop("head_start", None)
        with tempfile.TemporaryDirectory(prefix="odistill-head-start-") as folder:
            if head_start is not None:  # the sweep starts from a trained copy of the shipped student
                spec["student"] = str(train_head_start(spec["task"], folder, **head_start))
            sweep = run_sweep(spec.pop("task"), workers=args.workers, threads=1, progress=True, **spec)
        if head_start is not None:
            sweep.settings["head_start"] = head_start  # how to re-create the student (not its temp path)
        path = sweep.to_json(args.out / f"{name}.json")
        print(sweep.table())
        print(f"wrote {path} in {time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
