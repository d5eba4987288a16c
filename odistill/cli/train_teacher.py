"""``odistill train-teacher``: train a lab-bench teacher (or warm-started student) from scratch
and save it."""

from __future__ import annotations

import argparse
import time

from ..bench.sft import train_checkpoint

__all__ = ["add_parser", "run"]


def run(args) -> int:
    start = time.perf_counter()
    metadata = train_checkpoint(
        args.task,
        args.out,
        student=args.student,
        seed=args.seed,
        steps=args.steps,
        size=args.size,
        lr=args.lr,
        eval_n=args.eval_n,
        threads=args.threads,
        progress=not args.quiet,
    )
    scores = metadata["eval"]
    line = f"saved {metadata['role']} to {args.out}: accuracy {scores['accuracy']:.3f}"
    if "sampled_validity" in scores:
        line += (
            f", sampled validity {scores['sampled_validity']:.3f}, "
            f"distinct valid {scores['distinct_valid']:.2f}"
        )
    print(line + f" on {scores['n']} held-out prompts ({time.perf_counter() - start:.0f} s)")
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train-teacher",
        help="train a task's teacher (or, with --student, its warm-started student) from scratch",
        description="Train a lab-bench model from scratch by supervised fine-tuning on the task's data, "
        "save it (bf16, with its tokenizer) and score it on 500 held-out prompts. With the default seed and "
        "recipe this reproduces the shipped checkpoint (within noise). A teacher is trained until it is "
        "nearly perfect; a student is a smaller model trained briefly, so it writes well-formed but often "
        "wrong answers: the starting point for distillation.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--task", required=True, help="task name (see `odistill eval --help` for the list)")
    p.add_argument("--out", required=True, help="folder to write the checkpoint to")
    p.add_argument(
        "--student", action="store_true", help="train the warm-started student instead of the teacher"
    )
    p.add_argument("--seed", type=int, default=None, help="seed (default: the recipe's, 0)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the recipe's)")
    p.add_argument(
        "--size",
        default=None,
        help="model size from odistill.bench.models.MODEL_SIZES (default: the recipe's)",
    )
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the recipe's)")
    p.add_argument("--eval-n", type=int, default=500, help="held-out prompts to score the result on")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads (default: OMP_NUM_THREADS if set, else 1 for lab-bench-sized models)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
