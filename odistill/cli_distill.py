"""The ``odistill distill`` and ``odistill demo`` subcommands (registered by :mod:`odistill.cli`)."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields

__all__ = ["add_distill_parser", "add_demo_parser"]


def _cmd_distill(args) -> int:
    from .config import DistillConfig
    from .experiments import run_distillation

    resume = None
    if args.resume:
        from .trainer import latest_checkpoint

        resume = latest_checkpoint(args.resume)
    if args.config:
        config = DistillConfig.load(args.config)
    elif resume is not None:
        config = DistillConfig.load(resume / "distill_config.json")
    else:
        config = DistillConfig.preset("tiny-cpu")
    overrides = {name: getattr(args, name) for name in ("lmbda", "beta", "estimator", "steps", "seed", "batch_size",
                                                         "lr", "max_new_tokens", "temperature", "loss_temperature",
                                                         "eval_every", "save_every", "output_dir", "divergence")
                 if getattr(args, name) is not None}
    if args.seq_kd:
        overrides["seq_kd"] = True
    if args.fused_lm_head:
        overrides["fused_lm_head"] = True
    overrides["progress"] = not args.json and not args.quiet
    values = {f.name: getattr(config, f.name) for f in fields(DistillConfig)}
    values.update(overrides)
    config = DistillConfig(**values)
    result = run_distillation(args.task, config=config, student=args.student, teacher=args.teacher,
                              threads=args.threads, resume_from=resume)
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "history"}, sort_keys=True, default=str))
        return 0
    print(f"{result['task']}: {result['method']}, {result['steps']} steps in {result['seconds']:.1f} s "
          f"({result['seconds_per_step']:.3f} s/step)")
    print(f"  student greedy accuracy  {result['student_accuracy_before']:.3f} -> {result['student_accuracy_after']:.3f}"
          f"   (teacher {result['teacher_accuracy']:.3f})")
    if result["student_sampled_after"] is not None:
        print(f"  student sampled (T=1)    {result['student_sampled_before']:.3f} -> "
              f"{result['student_sampled_after']:.3f}   (teacher {result['teacher_sampled']:.3f})")
    return 0


def _cmd_demo(args) -> int:
    from .experiments import run_demo

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    summary = run_demo(args.task, steps=args.steps, seed=args.seed, out_dir=args.out, progress=not args.quiet)
    print()
    print(f"Distilling the shipped {summary['task']} teacher into its warm-started student, {args.steps} steps each:")
    print(summary["table"])
    print()
    print(f"plot: {summary['plot']}   results: {args.out}/results.json")
    return 0


def add_distill_parser(subparsers) -> None:
    from .tasks import list_tasks

    p = subparsers.add_parser(
        "distill",
        help="distil a teacher into a student on a lab-bench task (on- or off-policy)",
        description="Distil the shipped teacher of a task into its warm-started student (or any models given "
        "by --teacher/--student) and report the student's accuracy before and after. λ (--lmbda) is the "
        "probability that a batch is sampled by the student (1 = on-policy, 0 = off-policy on dataset "
        "answers, or on teacher samples with --seq-kd); β (--beta) picks the divergence: 0 = forward "
        "KL(teacher‖student), 1 = reverse KL(student‖teacher), in between generalized JSD. "
        "--estimator sampled is the Thinking Machines recipe (per-token reverse KL of sampled tokens with "
        "an importance-sampling loss). Defaults: the 'tiny-cpu' preset, a few minutes on 2 CPU cores. With "
        "--save-every N --output-dir DIR, checkpoints are written atomically; Ctrl-C saves one before exiting, "
        "and --resume DIR continues to the same numbers as an uninterrupted run.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--task", default="addition", choices=list_tasks(), help="which lab-bench task")
    p.add_argument("--lmbda", type=float, default=None, help="probability of an on-policy batch, in [0, 1] (preset: 1)")
    p.add_argument("--beta", type=float, default=None, help="0 = forward KL, 1 = reverse KL (preset: 1)")
    p.add_argument("--divergence", choices=["jsd", "forward_kl", "reverse_kl"], default=None,
                   help="divergence (jsd uses --beta)")
    p.add_argument("--estimator", choices=["full", "sampled"], default=None, help="gradient estimator (preset: full)")
    p.add_argument("--seq-kd", action="store_true", help="off-policy batches are sampled from the teacher")
    p.add_argument("--fused-lm-head", action="store_true",
                   help="compute the full loss from hidden states and LM heads, never building (B, T, V) logits")
    p.add_argument("--steps", type=int, default=None, help="student optimizer steps (preset: 150)")
    p.add_argument("--batch-size", type=int, default=None, help="prompts per step (preset: 64)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (preset: 1e-3)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="completion length (default: the task's)")
    p.add_argument("--temperature", type=float, default=None, help="sampling temperature (default 1)")
    p.add_argument("--loss-temperature", type=float, default=None, help="loss temperature (default 1)")
    p.add_argument("--eval-every", type=int, default=None, help="evaluate every N steps (preset: 25)")
    p.add_argument("--save-every", type=int, default=None, help="write a checkpoint every N steps (needs --output-dir)")
    p.add_argument("--output-dir", default=None, help="folder for checkpoints")
    p.add_argument("--seed", type=int, default=None, help="seed (default 0)")
    p.add_argument("--config", default=None, help="a JSON DistillConfig file; flags override it")
    p.add_argument("--resume", default=None, metavar="DIR",
                   help="continue an interrupted run: its --output-dir (newest checkpoint) or one checkpoint folder; "
                   "the saved config is used unless --config is given")
    p.add_argument("--student", default=None, help="student name/path/hub id (default: TASK-student)")
    p.add_argument("--teacher", default=None, help="teacher name/path/hub id (default: TASK-teacher)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object (student_accuracy_before/after, teacher_accuracy, steps, seconds, …)")
    p.set_defaults(func=_cmd_distill)


def add_demo_parser(subparsers) -> None:
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
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_demo)
