"""``odistill demo``: the main job — off-policy forward KL vs on-policy reverse KL at equal steps."""

from __future__ import annotations

import argparse

from ..bench.experiments import run_demo

__all__ = ["add_parser", "run"]


def run(args) -> int:
    summary = run_demo(
        args.task,
        steps=args.steps,
        seed=args.seed,
        out_dir=args.out,
        progress=not args.quiet,
        threads=args.threads,
    )
    print()
    print(
        f"Distilling the shipped {summary['task']} teacher into its warm-started student, "
        f"{args.steps} steps each:"
    )
    print(summary["table"])
    threads = summary["runs"][0].get("threads")
    if threads is not None:
        print(f"(CPU, {threads} thread{'s' if threads > 1 else ''}: --threads or OMP_NUM_THREADS to change)")
    print()
    print(f"plot: {summary['plot']}   results: {args.out}/results.json")
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="the main job: off-policy forward KL vs on-policy reverse KL at equal steps, a table and a plot",
        description="From the shipped teacher and warm-started student of a task, run classic off-policy "
        "distillation (λ=0, forward KL on dataset answers) and on-policy distillation (λ=1, reverse KL on "
        "the student's own samples) for the same number of student steps; print a table of accuracies and "
        "seconds per step, and save a plot of accuracy vs step.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--task", default="addition", help="which lab-bench task")
    p.add_argument("--steps", type=int, default=250, help="student optimizer steps per method")
    p.add_argument("--seed", type=int, default=0, help="seed")
    p.add_argument("--out", default="odistill_demo", help="folder for the plot and results.json")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: OMP_NUM_THREADS if set, else 1 for lab-bench-sized models)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
